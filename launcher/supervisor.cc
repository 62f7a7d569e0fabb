#include "launcher/supervisor.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>

#include "launcher/line_prefixer.h"
#include "runtime/base/check.h"

namespace terra::launcher {
namespace {

using Clock = std::chrono::steady_clock;

// The self-pipe that turns signals and cross-thread events into poll() input.
int g_wake_write_fd = -1;

void OnSignal(int signo) {
  int saved = errno;
  unsigned char byte = static_cast<unsigned char>(signo);
  if (g_wake_write_fd >= 0) {
    ssize_t ignored = ::write(g_wake_write_fd, &byte, 1);
    (void)ignored;
  }
  errno = saved;
}

void WriteAll(int fd, const std::string& text) {
  const char* data = text.data();
  size_t left = text.size();
  while (left > 0) {
    ssize_t n = ::write(fd, data, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // the terminal went away; nothing sensible to do
    }
    data += n;
    left -= static_cast<size_t>(n);
  }
}

void SetNonBlocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

std::string SignalName(int signo) {
  const char* abbrev = sigabbrev_np(signo);
  return abbrev ? StrCat("SIG", abbrev) : StrCat("signal ", signo);
}

// Marks the byte posted by ReportRankLost, distinct from any signal number.
constexpr unsigned char kEventByte = 0;

struct Stream {
  int fd = -1;
  int target_fd = STDOUT_FILENO;
  LinePrefixer prefixer{""};
};

struct Child {
  ChildSpec spec;
  pid_t pid = -1;
  bool exited = false;
  int wait_status = 0;
  Stream out;
  Stream err;
};

}  // namespace

std::string DescribeWaitStatus(int wait_status) {
  if (WIFEXITED(wait_status)) return StrCat("exited with code ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) {
    int signo = WTERMSIG(wait_status);
    return StrCat("was killed by signal ", signo, " (", SignalName(signo), ")");
  }
  return StrCat("ended with wait status ", wait_status);
}

int ExitCodeOfWaitStatus(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return 1;
}

class Supervisor::Impl {
 public:
  explicit Impl(SupervisorOptions options) : options_(options) {
    int fds[2];
    TERRA_CHECK(::pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0, "terrarun: pipe failed: ", std::strerror(errno));
    wake_read_fd_ = fds[0];
    wake_write_fd_ = fds[1];
    g_wake_write_fd = wake_write_fd_;
    struct sigaction action {};
    action.sa_handler = OnSignal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    for (int signo : {SIGCHLD, SIGINT, SIGTERM, SIGHUP}) ::sigaction(signo, &action, nullptr);
    ::signal(SIGPIPE, SIG_IGN);
  }

  ~Impl() {
    for (int signo : {SIGCHLD, SIGINT, SIGTERM, SIGHUP}) ::signal(signo, SIG_DFL);
    g_wake_write_fd = -1;
    ::close(wake_read_fd_);
    ::close(wake_write_fd_);
  }

  void Start(std::vector<ChildSpec> specs) {
    for (auto& spec : specs) {
      Child child;
      child.spec = std::move(spec);
      try {
        Spawn(&child);
      } catch (...) {
        StopAll(SIGKILL);
        ReapBlocking();
        throw;
      }
      children_.push_back(std::move(child));
    }
  }

  int Run() {
    while (true) {
      ReapExited();
      HandleEvents();
      if (stopping_ && Clock::now() >= kill_deadline_ && !killed_) {
        StopAll(SIGKILL);
        killed_ = true;
      }
      bool all_exited = true;
      for (const auto& c : children_) all_exited = all_exited && c.exited;
      if (all_exited) {
        DrainOutputs(Clock::now() + std::chrono::seconds(1));
        break;
      }
      PollOnce(std::chrono::milliseconds(100));
    }
    if (options_.verbose && !failure_) {
      WriteAll(STDERR_FILENO, StrCat("terrarun: all ", children_.size(), " processes finished\n"));
    }
    return failure_ ? failure_->exit_code : 0;
  }

  void ReportRankLost(const comm::control::RankLostEvent& event) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      lost_.push_back(event);
    }
    unsigned char byte = kEventByte;
    ssize_t ignored = ::write(wake_write_fd_, &byte, 1);
    (void)ignored;
  }

 private:
  struct Failure {
    int exit_code = 1;
  };

  void Spawn(Child* child) {
    int out[2], err[2], exec_error[2];
    TERRA_CHECK(::pipe2(out, O_CLOEXEC) == 0 && ::pipe2(err, O_CLOEXEC) == 0 &&
                    ::pipe2(exec_error, O_CLOEXEC) == 0,
                "terrarun: pipe failed: ", std::strerror(errno));
    // Everything the child needs is built before fork: after it, only
    // async-signal-safe calls.
    std::vector<char*> argv, envp;
    for (auto& a : child->spec.argv) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : child->spec.env) envp.push_back(e.data());
    envp.push_back(nullptr);
    pid_t parent = ::getpid();

    pid_t pid = ::fork();
    TERRA_CHECK(pid >= 0, "terrarun: fork failed: ", std::strerror(errno));
    if (pid == 0) {
      ::setpgid(0, 0);
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      for (int signo : {SIGCHLD, SIGINT, SIGTERM, SIGHUP, SIGPIPE}) ::signal(signo, SIG_DFL);
      int devnull = ::open("/dev/null", O_RDONLY);
      ::dup2(devnull, STDIN_FILENO);
      ::dup2(out[1], STDOUT_FILENO);
      ::dup2(err[1], STDERR_FILENO);
      ::execvpe(argv[0], argv.data(), envp.data());
      int code = errno;
      ssize_t ignored = ::write(exec_error[1], &code, sizeof(code));
      (void)ignored;
      ::_exit(127);
    }
    ::setpgid(pid, pid);  // also in the parent, so signals cannot race the child's own call
    ::close(out[1]);
    ::close(err[1]);
    ::close(exec_error[1]);
    int code = 0;
    ssize_t n;
    do {
      n = ::read(exec_error[0], &code, sizeof(code));
    } while (n < 0 && errno == EINTR);
    ::close(exec_error[0]);
    if (n == static_cast<ssize_t>(sizeof(code))) {
      ::close(out[0]);
      ::close(err[0]);
      int status = 0;
      ::waitpid(pid, &status, 0);
      TERRA_CHECK(false, "cannot run '", child->spec.argv[0], "': ", std::strerror(code),
                  code == ENOENT ? " (is it installed and on PATH?)" : "");
    }
    child->pid = pid;
    SetNonBlocking(out[0]);
    SetNonBlocking(err[0]);
    child->out = Stream{out[0], STDOUT_FILENO, LinePrefixer(child->spec.output_prefix)};
    child->err = Stream{err[0], STDERR_FILENO, LinePrefixer(child->spec.output_prefix)};
  }

  void PollOnce(std::chrono::milliseconds timeout) {
    std::vector<pollfd> fds;
    std::vector<Stream*> streams;
    fds.push_back({wake_read_fd_, POLLIN, 0});
    for (auto& c : children_) {
      for (Stream* s : {&c.out, &c.err}) {
        if (s->fd < 0) continue;
        fds.push_back({s->fd, POLLIN, 0});
        streams.push_back(s);
      }
    }
    int ready = ::poll(fds.data(), fds.size(), static_cast<int>(timeout.count()));
    if (ready <= 0) return;
    if (fds[0].revents & POLLIN) ReadWakeups();
    for (size_t i = 1; i < fds.size(); ++i) {
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) ReadStream(streams[i - 1]);
    }
  }

  // Reads what is available; closes the stream at end of file.
  void ReadStream(Stream* s) {
    char buffer[65536];
    while (true) {
      ssize_t n = ::read(s->fd, buffer, sizeof(buffer));
      if (n > 0) {
        WriteAll(s->target_fd, s->prefixer.Feed(std::string_view(buffer, static_cast<size_t>(n))));
        continue;
      }
      if (n < 0 && (errno == EINTR)) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      WriteAll(s->target_fd, s->prefixer.Flush());
      ::close(s->fd);
      s->fd = -1;
      return;
    }
  }

  // After every child exited: read what is left, but do not wait forever for
  // a grandchild that kept a pipe open.
  void DrainOutputs(Clock::time_point deadline) {
    while (Clock::now() < deadline) {
      bool open = false;
      for (auto& c : children_) open = open || c.out.fd >= 0 || c.err.fd >= 0;
      if (!open) return;
      PollOnce(std::chrono::milliseconds(50));
    }
    for (auto& c : children_) {
      for (Stream* s : {&c.out, &c.err}) {
        if (s->fd < 0) continue;
        WriteAll(s->target_fd, s->prefixer.Flush());
        ::close(s->fd);
        s->fd = -1;
      }
    }
  }

  void ReadWakeups() {
    unsigned char bytes[64];
    ssize_t n;
    while ((n = ::read(wake_read_fd_, bytes, sizeof(bytes))) > 0) {
      for (ssize_t i = 0; i < n; ++i) {
        int signo = bytes[i];
        if (signo == SIGINT || signo == SIGTERM || signo == SIGHUP) OnUserSignal(signo);
      }
    }
  }

  void OnUserSignal(int signo) {
    if (stopping_) {
      // A second signal: stop waiting.
      StopAll(SIGKILL);
      killed_ = true;
      return;
    }
    WriteAll(STDERR_FILENO, StrCat("terrarun: received ", SignalName(signo), ", forwarding it to ",
                                   RunningCount(), " processes\n"));
    failure_ = Failure{128 + signo};
    BeginStop(signo);
  }

  void HandleEvents() {
    std::deque<comm::control::RankLostEvent> events;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      events.swap(lost_);
    }
    for (const auto& event : events) {
      Child* child = FindByRank(event.rank);
      if (child != nullptr && child->exited) continue;  // its exit status already told the story
      // Under mpirun one child stands for every rank: name the rank, not mpirun.
      bool own_process = child != nullptr && child->spec.rank == event.rank;
      std::string who = own_process ? StrCat(child->spec.label, " (pid ", child->pid, ")")
                                    : StrCat("rank ", event.rank);
      std::string cause;
      int exit_code = 1;
      if (event.reason == comm::control::RankLostReason::kHeartbeatTimeout) {
        cause = StrCat("sent no heartbeat for ", event.silent_for.count() / 1000.0,
                       " s: it is hung or stopped");
        exit_code = kExitRankHung;
      } else {
        // The process may be exiting right now; prefer its exit status.
        if (own_process && WaitBriefly(child)) continue;
        cause = "closed its connection to the control plane without saying goodbye";
      }
      Fail(who, cause, exit_code);
    }
  }

  // Waits up to 1 s for the child to exit (its status is then reported by ReapExited).
  bool WaitBriefly(Child* child) {
    auto deadline = Clock::now() + std::chrono::seconds(1);
    while (Clock::now() < deadline) {
      int status = 0;
      if (::waitpid(child->pid, &status, WNOHANG) == child->pid) {
        OnExit(child, status);
        return true;
      }
      ::usleep(10000);
    }
    return false;
  }

  void ReapExited() {
    for (auto& c : children_) {
      if (c.exited) continue;
      int status = 0;
      pid_t r = ::waitpid(c.pid, &status, WNOHANG);
      if (r == c.pid) OnExit(&c, status);
    }
  }

  void ReapBlocking() {
    for (auto& c : children_) {
      if (c.exited || c.pid < 0) continue;
      int status = 0;
      ::waitpid(c.pid, &status, 0);
      c.exited = true;
    }
  }

  void OnExit(Child* child, int status) {
    child->exited = true;
    child->wait_status = status;
    if (status == 0 || stopping_) return;
    Fail(StrCat(child->spec.label, " (pid ", child->pid, ")"), DescribeWaitStatus(status),
         ExitCodeOfWaitStatus(status));
  }

  void Fail(const std::string& who, const std::string& cause, int exit_code) {
    if (stopping_) return;
    int others = RunningCount();
    std::string tail = others > 0 ? StrCat("; stopping the other ", others, " process",
                                           others == 1 ? "" : "es")
                                  : "";
    WriteAll(STDERR_FILENO, StrCat("terrarun: ", who, " ", cause, tail, "\n"));
    failure_ = Failure{exit_code};
    BeginStop(SIGTERM);
  }

  void BeginStop(int signo) {
    stopping_ = true;
    kill_deadline_ = Clock::now() + options_.kill_grace;
    StopAll(signo);
  }

  void StopAll(int signo) {
    for (auto& c : children_) {
      if (c.exited || c.pid <= 0) continue;
      ::kill(-c.pid, signo);
      if (signo != SIGKILL) ::kill(-c.pid, SIGCONT);
    }
  }

  int RunningCount() const {
    int n = 0;
    for (const auto& c : children_) n += c.exited ? 0 : 1;
    return n;
  }

  Child* FindByRank(int64_t rank) {
    for (auto& c : children_) {
      if (c.spec.rank == rank) return &c;
    }
    // Under mpirun one child stands for every rank.
    for (auto& c : children_) {
      if (c.spec.rank < 0) return &c;
    }
    return nullptr;
  }

  SupervisorOptions options_;
  int wake_read_fd_ = -1;
  int wake_write_fd_ = -1;
  std::vector<Child> children_;
  std::mutex mutex_;
  std::deque<comm::control::RankLostEvent> lost_;
  bool stopping_ = false;
  bool killed_ = false;
  Clock::time_point kill_deadline_{};
  std::optional<Failure> failure_;
};

Supervisor::Supervisor(SupervisorOptions options) : impl_(std::make_unique<Impl>(options)) {}
Supervisor::~Supervisor() = default;
void Supervisor::Start(std::vector<ChildSpec> children) { impl_->Start(std::move(children)); }
int Supervisor::Run() { return impl_->Run(); }
void Supervisor::ReportRankLost(const comm::control::RankLostEvent& event) {
  impl_->ReportRankLost(event);
}

}  // namespace terra::launcher
