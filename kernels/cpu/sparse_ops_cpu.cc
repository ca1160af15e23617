#include "kernels/cpu/sparse_ops_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <type_traits>
#include <vector>

namespace saegrid::kernels::cpu {
namespace {

// Accumulate in double for double rows, else in float (bf16 rows too).
template <typename scalar_t>
using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

torch::ScalarType AccType(torch::ScalarType rows) {
  return rows == torch::kDouble ? torch::kDouble : torch::kFloat;
}

// Rows of one latent are short (d elements), so a token-or-latent level grain keeps per-task
// overhead small while still splitting a batch across the configured threads.
constexpr int64_t kGrain = 16;


// Groups the flat entries of a [B, K] index tensor by latent id (counting sort): entries of
// latent l are order[start[l] .. start[l + 1]).
struct EntriesByLatent {
  std::vector<int64_t> start;
  std::vector<int64_t> order;
};

EntriesByLatent GroupByLatent(const int64_t* idx, int64_t count, int64_t num_rows) {
  EntriesByLatent g;
  g.start.assign(num_rows + 1, 0);
  g.order.resize(count);
  for (int64_t e = 0; e < count; ++e) ++g.start[idx[e] + 1];
  for (int64_t l = 0; l < num_rows; ++l) g.start[l + 1] += g.start[l];
  std::vector<int64_t> cursor(g.start.begin(), g.start.end() - 1);
  for (int64_t e = 0; e < count; ++e) g.order[cursor[idx[e]]++] = e;
  return g;
}

}  // namespace

torch::Tensor DenseSparseMatmul(const torch::Tensor& values, const torch::Tensor& indices,
                                const torch::Tensor& rows) {
  const int64_t batch = values.size(0), k = values.size(1), d = rows.size(1);
  auto vals = values.to(AccType(rows.scalar_type()));
  auto out = torch::empty({batch, d}, rows.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, rows.scalar_type(), "DenseSparseMatmul", [&] {
    using acc = acc_t<scalar_t>;
    const acc* v = vals.data_ptr<acc>();
    const int64_t* ix = indices.data_ptr<int64_t>();
    const scalar_t* w = rows.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, batch, kGrain, [&](int64_t begin, int64_t end) {
      std::vector<acc> row(d);
      for (int64_t b = begin; b < end; ++b) {
        std::fill(row.begin(), row.end(), acc(0));
        for (int64_t j = 0; j < k; ++j) {
          const acc a = v[b * k + j];
          if (a == acc(0)) continue;
          const scalar_t* src = w + ix[b * k + j] * d;
          for (int64_t c = 0; c < d; ++c) row[c] += a * static_cast<acc>(src[c]);
        }
        scalar_t* dst = o + b * d;
        for (int64_t c = 0; c < d; ++c) dst[c] = static_cast<scalar_t>(row[c]);
      }
    });
  });
  return out;
}

torch::Tensor MatmulAtSparseIndices(const torch::Tensor& dense, const torch::Tensor& rows,
                                    const torch::Tensor& indices) {
  const int64_t batch = indices.size(0), k = indices.size(1), d = rows.size(1);
  const auto acc_type = AccType(rows.scalar_type());
  auto x = dense.to(acc_type).contiguous();
  auto out = torch::empty({batch, k}, dense.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, rows.scalar_type(), "MatmulAtSparseIndices", [&] {
    using acc = acc_t<scalar_t>;
    const acc* xs = x.data_ptr<acc>();
    const int64_t* ix = indices.data_ptr<int64_t>();
    const scalar_t* w = rows.data_ptr<scalar_t>();
    acc* o = out.data_ptr<acc>();
    at::parallel_for(0, batch, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const acc* xb = xs + b * d;
        for (int64_t j = 0; j < k; ++j) {
          const scalar_t* r = w + ix[b * k + j] * d;
          acc sum = 0;
          for (int64_t c = 0; c < d; ++c) sum += xb[c] * static_cast<acc>(r[c]);
          o[b * k + j] = sum;
        }
      }
    });
  });
  return out;
}

void ScatterAddOuterByLatent(const torch::Tensor& values, const torch::Tensor& indices,
                             const torch::Tensor& dense, torch::Tensor& out) {
  const int64_t k = values.size(1), d = out.size(1), num_rows = out.size(0);
  const auto acc_type = AccType(out.scalar_type());
  auto vals = values.to(acc_type).contiguous();
  auto x = dense.to(acc_type).contiguous();
  const EntriesByLatent groups = GroupByLatent(indices.data_ptr<int64_t>(), indices.numel(),
                                               num_rows);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, out.scalar_type(), "ScatterAddOuterByLatent", [&] {
    using acc = acc_t<scalar_t>;
    const acc* v = vals.data_ptr<acc>();
    const acc* xs = x.data_ptr<acc>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, num_rows, kGrain * 16, [&](int64_t begin, int64_t end) {
      std::vector<acc> row(d);
      for (int64_t l = begin; l < end; ++l) {
        const int64_t first = groups.start[l], last = groups.start[l + 1];
        if (first == last) continue;
        scalar_t* dst = o + l * d;
        for (int64_t c = 0; c < d; ++c) row[c] = static_cast<acc>(dst[c]);
        for (int64_t p = first; p < last; ++p) {
          const int64_t e = groups.order[p];
          const acc a = v[e];
          if (a == acc(0)) continue;
          const acc* xb = xs + (e / k) * d;
          for (int64_t c = 0; c < d; ++c) row[c] += a * xb[c];
        }
        for (int64_t c = 0; c < d; ++c) dst[c] = static_cast<scalar_t>(row[c]);
      }
    });
  });
}

torch::Tensor SumByLatent(const torch::Tensor& values, const torch::Tensor& indices,
                          int64_t num_rows) {
  auto vals = values.to(torch::kDouble).contiguous();
  auto sums = torch::zeros({num_rows}, torch::kDouble);
  const double* v = vals.data_ptr<double>();
  const int64_t* ix = indices.data_ptr<int64_t>();
  double* s = sums.data_ptr<double>();
  for (int64_t e = 0; e < values.numel(); ++e) s[ix[e]] += v[e];
  return sums.to(values.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat);
}

}  // namespace saegrid::kernels::cpu
