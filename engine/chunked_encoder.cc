#include "engine/chunked_encoder.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <limits>

#include "kernels/dispatch.h"
#include "kernels/running_topk.h"
#include "kernels/sparse_ops.h"

namespace saegrid {
namespace {

constexpr int64_t kChunkBytes = int64_t{64} << 20;
constexpr int64_t kChunkMultiple = 256;

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

PerTokenTopK::PerTokenTopK(int64_t batch, int64_t main_width, const torch::Tensor& dead_mask,
                           int64_t aux_width, torch::Device device)
    : main_(batch, main_width, device),
      aux_(batch, aux_width > 0 && dead_mask.defined() ? aux_width : 0, device),
      with_aux_(aux_width > 0 && dead_mask.defined()),
      dead_mask_(dead_mask) {
  // The CPU heaps take the dead latents by position (a host list, free to read there); the
  // device paths (and the portable one forced on the CPU, which stands in for them) mask.
  dead_by_position_ = with_aux_ && kernels::ImplementationFor(device) == kernels::Implementation::kCpu;
  if (dead_by_position_) dead_latents_ = dead_mask.nonzero().squeeze(1).contiguous();
}

void PerTokenTopK::Offer(const torch::Tensor& pre, int64_t begin) {
  const int64_t width = pre.size(1);
  if (main_.k() > 0) main_.Offer(pre, begin);
  if (with_aux_ && !dead_by_position_) {
    // Live latents cannot win: -inf is an empty slot (id 0), as a missing dead latent is.
    aux_.Offer(pre.masked_fill(dead_mask_.narrow(0, begin, width).logical_not().unsqueeze(0),
                               -std::numeric_limits<float>::infinity()),
               begin);
  } else if (with_aux_) {
    // The dead latents of this chunk, as positions within it.
    const int64_t* dead = dead_latents_.data_ptr<int64_t>();
    const int64_t count = dead_latents_.numel();
    const int64_t first = dead_cursor_;
    while (dead_cursor_ < count && dead[dead_cursor_] < begin + width) ++dead_cursor_;
    if (dead_cursor_ > first) aux_.Offer(pre, begin, dead_latents_.narrow(0, first, dead_cursor_ - first) - begin);
  }
}

EncoderCandidates PerTokenTopK::Finish() const {
  EncoderCandidates out;
  auto [values, indices] = main_.Finish();
  out.main = {indices, values, torch::Tensor()};
  if (with_aux_) {
    auto [aux_values, aux_indices] = aux_.Finish();
    out.aux = Selection{aux_indices, aux_values, torch::Tensor()};
  }
  return out;
}

Selection RecomputeExactly(const torch::Tensor& x_centered, const SaeParameters& p, const Selection& s) {
  const auto exact = ExactPreActivations(x_centered, p, s.indices);
  const auto values = torch::where(torch::isinf(s.values), s.values, exact);
  auto [sorted, order] = values.sort(/*dim=*/1, /*descending=*/true);
  return {s.indices.gather(1, order), sorted, torch::Tensor()};
}

int64_t EncoderChunkLatents(int64_t batch, int64_t num_latents, int64_t configured) {
  if (configured > 0) return std::min(configured, num_latents);
  const int64_t fit = kChunkBytes / (4 * std::max<int64_t>(batch, 1));
  const int64_t rounded = std::max(kChunkMultiple, fit / kChunkMultiple * kChunkMultiple);
  return std::min(rounded, num_latents);
}

void RunChunkedEncoder(const torch::Tensor& x_centered, const SaeParameters& params,
                       ComputeDtype compute_dtype, int64_t chunk_latents, StepProfile* profile,
                       const std::vector<EncoderChunkConsumer*>& consumers) {
  torch::NoGradGuard no_grad;
  const int64_t batch = x_centered.size(0);
  const int64_t num_latents = params.w_enc.size(0);
  const int64_t chunk = EncoderChunkLatents(batch, num_latents, chunk_latents);
  const auto dtype = compute_dtype == ComputeDtype::kBFloat16 ? torch::kBFloat16 : torch::kFloat;
  const auto x = x_centered.to(dtype);
  const auto w_enc = params.w_enc.detach();
  const auto b_enc = params.b_enc.detach();
  double matmul_seconds = 0, select_seconds = 0;
  for (int64_t begin = 0; begin < num_latents; begin += chunk) {
    const int64_t width = std::min(chunk, num_latents - begin);
    auto start = Clock::now();
    const auto pre = torch::addmm(b_enc.narrow(0, begin, width).to(dtype), x,
                                  w_enc.narrow(0, begin, width).to(dtype).t());
    matmul_seconds += SecondsSince(start);
    start = Clock::now();
    for (auto* consumer : consumers) consumer->Offer(pre, begin);
    select_seconds += SecondsSince(start);
  }
  if (profile != nullptr) {
    profile->encoder += matmul_seconds;
    profile->topk += select_seconds;
  }
}

torch::Tensor ExactPreActivations(const torch::Tensor& x_centered, const SaeParameters& p,
                                  const torch::Tensor& indices) {
  torch::NoGradGuard no_grad;
  return kernels::MatmulAtSparseIndices(x_centered, p.w_enc.detach(), indices) +
         p.b_enc.detach().index_select(0, indices.flatten()).view_as(indices);
}

EncoderCandidates SelectByChunkedEncoder(const torch::Tensor& x_centered, const SaeParameters& params,
                                         int64_t main_width, const torch::Tensor& dead_mask,
                                         int64_t aux_width, ComputeDtype compute_dtype,
                                         int64_t chunk_latents, StepProfile* profile) {
  torch::NoGradGuard no_grad;
  PerTokenTopK consumer(x_centered.size(0), main_width, dead_mask, aux_width, x_centered.device());
  RunChunkedEncoder(x_centered, params, compute_dtype, chunk_latents, profile, {&consumer});
  auto start = Clock::now();
  EncoderCandidates out = consumer.Finish();
  if (profile != nullptr) profile->topk += SecondsSince(start);
  if (compute_dtype == ComputeDtype::kBFloat16) {
    start = Clock::now();
    out.main = RecomputeExactly(x_centered, params, out.main);
    if (out.aux) out.aux = RecomputeExactly(x_centered, params, *out.aux);
    if (profile != nullptr) profile->encoder += SecondsSince(start);
  }
  return out;
}

}  // namespace saegrid
