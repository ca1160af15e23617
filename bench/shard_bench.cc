// Latent-sharded training steps over real processes (Gloo over loopback), S = 1 and S = 2 on
// this machine, each rank with cores / S threads. Prints JSON: per layout, every rank's mean step
// time split by phase (encoder, top-k, all-gather, decode, all-reduce, backward, optimizer) and
// the bytes it sent per step; and the S = 2 step time relative to S = 1 (the baseline).
// Defaults: B = 4096, d = 768, n = 32768, k = 32, fp32, capacity factor 2, 3 timed steps after
// one warm-up step.
//
//   shard_bench [--batch B] [--d D] [--latents N] [--k K] [--steps T]
#include <sys/wait.h>
#include <unistd.h>

#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_flags.h"
#include "engine/distributed/gang.h"
#include "engine/runtime.h"
#include "engine/trainer.h"
#include "nlohmann/json.hpp"

namespace {

struct Options {
  int64_t rank = -1;  // >= 0: run as this rank (the parent starts the ranks with it)
  int64_t shards = 1, steps = 3, batch = 4096, latents = 32768, k = 32, d = 768, threads = 1, port = 0;
  std::string scratch = "/tmp", out = "/dev/stdout";
};

Options ParseOptions(int argc, char** argv) {
  using saegrid::FlagSpec;
  Options o;
  constexpr int64_t kBig = int64_t{1} << 40;
  saegrid::bench::ParseFlagsOrExit(argc, argv,
                                   {{"--rank", FlagSpec::Int(&o.rank, 0, 1024)},
                                    {"--shards", FlagSpec::Int(&o.shards, 1, 1024)},
                                    {"--steps", FlagSpec::Int(&o.steps, 1, 100000)},
                                    {"--batch", FlagSpec::Int(&o.batch, 1, kBig)},
                                    {"--latents", FlagSpec::Int(&o.latents, 1, kBig)},
                                    {"--k", FlagSpec::Int(&o.k, 1, kBig)},
                                    {"--d", FlagSpec::Int(&o.d, 1, kBig)},
                                    {"--threads", FlagSpec::Int(&o.threads, 0, 1 << 16)},
                                    {"--port", FlagSpec::Int(&o.port, 0, 65535)},
                                    {"--scratch", FlagSpec::String(&o.scratch)},
                                    {"--out", FlagSpec::String(&o.out)}});
  return o;
}

// One rank: trains `steps` + 1 steps and writes its figures as one JSON object to `out`.
int RunRank(const Options& o) {
  const int rank = static_cast<int>(o.rank);
  const int shards = static_cast<int>(o.shards);
  const int steps = static_cast<int>(o.steps);
  const int64_t batch = o.batch;
  saegrid::TrainConfig config;
  config.model.num_latents = o.latents;
  config.model.k = o.k;
  config.model.geometric_median_samples = 4096;
  config.data.use_synthetic = true;
  config.data.synthetic.d = o.d;
  config.data.synthetic.num_features = 2 * config.data.synthetic.d;
  config.data.synthetic.num_samples = batch * (steps + 2);
  config.data.batch_size = batch;
  config.data.eval_fraction = 0;
  config.training.total_tokens = batch * (steps + 1);
  config.checkpoint.resume = false;
  config.checkpoint.output_dir = o.scratch;
  config.runtime.num_threads = static_cast<int>(o.threads);
  config.parallelism.shards = shards;
  saegrid::RendezvousOptions options;
  options.port = static_cast<int>(o.port);
  options.rank = rank;
  options.world_size = shards;
  auto gang = saegrid::JoinGang(config.parallelism, options, "127.0.0.1");
  if (!gang.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", rank, std::string(gang.status().message()).c_str());
    return 1;
  }
  auto trainer = saegrid::Trainer::Create(config, *std::move(gang));
  if (!trainer.ok()) {
    std::fprintf(stderr, "rank %d: %s\n", rank, std::string(trainer.status().message()).c_str());
    return 1;
  }
  saegrid::StepProfile total;
  double seconds = 0;
  int64_t bytes_before = 0;
  for (int s = 0; s <= steps; ++s) {
    if (s == 1) bytes_before = (*trainer)->bytes_sent();  // step 0 warms up
    auto m = (*trainer)->Step();
    if (!m.ok()) {
      std::fprintf(stderr, "rank %d: %s\n", rank, std::string(m.status().message()).c_str());
      return 1;
    }
    if (s == 0) continue;
    seconds += m->step_seconds;
    const auto& p = m->profile;
    total.encoder += p.encoder;
    total.topk += p.topk;
    total.allgather += p.allgather;
    total.decode += p.decode;
    total.allreduce += p.allreduce;
    total.backward += p.backward;
    total.optimizer += p.optimizer;
  }
  const nlohmann::json j = {
      {"rank", rank},
      {"threads", (*trainer)->threads()},
      {"candidates_per_shard", (*trainer)->candidates_per_shard()},
      {"step_seconds", seconds / steps},
      {"phase_seconds",
       {{"encoder", total.encoder / steps}, {"topk", total.topk / steps}, {"allgather", total.allgather / steps},
        {"decode", total.decode / steps}, {"allreduce", total.allreduce / steps},
        {"backward", total.backward / steps}, {"optimizer", total.optimizer / steps}}},
      {"bytes_sent_per_step", ((*trainer)->bytes_sent() - bytes_before) / steps}};
  std::ofstream(o.out) << j.dump() << "\n";
  std::fflush(stdout);
  std::_Exit(0);  // skip the process groups' teardown
}

nlohmann::json RunLayout(int shards, const Options& o) {
  const int port = saegrid::FindFreeLoopbackPort();
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  char scratch_template[] = "/tmp/saegrid_shard_bench_XXXXXX";
  const std::string scratch = mkdtemp(scratch_template);
  std::vector<pid_t> pids;
  for (int rank = 0; rank < shards; ++rank) {
    std::vector<std::string> args = {"/proc/self/exe", "--rank", std::to_string(rank), "--shards",
                                     std::to_string(shards), "--port", std::to_string(port), "--threads",
                                     std::to_string(std::max(1u, cores / shards)), "--scratch", scratch,
                                     "--out", scratch + "/rank" + std::to_string(rank) + ".json"};
    for (const auto& [flag, value] : {std::pair<const char*, int64_t>{"--batch", o.batch}, {"--d", o.d},
                                      {"--latents", o.latents}, {"--k", o.k}, {"--steps", o.steps}}) {
      args.insert(args.end(), {flag, std::to_string(value)});
    }
    const pid_t pid = fork();
    if (pid == 0) {
      std::vector<char*> c;
      for (auto& a : args) c.push_back(a.data());
      c.push_back(nullptr);
      execv("/proc/self/exe", c.data());
      _exit(127);
    }
    pids.push_back(pid);
  }
  nlohmann::json ranks = nlohmann::json::array();
  bool ok = true;
  for (int rank = 0; rank < shards; ++rank) {
    int status = 0;
    waitpid(pids[rank], &status, 0);
    ok = ok && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    std::ifstream in(scratch + "/rank" + std::to_string(rank) + ".json");
    std::stringstream ss;
    ss << in.rdbuf();
    ranks.push_back(nlohmann::json::parse(ss.str(), nullptr, false));
  }
  std::system(("rm -rf '" + scratch + "'").c_str());
  double slowest = 0;
  for (const auto& r : ranks) {
    if (r.is_object()) slowest = std::max(slowest, r.value("step_seconds", 0.0));
  }
  return {{"shards", shards}, {"ok", ok}, {"step_seconds", slowest}, {"ranks", ranks}};
}

}  // namespace

int main(int argc, char** argv) {
  saegrid::ReexecIfBlasMisdetected(argv);
  const Options o = ParseOptions(argc, argv);
  if (o.rank >= 0) return RunRank(o);
  const auto s1 = RunLayout(1, o);
  const auto s2 = RunLayout(2, o);
  const nlohmann::json out = {
      {"benchmark", "sharded_topk_step"},
      {"batch", o.batch},
      {"d_in", o.d},
      {"num_latents", o.latents},
      {"k", o.k},
      {"cores", std::thread::hardware_concurrency()},
      {"layouts", {s1, s2}},
      {"step_time_ratio_s2_over_s1", s1["step_seconds"].get<double>() > 0
                                         ? s2["step_seconds"].get<double>() / s1["step_seconds"].get<double>()
                                         : 0.0}};
  std::printf("%s\n", out.dump(2).c_str());
  return s1["ok"].get<bool>() && s2["ok"].get<bool>() ? 0 : 1;
}
