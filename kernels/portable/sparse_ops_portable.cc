#include "kernels/portable/sparse_ops_portable.h"

#include <torch/torch.h>

#include <algorithm>

namespace saegrid::kernels::portable {
namespace {

// The gathers below materialise [slice, K, d]; slices of the batch keep that near 64 Mi elements.
constexpr int64_t kSliceElements = int64_t{64} << 20;

int64_t SliceRows(int64_t k, int64_t d) {
  return std::max<int64_t>(1, kSliceElements / std::max<int64_t>(k * d, 1));
}

}  // namespace

torch::Tensor DenseSparseMatmul(const torch::Tensor& values, const torch::Tensor& indices,
                                const torch::Tensor& rows) {
  // embedding_bag with per-sample weights is exactly this product, with no [B, K, d] temporary
  // (one fused gather-and-sum kernel on CUDA). It needs the weights in the rows' dtype; a bf16
  // row matrix is widened so the sum is float32, as in the CPU kernel.
  const bool widen = rows.scalar_type() != torch::kDouble && rows.scalar_type() != torch::kFloat;
  const auto table = widen ? rows.to(torch::kFloat) : rows;
  const auto weights = values.to(table.scalar_type());
  const int64_t batch = indices.size(0), k = indices.size(1);
  if (k == 0) return torch::zeros({batch, rows.size(1)}, rows.options());
  // Bags of K consecutive entries: offsets 0, K, 2K, ...
  const auto offsets = torch::arange(0, batch * k, k, indices.options());
  auto out = std::get<0>(torch::embedding_bag(table, indices.reshape(-1), offsets,
                                              /*scale_grad_by_freq=*/false, /*mode=sum*/ 0,
                                              /*sparse=*/false, weights.reshape(-1)));
  return widen ? out.to(rows.scalar_type()) : out;
}

torch::Tensor MatmulAtSparseIndices(const torch::Tensor& dense, const torch::Tensor& rows,
                                    const torch::Tensor& indices) {
  const int64_t batch = indices.size(0), k = indices.size(1), d = rows.size(1);
  const auto out_type = dense.scalar_type() == torch::kDouble || rows.scalar_type() == torch::kDouble
                            ? torch::kDouble : torch::kFloat;
  auto out = torch::empty({batch, k}, dense.options().dtype(out_type));
  const int64_t slice = SliceRows(k, d);
  for (int64_t begin = 0; begin < batch; begin += slice) {
    const int64_t n = std::min(slice, batch - begin);
    const auto idx = indices.narrow(0, begin, n);
    const auto gathered = rows.index_select(0, idx.reshape(-1)).view({n, k, d}).to(out_type);
    const auto x = dense.narrow(0, begin, n).to(out_type).unsqueeze(2);  // [n, d, 1]
    out.narrow(0, begin, n).copy_(torch::bmm(gathered, x).squeeze(2));
  }
  return out;
}

void ScatterAddOuterByLatent(const torch::Tensor& values, const torch::Tensor& indices,
                             const torch::Tensor& dense, torch::Tensor& out) {
  const int64_t batch = indices.size(0), k = indices.size(1), d = dense.size(1);
  const int64_t slice = SliceRows(k, d);
  for (int64_t begin = 0; begin < batch; begin += slice) {
    const int64_t n = std::min(slice, batch - begin);
    const auto idx = indices.narrow(0, begin, n).reshape(-1);
    // [n, K, d] outer products, accumulated row by row into the latents they name.
    const auto outer = values.narrow(0, begin, n).to(out.scalar_type()).unsqueeze(2) *
                       dense.narrow(0, begin, n).to(out.scalar_type()).unsqueeze(1);
    out.index_add_(0, idx, outer.view({n * k, d}));
  }
}

torch::Tensor SumByLatent(const torch::Tensor& values, const torch::Tensor& indices,
                          int64_t num_rows) {
  // Summed in float64 like the CPU kernel, so both agree to float32 rounding.
  auto sums = torch::zeros({num_rows}, values.options().dtype(torch::kDouble));
  sums.index_add_(0, indices.reshape(-1), values.reshape(-1).to(torch::kDouble));
  return sums.to(values.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat);
}

}  // namespace saegrid::kernels::portable
