#include "cli/progress_printer.h"

#include <unistd.h>

#include <cmath>
#include <string>

#include "absl/strings/str_format.h"

namespace saegrid::cli {
namespace {

std::string Duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, (s / 60) % 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

std::string Rate(double per_second) {
  if (per_second >= 1e6) return absl::StrFormat("%.2fM", per_second / 1e6);
  if (per_second >= 1e3) return absl::StrFormat("%.1fk", per_second / 1e3);
  return absl::StrFormat("%.0f", per_second);
}

}  // namespace

ProgressPrinter::ProgressPrinter(FILE* out, int64_t log_every_steps, bool quiet)
    : out_(out), log_every_(log_every_steps), quiet_(quiet), tty_(isatty(fileno(out)) == 1) {}

void ProgressPrinter::OnStart(int64_t step, int64_t total_steps, bool resumed) {
  first_step_ = step;
  started_ = std::chrono::steady_clock::now();
  if (quiet_) return;
  if (resumed) absl::FPrintF(out_, "resumed at step %d of %d\n", step, total_steps);
}

void ProgressPrinter::OnStep(const StepMetrics& m) {
  if (tokens_at_start_ < 0) tokens_at_start_ = m.tokens - (m.tokens / std::max<int64_t>(m.step, 1));
  step_seconds_ += m.step_seconds;
  data_seconds_ += m.profile.data;
  if (quiet_ || !m.has_figures) return;  // a step whose figures were not read has nothing to show
  const auto now = std::chrono::steady_clock::now();
  const bool last = m.step == m.total_steps;
  if (tty_ && !last && now - last_draw_ < std::chrono::milliseconds(200)) return;
  if (!tty_ && !last && m.step % log_every_ != 0) return;
  last_draw_ = now;
  const double elapsed = std::chrono::duration<double>(now - started_).count();
  const double done = static_cast<double>(m.step - first_step_);
  const double rate = elapsed > 0 ? static_cast<double>(m.tokens - tokens_at_start_) / elapsed : 0;
  const double eta = done > 0 ? elapsed / done * static_cast<double>(m.total_steps - m.step) : NAN;
  const std::string line = absl::StrFormat(
      "step %d/%d | %s tok/s | FVU %.4f | L0 %.1f | dead %.2f%% | loss %.4g | lr %.2e | ETA %s",
      m.step, m.total_steps, Rate(rate), m.fvu, m.l0, 100 * m.dead_fraction, m.loss, m.lr,
      Duration(eta));
  std::string extras =
      m.overflow_tokens_total > 0
          ? absl::StrFormat(" | truncated %.2f%% (possibly %.2f%%)", 100 * m.truncated_rate_total,
                            100 * m.overflow_rate_total)
          : "";
  // Steps that wait for their batch are bound by the data (a model run on the fly): say how much.
  if (step_seconds_ > 0 && data_seconds_ >= 0.05 * step_seconds_) {
    extras += absl::StrFormat(" | waiting for data %.0f%%", 100 * data_seconds_ / step_seconds_);
  }
  step_seconds_ = data_seconds_ = 0;
  if (tty_) {
    absl::FPrintF(out_, "\r\033[K%s%s", line, extras);
    line_open_ = true;
    if (last) EndLine();
  } else {
    absl::FPrintF(out_, "%s%s\n", line, extras);
  }
  std::fflush(out_);
}

void ProgressPrinter::OnCheckpoint(const std::string& dir, int64_t step) {
  if (quiet_) return;
  EndLine();
  absl::FPrintF(out_, "checkpoint step %d -> %s\n", step, dir);
  std::fflush(out_);
}

void ProgressPrinter::EndLine() {
  if (!line_open_) return;
  absl::FPrintF(out_, "\n");
  line_open_ = false;
}

}  // namespace saegrid::cli
