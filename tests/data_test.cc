// The activation data layer: shard formats and dtypes, token ids, directories and manifests,
// bad files, and the stream's determinism, cursor, replica partitions and held-out split.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <set>

#include "engine/data/activation_source.h"
#include "engine/data/activation_stream.h"
#include "engine/data/synthetic.h"
#include "engine/npy.h"
#include "engine/safetensors.h"
#include "tests/test_support.h"

namespace saegrid {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;

// Row r of the test data has value r in column 0, so rows can be identified after shuffling.
torch::Tensor NumberedRows(int64_t rows, int64_t d, int64_t first = 0) {
  auto x = torch::randn({rows, d});
  x.select(1, 0).copy_(torch::arange(first, first + rows, torch::kFloat));
  return x;
}

std::vector<int64_t> RowIds(const torch::Tensor& x) {
  auto ids = x.select(1, 0).to(torch::kLong).contiguous();
  return std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + ids.numel());
}

DataConfig FilesConfig(const std::string& path) {
  DataConfig c;
  c.path = path;
  c.batch_size = 32;
  c.block_rows = 16;
  c.shuffle_buffer_blocks = 4;
  c.eval_fraction = 0.1;
  c.seed = 3;
  return c;
}

TEST(ActivationShard, ReadsEveryDtypeAndTokenIds) {
  TempDir dir;
  const auto x = torch::randn({10, 6});
  ASSERT_TRUE(WriteNpy(dir / "f32.npy", x).ok());
  ASSERT_TRUE(WriteNpy(dir / "f16.npy", x.to(torch::kHalf)).ok());
  ASSERT_TRUE(WriteNpy(dir / "f16.tokens.npy", torch::arange(100, 110, torch::kInt)).ok());
  ASSERT_TRUE(WriteSafetensors(dir / "bf16.safetensors", {{"activations", x.to(torch::kBFloat16)},
                                                           {"tokens", torch::arange(10, torch::kLong)}}).ok());
  // bf16 bits in a uint16 .npy: write int16 bits, then relabel the descr as '<u2'.
  ASSERT_TRUE(WriteNpy(dir / "bf16.npy", x.to(torch::kBFloat16).view(torch::kShort)).ok());
  std::string bytes = testing::ReadFile(dir / "bf16.npy");
  bytes.replace(bytes.find("<i2"), 3, "<u2");
  testing::WriteFile(dir / "bf16.npy", bytes);

  std::vector<float> out(60);
  auto read = [&](const std::string& name, const std::string& dtype) {
    auto shard = ActivationShard::Open(dir / name, "", dtype);
    EXPECT_TRUE(shard.ok()) << shard.status();
    EXPECT_TRUE((*shard)->CopyRows(0, 10, out.data()).ok());
    return std::make_pair(*shard, torch::from_blob(out.data(), {10, 6}).clone());
  };
  EXPECT_TRUE(torch::equal(read("f32.npy", "").second, x));
  auto [f16, f16_rows] = read("f16.npy", "");
  EXPECT_TRUE(torch::equal(f16_rows, x.to(torch::kHalf).to(torch::kFloat)));
  EXPECT_EQ(f16->TokenAt(3), 103);
  auto [bf16, bf16_rows] = read("bf16.safetensors", "");
  EXPECT_TRUE(torch::equal(bf16_rows, x.to(torch::kBFloat16).to(torch::kFloat)));
  EXPECT_EQ(bf16->TokenAt(7), 7);
  EXPECT_TRUE(torch::equal(read("bf16.npy", "bf16").second, x.to(torch::kBFloat16).to(torch::kFloat)));
  auto no_override = ActivationShard::Open(dir / "bf16.npy", "", "");
  ASSERT_FALSE(no_override.ok());
  EXPECT_THAT(std::string(no_override.status().message()), HasSubstr("data.dtype: bf16"));
}

TEST(ActivationShard, BadFilesGiveErrorsNamingTheFile) {
  TempDir dir;
  auto error = [&](const std::string& path) {
    auto shard = ActivationShard::Open(path, "", "");
    EXPECT_FALSE(shard.ok()) << path;
    return shard.ok() ? std::string() : std::string(shard.status().message());
  };
  ASSERT_TRUE(WriteNpy(dir / "one_d.npy", torch::randn({10})).ok());
  EXPECT_THAT(error(dir / "one_d.npy"), HasSubstr("2-D"));
  ASSERT_TRUE(WriteNpy(dir / "ints.npy", torch::zeros({3, 3}, torch::kLong)).ok());
  EXPECT_THAT(error(dir / "ints.npy"), HasSubstr("unsupported activation dtype '<i8'"));
  ASSERT_TRUE(WriteNpy(dir / "a.npy", torch::randn({10, 4})).ok());
  ASSERT_TRUE(WriteNpy(dir / "a.tokens.npy", torch::arange(9, torch::kLong)).ok());
  EXPECT_THAT(error(dir / "a.npy"), HasSubstr("9 token ids for 10 activation rows"));
  ASSERT_TRUE(WriteSafetensors(dir / "named.safetensors", {{"x", torch::randn({2, 2})}}).ok());
  EXPECT_THAT(error(dir / "named.safetensors"), HasSubstr("no tensor named \"activations\""));
  EXPECT_THAT(error(dir / "missing.npy"), HasSubstr("missing.npy"));
  EXPECT_THAT(error(dir / "file.txt"), HasSubstr("unknown extension"));

  auto x = torch::randn({8, 4});
  x[5][2] = std::numeric_limits<float>::quiet_NaN();
  ASSERT_TRUE(WriteNpy(dir / "nan.npy", x).ok());
  auto shard = ActivationShard::Open(dir / "nan.npy", "", "");
  ASSERT_TRUE(shard.ok());
  std::vector<float> out(32);
  auto st = (*shard)->CopyRows(0, 8, out.data());
  EXPECT_THAT(std::string(st.message()), HasSubstr("row 5 column 2 is NaN"));
  EXPECT_THAT(std::string(st.message()), HasSubstr("nan.npy"));
}

TEST(ActivationSource, DirectoriesManifestsAndWidthMismatch) {
  TempDir dir;
  std::filesystem::create_directories(dir / "shards");
  ASSERT_TRUE(WriteNpy(dir / "shards/b.npy", NumberedRows(40, 8, 100)).ok());
  ASSERT_TRUE(WriteNpy(dir / "shards/a.npy", NumberedRows(40, 8, 0)).ok());
  ASSERT_TRUE(WriteNpy(dir / "shards/a.tokens.npy", torch::arange(40, torch::kLong)).ok());
  auto paths = ListShardPaths(dir / "shards");
  ASSERT_TRUE(paths.ok());
  ASSERT_EQ(paths->size(), 2u);  // the token file is not a shard
  EXPECT_THAT((*paths)[0].path, HasSubstr("a.npy"));

  testing::WriteFile(dir / "manifest.json",
                     R"({"shards": ["shards/a.npy", {"path": "shards/b.npy"}]})");
  auto source = OpenActivationSource(FilesConfig(dir / "manifest.json"));
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ((*source)->d_in(), 8);

  testing::WriteFile(dir / "bad_manifest.json", R"({"shards": [42]})");
  auto bad = OpenActivationSource(FilesConfig(dir / "bad_manifest.json"));
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("shards[0]"));

  ASSERT_TRUE(WriteNpy(dir / "shards/c.npy", NumberedRows(40, 6)).ok());
  auto mismatch = OpenActivationSource(FilesConfig(dir / "shards"));
  ASSERT_FALSE(mismatch.ok());
  EXPECT_THAT(std::string(mismatch.status().message()), HasSubstr("c.npy: width 6 differs from 8"));

  auto empty = OpenActivationSource(FilesConfig(dir / "nothing_here"));
  EXPECT_FALSE(empty.ok());
}

class StreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(WriteNpy(dir_ / "a.npy", NumberedRows(200, 4, 0)).ok());
    ASSERT_TRUE(WriteNpy(dir_ / "b.npy", NumberedRows(120, 4, 200)).ok());
  }
  std::unique_ptr<ActivationSource> Open(int replica = 0, int replicas = 1, int64_t prefetch = 2) {
    DataConfig c = FilesConfig(dir_.path().string());
    c.prefetch_batches = prefetch;
    auto s = OpenActivationSource(c, replica, replicas);
    EXPECT_TRUE(s.ok()) << s.status();
    return *std::move(s);
  }
  std::vector<int64_t> Take(ActivationSource& s, int batches) {
    std::vector<int64_t> ids;
    for (int i = 0; i < batches; ++i) {
      auto b = s.NextBatch();
      EXPECT_TRUE(b.ok()) << b.status();
      for (int64_t id : RowIds(b->x)) ids.push_back(id);
    }
    return ids;
  }
  TempDir dir_;
};

TEST_F(StreamTest, SameSeedSameOrderAndEpochsCoverTrainingRowsOnce) {
  auto s1 = Open(), s2 = Open(0, 1, /*prefetch=*/0);
  const auto a = Take(*s1, 20), b = Take(*s2, 20);
  EXPECT_EQ(a, b);
  // 320 rows in 21 blocks (each shard ends in a short block); ceil(10%) = 3 blocks held out.
  const int64_t held_out = s1->EvalSplit(1000)->x.size(0);
  const size_t epoch = 320 - held_out;
  ASSERT_GE(a.size(), 2 * epoch);
  const std::set<int64_t> epoch0(a.begin(), a.begin() + epoch);
  EXPECT_EQ(epoch0.size(), epoch);
  const std::vector<int64_t> epoch1(a.begin() + epoch, a.begin() + 2 * epoch);
  EXPECT_EQ(std::set<int64_t>(epoch1.begin(), epoch1.end()), epoch0);
  EXPECT_NE(std::vector<int64_t>(a.begin(), a.begin() + epoch), epoch1) << "epochs reuse one order";
  // Shuffled: not the file order.
  std::vector<int64_t> sorted(a.begin(), a.begin() + 32);
  std::sort(sorted.begin(), sorted.end());
  EXPECT_NE(sorted, std::vector<int64_t>(a.begin(), a.begin() + 32));
}

TEST_F(StreamTest, EvalSplitIsDisjointFromTraining) {
  auto s = Open();
  auto eval = s->EvalSplit(1000);
  ASSERT_TRUE(eval.ok());
  EXPECT_GE(eval->x.size(0), 3 * 8);  // 3 of 21 blocks, blocks hold 8 or 16 rows
  const auto train = Take(*s, 8);  // 256 rows: within the first epoch
  for (int64_t id : RowIds(eval->x)) {
    EXPECT_EQ(std::count(train.begin(), train.end(), id), 0) << "row " << id << " is in both splits";
  }
}

TEST_F(StreamTest, CursorRestoreContinuesExactly) {
  auto s = Open();
  Take(*s, 7);  // into the second epoch's first group boundary region
  const DataCursor cursor = s->cursor();
  const auto expected = Take(*s, 6);
  auto fresh = Open();
  ASSERT_TRUE(fresh->Restore(cursor).ok());
  EXPECT_EQ(Take(*fresh, 6), expected);
  EXPECT_FALSE(fresh->Restore({0, 1 << 30}).ok());
}

TEST_F(StreamTest, ReplicasReadDisjointSlicesOfTheSingleProcessBatches) {
  auto single = Open(), r0 = Open(0, 2), r1 = Open(1, 2);
  for (int step = 0; step < 12; ++step) {  // crosses an epoch boundary
    const auto whole = Take(*single, 1), a = Take(*r0, 1), b = Take(*r1, 1);
    ASSERT_EQ(a.size() * 2, whole.size());
    std::vector<int64_t> joined(a);
    joined.insert(joined.end(), b.begin(), b.end());
    EXPECT_EQ(joined, whole) << "step " << step << ": replica slices differ from the single-process batch";
    std::set<int64_t> sa(a.begin(), a.end());
    for (int64_t id : b) EXPECT_EQ(sa.count(id), 0u) << "row " << id << " read by both replicas";
  }
  // One cursor for every replica count: a replica resumes where the single process stood.
  EXPECT_EQ(r0->cursor(), single->cursor());
  EXPECT_EQ(r1->cursor(), single->cursor());
  auto three = Open(0, 3);
  EXPECT_FALSE(three->NextBatch().ok()) << "a batch of 32 cannot split across 3 replicas";
}

TEST(SyntheticData, DeterministicUnitFeaturesAndSparseCodes) {
  SyntheticDataConfig c;
  c.num_samples = 2000;
  const auto a = GenerateSyntheticData(c), b = GenerateSyntheticData(c);
  EXPECT_TRUE(torch::equal(a.samples, b.samples));
  EXPECT_EQ(a.features.sizes(), (std::vector<int64_t>{512, 256}));
  EXPECT_LT((a.features.norm(2, 1) - 1).abs().max().item<double>(), 1e-5);
  c.seed = 1;
  EXPECT_FALSE(torch::equal(GenerateSyntheticData(c).samples, a.samples));
  // Each sample is a non-negative combination of about avg_active_features features: solve for
  // the codes by least squares against the (overcomplete) features is ill-posed, so check norms:
  // E||x||^2 = E[sum of squared coefficients] + cross terms ~ 5 * 1/3.
  const double mean_sq_norm = a.samples.pow(2).sum(1).mean().item<double>();
  EXPECT_GT(mean_sq_norm, 0.5);
  EXPECT_LT(mean_sq_norm, 6.0);
}

}  // namespace
}  // namespace saegrid
