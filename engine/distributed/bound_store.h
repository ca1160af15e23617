// The rendezvous key-value store of a gang: a c10d::Store over TCP whose server (run by rank 0)
// binds the rendezvous host's addresses only. LibTorch 1.13's TCPStore cannot choose the address
// its server binds, so with it rank 0 listened on every interface even for a 127.0.0.1
// rendezvous, and anyone on any network of the host could read or write the gang's keys.
//
// It implements what ProcessGroupGloo (set, get, wait), NCCL's bootstrap and Rendezvous use:
// set, get, add, compareSet, deleteKey, check, getNumKeys, wait; watchKey is not supported.
// Values live in the server's memory; `add` keeps a counter as its decimal text, as TCPStore
// does, so `get` of a counter returns e.g. "3". A request (key and value together) is at most
// 1 MiB; the server closes a connection that sends more or anything malformed. Operations throw
// std::runtime_error on a timeout or a lost connection (c10d's callers, and ours, catch
// std::exception); after a lost connection every later call on that store throws.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "torch/csrc/distributed/c10d/Store.hpp"

namespace saegrid {

class BoundStoreServer;

class BoundStore : public c10d::Store {
 public:
  // Connects to the store at host:port, retrying until `timeout` passes (the server may start
  // later). With `serve`, first starts the server, bound to every address `host` resolves to
  // (an address of this machine) and owned by the returned store: it stops when the last
  // reference to that store goes. `timeout` is also the default timeout of get and wait.
  // Errors: kInvalidArgument for a port outside 1..65535, kUnavailable when the server cannot
  // bind or no connection is made in time; they name host:port.
  static absl::StatusOr<c10::intrusive_ptr<BoundStore>> Connect(const std::string& host, int port, bool serve,
                                                               std::chrono::milliseconds timeout);
  // Use Connect. Takes ownership of the connected socket `fd`.
  BoundStore(int fd, std::string where, std::shared_ptr<BoundStoreServer> server, std::chrono::milliseconds timeout);
  ~BoundStore() override;

  void set(const std::string& key, const std::vector<uint8_t>& value) override;
  // Sets `key` to `desired` when its value is `expected` (or when it is missing and `expected` is
  // empty); returns the value the key has afterwards, or `expected` when it is missing.
  std::vector<uint8_t> compareSet(const std::string& key, const std::vector<uint8_t>& expected,
                                  const std::vector<uint8_t>& desired) override;
  // Waits up to the store's timeout for `key`, then returns its value.
  std::vector<uint8_t> get(const std::string& key) override;
  // Adds `value` to the counter `key` (missing: 0) and returns the sum.
  int64_t add(const std::string& key, int64_t value) override;
  // Removes `key`; false when it was missing.
  bool deleteKey(const std::string& key) override;
  // True when every key exists (no waiting).
  bool check(const std::vector<std::string>& keys) override;
  int64_t getNumKeys() override;
  // Waits until every key exists: up to the store's timeout, or `timeout` (kNoTimeout: forever).
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override;

  // The port the server bound (rank 0), else the port connected to.
  int port() const { return port_; }

 private:
  // Sends one request and returns the reply's payload; `wait_ms` is how long the server may
  // hold the reply back (a get or wait; -1: forever), or -2 for a request answered at once.
  // Throws std::runtime_error when the connection fails or the reply is overdue.
  std::string Call(const std::string& request, int64_t wait_ms);

  std::mutex mu_;  // one request at a time on the connection
  int fd_;
  bool broken_ = false;  // a request failed midway: the connection is out of step, refuse more
  const std::string where_;
  const std::shared_ptr<BoundStoreServer> server_;  // rank 0 only
  int port_ = 0;
};

}  // namespace saegrid
