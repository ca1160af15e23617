#include "engine/distributed/bound_store.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace saegrid {
namespace {

using Clock = std::chrono::steady_clock;

// Wire format, both ways: a frame is a 4-byte big-endian payload length and the payload. A
// request payload is an op byte and its fields; a reply payload is a status byte and its data.
// Strings are a 4-byte length and the bytes; integers 8 bytes big-endian.
enum Op : uint8_t { kSet = 1, kGet, kAdd, kCompareSet, kDelete, kCheck, kNumKeys, kWait };
enum Reply : uint8_t { kOk = 0, kTimedOut = 1 };

// Keys and values are small (Gloo's pair addresses, NCCL's 128-byte id, counters); a larger
// frame is a stray client, and the bound keeps what a connection can make the server buffer.
constexpr uint32_t kMaxFrame = 1u << 20;
// Connections the server holds at once (a gang has a few per rank).
constexpr size_t kMaxConnections = 1024;
// Call's wait_ms for a request the server answers at once.
constexpr int64_t kImmediate = -2;
// How much later than the server's own deadline a client gives up on a reply.
constexpr std::chrono::milliseconds kReplySlack{10000};

void PutU32(std::string& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xff));
}
void PutI64(std::string& out, int64_t v) {
  const uint64_t u = static_cast<uint64_t>(v);
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>((u >> shift) & 0xff));
}
void PutString(std::string& out, const std::string& s) {
  PutU32(out, static_cast<uint32_t>(s.size()));
  out += s;
}

// Reads fields from a payload; any read past the end marks it bad.
class Reader {
 public:
  explicit Reader(const std::string& s) : s_(s) {}
  bool ok() const { return ok_; }
  bool done() const { return pos_ == s_.size(); }
  uint8_t U8() {
    if (pos_ + 1 > s_.size()) return Fail();
    return static_cast<uint8_t>(s_[pos_++]);
  }
  uint32_t U32() {
    if (pos_ + 4 > s_.size()) return Fail();
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(s_[pos_++]);
    return v;
  }
  int64_t I64() {
    if (pos_ + 8 > s_.size()) return Fail();
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(s_[pos_++]);
    return static_cast<int64_t>(v);
  }
  std::string String() {
    const uint32_t n = U32();
    if (!ok_ || pos_ + n > s_.size()) return Fail(), std::string();
    std::string v = s_.substr(pos_, n);
    pos_ += n;
    return v;
  }

 private:
  uint8_t Fail() {
    ok_ = false;
    pos_ = s_.size();
    return 0;
  }
  const std::string& s_;
  size_t pos_ = 0;
  bool ok_ = true;
};

std::string Str(const std::vector<uint8_t>& b) { return {b.begin(), b.end()}; }
std::vector<uint8_t> Bytes(const std::string& s) { return {s.begin(), s.end()}; }

int64_t Millis(std::chrono::milliseconds t) { return t == c10d::Store::kNoTimeout ? -1 : t.count(); }

// The TCP addresses `host:port` resolves to, freed with the pointer. NotFound names the host.
using AddressList = std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)>;
absl::StatusOr<AddressList> ResolveTcp(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found);
  if (rc != 0) return absl::NotFoundError(absl::StrCat("cannot resolve ", host, ": ", ::gai_strerror(rc)));
  return AddressList(found, &::freeaddrinfo);
}

}  // namespace

// Rank 0's server: one thread polling non-blocking sockets (the listening ones, a wake-up
// eventfd, the clients). A client sends one request at a time; a get or wait whose keys are
// missing is parked until a set or add supplies them, or until its deadline.
class BoundStoreServer {
 public:
  static absl::StatusOr<std::shared_ptr<BoundStoreServer>> Start(const std::string& host, int port) {
    const std::string where = absl::StrCat(host, ":", port);
    auto addresses = ResolveTcp(host, port);
    if (!addresses.ok()) {
      // NotFound: the caller retries (a pod's own DNS name may appear a moment after it starts).
      return absl::NotFoundError(absl::StrCat("rendezvous store ", where, ": ", addresses.status().message()));
    }
    addrinfo* found = addresses->get();
    auto server = std::shared_ptr<BoundStoreServer>(new BoundStoreServer());
    std::vector<std::string> errors;
    for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
      const int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
      if (fd < 0) continue;
      const int one = 1;
      // A restarted gang reuses the port while the old connections sit in TIME_WAIT.
      ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      // An IPv6 address of `host` must not also claim the IPv4 port its IPv4 address binds.
      if (ai->ai_family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
      if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, SOMAXCONN) == 0) {
        server->listen_fds_.push_back(fd);
      } else {
        errors.push_back(std::strerror(errno));
        ::close(fd);
      }
    }
    if (server->listen_fds_.empty()) {
      return absl::UnavailableError(absl::StrCat("rendezvous store ", where, ": cannot listen: ",
                                                 errors.empty() ? "no address" : absl::StrJoin(errors, "; ")));
    }
    server->wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (server->wake_fd_ < 0) return absl::UnavailableError(absl::StrCat("rendezvous store ", where, ": eventfd"));
    server->thread_ = std::thread([raw = server.get()] { raw->Run(); });
    return server;
  }

  ~BoundStoreServer() {
    stop_.store(true);
    if (thread_.joinable()) {
      const uint64_t one = 1;
      (void)!::write(wake_fd_, &one, sizeof(one));
      thread_.join();
    }
    for (Conn& c : conns_) ::close(c.fd);
    for (int fd : listen_fds_) ::close(fd);
    if (wake_fd_ >= 0) ::close(wake_fd_);
  }

 private:
  struct Conn {
    int fd;
    std::string in, out;
    bool parked = false;  // a get or wait waiting for keys
    uint8_t parked_op = 0;
    std::vector<std::string> keys;
    bool has_deadline = false;
    Clock::time_point deadline;
    bool closed = false;
  };

  BoundStoreServer() = default;

  void Run() {
    std::vector<pollfd> fds;
    std::vector<std::list<Conn>::iterator> polled;
    while (!stop_.load()) {
      fds.clear();
      polled.clear();
      fds.push_back({wake_fd_, POLLIN, 0});
      for (int fd : listen_fds_) fds.push_back({fd, POLLIN, 0});
      const size_t first = fds.size();
      Clock::time_point wake = Clock::now() + std::chrono::seconds(1);
      for (auto it = conns_.begin(); it != conns_.end(); ++it) {
        fds.push_back({it->fd, static_cast<short>(POLLIN | (it->out.empty() ? 0 : POLLOUT)), 0});
        polled.push_back(it);
        if (it->parked && it->has_deadline) wake = std::min(wake, it->deadline);
      }
      const auto timeout =
          std::chrono::duration_cast<std::chrono::milliseconds>(wake - Clock::now()).count() + 1;
      if (::poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(0, timeout))) < 0 && errno != EINTR) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        continue;
      }
      if (stop_.load()) return;
      for (size_t i = first; i < fds.size(); ++i) {
        Conn& c = *polled[i - first];
        if (c.closed) continue;
        if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) Read(c);
        if (!c.closed && (fds[i].revents & POLLOUT)) Write(c);
      }
      const Clock::time_point now = Clock::now();
      for (Conn& c : conns_) {
        if (!c.closed && c.parked && c.has_deadline && now >= c.deadline) {
          c.parked = false;
          Reply(c, std::string(1, static_cast<char>(kTimedOut)));
          Process(c);
        }
      }
      conns_.remove_if([](const Conn& c) { return c.closed; });
      for (size_t i = 1; i < first; ++i) {
        if (fds[i].revents & POLLIN) Accept(fds[i].fd);
      }
    }
  }

  void Accept(int listen_fd) {
    for (;;) {
      const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == ECONNABORTED || errno == EINTR) continue;
        return;
      }
      if (conns_.size() >= kMaxConnections) {
        ::close(fd);
        continue;
      }
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      conns_.emplace_back();
      conns_.back().fd = fd;
    }
  }

  void Close(Conn& c) {
    ::close(c.fd);
    c.closed = true;
  }

  void Read(Conn& c) {
    char buffer[65536];
    for (;;) {
      const ssize_t n = ::recv(c.fd, buffer, sizeof(buffer), 0);
      if (n == 0) return Close(c);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return Close(c);
        break;
      }
      c.in.append(buffer, static_cast<size_t>(n));
      if (n < static_cast<ssize_t>(sizeof(buffer))) break;
    }
    Process(c);
  }

  void Write(Conn& c) {
    while (!c.out.empty()) {
      const ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) Close(c);
        return;
      }
      c.out.erase(0, static_cast<size_t>(n));
    }
  }

  void Reply(Conn& c, const std::string& payload) {
    PutU32(c.out, static_cast<uint32_t>(payload.size()));
    c.out += payload;
    Write(c);
  }

  // Handles the complete requests buffered on `c`, stopping at one that has to wait.
  void Process(Conn& c) {
    while (!c.closed && !c.parked && c.in.size() >= 4) {
      Reader header(c.in);
      const uint32_t size = header.U32();
      if (size > kMaxFrame) return Close(c);
      if (c.in.size() < 4 + size) return;
      const std::string payload = c.in.substr(4, size);
      c.in.erase(0, 4 + size);
      if (!Handle(c, payload)) return Close(c);  // a malformed request: not one of our clients
    }
  }

  bool Present(const std::vector<std::string>& keys) const {
    return std::all_of(keys.begin(), keys.end(), [&](const std::string& k) { return data_.count(k) > 0; });
  }

  // Answers the parked requests whose keys now exist (after a set, add or compareSet).
  void Unpark() {
    for (Conn& c : conns_) {
      if (c.closed || !c.parked || !Present(c.keys)) continue;
      c.parked = false;
      std::string reply(1, static_cast<char>(kOk));
      if (c.parked_op == kGet) PutString(reply, data_[c.keys[0]]);
      Reply(c, reply);
      Process(c);
    }
  }

  bool Handle(Conn& c, const std::string& payload) {
    Reader r(payload);
    const uint8_t op = r.U8();
    std::string reply(1, static_cast<char>(kOk));
    bool changed = false;
    switch (op) {
      case kSet: {
        std::string key = r.String(), value = r.String();
        if (!r.ok()) return false;
        data_[std::move(key)] = std::move(value);
        changed = true;
        break;
      }
      case kAdd: {
        const std::string key = r.String();
        const int64_t delta = r.I64();
        if (!r.ok()) return false;
        int64_t value = 0;
        if (auto it = data_.find(key); it != data_.end() && !absl::SimpleAtoi(it->second, &value)) value = 0;
        value += delta;
        data_[key] = std::to_string(value);
        PutI64(reply, value);
        changed = true;
        break;
      }
      case kCompareSet: {
        const std::string key = r.String(), expected = r.String(), desired = r.String();
        if (!r.ok()) return false;
        auto it = data_.find(key);
        if (it == data_.end()) {
          if (expected.empty()) {
            data_[key] = desired;
            changed = true;
          }
          PutString(reply, expected.empty() ? desired : expected);
        } else {
          if (it->second == expected) {
            it->second = desired;
            changed = true;
          }
          PutString(reply, it->second);
        }
        break;
      }
      case kDelete: {
        const std::string key = r.String();
        if (!r.ok()) return false;
        reply.push_back(static_cast<char>(data_.erase(key) > 0 ? 1 : 0));
        break;
      }
      case kCheck: {
        const uint32_t n = r.U32();
        std::vector<std::string> keys;
        for (uint32_t i = 0; i < n && r.ok(); ++i) keys.push_back(r.String());
        if (!r.ok()) return false;
        reply.push_back(static_cast<char>(Present(keys) ? 1 : 0));
        break;
      }
      case kNumKeys:
        PutI64(reply, static_cast<int64_t>(data_.size()));
        break;
      case kGet:
      case kWait: {
        const int64_t wait_ms = r.I64();
        std::vector<std::string> keys;
        if (op == kGet) {
          keys.push_back(r.String());
        } else {
          const uint32_t n = r.U32();
          for (uint32_t i = 0; i < n && r.ok(); ++i) keys.push_back(r.String());
        }
        if (!r.ok()) return false;
        if (!Present(keys)) {
          c.parked = true;
          c.parked_op = op;
          c.keys = std::move(keys);
          c.has_deadline = wait_ms >= 0;
          if (c.has_deadline) c.deadline = Clock::now() + std::chrono::milliseconds(wait_ms);
          return r.done();
        }
        if (op == kGet) PutString(reply, data_[keys[0]]);
        break;
      }
      default:
        return false;
    }
    if (!r.done()) return false;
    Reply(c, reply);
    if (changed) Unpark();
    return true;
  }

  std::vector<int> listen_fds_;
  int wake_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::map<std::string, std::string> data_;  // touched by the server thread only
  std::list<Conn> conns_;

  friend class BoundStore;
  int BoundPort() const {
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    if (::getsockname(listen_fds_.front(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) return 0;
    if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  }
};

namespace {

// One connection attempt to any address of host:port; -1 when none accepted.
int ConnectOnce(const std::string& host, int port, std::string* error) {
  auto addresses = ResolveTcp(host, port);
  if (!addresses.ok()) {
    *error = std::string(addresses.status().message());
    return -1;
  }
  addrinfo* found = addresses->get();
  int fd = -1;
  for (addrinfo* ai = found; ai != nullptr && fd < 0; ai = ai->ai_next) {
    fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      *error = std::strerror(errno);
      ::close(fd);
      fd = -1;
    }
  }
  if (fd >= 0) {
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  return fd;
}

// Waits until `fd` is ready for `events` or `deadline` passes (nullopt: no deadline).
bool WaitReady(int fd, short events, const std::optional<Clock::time_point>& deadline) {
  for (;;) {
    int timeout = -1;
    if (deadline) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - Clock::now()).count();
      if (left <= 0) return false;
      timeout = static_cast<int>(std::min<int64_t>(left, 1 << 30));
    }
    pollfd p{fd, events, 0};
    const int rc = ::poll(&p, 1, timeout);
    if (rc > 0) return true;
    if (rc == 0) return false;
    if (errno != EINTR) return false;
  }
}

}  // namespace

absl::StatusOr<c10::intrusive_ptr<BoundStore>> BoundStore::Connect(const std::string& host, int port, bool serve,
                                                                  std::chrono::milliseconds timeout) {
  const std::string where = absl::StrCat(host, ":", port);
  if (port < (serve ? 0 : 1) || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("rendezvous store ", where, ": port not in 1..65535"));
  }
  const auto give_up = Clock::now() + timeout;
  std::shared_ptr<BoundStoreServer> server;
  if (serve) {
    auto started = BoundStoreServer::Start(host, port);
    while (absl::IsNotFound(started.status()) && Clock::now() + std::chrono::milliseconds(200) < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      started = BoundStoreServer::Start(host, port);
    }
    if (!started.ok()) return absl::UnavailableError(started.status().message());
    server = *std::move(started);
    port = server->BoundPort();
  }
  std::string error = "timed out";
  for (;;) {
    const int fd = ConnectOnce(host, port, &error);
    if (fd >= 0) return c10::make_intrusive<BoundStore>(fd, absl::StrCat(host, ":", port), std::move(server), timeout);
    // The server (rank 0) may not be up yet: retry until the timeout.
    if (Clock::now() + std::chrono::milliseconds(100) >= give_up) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return absl::UnavailableError(absl::StrCat("rendezvous store ", where, ": cannot connect within ",
                                             timeout.count() / 1000.0, " s: ", error));
}

BoundStore::BoundStore(int fd, std::string where, std::shared_ptr<BoundStoreServer> server,
                       std::chrono::milliseconds timeout)
    : c10d::Store(timeout), fd_(fd), where_(std::move(where)), server_(std::move(server)) {
  const size_t colon = where_.rfind(':');
  (void)absl::SimpleAtoi(where_.substr(colon + 1), &port_);
}

BoundStore::~BoundStore() { ::close(fd_); }

std::string BoundStore::Call(const std::string& request, int64_t wait_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  if (broken_) throw std::runtime_error(absl::StrCat("rendezvous store ", where_, ": connection lost"));
  // A reply that may wait for keys gets the server's deadline plus some slack; any other reply
  // is due at once, within the store's timeout.
  std::optional<Clock::time_point> deadline;
  if (wait_ms == kImmediate) {
    if (timeout_ != kNoTimeout) deadline = Clock::now() + timeout_;
  } else if (wait_ms >= 0) {
    deadline = Clock::now() + std::chrono::milliseconds(wait_ms) + kReplySlack;
  }
  auto fail = [&](const std::string& why) {
    broken_ = true;
    return std::runtime_error(absl::StrCat("rendezvous store ", where_, ": ", why));
  };
  std::string frame;
  PutU32(frame, static_cast<uint32_t>(request.size()));
  frame += request;
  for (size_t sent = 0; sent < frame.size();) {
    if (!WaitReady(fd_, POLLOUT, deadline)) throw fail("timed out sending a request");
    const ssize_t n = ::send(fd_, frame.data() + sent, frame.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw fail(absl::StrCat("connection lost: ", std::strerror(errno)));
    sent += static_cast<size_t>(n);
  }
  std::string in;
  auto read_exactly = [&](size_t want) {
    while (in.size() < want) {
      if (!WaitReady(fd_, POLLIN, deadline)) throw fail("timed out waiting for the server");
      char buffer[65536];
      const ssize_t n = ::recv(fd_, buffer, std::min(sizeof(buffer), want - in.size()), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw fail(n == 0 ? "the server closed the connection" : std::strerror(errno));
      in.append(buffer, static_cast<size_t>(n));
    }
  };
  read_exactly(4);
  Reader header(in);
  const uint32_t size = header.U32();
  if (size == 0 || size > kMaxFrame) throw fail("malformed reply");
  in.clear();
  read_exactly(size);
  return in;
}

namespace {

// The data of an ok reply; throws on a timeout.
std::string Expect(const std::string& reply, const std::string& where, const std::string& what) {
  if (static_cast<uint8_t>(reply[0]) == kTimedOut) {
    throw std::runtime_error(absl::StrCat("rendezvous store ", where, ": timed out waiting for ", what));
  }
  return reply.substr(1);
}

std::string KeyList(const std::vector<std::string>& keys) {
  return keys.size() == 1 ? keys[0] : absl::StrCat(keys.size(), " keys (", absl::StrJoin(keys, ", "), ")");
}

}  // namespace

void BoundStore::set(const std::string& key, const std::vector<uint8_t>& value) {
  std::string request(1, static_cast<char>(kSet));
  PutString(request, key);
  PutString(request, Str(value));
  Call(request, kImmediate);
}

std::vector<uint8_t> BoundStore::compareSet(const std::string& key, const std::vector<uint8_t>& expected,
                                            const std::vector<uint8_t>& desired) {
  std::string request(1, static_cast<char>(kCompareSet));
  PutString(request, key);
  PutString(request, Str(expected));
  PutString(request, Str(desired));
  const std::string data = Expect(Call(request, kImmediate), where_, key);
  Reader r(data);
  const std::string value = r.String();
  if (!r.ok()) throw std::runtime_error(absl::StrCat("rendezvous store ", where_, ": malformed reply"));
  return Bytes(value);
}

std::vector<uint8_t> BoundStore::get(const std::string& key) {
  std::string request(1, static_cast<char>(kGet));
  const int64_t wait_ms = Millis(timeout_);
  PutI64(request, wait_ms);
  PutString(request, key);
  const std::string data = Expect(Call(request, wait_ms), where_, key);
  Reader r(data);
  const std::string value = r.String();
  if (!r.ok()) throw std::runtime_error(absl::StrCat("rendezvous store ", where_, ": malformed reply"));
  return Bytes(value);
}

int64_t BoundStore::add(const std::string& key, int64_t value) {
  std::string request(1, static_cast<char>(kAdd));
  PutString(request, key);
  PutI64(request, value);
  const std::string data = Expect(Call(request, kImmediate), where_, key);
  Reader r(data);
  const int64_t sum = r.I64();
  if (!r.ok()) throw std::runtime_error(absl::StrCat("rendezvous store ", where_, ": malformed reply"));
  return sum;
}

bool BoundStore::deleteKey(const std::string& key) {
  std::string request(1, static_cast<char>(kDelete));
  PutString(request, key);
  const std::string data = Expect(Call(request, kImmediate), where_, key);
  return !data.empty() && data[0] == 1;
}

bool BoundStore::check(const std::vector<std::string>& keys) {
  std::string request(1, static_cast<char>(kCheck));
  PutU32(request, static_cast<uint32_t>(keys.size()));
  for (const auto& k : keys) PutString(request, k);
  const std::string data = Expect(Call(request, kImmediate), where_, KeyList(keys));
  return !data.empty() && data[0] == 1;
}

int64_t BoundStore::getNumKeys() {
  const std::string data = Expect(Call(std::string(1, static_cast<char>(kNumKeys)), kImmediate), where_, "the key count");
  Reader r(data);
  const int64_t n = r.I64();
  if (!r.ok()) throw std::runtime_error(absl::StrCat("rendezvous store ", where_, ": malformed reply"));
  return n;
}

void BoundStore::wait(const std::vector<std::string>& keys) { wait(keys, timeout_); }

void BoundStore::wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) {
  std::string request(1, static_cast<char>(kWait));
  const int64_t wait_ms = Millis(timeout);
  PutI64(request, wait_ms);
  PutU32(request, static_cast<uint32_t>(keys.size()));
  for (const auto& k : keys) PutString(request, k);
  Expect(Call(request, wait_ms), where_, KeyList(keys));
}

}  // namespace saegrid
