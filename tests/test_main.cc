// The GoogleTest main of the test binaries, with OpenBLAS's kernels corrected first (see
// engine/runtime.h): the numerical tests then run at the speed the product runs at.
#include <gtest/gtest.h>

#include "engine/runtime.h"

int main(int argc, char** argv) {
  saegrid::ReexecIfBlasMisdetected(argv);
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
