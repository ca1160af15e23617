#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "engine/lm/language_model.h"

namespace saegrid {

absl::StatusOr<Hookpoint> ParseHookpoint(const std::string& name, int64_t num_layers) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("hookpoint \"", name, "\": ", why));
  };
  Hookpoint h;
  h.name = name;
  absl::string_view rest = name;
  std::string layer_text;
  if (absl::ConsumePrefix(&rest, "blocks.")) {
    const size_t dot = rest.find('.');
    if (dot == absl::string_view::npos) return bad("expected blocks.L.hook_resid_pre|resid_post|attn_out|mlp_out");
    layer_text = std::string(rest.substr(0, dot));
    const absl::string_view hook = rest.substr(dot + 1);
    if (hook == "hook_resid_pre") {
      h.kind = Hookpoint::Kind::kResidPre;
    } else if (hook == "hook_resid_post") {
      h.kind = Hookpoint::Kind::kResidPost;
    } else if (hook == "hook_attn_out") {
      h.kind = Hookpoint::Kind::kAttnOut;
    } else if (hook == "hook_mlp_out") {
      h.kind = Hookpoint::Kind::kMlpOut;
    } else {
      return bad("expected blocks.L.hook_resid_pre|resid_post|attn_out|mlp_out");
    }
  } else {
    // sparsify's module paths: a block's output.
    for (const char* prefix : {"transformer.", "gpt_neox.", "model."}) {
      if (absl::ConsumePrefix(&rest, prefix)) break;
    }
    if (!absl::ConsumePrefix(&rest, "h.") && !absl::ConsumePrefix(&rest, "layers.")) {
      return bad("expected blocks.L.hook_<kind> (SAELens) or a block's module path such as h.L or layers.L (sparsify)");
    }
    layer_text = std::string(rest);
    h.kind = Hookpoint::Kind::kResidPost;
  }
  if (layer_text.empty() || !std::all_of(layer_text.begin(), layer_text.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      !absl::SimpleAtoi(layer_text, &h.layer)) {
    return bad(absl::StrCat("\"", layer_text, "\" is not a layer number"));
  }
  if (h.layer >= num_layers) return bad(absl::StrCat("layer ", h.layer, " does not exist: the model has ", num_layers));
  return h;
}

std::string TransformerLensName(const Hookpoint& hook) {
  const char* kind = "hook_resid_post";
  switch (hook.kind) {
    case Hookpoint::Kind::kResidPre: kind = "hook_resid_pre"; break;
    case Hookpoint::Kind::kResidPost: kind = "hook_resid_post"; break;
    case Hookpoint::Kind::kAttnOut: kind = "hook_attn_out"; break;
    case Hookpoint::Kind::kMlpOut: kind = "hook_mlp_out"; break;
  }
  return absl::StrCat("blocks.", hook.layer, ".", kind);
}

}  // namespace saegrid
