// Token files for language-model harvesting: flat uint16/uint32 binaries and .npy id arrays read
// as [-1, context] sequences, ids checked against the vocabulary with the file and offset named,
// and the mask of excluded (special) token positions.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "engine/lm/token_file.h"
#include "engine/npy.h"
#include "tests/test_support.h"

namespace saegrid {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;

template <typename T>
std::string WriteFlat(const std::string& path, const std::vector<T>& ids) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(ids.data()), static_cast<std::streamsize>(ids.size() * sizeof(T)));
  return path;
}

std::string OpenError(const TokenFileOptions& options) {
  auto file = TokenFile::Open(options);
  return file.ok() ? "OK" : std::string(file.status().message());
}

TEST(TokenFile, FlatUint16IsReadAsSequencesAndTheTailIsDropped) {
  TempDir dir;
  std::vector<uint16_t> ids(100);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<uint16_t>(i * 7 % 50);
  auto file = TokenFile::Open({WriteFlat(dir / "train.bin", ids), "uint16", 16, 50});
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->num_sequences(), 6);  // 100 ids: 6 whole sequences of 16, 4 dropped
  auto rows = (*file)->Read(2, 3);
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->sizes(), (std::vector<int64_t>{3, 16}));
  for (int64_t r = 0; r < 3; ++r) {
    for (int64_t c = 0; c < 16; ++c) EXPECT_EQ((*rows)[r][c].item<int64_t>(), ids[(2 + r) * 16 + c]);
  }
  EXPECT_EQ((*file)->Read(5, 2).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ((*file)->Read(-1, 1).status().code(), absl::StatusCode::kOutOfRange);
}

TEST(TokenFile, Uint32AndNpyIdsGiveTheSameSequences) {
  TempDir dir;
  std::vector<uint32_t> ids(64);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<uint32_t>(70000 + i);  // past uint16
  auto flat = TokenFile::Open({WriteFlat(dir / "big.bin", ids), "uint32", 8, 80000});
  ASSERT_TRUE(flat.ok()) << flat.status();
  const auto expected = torch::arange(70000, 70064, torch::kLong).view({8, 8});
  EXPECT_TRUE(torch::equal(*(*flat)->Read(0, 8), expected));
  for (auto dtype : {torch::kLong, torch::kInt}) {
    const std::string path = dir / (std::string("ids_") + c10::toString(dtype) + ".npy");
    ASSERT_TRUE(WriteNpy(path, expected.to(dtype)).ok());
    auto npy = TokenFile::Open({path, "", 8, 80000});
    ASSERT_TRUE(npy.ok()) << npy.status();
    EXPECT_EQ((*npy)->num_sequences(), 8);
    EXPECT_TRUE(torch::equal(*(*npy)->Read(3, 5), expected.narrow(0, 3, 5)));
  }
}

TEST(TokenFile, AnIdOutsideTheVocabularyNamesTheFileAndItsOffset) {
  TempDir dir;
  std::vector<uint16_t> ids(64, 3);
  ids[37] = 999;
  const std::string path = WriteFlat(dir / "bad.bin", ids);
  auto file = TokenFile::Open({path, "uint16", 16, 500});
  ASSERT_TRUE(file.ok()) << file.status();  // checked as read, not at open
  EXPECT_TRUE((*file)->Read(0, 2).ok());    // ids 0..31 are fine
  auto rows = (*file)->Read(1, 2);
  ASSERT_FALSE(rows.ok());
  EXPECT_THAT(std::string(rows.status().message()),
              HasSubstr("token file " + path + ": id 999 at offset 37 is outside the vocabulary of 500"));
  // Negative ids in a signed .npy.
  const std::string npy = dir / "negative.npy";
  ASSERT_TRUE(WriteNpy(npy, torch::tensor({1L, 2L, -5L, 3L})).ok());
  auto negative = TokenFile::Open({npy, "", 4, 10});
  ASSERT_TRUE(negative.ok());
  EXPECT_THAT(std::string((*negative)->Read(0, 1).status().message()), HasSubstr("id -5 at offset 2"));
}

TEST(TokenFile, BadFilesAndOptionsAreNamed) {
  TempDir dir;
  const std::string odd = dir / "odd.bin";
  std::ofstream(odd, std::ios::binary) << "abc";
  EXPECT_THAT(OpenError({odd, "uint16", 1, 10}), HasSubstr("token file " + odd + ": its 3 bytes are not whole uint16 ids"));
  const std::string short_file = WriteFlat<uint16_t>(dir / "short.bin", {1, 2, 3});
  EXPECT_THAT(OpenError({short_file, "uint16", 4, 10}), HasSubstr("holds 3 ids, fewer than one sequence of 4"));
  EXPECT_THAT(OpenError({short_file, "int8", 1, 10}), HasSubstr("dtype must be \"uint16\" or \"uint32\""));
  EXPECT_THAT(OpenError({short_file, "uint16", 0, 10}), HasSubstr("context length must be > 0"));
  EXPECT_THAT(OpenError({short_file, "uint16", 1, 0}), HasSubstr("vocabulary size must be > 0"));
  EXPECT_THAT(OpenError({dir / "missing.bin", "uint16", 1, 10}), HasSubstr("missing.bin"));
  const std::string floats = dir / "floats.npy";
  ASSERT_TRUE(WriteNpy(floats, torch::ones({8})).ok());
  EXPECT_THAT(OpenError({floats, "", 4, 10}), HasSubstr("holds <f4 values; token ids must be"));
  const std::string garbage = dir / "garbage.npy";
  std::ofstream(garbage, std::ios::binary) << "not a numpy file at all";
  EXPECT_THAT(OpenError({garbage, "", 4, 10}), HasSubstr("garbage.npy"));
}

TEST(TokenFile, ExcludedPositionsMarkSpecialTokens) {
  const auto ids = torch::tensor({{50256L, 11L, 12L, 50256L}, {0L, 50256L, 7L, 1L}});
  const auto mask = ExcludedPositionMask(ids, {50256, 0});
  EXPECT_TRUE(torch::equal(mask, torch::tensor({{true, false, false, true}, {true, true, false, false}})));
  EXPECT_FALSE(ExcludedPositionMask(ids, {}).any().item<bool>());
}

}  // namespace
}  // namespace saegrid
