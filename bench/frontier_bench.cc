// The sparsity frontier on the toy data: TopK, BatchTopK, JumpReLU, Matryoshka and ReLU SAEs, each
// trained at several sparsities on seed 004's generator (512 features in 256 dimensions, about 5
// active; `--size small` is a 64-dimensional miniature for the ctest smoke run), and each placed on
// the L0/FVU and L0/MMCS planes. The TopK family is swept over k; JumpReLU over its L0 penalty and
// ReLU over its L1 penalty, at values chosen so that their L0 lands in the same range.
//
// The baseline of the run is TopK: each point's FVU is divided by TopK's FVU at the same L0,
// interpolated (piecewise linear in log L0 / log FVU) between the TopK points measured in the same
// run; outside TopK's L0 range the end segment is extended and the point is marked extrapolated.
//
// Writes frontier.json (what it prints), frontier.md (the table), frontier_fvu.png and
// frontier_mmcs.png (gnuplot, cli/plots.h) into --output-dir; with --docs-dir, copies them there,
// replacing only the generated part of an existing frontier.md (between the markers below).
//
//   frontier_bench [--size small|default] [--output-dir DIR] [--docs-dir docs] [--threads 0]
//                  [--tokens N] [--batch B] [--only topk,relu,...] [--k 4,8,16] [--jumprelu-l0 a,b,c]
//                  [--relu-l1 a,b,c] [--jumprelu-threshold 0.1] [--jumprelu-bandwidth 0.05] [--lr 2e-3]
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/durable_file.h"
#include "bench/bench_flags.h"
#include "cli/plots.h"
#include "engine/activation/architecture_names.h"
#include "engine/runtime.h"
#include "engine/trainer.h"
#include "nlohmann/json.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using saegrid::Architecture;

constexpr char kBeginMarker[] = "<!-- frontier_bench: begin generated -->";
constexpr char kEndMarker[] = "<!-- frontier_bench: end generated -->";

// One size of the experiment: the data, the model, the budget and the sparsity settings.
struct Size {
  std::string name;
  int64_t d = 256, features = 512, samples = 262144, latents = 1024, batch = 4096, tokens = 3'000'000;
  int64_t dead_tokens = 500'000;  // a latent silent this long counts as dead (the run's figure)
  std::vector<int64_t> k = {4, 8, 16};
  std::vector<double> jumprelu_l0 = {1e-3, 3e-3, 1e-2};
  std::vector<double> relu_l1 = {0.01, 0.03, 0.1};
};

Size SizeNamed(const std::string& name) {
  Size s;
  s.name = name;
  if (name == "small") {
    s.d = 64;
    s.features = 128;
    s.samples = 32768;
    s.latents = 256;
    s.batch = 1024;
    s.tokens = 204'800;
    s.dead_tokens = 50'000;
    s.k = {4, 8};
    s.jumprelu_l0 = {3e-3, 1e-2};
    s.relu_l1 = {0.03, 0.1};
  }
  return s;
}

struct Options {
  std::string command;  // how the bench was run, for the table's heading
  std::string size = "default", output_dir, docs_dir, only, k, jumprelu_l0, relu_l1;
  int64_t threads = 0, tokens = 0, batch = 0;
  double jumprelu_threshold = 0.1, jumprelu_bandwidth = 0.05, lr = 2e-3;
};

// One (architecture, setting) to train.
struct Setting {
  Architecture architecture;
  double value;  // k, the L0 coefficient or the L1 coefficient
};

// One trained point.
struct Point {
  Architecture architecture;
  std::string setting;  // "k=8", "l0=0.001", "l1=0.03"
  double value = 0;
  double l0 = 0, fvu = 0, mmcs = 0, recovered = 0, dead = 0, seconds = 0;
  // TopK at the same L0 (interpolated); unset when there is no TopK curve to compare with.
  std::optional<double> topk_fvu, topk_mmcs;
  bool extrapolated = false;
};

[[noreturn]] void Fail(const std::string& message) {
  std::fprintf(stderr, "frontier_bench: %s\n", message.c_str());
  std::exit(1);
}

template <typename T>
std::vector<T> ParseList(const std::string& flag, const std::string& text) {
  std::vector<T> out;
  for (const absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    T v{};
    bool ok;
    if constexpr (std::is_same_v<T, double>) {
      ok = absl::SimpleAtod(part, &v) && std::isfinite(v) && v >= 0;
    } else {
      ok = absl::SimpleAtoi(part, &v) && v > 0;
    }
    if (!ok) {
      std::fprintf(stderr, "frontier_bench: %s: '%s' is not a valid value\n", flag.c_str(), std::string(part).c_str());
      std::exit(2);
    }
    out.push_back(v);
  }
  if (out.empty()) {
    std::fprintf(stderr, "frontier_bench: %s: no values\n", flag.c_str());
    std::exit(2);
  }
  return out;
}

saegrid::TrainConfig ConfigFor(const Size& s, const Options& o, const Setting& setting, const fs::path& out) {
  using namespace saegrid;
  TrainConfig c;
  c.name = "frontier";
  c.model.architecture = setting.architecture;
  c.model.num_latents = s.latents;
  c.model.dead_tokens_threshold = s.dead_tokens;
  switch (setting.architecture) {
    case Architecture::kTopK:
    case Architecture::kBatchTopK:
    case Architecture::kMatryoshka:  // the default prefixes: n/16, n/8, n/4, n/2 and n
      c.model.k = static_cast<int64_t>(setting.value);
      break;
    case Architecture::kJumpReLU:
      c.model.l0_coefficient = setting.value;
      c.model.jumprelu_initial_threshold = o.jumprelu_threshold;
      c.model.jumprelu_bandwidth = o.jumprelu_bandwidth;
      break;
    case Architecture::kReLU:
      c.model.l1_coefficient = setting.value;
      c.model.decoder_init = DecoderInit::kOrthogonal;
      break;
  }
  c.optimizer.lr = o.lr;
  c.optimizer.warmup_steps = 20;
  c.optimizer.lr_decay = LrDecay::kLinear;
  c.data.use_synthetic = true;
  c.data.synthetic.d = s.d;
  c.data.synthetic.num_features = s.features;
  c.data.synthetic.num_samples = s.samples;
  c.data.batch_size = s.batch;
  c.training.total_tokens = s.tokens;
  c.training.log_every_steps = 1'000'000;  // the figures only at the end
  c.checkpoint.output_dir = out.string();
  c.checkpoint.resume = false;
  c.runtime.num_threads = static_cast<int>(o.threads);
  return c;
}

std::string SettingText(const saegrid::ModelConfig& m) {
  const std::string label = saegrid::SparsityLabel(m);  // "topk k=8"
  const size_t space = label.find(' ');
  return space == std::string::npos ? label : label.substr(space + 1);
}

Point Train(const Size& s, const Options& o, const Setting& setting, const fs::path& dir) {
  using namespace saegrid;
  std::error_code ec;
  fs::remove_all(dir, ec);
  const TrainConfig c = ConfigFor(s, o, setting, dir);
  Point p;
  p.architecture = setting.architecture;
  p.value = setting.value;
  p.setting = SettingText(c.model);
  const std::string name = absl::StrCat(ArchitectureName(p.architecture), " ", p.setting);
  const auto start = std::chrono::steady_clock::now();
  auto trainer = Trainer::Create(c, nullptr);
  if (!trainer.ok()) Fail(absl::StrCat(name, ": ", trainer.status().message()));
  auto eval = (*trainer)->Train();
  if (!eval.ok()) Fail(absl::StrCat(name, ": ", eval.status().message()));
  if (!eval->has_ground_truth) Fail(absl::StrCat(name, ": the evaluation has no ground truth (MMCS)"));
  p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  p.l0 = eval->l0;
  p.fvu = eval->fvu;
  p.mmcs = eval->mmcs;
  p.recovered = eval->recovered_fraction;
  p.dead = eval->dead_fraction;
  trainer->reset();
  fs::remove_all(dir, ec);  // the checkpoints are not part of the result
  std::fprintf(stderr, "frontier_bench: %-22s L0 %7.2f  FVU %.4f  MMCS %.4f  recovered %.3f  dead %.3f  (%.0f s)\n",
               name.c_str(), p.l0, p.fvu, p.mmcs, p.recovered, p.dead, p.seconds);
  return p;
}

// TopK's FVU and MMCS at `l0`: piecewise linear between the TopK points (log L0 against log FVU,
// and against MMCS), the end segments extended beyond them. Needs points with L0 and FVU > 0.
void CompareWithTopK(const std::vector<Point>& topk, Point* p) {
  std::vector<const Point*> curve;
  for (const Point& t : topk) {
    if (t.l0 > 0 && t.fvu > 0 && std::isfinite(t.fvu)) curve.push_back(&t);
  }
  if (curve.empty() || !(p->l0 > 0)) return;
  std::sort(curve.begin(), curve.end(), [](const Point* a, const Point* b) { return a->l0 < b->l0; });
  const double x = std::log(p->l0);
  p->extrapolated = p->l0 < curve.front()->l0 * (1 - 1e-9) || p->l0 > curve.back()->l0 * (1 + 1e-9);
  if (curve.size() == 1) {
    p->topk_fvu = curve[0]->fvu;
    p->topk_mmcs = curve[0]->mmcs;
    return;
  }
  size_t i = 0;  // the segment [i, i + 1]
  while (i + 2 < curve.size() && x > std::log(curve[i + 1]->l0)) ++i;
  const double x0 = std::log(curve[i]->l0), x1 = std::log(curve[i + 1]->l0);
  const double t = x1 > x0 ? (x - x0) / (x1 - x0) : 0;
  p->topk_fvu = std::exp(std::log(curve[i]->fvu) + t * (std::log(curve[i + 1]->fvu) - std::log(curve[i]->fvu)));
  p->topk_mmcs = std::clamp(curve[i]->mmcs + t * (curve[i + 1]->mmcs - curve[i]->mmcs), 0.0, 1.0);
}

json PointJson(const Point& p) {
  json j = {{"architecture", saegrid::ArchitectureName(p.architecture)},
            {"setting", p.setting},
            {"l0", p.l0},
            {"fvu", p.fvu},
            {"mmcs", p.mmcs},
            {"recovered_fraction", p.recovered},
            {"dead_fraction", p.dead},
            {"seconds", p.seconds}};
  if (p.topk_fvu) {
    j["topk_fvu_at_l0"] = *p.topk_fvu;
    j["fvu_vs_topk"] = p.fvu / *p.topk_fvu;
    j["topk_mmcs_at_l0"] = *p.topk_mmcs;
    j["mmcs_minus_topk"] = p.mmcs - *p.topk_mmcs;
    j["baseline_extrapolated"] = p.extrapolated;
  } else {
    j["fvu_vs_topk"] = nullptr;
  }
  return j;
}

std::string UtcDate() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof(buffer), "%Y-%m-%d", &tm);
  return buffer;
}

// The generated part of frontier.md: how it was made, the table and the figures.
std::string Table(const Size& s, const Options& o, const std::vector<Point>& points, double total_seconds,
                  int threads, bool with_figures) {
  std::string m;
  absl::StrAppend(&m, kBeginMarker, "\n\n");
  absl::StrAppendFormat(
      &m,
      "Measured by `%s` (size %s) on %s: %d features in %d dimensions (about 5 active), "
      "%d latents, %d tokens per SAE in batches of %d; threads: %d; %.1f minutes in all.\n\n",
      o.command, s.name, UtcDate(), s.features, s.d, s.latents, s.tokens, s.batch, threads,
      total_seconds / 60);
  absl::StrAppend(&m,
                  "| architecture | setting | L0 | FVU | MMCS | recovered | dead | FVU / TopK's at this L0 | "
                  "time |\n|---|---|---|---|---|---|---|---|---|\n");
  bool any_extrapolated = false;
  for (const Point& p : points) {
    std::string ratio = "n/a";
    if (p.topk_fvu) {
      ratio = absl::StrFormat("%.2f%s", p.fvu / *p.topk_fvu, p.extrapolated ? "*" : "");
      any_extrapolated |= p.extrapolated;
    }
    absl::StrAppendFormat(&m, "| %s | %s | %.2f | %.4f | %.4f | %.3f | %.3f | %s | %.0f s |\n",
                          saegrid::ArchitectureName(p.architecture), p.setting, p.l0, p.fvu, p.mmcs, p.recovered,
                          p.dead, ratio, p.seconds);
  }
  absl::StrAppend(&m, "\nFVU / TopK's at this L0: the point's FVU over TopK's, interpolated between the TopK "
                      "points of the same run (linear in log L0 and log FVU).");
  if (any_extrapolated) absl::StrAppend(&m, " *: outside TopK's L0 range, its end segment extended.");
  absl::StrAppend(&m, " Recovered: the fraction of true features whose best decoder row has cosine >= 0.9. "
                      "Dead: latents silent for the last ",
                  s.dead_tokens, " training tokens.\n\n");
  if (with_figures) {
    absl::StrAppend(&m, "![FVU against L0](frontier_fvu.png)\n\n![MMCS against L0](frontier_mmcs.png)\n\n");
  }
  absl::StrAppend(&m, kEndMarker, "\n");
  return m;
}

// frontier.md as written into --output-dir (and into --docs-dir when it has none yet).
std::string Page(const std::string& generated) {
  return absl::StrCat(
      "# The sparsity frontier on the toy data\n\n"
      "L0 against FVU and MMCS for the five architectures, each at several sparsities. Made by "
      "`make frontier` (`build/bench/frontier_bench --docs-dir docs`), which rewrites the part "
      "between the markers.\n\n",
      generated);
}

// `existing` with its generated part replaced, or a fresh page when it has none.
std::string UpdatePage(const std::string& existing, const std::string& generated) {
  const size_t begin = existing.find(kBeginMarker);
  const size_t end = existing.find(kEndMarker);
  if (begin == std::string::npos || end == std::string::npos || end < begin) return Page(generated);
  size_t after = end + std::string(kEndMarker).size();
  if (after < existing.size() && existing[after] == '\n') ++after;
  return absl::StrCat(existing.substr(0, begin), generated, existing.substr(after));
}

// One curve per architecture, in L0 order, each point labelled with its setting.
saegrid::cli::Figure FrontierFigure(const std::vector<Point>& points, bool fvu) {
  saegrid::cli::Figure f;
  f.title = fvu ? "FVU against L0 on the toy data" : "MMCS against L0 on the toy data";
  f.x_label = "L0 (active latents per token)";
  f.y_label = fvu ? "FVU (fraction of variance unexplained)" : "MMCS (mean max cosine to the true features)";
  f.log_x = true;
  f.log_y = fvu;
  f.width = 900;
  f.height = 560;
  for (const auto& [name, architecture] : saegrid::kArchitectureNames) {
    std::vector<const Point*> mine;
    for (const Point& p : points) {
      const double y = fvu ? p.fvu : p.mmcs;
      // Only what the axes can show: a point with L0 0 (or FVU 0) stays in the table only.
      if (p.architecture == architecture && p.l0 > 0 && std::isfinite(y) && (!fvu || y > 0)) mine.push_back(&p);
    }
    if (mine.empty()) continue;
    std::sort(mine.begin(), mine.end(), [](const Point* a, const Point* b) { return a->l0 < b->l0; });
    saegrid::cli::Series s;
    s.label = name;
    for (const Point* p : mine) {
      s.x.push_back(p->l0);
      s.y.push_back(fvu ? p->fvu : p->mmcs);
      s.point_labels.push_back(p->setting);
    }
    f.series.push_back(std::move(s));
  }
  return f;
}

void WriteOrFail(const fs::path& path, const std::string& contents) {
  const absl::Status st = saegrid::WriteFileDurably(path.string(), contents);
  if (!st.ok()) Fail(std::string(st.message()));
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

int main(int argc, char** argv) {
  saegrid::ReexecIfBlasMisdetected(argv);
  Options o;
  saegrid::bench::ParseFlagsOrExit(argc, argv,
                                   {{"--size", saegrid::FlagSpec::String(&o.size)},
                                    {"--output-dir", saegrid::FlagSpec::String(&o.output_dir)},
                                    {"--docs-dir", saegrid::FlagSpec::String(&o.docs_dir)},
                                    {"--threads", saegrid::FlagSpec::Int(&o.threads, 0, 1024)},
                                    {"--tokens", saegrid::FlagSpec::Int(&o.tokens, 0, int64_t{1} << 40)},
                                    {"--batch", saegrid::FlagSpec::Int(&o.batch, 0, 1 << 20)},
                                    {"--only", saegrid::FlagSpec::String(&o.only)},
                                    {"--k", saegrid::FlagSpec::String(&o.k)},
                                    {"--jumprelu-l0", saegrid::FlagSpec::String(&o.jumprelu_l0)},
                                    {"--relu-l1", saegrid::FlagSpec::String(&o.relu_l1)},
                                    {"--jumprelu-threshold", saegrid::FlagSpec::Real(&o.jumprelu_threshold, 1e-9, 100)},
                                    {"--jumprelu-bandwidth", saegrid::FlagSpec::Real(&o.jumprelu_bandwidth, 1e-9, 100)},
                                    {"--lr", saegrid::FlagSpec::Real(&o.lr, 1e-9, 1)}});
  o.command = "frontier_bench";
  for (int i = 1; i < argc; ++i) absl::StrAppend(&o.command, " ", argv[i]);
  if (o.size != "small" && o.size != "default") {
    std::fprintf(stderr, "frontier_bench: --size: '%s' is not one of small, default\n", o.size.c_str());
    return 2;
  }
  Size s = SizeNamed(o.size);
  if (o.tokens > 0) s.tokens = o.tokens;
  if (o.batch > 0) s.batch = o.batch;
  if (!o.k.empty()) s.k = ParseList<int64_t>("--k", o.k);
  if (!o.jumprelu_l0.empty()) s.jumprelu_l0 = ParseList<double>("--jumprelu-l0", o.jumprelu_l0);
  if (!o.relu_l1.empty()) s.relu_l1 = ParseList<double>("--relu-l1", o.relu_l1);
  std::vector<Architecture> architectures;
  if (o.only.empty()) {
    for (const auto& [name, a] : saegrid::kArchitectureNames) architectures.push_back(a);
  } else {
    for (const absl::string_view name : absl::StrSplit(o.only, ',', absl::SkipWhitespace())) {
      const auto a = saegrid::ParseArchitecture(std::string_view(name.data(), name.size()));
      if (!a) {
        std::fprintf(stderr, "frontier_bench: --only: '%s' is not one of %s\n", std::string(name).c_str(),
                     saegrid::ArchitectureChoices().c_str());
        return 2;
      }
      architectures.push_back(*a);
    }
  }
  const fs::path out = o.output_dir.empty()
                           ? fs::temp_directory_path() / ("frontier_bench." + std::to_string(::getpid()))
                           : fs::path(o.output_dir);
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) Fail(absl::StrCat("cannot create ", out.string(), ": ", ec.message()));
  if (!o.docs_dir.empty()) {
    fs::create_directories(o.docs_dir, ec);
    if (ec) Fail(absl::StrCat("cannot create ", o.docs_dir, ": ", ec.message()));
  }
  const int threads = saegrid::ConfigureThreads(static_cast<int>(o.threads));

  std::vector<Setting> settings;
  for (const Architecture a : architectures) {
    if (saegrid::ArchitectureUsesK(a)) {
      for (const int64_t k : s.k) settings.push_back({a, static_cast<double>(k)});
    } else if (a == Architecture::kJumpReLU) {
      for (const double v : s.jumprelu_l0) settings.push_back({a, v});
    } else {
      for (const double v : s.relu_l1) settings.push_back({a, v});
    }
  }
  const auto start = std::chrono::steady_clock::now();
  std::vector<Point> points;
  for (size_t i = 0; i < settings.size(); ++i) {
    points.push_back(Train(s, o, settings[i], out / "runs" / std::to_string(i)));
  }
  fs::remove_all(out / "runs", ec);
  const double total_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::vector<Point> topk;
  for (const Point& p : points) {
    if (p.architecture == Architecture::kTopK) topk.push_back(p);
  }
  for (Point& p : points) CompareWithTopK(topk, &p);

  // The figures first, so that the JSON and the table can say whether they were drawn.
  json plots = json::object();
  bool plotted = true;
  for (const bool fvu : {true, false}) {
    const std::string file = fvu ? "frontier_fvu.png" : "frontier_mmcs.png";
    const absl::Status st = saegrid::cli::WritePng(FrontierFigure(points, fvu), (out / file).string());
    if (st.ok()) {
      plots[fvu ? "fvu" : "mmcs"] = file;
    } else {
      plotted = false;
      plots["error"] = std::string(st.message());
      std::fprintf(stderr, "frontier_bench: %s not drawn: %s\n", file.c_str(), std::string(st.message()).c_str());
    }
  }

  json records = json::array();
  for (const Point& p : points) records.push_back(PointJson(p));
  json names = json::array();
  for (const Architecture a : architectures) names.push_back(saegrid::ArchitectureName(a));
  const json result = {
      {"benchmark", "frontier_bench"},
      {"size", s.name},
      {"data",
       {{"generator", "synthetic (seed 004)"},
        {"d", s.d},
        {"num_features", s.features},
        {"num_samples", s.samples},
        {"avg_active_features", 5}}},
      {"latents", s.latents},
      {"tokens", s.tokens},
      {"batch_size", s.batch},
      {"dead_tokens_threshold", s.dead_tokens},
      {"training",
       {{"lr", o.lr},
        {"warmup_steps", 20},
        {"lr_decay", "linear"},
        {"matryoshka_prefixes", "default (n/16, n/8, n/4, n/2)"},
        {"jumprelu_initial_threshold", o.jumprelu_threshold},
        {"jumprelu_bandwidth", o.jumprelu_bandwidth},
        {"relu_decoder_init", "orthogonal"}}},
      {"threads", threads},
      {"architectures", names},
      {"baseline",
       "topk: fvu_vs_topk = fvu / topk_fvu_at_l0, TopK's FVU at the point's L0 interpolated between the TopK "
       "points of this run (piecewise linear in log L0 and log FVU; baseline_extrapolated when outside TopK's "
       "L0 range, where the end segment is extended); mmcs_minus_topk likewise (linear in log L0)"},
      {"points", records},
      {"plots", plots},
      {"output_dir", out.string()},
      {"seconds", total_seconds},
  };
  const std::string generated = Table(s, o, points, total_seconds, threads, plotted);
  WriteOrFail(out / "frontier.json", result.dump(2) + "\n");
  WriteOrFail(out / "frontier.md", Page(generated));
  if (!o.docs_dir.empty()) {
    if (!plotted) Fail("the figures for --docs-dir were not drawn (above)");
    const fs::path docs(o.docs_dir);
    WriteOrFail(docs / "frontier.json", result.dump(2) + "\n");
    const fs::path page = docs / "frontier.md";
    WriteOrFail(page, fs::exists(page) ? UpdatePage(ReadFile(page), generated) : Page(generated));
    for (const char* file : {"frontier_fvu.png", "frontier_mmcs.png"}) {
      fs::copy_file(out / file, docs / file, fs::copy_options::overwrite_existing, ec);
      if (ec) Fail(absl::StrCat("cannot copy ", file, " into ", o.docs_dir, ": ", ec.message()));
    }
  }
  std::printf("%s\n", result.dump(2).c_str());
  return 0;
}
