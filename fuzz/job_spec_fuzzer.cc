// Fuzzes the job-spec loader (YAML or JSON text -> saegrid.v1.JobSpec -> validated TrainConfig):
// no crash, no UB, no hang (libFuzzer's -timeout), no unbounded memory (-rss_limit_mb), and every
// refusal names the source.
#include <cstdint>
#include <string>

#include "fuzz/fuzz_check.h"
#include "spec/job_spec_loader.h"
#include "spec/train_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace saegrid;
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto spec = ParseJobSpec(text, "fuzz.yaml");
  if (!spec.ok()) {
    FUZZ_CHECK(spec.status().message().rfind("fuzz.yaml", 0) == 0);
    return 0;
  }
  auto config = ToTrainConfig(*spec);
  (void)config;
  return 0;
}
