// The /metrics HTTP server on its own, in process, over real loopback sockets: idle and slow
// clients, malformed and oversized requests, the connection cap, bind errors and shutdown. The
// daemons' behaviour with the same server is covered by metrics_test.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <prometheus/counter.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "metrics/metrics_server.h"
#include "tests/http_client.h"

namespace saegrid {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;
using Clock = std::chrono::steady_clock;
using metrics::MetricsServer;
using metrics::MetricsServerOptions;

double SecondsSince(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// A raw TCP client on loopback: sends what it is told, reads what comes back.
class RawClient {
 public:
  explicit RawClient(int port, int receive_buffer = 0) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    // A small receive buffer (set before connecting) makes this client a slow reader.
    if (receive_buffer > 0) ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &receive_buffer, sizeof(receive_buffer));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawClient() { ::close(fd_); }
  bool connected() const { return connected_; }

  bool Send(const std::string& bytes) {
    return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }
  // Everything until the server closes, or what arrived within `timeout_s` (timed_out() says).
  std::string ReadAll(double timeout_s = 5) {
    std::string out;
    const auto give_up = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
    timed_out_ = false;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(give_up - Clock::now()).count();
      if (left <= 0) {
        timed_out_ = true;
        return out;
      }
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
      char buffer[65536];
      const ssize_t n = ::recv(fd_, buffer, sizeof(buffer), 0);
      if (n <= 0) return out;  // closed (or reset) by the server
      out.append(buffer, static_cast<size_t>(n));
    }
  }
  bool timed_out() const { return timed_out_; }
  // True when the server has closed this connection within `timeout_s` (EOF or reset, with no
  // bytes before it).
  bool ClosedWithin(double timeout_s) {
    const std::string got = ReadAll(timeout_s);
    return !timed_out_ && got.empty();
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
  bool timed_out_ = false;
};

std::unique_ptr<MetricsServer> StartServer(const MetricsServerOptions& options = {}) {
  auto server = MetricsServer::Start("127.0.0.1:0", "test", options);
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

TEST(MetricsServer, ServesTheRegistryInTextFormat) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  ASSERT_GT(server->port(), 0);
  prometheus::BuildCounter().Name("saegrid_test_total").Help("a test counter").Register(server->registry()).Add({}).Increment(3);
  RawClient client(server->port());
  ASSERT_TRUE(client.Send("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n"));
  const std::string response = client.ReadAll();
  EXPECT_THAT(response, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_THAT(response, HasSubstr("Content-Type: text/plain; version=0.0.4"));
  EXPECT_THAT(response, HasSubstr("Connection: close\r\n"));
  EXPECT_THAT(response, HasSubstr("\nsaegrid_test_total 3\n"));
  EXPECT_THAT(response, HasSubstr("saegrid_build_info{component=\"test\",protocol=\"saegrid.v1\",version=\""));
  const size_t body = response.find("\r\n\r\n") + 4;
  EXPECT_THAT(response, HasSubstr(absl::StrCat("Content-Length: ", response.size() - body, "\r\n")));
  // Query strings are ignored; HEAD gets the headers alone; HTTP/1.0 and bare LF are accepted.
  EXPECT_TRUE(testing::HttpGet(server->port(), "/metrics?x=1"));
  RawClient head(server->port());
  ASSERT_TRUE(head.Send("HEAD /metrics HTTP/1.0\n\n"));
  const std::string head_response = head.ReadAll();
  EXPECT_THAT(head_response, StartsWith("HTTP/1.1 200 OK\r\n"));
  EXPECT_EQ(head_response.find("\r\n\r\n") + 4, head_response.size()) << head_response;
}

TEST(MetricsServer, RequestSplitIntoSingleBytesIsServed) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  RawClient client(server->port());
  for (char c : std::string("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")) {
    ASSERT_TRUE(client.Send(std::string(1, c)));
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_THAT(client.ReadAll(), StartsWith("HTTP/1.1 200 OK\r\n"));
}

TEST(MetricsServer, UnknownPathsAndMethodsAreRefused) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 "},
      {"GET /metricsx HTTP/1.1\r\n\r\n", "HTTP/1.1 404 "},
      {"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi", "HTTP/1.1 405 "},
      {"DELETE /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405 "},
      {"GET /metrics HTTP/2.0\r\n\r\n", "HTTP/1.1 400 "},
      {"GET metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "},
      {"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", "HTTP/1.1 400 "},
      {"GET /metrics HTTP/1.1\r\n folded: header\r\n\r\n", "HTTP/1.1 400 "},
  };
  for (const auto& [request, status] : cases) {
    RawClient client(server->port());
    ASSERT_TRUE(client.Send(request));
    const std::string response = client.ReadAll();
    EXPECT_FALSE(client.timed_out()) << request;
    EXPECT_THAT(response, StartsWith(status)) << request;
    if (status == "HTTP/1.1 405 ") {
      EXPECT_THAT(response, HasSubstr("Allow: GET, HEAD\r\n"));
    }
  }
}

TEST(MetricsServer, GarbageGets400AtOnceAndTheServerKeepsServing) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  // Binary bytes (a TLS ClientHello's start), a nonsense line, and an HTTP/2 preface: each is
  // answered 400 and closed without waiting for a request head that will never come.
  for (const std::string& garbage : {std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11),
                                    std::string("hello there\n"), std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")}) {
    RawClient client(server->port());
    const auto start = Clock::now();
    ASSERT_TRUE(client.Send(garbage));
    const std::string response = client.ReadAll();
    EXPECT_FALSE(client.timed_out());
    EXPECT_LT(SecondsSince(start), 1.0);
    EXPECT_THAT(response, StartsWith("HTTP/1.1 400 Bad Request\r\n"));
    EXPECT_TRUE(testing::HttpGet(server->port(), "/metrics"));
  }
}

TEST(MetricsServer, OverlongRequestHeadGets431) {
  MetricsServerOptions options;
  options.max_head_bytes = 1024;
  auto server = StartServer(options);
  ASSERT_TRUE(server);
  {  // a head that never ends
    RawClient client(server->port());
    ASSERT_TRUE(client.Send("GET /metrics HTTP/1.1\r\nX-Long: " + std::string(4000, 'a')));
    const std::string response = client.ReadAll();
    EXPECT_FALSE(client.timed_out());
    EXPECT_THAT(response, StartsWith("HTTP/1.1 431 "));
  }
  {  // a complete head just over the limit, and one just under it
    RawClient over(server->port());
    const std::string start = "GET /metrics HTTP/1.1\r\nX-Long: ";
    ASSERT_TRUE(over.Send(start + std::string(1024 - start.size() - 3, 'a') + "\r\n\r\n"));
    EXPECT_THAT(over.ReadAll(), StartsWith("HTTP/1.1 431 "));
    RawClient under(server->port());
    ASSERT_TRUE(under.Send(start + std::string(1024 - start.size() - 4, 'a') + "\r\n\r\n"));
    EXPECT_THAT(under.ReadAll(), StartsWith("HTTP/1.1 200 "));
  }
  EXPECT_TRUE(testing::HttpGet(server->port(), "/metrics"));
}

TEST(MetricsServer, IdleConnectionsDoNotBlockScrapesAndTimeOut) {
  MetricsServerOptions options;
  options.head_timeout = std::chrono::milliseconds(1500);
  auto server = StartServer(options);
  ASSERT_TRUE(server);
  std::vector<std::unique_ptr<RawClient>> idle;
  for (int i = 0; i < 100; ++i) {
    idle.push_back(std::make_unique<RawClient>(server->port()));
    ASSERT_TRUE(idle.back()->connected());
  }
  // A half-sent request head is just as idle.
  ASSERT_TRUE(idle.front()->Send("GET /metr"));
  const auto opened = Clock::now();
  for (int i = 0; i < 10; ++i) {
    const auto start = Clock::now();
    EXPECT_TRUE(testing::HttpGet(server->port(), "/metrics"));
    EXPECT_LT(SecondsSince(start), 0.5);
  }
  // Every idle connection is closed once the head timeout has passed, and not much later.
  for (auto& c : idle) EXPECT_TRUE(c->ClosedWithin(3.0));
  EXPECT_GE(SecondsSince(opened), 1.0);
  EXPECT_LT(SecondsSince(opened), 3.5);
  EXPECT_TRUE(testing::HttpGet(server->port(), "/metrics"));
}

TEST(MetricsServer, TheConnectionCapDropsTheOldestIdleConnection) {
  MetricsServerOptions options;
  options.max_connections = 8;
  auto server = StartServer(options);
  ASSERT_TRUE(server);
  std::vector<std::unique_ptr<RawClient>> idle;
  for (int i = 0; i < 8; ++i) {
    idle.push_back(std::make_unique<RawClient>(server->port()));
    // Each one accepted before the next connects, so that "oldest" is well defined.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // A ninth client (a scrape) is served; the oldest idle connection made room for it.
  EXPECT_TRUE(testing::HttpGet(server->port(), "/metrics"));
  EXPECT_TRUE(idle[0]->ClosedWithin(1.0));
  for (int i = 1; i < 8; ++i) {
    idle[i]->ReadAll(0.05);
    EXPECT_TRUE(idle[i]->timed_out()) << "connection " << i << " should still be open";
  }
  // A flood far over the cap leaves the server serving.
  std::vector<std::unique_ptr<RawClient>> flood;
  for (int i = 0; i < 200; ++i) flood.push_back(std::make_unique<RawClient>(server->port()));
  EXPECT_TRUE(testing::HttpGet(server->port(), "/metrics"));
}

TEST(MetricsServer, ASlowReaderDoesNotStallOtherScrapes) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  // About 9 MB of exposition, more than the socket buffers hold (Linux lets them grow to 4 MB).
  auto& family = prometheus::BuildCounter().Name("saegrid_test_wide_total").Help("many series").Register(server->registry());
  for (int i = 0; i < 120000; ++i) family.Add({{"series", absl::StrCat("a-long-label-value-for-series-", i)}}).Increment();
  RawClient slow(server->port(), 4096);
  ASSERT_TRUE(slow.Send("GET /metrics HTTP/1.1\r\n\r\n"));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the server is now blocked on it
  for (int i = 0; i < 3; ++i) {
    // A loop stalled on the slow reader would never answer (HttpGet gives up after 10 s idle).
    const auto body = testing::HttpGet(server->port(), "/metrics");
    ASSERT_TRUE(body);
    EXPECT_GT(body->size(), 8000000u);
  }
  // The slow reader still gets the whole response.
  const std::string response = slow.ReadAll(20);
  ASSERT_FALSE(slow.timed_out());
  const size_t body = response.find("\r\n\r\n") + 4;
  EXPECT_THAT(response, HasSubstr(absl::StrCat("Content-Length: ", response.size() - body, "\r\n")));
  EXPECT_THAT(response, HasSubstr("series=\"a-long-label-value-for-series-119999\""));
}

TEST(MetricsServer, BindErrorsNameTheFlagAndTheAddress) {
  auto first = StartServer();
  ASSERT_TRUE(first);
  const std::string taken = absl::StrCat("127.0.0.1:", first->port());
  auto second = MetricsServer::Start(taken, "test");
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("--metrics-listen " + taken + ": cannot bind"));
  for (const char* address : {"127.0.0.1:99999", "127.0.0.1:", "127.0.0.1:http", "::1:80", "[::1", "192.0.2.1:0"}) {
    const std::string bad = address;
    auto started = MetricsServer::Start(bad, "test");
    ASSERT_FALSE(started.ok()) << bad;
    EXPECT_THAT(std::string(started.status().message()), StartsWith("--metrics-listen " + bad + ": ")) << bad;
  }
}

TEST(MetricsServer, ListensOnIpv6Loopback) {
  auto server = MetricsServer::Start("[::1]:0", "test");
  if (!server.ok()) GTEST_SKIP() << "no IPv6 loopback here: " << server.status();
  EXPECT_GT((*server)->port(), 0);
}

TEST(MetricsServer, DestructionIsPromptWithClientsConnected) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  const int port = server->port();
  std::vector<std::unique_ptr<RawClient>> clients;
  for (int i = 0; i < 20; ++i) clients.push_back(std::make_unique<RawClient>(port));
  RawClient slow(port, 4096);
  ASSERT_TRUE(slow.Send("GET /metrics HTTP/1.1\r\n\r\n"));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const auto start = Clock::now();
  server.reset();
  EXPECT_LT(SecondsSince(start), 1.0);
  for (auto& c : clients) EXPECT_TRUE(c->ClosedWithin(1.0));
  EXPECT_FALSE(testing::HttpGet(port, "/metrics"));
}

}  // namespace
}  // namespace saegrid
