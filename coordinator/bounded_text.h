// Input echoed back in error messages is bounded: a 1 MiB job id must not come back whole (it
// would overflow the client's metadata limit and flood logs).
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace saegrid::coordinator {

// 'text' in quotes, cut to `max_chars` with the full length noted, non-printable bytes escaped.
std::string Quote(absl::string_view text, size_t max_chars = 80);

}  // namespace saegrid::coordinator
