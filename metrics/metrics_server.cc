#include "metrics/metrics_server.h"

#include <prometheus/gauge.h>

#include <exception>

#include "absl/strings/str_cat.h"

#ifndef SAEGRID_VERSION
#define SAEGRID_VERSION "unknown"
#endif

namespace saegrid::metrics {

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& listen,
                                                                   const std::string& component) {
  auto server = std::make_unique<MetricsServer>();
  server->registry_ = std::make_shared<prometheus::Registry>();
  try {
    server->exposer_ = std::make_unique<prometheus::Exposer>(listen);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("--metrics-listen ", listen, ": cannot serve /metrics: ", e.what()));
  }
  server->exposer_->RegisterCollectable(server->registry_);
  const auto ports = server->exposer_->GetListeningPorts();
  if (ports.empty()) return absl::UnavailableError(absl::StrCat("--metrics-listen ", listen, ": not listening"));
  server->port_ = ports.front();
  prometheus::BuildGauge()
      .Name("saegrid_build_info")
      .Help("Always 1; the labels say which saegrid build this is")
      .Register(*server->registry_)
      .Add({{"version", SAEGRID_VERSION}, {"component", component}, {"protocol", "saegrid.v1"}})
      .Set(1);
  return server;
}

}  // namespace saegrid::metrics
