// The one command-line flag parser: "--name value" or "--name=value" (and short names such as
// "-o value" when declared), every error naming the flag. The daemons, `saegrid-train`, the
// client's commands and the benchmarks use it.
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace saegrid {

// What one flag fills. Exactly one of the pointers is set; the factories say which.
struct FlagSpec {
  std::string* value = nullptr;  // a string flag
  bool* present = nullptr;       // a switch: set to true when given; takes no value
  int64_t* integer = nullptr;    // an integer flag, checked against [min, max]
  int64_t min = std::numeric_limits<int64_t>::min();
  int64_t max = std::numeric_limits<int64_t>::max();
  double* real = nullptr;        // a number, checked against [min_real, max_real]
  double min_real = -std::numeric_limits<double>::infinity();
  double max_real = std::numeric_limits<double>::infinity();
  std::vector<std::string>* list = nullptr;  // a repeatable flag: every value, in order

  static FlagSpec String(std::string* v) { return FlagSpec{v}; }
  static FlagSpec Switch(bool* v) { return FlagSpec{nullptr, v}; }
  static FlagSpec Int(int64_t* v, int64_t lo = std::numeric_limits<int64_t>::min(),
                      int64_t hi = std::numeric_limits<int64_t>::max()) {
    FlagSpec f;
    f.integer = v;
    f.min = lo;
    f.max = hi;
    return f;
  }
  static FlagSpec Real(double* v, double lo, double hi) {
    FlagSpec f;
    f.real = v;
    f.min_real = lo;
    f.max_real = hi;
    return f;
  }
  static FlagSpec List(std::vector<std::string>* v) {
    FlagSpec f;
    f.list = v;
    return f;
  }
};

// Fills the flags named in `flags` from argv[0..argc). An argument is a flag when it starts with
// "--" or with "-" and a letter ("-o"); the others go to `positional` (an error when it is null).
// Unknown flags, a missing or ill-formed value, and a value on a switch are INVALID_ARGUMENT
// errors that name the flag. A flag given twice keeps the last value (List flags keep all).
absl::Status ParseFlags(int argc, char** argv, const std::map<std::string, FlagSpec>& flags,
                        std::vector<std::string>* positional = nullptr);
absl::Status ParseFlags(const std::vector<std::string>& args, const std::map<std::string, FlagSpec>& flags,
                        std::vector<std::string>* positional = nullptr);

// Parses `text` as a base-10 integer in [min, max]; the error names `flag`.
absl::Status ParseInt(const std::string& flag, const std::string& text, int64_t min, int64_t max, int64_t* out);

// Parses a duration in seconds ("2", "0.5") in (0, 7 days]; the error names `flag`.
absl::Status ParseSeconds(const std::string& flag, const std::string& text, double* seconds);

}  // namespace saegrid
