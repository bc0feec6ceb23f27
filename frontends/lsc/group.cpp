// group.cpp — the environment, the id exchange (IPv4 TCP) and the process launcher of
// `lsc train --gpus N` (group.h).
#include "frontends/lsc/group.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <set>
#include <thread>

#include "compiler/errors.h"

namespace lightseq::lsc {

namespace {

using Clock = std::chrono::steady_clock;

// "RANK=3" as an integer in [lo, hi]; throws naming the variable.
int int_var(const std::function<const char*(const char*)>& get, const char* name, int lo, int hi,
            const char* what) {
  const char* v = get(name);
  if (!v) {
    throw Error(fmt::format(
        "{} is not set, but WORLD_SIZE is: a process of a group needs RANK, LOCAL_RANK, "
        "WORLD_SIZE, MASTER_ADDR and MASTER_PORT (torchrun sets them; `lsc train --gpus N` too)",
        name));
  }
  int x = 0;
  const char* end = v + std::strlen(v);
  const auto [p, ec] = std::from_chars(v, end, x);
  if (ec != std::errc() || p != end || *v == '\0' || x < lo || x > hi) {
    throw Error(fmt::format("{}={}: must be {}, an integer in [{}, {}]", name, v, what, lo, hi));
  }
  return x;
}

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

int ms_left(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return static_cast<int>(std::max<int64_t>(0, left.count()));
}

// Waits until `fd` is ready for `events` or the deadline passes (false).
bool wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, ms_left(deadline));
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) return false;
  }
}

bool io_full(int fd, char* buf, size_t n, bool write, Clock::time_point deadline) {
  size_t done = 0;
  while (done < n) {
    if (!wait_fd(fd, write ? POLLOUT : POLLIN, deadline)) return false;
    const ssize_t r = write ? ::send(fd, buf + done, n - done, MSG_NOSIGNAL)
                            : ::recv(fd, buf + done, n - done, 0);
    if (r > 0) {
      done += static_cast<size_t>(r);
    } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
      return false;
    }
  }
  return true;
}

constexpr char kMagic[4] = {'L', 'S', 'Q', 'G'};

sockaddr_in resolve(const GroupEnv& env) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int r = ::getaddrinfo(env.addr.c_str(), nullptr, &hints, &res);
  if (r != 0 || !res) {
    throw Error(
        fmt::format("MASTER_ADDR={}: cannot resolve it ({}): give rank 0's IPv4 address "
                    "or host name",
                    env.addr, ::gai_strerror(r)));
  }
  sockaddr_in a;
  std::memcpy(&a, res->ai_addr, sizeof(a));
  ::freeaddrinfo(res);
  a.sin_port = htons(static_cast<uint16_t>(env.port));
  return a;
}

CommId serve(const GroupEnv& env, const CommId& id, Clock::time_point deadline) {
  Fd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (s.get() < 0) throw Error(fmt::format("rank 0: socket(): {}", std::strerror(errno)));
  const int one = 1;
  ::setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  a.sin_port = htons(static_cast<uint16_t>(env.port));
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::listen(s.get(), env.world) != 0) {
    throw Error(fmt::format(
        "rank 0 cannot listen on port {} (MASTER_PORT): {}; give a free port (another run may "
        "hold this one)",
        env.port, std::strerror(errno)));
  }
  std::set<int> served;
  char reply[sizeof(kMagic) + CommId::kBytes];
  std::memcpy(reply, kMagic, sizeof(kMagic));
  std::memcpy(reply + sizeof(kMagic), id.bytes.data(), CommId::kBytes);
  while (static_cast<int>(served.size()) < env.world - 1) {
    if (!wait_fd(s.get(), POLLIN, deadline)) {
      throw Error(fmt::format(
          "rank 0: {} of the {} other ranks did not connect to port {} in time: were they "
          "started, with MASTER_ADDR naming this host and MASTER_PORT={}?",
          env.world - 1 - static_cast<int>(served.size()), env.world - 1, env.port, env.port));
    }
    Fd c(::accept4(s.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (c.get() < 0) continue;
    // A peer has a few seconds to say who it is; anything else that connects is dropped.
    const Clock::time_point hello_by = std::min(deadline, Clock::now() + std::chrono::seconds(5));
    char hello[sizeof(kMagic) + 4];
    if (!io_full(c.get(), hello, sizeof(hello), false, hello_by) ||
        std::memcmp(hello, kMagic, sizeof(kMagic)) != 0) {
      continue;
    }
    int32_t rank = 0;
    std::memcpy(&rank, hello + sizeof(kMagic), 4);
    if (rank < 1 || rank >= env.world || served.count(rank)) continue;
    if (io_full(c.get(), reply, sizeof(reply), true, hello_by)) served.insert(rank);
  }
  return id;
}

CommId fetch(const GroupEnv& env, Clock::time_point deadline) {
  const sockaddr_in a = resolve(env);
  std::string last = "no answer";
  while (Clock::now() < deadline) {
    Fd c(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (c.get() < 0)
      throw Error(fmt::format("rank {}: socket(): {}", env.rank, std::strerror(errno)));
    int r = ::connect(c.get(), reinterpret_cast<const sockaddr*>(&a), sizeof(a));
    if (r != 0 && errno == EINPROGRESS) {
      const Clock::time_point by = std::min(deadline, Clock::now() + std::chrono::seconds(2));
      int err = ETIMEDOUT;
      socklen_t len = sizeof(err);
      if (wait_fd(c.get(), POLLOUT, by)) ::getsockopt(c.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      r = err == 0 ? 0 : -1;
      errno = err;
    }
    if (r == 0) {
      char hello[sizeof(kMagic) + 4];
      const int32_t rank = env.rank;
      std::memcpy(hello, kMagic, sizeof(kMagic));
      std::memcpy(hello + sizeof(kMagic), &rank, 4);
      char reply[sizeof(kMagic) + CommId::kBytes];
      if (io_full(c.get(), hello, sizeof(hello), true, deadline) &&
          io_full(c.get(), reply, sizeof(reply), false, deadline) &&
          std::memcmp(reply, kMagic, sizeof(kMagic)) == 0) {
        CommId id;
        std::memcpy(id.bytes.data(), reply + sizeof(kMagic), CommId::kBytes);
        return id;
      }
      last = "the connection closed before the id came";
    } else {
      last = std::strerror(errno);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // rank 0 may not listen yet
  }
  throw Error(fmt::format(
      "rank {}: could not get the group's id from rank 0 at {}:{} (MASTER_ADDR:MASTER_PORT) in "
      "time: {}; is rank 0 running, and reachable there?",
      env.rank, env.addr, env.port, last));
}

}  // namespace

std::optional<GroupEnv> group_env(const std::function<const char*(const char*)>& get) {
  if (!get("WORLD_SIZE")) return std::nullopt;
  GroupEnv e;
  e.world = int_var(get, "WORLD_SIZE", 1, 1 << 20, "the number of processes");
  e.rank = int_var(get, "RANK", 0, e.world - 1, "this process's rank, below WORLD_SIZE");
  e.local_rank = int_var(get, "LOCAL_RANK", 0, 1 << 16, "this process's GPU on its host");
  // torchrun's agent serves its own store at MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE, PyTorch
  // 2.4 and later): under torchrun (TORCHELASTIC_RUN_ID set) rank 0 listens on the port after it.
  // LIGHTSEQ_GROUP_PORT names another.
  if (get("LIGHTSEQ_GROUP_PORT")) {
    e.port = int_var(get, "LIGHTSEQ_GROUP_PORT", 1, 65535, "the TCP port rank 0 serves the id on");
  } else {
    const bool torchrun = get("TORCHELASTIC_RUN_ID") != nullptr;
    e.port = int_var(get, "MASTER_PORT", 1, torchrun ? 65534 : 65535, "rank 0's TCP port") +
             (torchrun ? 1 : 0);
  }
  const char* addr = get("MASTER_ADDR");
  if (!addr || !*addr) {
    throw Error(
        "MASTER_ADDR is not set, but WORLD_SIZE is: set it to rank 0's address (torchrun and "
        "`lsc train --gpus N` do)");
  }
  e.addr = addr;
  return e;
}

CommId exchange_id(const GroupEnv& env, const std::function<CommId()>& make_id,
                   std::chrono::milliseconds timeout) {
  const Clock::time_point deadline = Clock::now() + timeout;
  if (env.rank == 0) {
    const CommId id = make_id();
    return env.world > 1 ? serve(env, id, deadline) : id;
  }
  return fetch(env, deadline);
}

int free_local_port() {
  Fd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (s.get() < 0 || ::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    throw Error(fmt::format("no free TCP port on 127.0.0.1: {}", std::strerror(errno)));
  }
  return ntohs(a.sin_port);
}

int run_group(int n, const std::string& program, const std::vector<std::string>& args,
              std::chrono::milliseconds grace) {
  const int port = free_local_port();
  static char nvls_off[] = "NCCL_NVLS_ENABLE=0";
  std::vector<pid_t> pids;
  auto stop_all = [&](int sig) {
    for (pid_t p : pids) {
      if (p > 0) ::kill(p, sig);
    }
  };
  for (int rank = 0; rank < n; ++rank) {
    std::vector<std::string> env_strings = {
        fmt::format("RANK={}", rank),    fmt::format("LOCAL_RANK={}", rank),
        fmt::format("WORLD_SIZE={}", n), fmt::format("LOCAL_WORLD_SIZE={}", n),
        "MASTER_ADDR=127.0.0.1",         fmt::format("MASTER_PORT={}", port)};
    // Everything the child needs is made before fork(): after it, only async-signal-safe calls.
    std::string prog = program;
    std::vector<std::string> copy = args;
    std::vector<char*> argv{prog.data()};
    for (std::string& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) {
      const std::string why = std::strerror(errno);
      stop_all(SIGKILL);
      for (pid_t p : pids) ::waitpid(p, nullptr, 0);
      throw Error(fmt::format("cannot start rank {} of {}: fork(): {}", rank, n, why));
    }
    if (pid == 0) {
      // The child: dies with the launcher; the group's variables; NVLink multicast off.
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != parent) ::_exit(127);
      for (std::string& kv : env_strings) ::putenv(kv.data());
      if (!std::getenv("NCCL_NVLS_ENABLE")) ::putenv(nvls_off);
      ::execv(prog.c_str(), argv.data());
      static const char kFailed[] = "lsc: a rank of the group could not be started (execv)\n";
      [[maybe_unused]] const ssize_t w = ::write(2, kFailed, sizeof(kFailed) - 1);
      ::_exit(127);
    }
    pids.push_back(pid);
  }
  int result = 0, running = n;
  bool stopping = false;
  Clock::time_point kill_at{};
  while (running > 0) {
    int status = 0;
    const pid_t p = ::waitpid(-1, &status, stopping ? WNOHANG : 0);
    if (p < 0 && errno == EINTR) continue;
    if (p < 0) break;
    if (p == 0) {  // stopping, nobody exited yet
      if (Clock::now() >= kill_at) stop_all(SIGKILL);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    for (pid_t& q : pids) {
      if (q == p) q = -1;
    }
    --running;
    const int code = WIFEXITED(status)     ? WEXITSTATUS(status)
                     : WIFSIGNALED(status) ? 128 + WTERMSIG(status)
                                           : 1;
    if (code != 0 && result == 0) {
      result = code;
      if (!stopping && running > 0) {
        stopping = true;
        kill_at = Clock::now() + grace;
        stop_all(SIGTERM);
      }
    }
  }
  return result;
}

}  // namespace lightseq::lsc
