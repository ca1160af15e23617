#include "engine/distributed/rendezvous.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/distributed/bound_store.h"

namespace saegrid {
namespace {

std::vector<uint8_t> Bytes(absl::string_view s) { return {s.begin(), s.end()}; }
std::string String(const std::vector<uint8_t>& b) { return {b.begin(), b.end()}; }

}  // namespace

int FindFreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

absl::Status ParseHostPort(absl::string_view address, absl::string_view field, std::string* host,
                           int* port) {
  const size_t colon = address.rfind(':');
  int value = 0;
  if (colon == absl::string_view::npos || colon == 0 ||
      !absl::SimpleAtoi(address.substr(colon + 1), &value) || value < 1 || value > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": expected HOST:PORT with a port in 1..65535, got \"", address, "\""));
  }
  *host = std::string(address.substr(0, colon));
  *port = value;
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Rendezvous>> Rendezvous::Join(const RendezvousOptions& options) {
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", options.rank, " is outside the world of ",
                                                   options.world_size, " ranks"));
  }
  if (options.port < 1 || options.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("rendezvous port ", options.port, " is not in 1..65535"));
  }
  std::shared_ptr<Rendezvous> r(new Rendezvous(options));
  const std::string where = absl::StrCat(options.host, ":", options.port);
  {
    // Our store rather than c10d::TCPStore: TCPStore's server (LibTorch 1.13) listens on every
    // interface; this one binds the rendezvous host only (a 127.0.0.1 gang stays on loopback).
    // Rank 0 serves it; the others retry connecting until the timeout. Waiting for every rank
    // happens below, on the claims.
    auto main = BoundStore::Connect(options.host, options.port, /*serve=*/options.rank == 0, options.timeout);
    auto heartbeat = main.ok() ? BoundStore::Connect(options.host, options.port, /*serve=*/false, options.timeout)
                               : main;
    if (!heartbeat.ok()) {
      return absl::UnavailableError(absl::StrCat("rank ", options.rank, ": rendezvous at ", where,
                                                 " failed (rank 0 serves it; are all ", options.world_size,
                                                 " ranks started?): ", heartbeat.status().message()));
    }
    r->tcp_ = *std::move(main);
    r->heartbeat_ = *std::move(heartbeat);
  }
  r->store_ = c10::make_intrusive<c10d::PrefixStore>(absl::StrCat("attempt/", options.attempt), r->tcp_);
  try {
    // Every rank checks the world size against rank 0's and claims its rank exactly once.
    if (options.rank == 0) r->store_->set("world_size", Bytes(absl::StrCat(options.world_size)));
    const std::string leader = String(r->store_->get("world_size"));
    if (leader != absl::StrCat(options.world_size)) {
      return absl::InvalidArgumentError(absl::StrCat("rank ", options.rank, " was started with world size ",
                                                     options.world_size, " but rank 0 with ", leader));
    }
    if (r->store_->add(absl::StrCat("claimed/", options.rank), 1) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("rank ", options.rank, " joined the rendezvous at ",
                                                     where, " twice (attempt ", options.attempt, ")"));
    }
    r->store_->add("heartbeat/" + absl::StrCat(options.rank), 1);
    // Every rank waits for every other one, so that a missing rank is named here rather than
    // found out by the first collective.
    std::vector<std::string> claims;
    for (int rank = 0; rank < options.world_size; ++rank) claims.push_back(absl::StrCat("claimed/", rank));
    try {
      r->store_->wait(claims, options.timeout);
    } catch (const std::exception&) {
      std::vector<int> missing;
      for (int rank = 0; rank < options.world_size; ++rank) {
        if (!r->store_->check({claims[rank]})) missing.push_back(rank);
      }
      return absl::UnavailableError(absl::StrCat(
          "rank ", options.rank, ": rendezvous at ", where, " timed out after ",
          options.timeout.count() / 1000.0, " s: rank", missing.size() == 1 ? " " : "s ",
          absl::StrJoin(missing, ", "), " never joined (are all ", options.world_size, " ranks started?)"));
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("rank ", options.rank, ": rendezvous at ", where, ": ", e.what()));
  }
  r->heartbeat_thread_ = std::thread([raw = r.get()] { raw->HeartbeatLoop(); });
  return r;
}

Rendezvous::~Rendezvous() {
  stop_.store(true);
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
}

std::string Rendezvous::Key(absl::string_view suffix) const {
  return absl::StrCat("attempt/", options_.attempt, "/", suffix);
}

void Rendezvous::HeartbeatLoop() {
  const std::string key = Key(absl::StrCat("heartbeat/", options_.rank));
  const std::string abort_key = Key("abort");
  while (!stop_.load()) {
    try {
      heartbeat_->add(key, 1);
      if (heartbeat_->check({abort_key})) {
        const std::string reason = String(heartbeat_->get(abort_key));
        absl::MutexLock lock(&abort_mu_);
        abort_reason_ = reason;
      }
    } catch (const std::exception&) {
      return;  // the store is gone; the next collective reports it
    }
    const auto until = std::chrono::steady_clock::now() + options_.heartbeat_interval;
    while (!stop_.load() && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
}

c10::intrusive_ptr<c10d::Store> Rendezvous::GroupStore(const std::string& prefix) const {
  return c10::make_intrusive<c10d::PrefixStore>(prefix, store_);
}

absl::Status Rendezvous::Set(const std::string& key, const std::string& value) {
  try {
    absl::MutexLock lock(&mu_);
    store_->set(key, Bytes(value));
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return DescribeFailure(absl::StrCat("store set ", key), e.what());
  }
}

absl::StatusOr<std::string> Rendezvous::Get(const std::string& key) {
  try {
    absl::MutexLock lock(&mu_);
    return String(store_->get(key));
  } catch (const std::exception& e) {
    return DescribeFailure(absl::StrCat("store get ", key), e.what());
  }
}

absl::Status Rendezvous::DescribeFailure(absl::string_view operation, absl::string_view cause) {
  const int me = options_.rank;
  const std::string store_at = absl::StrCat(options_.host, ":", options_.port);
  auto store_lost = [&] {
    return absl::UnavailableError(absl::StrCat(
        "rank ", me, ": ", operation, " failed and the rendezvous store at ", store_at,
        " is gone: lost rank 0 (it serves the store). Cause: ", cause));
  };
  {
    // Another rank already found the lost one.
    absl::MutexLock lock(&abort_mu_);
    if (!abort_reason_.empty()) {
      return absl::UnavailableError(absl::StrCat("rank ", me, ": ", operation, " failed: ", abort_reason_,
                                                 ". Cause: ", cause));
    }
  }
  std::vector<int64_t> before(options_.world_size), after(options_.world_size);
  std::vector<bool> failed(options_.world_size, false);
  try {
    // The heartbeat connection: the main one may be stuck behind a blocking get.
    heartbeat_->add(Key(absl::StrCat("failed/", me)), 1);
    for (int r = 0; r < options_.world_size; ++r) {
      before[r] = heartbeat_->add(Key(absl::StrCat("heartbeat/", r)), 0);
    }
    // A live rank beats once per interval; three intervals without a beat means it is gone.
    std::this_thread::sleep_for(options_.heartbeat_interval * 3 + std::chrono::milliseconds(100));
    for (int r = 0; r < options_.world_size; ++r) {
      after[r] = heartbeat_->add(Key(absl::StrCat("heartbeat/", r)), 0);
      failed[r] = heartbeat_->add(Key(absl::StrCat("failed/", r)), 0) > 0;
    }
  } catch (const std::exception&) {
    return store_lost();
  }
  std::vector<int> lost;
  for (int r = 0; r < options_.world_size; ++r) {
    if (r != me && after[r] == before[r] && !failed[r]) lost.push_back(r);
  }
  std::string lost_reason;
  if (!lost.empty()) {
    lost_reason = absl::StrCat("lost rank", lost.size() > 1 ? "s " : " ", absl::StrJoin(lost, ", "),
                               " (no heartbeat, seen by rank ", me, ")");
    try {
      heartbeat_->set(Key("abort"), Bytes(lost_reason));
    } catch (const std::exception&) {
    }
  }
  if (me == 0) {
    // Rank 0 serves the store: stay up long enough for every other rank's heartbeat thread to
    // read the diagnosis.
    std::this_thread::sleep_for(options_.heartbeat_interval * 4 + std::chrono::milliseconds(200));
  }
  if (!lost.empty()) {
    return absl::UnavailableError(absl::StrCat("rank ", me, ": ", operation, " failed: ", lost_reason,
                                               ". Cause: ", cause));
  }
  std::vector<int> failing;
  for (int r = 0; r < options_.world_size; ++r) {
    if (r != me && failed[r]) failing.push_back(r);
  }
  if (!failing.empty()) {
    return absl::UnavailableError(absl::StrCat("rank ", me, ": ", operation, " failed after rank",
                                               failing.size() > 1 ? "s " : " ", absl::StrJoin(failing, ", "),
                                               " failed. Cause: ", cause));
  }
  return absl::DeadlineExceededError(absl::StrCat("rank ", me, ": ", operation,
                                                  " failed with every rank alive. Cause: ", cause));
}

}  // namespace saegrid
