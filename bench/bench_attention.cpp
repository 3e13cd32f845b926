/// @file bench_attention.cpp
/// @brief Google Benchmark of the CPU reference forward: naive vs blockwise (online softmax),
/// float32, non-causal, B = 1, H = 1, S = 1024 ... 16384, D = 64 and 128, and the Eigen matrix
/// products that serve as the ceiling, all in one run on one thread.
///
/// Counters per case:
///   FLOPS     attention FLOPs / wall time, 4*B*H*S*S*D per call (a rate: "45.1G/s" = 45.1 GFLOP/s)
///   peak_mem  the most heap the call held at once beyond what was allocated before it: the
///             returned O and LSE plus all workspace (naive's S x S scores, blockwise's tiles);
///             inputs are excluded. Counted by heap_tracker.cpp (usable size of every malloc'd
///             block, see heap_tracker.hpp), printed in binary units (k = KiB, M = MiB).
/// Each case repeats 5 times up to S = 4096 (each repetition at least 0.2 s of calls) and 3 times
/// above (one call per repetition), so the whole run takes about 1.5 minutes on 2 cores. The
/// console shows mean / median / stddev / cv over the repetitions; the JSON output
/// (--benchmark_out=...) keeps every repetition. docs/results.md quotes the medians.
///
/// Build and run: scripts/bench.sh, or
///   cmake --build build --target bench_attention && build/bin/bench_attention
/// Extra flags (before Google Benchmark's own): --block_q=N --block_kv=N set the blockwise tile
/// (Br, Bc; defaults are AttentionOptions'). Before timing, the program checks the heap tracker
/// and checks blockwise against naive at S = 1024 (it exits with status 1 on a mismatch).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iterator>
#include <memory>
#include <string>

#include "bench_common.hpp"
#include "ringattn/reference/attention.hpp"

namespace {

using ringattn::bench::attention_flops;
using ringattn::bench::Gemm;
using ringattn::bench::Inputs;
using ringattn::bench::make_inputs;
using ringattn::ref::AttentionOptions;
using ringattn::ref::ForwardResult;

AttentionOptions g_options;  // tile sizes from the command line; non-causal, default scale

enum class Path { kNaive, kBlockwise };

ForwardResult<float> forward(Path path, const Inputs& in) {
  return path == Path::kNaive ? ringattn::ref::naive_forward(in.q, in.k, in.v, g_options)
                              : ringattn::ref::blockwise_forward(in.q, in.k, in.v, g_options);
}

void bm_attention(benchmark::State& state, Path path) {
  const std::int64_t seq = state.range(0);
  const std::int64_t dim = state.range(1);
  const Inputs in = make_inputs(seq, dim);

  const std::int64_t before = ringattn::bench::heap::current_bytes();
  ringattn::bench::heap::reset_peak();
  for (auto _ : state) {
    ForwardResult<float> r = forward(path, in);  // freed at the end of each iteration
    benchmark::DoNotOptimize(r.out.data());
    benchmark::DoNotOptimize(r.lse.data());
    benchmark::ClobberMemory();
  }
  const std::int64_t peak = ringattn::bench::heap::peak_bytes() - before;

  state.counters["FLOPS"] =
      benchmark::Counter(attention_flops(seq, dim), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_mem"] = benchmark::Counter(
      static_cast<double>(peak), benchmark::Counter::kDefaults, benchmark::Counter::OneK::kIs1024);
}

void bm_gemm(benchmark::State& state, std::size_t index) {
  // Built on first use and kept across repetitions (a 4096 x 4096 random matrix takes a while).
  static std::unique_ptr<Gemm> cache[std::size(ringattn::bench::kCeilingShapes)];
  if (!cache[index]) cache[index] = std::make_unique<Gemm>(ringattn::bench::kCeilingShapes[index]);
  Gemm& gemm = *cache[index];
  for (auto _ : state) gemm.run();
  state.counters["FLOPS"] =
      benchmark::Counter(gemm.flops(), benchmark::Counter::kIsIterationInvariantRate);
}

/// Repetitions and iterations sized so the whole run takes a few minutes on 2 cores: S = 16384
/// at D = 128 is 137 GFLOP per call (seconds), S = 1024 at D = 64 is 0.27 GFLOP.
void configure(benchmark::internal::Benchmark* b, std::int64_t seq) {
  b->Unit(benchmark::kMillisecond)->UseRealTime()->DisplayAggregatesOnly(true);
  if (seq > 4096) {
    b->Iterations(1)->Repetitions(3);
  } else {
    b->MinTime(0.2)->Repetitions(5);
  }
}

void register_all() {
  for (const std::int64_t dim : {64, 128}) {
    for (const std::int64_t seq : {1024, 2048, 4096, 8192, 16384}) {
      for (const Path path : {Path::kNaive, Path::kBlockwise}) {
        const std::string name = path == Path::kNaive ? "naive_forward" : "blockwise_forward";
        auto* b = benchmark::RegisterBenchmark(name.c_str(), bm_attention, path);
        b->Args({seq, dim})->ArgNames({"S", "D"});
        configure(b, seq);
      }
    }
  }
  // The ceiling: the same Eigen products bench_summary measures.
  for (std::size_t i = 0; i < std::size(ringattn::bench::kCeilingShapes); ++i) {
    const std::string name = std::string("eigen_gemm/") + ringattn::bench::kCeilingShapes[i].name;
    auto* b = benchmark::RegisterBenchmark(name.c_str(), bm_gemm, i);
    b->Unit(benchmark::kMillisecond)->UseRealTime()->DisplayAggregatesOnly(true);
    b->MinTime(0.2)->Repetitions(5);
  }
}

/// Blockwise must agree with naive before either is timed.
void check_blockwise_matches_naive() {
  const Inputs in = make_inputs(1024, 64, 7);
  const ForwardResult<float> naive = ringattn::ref::naive_forward(in.q, in.k, in.v, g_options);
  const ForwardResult<float> block = ringattn::ref::blockwise_forward(in.q, in.k, in.v, g_options);
  const auto d_out = ringattn::bench::compare(block.out, naive.out);
  const auto d_lse = ringattn::bench::compare(block.lse, naive.lse);
  if (!(d_out.rel <= 1e-4) || !(d_lse.rel <= 1e-5)) {
    std::fprintf(stderr,
                 "blockwise_forward disagrees with naive_forward at S=1024 D=64: O rel %.3g "
                 "(max %.3g), LSE rel %.3g; not timing a wrong answer\n",
                 d_out.rel, d_out.max_abs, d_lse.rel);
    std::exit(1);
  }
}

int run(int argc, char** argv) {
  ringattn::bench::take_int_flag(argc, argv, "block_q", g_options.block_q);
  ringattn::bench::take_int_flag(argc, argv, "block_kv", g_options.block_kv);
  ringattn::bench::check_heap_tracker();
  check_blockwise_matches_naive();

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("ringattn.eigen", ringattn::bench::eigen_description());
  benchmark::AddCustomContext("ringattn.shape", "B=1 H_q=H_kv=1 non-causal float32");
  benchmark::AddCustomContext(
      "ringattn.blockwise_tile",
      "Br=" + std::to_string(g_options.block_q) + " Bc=" + std::to_string(g_options.block_kv));
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
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
