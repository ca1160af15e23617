// The safetensors and .npy readers/writers: round trips, and every malformed case of
// the formats rejected with an error naming the file and the problem; and
// trainer_state.json validated before a resume trusts it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <functional>

#include "engine/checkpoint.h"
#include "engine/npy.h"
#include "engine/safetensors.h"
#include "formats/npy_header.h"
#include "formats/safetensors_header.h"
#include "formats/trainer_state.h"
#include "nlohmann/json.hpp"
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

// A malformed safetensors file and the words its error must contain.
struct BadSafetensors {
  std::string name, contents, expected;
};

// Each file is refused with an error that says what is wrong and names the file.
void ExpectRefused(const TempDir& dir, const std::vector<BadSafetensors>& cases) {
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = dir / (c.name + ".safetensors");
    WriteFile(path, c.contents);
    const std::string error = OpenError(path);
    EXPECT_THAT(error, HasSubstr(c.expected));
    EXPECT_THAT(error, HasSubstr(path));
  }
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
  const std::vector<BadSafetensors> cases = {
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
  ExpectRefused(dir, cases);
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


TEST(Safetensors, SizesThatOverflowAndOddStructuresAreRefused) {
  TempDir dir;
  const std::vector<BadSafetensors> cases = {
      {"overflow", RawSafetensors(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0),
       "overflows int64"},
      // The element count wraps to 0 in 128 bits: accepted (then allocated) before formats/.
      {"wrap128",
       RawSafetensors(R"({"t":{"dtype":"U8","shape":[4294967296,4294967296,4294967296,4294967296],"data_offsets":[0,0]}})", 0),
       "overflows int64"},
      {"huge_offset", RawSafetensors(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,18446744073709551615]}})", 1),
       "beyond int64"},
      {"nested", RawSafetensors(R"({"t":{"dtype":"F32","shape":[[[[[[2]]]]]],"data_offsets":[0,8]}})", 8),
       "an array in its shape"},
      {"extra_field", RawSafetensors(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", 8),
       "unknown field \"x\""},
      {"field_twice", RawSafetensors(R"({"t":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8),
       "\"dtype\" twice"},
      {"three_offsets", RawSafetensors(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", 8),
       "more than two"},
      {"float_dim", RawSafetensors(R"({"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8),
       "non-integer"},
      {"scalar_root", RawSafetensors("7", 0), "not a JSON object"},
  };
  ExpectRefused(dir, cases);
  // A zero-sized dimension makes an empty tensor however large the others are.
  const std::string empty = RawSafetensors(R"({"t":{"dtype":"F64","shape":[0,9223372036854775807],"data_offsets":[0,0]}})", 0);
  auto header = ParseSafetensorsHeader(empty, static_cast<int64_t>(empty.size()), "empty");
  ASSERT_TRUE(header.ok()) << header.status();
  ASSERT_NE(header->Find("t"), nullptr);
  EXPECT_EQ(header->Find("missing"), nullptr);
}

TEST(Npy, HeaderDictIsParsedStrictly) {
  // A literal header: version 1.0, then the dict, padded to 64 bytes.
  auto file = [](const std::string& dict, size_t data_bytes, char major = 1) {
    std::string header = dict;
    const size_t preamble = major == 1 ? 10 : 12;
    header.append((64 - (preamble + header.size() + 1) % 64) % 64, ' ');
    header += '\n';
    std::string out = std::string("\x93NUMPY", 6) + major + '\0';
    out += static_cast<char>(header.size() & 0xff);
    out += static_cast<char>(header.size() >> 8);
    if (major != 1) out += std::string(2, '\0');
    return out + header + std::string(data_bytes, '\0');
  };
  auto parse = [](const std::string& bytes) { return ParseNpyHeader(bytes, static_cast<int64_t>(bytes.size()), "x.npy"); };
  auto error = [&](const std::string& bytes) {
    auto h = parse(bytes);
    EXPECT_FALSE(h.ok());
    return h.ok() ? std::string() : std::string(h.status().message());
  };
  auto v2 = parse(file("{'descr': '<u2', 'fortran_order': False, 'shape': (3, 2L), }", 12, 2));
  ASSERT_TRUE(v2.ok()) << v2.status();
  EXPECT_EQ(v2->major_version, 2);
  EXPECT_EQ(v2->shape, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(v2->data_bytes, 12);
  auto scalar = parse(file("{'descr': '<f8', 'fortran_order': False, 'shape': ()}", 8));
  ASSERT_TRUE(scalar.ok()) << scalar.status();
  EXPECT_EQ(scalar->numel, 1);
  EXPECT_THAT(error(file("{'descr': '<f4', 'fortran_order': False, 'shape': (3)}", 12)), HasSubstr("is not a tuple"));
  EXPECT_THAT(error(file("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'x': 1}", 12)),
              HasSubstr("unknown key 'x'"));
  EXPECT_THAT(error(file("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (3,)}", 12)),
              HasSubstr("'descr' twice"));
  EXPECT_THAT(error(file("{'descr': '<f4', 'fortran_order': False, 'shape': (3,)} junk", 12)),
              HasSubstr("text after the dict"));
  EXPECT_THAT(error(file("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4)}", 0)),
              HasSubstr("more elements than int64"));
  EXPECT_THAT(error(file("{'descr': '<f4', 'fortran_order': False, 'shape': (-3,)}", 0)), HasSubstr("bad dimension '-3'"));
  EXPECT_THAT(error(file("{'descr': '<f4', 'fortran_order': maybe, 'shape': (3,)}", 12)), HasSubstr("fortran_order"));
  std::string minor = file("{'descr': '<f4', 'fortran_order': False, 'shape': (3,)}", 12);
  minor[7] = 5;
  EXPECT_THAT(error(minor), HasSubstr("unsupported format version 1.5"));
}

// A checkpoint written by the engine itself, for tests that then edit its trainer_state.json.
std::string WriteSmallCheckpoint(const std::string& output_dir) {
  CheckpointContents c;
  c.model.architecture = Architecture::kTopK;
  c.model.d_in = 4;
  c.model.num_latents = 8;
  c.model.k = 2;
  c.export_saelens = false;
  c.raw = SaeParameters::FromList({torch::randn({8, 4}), torch::randn({8}), torch::randn({8, 4}), torch::randn({4})});
  c.published = c.raw;
  c.state.step = 3;
  c.state.tokens = 3 * 16;
  c.state.adam_step = 3;
  c.state.adam_exp_avg = c.raw.All();
  c.state.adam_exp_avg_sq = c.raw.All();
  c.state.tokens_since_fired = torch::zeros({8}, torch::kLong);
  auto dir = WriteCheckpoint(output_dir, c);
  EXPECT_TRUE(dir.ok()) << dir.status();
  return dir.ok() ? *dir : std::string();
}

TEST(TrainerStateJson, ValuesAreValidatedBeforeAResumeTrustsThem) {
  TempDir dir;
  const std::string step = WriteSmallCheckpoint(dir / "run");
  const std::string json_path = step + "/trainer_state.json";
  auto loaded = LoadCheckpoint(step);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->state.step, 3);
  EXPECT_EQ(loaded->state.tokens, 48);
  const nlohmann::json good = nlohmann::json::parse(testing::ReadFile(json_path));

  struct Case {
    std::string name;
    std::function<void(nlohmann::json&)> edit;
    std::string expected;
  } cases[] = {
      {"negative step", [](auto& j) { j["step"] = -5; }, "step: must be >= 0, got -5"},
      {"negative tokens", [](auto& j) { j["tokens"] = -1; }, "tokens: must be >= 0, got -1"},
      {"fewer tokens than steps", [](auto& j) { j["tokens"] = 2; }, "tokens: (2) is less than step (3)"},
      {"adam ahead of the step", [](auto& j) { j["adam_step"] = 4; }, "adam_step: must be in [0, 3], got 4"},
      {"string step", [](auto& j) { j["step"] = "3"; }, "step: must be an integer, got \"3\""},
      {"fractional step", [](auto& j) { j["step"] = 2.5; }, "step: must be an integer"},
      {"negative cursor", [](auto& j) { j["data_cursor"]["offset"] = -7; }, "data_cursor.offset: must be >= 0"},
      {"ema updates without ema", [](auto& j) { j["ema_updates"] = 2; }, "ema_updates: must be in [0, 0], got 2"},
      {"slices do not cover", [](auto& j) { j["state_slices"][0]["latent_end"] = 4; },
       "state_slices: cover latents [0, 4) of the 8"},
      {"slices start late", [](auto& j) { j["state_slices"][0]["latent_begin"] = 1; },
       "state_slices[0].latent_begin: must be 0"},
      {"slices past the end", [](auto& j) { j["state_slices"][0]["latent_end"] = 9; },
       "state_slices[0].latent_end: must be in [1, 8], got 9"},
      {"slices overlap",
       [](auto& j) {
         j["state_slices"] = {{{"file", "a.safetensors"}, {"latent_begin", 0}, {"latent_end", 5}},
                              {{"file", "b.safetensors"}, {"latent_begin", 4}, {"latent_end", 8}}};
       },
       "state_slices[1].latent_begin: must be 5 (where the previous slice ended)"},
      {"one slice too many",
       [](auto& j) { j["state_slices"].push_back({{"file", "b.safetensors"}, {"latent_begin", 8}, {"latent_end", 9}}); },
       "state_slices[1]: is one slice too many"},
      {"slice file escapes", [](auto& j) { j["state_slices"][0]["file"] = "../x.safetensors"; }, "state_slices[0].file"},
      {"no slices", [](auto& j) { j["state_slices"] = nlohmann::json::array(); }, "state_slices: must list"},
      {"hookpoint escapes", [](auto& j) { j["hookpoint"] = "../../etc"; }, "hookpoint: must be a plain directory name"},
      {"bad version", [](auto& j) { j["format_version"] = 2; }, "format_version: unsupported version 2"},
      {"k above latents", [](auto& j) { j["model"]["k"] = 9; }, "model.k: must be in [1, 8], got 9"},
      {"no model", [](auto& j) { j.erase("model"); }, "model: is required"},
      {"unknown architecture", [](auto& j) { j["model"]["architecture"] = "gated"; },
       "model.architecture: must be one of \"topk\", \"batchtopk\", \"jumprelu\", \"matryoshka\", \"relu\", got \"gated\""},
      {"non-increasing matryoshka prefixes", [](auto& j) { j["model"]["matryoshka_prefixes"] = {2, 4, 4}; },
       "model.matryoshka_prefixes[2]: must be greater than the previous prefix (4)"},
      {"matryoshka prefix of the whole dictionary", [](auto& j) { j["model"]["matryoshka_prefixes"] = {2, 8}; },
       "model.matryoshka_prefixes[1]: must be in [1, 7]"},
      {"matryoshka prefix not an integer", [](auto& j) { j["model"]["matryoshka_prefixes"] = {"2"}; },
       "model.matryoshka_prefixes[0]: must be an integer, got \"2\""},
      {"matryoshka prefixes not a list", [](auto& j) { j["model"]["matryoshka_prefixes"] = 4; },
       "model.matryoshka_prefixes: must be an array of integers, got 4"},
      {"threshold decay above 1", [](auto& j) { j["model"]["threshold_decay"] = 1.5; },
       "model.threshold_decay: must be in [0, 1], got 1.5"},
      {"zero bandwidth", [](auto& j) { j["model"]["jumprelu_bandwidth"] = 0; },
       "model.jumprelu_bandwidth: must be finite and > 0, got 0"},
      {"negative initial threshold", [](auto& j) { j["model"]["jumprelu_initial_threshold"] = -0.5; },
       "model.jumprelu_initial_threshold: must be finite and >= 0"},
      {"inference threshold not a number", [](auto& j) { j["model"]["inference_threshold"] = "x"; },
       "model.inference_threshold: must be a number"},
      {"negative l0 coefficient", [](auto& j) { j["model"]["l0_coefficient"] = -1; },
       "model.l0_coefficient: must be finite and >= 0"},
      {"target l0 beyond the latents", [](auto& j) { j["model"]["target_l0"] = 9; },
       "model.target_l0: must be in [0, 8], got 9"},
      {"k schedule starting below k", [](auto& j) { j["model"]["k_initial"] = 1; },
       "model.k_initial: must be 0 (no schedule) or >= k (2), got 1"},
      {"negative k schedule", [](auto& j) { j["model"]["k_schedule_steps"] = -3; },
       "model.k_schedule_steps: must be >= 0, got -3"},
      {"topk without k", [](auto& j) { j["model"].erase("k"); }, "model.k: is required"},
      {"not an object", [](auto& j) { j = nlohmann::json::array({1, 2}); }, "not a JSON object"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    nlohmann::json j = good;
    c.edit(j);
    WriteFile(json_path, j.dump(2));
    auto bad = LoadCheckpoint(step);
    ASSERT_FALSE(bad.ok());
    EXPECT_THAT(std::string(bad.status().message()), HasSubstr(json_path + ": " + c.expected));
    // The model reader that a resume calls first refuses the file too.
    EXPECT_FALSE(ReadCheckpointModel(step).ok());
  }
  WriteFile(json_path, std::string(100000, '[') + std::string(100000, ']'));
  EXPECT_THAT(std::string(LoadCheckpoint(step).status().message()), HasSubstr("nested deeper"));
  WriteFile(json_path, good.dump(2));
  EXPECT_TRUE(LoadCheckpoint(step).ok());
}

// Checkpoints written before the model object had the newer architectures' fields still load,
// with the defaults; relu and jumprelu may leave k out.
TEST(TrainerStateJson, OlderModelObjectsTakeTheDefaults) {
  TempDir dir;
  const std::string step = WriteSmallCheckpoint(dir / "run");
  const std::string json_path = step + "/trainer_state.json";
  nlohmann::json j = nlohmann::json::parse(testing::ReadFile(json_path));
  for (const char* field : {"k_initial", "k_schedule_steps", "threshold_decay", "inference_threshold",
                            "jumprelu_initial_threshold", "jumprelu_bandwidth", "l0_coefficient", "target_l0",
                            "matryoshka_prefixes", "input_scale"}) {
    ASSERT_TRUE(j["model"].contains(field)) << field;
    j["model"].erase(field);
  }
  WriteFile(json_path, j.dump(2));
  auto loaded = LoadCheckpoint(step);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const ModelConfig defaults;
  EXPECT_EQ(loaded->model.architecture, Architecture::kTopK);
  EXPECT_EQ(loaded->model.k, 2);
  EXPECT_EQ(loaded->model.k_initial, defaults.k_initial);
  EXPECT_EQ(loaded->model.threshold_decay, defaults.threshold_decay);
  EXPECT_EQ(loaded->model.inference_threshold, defaults.inference_threshold);
  EXPECT_EQ(loaded->model.jumprelu_bandwidth, defaults.jumprelu_bandwidth);
  EXPECT_TRUE(loaded->model.matryoshka_prefixes.empty());

  j["model"]["architecture"] = "relu";
  j["model"].erase("k");
  WriteFile(json_path, j.dump(2));
  auto relu = ReadCheckpointModel(step);
  ASSERT_TRUE(relu.ok()) << relu.status();
  EXPECT_EQ(relu->architecture, Architecture::kReLU);
  EXPECT_EQ(relu->k, defaults.k);
}

}  // namespace
}  // namespace saegrid
