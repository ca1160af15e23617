// fuzz_pack_directory DIR ARCHIVE: PackDirectory as a command, so that scripts/make-fuzz-corpus.sh
// can make the checkpoint-archive seeds with the project's own writer.
#include <cstdio>

#include "formats/checkpoint_archive.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s DIR ARCHIVE\n", argv[0]);
    return 2;
  }
  const auto st = saegrid::PackDirectory(argv[1], argv[2]);
  if (!st.ok()) {
    std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
    return 1;
  }
  return 0;
}
