#include "formats/trainer_state.h"

#include <sys/stat.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>

#include "base/status_macros.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/activation/architecture_names.h"

namespace saegrid {
namespace {

using nlohmann::json;

// The file nests three levels (root -> state_slices -> slice; root -> model ->
// matryoshka_prefixes); deeper text is refused while it is parsed, so that "[[[[..." cannot build
// a large tree.
constexpr int kMaxDepth = 4;

// A JSON value as it may appear in a message: compact and at most 60 characters.
std::string Shown(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

// Field readers: errors read "<what>: <field>: <problem>".
class Fields {
 public:
  Fields(const json& object, std::string_view what, std::string prefix)
      : object_(object), what_(what), prefix_(std::move(prefix)) {}

  absl::Status Bad(std::string_view key, const std::string& problem) const {
    return absl::DataLossError(absl::StrCat(std::string(what_), ": ", prefix_, std::string(key), ": ", problem));
  }
  const json* Find(std::string_view key) const {
    auto it = object_.find(std::string(key));
    return it == object_.end() ? nullptr : &*it;
  }

  // An integer in [lo, hi]; `fallback` when absent, or an error when there is none.
  absl::StatusOr<int64_t> Int(std::string_view key, int64_t lo, int64_t hi,
                              std::optional<int64_t> fallback = std::nullopt) const {
    const json* v = Find(key);
    if (v == nullptr) {
      if (fallback) return *fallback;
      return Bad(key, "is required");
    }
    if (!v->is_number_integer()) return Bad(key, "must be an integer, got " + Shown(*v));
    if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      return Bad(key, "is beyond int64, got " + Shown(*v));
    }
    const int64_t x = v->get<int64_t>();
    if (x < lo || x > hi) {
      if (hi == INT64_MAX) return Bad(key, absl::StrCat("must be >= ", lo, ", got ", x));
      return Bad(key, absl::StrCat("must be in [", lo, ", ", hi, "], got ", x));
    }
    return x;
  }

  absl::StatusOr<double> Double(std::string_view key, double lo, double fallback) const {
    const json* v = Find(key);
    if (v == nullptr) return fallback;
    if (!v->is_number()) return Bad(key, "must be a number, got " + Shown(*v));
    const double x = v->get<double>();
    if (!std::isfinite(x) || x < lo) return Bad(key, absl::StrCat("must be finite and >= ", lo, ", got ", Shown(*v)));
    return x;
  }

  // A finite number in [lo, hi] (lo_open: in (lo, hi]).
  absl::StatusOr<double> DoubleIn(std::string_view key, double lo, double hi, double fallback,
                                  bool lo_open = false) const {
    const json* v = Find(key);
    if (v == nullptr) return fallback;
    if (!v->is_number()) return Bad(key, "must be a number, got " + Shown(*v));
    const double x = v->get<double>();
    if (!std::isfinite(x) || (lo_open ? x <= lo : x < lo) || x > hi) {
      const std::string low = absl::StrCat(lo_open ? "(" : "[", lo);
      if (std::isinf(lo) && std::isinf(hi)) return Bad(key, "must be a finite number, got " + Shown(*v));
      if (std::isinf(hi)) {
        return Bad(key, absl::StrCat("must be finite and ", lo_open ? "> " : ">= ", lo, ", got ", Shown(*v)));
      }
      return Bad(key, absl::StrCat("must be in ", low, ", ", hi, "], got ", Shown(*v)));
    }
    return x;
  }

  // An array of integers (absent: empty), each checked by the caller.
  absl::StatusOr<std::vector<int64_t>> IntList(std::string_view key) const {
    std::vector<int64_t> out;
    const json* v = Find(key);
    if (v == nullptr) return out;
    if (!v->is_array()) return Bad(key, "must be an array of integers, got " + Shown(*v));
    for (size_t i = 0; i < v->size(); ++i) {
      const json& x = (*v)[i];
      const std::string field = absl::StrCat(std::string(key), "[", i, "]");
      if (!x.is_number_integer()) return Bad(field, "must be an integer, got " + Shown(x));
      if (x.is_number_unsigned() && x.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
        return Bad(field, "is beyond int64, got " + Shown(x));
      }
      out.push_back(x.get<int64_t>());
    }
    return out;
  }

  absl::StatusOr<bool> Bool(std::string_view key, bool fallback) const {
    const json* v = Find(key);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) return Bad(key, "must be true or false, got " + Shown(*v));
    return v->get<bool>();
  }

  // A string that is one of `allowed` (when given); `fallback` when absent (nullptr: required).
  absl::StatusOr<std::string> String(std::string_view key, const char* fallback,
                                     std::initializer_list<const char*> allowed = {}) const {
    const json* v = Find(key);
    if (v == nullptr) {
      if (fallback != nullptr) return std::string(fallback);
      return Bad(key, "is required");
    }
    if (!v->is_string()) return Bad(key, "must be a string, got " + Shown(*v));
    std::string s = v->get<std::string>();
    if (allowed.size() == 0) return s;
    std::string choices;
    for (const char* a : allowed) {
      if (s == a) return s;
      absl::StrAppend(&choices, choices.empty() ? "" : " or ", "\"", a, "\"");
    }
    return Bad(key, absl::StrCat("must be ", choices, ", got ", Shown(*v)));
  }

  // A nested object; nullptr when absent and not required.
  absl::StatusOr<const json*> Object(std::string_view key, bool required) const {
    const json* v = Find(key);
    if (v == nullptr) {
      if (required) return Bad(key, "is required");
      return v;
    }
    if (!v->is_object()) return Bad(key, "must be an object, got " + Shown(*v));
    return v;
  }

  const std::string& prefix() const { return prefix_; }

 private:
  const json& object_;
  std::string_view what_;
  std::string prefix_;
};

}  // namespace

bool IsPlainFileName(std::string_view name) {
  if (name.empty() || name.size() > 255 || name == "." || name == "..") return false;
  for (unsigned char c : name) {
    if (c == '/' || c == '\\' || c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

absl::StatusOr<TrainerStateModel> ParseTrainerStateModel(const json& model, std::string_view what) {
  if (!model.is_object()) {
    return absl::DataLossError(absl::StrCat(std::string(what), ": model: must be an object, got ", Shown(model)));
  }
  const Fields f(model, what, "model.");
  TrainerStateModel m;
  SAEGRID_ASSIGN_OR_RETURN(m.architecture, f.String("architecture", nullptr));
  const std::optional<Architecture> architecture = ParseArchitecture(m.architecture);
  if (!architecture) {
    return f.Bad("architecture", absl::StrCat("must be one of ", ArchitectureChoices(), ", got ",
                                              Shown(json(m.architecture))));
  }
  SAEGRID_ASSIGN_OR_RETURN(m.d_in, f.Int("d_in", 1, kMaxTrainerStateDimension));
  SAEGRID_ASSIGN_OR_RETURN(m.num_latents, f.Int("num_latents", 1, kMaxTrainerStateLatents));
  const bool uses_k = ArchitectureUsesK(*architecture);
  // The writer records k for every architecture; relu and jumprelu ignore it, so it is only
  // required (and bounded by the dictionary) where it applies.
  if (uses_k) {
    SAEGRID_ASSIGN_OR_RETURN(m.k, f.Int("k", 1, m.num_latents));
  } else {
    SAEGRID_ASSIGN_OR_RETURN(m.k, f.Int("k", 0, INT64_MAX, 0));
  }
  SAEGRID_ASSIGN_OR_RETURN(m.k_aux, f.Int("k_aux", 0, kMaxTrainerStateLatents, 0));
  SAEGRID_ASSIGN_OR_RETURN(m.auxk_alpha, f.Double("auxk_alpha", 0, m.auxk_alpha));
  SAEGRID_ASSIGN_OR_RETURN(m.dead_tokens_threshold,
                                 f.Int("dead_tokens_threshold", 0, INT64_MAX, m.dead_tokens_threshold));
  SAEGRID_ASSIGN_OR_RETURN(m.l1_coefficient, f.Double("l1_coefficient", 0, m.l1_coefficient));
  SAEGRID_ASSIGN_OR_RETURN(m.normalize_inputs,
                           f.String("normalize_inputs", "none", {"none", "layer_norm", "dataset_constant"}));
  SAEGRID_ASSIGN_OR_RETURN(m.input_scale, f.Double("input_scale", 1e-30, m.input_scale));
  // The k schedule starts at or above k (it only ever decreases to k).
  SAEGRID_ASSIGN_OR_RETURN(m.k_initial, f.Int("k_initial", 0, m.num_latents, 0));
  if (uses_k && m.k_initial != 0 && m.k_initial < m.k) {
    return f.Bad("k_initial", absl::StrCat("must be 0 (no schedule) or >= k (", m.k, "), got ", m.k_initial));
  }
  SAEGRID_ASSIGN_OR_RETURN(m.k_schedule_steps, f.Int("k_schedule_steps", 0, INT64_MAX, 0));
  SAEGRID_ASSIGN_OR_RETURN(m.threshold_decay, f.DoubleIn("threshold_decay", 0, 1, m.threshold_decay));
  const double inf = std::numeric_limits<double>::infinity();
  // Negative means "not fitted yet" (a checkpoint before the first step), so any finite value.
  SAEGRID_ASSIGN_OR_RETURN(m.inference_threshold, f.DoubleIn("inference_threshold", -inf, inf, m.inference_threshold));
  SAEGRID_ASSIGN_OR_RETURN(m.jumprelu_initial_threshold,
                           f.Double("jumprelu_initial_threshold", 0, m.jumprelu_initial_threshold));
  // The straight-through estimator divides by the bandwidth.
  SAEGRID_ASSIGN_OR_RETURN(m.jumprelu_bandwidth,
                           f.DoubleIn("jumprelu_bandwidth", 0, inf, m.jumprelu_bandwidth, /*lo_open=*/true));
  SAEGRID_ASSIGN_OR_RETURN(m.l0_coefficient, f.Double("l0_coefficient", 0, m.l0_coefficient));
  SAEGRID_ASSIGN_OR_RETURN(m.target_l0, f.DoubleIn("target_l0", 0, static_cast<double>(m.num_latents), m.target_l0));
  SAEGRID_ASSIGN_OR_RETURN(m.matryoshka_prefixes, f.IntList("matryoshka_prefixes"));
  // Nested dictionaries: each prefix longer than the one before, the whole dictionary implied.
  for (size_t i = 0; i < m.matryoshka_prefixes.size(); ++i) {
    const int64_t p = m.matryoshka_prefixes[i];
    const std::string field = absl::StrCat("matryoshka_prefixes[", i, "]");
    if (p < 1 || p >= m.num_latents) {
      return f.Bad(field, absl::StrCat("must be in [1, ", m.num_latents - 1, "] (below num_latents, ",
                                       m.num_latents, "), got ", p));
    }
    if (i > 0 && p <= m.matryoshka_prefixes[i - 1]) {
      return f.Bad(field, absl::StrCat("must be greater than the previous prefix (", m.matryoshka_prefixes[i - 1],
                                       "): the prefixes increase, got ", p));
    }
  }
  return m;
}

absl::StatusOr<TrainerStateRecord> ParseTrainerState(std::string_view text, std::string_view what) {
  if (static_cast<int64_t>(text.size()) > kMaxTrainerStateBytes) {
    return absl::DataLossError(absl::StrCat(std::string(what), ": ", text.size(), " bytes, more than the limit of ",
                                            kMaxTrainerStateBytes));
  }
  bool too_deep = false;
  const json::parser_callback_t depth_guard = [&](int depth, json::parse_event_t event, json&) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth >= kMaxDepth) {
      too_deep = true;
      return false;  // not stored: its contents are skipped
    }
    return true;
  };
  const json j = json::parse(text.begin(), text.end(), depth_guard, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::DataLossError(absl::StrCat(std::string(what), ": not valid JSON"));
  if (too_deep) return absl::DataLossError(absl::StrCat(std::string(what), ": nested deeper than ", kMaxDepth, " levels"));
  if (!j.is_object()) return absl::DataLossError(absl::StrCat(std::string(what), ": not a JSON object"));
  const Fields f(j, what, "");
  TrainerStateRecord r;
  int64_t version = 0;
  SAEGRID_ASSIGN_OR_RETURN(version, f.Int("format_version", 0, INT64_MAX));
  if (version != kTrainerStateFormatVersion) {
    return f.Bad("format_version", absl::StrCat("unsupported version ", version, " (this build reads ",
                                                kTrainerStateFormatVersion, ")"));
  }
  r.format_version = static_cast<int>(version);
  SAEGRID_ASSIGN_OR_RETURN(r.step, f.Int("step", 0, INT64_MAX));
  SAEGRID_ASSIGN_OR_RETURN(r.tokens, f.Int("tokens", 0, INT64_MAX));
  if (r.tokens < r.step) {
    return f.Bad("tokens", absl::StrCat("(", r.tokens, ") is less than step (", r.step,
                                        "); every step trains at least one token"));
  }
  const json* cursor = nullptr;
  SAEGRID_ASSIGN_OR_RETURN(cursor, f.Object("data_cursor", true));
  const Fields c(*cursor, what, "data_cursor.");
  SAEGRID_ASSIGN_OR_RETURN(r.cursor_epoch, c.Int("epoch", 0, INT64_MAX));
  SAEGRID_ASSIGN_OR_RETURN(r.cursor_offset, c.Int("offset", 0, INT64_MAX));
  SAEGRID_ASSIGN_OR_RETURN(r.adam_step, f.Int("adam_step", 0, r.step));
  SAEGRID_ASSIGN_OR_RETURN(r.has_ema, f.Bool("has_ema", false));
  SAEGRID_ASSIGN_OR_RETURN(r.ema_updates, f.Int("ema_updates", 0, r.has_ema ? r.step : 0));
  SAEGRID_ASSIGN_OR_RETURN(r.overflow_tokens, f.Int("overflow_tokens", 0, INT64_MAX, 0));
  SAEGRID_ASSIGN_OR_RETURN(r.published_weights, f.String("published_weights", "raw", {"raw", "ema"}));
  if (r.published_weights == "ema" && !r.has_ema) {
    return f.Bad("published_weights", "is \"ema\" but has_ema is false");
  }
  SAEGRID_ASSIGN_OR_RETURN(r.hookpoint, f.String("hookpoint", nullptr));
  if (!IsPlainFileName(r.hookpoint)) {
    return f.Bad("hookpoint", "must be a plain directory name, got " + Shown(json(r.hookpoint)));
  }
  const json* parallelism = nullptr;
  SAEGRID_ASSIGN_OR_RETURN(parallelism, f.Object("parallelism", false));
  if (parallelism != nullptr) {
    const Fields p(*parallelism, what, "parallelism.");
    SAEGRID_ASSIGN_OR_RETURN(r.shards, p.Int("shards", 1, kMaxTrainerStateLatents));
    SAEGRID_ASSIGN_OR_RETURN(r.replicas, p.Int("replicas", 1, kMaxTrainerStateLatents));
  }
  const json* model = f.Find("model");
  if (model == nullptr) return f.Bad("model", "is required");
  SAEGRID_ASSIGN_OR_RETURN(r.model, ParseTrainerStateModel(*model, what));

  const json* slices = f.Find("state_slices");
  if (slices == nullptr) {
    // Written before sliced checkpoints existed: one slice of every latent.
    r.state_slices.push_back({"trainer_state.safetensors", 0, r.model.num_latents});
    return r;
  }
  if (!slices->is_array()) return f.Bad("state_slices", "must be an array, got " + Shown(*slices));
  if (slices->empty()) return f.Bad("state_slices", "must list at least one slice");
  std::set<std::string> files;
  int64_t covered = 0;
  for (size_t i = 0; i < slices->size(); ++i) {
    const json& s = (*slices)[i];
    const std::string field = absl::StrCat("state_slices[", i, "]");
    if (!s.is_object()) return f.Bad(field, "must be an object, got " + Shown(s));
    const Fields sf(s, what, field + ".");
    if (covered == r.model.num_latents) {
      return f.Bad(field, absl::StrCat("is one slice too many: the earlier ones cover all ", covered, " latents"));
    }
    TrainerStateSlice slice;
    SAEGRID_ASSIGN_OR_RETURN(slice.file, sf.String("file", nullptr));
    if (!IsPlainFileName(slice.file) || !absl::EndsWith(slice.file, ".safetensors")) {
      return sf.Bad("file", "must be a plain *.safetensors file name, got " + Shown(json(slice.file)));
    }
    if (!files.insert(slice.file).second) return sf.Bad("file", "names the file of an earlier slice");
    // The slices tile the latents in order: each begins where the previous one ended.
    SAEGRID_ASSIGN_OR_RETURN(slice.latent_begin, sf.Int("latent_begin", 0, INT64_MAX));
    if (slice.latent_begin != covered) {
      return sf.Bad("latent_begin", absl::StrCat("must be ", covered, " (where the ", i == 0 ? "latents begin" : "previous slice ended",
                                                 ") so that the slices tile the latents in order, got ",
                                                 slice.latent_begin));
    }
    SAEGRID_ASSIGN_OR_RETURN(slice.latent_end, sf.Int("latent_end", covered + 1, r.model.num_latents));
    covered = slice.latent_end;
    r.state_slices.push_back(std::move(slice));
  }
  if (covered != r.model.num_latents) {
    return f.Bad("state_slices", absl::StrCat("cover latents [0, ", covered, ") of the ", r.model.num_latents,
                                              " in model.num_latents"));
  }
  return r;
}

absl::StatusOr<TrainerStateRecord> ReadTrainerStateFile(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return absl::NotFoundError("checkpoint file " + path + " is missing");
  if (!S_ISREG(st.st_mode)) return absl::DataLossError("checkpoint file " + path + " is not a regular file");
  if (st.st_size > kMaxTrainerStateBytes) {
    return absl::DataLossError(absl::StrCat(path, ": ", st.st_size, " bytes, more than the limit of ",
                                            kMaxTrainerStateBytes));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError("checkpoint file " + path + " cannot be opened");
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseTrainerState(ss.str(), path);
}

}  // namespace saegrid
