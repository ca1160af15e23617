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

// The exact float32 pre-activations at the selected latents, re-sorted descending (the sharded
// cut relies on the order); padding (-inf) stays padding, at the end.
Selection ExactAtIndices(const torch::Tensor& x_centered, const SaeParameters& p, const Selection& s) {
  const auto exact = kernels::MatmulAtSparseIndices(x_centered, p.w_enc.detach(), s.indices) +
                     p.b_enc.detach().index_select(0, s.indices.flatten()).view_as(s.indices);
  const auto values = torch::where(torch::isinf(s.values), s.values, exact);
  auto [sorted, order] = values.sort(/*dim=*/1, /*descending=*/true);
  return {s.indices.gather(1, order), sorted};
}

}  // namespace

int64_t EncoderChunkLatents(int64_t batch, int64_t num_latents, int64_t configured) {
  if (configured > 0) return std::min(configured, num_latents);
  const int64_t fit = kChunkBytes / (4 * std::max<int64_t>(batch, 1));
  const int64_t rounded = std::max(kChunkMultiple, fit / kChunkMultiple * kChunkMultiple);
  return std::min(rounded, num_latents);
}

EncoderCandidates SelectByChunkedEncoder(const torch::Tensor& x_centered, const SaeParameters& params,
                                         int64_t main_width, const torch::Tensor& dead_mask,
                                         int64_t aux_width, ComputeDtype compute_dtype,
                                         int64_t chunk_latents, StepProfile* profile) {
  torch::NoGradGuard no_grad;
  const int64_t batch = x_centered.size(0);
  const int64_t num_latents = params.w_enc.size(0);
  const int64_t chunk = EncoderChunkLatents(batch, num_latents, chunk_latents);
  const bool bf16 = compute_dtype == ComputeDtype::kBFloat16;
  const auto dtype = bf16 ? torch::kBFloat16 : torch::kFloat;
  const auto x = x_centered.to(dtype);
  const auto w_enc = params.w_enc.detach();
  const auto b_enc = params.b_enc.detach();
  const auto device = x_centered.device();
  const bool with_aux = aux_width > 0 && dead_mask.defined();
  // The CPU heaps take the dead latents by position (a host list, free to read there); the device
  // paths (and the portable one forced on the CPU, which stands in for them) mask instead.
  const bool dead_by_position = with_aux && kernels::ImplementationFor(device) == kernels::Implementation::kCpu;
  torch::Tensor dead_latents;
  if (dead_by_position) dead_latents = dead_mask.nonzero().squeeze(1).contiguous();
  const int64_t* dead = dead_by_position ? dead_latents.data_ptr<int64_t>() : nullptr;
  const int64_t dead_count = dead_by_position ? dead_latents.numel() : 0;
  const float neg_inf = -std::numeric_limits<float>::infinity();

  kernels::RunningTopK main(batch, main_width, device);
  kernels::RunningTopK aux(batch, with_aux ? aux_width : 0, device);
  double matmul_seconds = 0, select_seconds = 0;
  int64_t dead_cursor = 0;
  for (int64_t begin = 0; begin < num_latents; begin += chunk) {
    const int64_t width = std::min(chunk, num_latents - begin);
    auto start = Clock::now();
    const auto pre = torch::addmm(b_enc.narrow(0, begin, width).to(dtype), x,
                                  w_enc.narrow(0, begin, width).to(dtype).t());
    matmul_seconds += SecondsSince(start);
    start = Clock::now();
    main.Offer(pre, begin);
    if (with_aux && !dead_by_position) {
      // Live latents cannot win: -inf is an empty slot (id 0), as a missing dead latent is.
      aux.Offer(pre.masked_fill(dead_mask.narrow(0, begin, width).logical_not().unsqueeze(0), neg_inf), begin);
    } else if (with_aux) {
      // The dead latents of this chunk, as positions within it.
      const int64_t first = dead_cursor;
      while (dead_cursor < dead_count && dead[dead_cursor] < begin + width) ++dead_cursor;
      if (dead_cursor > first) {
        aux.Offer(pre, begin, dead_latents.narrow(0, first, dead_cursor - first) - begin);
      }
    }
    select_seconds += SecondsSince(start);
  }

  auto start = Clock::now();
  EncoderCandidates out;
  auto [values, indices] = main.Finish();
  out.main = {indices, values};
  if (with_aux) {
    auto [aux_values, aux_indices] = aux.Finish();
    out.aux = Selection{aux_indices, aux_values};
  }
  select_seconds += SecondsSince(start);
  if (bf16) {
    start = Clock::now();
    out.main = ExactAtIndices(x_centered, params, out.main);
    if (out.aux) out.aux = ExactAtIndices(x_centered, params, *out.aux);
    matmul_seconds += SecondsSince(start);
  }
  if (profile != nullptr) {
    profile->encoder += matmul_seconds;
    profile->topk += select_seconds;
  }
  return out;
}

}  // namespace saegrid
