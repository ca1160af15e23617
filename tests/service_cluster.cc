#include "tests/service_cluster.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace saegrid::testing {

ServiceCluster::ServiceCluster(const ClusterOptions& options) : options_(options) {
  WriteFile(dir_ / "client.token", client_token_ + "\n");
  WriteFile(dir_ / "worker.token", worker_token_ + "\n");
  if (options_.tls) {
    const int rc = RunProcess({"/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                               dir_ / "tls.key", "-out", dir_ / "tls.crt", "-days", "2", "-subj", "/CN=localhost",
                               "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"},
                              dir_ / "openssl.log", 60);
    EXPECT_EQ(rc, 0) << ReadFile(dir_ / "openssl.log");
  }
  StartCoordinator();
  for (int i = 1; i <= options_.workers; ++i) StartWorker(i);
}

ServiceCluster::~ServiceCluster() {
  for (auto& [i, pid] : workers_) {
    if (pid > 0) ::kill(pid, SIGKILL);
  }
  for (auto& [i, pid] : workers_) {
    if (pid > 0) WaitProcess(pid, 10);
  }
  if (coordinator_ > 0) {
    ::kill(coordinator_, SIGKILL);
    WaitProcess(coordinator_, 10);
  }
}

void ServiceCluster::StartCoordinator() {
  const std::string port_file = dir_ / "port";
  std::filesystem::remove(port_file);
  std::vector<std::string> tls;
  if (options_.tls) tls = {"--tls-cert", dir_ / "tls.crt", "--tls-key", dir_ / "tls.key"};
  std::vector<std::string> argv = {SAEGRID_COORDINATOR_BINARY, "--listen", absl::StrCat("127.0.0.1:", port_), "--port-file", port_file,
       "--data-dir", dir_ / "coordinator", "--client-token-file", dir_ / "client.token", "--worker-token-file",
       dir_ / "worker.token", "--heartbeat-interval", absl::StrCat(options_.heartbeat_interval),
       "--heartbeat-timeout", absl::StrCat(options_.heartbeat_timeout), "--restart-backoff",
       absl::StrCat(options_.restart_backoff), "--reconnect-grace", absl::StrCat(options_.reconnect_grace),
       "--metrics-listen", "127.0.0.1:0", "--metrics-port-file", dir_ / "coordinator.metrics-port"};
  argv.insert(argv.end(), tls.begin(), tls.end());
  if (options_.health_port > 0) argv.push_back(absl::StrCat("--health-listen=127.0.0.1:", options_.health_port));
  coordinator_ = StartProcess(argv, dir_ / "coordinator.log");
  for (int i = 0; i < 200 && !std::filesystem::exists(port_file); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(std::filesystem::exists(port_file)) << ReadFile(dir_ / "coordinator.log");
  port_ = std::stoi(ReadFile(port_file));
  if (!channel_) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
    std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
    if (options_.tls) {
      grpc::SslCredentialsOptions ssl;
      ssl.pem_root_certs = ReadFile(dir_ / "tls.crt");
      credentials = grpc::SslCredentials(ssl);
    }
    channel_ = grpc::CreateCustomChannel(address(), credentials, args);
    jobs_ = v1::JobService::NewStub(channel_);
  }
}

void ServiceCluster::KillCoordinator(int signal) {
  ::kill(coordinator_, signal);
  WaitProcess(coordinator_, 20);
  coordinator_ = -1;
}

void ServiceCluster::StartWorker(int index) {
  const std::string id = absl::StrCat("worker-", index);
  std::vector<std::string> argv = {SAEGRID_WORKER_BINARY, "--coordinator", address(), "--worker-id", id,
                                   "--data-dir", dir_ / id, "--worker-token-file", dir_ / "worker.token",
                                   "--threads", absl::StrCat(options_.threads_per_rank), "--trainer",
                                   SAEGRID_TRAIN_BINARY, "--shutdown-grace", "20", "--metrics-listen", "127.0.0.1:0",
                                   "--metrics-port-file", dir_ / (id + ".metrics-port")};
  if (options_.tls) argv.insert(argv.end(), {"--tls-ca", dir_ / "tls.crt"});
  workers_[index] = StartProcess(argv, dir_ / (id + ".log"));
}

void ServiceCluster::KillWorker(int index, int signal) {
  ::kill(workers_[index], signal);
  WaitProcess(workers_[index], 30);
  workers_[index] = -1;
}

bool ServiceCluster::KillRank(const std::string& attempt_id, int rank, int signal) {
  bool killed = false;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string pid = entry.path().filename().string();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    std::vector<std::string> argv;
    std::string arg;
    for (char c : ReadFile(entry.path() / "cmdline")) {
      if (c == '\0') {
        argv.push_back(arg);
        arg.clear();
      } else {
        arg += c;
      }
    }
    // Attempt ids repeat across clusters (every cluster's first job is job-000001): only ranks
    // whose files live in this cluster's directory are candidates.
    bool attempt = false, this_rank = false, ours = false;
    for (size_t i = 0; i < argv.size(); ++i) {
      ours |= argv[i].rfind(dir_.path().string() + "/", 0) == 0;
      if (i + 1 == argv.size()) break;
      attempt |= argv[i] == "--attempt" && argv[i + 1] == attempt_id;
      this_rank |= argv[i] == "--rank" && argv[i + 1] == std::to_string(rank);
    }
    if (ours && attempt && this_rank && ::kill(std::stoi(pid), signal) == 0) killed = true;
  }
  return killed;
}

namespace {

int ReadPort(const std::string& path) {
  for (int i = 0; i < 200 && !std::filesystem::exists(path); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const std::string text = ReadFile(path);
  return text.empty() ? -1 : std::stoi(text);
}

}  // namespace

int ServiceCluster::coordinator_metrics_port() const { return ReadPort(dir_ / "coordinator.metrics-port"); }
int ServiceCluster::worker_metrics_port(int index) const {
  return ReadPort(dir_ / absl::StrCat("worker-", index, ".metrics-port"));
}

std::vector<std::string> ServiceCluster::CliFlags() const {
  std::vector<std::string> flags = {"--coordinator", address(), "--token-file", dir_ / "client.token"};
  if (options_.tls) flags.insert(flags.end(), {"--tls-ca", dir_ / "tls.crt"});
  return flags;
}

std::unique_ptr<v1::WorkerService::Stub> ServiceCluster::WorkerStub() { return v1::WorkerService::NewStub(channel_); }

std::unique_ptr<grpc::ClientContext> ServiceCluster::Context(const std::string& token) const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  const std::string& t = token == "\x01" ? client_token_ : token;
  if (!t.empty()) ctx->AddMetadata("authorization", "Bearer " + t);
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  return ctx;
}

v1::Job ServiceCluster::GetJob(const std::string& job_id) {
  v1::GetJobRequest request;
  request.set_job_id(job_id);
  v1::Job job;
  auto ctx = Context();
  ctx->set_wait_for_ready(true);
  (void)jobs_->GetJob(ctx.get(), request, &job);
  return job;
}

v1::ListCheckpointsResponse ServiceCluster::Checkpoints(const std::string& job_id) {
  v1::ListCheckpointsRequest request;
  request.set_job_id(job_id);
  v1::ListCheckpointsResponse response;
  grpc::Status status = jobs_->ListCheckpoints(Context().get(), request, &response);
  EXPECT_TRUE(status.ok()) << "ListCheckpoints(" << job_id << "): " << status.error_message();
  return response;
}

v1::Evaluation ServiceCluster::Evaluation(const std::string& job_id) {
  v1::GetEvaluationRequest request;
  request.set_job_id(job_id);
  v1::Evaluation response;
  grpc::Status status = jobs_->GetEvaluation(Context().get(), request, &response);
  EXPECT_TRUE(status.ok()) << "GetEvaluation(" << job_id << "): " << status.error_message();
  return response;
}

int ServiceCluster::WorkerOfRank(const v1::Job& job, int rank) const {
  if (job.attempts_size() == 0) return -1;
  const auto& a = job.attempts(job.attempts_size() - 1);
  if (rank >= a.worker_ids_size()) return -1;
  return std::stoi(a.worker_ids(rank).substr(7));
}

std::string ServiceCluster::Logs() const {
  std::string out = "--- coordinator.log\n" + ReadFile(dir_ / "coordinator.log");
  for (const auto& [i, pid] : workers_) {
    out += absl::StrCat("--- worker-", i, ".log\n", ReadFile(dir_ / absl::StrCat("worker-", i, ".log")));
  }
  return out;
}

std::string SmallJobSpec(int shards, int steps, int every, int d, int latents) {
  return absl::StrFormat(
      "name: small\n"
      "max_restarts: 3\n"
      "model: {architecture: topk, num_latents: %d, k: 8}\n"
      "optimizer: {lr: 0.003}\n"
      "data:\n"
      "  synthetic: {num_samples: 65536, num_features: 128, d: %d, avg_active_features: 5, seed: 1}\n"
      "  batch_size: 256\n"
      "  block_rows: 256\n"
      "  eval_max_tokens: 2048\n"
      "training: {total_tokens: %d, log_every_steps: 5}\n"
      "parallelism: {shards: %d, capacity_factor: 2, timeout_seconds: 20}\n"
      "checkpoint: {every_steps: %d}\n",
      latents, d, steps * 256, shards, every);
}

}  // namespace saegrid::testing
