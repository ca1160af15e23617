#include "kernels/cpu/running_topk_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <cmath>
#include <cstdint>
#if defined(__SSE2__)
#include <immintrin.h>
#endif
#include <cstring>
#include <type_traits>
#include <utility>

namespace saegrid::kernels::cpu {
namespace {

// One row's heap: a min-heap under Weaker, so the root is the entry a better one replaces.
class Heap {
 public:
  Heap(float* values, int64_t* ids, int64_t* filled, int64_t k)
      : v_(values), id_(ids), filled_(*filled), k_(k) {}

  bool full() const { return filled_ == k_; }
  float threshold() const { return v_[0]; }

  // Better than the root: a higher value, or the same value with a lower id.
  bool Beats(float value, int64_t id) const {
    return value > v_[0] || (value == v_[0] && id < id_[0]);
  }

  void Push(float value, int64_t id) {
    int64_t i = filled_++;
    while (i > 0) {
      const int64_t parent = (i - 1) / 2;
      if (!Weaker(value, id, v_[parent], id_[parent])) break;
      v_[i] = v_[parent];
      id_[i] = id_[parent];
      i = parent;
    }
    v_[i] = value;
    id_[i] = id;
  }

  void ReplaceRoot(float value, int64_t id) {
    int64_t i = 0;
    for (;;) {
      int64_t child = 2 * i + 1;
      if (child >= filled_) break;
      if (child + 1 < filled_ && Weaker(v_[child + 1], id_[child + 1], v_[child], id_[child])) ++child;
      if (!Weaker(v_[child], id_[child], value, id)) break;
      v_[i] = v_[child];
      id_[i] = id_[child];
      i = child;
    }
    v_[i] = value;
    id_[i] = id;
  }

  void Offer(float value, int64_t id) {
    if (std::isnan(value)) return;
    if (!full()) {
      Push(value, id);
    } else if (Beats(value, id)) {
      ReplaceRoot(value, id);
    }
  }

 private:
  static bool Weaker(float av, int64_t aid, float bv, int64_t bid) {
    return av < bv || (av == bv && aid > bid);
  }

  float* v_;
  int64_t* id_;
  int64_t& filled_;
  int64_t k_;
};

// Whether any of the 16 entries at `p` is at or above `threshold` (NaN compares false). SSE2 is
// part of x86-64, so this needs no runtime dispatch; other targets take the scalar loop.
inline bool AnyAtLeast16(const float* p, float threshold) {
#if defined(__SSE2__)
  const __m128 t = _mm_set1_ps(threshold);
  const __m128 hit = _mm_or_ps(_mm_or_ps(_mm_cmpge_ps(_mm_loadu_ps(p), t), _mm_cmpge_ps(_mm_loadu_ps(p + 4), t)),
                               _mm_or_ps(_mm_cmpge_ps(_mm_loadu_ps(p + 8), t), _mm_cmpge_ps(_mm_loadu_ps(p + 12), t)));
  return _mm_movemask_ps(hit) != 0;
#else
  bool any = false;
  for (int i = 0; i < 16; ++i) any |= p[i] >= threshold;
  return any;
#endif
}

// Entries are tested 64 at a time, then 16 at a time, and only a group of 16 that reaches the
// threshold is offered entry by entry; past the first few thousand latents almost none does.
constexpr int64_t kBlock = 64;
constexpr int64_t kGroup = 16;

// The whole row: fill the heap, then skip what cannot enter it. Other dtypes are widened to
// float32 a block at a time.
template <typename scalar_t>
void ScanRow(const scalar_t* row, int64_t width, int64_t first_latent, Heap& heap) {
  int64_t c = 0;
  for (; c < width && !heap.full(); ++c) heap.Offer(static_cast<float>(row[c]), first_latent + c);
  alignas(64) float widened[kBlock];
  for (; c + kBlock <= width; c += kBlock) {
    const float* block;
    if constexpr (std::is_same_v<scalar_t, float>) {
      block = row + c;
    } else {
      for (int64_t j = 0; j < kBlock; ++j) widened[j] = static_cast<float>(row[c + j]);
      block = widened;
    }
    float threshold = heap.threshold();
    if (!AnyAtLeast16(block, threshold) && !AnyAtLeast16(block + 16, threshold) &&
        !AnyAtLeast16(block + 32, threshold) && !AnyAtLeast16(block + 48, threshold)) {
      continue;
    }
    for (int64_t g = 0; g < kBlock; g += kGroup) {
      if (!AnyAtLeast16(block + g, heap.threshold())) continue;
      for (int64_t j = g; j < g + kGroup; ++j) {
        if (block[j] >= heap.threshold()) heap.Offer(block[j], first_latent + c + j);
      }
    }
  }
  for (; c < width; ++c) heap.Offer(static_cast<float>(row[c]), first_latent + c);
}

template <typename scalar_t>
void ScanColumns(const scalar_t* row, const int64_t* columns, int64_t count, int64_t first_latent,
                 Heap& heap) {
  for (int64_t i = 0; i < count; ++i) {
    heap.Offer(static_cast<float>(row[columns[i]]), first_latent + columns[i]);
  }
}

// Rows per task: a row's scan is C compares, so a few rows already amortise the task.
constexpr int64_t kRowGrain = 4;

}  // namespace

void OfferChunk(const torch::Tensor& chunk, int64_t first_latent, const torch::Tensor& columns,
                RowHeaps heaps) {
  if (heaps.k == 0) return;
  const int64_t rows = chunk.size(0), width = chunk.size(1);
  const int64_t* cols = columns.defined() ? columns.data_ptr<int64_t>() : nullptr;
  const int64_t count = columns.defined() ? columns.numel() : 0;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, chunk.scalar_type(), "RunningTopK", [&] {
    const scalar_t* data = chunk.data_ptr<scalar_t>();
    at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        Heap heap(heaps.values + r * heaps.k, heaps.ids + r * heaps.k, heaps.filled + r, heaps.k);
        if (cols != nullptr) {
          ScanColumns(data + r * width, cols, count, first_latent, heap);
        } else {
          ScanRow(data + r * width, width, first_latent, heap);
        }
      }
    });
  });
}

}  // namespace saegrid::kernels::cpu
