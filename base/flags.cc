#include "base/flags.h"

#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace saegrid {

absl::Status ParseInt(const std::string& flag, const std::string& text, int64_t min, int64_t max, int64_t* out) {
  int64_t n = 0;
  if (!absl::SimpleAtoi(text, &n) || n < min || n > max) {
    std::string range;
    if (min == 0 && max == std::numeric_limits<int64_t>::max()) range = "a non-negative integer";
    else if (min == 1 && max == std::numeric_limits<int64_t>::max()) range = "a positive integer";
    else range = absl::StrCat("an integer in [", min, ", ", max, "]");
    return absl::InvalidArgumentError(absl::StrCat(flag, ": expected ", range, ", got '", text, "'"));
  }
  *out = n;
  return absl::OkStatus();
}

absl::Status ParseSeconds(const std::string& flag, const std::string& text, double* seconds) {
  double s = 0;
  if (!absl::SimpleAtod(text, &s) || !(s > 0) || s > 86400 * 7) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": expected seconds in (0, 604800], got '", text, "'"));
  }
  *seconds = s;
  return absl::OkStatus();
}

namespace {

bool LooksLikeFlag(const std::string& arg) {
  if (arg.rfind("--", 0) == 0) return true;
  return arg.size() > 1 && arg[0] == '-' && absl::ascii_isalpha(static_cast<unsigned char>(arg[1]));
}

}  // namespace

absl::Status ParseFlags(int argc, char** argv, const std::map<std::string, FlagSpec>& flags,
                        std::vector<std::string>* positional) {
  return ParseFlags(std::vector<std::string>(argv, argv + argc), flags, positional);
}

absl::Status ParseFlags(const std::vector<std::string>& args, const std::map<std::string, FlagSpec>& flags,
                        std::vector<std::string>* positional) {
  const size_t argc = args.size();
  for (size_t i = 0; i < argc; ++i) {
    std::string arg = args[i], value;
    bool has_value = false;
    if (!LooksLikeFlag(arg)) {
      if (positional == nullptr) return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
      positional->push_back(arg);
      continue;
    }
    if (auto eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    auto it = flags.find(arg);
    if (it == flags.end()) return absl::InvalidArgumentError(absl::StrCat("unknown flag ", arg));
    const FlagSpec& spec = it->second;
    if (spec.present != nullptr) {
      if (has_value) return absl::InvalidArgumentError(absl::StrCat(arg, " takes no value"));
      *spec.present = true;
      continue;
    }
    if (!has_value) {
      if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat(arg, " needs a value"));
      value = args[++i];
    }
    if (spec.integer != nullptr) {
      if (auto st = ParseInt(arg, value, spec.min, spec.max, spec.integer); !st.ok()) return st;
    } else if (spec.real != nullptr) {
      double d = 0;
      if (!absl::SimpleAtod(value, &d) || !std::isfinite(d) || d < spec.min_real || d > spec.max_real) {
        return absl::InvalidArgumentError(absl::StrCat(arg, ": expected a number in [", spec.min_real, ", ",
                                                       spec.max_real, "], got '", value, "'"));
      }
      *spec.real = d;
    } else if (spec.value != nullptr) {
      *spec.value = value;
    } else if (spec.list != nullptr) {
      spec.list->push_back(value);
    } else {
      return absl::InternalError(absl::StrCat("flag ", arg, " has nothing to fill"));
    }
  }
  return absl::OkStatus();
}

}  // namespace saegrid
