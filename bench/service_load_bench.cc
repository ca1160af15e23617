// The control plane under load: a real coordinator and real worker daemons on loopback
// (tests/service_cluster), a few hundred tiny TopK jobs submitted from several client threads at
// once, all waited for. The baseline, measured first in the same run, is the same coordinator
// idle: one client submitting one job at a time and waiting for it.
//
// Prints JSON: submit latency p50/p99 (loaded and idle, and their ratio), scheduling throughput
// (jobs started per second), queue wait (job created -> gang assigned, from the job events; under
// load it is mostly the backlog ahead of the job), the handoff gap (a worker's attempt ends ->
// its next attempt starts: the scheduler's own latency while jobs queue), wall time, and the
// coordinator's resident memory (VmRSS before the load and after, peak VmHWM).
//
//   service_load_bench [--jobs 300] [--threads 4] [--workers 4] [--baseline-jobs 10]
//                      [--timeout 1800]
#include <unistd.h>

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/bench_flags.h"
#include "nlohmann/json.hpp"
#include "saegrid/v1/job_service.grpc.pb.h"
#include "tests/http_client.h"
#include "tests/service_cluster.h"

namespace {

using saegrid::testing::ServiceCluster;
using Clock = std::chrono::steady_clock;
// Keys in the order written, so that the summary reads top-down (and ctest can match it).
using json = nlohmann::ordered_json;
namespace v1 = saegrid::v1;

double Seconds(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

double TimestampSeconds(const google::protobuf::Timestamp& t) { return t.seconds() + t.nanos() * 1e-9; }

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

double Mean(const std::vector<double>& v) {
  double sum = 0;
  for (double x : v) sum += x;
  return v.empty() ? 0 : sum / static_cast<double>(v.size());
}

// A job that trains in a fraction of a second (16 steps of 256 tokens, d = 32, 256 latents), so
// the figures are those of the control plane, not of training.
v1::JobSpec TinyJob(int index) {
  v1::JobSpec spec;
  spec.set_name(absl::StrCat("load-", index));
  spec.mutable_model()->set_architecture("topk");
  spec.mutable_model()->set_num_latents(256);
  spec.mutable_model()->set_k(8);
  spec.mutable_model()->set_geometric_median_samples(1024);
  auto* data = spec.mutable_data();
  data->mutable_synthetic()->set_num_samples(8192);
  data->mutable_synthetic()->set_num_features(64);
  data->mutable_synthetic()->set_d(32);
  data->mutable_synthetic()->set_seed(static_cast<uint64_t>(index + 1));
  data->set_batch_size(256);
  data->set_block_rows(256);
  data->set_eval_max_tokens(1024);
  spec.mutable_training()->set_total_tokens(16 * 256);
  spec.mutable_training()->set_log_every_steps(8);
  spec.mutable_parallelism()->set_shards(1);
  spec.set_max_restarts(1);
  return spec;
}

// The coordinator process: the child of this one running the coordinator binary.
pid_t CoordinatorPid() {
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &pid)) continue;
    std::error_code ec;
    const auto exe = std::filesystem::read_symlink(entry.path() / "exe", ec);
    if (ec || exe != std::filesystem::path(SAEGRID_COORDINATOR_BINARY)) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    std::getline(stat, line);
    // pid (comm) state ppid ...: comm may hold spaces, so parse after the last ')'.
    const std::vector<std::string> fields = absl::StrSplit(line.substr(line.rfind(')') + 2), ' ');
    if (fields.size() > 1 && fields[1] == std::to_string(::getpid())) return pid;
  }
  return -1;
}

// A field of /proc/PID/status in bytes (VmRSS: now, VmHWM: peak).
int64_t StatusBytes(pid_t pid, const std::string& field) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::atoll(line.c_str() + field.size() + 1) * 1024;
  }
  return -1;
}

// The value of an unlabelled-or-labelled sample `series` in a text exposition, or -1.
double Sample(const std::string& exposition, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(exposition, '\n')) {
    if (absl::StartsWith(line, series + " ")) {
      double v;
      if (absl::SimpleAtod(line.substr(series.size() + 1), &v)) return v;
    }
  }
  return -1;
}

struct Submitted {
  std::string job_id;
  double latency_s = 0;
  bool ok = false;
};

Submitted Submit(ServiceCluster& cluster, int index, const std::string& run) {
  v1::SubmitJobRequest request;
  request.set_request_id(absl::StrCat(run, "-", index));
  *request.mutable_spec() = TinyJob(index);
  v1::SubmitJobResponse response;
  auto ctx = cluster.Context();
  const auto start = Clock::now();
  const grpc::Status status = cluster.jobs().SubmitJob(ctx.get(), request, &response);
  Submitted s;
  s.latency_s = Seconds(start);
  s.ok = status.ok();
  s.job_id = response.job().job_id();
  if (!status.ok()) std::fprintf(stderr, "SubmitJob %d: %s\n", index, status.error_message().c_str());
  return s;
}

bool Terminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

// Waits until every job in `ids` has ended (one ListJobs sweep per quarter second, cheaper for
// the coordinator than a GetJob per job); returns those of them that ended, by id.
std::map<std::string, v1::Job> WaitAll(ServiceCluster& cluster, const std::vector<std::string>& ids, double timeout_s) {
  const std::set<std::string> wanted(ids.begin(), ids.end());
  std::map<std::string, v1::Job> done;
  const auto give_up = Clock::now() + std::chrono::duration<double>(timeout_s);
  while (Clock::now() < give_up) {
    v1::ListJobsRequest request;
    request.set_page_size(500);
    request.add_states(v1::JOB_STATE_SUCCEEDED);
    request.add_states(v1::JOB_STATE_FAILED);
    request.add_states(v1::JOB_STATE_CANCELLED);
    for (;;) {
      v1::ListJobsResponse response;
      if (!cluster.jobs().ListJobs(cluster.Context().get(), request, &response).ok()) break;
      for (const auto& job : response.jobs()) {
        if (Terminal(job.state()) && wanted.count(job.job_id()) > 0) done[job.job_id()] = job;
      }
      if (response.next_page_token().empty()) break;
      request.set_page_token(response.next_page_token());
    }
    if (std::all_of(ids.begin(), ids.end(), [&](const std::string& id) { return done.count(id) > 0; })) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  return done;
}

// Seconds from the job's creation to its first gang assignment (the event into STARTING), and
// the time of that event; nothing when the job never started.
std::optional<std::pair<double, double>> QueueWait(ServiceCluster& cluster, const v1::Job& job) {
  v1::ListJobEventsRequest request;
  request.set_job_id(job.job_id());
  v1::ListJobEventsResponse response;
  if (!cluster.jobs().ListJobEvents(cluster.Context().get(), request, &response).ok()) return std::nullopt;
  for (const auto& event : response.events()) {
    if (event.to_state() == v1::JOB_STATE_STARTING && event.from_state() != v1::JOB_STATE_STARTING) {
      const double started = TimestampSeconds(event.time());
      return std::make_pair(started - TimestampSeconds(job.create_time()), started);
    }
  }
  return std::nullopt;
}

// Per worker, the gaps between one attempt's end and the start of the next attempt there: how
// long a freed worker waits for its next job while jobs are queued (scheduling and dispatch).
std::vector<double> HandoffGaps(const std::map<std::string, v1::Job>& jobs) {
  std::map<std::string, std::vector<std::pair<double, double>>> by_worker;  // (start, end)
  for (const auto& [id, job] : jobs) {
    for (const auto& a : job.attempts()) {
      if (a.worker_ids_size() == 0 || !a.has_end_time()) continue;
      by_worker[a.worker_ids(0)].emplace_back(TimestampSeconds(a.start_time()), TimestampSeconds(a.end_time()));
    }
  }
  std::vector<double> gaps;
  for (auto& [worker, spans] : by_worker) {
    std::sort(spans.begin(), spans.end());
    for (size_t i = 1; i < spans.size(); ++i) gaps.push_back(std::max(0.0, spans[i].first - spans[i - 1].second));
  }
  return gaps;
}

struct Phase {
  std::vector<double> submit_s, queue_wait_s, start_times;
  double first_create = 1e300;
  int succeeded = 0, submitted = 0;
};

void Collect(ServiceCluster& cluster, const std::map<std::string, v1::Job>& jobs, Phase& phase) {
  for (const auto& [id, job] : jobs) {
    if (job.state() == v1::JOB_STATE_SUCCEEDED) ++phase.succeeded;
    phase.first_create = std::min(phase.first_create, TimestampSeconds(job.create_time()));
    if (auto wait = QueueWait(cluster, job)) {
      phase.queue_wait_s.push_back(wait->first);
      phase.start_times.push_back(wait->second);
    }
  }
}

json LatencyMs(const std::vector<double>& seconds) {
  return {{"p50", Percentile(seconds, 0.5) * 1e3}, {"p99", Percentile(seconds, 0.99) * 1e3},
          {"max", Percentile(seconds, 1.0) * 1e3}};
}

}  // namespace

int main(int argc, char** argv) {
  int64_t jobs_flag = 300, threads_flag = 4, workers_flag = 4, baseline_flag = 10;
  double timeout_s = 1800;
  using saegrid::FlagSpec;
  saegrid::bench::ParseFlagsOrExit(argc, argv,
                                   {{"--jobs", FlagSpec::Int(&jobs_flag, 1, 100000)},
                                    {"--threads", FlagSpec::Int(&threads_flag, 1, 256)},
                                    {"--workers", FlagSpec::Int(&workers_flag, 1, 64)},
                                    {"--baseline-jobs", FlagSpec::Int(&baseline_flag, 1, 1000)},
                                    {"--timeout", FlagSpec::Real(&timeout_s, 1, 86400)}});
  const int jobs = static_cast<int>(jobs_flag), threads = static_cast<int>(threads_flag);
  const int workers = static_cast<int>(workers_flag), baseline_jobs = static_cast<int>(baseline_flag);

  saegrid::testing::ClusterOptions options;
  options.workers = workers;
  options.threads_per_rank = 1;
  ServiceCluster cluster(options);
  const pid_t coordinator = CoordinatorPid();
  const int metrics_port = cluster.coordinator_metrics_port();
  // Every worker registered and idle before anything is timed.
  const auto registering = Clock::now();
  while (Seconds(registering) < 60) {
    const auto body = saegrid::testing::HttpGet(metrics_port, "/metrics");
    if (body && Sample(*body, "saegrid_workers{state=\"idle\"}") >= workers) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (coordinator < 0 || Seconds(registering) >= 60) {
    std::fprintf(stderr, "the cluster did not come up\n%s\n", cluster.Logs().c_str());
    return 1;
  }

  // Baseline: the idle coordinator, one job at a time.
  Phase idle;
  for (int i = 0; i < baseline_jobs; ++i) {
    const Submitted s = Submit(cluster, i, "idle");
    ++idle.submitted;
    if (!s.ok) continue;
    idle.submit_s.push_back(s.latency_s);
    Collect(cluster, WaitAll(cluster, {s.job_id}, 120), idle);
  }
  const int64_t rss_before = StatusBytes(coordinator, "VmRSS");

  // Load: `threads` clients submitting back to back, then every job waited for.
  Phase loaded;
  std::vector<Submitted> submitted(static_cast<size_t>(jobs));
  std::atomic<int> next{0};
  const auto load_start = Clock::now();
  std::vector<std::thread> clients;
  for (int t = 0; t < threads; ++t) {
    clients.emplace_back([&] {
      for (int i; (i = next.fetch_add(1)) < jobs;) submitted[static_cast<size_t>(i)] = Submit(cluster, i, "load");
    });
  }
  for (auto& c : clients) c.join();
  const double submit_wall_s = Seconds(load_start);
  std::vector<std::string> ids;
  for (const auto& s : submitted) {
    ++loaded.submitted;
    if (!s.ok) continue;
    loaded.submit_s.push_back(s.latency_s);
    ids.push_back(s.job_id);
  }
  const auto finished = WaitAll(cluster, ids, timeout_s);
  const double wall_s = Seconds(load_start);
  Collect(cluster, finished, loaded);
  const int64_t peak_rss = StatusBytes(coordinator, "VmHWM");
  const int64_t rss_after = StatusBytes(coordinator, "VmRSS");

  // Jobs started per second: gang assignments over the span from the first submission to the
  // last assignment (bounded by what the workers can run, since each job holds one worker).
  double last_start = 0;
  for (double t : loaded.start_times) last_start = std::max(last_start, t);
  const double start_span = last_start - loaded.first_create;
  const bool all_succeeded = loaded.succeeded == jobs && idle.succeeded == baseline_jobs;
  const double idle_p50 = Percentile(idle.submit_s, 0.5);
  const std::vector<double> gaps = HandoffGaps(finished);
  const json out = {
      {"benchmark", "service_load"},
      {"jobs", jobs},
      {"threads", threads},
      {"workers", workers},
      {"threads_per_rank", 1},
      {"cores", std::thread::hardware_concurrency()},
      {"all_succeeded", all_succeeded},
      {"succeeded", loaded.succeeded},
      {"submit_latency_ms", LatencyMs(loaded.submit_s)},
      {"submit_wall_s", submit_wall_s},
      {"submits_per_second", submit_wall_s > 0 ? jobs / submit_wall_s : 0.0},
      {"jobs_started_per_second", start_span > 0 ? static_cast<double>(loaded.start_times.size()) / start_span : 0.0},
      {"queue_wait_s", {{"mean", Mean(loaded.queue_wait_s)}, {"p50", Percentile(loaded.queue_wait_s, 0.5)},
                        {"p99", Percentile(loaded.queue_wait_s, 0.99)}}},
      {"worker_handoff_gap_ms", {{"mean", Mean(gaps) * 1e3}, {"p50", Percentile(gaps, 0.5) * 1e3},
                                 {"p99", Percentile(gaps, 0.99) * 1e3}}},
      {"wall_s", wall_s},
      {"coordinator_rss_bytes", {{"before_load", rss_before}, {"peak", peak_rss}, {"after", rss_after}}},
      {"baseline_idle",
       {{"jobs", baseline_jobs},
        {"succeeded", idle.succeeded},
        {"submit_latency_ms", LatencyMs(idle.submit_s)},
        {"queue_wait_s_mean", Mean(idle.queue_wait_s)}}},
      {"ratio_submit_p50_loaded_over_idle", idle_p50 > 0 ? Percentile(loaded.submit_s, 0.5) / idle_p50 : 0.0}};
  std::printf("%s\n", out.dump(2).c_str());
  if (!all_succeeded) std::fprintf(stderr, "not every job succeeded\n%s\n", cluster.Logs().substr(0, 20000).c_str());
  return all_succeeded ? 0 : 1;
}
