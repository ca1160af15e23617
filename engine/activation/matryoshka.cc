// Matryoshka (Bussmann et al., Nabeshima): BatchTopK whose dictionary is a nest of prefixes
// m_1 < m_2 < ... < n, each of which must reconstruct the input on its own: the reconstruction
// loss is summed over the prefixes (SaeModel decodes each prefix's latents from the one
// selection), so the first latents learn the most general features. Selection, inference and
// export are BatchTopK's.
#include <algorithm>

#include "engine/activation/architectures.h"
#include "engine/activation/batch_topk.h"

namespace saegrid {
namespace {

class Matryoshka final : public BatchTopK {
 public:
  explicit Matryoshka(const ModelConfig& config) : BatchTopK(config) {}

  std::vector<int64_t> Prefixes() const override {
    std::vector<int64_t> prefixes = config_.matryoshka_prefixes;
    if (prefixes.empty()) {
      for (int64_t divisor : {16, 8, 4, 2}) {
        if (config_.num_latents / divisor > 0) prefixes.push_back(config_.num_latents / divisor);
      }
    }
    prefixes.erase(std::remove_if(prefixes.begin(), prefixes.end(),
                                  [&](int64_t m) { return m <= 0 || m >= config_.num_latents; }),
                   prefixes.end());
    prefixes.erase(std::unique(prefixes.begin(), prefixes.end()), prefixes.end());
    prefixes.push_back(config_.num_latents);
    return prefixes;
  }
};

}  // namespace

std::unique_ptr<ActivationFunction> MakeMatryoshka(const ModelConfig& config) {
  return std::make_unique<Matryoshka>(config);
}

}  // namespace saegrid
