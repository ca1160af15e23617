// The /metrics endpoint of a daemon (prometheus-cpp, pull): one registry, served over HTTP, with
// the saegrid_build_info gauge. Names follow Prometheus conventions (saegrid_ prefix, base units,
// _total counters, _seconds histograms); labels never use `job` or `instance`.
#pragma once

#include <prometheus/exposer.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace saegrid::metrics {

class MetricsServer {
 public:
  // `listen` is HOST:PORT (port 0 picks one); `component` labels saegrid_build_info.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& listen, const std::string& component);
  prometheus::Registry& registry() { return *registry_; }
  int port() const { return port_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

}  // namespace saegrid::metrics
