// Fuzzes ParseSafetensorsHeader with the input as a whole safetensors file. Beyond "no crash, no
// UB, no leak": an accepted header must satisfy its documented contract (ranges tile the data
// region, sizes match shapes), and parsing only the needed prefix must give the same answer.
#include <cstdint>
#include <string>
#include <string_view>

#include "formats/safetensors_header.h"
#include "fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace saegrid;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const int64_t file_size = static_cast<int64_t>(size);
  auto needed = SafetensorsHeaderBytesNeeded(bytes, file_size, "fuzz");
  auto header = ParseSafetensorsHeader(bytes, file_size, "fuzz");
  if (!header.ok()) {
    FUZZ_CHECK(header.status().message().rfind("safetensors file fuzz: ", 0) == 0);
  }
  if (!needed.ok()) {
    FUZZ_CHECK(!header.ok());
    return 0;
  }
  FUZZ_CHECK(*needed >= 8 && *needed <= file_size);
  auto prefix_only = ParseSafetensorsHeader(bytes.substr(0, static_cast<size_t>(*needed)), file_size, "fuzz");
  FUZZ_CHECK(prefix_only.ok() == header.ok());
  if (!header.ok()) return 0;
  FUZZ_CHECK(header->data_start == *needed);
  const int64_t buffer = file_size - header->data_start;
  int64_t covered = 0;
  for (size_t i = 0; i < header->tensors.size(); ++i) {
    const auto& t = header->tensors[i];
    if (i > 0) FUZZ_CHECK(header->tensors[i - 1].name < t.name);  // sorted, unique
    FUZZ_CHECK(header->Find(t.name) == &t);
    FUZZ_CHECK(0 <= t.begin && t.begin <= t.end && t.end <= buffer);
    unsigned __int128 bytes_needed = static_cast<unsigned __int128>(SafetensorsDtypeSize(t.dtype));
    FUZZ_CHECK(bytes_needed > 0);
    bool zero = false;
    for (int64_t d : t.shape) {
      FUZZ_CHECK(d >= 0);
      zero |= d == 0;
    }
    if (zero) {
      bytes_needed = 0;
    } else {
      for (int64_t d : t.shape) {
        bytes_needed *= static_cast<unsigned __int128>(d);
        if (bytes_needed > static_cast<unsigned __int128>(INT64_MAX)) break;
      }
    }
    FUZZ_CHECK(bytes_needed == static_cast<unsigned __int128>(t.end - t.begin));
    covered += t.end - t.begin;
  }
  FUZZ_CHECK(covered == buffer);  // no overlap and no gap, so the sizes add up to the region
  return 0;
}
