#include "formats/checkpoint_inspector.h"

#include <map>
#include <optional>
#include <set>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/activation/architecture_names.h"
#include "formats/checkpoint_archive.h"
#include "formats/safetensors_header.h"
#include "formats/trainer_state.h"
#include "nlohmann/json.hpp"

namespace saegrid {
namespace {

using nlohmann::json;

struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::set<std::string> dtypes;  // any of these
};

// A JSON value as it may appear in a message: compact and at most 60 characters.
std::string Shown(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

std::string ShapeText(const std::vector<int64_t>& shape) { return "[" + absl::StrJoin(shape, ", ") + "]"; }

// The archive being inspected: its entries by name, and readers that name the entry on error.
class Inspection {
 public:
  Inspection(std::string path, std::vector<ArchiveEntry> entries) : path_(std::move(path)), entries_(std::move(entries)) {
    for (const auto& e : entries_) by_name_[e.name] = &e;
  }

  std::string Where(const std::string& name) const { return absl::StrCat("archive ", path_, ": entry '", name, "'"); }
  absl::Status Bad(const std::string& name, const std::string& problem) const {
    return absl::DataLossError(absl::StrCat(Where(name), ": ", problem));
  }

  // The regular file `name`, or nullptr.
  const ArchiveEntry* File(const std::string& name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() || it->second->is_directory ? nullptr : it->second;
  }
  absl::StatusOr<const ArchiveEntry*> Required(const std::string& name) const {
    const ArchiveEntry* e = File(name);
    if (e == nullptr) {
      return absl::DataLossError(absl::StrCat("archive ", path_, ": missing entry '", name, "' (a regular file)"));
    }
    return e;
  }

  // A JSON object of at most kMaxInspectedJsonBytes, nested at most a few levels.
  absl::StatusOr<json> JsonObject(const ArchiveEntry& e, int64_t max_bytes = kMaxInspectedJsonBytes) const {
    auto text = ReadArchiveEntry(path_, e, max_bytes);
    if (!text.ok()) return text.status();
    bool too_deep = false;
    const json::parser_callback_t guard = [&](int depth, json::parse_event_t event, json&) {
      if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) && depth >= 8) {
        too_deep = true;
        return false;
      }
      return true;
    };
    json j = json::parse(text->begin(), text->end(), guard, /*allow_exceptions=*/false);
    if (j.is_discarded()) return Bad(e.name, "not valid JSON");
    if (too_deep) return Bad(e.name, "JSON nested too deeply");
    if (!j.is_object()) return Bad(e.name, "not a JSON object");
    return j;
  }

  // The safetensors header of `e`, reading at most kMaxInspectedHeaderBytes of it.
  absl::StatusOr<SafetensorsHeader> Header(const ArchiveEntry& e) const {
    const std::string what = Where(e.name);
    auto first = ReadArchiveEntryRange(path_, e, 0, 8);
    if (!first.ok()) return first.status();
    auto needed = SafetensorsHeaderBytesNeeded(*first, e.size, what);
    if (!needed.ok()) return needed.status();
    if (*needed > kMaxInspectedHeaderBytes) {
      return Bad(e.name, absl::StrCat("safetensors header of ", *needed, " bytes exceeds the ",
                                      kMaxInspectedHeaderBytes, "-byte limit for a checkpoint"));
    }
    auto prefix = ReadArchiveEntryRange(path_, e, 0, *needed);
    if (!prefix.ok()) return prefix.status();
    return ParseSafetensorsHeader(*prefix, e.size, what);
  }

  // Requires the named safetensors file with the expected tensors (others may be present).
  absl::Status Tensors(const std::string& name, const std::vector<ExpectedTensor>& expected,
                       bool same_dtype = false) {
    auto e = Required(name);
    if (!e.ok()) return e.status();
    auto header = Header(**e);
    if (!header.ok()) return header.status();
    checked_.insert(name);
    std::string first_dtype;
    for (const auto& x : expected) {
      const SafetensorsTensorInfo* t = header->Find(x.name);
      if (t == nullptr) return Bad(name, "has no tensor \"" + x.name + "\"");
      if (t->shape != x.shape) {
        return Bad(name, absl::StrCat("tensor \"", x.name, "\" has shape ", ShapeText(t->shape), ", expected ",
                                      ShapeText(x.shape)));
      }
      if (!x.dtypes.count(t->dtype)) {
        return Bad(name, absl::StrCat("tensor \"", x.name, "\" has dtype ", t->dtype, ", expected ",
                                      absl::StrJoin(x.dtypes, " or ")));
      }
      if (same_dtype && !first_dtype.empty() && t->dtype != first_dtype) {
        return Bad(name, absl::StrCat("tensor \"", x.name, "\" has dtype ", t->dtype, " but \"", expected[0].name,
                                      "\" has ", first_dtype, "; the tensors must share one dtype"));
      }
      if (first_dtype.empty()) first_dtype = t->dtype;
    }
    return absl::OkStatus();
  }

  // Every *.safetensors entry not yet checked must have a valid header.
  absl::Status RemainingHeaders() const {
    for (const auto& e : entries_) {
      if (e.is_directory || !absl::EndsWith(e.name, ".safetensors") || checked_.count(e.name)) continue;
      auto header = Header(e);
      if (!header.ok()) return header.status();
    }
    return absl::OkStatus();
  }

  const std::string& path() const { return path_; }
  const std::vector<ArchiveEntry>& entries() const { return entries_; }

 private:
  std::string path_;
  std::vector<ArchiveEntry> entries_;
  std::map<std::string, const ArchiveEntry*> by_name_;
  std::set<std::string> checked_;
};

// The one top-level directory every entry lies in.
absl::StatusOr<std::string> TopLevelDirectory(const Inspection& in) {
  std::string top;
  for (const auto& e : in.entries()) {
    const size_t slash = e.name.find('/');
    if (slash == std::string::npos && !e.is_directory) {
      return in.Bad(e.name, "is a file at the top level; a checkpoint archive holds one step directory");
    }
    const std::string first = e.name.substr(0, slash);
    if (top.empty()) top = first;
    if (first != top) {
      return in.Bad(e.name, "is outside '" + top + "'; a checkpoint archive holds one step directory");
    }
  }
  if (top.empty()) return absl::DataLossError(absl::StrCat("archive ", in.path(), ": empty"));
  return top;
}

const std::set<std::string> kF32 = {"F32"};
const std::set<std::string> kI64 = {"I64"};
const std::set<std::string> kFloating = {"F32", "F16", "BF16", "F64"};

// The SAELens architecture each architecture is exported as (engine/checkpoint.cc): BatchTopK and
// Matryoshka as a JumpReLU with their inference threshold, as SAELens and dictionary_learning do.
std::string SaeLensArchitecture(Architecture a) {
  switch (a) {
    case Architecture::kTopK: return "topk";
    case Architecture::kReLU: return "standard";
    case Architecture::kBatchTopK:
    case Architecture::kJumpReLU:
    case Architecture::kMatryoshka: return "jumprelu";
  }
  return "";
}

}  // namespace

absl::StatusOr<CheckpointSummary> InspectCheckpointArchive(const std::string& archive_path) {
  auto listed = ListArchive(archive_path);
  if (!listed.ok()) return listed.status();
  Inspection in(archive_path, *std::move(listed));
  auto top = TopLevelDirectory(in);
  if (!top.ok()) return top.status();
  const std::string dir = *top + "/";

  const std::string state_name = dir + "trainer_state.json";
  auto state_entry = in.Required(state_name);
  if (!state_entry.ok()) return state_entry.status();
  auto text = ReadArchiveEntry(archive_path, **state_entry, kMaxTrainerStateBytes);
  if (!text.ok()) return text.status();
  auto state = ParseTrainerState(*text, in.Where(state_name));
  if (!state.ok()) return state.status();

  int64_t dir_step = -1;
  if (!absl::StartsWith(*top, "step_") || top->size() == 5 ||
      top->find_first_not_of("0123456789", 5) != std::string::npos || !absl::SimpleAtoi(top->substr(5), &dir_step)) {
    return absl::DataLossError(absl::StrCat("archive ", archive_path, ": top-level directory '", *top,
                                            "' is not named step_<number>"));
  }
  if (dir_step != state->step) {
    return absl::DataLossError(absl::StrCat("archive ", archive_path, ": top-level directory '", *top,
                                            "' does not match step ", state->step, " in ", state_name));
  }

  const int64_t d = state->model.d_in, n = state->model.num_latents;
  // JumpReLU's per-latent thresholds are a fifth trained tensor (engine/sae_types.h).
  const bool has_log_threshold = state->model.architecture == "jumprelu";
  for (const auto& slice : state->state_slices) {
    const int64_t rows = slice.latent_end - slice.latent_begin;
    std::vector<ExpectedTensor> expected;
    std::vector<std::string> groups = {"params.", "adam.exp_avg.", "adam.exp_avg_sq."};
    if (state->has_ema) groups.push_back("ema.");
    for (const auto& g : groups) {
      expected.push_back({g + "W_enc", {rows, d}, kF32});
      expected.push_back({g + "b_enc", {rows}, kF32});
      expected.push_back({g + "W_dec", {rows, d}, kF32});
      expected.push_back({g + "b_pre", {d}, kF32});
      if (has_log_threshold) expected.push_back({g + "log_threshold", {rows}, kF32});
    }
    expected.push_back({"dead.tokens_since_fired", {rows}, kI64});
    if (auto st = in.Tensors(dir + slice.file, expected); !st.ok()) return st;
  }

  const std::optional<Architecture> architecture = ParseArchitecture(state->model.architecture);
  // The sparsify run directory: only hookpoint directories, each with cfg.json and
  // sae.safetensors, since sparsify's whole-run loader takes every sub-directory for a hookpoint.
  const std::string run_dir = dir + kSparsifyRunDirName + "/";
  // An older checkpoint of the hookpoint "sparsify" holds its export directly in sparsify/.
  const bool legacy_named_sparsify = state->hookpoint == kSparsifyRunDirName && in.File(run_dir + "cfg.json") != nullptr;
  std::set<std::string> run_hookpoints;
  for (const auto& e : in.entries()) {
    if (legacy_named_sparsify) break;
    if (!absl::StartsWith(e.name, run_dir) || e.name.size() == run_dir.size()) continue;
    const std::string rest = e.name.substr(run_dir.size());
    const size_t slash = rest.find('/');
    if (slash == std::string::npos && !e.is_directory) {
      return in.Bad(e.name, absl::StrCat("is a file in the sparsify run directory '", run_dir,
                                         "', which holds only hookpoint directories"));
    }
    run_hookpoints.insert(rest.substr(0, slash));
  }
  for (const auto& hookpoint : run_hookpoints) {
    for (const char* file : {"cfg.json", "sae.safetensors"}) {
      if (auto e = in.Required(run_dir + hookpoint + "/" + file); !e.ok()) return e.status();
    }
  }
  // The sparsify export of this hookpoint: in the run directory, or directly in the step
  // directory in checkpoints written before the run directory existed. Written for TopK only.
  std::string sparsify;
  if (in.File(run_dir + state->hookpoint + "/cfg.json") != nullptr) {
    sparsify = run_dir + state->hookpoint + "/";
  } else if (state->hookpoint != kSaeLensDirName && in.File(dir + state->hookpoint + "/cfg.json") != nullptr) {
    sparsify = dir + state->hookpoint + "/";
  } else if (architecture == Architecture::kTopK) {
    return absl::DataLossError(absl::StrCat("archive ", archive_path, ": missing entry '", run_dir, state->hookpoint,
                                            "/cfg.json' (a regular file): a topk checkpoint has a sparsify export"));
  }
  if (!sparsify.empty()) {
    auto cfg_entry = in.Required(sparsify + "cfg.json");
    if (!cfg_entry.ok()) return cfg_entry.status();
    auto cfg = in.JsonObject(**cfg_entry);
    if (!cfg.ok()) return cfg.status();
    for (const auto& [key, want] : {std::pair<const char*, int64_t>{"d_in", d}, {"num_latents", n}, {"k", state->model.k}}) {
      auto it = cfg->find(key);
      if (it == cfg->end() || !it->is_number_integer() || it->get<int64_t>() != want) {
        return in.Bad(sparsify + "cfg.json", absl::StrCat(key, ": must be ", want, " as in ", state_name, ", got ",
                                                           it == cfg->end() ? std::string("nothing") : Shown(*it)));
      }
    }
    if (auto st = in.Tensors(sparsify + "sae.safetensors",
                             {{"encoder.weight", {n, d}, kFloating}, {"encoder.bias", {n}, kFloating},
                              {"W_dec", {n, d}, kFloating}, {"b_dec", {d}, kFloating}},
                             /*same_dtype=*/true);
        !st.ok()) {
      return st;
    }
  }
  // The SAELens export: optional beside a sparsify export, otherwise it is what publishes the
  // weights (every architecture but TopK).
  const std::string saelens = dir + kSaeLensDirName + "/";
  if (sparsify.empty() || in.File(saelens + "cfg.json") != nullptr ||
      in.File(saelens + "sae_weights.safetensors") != nullptr) {
    auto cfg_entry = in.Required(saelens + "cfg.json");
    if (!cfg_entry.ok()) return cfg_entry.status();
    auto cfg = in.JsonObject(**cfg_entry);
    if (!cfg.ok()) return cfg.status();
    const std::string want = architecture ? SaeLensArchitecture(*architecture) : "";
    auto it = cfg->find("architecture");
    if (it == cfg->end() || !it->is_string() || it->get<std::string>() != want) {
      return in.Bad(saelens + "cfg.json",
                    absl::StrCat("architecture: must be \"", want, "\" for a ", state->model.architecture,
                                 " checkpoint, got ", it == cfg->end() ? std::string("nothing") : Shown(*it)));
    }
    for (const auto& [key, value] : {std::pair<const char*, int64_t>{"d_in", d}, {"d_sae", n}}) {
      auto field = cfg->find(key);
      if (field == cfg->end() || !field->is_number_integer() || field->get<int64_t>() != value) {
        return in.Bad(saelens + "cfg.json", absl::StrCat(key, ": must be ", value, " as in ", state_name, ", got ",
                                                          field == cfg->end() ? std::string("nothing") : Shown(*field)));
      }
    }
    std::vector<ExpectedTensor> weights = {{"W_enc", {d, n}, kFloating}, {"b_enc", {n}, kFloating},
                                           {"W_dec", {n, d}, kFloating}, {"b_dec", {d}, kFloating}};
    if (want == "jumprelu") weights.push_back({"threshold", {n}, kFloating});
    if (auto st = in.Tensors(saelens + "sae_weights.safetensors", weights, /*same_dtype=*/true); !st.ok()) return st;
  }
  if (in.File(saelens + "sparsity.safetensors") != nullptr) {
    if (auto st = in.Tensors(saelens + "sparsity.safetensors", {{"sparsity", {n}, kFloating}}); !st.ok()) return st;
  }
  CheckpointSummary summary;
  if (const ArchiveEntry* e = in.File(dir + "evaluation.json"); e != nullptr) {
    auto j = in.JsonObject(*e);
    if (!j.ok()) return j.status();
    summary.has_evaluation = true;
  }
  if (auto st = in.RemainingHeaders(); !st.ok()) return st;

  summary.step = state->step;
  summary.tokens = state->tokens;
  summary.hookpoint = state->hookpoint;
  summary.d_in = d;
  summary.num_latents = n;
  summary.k = state->model.k;
  summary.architecture = state->model.architecture;
  return summary;
}

}  // namespace saegrid
