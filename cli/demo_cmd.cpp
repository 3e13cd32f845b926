// ringattn demo: the main job of the README's first command, and the project's front door.
//  1. The CPU reference: random inputs in float64; naive attention is the reference; every other
//     path (blockwise, the ring in each layout, flash-decoding; forward and backward) is compared
//     with it and timed, and the causal ring schedule is drawn so each layout's balance shows.
//  2. The ring over MPI, when built with MPI: `mpirun -np 4 ringattn attention --impl mpi-ring`
//     on the same inputs (causal, zigzag, forward and backward), checked against naive attention.
//  3. The CUDA kernels on the same inputs (fp32 and bf16, forward and backward) when a GPU is
//     present; otherwise why not.
//  4. The simulator on a default scenario: a 1M-token causal layer on 8 H100s over NVLink in the
//     three layouts, a block-size sweep over InfiniBand, and timelines of both.
// Everything also goes into a report folder: report.md with tables, SVG pictures (timelines, the
// sweep) and a Chrome trace; each file is written whole or not at all.
#include <sys/stat.h>
#include <sys/wait.h>
#include <signal.h>
#include <spawn.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdarg>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>

#include "commands.hpp"
#ifdef RINGATTN_HAVE_CUDA_BUILD
#include "cuda_cmd.hpp"
#include "cuda_ring_cmd.hpp"
#include "ringattn/cuda/attention.hpp"
#endif
#include "ringattn/core/cost.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/core/npy.hpp"
#include "ringattn/reference/ring.hpp"
#include "ringattn/simulator/report.hpp"
#include "ringattn/simulator/svg.hpp"

extern char** environ;

namespace ringattn::cli {
namespace {

struct DemoArgs {
  std::int64_t batch = 1, seq = 1024, heads_q = 8, heads_kv = 2, dim = 64;
  int ranks = 4;
  std::uint64_t seed = 2024;
  double tolerance = 1e-12;
  std::string report_dir = "demo-report";
  bool mpi = true;
  int mpi_ranks = 4;
  double mpi_timeout_s = 120;
  std::string cluster = "h100-nvlink", ib_cluster = "h100-ib";
  std::int64_t sim_seq = 1 << 20;
  int sim_devices = 8;
};

Tensor<double> random_tensor(std::vector<std::int64_t> shape, std::mt19937_64& gen) {
  Tensor<double> t(std::move(shape));
  std::normal_distribution<double> normal(0.0, 1.0);
  for (double& x : t.values()) x = normal(gen);
  return t;
}

// max |a - b| (equal infinities count as 0) and ||a - b|| / ||b|| over finite entries.
std::pair<double, double> errors(const Tensor<double>& a, const Tensor<double>& b) {
  if (a.shape() != b.shape()) return {INFINITY, INFINITY};
  double max_abs = 0, num = 0, den = 0;
  for (std::int64_t i = 0; i < a.size(); ++i) {
    if (std::isinf(a[i]) || std::isinf(b[i])) {
      if (a[i] != b[i]) max_abs = INFINITY;
      continue;
    }
    const double d = a[i] - b[i];
    if (!(std::abs(d) <= max_abs)) max_abs = std::isnan(d) ? NAN : std::abs(d);
    num += d * d;
    den += b[i] * b[i];
  }
  return {max_abs, den > 0 ? std::sqrt(num / den) : std::sqrt(num)};
}

double seconds_of(const std::function<void()>& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

[[gnu::format(printf, 1, 2)]] std::string fmt(const char* f, ...) {
  char buf[2048];
  va_list args;
  va_start(args, f);
  const int n = std::vsnprintf(buf, sizeof buf, f, args);
  va_end(args);
  return n > 0 ? std::string(buf, std::min<std::size_t>(static_cast<std::size_t>(n), sizeof buf - 1)) : std::string();
}

// What the demo prints and what it writes into report.md, side by side.
class Report {
 public:
  void out(const std::string& text) {
    std::fputs(text.c_str(), stdout);
    std::fflush(stdout);
  }
  void md(const std::string& text) { md_ += text; }
  void both(const std::string& text) {
    out(text);
    md_ += text;
  }
  [[nodiscard]] const std::string& markdown() const { return md_; }
  void add_file(std::string name, std::string contents) { files_.emplace_back(std::move(name), std::move(contents)); }
  [[nodiscard]] const std::vector<std::pair<std::string, std::string>>& files() const { return files_; }

 private:
  std::string md_;
  std::vector<std::pair<std::string, std::string>> files_;
};

struct Row {
  std::string path;
  double max_abs = 0, rel = 0, ms = 0;
};

void report_rows(Report& rep, const char* title, const std::vector<Row>& rows) {
  rep.out(fmt("\n%s\n  %-34s %12s %12s %10s\n", title, "path", "max|err|", "rel. err", "time ms"));
  rep.md(fmt("\n**%s**\n\n| path | max abs error | relative error | time (ms) |\n|---|---:|---:|---:|\n", title));
  for (const Row& r : rows) {
    rep.out(fmt("  %-34s %12.2e %12.2e %10.1f\n", r.path.c_str(), r.max_abs, r.rel, r.ms));
    rep.md(fmt("| %s | %.2e | %.2e | %.1f |\n", r.path.c_str(), r.max_abs, r.rel, r.ms));
  }
}

// Causal work per rank and step, as a grid of visible-pair percentages of a full block.
void report_schedule(Report& rep, const AttentionShape& shape, Layout layout, int ranks) {
  const RingSchedule s = RingSchedule::for_shape(shape, layout, ranks, true);
  const double full = static_cast<double>(s.q_layout().max_shard_length()) *
                      static_cast<double>(s.kv_layout().max_shard_length());
  const std::string name(to_string(layout));
  std::string head = fmt("\n  %s: %% of a full block computed by each rank at each step (causal)\n          ", name.c_str());
  std::string mdh = fmt("\n*%s*\n\n| step |", name.c_str()), mds = "|---|";
  for (int r = 0; r < ranks; ++r) {
    head += fmt(" rank %-3d", r);
    mdh += fmt(" rank %d |", r);
    mds += "---:|";
  }
  rep.out(head + "\n");
  rep.md(mdh + "\n" + mds + "\n");
  double critical = 0, total = 0;
  for (int st = 0; st < s.steps(); ++st) {
    std::string line = fmt("    step %d", st), mdl = fmt("| %d |", st);
    double worst = 0;
    for (int r = 0; r < ranks; ++r) {
      const double pct = 100.0 * static_cast<double>(s.work(st, r).visible) / full;
      worst = std::max(worst, pct);
      total += pct;
      line += fmt(" %7.0f%%", pct);
      mdl += fmt(" %.0f%% |", pct);
    }
    critical += worst;
    rep.out(line + "\n");
    rep.md(mdl + "\n");
  }
  // Each step ends when its slowest rank does: the critical path is the sum of step maxima.
  // Perfect balance spreads the total work evenly over the N x N (rank, step) cells.
  const std::string cp = fmt("critical path: %.1f%% of a full block per step on average (perfect balance: %.1f%%)\n",
                             critical / ranks, total / (static_cast<double>(ranks) * ranks));
  rep.out("    " + cp);
  rep.md("\n" + cp);
}

// ---- 1. the CPU reference ------------------------------------------------------------------

struct Inputs {
  Tensor<double> q, k, v, dout;
};

bool reference_section(const DemoArgs& a, const AttentionShape& shape, const Inputs& in, Report& rep,
                        ref::ForwardResult<double>& causal_want, ref::Gradients<double>& causal_want_g) {
  rep.both(fmt("\n## 1. The CPU reference against naive attention\n\n"));
  rep.both(fmt("Random inputs in float64 (seed %llu), shape %s (GQA %lldx), %d virtual ranks; naive "
               "attention is the reference.\n",
               static_cast<unsigned long long>(a.seed), shape.to_string().c_str(),
               static_cast<long long>(shape.group_size()), a.ranks));
  bool ok = true;
  for (bool causal : {false, true}) {
    ref::AttentionOptions o;
    o.causal = causal;
    ref::ForwardResult<double> want;
    ref::Gradients<double> want_g;
    const double naive_ms = 1e3 * seconds_of([&] {
      want = ref::naive_forward(in.q, in.k, in.v, o);
      want_g = ref::naive_backward(in.q, in.k, in.v, want.out, want.lse, in.dout, o);
    });
    std::vector<Row> rows;
    auto add = [&](const std::string& name, const ref::ForwardResult<double>& got,
                   const ref::Gradients<double>* g, double ms) {
      auto [e_o, r_o] = errors(got.out, want.out);
      auto [e_l, r_l] = errors(got.lse, want.lse);
      double e = std::max(e_o, e_l), r = std::max(r_o, r_l);
      if (g) {
        for (auto [x, y] : {std::pair{&g->dq, &want_g.dq}, {&g->dk, &want_g.dk}, {&g->dv, &want_g.dv}}) {
          auto [ee, rr] = errors(*x, *y);
          e = std::max(e, ee);
          r = std::max(r, rr);
        }
      }
      ok = ok && e <= a.tolerance;
      rows.push_back({name, e, r, ms});
    };
    rows.push_back({"naive (reference) fwd+bwd", 0, 0, naive_ms});
    {
      ref::ForwardResult<double> f;
      ref::Gradients<double> g;
      const double ms = 1e3 * seconds_of([&] {
        f = ref::blockwise_forward(in.q, in.k, in.v, o);
        g = ref::blockwise_backward(in.q, in.k, in.v, f.out, f.lse, in.dout, o);
      });
      add("blockwise fwd+bwd", f, &g, ms);
    }
    for (Layout layout : all_layouts()) {
      ref::RingOptions ro;
      static_cast<ref::AttentionOptions&>(ro) = o;
      ro.layout = layout;
      ro.ranks = a.ranks;
      ref::ForwardResult<double> f;
      ref::Gradients<double> g;
      const double ms = 1e3 * seconds_of([&] {
        f = ref::ring_forward(in.q, in.k, in.v, ro);
        g = ref::ring_backward(in.q, in.k, in.v, f.out, f.lse, in.dout, ro);
      });
      add("ring " + std::string(to_string(layout)) + " x" + std::to_string(a.ranks) + " fwd+bwd", f, &g, ms);
    }
    {
      ref::ForwardResult<double> f;
      const double ms = 1e3 * seconds_of([&] { f = ref::decode_forward(in.q, in.k, in.v, 8, o); });
      add("flash-decoding, 8 splits (fwd)", f, nullptr, ms);
    }
    report_rows(rep, causal ? "causal" : "non-causal", rows);
    if (causal) {
      causal_want = std::move(want);
      causal_want_g = std::move(want_g);
    }
  }
  rep.both(fmt("\nThe causal ring schedule (core's RingSchedule, %d ranks): who computes how much when\n", a.ranks));
  for (Layout layout : all_layouts()) report_schedule(rep, shape, layout, a.ranks);
  rep.both(fmt("\nEvery path agrees with naive attention to %.0e (max abs, O, LSE, dQ, dK, dV): %s\n",
               a.tolerance, ok ? "yes" : "NO"));
  return ok;
}

// ---- 2. the ring over MPI ------------------------------------------------------------------

#ifdef RINGATTN_MPIEXEC
// Runs argv with extra environment variables, output to `log`, in its own process group; kills
// the group after `timeout_s`. Returns the exit status, or -1 on a timeout or a spawn failure
// (with `why` set).
int spawn_and_wait(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env,
                   const std::string& log, double timeout_s, std::string& why) {
  std::vector<std::string> env_store;
  for (char** e = environ; e && *e; ++e) env_store.emplace_back(*e);
  for (const std::string& kv : extra_env) {
    const std::string key = kv.substr(0, kv.find('=') + 1);
    bool set = false;
    for (const std::string& have : env_store) set = set || have.rfind(key, 0) == 0;
    if (!set) env_store.push_back(kv);  // the user's own setting wins
  }
  std::vector<char*> envp, args;
  for (std::string& s : env_store) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_store = argv;
  for (std::string& s : argv_store) args.push_back(s.data());
  args.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attr, 0);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, args[0], &actions, &attr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    why = "cannot start " + argv[0] + ": " + std::strerror(rc);
    return -1;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  int status = 0;
  for (;;) {
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (done < 0) {
      why = std::string("waitpid: ") + std::strerror(errno);
      return -1;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      kill(-pid, SIGKILL);
      waitpid(pid, &status, 0);
      why = fmt("mpirun did not finish within %.0f s and was stopped", timeout_s);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  why = fmt("mpirun was killed by signal %d", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  return -1;
}

std::string last_lines(const std::string& path, int n) {
  std::ifstream f(path);
  std::vector<std::string> lines;
  for (std::string l; std::getline(f, l);) lines.push_back(l);
  std::string out;
  for (std::size_t i = lines.size() > static_cast<std::size_t>(n) ? lines.size() - static_cast<std::size_t>(n) : 0;
       i < lines.size(); ++i) {
    out += "    " + lines[i] + "\n";
  }
  return out;
}
#endif

// 1 passed, 0 failed, -1 not run (with the reason reported).
int mpi_section(const DemoArgs& a, const Inputs& in, const ref::ForwardResult<double>& want,
                const ref::Gradients<double>& want_g, Report& rep) {
  rep.both("\n## 2. The ring over MPI\n\n");
#ifndef RINGATTN_MPIEXEC
  (void)a, (void)in, (void)want, (void)want_g;
  rep.both("Not run: this build has no MPI (configure found no MPI library; `apt-get install libopenmpi-dev "
           "openmpi-bin` and rebuild).\n");
  return -1;
#else
  if (!a.mpi) {
    rep.both("Not run (--no-mpi).\n");
    return -1;
  }
  const std::string mpirun = RINGATTN_MPIEXEC;
  if (access(mpirun.c_str(), X_OK) != 0) {
    rep.both("Not run: " + mpirun + " is not there any more.\n");
    return -1;
  }
  namespace fs = std::filesystem;
  std::string tmpl = (fs::temp_directory_path() / "ringattn-demo-XXXXXX").string();
  if (!mkdtemp(tmpl.data())) {
    rep.both("Not run: cannot create a temporary folder.\n");
    return -1;
  }
  const fs::path dir = tmpl;
  struct Cleanup {
    fs::path dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{dir};
  for (auto [name, t] : {std::pair{"q", &in.q}, {"k", &in.k}, {"v", &in.v}, {"dout", &in.dout}}) {
    save_npy((dir / (std::string(name) + ".npy")).string(), *t);
  }
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) {
    rep.both("Not run: cannot find this program's path.\n");
    return -1;
  }
  self[n] = '\0';
  auto file = [&](const char* name) { return (dir / name).string(); };
  const std::vector<std::string> argv = {
      mpirun, "-np", std::to_string(a.mpi_ranks), self, "attention", "--impl", "mpi-ring",
      "--layout", "zigzag", "--causal", "--timeout", "60",
      "--q", file("q.npy"), "--k", file("k.npy"), "--v", file("v.npy"), "--out", file("o.npy"),
      "--lse", file("lse.npy"), "--dout", file("dout.npy"), "--dq", file("dq.npy"), "--dk", file("dk.npy"),
      "--dv", file("dv.npy")};
  // Open MPI refuses root without these, and containers rarely allow its single-copy mechanism.
  std::vector<std::string> env = {"OMPI_MCA_rmaps_base_oversubscribe=1", "OMPI_MCA_btl_vader_single_copy_mechanism=none"};
  if (geteuid() == 0) {
    env.push_back("OMPI_ALLOW_RUN_AS_ROOT=1");
    env.push_back("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1");
  }
  rep.both(fmt("`mpirun -np %d ringattn attention --impl mpi-ring --layout zigzag --causal` with --dout "
               "(forward and backward), one process per rank, on the inputs of section 1:\n\n",
               a.mpi_ranks));
  std::string why;
  int rc = 0;
  const double s = seconds_of([&] { rc = spawn_and_wait(argv, env, file("mpirun.log"), a.mpi_timeout_s, why); });
  if (rc != 0) {
    rep.both(rc < 0 ? "FAILED: " + why + "\n" : fmt("FAILED: mpirun exited with %d; its last lines:\n", rc));
    rep.out(last_lines(file("mpirun.log"), 8));
    return 0;
  }
  bool ok = true;
  std::vector<Row> rows;
  for (auto [name, want_t] : {std::pair{"O", &want.out}, {"LSE", &want.lse}, {"dQ", &want_g.dq},
                              {"dK", &want_g.dk}, {"dV", &want_g.dv}}) {
    std::string lower = name;
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    const auto got = load_npy_as<double>(file((lower == "o" ? std::string("o") : lower).append(".npy").c_str()));
    const auto [e, r] = errors(got, *want_t);
    ok = ok && e <= a.tolerance;
    rows.push_back({std::string("mpi-ring zigzag x") + std::to_string(a.mpi_ranks) + ": " + name, e, r, 0});
  }
  rep.out(fmt("  %-34s %12s %12s\n", "output", "max|err|", "rel. err"));
  rep.md("| output | max abs error vs naive | relative error |\n|---|---:|---:|\n");
  for (const Row& r : rows) {
    rep.out(fmt("  %-34s %12.2e %12.2e\n", r.path.c_str(), r.max_abs, r.rel));
    rep.md(fmt("| %s | %.2e | %.2e |\n", r.path.c_str(), r.max_abs, r.rel));
  }
  rep.both(fmt("\nThe %d-process ring agrees with naive attention to %.0e: %s (%.1f s with start-up). "
               "docs/mpi-ring.md shows what overlap buys on a slow link.\n",
               a.mpi_ranks, a.tolerance, ok ? "yes" : "NO", s));
  return ok ? 1 : 0;
#endif
}

// ---- 3. CUDA -------------------------------------------------------------------------------

// 1 passed, 0 failed, -1 not run (with the reason reported).
int cuda_section(const DemoArgs& a, const Inputs& in, const ref::ForwardResult<double>& want,
                 const ref::Gradients<double>& want_g, Report& rep) {
  rep.both("\n## 3. CUDA\n\n");
#ifndef RINGATTN_HAVE_CUDA_BUILD
  (void)a, (void)in, (void)want, (void)want_g;
  rep.both("Not run: this build has no CUDA (configure found no nvcc, or RINGATTN_WITH_CUDA=OFF).\n");
  return -1;
#else
  std::string why;
  if (cuda::device_count(&why) == 0) {
    rep.both("Not run: no CUDA device (" + why + "). On a GPU machine this section runs the CUDA kernels "
             "and the CUDA ring (virtual ranks) on the inputs of section 1; `tutorials/10_cuda_vs_reference` and "
             "`scripts/gpu-check.sh` check them.\n");
    return -1;
  }
  // The causal forward and backward on the inputs of section 1, in float32 (tolerance of float32
  // accumulation) and in bf16 (inputs rounded to bf16: the error of bf16 inputs, about 1e-2).
  bool ok = true;
  rep.out(fmt("  %-34s %12s %12s\n", "path", "max|err|", "rel. err"));
  rep.md("| path (causal, forward and backward) | max abs error vs naive | relative error |\n|---|---:|---:|\n");
  for (const char* dtype : {"fp32", "bf16"}) {
    CudaOptions o;
    o.dtype = dtype;
    o.causal = true;
    const CudaAttentionResult<double> r = cuda_attention(in.q, in.k, in.v, &in.dout, o);
    double e = 0, rel = 0;
    for (auto [x, y] : {std::pair{&r.fwd.out, &want.out}, {&r.fwd.lse, &want.lse}, {&r.grads->dq, &want_g.dq},
                        {&r.grads->dk, &want_g.dk}, {&r.grads->dv, &want_g.dv}}) {
      const auto [ee, rr] = errors(*x, *y);
      e = std::max(e, ee);
      rel = std::max(rel, rr);
    }
    const bool pass = std::string(dtype) == "fp32" ? rel <= 1e-5 : rel <= 3e-2;
    ok = ok && pass;
    const std::string name = std::string("cuda ") + dtype + " (kernel auto)" + (pass ? "" : " FAILED");
    rep.out(fmt("  %-34s %12.2e %12.2e\n", name.c_str(), e, rel));
    rep.md(fmt("| %s | %.2e | %.2e |\n", name.c_str(), e, rel));
  }
  // The CUDA ring: the same inputs on a.ranks virtual ranks (zigzag, causal), forward and backward.
  for (const char* dtype : {"fp32", "bf16"}) {
    CudaRingOptions o;
    o.dtype = dtype;
    o.causal = true;
    o.layout = "zigzag";
    o.ranks = a.ranks;
    const CudaAttentionResult<double> r = cuda_ring_attention(in.q, in.k, in.v, &in.dout, o);
    double e = 0, rel = 0;
    for (auto [x, y] : {std::pair{&r.fwd.out, &want.out}, {&r.fwd.lse, &want.lse}, {&r.grads->dq, &want_g.dq},
                        {&r.grads->dk, &want_g.dk}, {&r.grads->dv, &want_g.dv}}) {
      const auto [ee, rr] = errors(*x, *y);
      e = std::max(e, ee);
      rel = std::max(rel, rr);
    }
    const bool pass = std::string(dtype) == "fp32" ? rel <= 1e-5 : rel <= 3e-2;
    ok = ok && pass;
    const std::string name = fmt("cuda-ring %s, %d ranks, zigzag", dtype, a.ranks) + (pass ? "" : " FAILED");
    rep.out(fmt("  %-34s %12.2e %12.2e\n", name.c_str(), e, rel));
    rep.md(fmt("| %s | %.2e | %.2e |\n", name.c_str(), e, rel));
  }
  rep.both(fmt("\nThe CUDA kernels and the CUDA ring agree with naive attention (relative error <= 1e-5 in fp32, "
               "<= 3e-2 in bf16): %s\n",
               ok ? "yes" : "NO"));
  return ok ? 1 : 0;
#endif
}

// ---- 4. the simulator ----------------------------------------------------------------------

std::string human_time(double s) {
  if (s >= 1) return fmt("%.3g s", s);
  if (s >= 1e-3) return fmt("%.3g ms", s * 1e3);
  return fmt("%.3g us", s * 1e6);
}

void sim_table_head(Report& rep) {
  rep.out(fmt("  %-26s %11s %11s %11s %9s %9s %10s\n", "run", "layer", "compute", "exposed", "overlap",
              "imbalance", "memory"));
  rep.md("| run | layer time | busiest compute | exposed comm | overlap efficiency | load imbalance | memory / device |\n"
         "|---|---:|---:|---:|---:|---:|---:|\n");
}

void sim_table_row(Report& rep, const std::string& name, const sim::SimResult& r) {
  rep.out(fmt("  %-26s %11s %11s %11s %8.1f%% %9.3f %7.1f GiB\n", name.c_str(), human_time(r.total_time_s).c_str(),
              human_time(r.compute_time_s).c_str(), human_time(r.exposed_comm_s).c_str(), 100 * r.overlap_efficiency,
              r.load_imbalance, r.peak_memory_bytes / 1073741824.0));
  rep.md(fmt("| %s | %s | %s | %s | %.1f%% | %.3f | %.1f GiB |\n", name.c_str(), human_time(r.total_time_s).c_str(),
             human_time(r.compute_time_s).c_str(), human_time(r.exposed_comm_s).c_str(), 100 * r.overlap_efficiency,
             r.load_imbalance, r.peak_memory_bytes / 1073741824.0));
}

bool simulator_section(const DemoArgs& a, Report& rep) {
  rep.both("\n## 4. The simulator\n\n");
  const sim::ClusterSpec nv = sim::load_cluster(a.cluster);
  const sim::ClusterSpec ib = sim::load_cluster(a.ib_cluster);
  sim::Workload w;
  w.seq_len = a.sim_seq;
  w.heads_q = 32;
  w.heads_kv = 8;
  w.head_dim = 128;
  w.dtype = sim::DType::BF16;
  w.causal = true;
  w.layout = Layout::Zigzag;
  w.pass = sim::Pass::ForwardBackward;
  const int n = a.sim_devices;
  w.validate(n);
  rep.both(fmt("One causal attention layer, forward and backward, bf16, 32 query heads, 8 K/V heads, head dim 128, "
               "%lld tokens on %d devices (%lld per device): %s.\n\n",
               static_cast<long long>(w.seq_len), n, static_cast<long long>(w.seq_len / n), nv.description.c_str()));

  // The three layouts, with the zigzag run's timeline and trace.
  sim_table_head(rep);
  bool ok = true;
  std::vector<sim::Span> spans;
  for (Layout layout : all_layouts()) {
    sim::Workload wl = w;
    wl.layout = layout;
    sim::SimOptions opt;
    if (layout == Layout::Zigzag) opt.on_span = [&](const sim::Span& s) { spans.push_back(s); };
    const sim::SimResult r = sim::simulate(nv, n, wl, opt);
    sim_table_row(rep, fmt("%s, %s", a.cluster.c_str(), std::string(to_string(layout)).c_str()), r);
    ok = ok && std::isfinite(r.total_time_s) && r.total_time_s >= r.compute_time_s;
  }
  sim::TimelineSvgOptions topt;
  topt.title = fmt("%s: %lld tokens on %d devices, causal zigzag, fwd+bwd", a.cluster.c_str(),
                   static_cast<long long>(w.seq_len), n);
  rep.add_file("timeline-nvlink.svg", sim::timeline_svg(spans, n, topt));
  {
    // The Chrome trace of the same run, streamed by the simulator's writer into the report folder.
    std::ostringstream trace_json;
    const std::string tmp = (std::filesystem::temp_directory_path() / fmt("ringattn-demo-trace-%d.json", getpid())).string();
    {
      sim::ChromeTraceWriter writer(tmp, nv, n);
      for (const sim::Span& s : spans) writer.add(s);
      writer.finish();
    }
    std::ifstream f(tmp);
    trace_json << f.rdbuf();
    std::remove(tmp.c_str());
    rep.add_file("trace-nvlink.json", trace_json.str());
  }
  rep.both("\nContiguous leaves the last rank with most of the causal work (imbalance near 2); striped and "
           "zigzag spread it evenly.\n");
  rep.md("\n![Timeline of the zigzag run](timeline-nvlink.svg)\n\n"
         "Each device has a compute row (forward kernels, merges, the backward pass) and a link row (K/V "
         "blocks out, then dK/dV partial sums). On NVLink the transfers hide behind the compute: the compute "
         "rows have no gaps. Open `trace-nvlink.json` in Perfetto (ui.perfetto.dev) or chrome://tracing to "
         "zoom in.\n");

  // Which block hides the transfers over InfiniBand: the paper's rule and the full simulation.
  double slowest = INFINITY;  // the slowest hop of the ring sets the pace
  for (int d = 0; d < n; ++d) slowest = std::min(slowest, ib.hop(d, n).bandwidth);
  const double fb = ib.device.peak_flops(w.dtype) / slowest;
  const double rule = fb * static_cast<double>(w.kv_heads()) / static_cast<double>(w.heads_q);
  sim::SweepOptions so;
  so.min_block = 256;
  so.max_block = 131072;
  const sim::SweepResult sw = sim::sweep(ib, n, w, sim::SweepKind::BlockSize, {}, so);
  rep.both(fmt("\nThe same layer over InfiniBand (%s): which block size c (tokens per device) hides the transfers?\n",
               ib.description.c_str()));
  rep.both(fmt("  The paper's rule: c >= F/B = %.3g FLOP/s / %.3g B/s = %.0f, times H_kv/H_q = %lld/%lld for "
               "grouped K/V: c >= %.0f.\n",
               ib.device.peak_flops(w.dtype), slowest, fb, static_cast<long long>(w.kv_heads()),
               static_cast<long long>(w.heads_q), rule));
  if (sw.recommended_block_size) {
    rep.both(fmt("  The full simulation (latency, launch overheads, kernel efficiency, causal halving, backward): "
                 "exposed communication <= 5%% from c = %lld on.\n\n",
                 static_cast<long long>(*sw.recommended_block_size)));
  } else {
    rep.both("  The full simulation: no block in the sweep hides the transfers to 5%.\n\n");
  }
  rep.out(fmt("  %-10s %11s %11s %9s\n", "block c", "layer", "exposed", "overlap"));
  rep.md("| block c | sequence | layer time | exposed comm | overlap efficiency |\n|---:|---:|---:|---:|---:|\n");
  for (const sim::SweepPoint& p : sw.points) {
    rep.out(fmt("  %-10lld %11s %11s %8.1f%%\n", static_cast<long long>(p.result.block_size),
                human_time(p.result.total_time_s).c_str(), human_time(p.result.exposed_comm_s).c_str(),
                100 * p.result.overlap_efficiency));
    rep.md(fmt("| %lld | %lld | %s | %s | %.1f%% |\n", static_cast<long long>(p.result.block_size),
               static_cast<long long>(p.result.seq_len), human_time(p.result.total_time_s).c_str(),
               human_time(p.result.exposed_comm_s).c_str(), 100 * p.result.overlap_efficiency));
  }
  sim::SweepSvgOptions sopt;
  sopt.title = fmt("%s, %d devices: overlap against block size (causal zigzag, fwd+bwd)", a.ib_cluster.c_str(), n);
  sopt.rule_block = rule;
  sopt.rule_label = "c = F/B x Hkv/Hq";
  rep.add_file("sweep-ib.svg", sim::sweep_svg(sw, sopt));
  rep.md("\n![Block-size sweep over InfiniBand](sweep-ib.svg)\n\n"
         "The paper's rule assumes kernels at peak and a non-causal forward; the causal zigzag step does half "
         "a block of work per message, and real kernels, latency and merges shift the curve, so the block that "
         "hides the transfers differs from the rule. At the smallest blocks fixed costs (launches, link latency) "
         "dominate both sides, so the curve is not monotone there. `ringattn simulate --sweep block-size` answers it for any "
         "cluster.\n");

  // A timeline below the recommended block over InfiniBand, where the waits show.
  const std::int64_t small_block =
      std::max<std::int64_t>(256, ((sw.recommended_block_size.value_or(4096) / 4) / 256) * 256);
  sim::Workload ws = w;
  ws.seq_len = small_block * n;
  std::vector<sim::Span> ib_spans;
  sim::SimOptions iopt;
  iopt.on_span = [&](const sim::Span& s) { ib_spans.push_back(s); };
  const sim::SimResult ri = sim::simulate(ib, n, ws, iopt);
  rep.both(fmt("\nBelow that block the compute waits: at c = %lld over InfiniBand, %.0f%% of the layer is exposed "
               "communication (the gaps in timeline-ib.svg).\n",
               static_cast<long long>(small_block), 100 * ri.exposed_fraction()));
  topt.title = fmt("%s: c = %lld tokens per device (%lld in all) on %d devices, causal zigzag, fwd+bwd",
                   a.ib_cluster.c_str(), static_cast<long long>(small_block), static_cast<long long>(ws.seq_len), n);
  rep.add_file("timeline-ib.svg", sim::timeline_svg(ib_spans, n, topt));
  rep.md("\n![Timeline below the recommended block over InfiniBand](timeline-ib.svg)\n");
  ok = ok && sw.recommended_block_size.has_value() && ri.exposed_comm_s > 0;
  return ok;
}

void write_report(const DemoArgs& a, Report& rep) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(a.report_dir, ec);
  require(!ec && fs::is_directory(a.report_dir), "cannot create the report folder ", a.report_dir,
          ec ? ": " + ec.message() : std::string());
  auto bytes = [](const std::string& s) { return std::as_bytes(std::span(s.data(), s.size())); };
  for (const auto& [name, contents] : rep.files()) write_file_atomic((fs::path(a.report_dir) / name).string(), bytes(contents));
  write_file_atomic((fs::path(a.report_dir) / "report.md").string(), bytes(rep.markdown()));
}

int run(const DemoArgs& a) {
  const AttentionShape shape{a.batch, a.seq, a.seq, a.heads_q, a.heads_kv, a.dim};
  shape.validate();
  require(a.mpi_ranks >= 1, "--mpi-ranks must be >= 1");
  // Fail on an unusable report folder before any work.
  require(!std::filesystem::exists(a.report_dir) || std::filesystem::is_directory(a.report_dir),
          "--report ", a.report_dir, " exists and is not a folder");
  std::mt19937_64 gen(a.seed);
  Inputs in{random_tensor({a.batch, a.seq, a.heads_q, a.dim}, gen), random_tensor({a.batch, a.seq, a.heads_kv, a.dim}, gen),
            random_tensor({a.batch, a.seq, a.heads_kv, a.dim}, gen), random_tensor({a.batch, a.seq, a.heads_q, a.dim}, gen)};
  Report rep;
  rep.out("ringattn demo: ring attention against the reference, then the simulator\n");
  rep.md("# ringattn demo report\n\nWritten by `ringattn demo`. Ring attention computes exact attention over a "
         "sequence split across devices: each keeps its queries, the key/value blocks travel around the ring, "
         "and partial results are merged with the log-sum-exp rule. Sections 1-3 check the implementations "
         "against naive attention; section 4 asks the simulator what a real cluster would do.\n");

  ref::ForwardResult<double> want;
  ref::Gradients<double> want_g;
  const bool ref_ok = reference_section(a, shape, in, rep, want, want_g);
  const int mpi = mpi_section(a, in, want, want_g, rep);
  const int gpu = cuda_section(a, in, want, want_g, rep);
  const bool sim_ok = simulator_section(a, rep);

  const bool ok = ref_ok && mpi != 0 && gpu != 0 && sim_ok;
  rep.both("\n## Where to go next\n\n"
           "- `tutorials/`: twelve small programs from a naive softmax to a simulated 1M-token cluster "
           "(`build/bin/tutorial_01_softmax --step`).\n"
           "- `ringattn attention --help`: any path on your own .npy files; `mpirun -np N ringattn attention "
           "--impl mpi-ring` across machines.\n"
           "- `ringattn simulate --help`: ask the simulator about your cluster (presets: `--list-presets`).\n"
           "- `docs/`: the derivations, the simulator's model and validation, and measured results.\n");
  rep.md(fmt("\nDisposition: %s\n", ok ? "Passed" : "Failed"));
  write_report(a, rep);
  std::printf("\nReport: %s/report.md (with timeline-nvlink.svg, timeline-ib.svg, sweep-ib.svg, trace-nvlink.json)\n",
              a.report_dir.c_str());
  std::printf("Disposition: %s\n", ok ? "Passed" : "Failed");
  return ok ? 0 : 1;
}

}  // namespace

Runner add_demo_command(CLI::App& app) {
  auto a = std::make_shared<DemoArgs>();
  CLI::App* cmd = app.add_subcommand(
      "demo", "Ring attention against the reference (CPU, MPI), then the simulator; writes a report folder");
  cmd->add_option("--seq-len", a->seq, "tokens S")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--heads", a->heads_q, "query heads H_q")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--kv-heads", a->heads_kv, "key/value heads H_kv")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--head-dim", a->dim, "head dim D")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--batch", a->batch, "batch B")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--ranks", a->ranks, "virtual ranks of the ring")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--seed", a->seed, "random seed")->capture_default_str();
  cmd->add_option("--report", a->report_dir, "folder for report.md, the pictures and the trace")->capture_default_str();
  cmd->add_flag("!--no-mpi", a->mpi, "skip the mpirun part");
  cmd->add_option("--mpi-ranks", a->mpi_ranks, "processes of the MPI ring")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--cluster", a->cluster, "simulator: the NVLink cluster (preset or JSON)")->capture_default_str();
  cmd->add_option("--ib-cluster", a->ib_cluster, "simulator: the cluster of the block-size sweep")->capture_default_str();
  cmd->add_option("--sim-seq-len", a->sim_seq, "simulator: tokens of the layer")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--sim-devices", a->sim_devices, "simulator: devices of the ring")->capture_default_str()->check(CLI::PositiveNumber);
  return [cmd, a] { return cmd->parsed() ? run(*a) : -1; };
}

}  // namespace ringattn::cli
