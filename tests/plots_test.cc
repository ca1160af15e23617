// The PNG figures of `saegrid eval` (cli/plots.h), drawn by the real gnuplot: each figure is a PNG
// of the requested size, figures that cannot be drawn are refused by series name, labels are
// written literally, and a missing gnuplot, a failing one, a hanging one or an unwritable path is
// an error that names the cause and leaves no file behind.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "cli/plots.h"
#include "tests/process_support.h"

namespace saegrid {
namespace {

using ::testing::HasSubstr;
using cli::Figure;
using cli::Series;
using cli::WritePng;
using testing::ReadFile;
using testing::TempDir;
using testing::WriteFile;

struct PngSize {
  uint32_t width = 0, height = 0;
};

// The size in a PNG's IHDR chunk, or nothing when `path` is not a PNG.
std::optional<PngSize> ReadPngSize(const std::string& path) {
  const std::string bytes = ReadFile(path);
  if (bytes.size() < 24 || bytes.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0 || bytes.compare(12, 4, "IHDR") != 0) {
    return std::nullopt;
  }
  auto be32 = [&](size_t at) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(bytes[at + i]);
    return v;
  };
  return PngSize{be32(16), be32(20)};
}

void ExpectPngOfSize(const std::string& path, uint32_t width, uint32_t height) {
  const std::optional<PngSize> size = ReadPngSize(path);
  ASSERT_TRUE(size.has_value()) << path << " is not a PNG";
  EXPECT_EQ(size->width, width);
  EXPECT_EQ(size->height, height);
}

// The names in `dir`: what a failed write left behind.
std::vector<std::string> Entries(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) names.push_back(e.path().filename().string());
  return names;
}

// An executable shell script standing in for gnuplot, for the failure paths only.
std::string FakeGnuplot(const TempDir& dir, const std::string& body) {
  const std::string path = dir / "fake-gnuplot";
  WriteFile(path, "#!/bin/sh\n" + body + "\n");
  std::filesystem::permissions(path, std::filesystem::perms::owner_all);
  return path;
}

cli::PlotOptions Gnuplot(const std::string& binary, double timeout_seconds = 30) {
  cli::PlotOptions options;
  options.gnuplot = binary;
  options.timeout_seconds = timeout_seconds;
  return options;
}

Figure TwoPointFigure() {
  Figure f;
  f.title = "two points";
  f.x_label = "x";
  f.y_label = "y";
  Series s;
  s.label = "line";
  s.x = {1, 2};
  s.y = {3, 4};
  f.series.push_back(s);
  return f;
}

TEST(Plots, DensityHistogramIsAPngOfTheRequestedSize) {
  TempDir dir;
  std::vector<int64_t> counts;
  for (int i = 0; i < 32; ++i) counts.push_back(static_cast<int64_t>(1000 * std::exp(-0.02 * (i - 20) * (i - 20))));
  const Figure f = cli::DensityHistogramFigure(-8, 0.25, counts, 37);
  EXPECT_THAT(f.title, HasSubstr("37 never fired"));
  ASSERT_EQ(f.series.size(), 2u);  // the bins, and the "never" bar
  EXPECT_EQ(f.x_tics.back().second, "never");
  const std::string path = dir / "density.png";
  ASSERT_TRUE(WritePng(f, path).ok()) << WritePng(f, path);
  ExpectPngOfSize(path, 800, 500);
  EXPECT_THAT(Entries(dir.path()), ::testing::ElementsAre("density.png"));  // no temporary left
}

TEST(Plots, DensityHistogramWithoutNeverFiredHasNoNeverBar) {
  TempDir dir;
  Figure f = cli::DensityHistogramFigure(-6, 0.5, {0, 3, 10, 4, 1}, 0);
  ASSERT_EQ(f.series.size(), 1u);
  for (const auto& tic : f.x_tics) EXPECT_NE(tic.second, "never");
  f.width = 640;
  f.height = 480;
  const std::string path = dir / "density.png";
  const absl::Status st = WritePng(f, path);
  ASSERT_TRUE(st.ok()) << st;
  ExpectPngOfSize(path, 640, 480);
}

TEST(Plots, L0FvuFigureIsAPngOfTheRequestedSize) {
  TempDir dir;
  const std::vector<cli::L0FvuPoint> points = {
      {"k=16 step 1000", 16, 0.31, "k=16"}, {"k=16 step 2000", 16, 0.22, "k=16"},
      {"k=32 step 1000", 32, 0.21, "k=32"}, {"k=32 step 2000", 32, 0.14, "k=32"},
      {"k=64 step 2000", 63.5, 0.08, "k=64"},
  };
  Figure f = cli::L0FvuFigure(points);
  EXPECT_TRUE(f.log_y);
  ASSERT_EQ(f.series.size(), 3u);  // one per group, in order
  EXPECT_EQ(f.series[1].label, "k=32");
  EXPECT_EQ(f.series[1].point_labels[1], "k=32 step 2000");
  f.width = 1000;
  f.height = 600;
  const std::string path = dir / "l0_fvu.png";
  const absl::Status st = WritePng(f, path);
  ASSERT_TRUE(st.ok()) << st;
  ExpectPngOfSize(path, 1000, 600);
}

TEST(Plots, L0FvuFigureIsLogScaleOnlyWhenEveryFvuIsPositive) {
  EXPECT_TRUE(cli::L0FvuFigure({{"a", 8, 0.5, ""}, {"b", 16, 0.25, ""}}).log_y);
  EXPECT_FALSE(cli::L0FvuFigure({{"a", 8, 0.5, ""}, {"b", 16, 0, ""}}).log_y);
  EXPECT_FALSE(cli::L0FvuFigure({{"a", 8, 0.5, ""}, {"b", 16, 0.25, ""}}, /*log_fvu=*/false).log_y);
  // One unnamed series when no point has a group.
  const Figure f = cli::L0FvuFigure({{"a", 8, 0.5, ""}, {"b", 16, 0.25, ""}});
  ASSERT_EQ(f.series.size(), 1u);
  EXPECT_EQ(f.series[0].label, "");
}

TEST(Plots, LossRecoveredFigureIsInTokenOrder) {
  // Checkpoint directories read in name order: step_1000 before step_200.
  const Figure f = cli::LossRecoveredFigure({1000, 200, 500}, {0.9, 0.5, 0.7});
  ASSERT_EQ(f.series.size(), 1u);
  EXPECT_EQ(f.series[0].x, std::vector<double>({200, 500, 1000}));
  EXPECT_EQ(f.series[0].y, std::vector<double>({0.5, 0.7, 0.9}));
}

TEST(Plots, LossRecoveredWithASecondAxisIsAPngOfTheRequestedSize) {
  TempDir dir;
  Figure f = cli::LossRecoveredFigure({1e6, 2e6, 4e6, 8e6}, {0.61, 0.74, 0.82, 0.86});
  Series fvu;
  fvu.label = "FVU";
  fvu.style = Series::Style::kLines;
  fvu.x = {1e6, 2e6, 4e6, 8e6};
  fvu.y = {0.4, 0.25, 0.18, 0.15};
  fvu.second_y_axis = true;
  f.series.push_back(fvu);
  f.y2_label = "FVU";
  f.log_y2 = true;
  const std::string path = dir / "loss_recovered.png";
  const absl::Status st = WritePng(f, path);
  ASSERT_TRUE(st.ok()) << st;
  ExpectPngOfSize(path, 800, 500);
}

TEST(Plots, AnExistingFileIsReplaced) {
  TempDir dir;
  const std::string path = dir / "figure.png";
  WriteFile(path, "old");
  ASSERT_TRUE(WritePng(TwoPointFigure(), path).ok());
  ExpectPngOfSize(path, 800, 500);
}

TEST(Plots, NonPositiveValueOnALogAxisIsAnErrorNamingTheSeriesAndPoint) {
  TempDir dir;
  Figure f = TwoPointFigure();
  f.series[0].label = "fvu curve";
  f.series[0].y = {0.5, 0};
  f.log_y = true;
  const std::string path = dir / "figure.png";
  const absl::Status st = WritePng(f, path);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("series 'fvu curve' point 1"));
  EXPECT_THAT(st.message(), HasSubstr("log-scale y axis"));
  EXPECT_TRUE(Entries(dir.path()).empty());

  f.log_y = false;
  f.log_x = true;
  f.series[0].x = {-1, 2};
  f.series[0].y = {1, 2};
  EXPECT_THAT(WritePng(f, path).message(), HasSubstr("log-scale x axis"));
}

TEST(Plots, NonFiniteValueIsAnErrorNamingTheSeries) {
  TempDir dir;
  Figure f = TwoPointFigure();
  f.series[0].label = "loss";
  f.series[0].y[1] = std::numeric_limits<double>::quiet_NaN();
  const absl::Status st = WritePng(f, dir / "figure.png");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("series 'loss' point 1 is not finite"));
}

TEST(Plots, MismatchedLengthsAreAnErrorNamingTheSeries) {
  TempDir dir;
  Figure f = TwoPointFigure();
  f.series.push_back(f.series[0]);
  f.series[1].label = "second";
  f.series[1].y.push_back(5);
  absl::Status st = WritePng(f, dir / "figure.png");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("series 'second' has 2 x values and 3 y values"));

  f.series[1].y.pop_back();
  f.series[1].point_labels = {"only one"};
  st = WritePng(f, dir / "figure.png");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("series 'second' has 2 points and 1 point labels"));
  EXPECT_TRUE(Entries(dir.path()).empty());
}

TEST(Plots, EmptyFigureOrSeriesIsAnError) {
  TempDir dir;
  Figure f;
  f.title = "nothing";
  absl::Status st = WritePng(f, dir / "figure.png");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("figure 'nothing' has no series"));

  f.series.emplace_back();
  f.series[0].label = "hollow";
  st = WritePng(f, dir / "figure.png");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("series 'hollow' has no points"));

  f = TwoPointFigure();
  f.width = 0;
  EXPECT_EQ(WritePng(f, dir / "figure.png").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Entries(dir.path()).empty());
}

TEST(Plots, PathInAMissingDirectoryIsAnErrorNamingItAndLeavesNoFile) {
  TempDir dir;
  const std::string path = dir / "missing/figure.png";
  const absl::Status st = WritePng(TwoPointFigure(), path);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(st.message(), HasSubstr(path));
  EXPECT_TRUE(Entries(dir.path()).empty());
}

TEST(Plots, QuotesBackslashesAndAtSignsInLabelsAreWrittenLiterally) {
  TempDir dir;
  const std::string marker = dir / "backquote-ran";
  Figure f = cli::L0FvuFigure({{"it's \"k=32\" @step & a\\b", 32, 0.2, "group 'a' \"b\""},
                               {"`touch " + marker + "` $(touch " + marker + ")", 64, 0.1, "@x ^{2}_y"}});
  f.title = "title with \"quotes\", 'apostrophes', back\\slash, @macro, &amp; ^{super}\nand a newline";
  f.x_label = "x \\\\ \\n @ &";
  f.y_label = "y ''' \"\"\"";
  const std::string path = dir / "labels.png";
  const absl::Status st = WritePng(f, path);
  ASSERT_TRUE(st.ok()) << st;
  ExpectPngOfSize(path, 800, 500);
  EXPECT_FALSE(std::filesystem::exists(marker)) << "a label was run as a command";
}

TEST(Plots, GnuplotReadsStringsBackLiterally) {
  TempDir dir;
  const std::string marker = dir / "backquote-ran";
  const std::vector<std::string> texts = {
      "plain",
      "it's",
      "'''",
      "''a''",
      "\"double\" \"\"",
      "back\\slash \\n \\047 \\",
      "@step @@x",
      "it's \"k=32\" @step & a\\b",
      "'\"' @x",
      "&amp; ^{sup}_{sub} {/Symbol a} ~a{.8-}",
      "$(touch " + marker + ") `touch " + marker + "`",
      "# not a comment ; print 'injected'",
      "",
  };
  // One print a line; gnuplot prints to stderr, and the log has both.
  std::string script = "step = 'EXPANDED'\nx = 'EXPANDED'\n";
  for (const std::string& t : texts) script += "print " + cli::GnuplotString(t) + "\n";
  WriteFile(dir / "print.gp", script);
  const std::string log = dir / "print.log";
  ASSERT_EQ(testing::RunProcess({"/bin/sh", "-c", "exec gnuplot \"$0\"", dir / "print.gp"}, log, 30), 0)
      << ReadFile(log);
  EXPECT_EQ(testing::ReadLines(log), texts);
  EXPECT_FALSE(std::filesystem::exists(marker)) << "a string was run as a command";
  EXPECT_EQ(cli::GnuplotString("two\nlines\t"), "'two lines '");
}

TEST(Plots, MissingGnuplotSaysHowToInstallIt) {
  TempDir dir;
  const std::string path = dir / "figure.png";
  // A path that does not exist.
  absl::Status st = WritePng(TwoPointFigure(), path, Gnuplot(dir / "no/gnuplot"));
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("gnuplot not found"));
  EXPECT_THAT(st.message(), HasSubstr("install gnuplot-nox (scripts/install-deps.sh)"));
  EXPECT_TRUE(Entries(dir.path()).empty());

  // The default, looked up on a PATH without it.
  std::filesystem::create_directory(dir / "empty");
  const char* old = std::getenv("PATH");
  const std::string saved = old != nullptr ? old : "";
  setenv("PATH", (dir / "empty").c_str(), 1);
  st = WritePng(TwoPointFigure(), path);
  if (old != nullptr) setenv("PATH", saved.c_str(), 1);
  else unsetenv("PATH");
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(st.message(), HasSubstr("install gnuplot-nox (scripts/install-deps.sh)"));
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(Plots, FailingGnuplotGivesItsStderrAndKeepsTheOldFile) {
  TempDir dir;
  const std::string gnuplot = FakeGnuplot(dir, "echo 'line 3: undefined variable: nope' >&2; exit 1");
  const std::string path = dir / "figure.png";
  WriteFile(path, "old");
  const absl::Status st = WritePng(TwoPointFigure(), path, Gnuplot(gnuplot));
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(st.message(), HasSubstr("exit code 1"));
  EXPECT_THAT(st.message(), HasSubstr("undefined variable: nope"));
  EXPECT_THAT(st.message(), HasSubstr(path));
  EXPECT_EQ(ReadFile(path), "old");
  EXPECT_THAT(Entries(dir.path()), ::testing::UnorderedElementsAre("figure.png", "fake-gnuplot"));
}

TEST(Plots, HangingGnuplotIsKilledAtTheTimeout) {
  TempDir dir;
  // exec: the shell becomes the sleep, so the kill reaches the process holding the pipe.
  const std::string gnuplot = FakeGnuplot(dir, "exec sleep 60");
  const std::string path = dir / "figure.png";
  const auto start = std::chrono::steady_clock::now();
  const absl::Status st = WritePng(TwoPointFigure(), path, Gnuplot(gnuplot, 0.5));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(st.message(), HasSubstr("did not finish within 0.5 s"));
  EXPECT_FALSE(std::filesystem::exists(path));
}

}  // namespace
}  // namespace saegrid
