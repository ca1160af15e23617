// saegrid-worker: registers with the coordinator and runs the ranks it is assigned, each in a
// child process (`saegrid-train --job-proto-json FILE --rank ...`).
#include <signal.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "base/durable_file.h"
#include "base/flags.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "metrics/metrics_server.h"
#include "metrics/training_metrics.h"
#include "rpc/termination_signals.h"
#include "rpc/security.h"
#include "worker/worker_daemon.h"

namespace {

constexpr char kUsage[] =
    "usage: saegrid-worker --coordinator HOST:PORT [options]\n"
    "  --worker-id ID            stable name (default: this host's name)\n"
    "  --data-dir DIR            working directories of the ranks (default ./saegrid-worker)\n"
    "  --worker-token-file FILE  bearer token (or env SAEGRID_WORKER_TOKEN)\n"
    "  --tls-ca FILE             trust this CA and talk TLS to the coordinator\n"
    "  --host HOST               address other ranks reach this worker at (default: 127.0.0.1 when\n"
    "                            the coordinator is on loopback, else this host's name)\n"
    "  --rendezvous-ports LO-HI  ports a rank 0 here may serve its store on (default: one free port)\n"
    "  --device cpu|cuda         (default cpu)   --gpus N   GPUs offered (cuda)\n"
    "  --threads N               threads per rank (default: all cores)\n"
    "  --trainer PATH            the saegrid-train binary (default: next to this one)\n"
    "  --shutdown-grace S        on SIGTERM, time for ranks to write a final checkpoint (default 30)\n"
    "  --metrics-listen HOST:PORT  serve Prometheus /metrics here (default 127.0.0.1:9465; \"off\": none)\n"
    "  --metrics-port-file FILE  write the bound metrics port here\n";

int Fail(const std::string& message) {
  absl::FPrintF(stderr, "saegrid-worker: %s\n", message);
  return 2;
}

int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t len = sizeof(addr);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace saegrid;
  sigset_t signals = rpc::BlockTerminationSignals();  // before gRPC starts any thread
  char hostname[HOST_NAME_MAX + 1] = {};
  gethostname(hostname, HOST_NAME_MAX);
  std::string coordinator, worker_id = hostname, data_dir = "saegrid-worker", token_file, tls_ca, host, ports,
                           device = "cpu", trainer, grace = "30",
                           metrics_listen = "127.0.0.1:9465", metrics_port_file;
  int64_t gpu_count = 0, thread_count = 0;
  bool help = false;
  auto parsed = ParseFlags(argc - 1, argv + 1,
                                {{"--coordinator", {&coordinator}},
                                 {"--worker-id", {&worker_id}},
                                 {"--data-dir", {&data_dir}},
                                 {"--worker-token-file", {&token_file}},
                                 {"--tls-ca", {&tls_ca}},
                                 {"--host", {&host}},
                                 {"--rendezvous-ports", {&ports}},
                                 {"--device", {&device}},
                                 {"--gpus", FlagSpec::Int(&gpu_count, 0, 1024)},
                                 {"--threads", FlagSpec::Int(&thread_count, 0, 1 << 16)},
                                 {"--trainer", {&trainer}},
                                 {"--shutdown-grace", {&grace}},
                                 {"--metrics-listen", {&metrics_listen}},
                                 {"--metrics-port-file", {&metrics_port_file}},
                                 {"--help", {nullptr, &help}}});
  if (help) {
    absl::FPrintF(stdout, "%s", kUsage);
    return 0;
  }
  if (!parsed.ok()) return Fail(absl::StrCat(parsed.message(), "\n", kUsage));
  if (coordinator.empty()) return Fail(absl::StrCat("--coordinator is required\n", kUsage));
  if (device != "cpu" && device != "cuda") return Fail("--device: must be cpu or cuda");
  int port_min = 0, port_max = 0;
  double grace_seconds = 0;
  if (auto st = ParseSeconds("--shutdown-grace", grace, &grace_seconds); !st.ok()) return Fail(std::string(st.message()));
  if (ports.empty()) {
    port_min = port_max = FreePort();
  } else {
    std::vector<std::string> parts = absl::StrSplit(ports, '-');
    if (parts.size() == 1) parts.push_back(parts[0]);
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &port_min) || !absl::SimpleAtoi(parts[1], &port_max) ||
        port_min <= 0 || port_max < port_min || port_max > 65535) {
      return Fail("--rendezvous-ports: expected LO-HI with 0 < LO <= HI <= 65535");
    }
  }
  const std::string coordinator_host = coordinator.substr(0, coordinator.rfind(':'));
  if (host.empty()) {
    host = (coordinator_host == "127.0.0.1" || coordinator_host == "localhost") ? "127.0.0.1" : hostname;
  }
  if (trainer.empty()) {
    trainer = (std::filesystem::read_symlink("/proc/self/exe").parent_path() / "saegrid-train").string();
  }
  if (!std::filesystem::exists(trainer)) return Fail(absl::StrCat("--trainer: ", trainer, " does not exist"));
  auto token = rpc::ReadSecret(token_file, "SAEGRID_WORKER_TOKEN", "--worker-token-file");
  if (!token.ok()) return Fail(std::string(token.status().message()));
  auto credentials = rpc::MakeChannelCredentials(tls_ca);
  if (!credentials.ok()) return Fail(std::string(credentials.status().message()));
  std::error_code ec;
  std::filesystem::create_directories(data_dir, ec);
  if (ec) return Fail(absl::StrCat("--data-dir: cannot create ", data_dir, ": ", ec.message()));

  std::unique_ptr<metrics::MetricsServer> metrics_server;
  std::unique_ptr<metrics::TrainingMetrics> training_metrics;
  if (metrics_listen != "off") {
    auto started = metrics::MetricsServer::Start(metrics_listen, "worker");
    if (!started.ok()) return Fail(std::string(started.status().message()));
    metrics_server = *std::move(started);
    training_metrics = std::make_unique<metrics::TrainingMetrics>(metrics_server->registry());
    if (!metrics_port_file.empty()) {
      auto st = WriteFileDurably(metrics_port_file, absl::StrCat(metrics_server->port(), "\n"));
      if (!st.ok()) return Fail(absl::StrCat("--metrics-port-file: ", st.message()));
    }
  }
  worker::WorkerSettings settings;
  settings.metrics = training_metrics.get();
  settings.worker_id = worker_id;
  settings.data_dir = std::filesystem::absolute(data_dir).string();
  settings.trainer = trainer;
  settings.host = host;
  settings.token = *token;
  settings.threads = static_cast<int>(thread_count);
  v1::WorkerCapabilities caps;
  caps.set_device_kind(device);
  caps.set_gpu_count(static_cast<int>(gpu_count));
  caps.set_memory_bytes(static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE));
  caps.set_cpu_cores(static_cast<int>(std::thread::hardware_concurrency()));
  caps.set_host(host);
  caps.set_rendezvous_port_min(port_min);
  caps.set_rendezvous_port_max(port_max);
  caps.set_version(SAEGRID_VERSION);

  worker::WorkerDaemon daemon(settings, caps, rpc::MakeChannel(coordinator, *credentials));
  std::thread signal_thread([&] {
    int signal = 0;
    sigwait(&signals, &signal);
    absl::FPrintF(stdout, "saegrid-worker[%s]: signal %d, stopping ranks (grace %g s)\n", worker_id, signal,
                  grace_seconds);
    std::fflush(stdout);
    daemon.Shutdown(absl::Seconds(grace_seconds));
  });
  signal_thread.detach();
  daemon.Run();
  return 0;
}
