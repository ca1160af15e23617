#include "engine/lm/harvest.h"

#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/durable_file.h"
#include "base/status_macros.h"
#include "engine/npy.h"
#include "engine/safetensors.h"
#include "nlohmann/json.hpp"

namespace saegrid {
namespace {

namespace fs = std::filesystem;

std::string ShardName(int64_t i, HarvestOptions::Format format) {
  return absl::StrFormat(format == HarvestOptions::Format::kNpy ? "shard-%05d.npy" : "shard-%05d.safetensors", i);
}

const char* DtypeName(torch::ScalarType dtype) {
  return dtype == torch::kHalf ? "float16" : dtype == torch::kBFloat16 ? "bfloat16" : "float32";
}
std::string TokensName(int64_t i) { return absl::StrFormat("shard-%05d.tokens.npy", i); }

nlohmann::json Describe(const LanguageModel& model, const TokenFile& tokens, const HarvestOptions& o, int64_t sequences) {
  return {{"model", o.model_description}, {"model_type", model.model_type()}, {"hookpoint", o.hook.name},
          {"layer", o.hook.layer}, {"token_file", tokens.path()}, {"context_length", tokens.context_length()},
          {"sequences", sequences}, {"sequences_per_shard", o.sequences_per_shard},
          {"excluded_ids", o.excluded_ids}, {"dtype", DtypeName(o.dtype)},
          {"format", o.format == HarvestOptions::Format::kNpy ? "npy" : "safetensors"},
          {"d_model", model.d_model()}};
}

}  // namespace

absl::StatusOr<KeptRows> ActivationsAtKeptPositions(const LanguageModel& model, const Hookpoint& hook,
                                                    const torch::Tensor& ids, const std::vector<int64_t>& excluded_ids,
                                                    torch::Device device) {
  SAEGRID_ASSIGN_OR_RETURN(auto acts, model.Forward(ids.to(device), {hook}));
  KeptRows rows{acts[0].reshape({-1, model.d_model()}).to(torch::kCPU, torch::kFloat), ids.reshape(-1)};
  if (!excluded_ids.empty()) {
    const torch::Tensor keep = ExcludedPositionMask(ids, excluded_ids).logical_not().reshape(-1);
    rows.x = rows.x.index({keep});
    rows.tokens = rows.tokens.index({keep});
  }
  rows.x = rows.x.contiguous();
  rows.tokens = rows.tokens.contiguous();
  return rows;
}

absl::StatusOr<HarvestProgress> HarvestActivations(const LanguageModel& model, const TokenFile& tokens,
                                                   const HarvestOptions& o,
                                                   const std::function<void(const HarvestProgress&)>& on_shard) {
  if (o.sequences_per_shard <= 0 || o.sequences_per_batch <= 0) {
    return absl::InvalidArgumentError("harvest: sequences_per_shard and sequences_per_batch must be > 0");
  }
  const bool npy = o.format == HarvestOptions::Format::kNpy;
  if (o.dtype != torch::kFloat && o.dtype != torch::kHalf && (npy || o.dtype != torch::kBFloat16)) {
    return absl::InvalidArgumentError(npy ? "harvest: .npy shards are float32 or float16 (bfloat16 needs safetensors)"
                                          : "harvest: shards are float32, float16 or bfloat16");
  }
  const int64_t sequences = o.max_sequences > 0 ? std::min(o.max_sequences, tokens.num_sequences()) : tokens.num_sequences();
  std::error_code ec;
  fs::create_directories(o.output_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("harvest: cannot create ", o.output_dir, ": ", ec.message()));
  const nlohmann::json description = Describe(model, tokens, o, sequences);
  const std::string description_path = (fs::path(o.output_dir) / "harvest.json").string();
  if (fs::exists(description_path, ec)) {
    std::ifstream in(description_path);
    const auto existing = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (existing != description) {
      return absl::FailedPreconditionError(absl::StrCat(description_path, " describes another harvest (",
                                                        existing.is_discarded() ? "unreadable" : existing.dump(),
                                                        "); use another output directory"));
    }
  } else {
    SAEGRID_RETURN_IF_ERROR(WriteFileDurably(description_path, description.dump(2)));
  }
  HarvestProgress progress;
  progress.shards_total = (sequences + o.sequences_per_shard - 1) / o.sequences_per_shard;
  nlohmann::json manifest_shards = nlohmann::json::array();
  for (int64_t shard = 0; shard < progress.shards_total; ++shard) {
    const int64_t first = shard * o.sequences_per_shard;
    const int64_t count = std::min(o.sequences_per_shard, sequences - first);
    const fs::path shard_path = fs::path(o.output_dir) / ShardName(shard, o.format);
    const fs::path tokens_path = fs::path(o.output_dir) / TokensName(shard);
    if (npy) {
      manifest_shards.push_back({{"path", ShardName(shard, o.format)}, {"tokens", TokensName(shard)}});
    } else {
      manifest_shards.push_back(ShardName(shard, o.format));
    }
    // Every file is written atomically, the activations last: with them present the shard is done.
    if (fs::exists(shard_path, ec) && (!npy || fs::exists(tokens_path, ec))) {
      ++progress.shards_done;
      ++progress.shards_skipped;
      progress.sequences_done += count;
      if (on_shard) on_shard(progress);
      continue;
    }
    std::vector<torch::Tensor> rows, ids;
    for (int64_t begin = first; begin < first + count; begin += o.sequences_per_batch) {
      SAEGRID_ASSIGN_OR_RETURN(auto batch, tokens.Read(begin, std::min(o.sequences_per_batch, first + count - begin)));
      SAEGRID_ASSIGN_OR_RETURN(KeptRows kept, ActivationsAtKeptPositions(model, o.hook, batch, o.excluded_ids, o.device));
      rows.push_back(kept.x.to(o.dtype));
      ids.push_back(std::move(kept.tokens));
    }
    const auto x = torch::cat(rows), t = torch::cat(ids);
    if (npy) {
      SAEGRID_RETURN_IF_ERROR(WriteNpy(tokens_path.string(), t));
      SAEGRID_RETURN_IF_ERROR(WriteNpy(shard_path.string(), x));
    } else {
      SAEGRID_RETURN_IF_ERROR(WriteSafetensors(shard_path.string(), {{"activations", x}, {"tokens", t}}));
    }
    ++progress.shards_done;
    progress.sequences_done += count;
    progress.rows_written += x.size(0);
    if (on_shard) on_shard(progress);
  }
  SAEGRID_RETURN_IF_ERROR(WriteFileDurably((fs::path(o.output_dir) / "manifest.json").string(),
                                           nlohmann::json{{"shards", manifest_shards}}.dump(2)));
  return progress;
}

}  // namespace saegrid
