#include "engine/sparse_autograd.h"

#include <torch/autograd.h>

#include "kernels/sparse_ops.h"

namespace saegrid {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class EncoderAtIndicesFn : public torch::autograd::Function<EncoderAtIndicesFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_centered,
                               const torch::Tensor& w_enc, const torch::Tensor& b_enc,
                               const torch::Tensor& b_pre, const torch::Tensor& indices,
                               const torch::Tensor& selected_values) {
    ctx->save_for_backward({x_centered, w_enc, indices});
    return selected_values.detach().clone();
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& x_centered = saved[0];
    const torch::Tensor& w_enc = saved[1];
    const torch::Tensor& indices = saved[2];
    const torch::Tensor grad = grad_outputs[0].contiguous();
    const int64_t num_latents = w_enc.size(0);

    torch::Tensor grad_w_enc, grad_b_enc, grad_b_pre;
    if (ctx->needs_input_grad(1)) {
      grad_w_enc = torch::zeros_like(w_enc);
      kernels::ScatterAddOuterByLatent(grad, indices, x_centered, grad_w_enc);
    }
    // Sum-first: the batch-summed sparse gradient is exactly the b_enc gradient.
    const torch::Tensor per_latent = kernels::SumByLatent(grad, indices, num_latents);
    if (ctx->needs_input_grad(2)) grad_b_enc = per_latent.to(w_enc.scalar_type());
    if (ctx->needs_input_grad(3)) {
      grad_b_pre = -torch::mv(w_enc.t().to(per_latent.scalar_type()), per_latent)
                        .to(w_enc.scalar_type());
    }
    return {torch::Tensor(), grad_w_enc, grad_b_enc, grad_b_pre, torch::Tensor(), torch::Tensor()};
  }
};

class SparseDecodeFn : public torch::autograd::Function<SparseDecodeFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& acts,
                               const torch::Tensor& indices, const torch::Tensor& w_dec) {
    ctx->save_for_backward({acts, indices, w_dec});
    return kernels::DenseSparseMatmul(acts, indices, w_dec);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor& acts = saved[0];
    const torch::Tensor& indices = saved[1];
    const torch::Tensor& w_dec = saved[2];
    const torch::Tensor grad = grad_outputs[0].contiguous();

    torch::Tensor grad_acts, grad_w_dec;
    if (ctx->needs_input_grad(0)) {
      grad_acts = kernels::MatmulAtSparseIndices(grad, w_dec, indices).to(acts.scalar_type());
    }
    if (ctx->needs_input_grad(2)) {
      grad_w_dec = torch::zeros_like(w_dec);
      kernels::ScatterAddOuterByLatent(acts, indices, grad, grad_w_dec);
    }
    return {grad_acts, torch::Tensor(), grad_w_dec};
  }
};

}  // namespace

torch::Tensor EncoderAtIndices(const torch::Tensor& x_centered, const torch::Tensor& w_enc,
                               const torch::Tensor& b_enc, const torch::Tensor& b_pre,
                               const torch::Tensor& indices, const torch::Tensor& selected_values) {
  // x is data, never trained: detaching it keeps b_pre's gradient to the one term above.
  return EncoderAtIndicesFn::apply(x_centered.detach(), w_enc, b_enc, b_pre, indices, selected_values);
}

torch::Tensor SparseDecode(const torch::Tensor& acts, const torch::Tensor& indices,
                           const torch::Tensor& w_dec) {
  return SparseDecodeFn::apply(acts, indices, w_dec);
}

}  // namespace saegrid
