// A minimal HTTP/1.0 GET over loopback for tests (/metrics, Prometheus' API): no library needed.
#pragma once

#include <optional>
#include <string>

namespace saegrid::testing {

// The body of GET http://127.0.0.1:<port><path>, or nothing when the request fails or the status
// is not 200.
std::optional<std::string> HttpGet(int port, const std::string& path);

// Percent-encodes a query parameter value.
std::string UrlEncode(const std::string& value);

// A TCP port on 127.0.0.1 that was free a moment ago.
int FreeLoopbackPort();

}  // namespace saegrid::testing
