#include "cli/plots.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/durable_file.h"
#include "base/status_macros.h"

extern char** environ;

namespace saegrid::cli {
namespace {

constexpr char kInstallHint[] = "install gnuplot-nox (scripts/install-deps.sh)";
constexpr char kPngSignature[] = "\x89PNG\r\n\x1a\n";
// The most of gnuplot's output kept for an error message.
constexpr size_t kMaxMessageBytes = 2000;

std::string Num(double v) { return absl::StrFormat("%.17g", v); }

std::string SeriesName(const Figure& figure, size_t i) {
  const Series& s = figure.series[i];
  return s.label.empty() ? absl::StrCat("series ", i) : absl::StrCat("series '", s.label, "'");
}

absl::Status Validate(const Figure& figure) {
  const std::string where = figure.title.empty() ? "figure" : absl::StrCat("figure '", figure.title, "'");
  if (figure.width < 16 || figure.width > 10000 || figure.height < 16 || figure.height > 10000) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": size ", figure.width, "x", figure.height, " is outside 16..10000 pixels"));
  }
  if (figure.series.empty()) return absl::InvalidArgumentError(absl::StrCat(where, " has no series to draw"));
  for (size_t i = 0; i < figure.series.size(); ++i) {
    const Series& s = figure.series[i];
    const std::string name = absl::StrCat(where, ": ", SeriesName(figure, i));
    if (s.x.size() != s.y.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " has ", s.x.size(), " x values and ", s.y.size(), " y values"));
    }
    if (s.x.empty()) return absl::InvalidArgumentError(absl::StrCat(name, " has no points"));
    if (!s.point_labels.empty() && s.point_labels.size() != s.x.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " has ", s.x.size(), " points and ", s.point_labels.size(), " point labels"));
    }
    if (!(std::isfinite(s.bar_width) && s.bar_width >= 0)) {
      return absl::InvalidArgumentError(absl::StrCat(name, " has bar width ", s.bar_width));
    }
    const bool log_y = s.second_y_axis ? figure.log_y2 : figure.log_y;
    const char* y_axis = s.second_y_axis ? "y2" : "y";
    for (size_t j = 0; j < s.x.size(); ++j) {
      const double x = s.x[j], y = s.y[j];
      if (!std::isfinite(x) || !std::isfinite(y)) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, " point ", j, " is not finite (x = ", Num(x), ", y = ", Num(y), ")"));
      }
      if (figure.log_x && x <= 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, " point ", j, ": x = ", Num(x), " cannot be drawn on a log-scale x axis"));
      }
      if (log_y && y <= 0) {
        return absl::InvalidArgumentError(absl::StrCat(name, " point ", j, ": ", y_axis, " = ", Num(y),
                                                       " cannot be drawn on a log-scale ", y_axis, " axis"));
      }
    }
  }
  for (const auto& [position, text] : figure.x_tics) {
    if (!std::isfinite(position) || (figure.log_x && position <= 0)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": x tic '", text, "' at ", Num(position)));
    }
  }
  return absl::OkStatus();
}

enum class Axis { kX, kY, kY2 };

// The commands making `axis` log scale. Its range is whole decades, as gnuplot's autoscale makes
// it, but with room beyond the extreme values so that no point sits on the border (gnuplot's graph
// offsets do not work on log axes); the values are all > 0 (Validate). Over two decades or less,
// 2 and 5 times each decade are labelled too (`add_tics`), else such a span has two or three
// labels in all.
std::string LogAxis(const Figure& figure, Axis axis, bool add_tics) {
  const char* name = axis == Axis::kX ? "x" : axis == Axis::kY ? "y" : "y2";
  std::string g = absl::StrCat("set logscale ", name, "\n");
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const Series& s : figure.series) {
    if (axis != Axis::kX && s.second_y_axis != (axis == Axis::kY2)) continue;
    for (const double v : axis == Axis::kX ? s.x : s.y) {
      lo = std::min(lo, std::log10(v));
      hi = std::max(hi, std::log10(v));
    }
  }
  if (lo > hi) return g;  // no series on this axis
  const double pad = std::max(0.05 * (hi - lo), 0.03);
  const double first = std::floor(lo - pad), last = std::ceil(hi + pad);
  absl::StrAppend(&g, "set ", name, "range [", Num(std::pow(10.0, first)), ":", Num(std::pow(10.0, last)), "]\n");
  if (add_tics && last - first <= 2) {
    std::vector<std::string> tics;
    for (double d = first; d < last; d += 1) {
      for (const double m : {2.0, 5.0}) {
        const double at = m * std::pow(10.0, d);
        tics.push_back(absl::StrFormat("'%g' %s", at, Num(at)));
      }
    }
    absl::StrAppend(&g, "set ", name, "tics add (", absl::StrJoin(tics, ", "), ")\n");
  }
  return g;
}

std::string Script(const Figure& figure, const std::string& output) {
  bool any_bars = false, any_y2 = false;
  size_t longest_point_label = 0;  // in bytes: near enough to characters for the room it needs
  for (const Series& s : figure.series) {
    any_bars |= s.style == Series::Style::kBars;
    any_y2 |= s.second_y_axis;
    for (const std::string& label : s.point_labels) longest_point_label = std::max(longest_point_label, label.size());
  }
  const std::string size = absl::StrCat(figure.width, ",", figure.height);
  std::string g;
  // `reset` undoes whatever a ~/.gnuplot set; the terminal is the best PNG one this gnuplot has.
  absl::StrAppend(&g, "reset\nset encoding utf8\n");
  absl::StrAppend(&g, "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n");
  absl::StrAppend(&g, "  set terminal pngcairo size ", size, " noenhanced font 'sans,10'\n");
  absl::StrAppend(&g, "} else {\n");
  absl::StrAppend(&g, "  set terminal png size ", size, " noenhanced\n");
  absl::StrAppend(&g, "}\n");
  absl::StrAppend(&g, "set termoption noenhanced\n");
  absl::StrAppend(&g, "set output ", GnuplotString(output), "\n");
  absl::StrAppend(&g, "set title ", GnuplotString(figure.title), "\n");
  absl::StrAppend(&g, "set xlabel ", GnuplotString(figure.x_label), "\n");
  absl::StrAppend(&g, "set ylabel ", GnuplotString(figure.y_label), "\n");
  // The key below the plot, where it hides no data.
  absl::StrAppend(&g, "set grid\nset key below spacing 1.3 width 1\n");
  absl::StrAppend(&g, "set style fill solid 0.75 border -1\n");
  if (any_y2) {
    absl::StrAppend(&g, "set ytics nomirror\nset y2tics\nset y2label ", GnuplotString(figure.y2_label), "\n");
  }
  if (figure.log_x) absl::StrAppend(&g, LogAxis(figure, Axis::kX, /*add_tics=*/figure.x_tics.empty()));
  if (figure.log_y) absl::StrAppend(&g, LogAxis(figure, Axis::kY, true));
  if (any_y2 && figure.log_y2) absl::StrAppend(&g, LogAxis(figure, Axis::kY2, true));
  if (!figure.x_tics.empty()) {
    std::vector<std::string> tics;
    for (const auto& [position, text] : figure.x_tics) {
      tics.push_back(absl::StrCat(GnuplotString(text), " ", Num(position)));
    }
    absl::StrAppend(&g, "set xtics (", absl::StrJoin(tics, ", "), ")\n");
  }
  // Some room round the points so that none sits on the border, and on the right for the
  // longest point label (about 6 pixels a character at the labels' font); bars stand on y = 0.
  // Log axes get none (see LogAxis).
  double left = 0.04, right = 0.04, bottom = 0.06, top = 0.06;
  if (longest_point_label > 0) {
    const double plot_px = std::max(figure.width - 110, 100);
    const double need_px = 6.0 * static_cast<double>(longest_point_label) + 16;
    right = std::clamp(need_px / std::max(plot_px - need_px, 1.0), right, 0.6);
  }
  if (any_bars) left = right = 0.02;
  if (any_bars && !figure.log_y) {
    absl::StrAppend(&g, "set yrange [0:*]\n");
    bottom = 0;
  }
  if (figure.log_x) left = right = 0;
  if (figure.log_y) bottom = top = 0;
  absl::StrAppend(&g, "set offsets graph ", Num(left), ", graph ", Num(right), ", graph ", Num(top), ", graph ",
                  Num(bottom), "\n");

  std::vector<std::string> plots;
  for (size_t i = 0; i < figure.series.size(); ++i) {
    const Series& s = figure.series[i];
    const std::string block = absl::StrCat("$d", i);
    absl::StrAppend(&g, block, " << EOD\n");
    for (size_t j = 0; j < s.x.size(); ++j) absl::StrAppend(&g, Num(s.x[j]), " ", Num(s.y[j]), "\n");
    absl::StrAppend(&g, "EOD\n");
    // Point labels as labels, not data columns: a data file has no way to quote every string.
    for (size_t j = 0; j < s.point_labels.size(); ++j) {
      if (s.point_labels[j].empty()) continue;
      absl::StrAppend(&g, "set label ", GnuplotString(s.point_labels[j]), " at first ", Num(s.x[j]),
                      s.second_y_axis ? ", second " : ", first ", Num(s.y[j]),
                      " offset character 0.8, 0.6 left front font ',9'\n");
    }
    std::string using_clause = "1:2";
    std::string with;
    switch (s.style) {
      case Series::Style::kLines:
        with = "lines lw 2";
        break;
      case Series::Style::kPoints:
        with = "points pt 7 ps 1.3";
        break;
      case Series::Style::kLinesPoints:
        with = "linespoints lw 2 pt 7 ps 1.1";
        break;
      case Series::Style::kBars:
        with = "boxes";
        if (s.bar_width > 0) using_clause = absl::StrCat("1:2:(", Num(s.bar_width), ")");
        break;
    }
    plots.push_back(absl::StrCat(block, " using ", using_clause, " axes ", s.second_y_axis ? "x1y2" : "x1y1",
                                 " with ", with, " ", s.label.empty() ? "notitle" : "title " + GnuplotString(s.label)));
  }
  absl::StrAppend(&g, "plot ", absl::StrJoin(plots, ", \\\n     "), "\nunset output\n");
  return g;
}

// The gnuplot binary to run: `name` itself when it is a path, else the first executable `name` on
// PATH.
absl::StatusOr<std::string> FindGnuplot(const std::string& name) {
  auto executable = [](const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
  };
  if (name.find('/') != std::string::npos) {
    if (executable(name)) return name;
    return absl::FailedPreconditionError(absl::StrCat("gnuplot not found at ", name, ": ", kInstallHint));
  }
  const char* env = std::getenv("PATH");
  const std::string path = env != nullptr ? env : "/usr/local/bin:/usr/bin:/bin";
  for (const absl::string_view dir : absl::StrSplit(path, ':')) {
    const std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", name);
    if (executable(candidate)) return candidate;
  }
  return absl::FailedPreconditionError(
      absl::StrCat("gnuplot not found (no executable '", name, "' on PATH): ", kInstallHint));
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    return absl::StrCat("killed by signal ", sig, " (", ::strsignal(sig), ")");
  }
  return absl::StrCat("wait status ", status);
}

// gnuplot's output, trimmed to its last kMaxMessageBytes.
std::string Tail(const std::string& output) {
  absl::string_view text = absl::StripAsciiWhitespace(output);
  if (text.size() > kMaxMessageBytes) text = text.substr(text.size() - kMaxMessageBytes);
  return text.empty() ? "(no output)" : std::string(text);
}

// Runs `gnuplot script` with stdin from /dev/null and stdout and stderr captured; kills it after
// `timeout_seconds`. OK when it exited with code 0.
absl::Status RunGnuplot(const std::string& gnuplot, const std::string& script, double timeout_seconds) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return absl::ErrnoToStatus(errno, "pipe for gnuplot's output");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
  // A caller that blocks signals for a sigwait thread must not leave gnuplot deaf to them.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> argv = {const_cast<char*>(gnuplot.c_str()), const_cast<char*>(script.c_str()), nullptr};
  pid_t pid = -1;
  const int spawned = ::posix_spawn(&pid, gnuplot.c_str(), &actions, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(fds[1]);
  if (spawned != 0) {
    ::close(fds[0]);
    return absl::ErrnoToStatus(spawned, absl::StrCat("cannot start ", gnuplot));
  }

  using Clock = std::chrono::steady_clock;
  const auto deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_seconds));
  auto remaining_ms = [&] {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return static_cast<int>(std::clamp<int64_t>(left, 0, 1000));
  };
  std::string output;
  bool timed_out = false;
  char buffer[4096];
  for (;;) {  // until EOF: gnuplot (the only holder of the write end) has exited
    if (Clock::now() >= deadline) {
      timed_out = true;
      break;
    }
    pollfd p = {fds[0], POLLIN, 0};
    const int ready = ::poll(&p, 1, std::max(remaining_ms(), 1));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;  // the deadline check above decides
    const ssize_t n = ::read(fds[0], buffer, sizeof(buffer));
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) break;
    output.append(buffer, static_cast<size_t>(n));
    if (output.size() > 16 * kMaxMessageBytes) output.erase(0, output.size() - 8 * kMaxMessageBytes);
  }
  ::close(fds[0]);
  int status = 0;
  while (!timed_out) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return absl::ErrnoToStatus(errno, absl::StrCat("waiting for ", gnuplot));
    if (Clock::now() >= deadline) {
      timed_out = true;
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  if (timed_out) {
    ::kill(pid, SIGKILL);
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return absl::DeadlineExceededError(
        absl::StrCat("gnuplot did not finish within ", timeout_seconds, " s and was killed; its output: ",
                     Tail(output)));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat("gnuplot failed (", DescribeWaitStatus(status), "): ", Tail(output)));
  }
  return absl::OkStatus();
}

// Whether the file starts with the PNG signature.
bool IsPng(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char head[8] = {};
  const ssize_t n = ::read(fd, head, sizeof(head));
  ::close(fd);
  return n == 8 && std::memcmp(head, kPngSignature, 8) == 0;
}

// Removes a file when it goes out of scope, unless released.
class RemoveOnExit {
 public:
  explicit RemoveOnExit(std::string path) : path_(std::move(path)) {}
  ~RemoveOnExit() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  RemoveOnExit(const RemoveOnExit&) = delete;
  RemoveOnExit& operator=(const RemoveOnExit&) = delete;

 private:
  std::string path_;
};

// The figure's script in a fresh file in the system temp directory.
absl::StatusOr<std::string> WriteScript(const std::string& script) {
  std::error_code ec;
  std::filesystem::path dir = std::filesystem::temp_directory_path(ec);
  if (ec) dir = "/tmp";
  std::string name = (dir / "saegrid-plot-XXXXXX.gp").string();
  const int fd = ::mkstemps(name.data(), 3);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("cannot create a gnuplot script in ", dir.string()));
  size_t done = 0;
  while (done < script.size()) {
    const ssize_t n = ::write(fd, script.data() + done, script.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int saved = errno;
      ::close(fd);
      ::unlink(name.c_str());
      return absl::ErrnoToStatus(saved, absl::StrCat("cannot write ", name));
    }
    done += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) {
    const int saved = errno;
    ::unlink(name.c_str());
    return absl::ErrnoToStatus(saved, absl::StrCat("cannot write ", name));
  }
  return name;
}

}  // namespace

// Single-quoted: inside double quotes gnuplot runs backquoted commands, expands @macros and
// backslash escapes; inside single quotes it does none of these. A single quote itself is
// concatenated in as "\047": gnuplot's doubled '' escape misparses runs of quotes, and a quote
// character inside "..." throws the macro expander's quote tracking off.
std::string GnuplotString(const std::string& text) {
  std::string out = "'";
  bool concatenated = false;
  for (const char c : text) {
    if (c == '\'') {
      out += "' . \"\\047\" . '";
      concatenated = true;
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      out += ' ';
    } else {
      out += c;
    }
  }
  out += "'";
  return concatenated ? absl::StrCat("(", out, ")") : out;
}

absl::Status WritePng(const Figure& figure, const std::string& path, const PlotOptions& options) {
  SAEGRID_RETURN_IF_ERROR(Validate(figure));
  if (path.empty()) return absl::InvalidArgumentError("no path for the figure");
  for (const char c : path) {
    if (static_cast<unsigned char>(c) < 0x20) {
      return absl::InvalidArgumentError(absl::StrCat("figure path has a control character: ", absl::CHexEscape(path)));
    }
  }
  // Made here, before gnuplot runs, so that an unwritable path is an error naming it.
  const std::string temp = absl::StrCat(path, ".tmp.", ::getpid());
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot write figure ", path, ": cannot create ", temp));
  }
  ::close(fd);
  RemoveOnExit remove_temp(temp);
  SAEGRID_ASSIGN_OR_RETURN(const std::string gnuplot, FindGnuplot(options.gnuplot));
  SAEGRID_ASSIGN_OR_RETURN(const std::string script, WriteScript(Script(figure, temp)));
  RemoveOnExit remove_script(script);
  if (absl::Status st = RunGnuplot(gnuplot, script, options.timeout_seconds); !st.ok()) {
    return absl::Status(st.code(), absl::StrCat("drawing ", path, ": ", st.message()));
  }
  if (!IsPng(temp)) {
    return absl::InternalError(absl::StrCat("drawing ", path, ": gnuplot exited cleanly but wrote no PNG to ", temp));
  }
  return CommitFile(temp, path);
}

Figure DensityHistogramFigure(double low, double step, const std::vector<int64_t>& counts, int64_t never_fired) {
  int64_t total = never_fired;
  for (const int64_t c : counts) total += c;
  Figure f;
  f.title = absl::StrFormat("Latent firing density: %d latents, %d never fired", total, never_fired);
  f.x_label = "log10(firing density)";
  f.y_label = "latents";
  const double n = static_cast<double>(counts.size());
  if (!counts.empty()) {
    Series bins;
    bins.label = never_fired > 0 ? "fired" : "";
    bins.style = Series::Style::kBars;
    bins.bar_width = step;
    for (size_t i = 0; i < counts.size(); ++i) {
      bins.x.push_back(low + (static_cast<double>(i) + 0.5) * step);
      bins.y.push_back(static_cast<double>(counts[i]));
    }
    f.series.push_back(std::move(bins));
  }
  // Tics at round values over the bins, so that none crowds the "never" tic.
  const double high = low + n * step;
  const double range = std::max(high - low, step);
  for (const double d : {0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0}) {
    if (range / d <= 8 || d == 50.0) {
      for (double k = std::ceil(low / d - 1e-9); k * d <= high + 1e-9 * d; k += 1) {
        f.x_tics.emplace_back(k * d, absl::StrFormat("%g", k * d + 0.0));
      }
      break;
    }
  }
  if (never_fired > 0) {
    // Left of the bins, a gap of at least two bins and a tenth of their span.
    const double at = low - std::max(2 * step, range / 10);
    Series never;
    never.label = "never fired";
    never.style = Series::Style::kBars;
    never.bar_width = step;
    never.x = {at};
    never.y = {static_cast<double>(never_fired)};
    f.series.push_back(std::move(never));
    f.x_tics.emplace_back(at, "never");
  }
  return f;
}

Figure L0FvuFigure(const std::vector<L0FvuPoint>& points, bool log_fvu) {
  Figure f;
  f.title = "FVU against L0";
  f.x_label = "L0 (active latents per token)";
  f.y_label = "FVU (fraction of variance unexplained)";
  bool all_positive = !points.empty();
  for (const L0FvuPoint& p : points) {
    const std::string& group = p.group;
    auto it = std::find_if(f.series.begin(), f.series.end(), [&](const Series& s) { return s.label == group; });
    if (it == f.series.end()) {
      Series s;
      s.label = group;
      s.style = Series::Style::kPoints;
      f.series.push_back(std::move(s));
      it = f.series.end() - 1;
    }
    it->x.push_back(p.l0);
    it->y.push_back(p.fvu);
    it->point_labels.push_back(p.label);
    all_positive &= std::isfinite(p.fvu) && p.fvu > 0;
  }
  f.log_y = log_fvu && all_positive;
  return f;
}

Figure LossRecoveredFigure(const std::vector<double>& x, const std::vector<double>& loss_recovered,
                           const std::string& x_label) {
  Figure f;
  f.title = "Loss recovered over training";
  f.x_label = x_label;
  f.y_label = "loss recovered";
  Series s;
  s.label = "loss recovered";
  s.style = Series::Style::kLinesPoints;
  s.x = x;
  s.y = loss_recovered;
  if (x.size() == loss_recovered.size()) {  // else WritePng names the mismatch
    // In x order, whatever order the checkpoints were read in.
    std::vector<size_t> order(x.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return x[a] < x[b]; });
    for (size_t i = 0; i < order.size(); ++i) {
      s.x[i] = x[order[i]];
      s.y[i] = loss_recovered[order[i]];
    }
  }
  f.series.push_back(std::move(s));
  return f;
}

}  // namespace saegrid::cli
