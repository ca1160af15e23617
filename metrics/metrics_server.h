// The /metrics endpoint of a daemon: one prometheus-cpp registry, serialized in Prometheus' text
// format by a small HTTP/1.1 server of our own, with the saegrid_build_info gauge. Names follow
// Prometheus conventions (saegrid_ prefix, base units, _total counters, _seconds histograms);
// labels never use `job` or `instance`.
//
// The server is one thread polling non-blocking sockets, so an idle or slow client costs a file
// descriptor and a buffer, never a thread: prometheus-cpp's own exposer (civetweb) gave each
// connection one of two worker threads, and two idle connections blocked every scrape.
// Every response closes its connection (`Connection: close`).
#pragma once

#include <prometheus/registry.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace saegrid::metrics {

// Limits of the HTTP server; the defaults suit a daemon, tests shorten the timeouts.
struct MetricsServerOptions {
  // A connection that has not sent a complete request head this long after it was accepted is
  // closed (slow or idle clients cannot hold a slot forever).
  std::chrono::milliseconds head_timeout{10000};
  // A request head (request line and headers) longer than this gets 431 and is closed.
  size_t max_head_bytes = 8192;
  // Connections open at once (never more than a quarter of RLIMIT_NOFILE, so that a flood
  // leaves the daemon descriptors for its real work). When a new one would exceed it, the oldest
  // connection not receiving a response (waiting for its request head, or for the client to
  // close after one) is closed; when there is none, the new one is refused.
  size_t max_connections = 1024;
  // A response the client has not read completely this long after it was ready is abandoned.
  std::chrono::milliseconds write_timeout{30000};
};

class MetricsServer {
 public:
  // Binds `listen` (HOST:PORT; [IPv6]:PORT; port 0 picks one; HOST may be a name) and starts the
  // server thread. `component` labels saegrid_build_info. Errors (a bad address, bind or listen
  // failing) name the --metrics-listen flag and the address.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& listen, const std::string& component,
                                                              const MetricsServerOptions& options = {});
  // Stops the server thread and closes the listening socket and every connection; returns
  // promptly whatever the clients do.
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // The registry served on GET /metrics; thread-safe (prometheus-cpp), lives as long as this.
  prometheus::Registry& registry() { return *registry_; }
  // The bound TCP port (the chosen one when `listen` asked for port 0).
  int port() const { return port_; }

 private:
  class Loop;
  MetricsServer();

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<Loop> loop_;
  int port_ = 0;
};

}  // namespace saegrid::metrics
