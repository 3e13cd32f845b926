/// @file bench_summary.cpp
/// @brief The two acceptance figures of the CPU reference, measured side by side in one process,
/// with a final OK / FAILED line (nccl-tests style):
///
///   1. speed   blockwise_forward GFLOP/s at S = 4096, D = 128 (float32, non-causal, B = H = 1)
///              divided by the Eigen matrix product ceiling measured in the same run; target >=
///              0.5.
///   2. memory  naive_forward peak heap / blockwise_forward peak heap at S = 16384, D = 128;
///              target >= 10.
///
/// The ceiling is the fastest of three single-threaded Eigen float32 GEMMs (a square 2048^3
/// product and the two products naive attention is made of at S = 4096, D = 128; see
/// bench_common.hpp): the strictest choice, never a flattering one. The timed calls are
/// interleaved (one GEMM of each shape, one blockwise, one naive, repeat) so a burst of load on
/// the machine hits all of them alike, and each figure is the median of the repetitions.
/// Peak heap is what the call allocated at its peak (outputs + workspace, inputs excluded; see
/// heap_tracker.hpp); it does not vary between runs, so it is measured once.
///
/// Usage: bench_summary [--reps=N] [--block_q=Br] [--block_kv=Bc] [--sweep=1] [--skip_memory=1]
///   --reps      timed repetitions of each S = 4096 measurement (default 9, after one warm-up)
///   --sweep=1   also time blockwise at S = 4096, D = 128 over a grid of (Br, Bc) tiles
/// Exit status 0 when both targets are met, 1 otherwise.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <exception>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "ringattn/reference/attention.hpp"

namespace {

using ringattn::bench::attention_flops;
using ringattn::bench::Gemm;
using ringattn::bench::Inputs;
using ringattn::bench::make_inputs;
using ringattn::ref::AttentionOptions;
using ringattn::ref::ForwardResult;
using Clock = std::chrono::steady_clock;

double cpu_now() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

/// Timings of one case, in seconds. Wall time is what the verdict uses; process CPU time is kept
/// beside it because the machine is shared: when other processes take the cores, wall time grows
/// and CPU time much less, and the summary says the machine was busy.
struct Samples {
  std::vector<double> wall;
  std::vector<double> cpu;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double g_cpu_total = 0.0;  // over every timed call
double g_wall_total = 0.0;

/// Times one call of f and appends it to @p s; returns its wall seconds.
template <class F>
double time_into(Samples& s, F&& f) {
  const double c0 = cpu_now();
  const auto t0 = Clock::now();
  f();
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  const double cpu = cpu_now() - c0;
  s.wall.push_back(wall);
  s.cpu.push_back(cpu);
  g_cpu_total += cpu;
  g_wall_total += wall;
  return wall;
}

/// One row of the timing table: name, median wall ms, GFLOP/s (wall), min/max wall ms, median
/// CPU ms, GFLOP/s (CPU).
void print_row(const std::string& name, double flops, const Samples& s) {
  const double w = median(s.wall);
  const double c = median(s.cpu);
  std::printf("%-38s %10.2f %9.1f %9.2f %9.2f %10.2f %9.1f\n", name.c_str(), 1e3 * w,
              flops / w / 1e9, 1e3 * *std::min_element(s.wall.begin(), s.wall.end()),
              1e3 * *std::max_element(s.wall.begin(), s.wall.end()), 1e3 * c, flops / c / 1e9);
}

double mib(std::int64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

void keep(const ForwardResult<float>& r) {
  benchmark::DoNotOptimize(r.out.data());
  benchmark::DoNotOptimize(r.lse.data());
  benchmark::ClobberMemory();
}

/// Median seconds of blockwise at (seq, dim) with the given tiles.
double time_blockwise(const Inputs& in, const AttentionOptions& opt, int reps) {
  keep(ringattn::ref::blockwise_forward(in.q, in.k, in.v, opt));  // warm-up
  Samples t;
  for (int r = 0; r < reps; ++r)
    time_into(t, [&] { keep(ringattn::ref::blockwise_forward(in.q, in.k, in.v, opt)); });
  return median(t.wall);
}

void sweep_tiles(const Inputs& in, std::int64_t seq, std::int64_t dim, int reps) {
  std::printf("\n# Blockwise tile sweep at S=%lld D=%lld (median of %d, GFLOP/s)\n",
              static_cast<long long>(seq), static_cast<long long>(dim), reps);
  const std::vector<std::int64_t> bcs = {32, 64, 128, 256, 512, 1024};
  std::printf("%10s", "Br \\ Bc");
  for (std::int64_t bc : bcs) std::printf("%9lld", static_cast<long long>(bc));
  std::printf("\n");
  for (std::int64_t br : {16, 32, 64, 128, 256, 512}) {
    std::printf("%10lld", static_cast<long long>(br));
    for (std::int64_t bc : bcs) {
      AttentionOptions opt;
      opt.block_q = br;
      opt.block_kv = bc;
      std::printf("%9.1f", attention_flops(seq, dim) / time_blockwise(in, opt, reps) / 1e9);
      std::fflush(stdout);
    }
    std::printf("\n");
  }
}

int run(int argc, char** argv) {
  std::int64_t reps = 9;
  std::int64_t sweep = 0;
  std::int64_t skip_memory = 0;
  AttentionOptions opt;
  ringattn::bench::take_int_flag(argc, argv, "reps", reps);
  ringattn::bench::take_int_flag(argc, argv, "block_q", opt.block_q);
  ringattn::bench::take_int_flag(argc, argv, "block_kv", opt.block_kv);
  ringattn::bench::take_int_flag(argc, argv, "sweep", sweep);
  ringattn::bench::take_int_flag(argc, argv, "skip_memory", skip_memory);
  if (argc > 1 || reps < 1) {
    std::fprintf(stderr,
                 "usage: %s [--reps=N>=1] [--block_q=Br] [--block_kv=Bc] [--sweep=1] "
                 "[--skip_memory=1]\n",
                 argv[0]);
    return 2;
  }
  const int n = static_cast<int>(reps);
  ringattn::bench::check_heap_tracker();

  std::printf("# ringattn bench_summary: CPU reference forward, float32, non-causal, B=1 H=1\n");
  std::printf("# %s\n", ringattn::bench::eigen_description().c_str());
  std::printf(
      "# blockwise tile Br=%lld Bc=%lld; timed figures are medians of %d runs after 1 warm-up\n",
      static_cast<long long>(opt.block_q), static_cast<long long>(opt.block_kv), n);

  // ---- 1. speed at S = 4096, D = 128, against the Eigen GEMM ceiling -------------------------
  constexpr std::int64_t kSeq = 4096;
  constexpr std::int64_t kDim = 128;
  const Inputs in = make_inputs(kSeq, kDim);

  // Check before timing: blockwise must agree with naive on the very inputs it is timed on.
  const ForwardResult<float> naive_ref = ringattn::ref::naive_forward(in.q, in.k, in.v, opt);
  const ForwardResult<float> block_ref = ringattn::ref::blockwise_forward(in.q, in.k, in.v, opt);
  const auto d_out = ringattn::bench::compare(block_ref.out, naive_ref.out);
  const auto d_lse = ringattn::bench::compare(block_ref.lse, naive_ref.lse);
  const bool agree = d_out.rel <= 1e-4 && d_lse.rel <= 1e-5;
  std::printf(
      "# check blockwise vs naive at S=%lld D=%lld: O rel %.2e (max |diff| %.2e), LSE rel %.2e: "
      "%s\n",
      static_cast<long long>(kSeq), static_cast<long long>(kDim), d_out.rel, d_out.max_abs,
      d_lse.rel, agree ? "agree" : "DISAGREE");

  std::vector<Gemm> gemms = ringattn::bench::ceiling_gemms();
  std::vector<Samples> t_gemm(gemms.size());
  Samples t_block;
  Samples t_naive;
  for (Gemm& g : gemms) g.run();  // warm-up
  keep(ringattn::ref::blockwise_forward(in.q, in.k, in.v, opt));
  keep(ringattn::ref::naive_forward(in.q, in.k, in.v, opt));
  for (int r = 0; r < n; ++r) {  // interleaved, so load on the machine hits every case alike
    for (std::size_t i = 0; i < gemms.size(); ++i) time_into(t_gemm[i], [&] { gemms[i].run(); });
    time_into(t_block, [&] { keep(ringattn::ref::blockwise_forward(in.q, in.k, in.v, opt)); });
    time_into(t_naive, [&] { keep(ringattn::ref::naive_forward(in.q, in.k, in.v, opt)); });
  }

  std::printf("\n%-38s %10s %9s %9s %9s %10s %9s\n", "case (1 thread, float32)", "median ms",
              "GFLOP/s", "min ms", "max ms", "CPU ms", "GFLOP/s");
  std::printf("%-38s %10s %9s %9s %9s %10s %9s\n", "", "(wall)", "(wall)", "(wall)", "(wall)",
              "(median)", "(CPU)");
  double ceiling = 0.0;
  double ceiling_cpu = 0.0;
  for (std::size_t i = 0; i < gemms.size(); ++i) {
    print_row("eigen_gemm " + gemms[i].name, gemms[i].flops(), t_gemm[i]);
    ceiling = std::max(ceiling, gemms[i].flops() / median(t_gemm[i].wall) / 1e9);
    ceiling_cpu = std::max(ceiling_cpu, gemms[i].flops() / median(t_gemm[i].cpu) / 1e9);
  }
  const double flops = attention_flops(kSeq, kDim);
  print_row("blockwise_forward S=4096 D=128", flops, t_block);
  print_row("naive_forward S=4096 D=128", flops, t_naive);
  const double gf_block = flops / median(t_block.wall) / 1e9;
  const double gf_block_cpu = flops / median(t_block.cpu) / 1e9;
  std::printf("%-38s %10s %9.1f %9s %9s %10s %9.1f\n", "ceiling = fastest Eigen GEMM above", "",
              ceiling, "", "", "", ceiling_cpu);

  // ---- 2. peak heap at S = 16384, D = 128 ----------------------------------------------------
  constexpr std::int64_t kLongSeq = 16384;
  std::int64_t peak_naive = 0;
  std::int64_t peak_block = 0;
  double s_naive = 0.0;
  double s_block = 0.0;
  if (skip_memory == 0) {
    const Inputs big = make_inputs(kLongSeq, kDim);
    Samples unused;
    peak_block = ringattn::bench::peak_allocated([&] {
      s_block = time_into(
          unused, [&] { keep(ringattn::ref::blockwise_forward(big.q, big.k, big.v, opt)); });
    });
    peak_naive = ringattn::bench::peak_allocated([&] {
      s_naive =
          time_into(unused, [&] { keep(ringattn::ref::naive_forward(big.q, big.k, big.v, opt)); });
    });
    std::printf("\n%-44s %12s %10s %12s\n", "case S=16384 D=128 (one call each)", "time ms",
                "GFLOP/s", "peak MiB");
    const double f16 = attention_flops(kLongSeq, kDim);
    std::printf("%-44s %12.1f %10.1f %12.2f\n", "blockwise_forward", 1e3 * s_block,
                f16 / s_block / 1e9, mib(peak_block));
    std::printf("%-44s %12.1f %10.1f %12.2f\n", "naive_forward", 1e3 * s_naive, f16 / s_naive / 1e9,
                mib(peak_naive));
    std::printf(
        "# peak = most heap held at once during the call minus heap in use before it\n"
        "#        (O + LSE returned, plus workspace; Q, K, V excluded)\n");
  }

  if (sweep != 0) sweep_tiles(in, kSeq, kDim, std::max(3, n / 3));

  // ---- verdict ---------------------------------------------------------------------------------
  const double busy = g_wall_total / std::max(g_cpu_total, 1e-9);
  std::printf("\n# timed calls: wall / CPU time = %.3f%s\n", busy,
              busy > 1.05
                  ? "  (the machine was busy: wall times are inflated; rerun when it is quiet)"
                  : "  (the machine was quiet)");
  const double speed_ratio = gf_block / ceiling;
  const bool speed_ok = speed_ratio >= 0.5;
  std::printf("\n%-58s %10s %8s  %s\n", "target", "measured", "needed", "result");
  std::printf("%-58s %10.3f %8s  %s\n", "blockwise GFLOP/s / Eigen GEMM GFLOP/s (S=4096, D=128)",
              speed_ratio, ">= 0.5", speed_ok ? "PASS" : "FAIL");
  std::printf("%-58s %10.3f\n", "  the same ratio by CPU time (for reference)",
              gf_block_cpu / ceiling_cpu);
  bool memory_ok = true;
  if (skip_memory == 0) {
    const double mem_ratio = static_cast<double>(peak_naive) /
                             static_cast<double>(std::max<std::int64_t>(peak_block, 1));
    memory_ok = mem_ratio >= 10.0;
    std::printf("%-58s %10.1f %8s  %s\n", "naive peak heap / blockwise peak heap (S=16384, D=128)",
                mem_ratio, ">= 10", memory_ok ? "PASS" : "FAIL");
  } else {
    std::printf("%-58s %10s %8s  %s\n", "naive peak heap / blockwise peak heap (S=16384, D=128)",
                "-", ">= 10", "SKIPPED");
  }
  std::printf("%-58s %10s %8s  %s\n",
              "blockwise agrees with naive (O rel <= 1e-4, LSE rel <= 1e-5)", agree ? "yes" : "no",
              "yes", agree ? "PASS" : "FAIL");
  const bool ok = speed_ok && memory_ok && agree;
  std::printf("\n%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {  // e.g. ringattn::Error for --block_q=0
    std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
    return 2;
  }
}
