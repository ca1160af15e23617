// Observability with real components: a coordinator and workers serving /metrics while a job
// runs, Debian's Prometheus server scraping them on loopback, and promtool linting every
// exposition. Metric values must agree with what the job itself reports.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "yaml-cpp/yaml.h"
#include "tests/http_client.h"
#include "tests/service_cluster.h"

namespace saegrid {
namespace {

using ::testing::HasSubstr;
using testing::ServiceCluster;

using testing::Terminal;

// The value of the sample `name{labels}` in a text exposition ("" labels: no braces).
std::optional<double> Sample(const std::string& exposition, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(exposition, '\n')) {
    if (absl::StartsWith(line, series + " ")) {
      double v;
      if (absl::SimpleAtod(line.substr(series.size() + 1), &v)) return v;
    }
  }
  return std::nullopt;
}

// A Prometheus server on loopback scraping `targets` every second, stopped with the object.
class PrometheusServer {
 public:
  PrometheusServer(const testing::TempDir& dir, const std::vector<int>& targets) : port_(testing::FreeLoopbackPort()) {
    std::string config =
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: ['" + std::string(SAEGRID_SOURCE_DIR) + "/deploy/prometheus/alerts.yml']\n"
        "scrape_configs:\n"
        "  - job_name: saegrid\n"
        "    static_configs:\n"
        "      - targets: [";
    for (size_t i = 0; i < targets.size(); ++i) config += absl::StrCat(i ? ", " : "", "'127.0.0.1:", targets[i], "'");
    config += "]\n";
    testing::WriteFile(dir / "prometheus.yml", config);
    pid_ = testing::StartProcess({"/usr/bin/prometheus", "--config.file=" + dir / "prometheus.yml",
                                  "--storage.tsdb.path=" + dir / "tsdb",
                                  absl::StrCat("--web.listen-address=127.0.0.1:", port_)},
                                 dir / "prometheus.log");
    for (int i = 0; i < 300 && !testing::HttpGet(port_, "/-/ready"); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  ~PrometheusServer() {
    ::kill(pid_, SIGTERM);
    testing::WaitProcess(pid_, 20);
  }
  // The whole answer of an instant query ({"status": ..., "data": {"result": [...]}}).
  nlohmann::json Answer(const std::string& promql) const {
    auto body = testing::HttpGet(port_, "/api/v1/query?query=" + testing::UrlEncode(promql));
    if (!body) return nlohmann::json::object();
    auto j = nlohmann::json::parse(*body, nullptr, false);
    return j.is_object() ? j : nlohmann::json::object();
  }
  // The result vector of an instant query (empty on error).
  nlohmann::json Query(const std::string& promql) const {
    auto j = Answer(promql);
    if (j.value("status", "") != "success") return nlohmann::json::array();
    return j["data"]["result"];
  }
  int port() const { return port_; }

 private:
  int port_;
  pid_t pid_;
};

std::string JobSpec() {
  // A short dead threshold so that some latents die and the dead figures are not all zero.
  return "name: observed\n"
         "model: {architecture: topk, num_latents: 2048, k: 8, dead_tokens_threshold: 2560}\n"
         "optimizer: {lr: 0.003}\n"
         "data:\n"
         "  synthetic: {num_samples: 65536, num_features: 128, d: 128, avg_active_features: 5, seed: 1}\n"
         "  batch_size: 256\n"
         "  block_rows: 256\n"
         "  eval_max_tokens: 2048\n"
         "training: {total_tokens: 256000, log_every_steps: 5}\n"
         "parallelism: {shards: 2, capacity_factor: 2, timeout_seconds: 20}\n"
         "checkpoint: {every_steps: 100}\n"
         "evaluation:\n"
         "  run: [probes, shrinkage]\n"
         "  probes: {max_rows: 2048, max_tasks: 4}\n";
}

TEST(Metrics, PrometheusScrapesTheServiceAndFiguresAgree) {
  ServiceCluster cluster;
  const std::vector<int> targets = {cluster.coordinator_metrics_port(), cluster.worker_metrics_port(1),
                                    cluster.worker_metrics_port(2)};
  for (int port : targets) ASSERT_GT(port, 0) << cluster.Logs();
  PrometheusServer prometheus(cluster.dir(), targets);
  ASSERT_TRUE(testing::HttpGet(prometheus.port(), "/-/ready")) << testing::ReadFile(cluster.dir() / "prometheus.log");

  testing::WriteFile(cluster.dir() / "job.yaml", JobSpec());
  std::vector<std::string> submit = {SAEGRID_BINARY, "submit", cluster.dir() / "job.yaml", "--json"};
  for (const auto& f : cluster.CliFlags()) submit.push_back(f);
  ASSERT_EQ(testing::RunProcess(submit, cluster.dir() / "submit.out", 60), 0);
  const std::string job_id = nlohmann::json::parse(testing::ReadLines(cluster.dir() / "submit.out").at(0))["job"]["job_id"];

  // While it runs: every exposition passes promtool, and the workers export the rank series.
  const v1::Job running = cluster.WaitFor(
      job_id, [](const v1::Job& j) { return j.progress().step() >= 150 || Terminal(j); }, 120);
  ASSERT_EQ(running.state(), v1::JOB_STATE_RUNNING) << cluster.Logs();
  std::map<int, std::string> expositions;
  for (int port : targets) {
    auto body = testing::HttpGet(port, "/metrics");
    ASSERT_TRUE(body) << "no /metrics on port " << port;
    expositions[port] = *body;
    const std::string file = cluster.dir() / absl::StrCat("metrics-", port, ".txt");
    testing::WriteFile(file, *body);
    const std::string lint = cluster.dir() / absl::StrCat("promtool-", port, ".log");
    EXPECT_EQ(testing::RunProcess({"/bin/sh", "-c", "/usr/bin/promtool check metrics < " + file}, lint, 60), 0)
        << testing::ReadFile(lint);
    EXPECT_THAT(*body, HasSubstr("saegrid_build_info{"));
    EXPECT_THAT(*body, ::testing::Not(HasSubstr("job=\"")));
    EXPECT_THAT(*body, ::testing::Not(HasSubstr("instance=\"")));
  }
  const std::string& leader_worker = expositions[cluster.worker_metrics_port(cluster.WorkerOfRank(running, 0))];
  const std::string rank0 = absl::StrFormat("{job_id=\"%s\",rank=\"0\"}", job_id);
  EXPECT_TRUE(Sample(leader_worker, "saegrid_training_fvu" + rank0)) << leader_worker;
  EXPECT_TRUE(Sample(leader_worker, "saegrid_training_step_duration_seconds_count" + rank0));
  const std::string& other_worker = expositions[cluster.worker_metrics_port(cluster.WorkerOfRank(running, 1))];
  EXPECT_TRUE(Sample(other_worker, absl::StrFormat("saegrid_training_collective_duration_seconds_count{collective=\"allgather\",job_id=\"%s\",rank=\"1\"}", job_id)))
      << other_worker;
  EXPECT_THAT(expositions[targets[0]], HasSubstr("saegrid_rpc_requests_total{"));

  // Every query of the dashboard returns data while the job runs (after a few scrapes).
  std::this_thread::sleep_for(std::chrono::seconds(4));
  std::ifstream dashboard_file(std::string(SAEGRID_SOURCE_DIR) + "/deploy/grafana/dashboards/saegrid.json");
  const auto dashboard = nlohmann::json::parse(dashboard_file);
  int queries = 0;
  for (const auto& panel : dashboard["panels"]) {
    for (const auto& target : panel["targets"]) {
      std::string expr = target["expr"];
      for (size_t at; (at = expr.find("$job_id")) != std::string::npos;) expr.replace(at, 7, job_id);
      const auto result = prometheus.Query(expr);
      EXPECT_FALSE(result.empty()) << panel["title"] << ": " << expr;
      ++queries;
    }
  }
  EXPECT_GE(queries, 15);
  EXPECT_EQ(cluster.GetJob(job_id).state(), v1::JOB_STATE_RUNNING) << "the queries must see a running job";
  // Every alert rule parses and evaluates: as a query, and as a loaded rule in good health.
  const YAML::Node rules = YAML::LoadFile(std::string(SAEGRID_SOURCE_DIR) + "/deploy/prometheus/alerts.yml");
  int alerts = 0;
  for (const auto& group : rules["groups"]) {
    for (const auto& rule : group["rules"]) {
      const auto answer = prometheus.Answer(rule["expr"].as<std::string>());
      EXPECT_EQ(answer.value("status", ""), "success") << rule["alert"].as<std::string>() << ": " << answer.dump();
      ++alerts;
    }
  }
  EXPECT_GE(alerts, 4);
  const auto loaded = nlohmann::json::parse(testing::HttpGet(prometheus.port(), "/api/v1/rules").value_or("{}"));
  int healthy = 0;
  for (const auto& group : loaded["data"]["groups"]) {
    for (const auto& rule : group["rules"]) healthy += rule.value("health", "") == "ok" ? 1 : 0;
  }
  EXPECT_EQ(healthy, alerts) << loaded.dump();

  const v1::Job done = cluster.WaitFor(job_id, Terminal, 180);
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.message() << cluster.Logs();

  // The coordinator's figures are the job's own: the dead fraction on /metrics equals the one in
  // the final evaluation, and step and tokens match GetJob.
  const v1::Evaluation evaluation = cluster.Evaluation(job_id);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // one coordinator tick
  const auto coordinator = testing::HttpGet(targets[0], "/metrics");
  ASSERT_TRUE(coordinator);
  const std::string job = absl::StrFormat("{job_id=\"%s\"}", job_id);
  const auto dead = Sample(*coordinator, "saegrid_job_dead_latents_ratio" + job);
  ASSERT_TRUE(dead) << *coordinator;
  EXPECT_GT(evaluation.dead_fraction(), 0) << "the spec makes some latents die";
  EXPECT_NEAR(*dead, evaluation.dead_fraction(), 1e-12);
  EXPECT_NEAR(*Sample(*coordinator, "saegrid_job_evaluation_dead_latents_ratio" + job), evaluation.dead_fraction(), 1e-12);
  // The papers' evaluations the spec names arrive typed and are exported as they are; those it
  // does not name are NaN, not a misleading 0.
  ASSERT_TRUE(evaluation.has_probes() && evaluation.has_shrinkage()) << evaluation.DebugString();
  EXPECT_EQ(evaluation.probes().tasks(), 4);
  EXPECT_LT(evaluation.probes().mean_latent_loss(), evaluation.probes().mean_prior_loss());
  EXPECT_NEAR(*Sample(*coordinator, "saegrid_job_evaluation_probe_loss" + job), evaluation.probes().mean_latent_loss(), 1e-12);
  EXPECT_NEAR(*Sample(*coordinator, "saegrid_job_evaluation_shrinkage_ratio" + job), evaluation.shrinkage().mean_ratio(), 1e-12);
  EXPECT_FALSE(evaluation.has_downstream_loss());
  const auto loss_recovered = Sample(*coordinator, "saegrid_job_evaluation_loss_recovered" + job);
  ASSERT_TRUE(loss_recovered);
  EXPECT_TRUE(std::isnan(*loss_recovered));
  EXPECT_EQ(*Sample(*coordinator, "saegrid_job_step" + job), 1000);
  EXPECT_EQ(*Sample(*coordinator, "saegrid_job_tokens" + job), 256000);
  EXPECT_EQ(*Sample(*coordinator, "saegrid_jobs{state=\"succeeded\"}"), 1);
  EXPECT_EQ(*Sample(*coordinator, "saegrid_workers{state=\"idle\"}"), 2);
  EXPECT_GE(*Sample(*coordinator, "saegrid_checkpoints_stored_total"), 4);

  // Prometheus scraped all three targets and holds the series the dashboard needs.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const auto up = prometheus.Query("up == 1");
  EXPECT_EQ(up.size(), 3u) << up.dump();
  for (const std::string query :
       {"saegrid_build_info", "saegrid_job_fvu", "saegrid_job_dead_latents_ratio", "saegrid_jobs", "saegrid_workers",
        "max_over_time(saegrid_training_fvu[5m])", "sum(rate(saegrid_rpc_requests_total[1m]))",
        "max_over_time(saegrid_training_step[5m])"}) {
    const auto result = prometheus.Query(query);
    EXPECT_FALSE(result.empty()) << query;
  }
  EXPECT_EQ(prometheus.Query("saegrid_build_info").size(), 3u);
}

// A TCP connection to 127.0.0.1:port that sends only what it is told.
class RawConnection {
 public:
  explicit RawConnection(int port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawConnection() { ::close(fd_); }
  bool connected() const { return connected_; }
  bool Send(const std::string& bytes) {
    return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }
  // What the server sends until it closes the connection; nullopt if it is still open after
  // `timeout_ms`.
  std::optional<std::string> ReadUntilClosed(int timeout_ms) {
    std::string out;
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(give_up - std::chrono::steady_clock::now()).count();
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(std::max<int64_t>(0, left))) <= 0) return std::nullopt;
      char buffer[4096];
      const ssize_t n = ::recv(fd_, buffer, sizeof(buffer), 0);
      if (n <= 0) return out;
      out.append(buffer, static_cast<size_t>(n));
    }
  }

 private:
  int fd_;
  bool connected_ = false;
};

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// prometheus-cpp's civetweb exposer gave each connection one of two threads, so two idle TCP
// connections blocked /metrics for 30 s. The daemons' own server must keep answering, Prometheus
// included, with 100 idle connections held to each, then close them after the 10 s head timeout.
TEST(Metrics, IdleConnectionsDoNotBlockScrapes) {
  testing::ClusterOptions options;
  options.workers = 1;
  ServiceCluster cluster(options);
  const std::vector<int> targets = {cluster.coordinator_metrics_port(), cluster.worker_metrics_port(1)};
  for (int port : targets) ASSERT_GT(port, 0) << cluster.Logs();
  PrometheusServer prometheus(cluster.dir(), targets);
  ASSERT_TRUE(testing::HttpGet(prometheus.port(), "/-/ready")) << testing::ReadFile(cluster.dir() / "prometheus.log");
  // Prometheus scrapes both targets before the idle connections arrive.
  for (int i = 0; i < 300 && prometheus.Query("up == 1").size() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(prometheus.Query("up == 1").size(), 2u) << testing::ReadFile(cluster.dir() / "prometheus.log");

  std::vector<std::unique_ptr<RawConnection>> idle;
  for (int port : targets) {
    for (int i = 0; i < 100; ++i) {
      idle.push_back(std::make_unique<RawConnection>(port));
      ASSERT_TRUE(idle.back()->connected());
    }
  }
  const auto opened = std::chrono::steady_clock::now();
  for (int round = 0; round < 5; ++round) {
    for (int port : targets) {
      const auto start = std::chrono::steady_clock::now();
      const auto body = testing::HttpGet(port, "/metrics");
      ASSERT_TRUE(body) << "port " << port;
      EXPECT_THAT(*body, HasSubstr("saegrid_build_info{"));
      EXPECT_LT(SecondsSince(start), 2.0) << "port " << port;
    }
  }
  // Prometheus scrapes every second with a 1 s timeout: every scrape in the last 2 s succeeded.
  std::this_thread::sleep_for(std::chrono::seconds(3));
  const auto up = prometheus.Query("min_over_time(up[2s])");
  ASSERT_EQ(up.size(), 2u) << up.dump();
  for (const auto& series : up) EXPECT_EQ(series["value"][1], "1") << up.dump();

  // Garbage and an over-long request head get an error status at once; the daemons keep serving.
  for (int port : targets) {
    RawConnection garbage(port);
    ASSERT_TRUE(garbage.Send(std::string("\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 11)));
    EXPECT_THAT(garbage.ReadUntilClosed(2000).value_or("(still open)"), ::testing::StartsWith("HTTP/1.1 400 "));
    RawConnection huge(port);
    ASSERT_TRUE(huge.Send("GET /metrics HTTP/1.1\r\nCookie: " + std::string(20000, 'c')));
    EXPECT_THAT(huge.ReadUntilClosed(2000).value_or("(still open)"), ::testing::StartsWith("HTTP/1.1 431 "));
    EXPECT_TRUE(testing::HttpGet(port, "/metrics"));
  }

  // The idle connections were held all along (the scrapes did not pass because they were
  // dropped), and are closed once the head timeout has passed.
  ASSERT_LT(SecondsSince(opened), 9.0) << "too slow to tell the head timeout from the checks";
  for (auto& c : idle) EXPECT_FALSE(c->ReadUntilClosed(0)) << "closed before the head timeout";
  for (auto& c : idle) {
    const int left_ms = static_cast<int>((14.0 - SecondsSince(opened)) * 1000);
    const auto got = c->ReadUntilClosed(std::max(0, left_ms));
    ASSERT_TRUE(got) << "an idle connection is still open " << SecondsSince(opened) << " s after it connected";
    EXPECT_EQ(*got, "");
  }
  EXPECT_GE(SecondsSince(opened), 9.5);
  for (int port : targets) EXPECT_TRUE(testing::HttpGet(port, "/metrics"));
}

}  // namespace
}  // namespace saegrid
