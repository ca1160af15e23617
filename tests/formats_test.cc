// The safetensors and .npy readers/writers: round trips, and every malformed case of
// ../shared/reference/formats.md rejected with an error naming the file and the problem.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>

#include "engine/npy.h"
#include "engine/safetensors.h"
#include "tests/test_support.h"

namespace saegrid {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;
using testing::WriteFile;

// A safetensors file from a literal header and a data buffer of `data_bytes` bytes.
std::string RawSafetensors(const std::string& header, size_t data_bytes, int64_t declared_len = -1) {
  std::string out(8, '\0');
  const uint64_t len = declared_len >= 0 ? static_cast<uint64_t>(declared_len) : header.size();
  std::memcpy(out.data(), &len, 8);
  return out + header + std::string(data_bytes, '\x01');
}

std::string OpenError(const std::string& path) {
  auto f = SafetensorsFile::Open(path);
  EXPECT_FALSE(f.ok());
  return f.ok() ? "" : std::string(f.status().message());
}

TEST(Safetensors, RoundTripsTensorsAndMetadata) {
  TempDir dir;
  const auto a = torch::randn({3, 5});
  const auto b = torch::arange(7, torch::kLong);
  const auto c = torch::randn({4}).to(torch::kBFloat16);
  ASSERT_TRUE(WriteSafetensors(dir / "x.safetensors", {{"a", a}, {"b", b}, {"c", c}}, {{"k", "v"}}).ok());
  auto f = SafetensorsFile::Open(dir / "x.safetensors");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE(torch::equal(*f->Get("a"), a));
  EXPECT_TRUE(torch::equal(*f->Get("b"), b));
  EXPECT_TRUE(torch::equal(*f->Get("c"), c));
  EXPECT_EQ(f->metadata().at("k"), "v");
  EXPECT_EQ(f->Entry("a")->dtype, "F32");
  EXPECT_EQ(f->Entry("c")->dtype, "BF16");
  // The header is padded so that the data starts 8-byte aligned.
  uint64_t n;
  std::memcpy(&n, testing::ReadFile(dir / "x.safetensors").data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_FALSE(f->Get("missing").ok());
}

TEST(Safetensors, RejectsMalformedFiles) {
  TempDir dir;
  const std::string ok_entry = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  struct Case {
    std::string name, contents, expected;
  } cases[] = {
      {"short", std::string(5, '\0'), "too short"},
      {"len_too_big", RawSafetensors("{" + ok_entry + "}", 8, 4096), "exceeds"},
      {"bad_json", RawSafetensors("{\"t\": [", 0), "not valid JSON"},
      {"not_object", RawSafetensors("[1,2]", 0), "not a JSON object"},
      {"outside", RawSafetensors(R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8), "outside"},
      {"overlap", RawSafetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12), "overlaps"},
      {"gap", RawSafetensors(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8), "gap"},
      {"uncovered", RawSafetensors("{" + ok_entry + "}", 12), "cover 8 of the 12"},
      {"shape_bytes", RawSafetensors(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "byte range"},
      {"unknown_dtype", RawSafetensors(R"({"t":{"dtype":"F12","shape":[2],"data_offsets":[0,8]}})", 8), "unknown dtype"},
      {"duplicate", RawSafetensors("{" + ok_entry + "," + ok_entry + "}", 8), "duplicate tensor name \"t\""},
      {"no_offsets", RawSafetensors(R"({"t":{"dtype":"F32","shape":[2]}})", 8), "data_offsets"},
      {"negative_shape", RawSafetensors(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "shape"},
      {"begin_after_end", RawSafetensors(R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8), "begin > end"},
      {"bad_metadata", RawSafetensors(R"({"__metadata__":{"a":1}})", 0), "not a string"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = dir / (c.name + ".safetensors");
    WriteFile(path, c.contents);
    const std::string error = OpenError(path);
    EXPECT_THAT(error, HasSubstr(c.expected));
    EXPECT_THAT(error, HasSubstr(path));
  }
  EXPECT_FALSE(SafetensorsFile::Open(dir / "does_not_exist.safetensors").ok());
}

TEST(Npy, RoundTripsEveryWrittenDtype) {
  TempDir dir;
  for (auto t : {torch::randn({4, 3}), torch::randn({5}).to(torch::kHalf), torch::arange(6, torch::kLong).view({2, 3}),
                 torch::randn({2, 2}).to(torch::kDouble)}) {
    const std::string path = dir / "a.npy";
    ASSERT_TRUE(WriteNpy(path, t).ok());
    auto a = OpenNpy(path);
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(a->shape, t.sizes().vec());
    EXPECT_EQ(a->data_offset % 64, 0u);
    auto type = NpyDescrToScalarType(a->descr);
    ASSERT_TRUE(type.ok());
    const auto back = torch::from_blob(const_cast<uint8_t*>(a->data()), t.sizes(), *type).clone();
    EXPECT_TRUE(torch::equal(back, t));
  }
}

TEST(Npy, RejectsMalformedFiles) {
  TempDir dir;
  ASSERT_TRUE(WriteNpy(dir / "good.npy", torch::randn({16, 4})).ok());
  const std::string good = testing::ReadFile(dir / "good.npy");
  auto with = [&](const std::string& name, std::string contents) {
    const std::string path = dir / name;
    WriteFile(path, contents);
    auto a = OpenNpy(path);
    EXPECT_FALSE(a.ok()) << name;
    return a.ok() ? std::string() : std::string(a.status().message());
  };
  EXPECT_THAT(with("truncated.npy", good.substr(0, good.size() - 10)), HasSubstr("truncated"));
  EXPECT_THAT(with("magic.npy", "NOTNUMPY" + good.substr(8)), HasSubstr("magic"));
  std::string fortran = good;
  fortran.replace(fortran.find("False"), 5, "True ");
  EXPECT_THAT(with("fortran.npy", fortran), HasSubstr("Fortran"));
  std::string dtype = good;
  dtype.replace(dtype.find("<f4"), 3, "<c8");
  EXPECT_THAT(with("dtype.npy", dtype), HasSubstr("unsupported dtype '<c8'"));
  std::string header_len = good;
  header_len[8] = '\xff';
  header_len[9] = '\xff';
  EXPECT_THAT(with("hlen.npy", header_len.substr(0, 200)), HasSubstr("header length"));
  std::string shape = good;
  shape.replace(shape.find("(16, 4)"), 7, "(1x, 4)");
  EXPECT_THAT(with("shape.npy", shape), HasSubstr("bad dimension"));
}

}  // namespace
}  // namespace saegrid
