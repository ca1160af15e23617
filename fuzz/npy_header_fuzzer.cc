// Fuzzes ParseNpyHeader with the input as a whole .npy file; an accepted header must satisfy its
// contract (sizes consistent, data inside the file), and the needed prefix alone must suffice.
#include <cstdint>
#include <string>
#include <string_view>

#include "formats/npy_header.h"
#include "fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace saegrid;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const int64_t file_size = static_cast<int64_t>(size);
  auto needed = NpyHeaderBytesNeeded(bytes, file_size, "fuzz");
  auto header = ParseNpyHeader(bytes, file_size, "fuzz");
  if (!header.ok()) FUZZ_CHECK(header.status().message().rfind("npy file fuzz: ", 0) == 0);
  if (!needed.ok()) {
    FUZZ_CHECK(!header.ok());
    return 0;
  }
  auto prefix_only = ParseNpyHeader(bytes.substr(0, static_cast<size_t>(*needed)), file_size, "fuzz");
  FUZZ_CHECK(prefix_only.ok() == header.ok());
  if (!header.ok()) return 0;
  FUZZ_CHECK(header->data_offset == *needed);
  FUZZ_CHECK(header->item_size == NpyItemSize(header->descr) && header->item_size > 0);
  unsigned __int128 numel = 1;
  bool zero = false;
  for (int64_t d : header->shape) {
    FUZZ_CHECK(d >= 0);
    zero |= d == 0;
  }
  if (zero) {
    numel = 0;
  } else {
    for (int64_t d : header->shape) {
      numel *= static_cast<unsigned __int128>(d);
      FUZZ_CHECK(numel <= static_cast<unsigned __int128>(INT64_MAX));
    }
  }
  FUZZ_CHECK(numel == static_cast<unsigned __int128>(header->numel));
  FUZZ_CHECK(header->data_bytes == header->numel * header->item_size);
  FUZZ_CHECK(header->data_offset + header->data_bytes <= file_size);
  return 0;
}
