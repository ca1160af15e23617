#include "metrics/metrics_server.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <prometheus/gauge.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <list>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

#ifndef SAEGRID_VERSION
#define SAEGRID_VERSION "unknown"
#endif

namespace saegrid::metrics {
namespace {

using Clock = std::chrono::steady_clock;

// After a response is sent, how long the client may take to close its end. Closing at once
// could reset the connection before the client has read the response (unread request bytes
// turn close() into a RST).
constexpr std::chrono::milliseconds kDrainTimeout{2000};
// How long accepting pauses when the process is out of file descriptors and nothing can be
// evicted; the listening socket stays readable meanwhile, so polling it would spin.
constexpr std::chrono::milliseconds kAcceptPause{100};
// New connections taken per loop iteration, so a connect flood cannot starve the others.
constexpr int kAcceptBatch = 64;

struct Address {
  std::string host;  // empty: every interface
  std::string port;
};

// HOST:PORT, [IPv6]:PORT, or a bare PORT (every interface, as civetweb accepted).
absl::StatusOr<Address> ParseListen(const std::string& listen) {
  Address a;
  if (!listen.empty() && listen.front() == '[') {
    const size_t close = listen.find(']');
    if (close == std::string::npos || close + 1 >= listen.size() || listen[close + 1] != ':') {
      return absl::InvalidArgumentError("expected [IPV6]:PORT");
    }
    a.host = listen.substr(1, close - 1);
    a.port = listen.substr(close + 2);
  } else {
    const size_t colon = listen.rfind(':');
    if (colon == std::string::npos) {
      a.port = listen;
    } else {
      a.host = listen.substr(0, colon);
      a.port = listen.substr(colon + 1);
      if (a.host.find(':') != std::string::npos) return absl::InvalidArgumentError("an IPv6 host needs brackets: [HOST]:PORT");
    }
  }
  int port = -1;
  if (a.port.empty() || a.port.size() > 5 || !std::all_of(a.port.begin(), a.port.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(a.port, &port) || port > 65535) {
    return absl::InvalidArgumentError("expected HOST:PORT with a port in 0..65535");
  }
  if (a.host == "*") a.host.clear();
  return a;
}

// A non-blocking listening socket bound to `listen`, or why not.
absl::StatusOr<int> Listen(const std::string& listen) {
  auto address = ParseListen(listen);
  if (!address.ok()) return address.status();
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const int rc = ::getaddrinfo(address->host.empty() ? nullptr : address->host.c_str(), address->port.c_str(), &hints,
                               &found);
  if (rc != 0) return absl::InvalidArgumentError(absl::StrCat("cannot resolve the host: ", ::gai_strerror(rc)));
  std::string error = "no address";
  int fd = -1;
  for (addrinfo* ai = found; ai != nullptr && fd < 0; ai = ai->ai_next) {
    fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      error = absl::StrCat("socket: ", std::strerror(errno));
      continue;
    }
    // Lets a restarted daemon bind while old connections sit in TIME_WAIT; on Linux it does not
    // let two listeners share the port.
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      error = absl::StrCat("cannot bind: ", std::strerror(errno));
    } else if (::listen(fd, SOMAXCONN) != 0) {
      error = absl::StrCat("cannot listen: ", std::strerror(errno));
    } else {
      break;
    }
    ::close(fd);
    fd = -1;
  }
  ::freeaddrinfo(found);
  if (fd < 0) return absl::UnavailableError(error);
  return fd;
}

int BoundPort(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return 0;
  if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  if (addr.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  return 0;
}

// RFC 9110 token characters (methods, header names).
bool IsToken(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!absl::ascii_isalnum(c) && std::strchr("!#$%&'*+-.^_`|~", c) == nullptr) return false;
  }
  return true;
}

std::string Response(int status, absl::string_view reason, absl::string_view content_type, absl::string_view body,
                     bool head_only, absl::string_view extra_headers = "") {
  std::string out = absl::StrCat("HTTP/1.1 ", status, " ", reason, "\r\nContent-Type: ", content_type,
                                 "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n", extra_headers, "\r\n");
  if (!head_only) out.append(body.data(), body.size());
  return out;
}

std::string Error(int status, absl::string_view reason, absl::string_view extra_headers = "") {
  return Response(status, reason, "text/plain; charset=utf-8", absl::StrCat(reason, "\n"), false, extra_headers);
}

}  // namespace

// The server thread: every socket non-blocking, one poll() over the listening socket, a wake-up
// eventfd and the open connections; each connection reads its request head, gets a whole
// response buffered, writes it as the client reads, then drains until the client closes.
class MetricsServer::Loop {
 public:
  Loop(int listen_fd, int wake_fd, std::shared_ptr<prometheus::Registry> registry, const MetricsServerOptions& options)
      : listen_fd_(listen_fd),
        wake_fd_(wake_fd),
        registry_(std::move(registry)),
        options_(options),
        max_connections_(ConnectionCap(options.max_connections)) {
    thread_ = std::thread([this] { Run(); });
  }

  ~Loop() {
    stop_.store(true);
    const uint64_t one = 1;
    // An eventfd write only fails when the counter would overflow, and then the loop is awake.
    (void)!::write(wake_fd_, &one, sizeof(one));
    thread_.join();
    for (Connection& c : connections_) ::close(c.fd);
    ::close(listen_fd_);
    ::close(wake_fd_);
  }

 private:
  enum class State { kReadingHead, kWriting, kDraining };
  struct Connection {
    int fd;
    State state = State::kReadingHead;
    Clock::time_point deadline;
    std::string in;   // the request head so far
    std::string out;  // the response
    size_t sent = 0;
    bool closed = false;
  };

  void Run() {
    std::vector<pollfd> fds;
    std::vector<std::list<Connection>::iterator> polled;
    while (!stop_.load()) {
      const Clock::time_point now = Clock::now();
      fds.clear();
      polled.clear();
      fds.push_back({wake_fd_, POLLIN, 0});
      const bool accepting = now >= accept_paused_until_;
      if (accepting) fds.push_back({listen_fd_, POLLIN, 0});
      Clock::time_point wake = now + std::chrono::seconds(1);
      if (!accepting) wake = std::min(wake, accept_paused_until_);
      for (auto it = connections_.begin(); it != connections_.end(); ++it) {
        fds.push_back({it->fd, static_cast<short>(it->state == State::kWriting ? POLLOUT : POLLIN), 0});
        polled.push_back(it);
        wake = std::min(wake, it->deadline);
      }
      const auto timeout = std::chrono::duration_cast<std::chrono::milliseconds>(wake - now).count() + 1;
      const int ready = ::poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(0, timeout)));
      if (ready < 0 && errno != EINTR) {
        // poll itself failing (EFAULT, ENOMEM) is not something a retry at full speed would fix.
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        continue;
      }
      if (stop_.load()) return;
      const size_t first = accepting ? 2 : 1;
      for (size_t i = first; ready > 0 && i < fds.size(); ++i) {
        if (fds[i].revents != 0) Service(*polled[i - first], fds[i].revents);
      }
      const Clock::time_point after = Clock::now();
      for (Connection& c : connections_) {
        if (!c.closed && after >= c.deadline) Close(c);
      }
      connections_.remove_if([](const Connection& c) { return c.closed; });
      if (accepting && ready > 0 && (fds[1].revents & POLLIN)) Accept();
    }
  }

  void Accept() {
    for (int i = 0; i < kAcceptBatch; ++i) {
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == ECONNABORTED || errno == EINTR || errno == EPROTO) continue;  // that client is gone
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
          // Out of descriptors: free one that is only waiting, or stop accepting for a moment.
          if (EvictOne()) continue;
          accept_paused_until_ = Clock::now() + kAcceptPause;
        }
        return;  // EAGAIN: nothing pending
      }
      if (connections_.size() >= max_connections_ && !EvictOne()) {
        ::close(fd);  // every slot is sending a response: refuse this one
        continue;
      }
      Connection c;
      c.fd = fd;
      c.deadline = Clock::now() + options_.head_timeout;
      connections_.push_back(std::move(c));
      // Most clients send their request with the connect; answering now saves a poll round.
      Read(connections_.back());
      if (connections_.back().closed) connections_.pop_back();
    }
  }

  // Closes the oldest connection that is not sending a response (waiting for its head, or
  // waiting for the client to close); false when there is none.
  bool EvictOne() {
    for (auto it = connections_.begin(); it != connections_.end(); ++it) {
      if (!it->closed && it->state != State::kWriting) {
        ::close(it->fd);
        connections_.erase(it);
        return true;
      }
    }
    return false;
  }

  void Service(Connection& c, short revents) {
    if (c.closed) return;
    if (c.state == State::kWriting) {
      if (revents & (POLLERR | POLLNVAL)) return Close(c);
      Write(c);
      return;
    }
    Read(c);
  }

  void Close(Connection& c) {
    ::close(c.fd);
    c.closed = true;
  }

  // Reads what the client sent. The reads per call are bounded so that a client streaming bytes
  // cannot keep the loop from the other connections.
  void Read(Connection& c) {
    char buffer[4096];
    for (int round = 0; round < 16 && !c.closed && c.state != State::kWriting; ++round) {
      const ssize_t n = ::recv(c.fd, buffer, sizeof(buffer), 0);
      if (n == 0) return Close(c);  // the client closed its end
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        if (errno == EINTR) continue;
        return Close(c);
      }
      if (c.state == State::kDraining) continue;  // whatever follows the request is ignored
      const size_t from = c.in.size();
      c.in.append(buffer, static_cast<size_t>(n));
      Examine(c, from);
    }
  }

  // Answers as soon as the head is complete, or as soon as it cannot become a valid one;
  // `from` is where the bytes not examined before start.
  void Examine(Connection& c, size_t from) {
    absl::string_view in = c.in;
    for (size_t i = from; i < in.size(); ++i) {
      const unsigned char ch = static_cast<unsigned char>(in[i]);
      // Control bytes never occur in a request head; binary garbage (TLS, HTTP/2 frames, noise)
      // is refused at once rather than after the head timeout.
      if ((ch < 0x20 && ch != '\r' && ch != '\n' && ch != '\t') || ch == 0x7f) {
        return Respond(c, Error(400, "Bad Request"));
      }
    }
    const size_t line_end = in.find('\n');
    if (line_end != absl::string_view::npos && line_end >= from &&
        !ValidRequestLine(StripCr(in.substr(0, line_end)))) {
      return Respond(c, Error(400, "Bad Request"));
    }
    // Bare LF line ends are accepted, as RFC 9112 allows. The terminator may straddle reads.
    const size_t search = from >= 3 ? from - 3 : 0;
    size_t head_end = in.find("\r\n\r\n", search);
    size_t terminator = 4;
    const size_t lf = in.find("\n\n", search);
    if (lf != absl::string_view::npos && (head_end == absl::string_view::npos || lf < head_end)) {
      head_end = lf;
      terminator = 2;
    }
    if (head_end == absl::string_view::npos) {
      if (in.size() > options_.max_head_bytes) Respond(c, Error(431, "Request Header Fields Too Large"));
      return;
    }
    if (head_end + terminator > options_.max_head_bytes) {
      return Respond(c, Error(431, "Request Header Fields Too Large"));
    }
    Dispatch(c, in.substr(0, head_end));
  }

  static absl::string_view StripCr(absl::string_view line) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    return line;
  }

  static bool ValidRequestLine(absl::string_view line) {
    const std::vector<absl::string_view> parts = absl::StrSplit(line, ' ');
    return parts.size() == 3 && IsToken(parts[0]) && !parts[1].empty() && parts[1].front() == '/' &&
           (parts[2] == "HTTP/1.1" || parts[2] == "HTTP/1.0");
  }

  void Dispatch(Connection& c, absl::string_view head) {
    const std::vector<absl::string_view> lines = absl::StrSplit(head, '\n');
    for (size_t i = 1; i < lines.size(); ++i) {
      const absl::string_view line = StripCr(lines[i]);
      const size_t colon = line.find(':');
      // Obsolete line folding (a leading space) and nameless fields are malformed (RFC 9112).
      if (colon == absl::string_view::npos || !IsToken(line.substr(0, colon))) {
        return Respond(c, Error(400, "Bad Request"));
      }
    }
    const std::vector<absl::string_view> request = absl::StrSplit(StripCr(lines[0]), ' ');
    const absl::string_view method = request[0];
    absl::string_view path = request[1];
    path = path.substr(0, path.find('?'));
    const bool head_only = method == "HEAD";
    if (method != "GET" && !head_only) return Respond(c, Error(405, "Method Not Allowed", "Allow: GET, HEAD\r\n"));
    if (path != "/metrics") return Respond(c, Error(404, "Not Found"));
    std::string body;
    try {
      body = prometheus::TextSerializer().Serialize(registry_->Collect());
    } catch (const std::exception&) {
      // Serialization allocates; a daemon short of memory answers 500 instead of terminating.
      return Respond(c, Error(500, "Internal Server Error"));
    }
    Respond(c, Response(200, "OK", "text/plain; version=0.0.4; charset=utf-8", body, head_only));
  }

  void Respond(Connection& c, std::string response) {
    c.in.clear();
    c.in.shrink_to_fit();
    c.out = std::move(response);
    c.sent = 0;
    c.state = State::kWriting;
    c.deadline = Clock::now() + options_.write_timeout;
    Write(c);
  }

  void Write(Connection& c) {
    while (c.sent < c.out.size()) {
      const ssize_t n = ::send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;  // poll says when it can take more
        if (errno == EINTR) continue;
        return Close(c);
      }
      c.sent += static_cast<size_t>(n);
    }
    c.out.clear();
    c.out.shrink_to_fit();
    // The response is complete: half-close, then wait (briefly) for the client to close.
    ::shutdown(c.fd, SHUT_WR);
    c.state = State::kDraining;
    c.deadline = Clock::now() + kDrainTimeout;
  }

  // At most a quarter of the process's descriptor limit, so that a flood of connections leaves
  // the daemon the descriptors its RPCs, database and checkpoints need.
  static size_t ConnectionCap(size_t wanted) {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return wanted;
    return std::min(wanted, std::max<size_t>(16, static_cast<size_t>(limit.rlim_cur / 4)));
  }

  const int listen_fd_, wake_fd_;
  const std::shared_ptr<prometheus::Registry> registry_;
  const MetricsServerOptions options_;
  const size_t max_connections_;
  std::atomic<bool> stop_{false};
  std::list<Connection> connections_;  // oldest first; touched by the loop thread only
  Clock::time_point accept_paused_until_;
  std::thread thread_;
};

MetricsServer::MetricsServer() = default;
MetricsServer::~MetricsServer() = default;

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& listen,
                                                                   const std::string& component,
                                                                   const MetricsServerOptions& options) {
  auto fail = [&](const absl::Status& status) {
    return absl::Status(status.code(), absl::StrCat("--metrics-listen ", listen, ": ", status.message()));
  };
  if (options.max_connections == 0 || options.max_head_bytes == 0) {
    return fail(absl::InvalidArgumentError("max_connections and max_head_bytes must be positive"));
  }
  auto fd = Listen(listen);
  if (!fd.ok()) return fail(fd.status());
  const int wake = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake < 0) {
    ::close(*fd);
    return fail(absl::InternalError(absl::StrCat("eventfd: ", std::strerror(errno))));
  }
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  server->registry_ = std::make_shared<prometheus::Registry>();
  server->port_ = BoundPort(*fd);
  prometheus::BuildGauge()
      .Name("saegrid_build_info")
      .Help("Always 1; the labels say which saegrid build this is")
      .Register(*server->registry_)
      .Add({{"version", SAEGRID_VERSION}, {"component", component}, {"protocol", "saegrid.v1"}})
      .Set(1);
  server->loop_ = std::make_unique<Loop>(*fd, wake, server->registry_, options);
  return server;
}

}  // namespace saegrid::metrics
