#include "engine/runtime.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <thread>

namespace saegrid {

int ConfigureThreads(int num_threads) {
  const int threads = num_threads > 0 ? num_threads
                                      : std::max(1u, std::thread::hardware_concurrency());
  at::set_num_threads(threads);
  return threads;
}

}  // namespace saegrid
