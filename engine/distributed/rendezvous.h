// How the ranks of one gang find each other: a key-value store (BoundStore, served by rank 0 and
// bound to the rendezvous address) under a per-attempt namespace, so that a restarted gang never
// reads the keys of a failed one. The store also carries a heartbeat per rank, which is how a
// failed collective learns which rank was lost.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "torch/csrc/distributed/c10d/Store.hpp"


namespace saegrid {

struct RendezvousOptions {
  std::string host = "127.0.0.1";  // where rank 0 serves the store
  int port = 0;
  int world_size = 1;
  int rank = 0;
  std::string attempt = "0";  // a new attempt id for every (re)start of the gang
  // Rendezvous, collectives and store reads all give up after this long.
  std::chrono::milliseconds timeout{std::chrono::seconds(300)};
  std::chrono::milliseconds heartbeat_interval{500};
};

// Parses "HOST:PORT" (port 1..65535); the error names `field`.
absl::Status ParseHostPort(absl::string_view address, absl::string_view field, std::string* host,
                           int* port);

// A TCP port on 127.0.0.1 that nothing listens on right now (for a local gang's rendezvous).
int FindFreeLoopbackPort();

class Rendezvous {
 public:
  // Connects (rank 0: serves) the store, waits for every rank within the timeout, checks that
  // all ranks agree on the world size and that no rank joined twice, and starts the heartbeat.
  static absl::StatusOr<std::shared_ptr<Rendezvous>> Join(const RendezvousOptions& options);
  ~Rendezvous();

  const RendezvousOptions& options() const { return options_; }
  int rank() const { return options_.rank; }
  int world_size() const { return options_.world_size; }

  // A view of the store under this attempt's namespace and `prefix` (for a process group).
  c10::intrusive_ptr<c10d::Store> GroupStore(const std::string& prefix) const;

  // Store access for backends that exchange their own bootstrap data (NCCL's unique id).
  absl::Status Set(const std::string& key, const std::string& value);
  // Waits up to the timeout for `key`.
  absl::StatusOr<std::string> Get(const std::string& key);

  // Turns a failed collective into a status that names the lost rank(s): marks this rank as
  // failing, watches the heartbeats for a few intervals and reports the ranks whose heartbeat
  // stopped without their saying they failed. kUnavailable when a rank was lost (or the store
  // itself, which rank 0 serves), kDeadlineExceeded when everyone is alive but too slow.
  // A rank that finds the lost rank publishes it in the store; the heartbeat thread of every
  // other rank picks it up, so that a rank whose own failure comes later (say, because rank 0
  // exited) still names the rank that was lost first.
  absl::Status DescribeFailure(absl::string_view operation, absl::string_view cause);

 private:
  explicit Rendezvous(const RendezvousOptions& options) : options_(options) {}
  std::string Key(absl::string_view suffix) const;
  void HeartbeatLoop();

  RendezvousOptions options_;
  c10::intrusive_ptr<c10d::Store> tcp_;        // the connection to the store (rank 0 serves it)
  c10::intrusive_ptr<c10d::Store> store_;      // this attempt's namespace over tcp_
  c10::intrusive_ptr<c10d::Store> heartbeat_;  // a second connection for the heartbeat thread
  absl::Mutex mu_;                          // serialises the main connection's users
  absl::Mutex abort_mu_;
  std::string abort_reason_ ABSL_GUARDED_BY(abort_mu_);  // a diagnosis another rank published
  std::atomic<bool> stop_{false};
  std::thread heartbeat_thread_;
};

}  // namespace saegrid
