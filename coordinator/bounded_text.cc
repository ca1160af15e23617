#include "coordinator/bounded_text.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace saegrid::coordinator {

std::string Quote(absl::string_view text, size_t max_chars) {
  if (text.size() <= max_chars) return absl::StrCat("'", absl::CHexEscape(text), "'");
  return absl::StrCat("'", absl::CHexEscape(text.substr(0, max_chars)), "...' (", text.size(), " bytes)");
}

}  // namespace saegrid::coordinator
