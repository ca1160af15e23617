// Fuzzes ParseTrainerState with the input as trainer_state.json; an accepted record must hold
// every rule the header states (what a resume relies on).
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include "engine/activation/architecture_names.h"
#include "formats/trainer_state.h"
#include "fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace saegrid;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto r = ParseTrainerState(text, "fuzz");
  if (!r.ok()) {
    FUZZ_CHECK(r.status().message().rfind("fuzz: ", 0) == 0);
    return 0;
  }
  FUZZ_CHECK(r->format_version == kTrainerStateFormatVersion);
  FUZZ_CHECK(r->step >= 0 && r->tokens >= r->step);
  FUZZ_CHECK(r->adam_step >= 0 && r->adam_step <= r->step);
  FUZZ_CHECK(r->ema_updates >= 0 && r->ema_updates <= r->step && (r->has_ema || r->ema_updates == 0));
  FUZZ_CHECK(r->cursor_epoch >= 0 && r->cursor_offset >= 0 && r->overflow_tokens >= 0);
  FUZZ_CHECK(IsPlainFileName(r->hookpoint));
  FUZZ_CHECK(r->shards >= 1 && r->replicas >= 1);
  const auto& m = r->model;
  const auto architecture = ParseArchitecture(m.architecture);
  FUZZ_CHECK(architecture.has_value());
  FUZZ_CHECK(m.d_in >= 1 && m.d_in <= kMaxTrainerStateDimension);
  FUZZ_CHECK(m.num_latents >= 1 && m.num_latents <= kMaxTrainerStateLatents);
  FUZZ_CHECK(m.k >= 0);
  if (ArchitectureUsesK(*architecture)) {
    FUZZ_CHECK(m.k >= 1 && m.k <= m.num_latents);
    FUZZ_CHECK(m.k_initial == 0 || (m.k_initial >= m.k && m.k_initial <= m.num_latents));
  }
  FUZZ_CHECK(m.k_schedule_steps >= 0);
  FUZZ_CHECK(m.threshold_decay >= 0 && m.threshold_decay <= 1);
  FUZZ_CHECK(std::isfinite(m.inference_threshold));
  FUZZ_CHECK(std::isfinite(m.jumprelu_initial_threshold) && m.jumprelu_initial_threshold >= 0);
  FUZZ_CHECK(std::isfinite(m.jumprelu_bandwidth) && m.jumprelu_bandwidth > 0);
  FUZZ_CHECK(std::isfinite(m.l0_coefficient) && m.l0_coefficient >= 0);
  FUZZ_CHECK(m.target_l0 >= 0 && m.target_l0 <= static_cast<double>(m.num_latents));
  int64_t previous = 0;
  for (int64_t p : m.matryoshka_prefixes) {
    FUZZ_CHECK(p > previous && p < m.num_latents);
    previous = p;
  }
  FUZZ_CHECK(!r->state_slices.empty());
  int64_t covered = 0;
  for (const auto& s : r->state_slices) {
    FUZZ_CHECK(IsPlainFileName(s.file));
    FUZZ_CHECK(s.latent_begin == covered && s.latent_end > s.latent_begin);
    covered = s.latent_end;
  }
  FUZZ_CHECK(covered == m.num_latents);
  return 0;
}
