// Training on a CUDA device end to end: the toy recovery bar at world size 1, and checkpoints
// that move between the GPU and the CPU in both directions. Each case says that it skipped on a
// machine without a GPU (the CPU stand-ins, on the portable kernels, are in trainer_test).
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <cstdio>
#include <string>
#include <utility>

#include "engine/trainer.h"
#include "kernels/dispatch.h"
#include "tests/test_support.h"

namespace saegrid {
namespace {

using testing::TempDir;
using testing::Make;

class CudaTraining : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) {
      GTEST_SKIP() << "no CUDA device (torch::cuda::is_available() is false): CUDA training was not run";
    }
  }
};

// The foundation issue's bar (trainer_test's ExpectToyRecovery), on the GPU with the bf16
// encoder and the device's own kernels.
TEST_F(CudaTraining, ToyDataRecoversGroundTruthFeatures) {
  TempDir dir;
  TrainConfig c;
  c.model.num_latents = 1024;
  c.model.k = 8;
  c.model.compute_dtype = ComputeDtype::kBFloat16;
  c.optimizer.lr = 2e-3;
  c.optimizer.warmup_steps = 20;
  c.optimizer.lr_decay = LrDecay::kLinear;
  c.data.use_synthetic = true;
  c.data.batch_size = 4096;
  c.training.total_tokens = 3'000'000;
  c.checkpoint.output_dir = dir / "toy";
  c.parallelism.device = "cuda";
  auto t = Make(c);
  ASSERT_NE(t, nullptr);
  EXPECT_TRUE(t->device().is_cuda());
  auto eval = t->Train();
  ASSERT_TRUE(eval.ok()) << eval.status();
  std::printf("cuda (%s kernels): MMCS %.4f, recovered %.4f, FVU %.4f, L0 %.2f\n",
              kernels::ImplementationName(kernels::ImplementationFor(t->device())), eval->mmcs,
              eval->recovered_fraction, eval->fvu, eval->l0);
  EXPECT_GE(eval->mmcs, 0.98);
  EXPECT_GE(eval->recovered_fraction, 0.95);
  EXPECT_LT(eval->fvu, 0.1);
  EXPECT_NEAR(eval->l0, 8, 1.5);
}

// Trained on one device, resumed on the other: within float32 rounding of the run that stayed.
TEST_F(CudaTraining, CheckpointsResumeAcrossDevices) {
  TempDir dir;
  auto config = [&](const std::string& out, const std::string& device) {
    TrainConfig c;
    c.model.num_latents = 256;
    c.model.k = 8;
    c.model.dead_tokens_threshold = 512;
    c.model.geometric_median_samples = 2048;
    c.optimizer.lr = 2e-3;
    c.optimizer.ema_decay = 0.9;
    c.data.use_synthetic = true;
    c.data.synthetic.num_samples = 8192;
    c.data.synthetic.num_features = 128;
    c.data.synthetic.d = 64;
    c.data.batch_size = 256;
    c.data.block_rows = 256;
    c.data.shuffle_buffer_blocks = 4;
    c.training.total_tokens = 256 * 20;
    c.checkpoint.output_dir = out;
    c.parallelism.device = device;
    return c;
  };
  for (const auto& [first, second] : {std::pair<std::string, std::string>{"cuda", "cpu"}, {"cpu", "cuda"}}) {
    SCOPED_TRACE(first + " then " + second);
    auto straight = Make(config(dir / (first + "_straight"), first));
    ASSERT_TRUE(straight->Train().ok());
    {
      auto t = Make(config(dir / (first + "_" + second), first));
      for (int i = 0; i < 10; ++i) ASSERT_TRUE(t->Step().ok());
      ASSERT_TRUE(t->WriteCheckpointNow(nullptr).ok());
    }
    auto resumed = Make(config(dir / (first + "_" + second), second));
    ASSERT_TRUE(resumed->resumed());
    EXPECT_EQ(resumed->device().is_cuda(), second == "cuda");
    ASSERT_TRUE(resumed->Train().ok());
    const auto a = straight->model().params().All(), b = resumed->model().params().All();
    for (size_t i = 0; i < a.size(); ++i) {
      SCOPED_TRACE(SaeParameters::Names()[i]);
      EXPECT_EQ(b[i].device().is_cuda(), second == "cuda");
      EXPECT_LT(testing::RelativeError(b[i].cpu(), a[i].cpu()), 1e-3);
    }
  }
}

}  // namespace
}  // namespace saegrid
