// kernels::RunningTopK (chunked, per-row running top-k) against torch::topk on the whole matrix.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>

#include "kernels/running_topk.h"
#include "tests/test_support.h"

namespace saegrid {
namespace {

using RunningTopK = testing::KernelPathTest;

// Offers `matrix` [B, n] in chunks of `chunk` columns, each made contiguous as the encoder's are.
std::pair<torch::Tensor, torch::Tensor> ChunkedTopK(const torch::Tensor& matrix, int64_t k,
                                                    int64_t chunk) {
  kernels::RunningTopK running(matrix.size(0), k);
  for (int64_t begin = 0; begin < matrix.size(1); begin += chunk) {
    running.Offer(matrix.narrow(1, begin, std::min(chunk, matrix.size(1) - begin)).contiguous(), begin);
  }
  return running.Finish();
}

TEST_P(RunningTopK, MatchesTorchTopKForEveryChunking) {
  torch::manual_seed(1);
  // Distinct values (a permutation per row) so that the ids are unambiguous.
  const auto matrix = torch::rand({37, 1000}).argsort(/*dim=*/1, /*descending=*/false).to(torch::kFloat) / 7.0 - 50;
  for (int64_t k : {1, 5, 32, 300}) {
    const auto expected = matrix.topk(k, 1, true, true);
    for (int64_t chunk : {1000, 256, 100, 17, 1}) {
      SCOPED_TRACE("k " + std::to_string(k) + " chunk " + std::to_string(chunk));
      const auto [values, ids] = ChunkedTopK(matrix, k, chunk);
      EXPECT_TRUE(torch::equal(values, std::get<0>(expected)));
      EXPECT_TRUE(torch::equal(ids, std::get<1>(expected)));
    }
  }
}

TEST_P(RunningTopK, GaussianPreActivationsGiveTheSameValues) {
  // Wide rows like the encoder's: the skip tests must never drop a winner.
  torch::manual_seed(2);
  const auto matrix = torch::randn({64, 20000});
  const auto expected = matrix.topk(32, 1, true, true);
  const auto [values, ids] = ChunkedTopK(matrix, 32, 4096);
  EXPECT_TRUE(torch::equal(values, std::get<0>(expected)));
  // Every id points at its value.
  EXPECT_TRUE(torch::equal(matrix.gather(1, ids), values));
}

TEST_P(RunningTopK, BFloat16AndDoubleChunksAreWidened) {
  torch::manual_seed(3);
  const auto matrix = torch::randn({16, 700});
  for (auto dtype : {torch::kBFloat16, torch::kDouble}) {
    const auto typed = matrix.to(dtype);
    const auto expected = typed.to(torch::kFloat).topk(8, 1, true, true);
    const auto [values, ids] = ChunkedTopK(typed, 8, 128);
    EXPECT_TRUE(torch::equal(values, std::get<0>(expected)));
    EXPECT_TRUE(torch::equal(typed.to(torch::kFloat).gather(1, ids), values));
  }
}

TEST_P(RunningTopK, TiesGoToTheLowerLatentId) {
  auto row = torch::zeros({1, 300});
  row[0][250] = 5;
  row[0][40] = 3;
  row[0][200] = 3;
  row[0][120] = 3;
  const auto [values, ids] = ChunkedTopK(row, 3, 64);
  EXPECT_TRUE(torch::equal(values, torch::tensor({{5.0f, 3.0f, 3.0f}})));
  EXPECT_TRUE(torch::equal(ids, torch::tensor({{250L, 40L, 120L}})));
}

TEST_P(RunningTopK, ColumnSubsetsOfferOnlyThoseLatents) {
  torch::manual_seed(4);
  const auto matrix = torch::randn({12, 512});
  const auto dead = std::get<0>(torch::randperm(512, torch::kLong).narrow(0, 0, 90).sort());
  kernels::RunningTopK running(12, 10);
  for (int64_t begin = 0; begin < 512; begin += 128) {
    const auto in_chunk = dead.masked_select((dead >= begin).logical_and(dead < begin + 128)) - begin;
    running.Offer(matrix.narrow(1, begin, 128).contiguous(), begin, in_chunk);
  }
  const auto [values, ids] = running.Finish();
  const auto expected = matrix.index_select(1, dead).topk(10, 1, true, true);
  EXPECT_TRUE(torch::equal(values, std::get<0>(expected)));
  EXPECT_TRUE(torch::equal(ids, dead.index_select(0, std::get<1>(expected).flatten()).view({12, 10})));
}

TEST_P(RunningTopK, RowsOfferedFewerThanKArePaddedAndNaNIsNeverSelected) {
  auto matrix = torch::tensor({{1.0f, std::numeric_limits<float>::quiet_NaN(), 2.0f}});
  const auto [values, ids] = ChunkedTopK(matrix, 4, 2);
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_TRUE(torch::equal(values, torch::tensor({{2.0f, 1.0f, -inf, -inf}})));
  EXPECT_TRUE(torch::equal(ids, torch::tensor({{2L, 0L, 0L, 0L}})));
}

TEST_P(RunningTopK, RejectsBadChunksAndColumns) {
  kernels::RunningTopK running(4, 2);
  EXPECT_THROW(running.Offer(torch::zeros({3, 8}), 0), c10::Error);   // wrong row count
  EXPECT_THROW(running.Offer(torch::zeros({4}), 0), c10::Error);      // not 2-D
  EXPECT_THROW(running.Offer(torch::zeros({4, 8}), 0, torch::tensor({8L})), c10::Error);
  EXPECT_THROW(running.Offer(torch::zeros({4, 8}), 0, torch::tensor({-1L})), c10::Error);
  EXPECT_THROW(running.Offer(torch::zeros({4, 8}), 0, torch::tensor({1.0f})), c10::Error);
  EXPECT_THROW(kernels::RunningTopK(-1, 2), c10::Error);
}

SAEGRID_INSTANTIATE_ON_KERNEL_PATHS(RunningTopK);

}  // namespace
}  // namespace saegrid
