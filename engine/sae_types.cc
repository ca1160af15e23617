#include "engine/sae_types.h"

#include <torch/torch.h>

namespace saegrid {

std::vector<torch::Tensor> SaeParameters::All() const {
  std::vector<torch::Tensor> all = {w_enc, b_enc, w_dec, b_pre};
  if (log_threshold.defined()) all.push_back(log_threshold);
  return all;
}

const std::vector<std::string>& SaeParameters::Names() {
  static const std::vector<std::string> names = {"W_enc", "b_enc", "W_dec", "b_pre", "log_threshold"};
  return names;
}

std::vector<bool> SaeParameters::UnitNormRows() const {
  std::vector<bool> rows(All().size(), false);
  rows[2] = true;  // W_dec
  return rows;
}

SaeParameters SaeParameters::Clone() const {
  std::vector<torch::Tensor> copies;
  for (const auto& t : All()) copies.push_back(t.detach().clone());
  return FromList(copies);
}

SaeParameters SaeParameters::Latents(int64_t begin, int64_t count) const {
  SaeParameters p = *this;
  p.w_enc = w_enc.narrow(0, begin, count);
  p.b_enc = b_enc.narrow(0, begin, count);
  p.w_dec = w_dec.narrow(0, begin, count);
  if (log_threshold.defined()) p.log_threshold = log_threshold.narrow(0, begin, count);
  return p;
}

SaeParameters SaeParameters::FromList(const std::vector<torch::Tensor>& t) {
  TORCH_CHECK(t.size() == 4 || t.size() == 5, "SaeParameters::FromList needs 4 or 5 tensors, got ", t.size());
  SaeParameters p{t[0], t[1], t[2], t[3], torch::Tensor()};
  if (t.size() == 5) p.log_threshold = t[4];
  return p;
}

}  // namespace saegrid
