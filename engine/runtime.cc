#include "engine/runtime.h"

#include <dlfcn.h>
#include <sched.h>
#include <unistd.h>

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <new>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "base/error_kind.h"

namespace saegrid {
namespace {

constexpr char kReexecMarker[] = "SAEGRID_BLAS_REEXECUTED";

bool CpuHasFlags(std::initializer_list<const char*> wanted) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    const std::string flags = line + " ";
    return std::all_of(wanted.begin(), wanted.end(), [&](const char* flag) {
      return flags.find(" " + std::string(flag) + " ") != std::string::npos;
    });
  }
  return false;
}

// Vector width class of an OpenBLAS core name: 0 SSE, 1 AVX, 2 AVX2, 3 AVX-512; -1 unknown
// (left alone).
int CoreClass(std::string name) {
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  static const std::map<std::string, int> classes = {
      {"prescott", 0},  {"core2", 0},      {"penryn", 0},         {"dunnington", 0},
      {"nehalem", 0},   {"atom", 0},       {"katmai", 0},         {"coppermine", 0},
      {"northwood", 0}, {"banias", 0},     {"sandybridge", 1},    {"bulldozer", 1},
      {"haswell", 2},   {"zen", 2},        {"excavator", 2},      {"skylakex", 3},
      {"cooperlake", 3}, {"sapphirerapids", 3}};
  const auto it = classes.find(name);
  return it == classes.end() ? -1 : it->second;
}

}  // namespace

int AvailableCores() {
  int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cores = std::max(1, CPU_COUNT(&set));
  // cgroup v2 "cpu.max" is "<quota> <period>" or "max <period>"; v1 splits it in two files.
  double quota = -1, period = 0;
  std::ifstream v2("/sys/fs/cgroup/cpu.max");
  std::string quota_text;
  if (v2 >> quota_text >> period) {
    if (quota_text != "max") quota = std::atof(quota_text.c_str());
  } else {
    std::ifstream v1_quota("/sys/fs/cgroup/cpu/cpu.cfs_quota_us");
    std::ifstream v1_period("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
    if (!(v1_quota >> quota) || !(v1_period >> period)) quota = -1;
  }
  if (quota > 0 && period > 0) {
    cores = std::min(cores, std::max(1, static_cast<int>(std::ceil(quota / period))));
  }
  return cores;
}

int ConfigureThreads(int num_threads) {
  const int threads = num_threads > 0 ? num_threads : AvailableCores();
  at::set_num_threads(threads);
  return threads;
}

bool CpuHasNativeBFloat16() { return CpuHasFlags({"amx_bf16"}) || CpuHasFlags({"avx512_bf16"}); }

const char* BlasCoreName() {
  using CoreNameFn = char* (*)();
  auto* fn = reinterpret_cast<CoreNameFn>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  return fn != nullptr ? fn() : "";
}

void ReexecIfBlasMisdetected(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr || std::getenv(kReexecMarker) != nullptr) return;
  const std::string detected = BlasCoreName();
  if (detected.empty()) return;
  const char* wanted = nullptr;
  if (CpuHasFlags({"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"})) {
    wanted = "SkylakeX";
  } else if (CpuHasFlags({"avx2", "fma"})) {
    wanted = "Haswell";
  }
  const int have = CoreClass(detected);
  if (wanted == nullptr || have < 0 || have >= CoreClass(wanted)) return;
  const char* verbose = std::getenv("SAEGRID_VERBOSE");
  if (verbose != nullptr && *verbose != '\0' && std::string(verbose) != "0") {
    std::fprintf(stderr, "saegrid: OpenBLAS chose its %s kernels on a CPU with %s; restarting with OPENBLAS_CORETYPE=%s\n",
                 detected.c_str(), wanted == std::string("SkylakeX") ? "AVX-512" : "AVX2", wanted);
  }
  setenv("OPENBLAS_CORETYPE", wanted, 1);
  setenv(kReexecMarker, "1", 1);
  execv("/proc/self/exe", argv);
  // exec failed: carry on with the slow kernels rather than not at all.
  std::perror("saegrid: re-executing with OPENBLAS_CORETYPE failed");
}

absl::Status StatusFromException(const std::exception& e) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  std::string what = c10_error != nullptr ? c10_error->what_without_backtrace() : e.what();
  what = absl::StrReplaceAll(what, {{"\n", " "}, {"\r", " "}});
  // LibTorch prefixes "[enforce fail at alloc_cpu.cpp:75] err == 0. ": where it failed, not what.
  if (absl::StartsWith(what, "[enforce fail at ")) {
    const size_t end = what.find(". ");
    if (end != std::string::npos) what = what.substr(end + 2);
  }
  const std::string message(absl::StripAsciiWhitespace(what));
  if (dynamic_cast<const std::bad_alloc*>(&e) != nullptr) return OutOfMemoryError(message.empty() ? "std::bad_alloc" : message);
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e) != nullptr) return OutOfMemoryError(message);
  // LibTorch 1.13's CPU allocator throws a plain c10::Error; its text is the only mark it has.
  if (c10_error != nullptr && (message.find("can't allocate memory") != std::string::npos ||
                               message.find("out of memory") != std::string::npos)) {
    return OutOfMemoryError(message);
  }
  return absl::InternalError(message);
}

}  // namespace saegrid
