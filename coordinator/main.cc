// saegrid-coordinator: takes jobs over gRPC, keeps them in SQLite, schedules gangs onto workers.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>

#include <cstdio>
#include <fstream>
#include <thread>

#include "base/durable_file.h"
#include "base/flags.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/notification.h"
#include "coordinator/coordinator.h"
#include "coordinator/job_service.h"
#include "coordinator/worker_service.h"
#include "metrics/metrics_server.h"
#include "metrics/rpc_metrics.h"
#include "rpc/termination_signals.h"
#include "rpc/malformed_request.h"
#include "rpc/security.h"

namespace {

constexpr char kUsage[] =
    "usage: saegrid-coordinator [options]\n"
    "  --listen HOST:PORT          gRPC address (default 127.0.0.1:50051; port 0 picks one)\n"
    "  --port-file FILE            write the bound port here once serving\n"
    "  --data-dir DIR              SQLite database and checkpoints (default ./saegrid-data)\n"
    "  --client-token-file FILE    bearer token of clients (or env SAEGRID_CLIENT_TOKEN)\n"
    "  --worker-token-file FILE    bearer token of workers (or env SAEGRID_WORKER_TOKEN)\n"
    "  --allow-unauthenticated     serve without tokens (local experiments only)\n"
    "  --tls-cert FILE --tls-key FILE   serve TLS\n"
    "  --heartbeat-interval S      worker heartbeat period (default 1)\n"
    "  --heartbeat-timeout S       a worker silent this long is lost (default 10)\n"
    "  --restart-backoff S         first restart delay, doubling up to 60 s (default 1)\n"
    "  --reconnect-grace S         after a restart, time for running ranks to report (default 20)\n"
    "  --metrics-listen HOST:PORT  serve Prometheus /metrics here (default 127.0.0.1:9464; \"off\": none)\n"
    "  --metrics-port-file FILE    write the bound metrics port here\n"
    "  --health-listen HOST:PORT   also serve the health service alone, in plaintext, here (for\n"
    "                              Kubernetes gRPC probes when the API uses TLS)\n"
    "health service names: \"liveness\" (process up), \"readiness\" (state recovered, serving)\n";

int Fail(const std::string& message) {
  absl::FPrintF(stderr, "saegrid-coordinator: %s\n", message);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace saegrid;
  sigset_t signals = rpc::BlockTerminationSignals();  // before gRPC starts any thread
  std::string listen = "127.0.0.1:50051", port_file, data_dir = "saegrid-data", client_token_file,
              worker_token_file, tls_cert, tls_key, heartbeat_interval = "1", heartbeat_timeout = "10",
              restart_backoff = "1", reconnect_grace = "20", metrics_listen = "127.0.0.1:9464", metrics_port_file,
              health_listen;
  bool allow_unauthenticated = false, help = false;
  auto parsed = ParseFlags(argc - 1, argv + 1,
                                {{"--listen", {&listen}},
                                 {"--port-file", {&port_file}},
                                 {"--data-dir", {&data_dir}},
                                 {"--client-token-file", {&client_token_file}},
                                 {"--worker-token-file", {&worker_token_file}},
                                 {"--allow-unauthenticated", {nullptr, &allow_unauthenticated}},
                                 {"--tls-cert", {&tls_cert}},
                                 {"--tls-key", {&tls_key}},
                                 {"--heartbeat-interval", {&heartbeat_interval}},
                                 {"--heartbeat-timeout", {&heartbeat_timeout}},
                                 {"--restart-backoff", {&restart_backoff}},
                                 {"--reconnect-grace", {&reconnect_grace}},
                                 {"--metrics-listen", {&metrics_listen}},
                                 {"--metrics-port-file", {&metrics_port_file}},
                                 {"--health-listen", {&health_listen}},
                                 {"--help", {nullptr, &help}}});
  if (help) {
    absl::FPrintF(stdout, "%s", kUsage);
    return 0;
  }
  if (!parsed.ok()) return Fail(absl::StrCat(parsed.message(), "\n", kUsage));
  coordinator::CoordinatorOptions options;
  options.data_dir = data_dir;
  double seconds = 0;
  for (auto [flag, text, target] : {std::tuple{"--heartbeat-interval", &heartbeat_interval, &options.heartbeat_interval},
                                    std::tuple{"--heartbeat-timeout", &heartbeat_timeout, &options.heartbeat_timeout},
                                    std::tuple{"--restart-backoff", &restart_backoff, &options.restart_backoff_initial},
                                    std::tuple{"--reconnect-grace", &reconnect_grace, &options.reconnect_grace}}) {
    if (auto st = ParseSeconds(flag, *text, &seconds); !st.ok()) return Fail(std::string(st.message()));
    *target = absl::Seconds(seconds);
  }
  if (options.heartbeat_timeout <= options.heartbeat_interval) {
    return Fail("--heartbeat-timeout must exceed --heartbeat-interval");
  }
  auto client_token = rpc::ReadSecret(client_token_file, "SAEGRID_CLIENT_TOKEN", "--client-token-file");
  if (!client_token.ok()) return Fail(std::string(client_token.status().message()));
  auto worker_token = rpc::ReadSecret(worker_token_file, "SAEGRID_WORKER_TOKEN", "--worker-token-file");
  if (!worker_token.ok()) return Fail(std::string(worker_token.status().message()));
  if ((client_token->empty() || worker_token->empty()) && !allow_unauthenticated) {
    return Fail("no client or worker token: give --client-token-file and --worker-token-file (or "
                "SAEGRID_CLIENT_TOKEN / SAEGRID_WORKER_TOKEN), or --allow-unauthenticated");
  }
  for (const auto& [token, what] : {std::pair{&*client_token, "client token"}, std::pair{&*worker_token, "worker token"}}) {
    if (!token->empty() && token->size() < rpc::kMinTokenLength) {
      return Fail(absl::StrCat("the ", what, " has ", token->size(), " characters; use at least ", rpc::kMinTokenLength,
                               " (e.g. openssl rand -hex 32)"));
    }
  }
  if (allow_unauthenticated && (client_token->empty() || worker_token->empty())) {
    absl::FPrintF(stderr, "saegrid-coordinator: WARNING: --allow-unauthenticated: %s%s%s accept calls without a "
                          "token; anyone who reaches %s can submit jobs or pose as a worker\n",
                  client_token->empty() ? "JobService" : "", client_token->empty() && worker_token->empty() ? " and " : "",
                  worker_token->empty() ? "WorkerService" : "", listen);
  }
  if (!client_token->empty() && *client_token == *worker_token) {
    return Fail("the client and worker tokens must differ");
  }
  auto credentials = rpc::MakeServerCredentials(tls_cert, tls_key);
  if (!credentials.ok()) return Fail(std::string(credentials.status().message()));


  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, *credentials, &port);
  builder.SetMaxReceiveMessageSize(rpc::kMaxMessageBytes);
  builder.SetMaxSendMessageSize(rpc::kMaxMessageBytes);
  // Workers ping their heartbeat stream; allow it without GOAWAY "too_many_pings".
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);

  auto coordinator = coordinator::Coordinator::Open(options);
  if (!coordinator.ok()) return Fail(std::string(coordinator.status().message()));
  std::unique_ptr<metrics::MetricsServer> metrics_server;
  std::unique_ptr<coordinator::CoordinatorMetrics> coordinator_metrics;
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<rpc::MalformedRequestInterceptorFactory>());
  if (metrics_listen != "off") {
    auto started = metrics::MetricsServer::Start(metrics_listen, "coordinator");
    if (!started.ok()) return Fail(std::string(started.status().message()));
    metrics_server = *std::move(started);
    coordinator_metrics = std::make_unique<coordinator::CoordinatorMetrics>(metrics_server->registry());
    (*coordinator)->SetMetrics(coordinator_metrics.get());
    interceptors.push_back(std::make_unique<metrics::RpcMetrics>(metrics_server->registry()));
    if (!metrics_port_file.empty()) {
      if (auto st = WriteFileDurably(metrics_port_file, absl::StrCat(metrics_server->port(), "\n")); !st.ok()) {
        return Fail(absl::StrCat("--metrics-port-file: ", st.message()));
      }
    }
  }
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  rpc::TokenAuthenticator auth(*client_token, *worker_token);
  coordinator::JobServiceImpl job_service(coordinator->get(), &auth);
  coordinator::WorkerServiceImpl worker_service(coordinator->get(), &auth);
  builder.RegisterService(&job_service);
  builder.RegisterService(&worker_service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) return Fail(absl::StrCat("cannot listen on ", listen));
  std::unique_ptr<grpc::Server> health_server;
  if (!health_listen.empty()) {
    grpc::ServerBuilder health_builder;
    int health_port = 0;
    health_builder.AddListeningPort(health_listen, grpc::InsecureServerCredentials(), &health_port);
    health_server = health_builder.BuildAndStart();
    if (!health_server || health_port == 0) return Fail(absl::StrCat("--health-listen: cannot listen on ", health_listen));
  }
  auto set_health = [&](const char* name, bool serving) {
    for (grpc::Server* s : {server.get(), health_server.get()}) {
      if (s != nullptr) s->GetHealthCheckService()->SetServingStatus(name, serving);
    }
  };
  for (const char* name : {"liveness", "readiness", "saegrid.v1.JobService", "saegrid.v1.WorkerService"}) {
    set_health(name, true);
  }
  if (!port_file.empty()) {
    if (auto st = WriteFileDurably(port_file, absl::StrCat(port, "\n")); !st.ok()) {
      return Fail(absl::StrCat("--port-file: ", st.message()));
    }
  }
  absl::FPrintF(stdout, "saegrid-coordinator: serving on port %d (data %s%s), metrics on %s\n", port, data_dir,
                tls_cert.empty() ? "" : ", TLS",
                metrics_server ? absl::StrCat("port ", metrics_server->port()) : std::string("none"));
  std::fflush(stdout);

  absl::Notification stopping;
  std::thread ticker([&] {
    bool ready = true;
    while (!stopping.WaitForNotificationWithTimeout(absl::Milliseconds(200))) {
      (*coordinator)->Tick();
      // A failed durable write is sticky: readiness goes false so that traffic moves elsewhere
      // and an operator restarts this process.
      const absl::Status health = (*coordinator)->health();
      if (ready && !health.ok()) {
        absl::FPrintF(stderr, "saegrid-coordinator: not ready: %s\n", health.message());
        set_health("readiness", false);
        ready = false;
      }
    }
  });
  int signal = 0;
  sigwait(&signals, &signal);
  absl::FPrintF(stdout, "saegrid-coordinator: signal %d, shutting down\n", signal);
  set_health("readiness", false);
  stopping.Notify();
  ticker.join();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  if (health_server) health_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  return 0;
}
