// The PNG figures of `saegrid eval`, drawn by gnuplot (Debian package gnuplot-nox): a Figure is a
// title, labelled axes and a few series; WritePng writes it as one gnuplot script (the data
// inline as datablocks), runs gnuplot on it (stdin /dev/null, a time limit, its stderr captured)
// and moves the finished PNG into place, so that a failed run never leaves a partial file. The
// builders below make the evaluation's three figures. No LibTorch: the engine's numbers come in as
// plain vectors.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace saegrid::cli {

// One set of points drawn one way. Every value must be finite, and positive on a log-scale axis:
// WritePng refuses a figure that breaks this (INVALID_ARGUMENT naming the series and the point)
// rather than silently drawing fewer points; callers filter first if they want to drop some.
struct Series {
  enum class Style { kLines, kPoints, kLinesPoints, kBars };
  std::string label;  // the legend entry; empty: none
  std::vector<double> x, y;
  // Empty, or one text per point, written beside the point (e.g. "k=32 step 1000").
  std::vector<std::string> point_labels;
  Style style = Style::kLinesPoints;
  // kBars: each bar's width in x units; 0: bars touch their neighbours.
  double bar_width = 0;
  // Drawn against the right-hand y axis (Figure::y2_label, log_y2).
  bool second_y_axis = false;
};

struct Figure {
  std::string title, x_label, y_label;
  std::string y2_label;  // the right-hand axis, used when a series has second_y_axis
  bool log_x = false, log_y = false, log_y2 = false;
  std::vector<Series> series;
  // When non-empty, the only x tics: (position, text). Empty: gnuplot's automatic tics.
  std::vector<std::pair<double, std::string>> x_tics;
  int width = 800, height = 500;  // pixels, 16..10000
};

struct PlotOptions {
  // The gnuplot binary: a name looked up on PATH, or a path (containing '/').
  std::string gnuplot = "gnuplot";
  // gnuplot is killed after this long and WritePng returns DEADLINE_EXCEEDED.
  double timeout_seconds = 30;
};

// Draws `figure` into the PNG file `path` (terminal pngcairo where gnuplot has it, else png;
// titles and labels are written literally: no enhanced-text markup, no macro or backquote
// expansion). `path` is replaced only by a complete PNG (written as "<path>.tmp.<pid>", fsynced,
// renamed). Errors: INVALID_ARGUMENT for a figure that cannot be drawn (no series, a series with
// no points, x/y/point_labels lengths differing, a non-finite value, a non-positive value on a log
// axis, a bad size; each names the series), FAILED_PRECONDITION when gnuplot is not installed (the
// message says to install gnuplot-nox), the errno's code naming `path` when it cannot be written,
// INTERNAL with gnuplot's stderr when gnuplot fails, DEADLINE_EXCEEDED when it does not finish.
absl::Status WritePng(const Figure& figure, const std::string& path, const PlotOptions& options = {});

// `text` as a gnuplot string expression that gnuplot reads back literally: no backquoted command
// is run, no @macro, backslash escape or enhanced-text markup is expanded. Control characters
// become spaces (a gnuplot string cannot span lines). WritePng writes every title and label so.
std::string GnuplotString(const std::string& text);

// The latent density histogram: counts[i] latents have log10(firing density) in
// [low + i*step, low + (i+1)*step). Bars over the bins; when never_fired > 0, a separate bar
// labelled "never" left of them. The title gives the total and the never-fired count. With no
// counts and never_fired == 0 the figure has no series, and WritePng refuses it.
Figure DensityHistogramFigure(double low, double step, const std::vector<int64_t>& counts, int64_t never_fired);

// One checkpoint on the L0/FVU plane.
struct L0FvuPoint {
  std::string label;  // written beside the point, e.g. "k=32 step 1000"
  double l0 = 0;
  double fvu = 0;
  // Points with the same group form one legend entry and colour (e.g. "k=32" for one job's
  // checkpoints in a sweep); empty for all: one unnamed series.
  std::string group;
};

// x = L0, y = FVU, one labelled point per checkpoint, in groups as given. The y axis is log scale
// when `log_fvu` and every FVU is finite and > 0, linear otherwise.
Figure L0FvuFigure(const std::vector<L0FvuPoint>& points, bool log_fvu = true);

// Loss recovered over training: x = `x` (tokens, or steps with x_label "step"), one line through
// the points in x order (sorted here, whatever order they come in). A second curve is one more
// Series pushed onto the result: on the same axis (e.g. "loss recovered (mean ablation)"), or with
// second_y_axis = true and the figure's y2_label set (e.g. FVU).
Figure LossRecoveredFigure(const std::vector<double>& x, const std::vector<double>& loss_recovered,
                           const std::string& x_label = "tokens");

}  // namespace saegrid::cli
