// The checkpoint archive and the inspection of an uploaded checkpoint, without LibTorch: real
// checkpoints written by the saegrid binary, packed, listed, read back, unpacked, inspected; and
// every malformed archive (hand-made tar headers, truncation, random bytes, a wrong tensor shape,
// a missing file) refused with an error that names the archive and the entry.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "formats/checkpoint_archive.h"
#include "formats/checkpoint_inspector.h"
#include "formats/safetensors_header.h"
#include "tests/process_support.h"

namespace saegrid {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::ReadFile;
using testing::TempDir;
using testing::WriteFile;

constexpr int kBatch = 128;
constexpr int kSteps = 2;
const std::string kStepName = absl::StrFormat("step_%09d", kSteps);

// One real run of the trainer (TopK, EMA, SAELens export, evaluation), shared by the tests: its
// final step directory, and that directory packed.
class RealCheckpoint {
 public:
  static const RealCheckpoint& Get() {
    static RealCheckpoint* instance = new RealCheckpoint();
    return *instance;
  }
  std::string step_dir() const { return dir_ / ("out/checkpoints/" + kStepName); }
  std::string archive() const { return dir_ / (kStepName + ".tar"); }

 private:
  RealCheckpoint() {
    WriteFile(dir_ / "job.yaml",
              absl::StrFormat("model: {architecture: topk, num_latents: 64, k: 4}\n"
                              "optimizer: {ema_decay: 0.9}\n"
                              "data:\n"
                              "  synthetic: {num_samples: 4096, num_features: 32, d: 16, seed: 3}\n"
                              "  batch_size: %d\n"
                              "  block_rows: 64\n"
                              "  eval_max_tokens: 256\n"
                              "training: {total_tokens: %d}\n"
                              "checkpoint: {output_dir: %s}\n",
                              kBatch, kBatch * kSteps, dir_ / "out"));
    const std::string log = dir_ / "train.log";
    const int code = testing::RunProcess({SAEGRID_BINARY, "train", "--config", dir_ / "job.yaml", "--threads", "1"},
                                         log, 300);
    EXPECT_EQ(code, 0) << ReadFile(log);
    const auto st = PackDirectory(step_dir(), archive());
    EXPECT_TRUE(st.ok()) << st;
  }
  TempDir dir_;
};

// A copy of the real step directory, changed by `edit`, packed into `archive`.
void PackEdited(const std::string& work, const std::string& archive, const std::function<void(const fs::path&)>& edit) {
  const fs::path copy = fs::path(work) / kStepName;
  fs::remove_all(copy);
  fs::copy(RealCheckpoint::Get().step_dir(), copy, fs::copy_options::recursive);
  edit(copy);
  const auto st = PackDirectory(copy.string(), archive);
  ASSERT_TRUE(st.ok()) << st;
}

std::string InspectError(const std::string& archive) {
  auto summary = InspectCheckpointArchive(archive);
  EXPECT_FALSE(summary.ok()) << "accepted " << archive;
  return summary.ok() ? std::string() : std::string(summary.status().message());
}

// Hand-made ustar archives, for the headers no well-behaved writer produces.
class TarBuilder {
 public:
  // `type`: '0' file, '5' directory, '2' symlink, '1' hard link, ...; `declared_size` < 0: the
  // contents' size.
  TarBuilder& Add(const std::string& name, const std::string& contents = "", char type = '0',
                  int64_t declared_size = -1) {
    char h[512] = {};
    std::memcpy(h, name.data(), std::min<size_t>(name.size(), 100));
    std::snprintf(h + 100, 8, "%07o", 0644);
    std::snprintf(h + 108, 8, "%07o", 0);
    std::snprintf(h + 116, 8, "%07o", 0);
    std::snprintf(h + 124, 12, "%011llo",
                  static_cast<unsigned long long>(declared_size >= 0 ? declared_size : contents.size()));
    std::snprintf(h + 136, 12, "%011o", 0);
    h[156] = type;
    std::memcpy(h + 257, "ustar", 6);
    std::memcpy(h + 263, "00", 2);
    std::memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (unsigned char c : h) sum += c;
    std::snprintf(h + 148, 8, "%06o", sum);
    bytes_.append(h, 512);
    bytes_ += contents;
    bytes_.append((512 - contents.size() % 512) % 512, '\0');
    return *this;
  }
  std::string Finish() const { return bytes_ + std::string(1024, '\0'); }
  std::string Unfinished() const { return bytes_; }

 private:
  std::string bytes_;
};

std::string ListError(const std::string& path, const std::string& bytes) {
  WriteFile(path, bytes);
  auto entries = ListArchive(path);
  EXPECT_FALSE(entries.ok()) << "accepted " << path;
  return entries.ok() ? std::string() : std::string(entries.status().message());
}

TEST(CheckpointArchive, PacksListsReadsAndUnpacksARealCheckpoint) {
  const auto& real = RealCheckpoint::Get();
  auto entries = ListArchive(real.archive());
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_FALSE(entries->empty());
  EXPECT_EQ((*entries)[0].name, kStepName);
  EXPECT_TRUE((*entries)[0].is_directory);
  int files = 0;
  for (const auto& e : *entries) {
    if (e.is_directory) continue;
    ++files;
    auto bytes = ReadArchiveEntry(real.archive(), e, int64_t{1} << 30);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    EXPECT_EQ(*bytes, ReadFile((fs::path(real.step_dir()).parent_path() / e.name).string())) << e.name;
  }
  EXPECT_GE(files, 6);  // trainer state (json + tensors), sparsify (2), SAELens (3), evaluation

  TempDir dest;
  const auto st = UnpackArchive(real.archive(), dest.path().string());
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(ReadFile(dest / (kStepName + "/trainer_state.json")), ReadFile(real.step_dir() + "/trainer_state.json"));
  EXPECT_EQ(ReadFile(dest / (kStepName + "/sparsify/sae/sae.safetensors")), ReadFile(real.step_dir() + "/sparsify/sae/sae.safetensors"));
}

TEST(CheckpointArchive, ReadArchiveEntryHonoursItsLimit) {
  const auto& real = RealCheckpoint::Get();
  auto entries = ListArchive(real.archive());
  ASSERT_TRUE(entries.ok()) << entries.status();
  for (const auto& e : *entries) {
    if (e.name != kStepName + "/trainer_state.safetensors") continue;
    auto small = ReadArchiveEntry(real.archive(), e, e.size - 1);
    ASSERT_FALSE(small.ok());
    EXPECT_THAT(std::string(small.status().message()), HasSubstr("trainer_state.safetensors"));
    EXPECT_THAT(std::string(small.status().message()), HasSubstr("limit"));
    auto range = ReadArchiveEntryRange(real.archive(), e, 0, 8);
    ASSERT_TRUE(range.ok()) << range.status();
    EXPECT_EQ(range->size(), 8u);
    return;
  }
  FAIL() << "no trainer_state.safetensors in the archive";
}

TEST(CheckpointArchive, InteroperatesWithGnuTar) {
  const auto& real = RealCheckpoint::Get();
  TempDir dir;
  // GNU tar lists our archive ...
  const std::string log = dir / "tar.log";
  ASSERT_EQ(testing::RunProcess({"/bin/tar", "-tf", real.archive()}, log, 60), 0) << ReadFile(log);
  EXPECT_THAT(ReadFile(log), HasSubstr(kStepName + "/trainer_state.json"));
  // ... and we list and inspect one made by GNU tar (its own "ustar  " format).
  const std::string gnu = dir / "gnu.tar";
  ASSERT_EQ(testing::RunProcess({"/bin/tar", "-cf", gnu, "-C", fs::path(real.step_dir()).parent_path().string(),
                                 kStepName},
                                log, 60),
            0)
      << ReadFile(log);
  auto summary = InspectCheckpointArchive(gnu);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->step, kSteps);
}

TEST(CheckpointArchive, MalformedHeadersAreRefusedNamingTheEntry) {
  TempDir dir;
  const std::string p = dir / "a.tar";
  EXPECT_THAT(ListError(p, TarBuilder().Add("../escape", "x").Finish()), HasSubstr("unsafe entry name '../escape'"));
  EXPECT_THAT(ListError(p, TarBuilder().Add("/etc/passwd", "x").Finish()), HasSubstr("'/etc/passwd' (absolute name)"));
  EXPECT_THAT(ListError(p, TarBuilder().Add("a/./b", "x").Finish()), HasSubstr("'a/./b'"));
  EXPECT_THAT(ListError(p, TarBuilder().Add("a//b", "x").Finish()), HasSubstr("empty path component"));
  EXPECT_THAT(ListError(p, TarBuilder().Add("a\nb", "x").Finish()), HasSubstr("'a\\x0ab' (control character"));
  EXPECT_THAT(ListError(p, TarBuilder().Add("link", "", '2').Finish()),
              HasSubstr("entry 'link' has type '2'; only regular files and directories"));
  EXPECT_THAT(ListError(p, TarBuilder().Add("hard", "", '1').Finish()), HasSubstr("entry 'hard' has type '1'"));
  EXPECT_THAT(ListError(p, TarBuilder().Add("a", "1").Add("a", "2").Finish()), HasSubstr("entry 'a' appears twice"));
  EXPECT_THAT(ListError(p, TarBuilder().Add("a", "1").Add("a/b", "2").Finish()),
              HasSubstr("entry 'a/b' lies under the regular file 'a'"));
  EXPECT_THAT(ListError(p, TarBuilder().Add("a/b", "1").Add("a", "2").Finish()),
              HasSubstr("regular file entry 'a' has the name of a directory"));
  EXPECT_THAT(ListError(p, TarBuilder().Add("big", "abc", '0', 1 << 20).Finish()),
              HasSubstr("entry 'big' is truncated"));
  EXPECT_THAT(ListError(p, TarBuilder().Add("d/", "", '5', 10).Finish()), HasSubstr("directory entry 'd/' has size 10"));
  EXPECT_THAT(ListError(p, TarBuilder().Add("a", "1").Unfinished()),
              HasSubstr("no end-of-archive block after entry 'a'"));
  EXPECT_THAT(ListError(p, ""), HasSubstr("no end-of-archive block at the start"));
  std::string bad_sum = TarBuilder().Add("a", "1").Finish();
  bad_sum[0] = 'b';
  EXPECT_THAT(ListError(p, bad_sum), HasSubstr("header at offset 0: bad header checksum"));
  std::string bad_size = TarBuilder().Add("a", "1").Finish();
  std::memcpy(&bad_size[124], "0000000x001", 11);  // checksum recomputed below
  std::memset(&bad_size[148], ' ', 8);
  unsigned sum = 0;
  for (int i = 0; i < 512; ++i) sum += static_cast<unsigned char>(bad_size[i]);
  std::snprintf(&bad_size[148], 8, "%06o", sum);
  EXPECT_THAT(ListError(p, bad_size), HasSubstr("entry 'a': malformed size field"));
  // Every message names the archive.
  EXPECT_THAT(ListError(p, TarBuilder().Add("../x").Finish()), HasSubstr(p));
  EXPECT_FALSE(ListArchive(dir / "missing.tar").ok());
  EXPECT_THAT(std::string(ListArchive(dir.path().string()).status().message()), HasSubstr("not a regular file"));
}

TEST(CheckpointArchive, UnpackWritesNothingOutsideTheDestination) {
  TempDir dir;
  const std::string dest = dir / "dest";
  // A bad entry after good ones: nothing at all is written, because the whole archive is
  // validated first.
  WriteFile(dir / "evil.tar", TarBuilder().Add("ok.txt", "fine").Add("../escaped.txt", "gotcha").Finish());
  auto st = UnpackArchive(dir / "evil.tar", dest);
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), HasSubstr("'../escaped.txt'"));
  EXPECT_FALSE(fs::exists(dir / "escaped.txt"));
  EXPECT_FALSE(fs::exists(dest + "/ok.txt"));
  // A symbolic link already in the destination is not followed.
  fs::create_directories(dest);
  fs::create_directories(dir / "elsewhere");
  fs::create_directory_symlink(dir / "elsewhere", dest + "/step");
  WriteFile(dir / "through.tar", TarBuilder().Add("step/file", "data").Finish());
  st = UnpackArchive(dir / "through.tar", dest);
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), HasSubstr("symbolic link"));
  EXPECT_FALSE(fs::exists(dir / "elsewhere/file"));
}

TEST(InspectCheckpoint, ARealCheckpointGivesItsSummary) {
  auto summary = InspectCheckpointArchive(RealCheckpoint::Get().archive());
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->step, kSteps);
  EXPECT_EQ(summary->tokens, kSteps * kBatch);
  EXPECT_EQ(summary->hookpoint, "sae");
  EXPECT_EQ(summary->d_in, 16);
  EXPECT_EQ(summary->num_latents, 64);
  EXPECT_EQ(summary->k, 4);
  EXPECT_EQ(summary->architecture, "topk");
  EXPECT_TRUE(summary->has_evaluation);
}

TEST(InspectCheckpoint, WithoutEvaluationOrSaeLensStillPasses) {
  TempDir dir;
  PackEdited(dir.path().string(), dir / "a.tar", [](const fs::path& step) {
    fs::remove(step / "evaluation.json");
    fs::remove_all(step / "saelens");
  });
  auto summary = InspectCheckpointArchive(dir / "a.tar");
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_FALSE(summary->has_evaluation);
}

TEST(InspectCheckpoint, TruncatedArchiveIsRefusedNamingTheEntry) {
  TempDir dir;
  const auto& real = RealCheckpoint::Get();
  auto entries = ListArchive(real.archive());
  ASSERT_TRUE(entries.ok()) << entries.status();
  const std::string bytes = ReadFile(real.archive());
  for (const auto& e : *entries) {
    if (e.name != kStepName + "/trainer_state.safetensors") continue;
    WriteFile(dir / "cut.tar", bytes.substr(0, static_cast<size_t>(e.data_offset + e.size / 2)));
    const std::string error = InspectError(dir / "cut.tar");
    EXPECT_THAT(error, HasSubstr("entry '" + e.name + "' is truncated"));
    EXPECT_THAT(error, HasSubstr(dir / "cut.tar"));
  }
  // Cut between entries: the end-of-archive block is missing, named after the last entry.
  WriteFile(dir / "cut2.tar", bytes.substr(0, bytes.size() - 1024));
  EXPECT_THAT(InspectError(dir / "cut2.tar"), HasSubstr("no end-of-archive block after entry"));
}

TEST(InspectCheckpoint, MissingTrainerStateIsRefused) {
  TempDir dir;
  PackEdited(dir.path().string(), dir / "a.tar", [](const fs::path& step) { fs::remove(step / "trainer_state.json"); });
  EXPECT_THAT(InspectError(dir / "a.tar"), HasSubstr("missing entry '" + kStepName + "/trainer_state.json'"));
}

TEST(InspectCheckpoint, MissingStateSliceOrWeightsAreRefused) {
  TempDir dir;
  PackEdited(dir.path().string(), dir / "a.tar",
             [](const fs::path& step) { fs::remove(step / "trainer_state.safetensors"); });
  EXPECT_THAT(InspectError(dir / "a.tar"), HasSubstr("missing entry '" + kStepName + "/trainer_state.safetensors'"));
  PackEdited(dir.path().string(), dir / "b.tar", [](const fs::path& step) { fs::remove(step / "sparsify/sae/sae.safetensors"); });
  EXPECT_THAT(InspectError(dir / "b.tar"), HasSubstr("missing entry '" + kStepName + "/sparsify/sae/sae.safetensors'"));
}

// Rewrites the first `"shape":[from]` in a safetensors header to `"shape":[to]` (same length, so
// the header stays well-formed and only the shape is wrong).
void ReshapeFirst(const fs::path& file, const std::string& from, const std::string& to) {
  ASSERT_EQ(from.size(), to.size());
  std::string bytes = ReadFile(file.string());
  const size_t at = bytes.find("\"shape\":[" + from + "]");
  ASSERT_NE(at, std::string::npos) << file;
  bytes.replace(at, from.size() + 10, "\"shape\":[" + to + "]");
  WriteFile(file.string(), bytes);
}

TEST(InspectCheckpoint, WrongTensorShapeIsRefusedNamingTheEntryAndTensor) {
  TempDir dir;
  PackEdited(dir.path().string(), dir / "a.tar",
             [](const fs::path& step) { ReshapeFirst(step / "trainer_state.safetensors", "64,16", "32,32"); });
  std::string error = InspectError(dir / "a.tar");
  EXPECT_THAT(error, HasSubstr("entry '" + kStepName + "/trainer_state.safetensors'"));
  EXPECT_THAT(error, HasSubstr("has shape [32, 32], expected [64, 16]"));

  PackEdited(dir.path().string(), dir / "b.tar",
             [](const fs::path& step) { ReshapeFirst(step / "sparsify/sae/sae.safetensors", "64,16", "16,64"); });
  error = InspectError(dir / "b.tar");
  EXPECT_THAT(error, HasSubstr("entry '" + kStepName + "/sparsify/sae/sae.safetensors'"));
  EXPECT_THAT(error, HasSubstr("has shape [16, 64], expected [64, 16]"));
}

TEST(InspectCheckpoint, BadTrainerStateIsRefusedNamingTheField) {
  TempDir dir;
  PackEdited(dir.path().string(), dir / "a.tar", [](const fs::path& step) {
    std::string text = ReadFile((step / "trainer_state.json").string());
    const size_t at = text.find("\"step\": 2");
    ASSERT_NE(at, std::string::npos) << text;
    text.replace(at, 9, "\"step\": -5");
    WriteFile((step / "trainer_state.json").string(), text);
  });
  const std::string error = InspectError(dir / "a.tar");
  EXPECT_THAT(error, HasSubstr("entry '" + kStepName + "/trainer_state.json': step: must be >= 0, got -5"));
}

TEST(InspectCheckpoint, CorruptSafetensorsHeaderAnywhereIsRefused) {
  TempDir dir;
  PackEdited(dir.path().string(), dir / "a.tar", [](const fs::path& step) {
    std::string bytes = ReadFile((step / "saelens/sparsity.safetensors").string());
    bytes[8] = '!';  // the first byte of the JSON header
    WriteFile((step / "saelens/sparsity.safetensors").string(), bytes);
  });
  const std::string error = InspectError(dir / "a.tar");
  EXPECT_THAT(error, HasSubstr("entry '" + kStepName + "/saelens/sparsity.safetensors'"));
  EXPECT_THAT(error, HasSubstr("not valid JSON"));
}

TEST(InspectCheckpoint, MoreThanOneTopLevelDirectoryOrAMisnamedOneIsRefused) {
  TempDir dir;
  WriteFile(dir / "two.tar", TarBuilder().Add(kStepName + "/", "", '5').Add("other/", "", '5').Finish());
  EXPECT_THAT(InspectError(dir / "two.tar"), HasSubstr("entry 'other': is outside '" + kStepName + "'"));
  WriteFile(dir / "flat.tar", TarBuilder().Add("trainer_state.json", "{}").Finish());
  EXPECT_THAT(InspectError(dir / "flat.tar"), HasSubstr("entry 'trainer_state.json': is a file at the top level"));
  WriteFile(dir / "empty.tar", TarBuilder().Finish());
  EXPECT_THAT(InspectError(dir / "empty.tar"), HasSubstr("empty"));
  // A step directory whose name disagrees with its trainer_state.json.
  PackEdited(dir.path().string(), dir / "unused.tar", [](const fs::path&) {});
  fs::rename(dir.path() / kStepName, dir.path() / "step_000000007");
  ASSERT_TRUE(PackDirectory((dir.path() / "step_000000007").string(), dir / "renamed.tar").ok());
  EXPECT_THAT(InspectError(dir / "renamed.tar"), HasSubstr("'step_000000007' does not match step 2"));
}

TEST(InspectCheckpoint, RandomBytesAreRefused) {
  TempDir dir;
  std::mt19937 rng(7);
  std::string bytes(20000, '\0');
  for (char& c : bytes) c = static_cast<char>(rng());
  WriteFile(dir / "random.tar", bytes);
  const std::string error = InspectError(dir / "random.tar");
  EXPECT_THAT(error, HasSubstr("archive " + (dir / "random.tar") + ": header at offset 0"));
}

}  // namespace
}  // namespace saegrid
