// Fuzzes the checkpoint archive with the input as an uploaded .tar: ListArchive, reading every
// listed file, InspectCheckpointArchive, and UnpackArchive into a fresh directory, after which
// nothing may exist outside that directory and no symbolic link inside it. An archive that
// ListArchive refuses must make UnpackArchive write nothing at all.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "engine/activation/architecture_names.h"
#include "formats/checkpoint_archive.h"
#include "formats/checkpoint_inspector.h"
#include "formats/trainer_state.h"
#include "fuzz/fuzz_check.h"

namespace fs = std::filesystem;

namespace {

// A private scratch directory per process, under $SAEGRID_FUZZ_SCRATCH (scripts/fuzz.sh points it
// at a directory it removes afterwards; libFuzzer ends with _Exit, so no exit handler here would
// run), else /dev/shm (one file write and one extraction per input, in memory), else $TMPDIR.
const fs::path& Scratch() {
  static const fs::path dir = [] {
    const char* env = std::getenv("SAEGRID_FUZZ_SCRATCH");
    std::string base = env != nullptr && *env != '\0' ? env
                       : fs::exists("/dev/shm")       ? "/dev/shm"
                                                      : fs::temp_directory_path().string();
    std::string pattern = base + "/saegrid_fuzz_archive_XXXXXX";
    FUZZ_CHECK(mkdtemp(pattern.data()) != nullptr);
    return fs::path(pattern);
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace saegrid;
  const fs::path root = Scratch();
  const std::string archive = (root / "input.tar").string();
  const fs::path dest = root / "dest";
  {
    std::ofstream out(archive, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  auto entries = ListArchive(archive);
  if (entries.ok()) {
    FUZZ_CHECK(static_cast<int64_t>(entries->size()) <= kMaxArchiveEntries);
    for (const auto& e : *entries) {
      FUZZ_CHECK(!e.name.empty() && e.name[0] != '/' && e.name.back() != '/');
      for (const auto& part : fs::path(e.name)) FUZZ_CHECK(part != ".." && part != ".");
      FUZZ_CHECK(e.data_offset >= 512 && e.size >= 0 && e.data_offset + e.size <= static_cast<int64_t>(size));
      if (e.is_directory) continue;
      auto bytes = ReadArchiveEntry(archive, e, 1 << 20);
      if (e.size <= (1 << 20)) FUZZ_CHECK(bytes.ok() && static_cast<int64_t>(bytes->size()) == e.size);
    }
  } else {
    FUZZ_CHECK(entries.status().message().find(archive) != std::string::npos);
  }
  auto summary = InspectCheckpointArchive(archive);
  if (summary.ok()) {
    FUZZ_CHECK(entries.ok());
    FUZZ_CHECK(summary->step >= 0 && summary->tokens >= summary->step);
    FUZZ_CHECK(summary->d_in > 0 && summary->num_latents > 0 && summary->k >= 0);
    // k may be absent only where the architecture ignores it (relu, jumprelu).
    const auto architecture = ParseArchitecture(summary->architecture);
    FUZZ_CHECK(architecture.has_value() && (summary->k > 0 || !ArchitectureUsesK(*architecture)));
    FUZZ_CHECK(IsPlainFileName(summary->hookpoint));
  } else {
    FUZZ_CHECK(summary.status().message().find(archive) != std::string::npos);
  }

  const auto unpacked = UnpackArchive(archive, dest.string());
  if (!entries.ok()) {
    FUZZ_CHECK(!unpacked.ok());
    FUZZ_CHECK(!fs::exists(dest));  // validated before anything is written
  }
  // Only the input and the destination may exist in the scratch directory, and nothing under the
  // destination may be a link.
  for (const auto& e : fs::directory_iterator(root)) {
    FUZZ_CHECK(e.path() == archive || e.path() == dest);
  }
  if (fs::exists(dest)) {
    for (const auto& e : fs::recursive_directory_iterator(dest)) {
      FUZZ_CHECK(!e.is_symlink());
      FUZZ_CHECK(e.is_directory() || e.is_regular_file());
    }
    if (unpacked.ok()) {
      for (const auto& e : *entries) FUZZ_CHECK(fs::exists(dest / e.name));
    }
    fs::remove_all(dest);
  }
  return 0;
}
