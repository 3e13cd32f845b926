// 10_cuda_vs_reference: a CUDA kernel against the CPU reference.
//
// The tutorials, in order:
//   01 softmax            naive softmax, why it overflows, the stable form
//   02 softmax_chunks     softmax over chunks, correcting each with its sum of exponentials
//   03 lse_merge          merging partial results in log space
//   04 online_softmax     the running max m, sum l and output O: blockwise (flash) attention
//   05 ring_attention     N virtual ranks, the K/V block each holds at each step, merged = naive
//   06 causal_balance     the causal mask per rank and step: contiguous, striped, zigzag
//   07 ring_backward      the backward around the ring: dQ stays, dK/dV travel home
//   08 flash_decoding     splitting a long K/V cache for one query token
//   09 mpi_ring           the ring over MPI (mpirun) and what overlap buys
//   10 cuda_vs_reference  a CUDA kernel against the CPU reference (needs a GPU)
//   11 simulator          1M tokens on 8 NVLink GPUs vs 32 over InfiniBand; choosing the block size
//   12 ring_streams       the CUDA ring as stream operations and events; why each wait is needed
//
// What this one shows: the simplest correct attention kernels in CUDA, float32, forward
// (10_cuda_kernels.cu): v1 gives every query row a thread that runs tutorial 04's online softmax
// over all keys; v2 stages each K/V tile of Bc rows in shared memory for a block of Br query rows,
// FlashAttention's tile loop. Both are compared with ringattn::ref::naive_forward in double on
// random inputs with GQA (8 query heads on 2 K/V heads) and S = 1000 (not a multiple of Br or Bc,
// so the tile loops end on partial tiles): not causal, causal, and causal with fewer queries than
// keys. The float32 tolerance is stated below. Outputs start as NaN, so an element that no thread
// wrote fails the comparison. Each kernel is then timed with CUDA events (printed, not checked).
// This file is the host side, plain C++ with the project's flags; the kernels and every CUDA
// call (each checked, errors become exceptions with cudaGetErrorString) are in the .cu file.
//
// What it leaves out: fast kernels (tensor cores, bf16, warp-level softmax, splitting the keys:
// cuda/ and FlashAttention-2/3), the backward pass (07 on the CPU), the ring across GPUs (NCCL;
// 09 runs the ring over MPI, 11 simulates it on GPU clusters).
//
// Run: build/bin/tutorial_10_cuda_vs_reference [--step]   (--step pauses between stages)
// Needs: an NVIDIA GPU the build targets (CMAKE_CUDA_ARCHITECTURES, 80;90 by default: A100, H100)
//        and a build with RINGATTN_WITH_CUDA. Without a visible GPU it reports itself skipped
//        (exit 77); a build without CUDA (e.g. the sanitizer build) is a stand-in that does too.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "tutorial.hpp"

#if RINGATTN_TUTORIAL_WITH_CUDA
#include "10_cuda_kernels.hpp"
#include "ringattn/core/tensor.hpp"
#include "ringattn/reference/attention.hpp"

namespace {

using ringattn::Tensor;
using ringattn::tutorial::format;

// float32 against float64: scores are dot products of D = 64 terms and every output sums up to
// 1000 weighted rows, each step rounding at 2^-24 ~ 6e-8 relative; 1e-5 leaves room for that
// growth and for expf's few ulps (DESIGN.md: float32 ~1e-5 relative), and stays below what a real
// mistake does here: one key too many or too few moves O by ~1e-4, a wrong K/V head or a missed
// rescale by ~1. Compared as max |x - x_ref| <= 1e-5 max(1, max |x_ref|).
constexpr double kTol = 1e-5;
constexpr int kTimedLaunches = 10;

using ringattn::tutorial::Rng;

// One tensor as float32 for the GPU and, value for value, as double for the reference: the
// reference then sees exactly the GPU's inputs, and any difference is the kernel's arithmetic.
struct Input {
  std::vector<float> f;
  Tensor<double> d;
};

Input random_input(int b, int s, int h, int dim, Rng& rng) {
  Input x{{}, Tensor<double>({b, s, h, dim})};
  x.f.resize(static_cast<std::size_t>(x.d.size()));
  for (std::size_t i = 0; i < x.f.size(); ++i) {
    x.f[i] = static_cast<float>(rng.normal());
    x.d[static_cast<std::int64_t>(i)] = x.f[i];
  }
  return x;
}

// max |got - want| / max(1, max |want|); NaN if any element is NaN or the sizes differ.
double scaled_error(const std::vector<float>& got, const Tensor<double>& want) {
  if (static_cast<std::int64_t>(got.size()) != want.size()) return NAN;
  double worst = 0, scale = 1;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double w = want[static_cast<std::int64_t>(i)];
    scale = std::max(scale, std::abs(w));
    if (static_cast<double>(got[i]) == w) continue;  // equal, -inf included
    const double d = std::abs(static_cast<double>(got[i]) - w);
    if (std::isnan(d)) return NAN;
    worst = std::max(worst, d);
  }
  return worst / scale;
}

// (query, key) pairs the mask lets through, per batch element and head.
double visible_pairs(const tut10::Problem& p) {
  if (!p.causal) return static_cast<double>(p.seq_q) * p.seq_kv;
  double n = 0;
  for (int i = 0; i < p.seq_q; ++i) n += std::clamp(p.seq_kv - p.seq_q + i + 1, 0, p.seq_kv);
  return n;
}

struct Case {
  const char* title;
  tut10::Problem problem;
};

// One case: the reference in double, both kernels, their errors and times.
void run_case(ringattn::tutorial::Tutorial& t, const Case& c, std::uint64_t seed, bool show_row) {
  const tut10::Problem& p = c.problem;
  t.stage(c.title);
  t.say(format("B = %d, S_q = %d, S_kv = %d, H_q = %d on H_kv = %d (GQA), D = %d, %s, scale 1/sqrt(D).",
               p.batch, p.seq_q, p.seq_kv, p.heads_q, p.heads_kv, p.head_dim, p.causal ? "causal" : "not causal"));
  if (p.causal && p.seq_q < p.seq_kv) {
    t.say(format("The queries are the last %d positions (as when a long prompt is processed in chunks):",
                 p.seq_q));
    t.say(format("query i sits at key position %d + i and sees keys 0..%d + i.", p.seq_kv - p.seq_q,
                 p.seq_kv - p.seq_q));
  }
  Rng rng(seed);
  const Input q = random_input(p.batch, p.seq_q, p.heads_q, p.head_dim, rng);
  const Input k = random_input(p.batch, p.seq_kv, p.heads_kv, p.head_dim, rng);
  const Input v = random_input(p.batch, p.seq_kv, p.heads_kv, p.head_dim, rng);
  ringattn::ref::AttentionOptions options;
  options.causal = p.causal;
  const ringattn::ref::ForwardResult<double> want = ringattn::ref::naive_forward(q.d, k.d, v.d, options);
  const double flops = 4.0 * p.batch * p.heads_q * p.head_dim * visible_pairs(p);  // QK^T and PV

  const struct {
    tut10::Kernel kernel;
    const char* name;
  } kernels[] = {{tut10::Kernel::RowPerThread, "v1 row per thread"},
                 {tut10::Kernel::SharedTiles, "v2 shared-memory tiles"}};
  std::printf("\n  %-24s %12s %12s %12s %10s\n", "kernel", "O error", "LSE error", "ms/launch", "GFLOP/s");
  std::vector<tut10::KernelRun> runs;
  for (const auto& kn : kernels) {
    runs.push_back(tut10::run_attention(kn.kernel, p, q.f, k.f, v.f, kTimedLaunches));
    const tut10::KernelRun& r = runs.back();
    std::printf("  %-24s %12.2e %12.2e %12.4f %10.1f\n", kn.name, scaled_error(r.out, want.out),
                scaled_error(r.lse, want.lse), r.ms_per_launch, flops / (r.ms_per_launch * 1e-3) / 1e9);
  }
  std::printf("\n");
  if (show_row) {
    const std::int64_t row = p.seq_q - 1;  // last query row, head 0, batch 0
    const std::size_t at = static_cast<std::size_t>(row) * static_cast<std::size_t>(p.heads_q * p.head_dim);
    t.say(format("query %lld, head 0, O[0..3]:", static_cast<long long>(row)));
    t.say(format("  reference (double)     [%9.6f %9.6f %9.6f %9.6f]", want.out[static_cast<std::int64_t>(at)],
                 want.out[static_cast<std::int64_t>(at) + 1], want.out[static_cast<std::int64_t>(at) + 2],
                 want.out[static_cast<std::int64_t>(at) + 3]));
    for (std::size_t n = 0; n < runs.size(); ++n) {
      t.say(format("  %-22s [%9.6f %9.6f %9.6f %9.6f]", kernels[n].name, static_cast<double>(runs[n].out[at]),
                   static_cast<double>(runs[n].out[at + 1]), static_cast<double>(runs[n].out[at + 2]),
                   static_cast<double>(runs[n].out[at + 3])));
    }
  }
  for (std::size_t n = 0; n < runs.size(); ++n) {
    const double eo = scaled_error(runs[n].out, want.out), el = scaled_error(runs[n].lse, want.lse);
    t.check(eo <= kTol && el <= kTol, format("%s: O and LSE = naive attention (double) within float32 tolerance",
                                             kernels[n].name),
            format("O %.1e, LSE %.1e (tolerance %.0e)", eo, el, kTol));
  }
  t.say(format("v2 / v1 time: %.2f (timings informational, not checked).",
               runs[1].ms_per_launch / runs[0].ms_per_launch));
}

}  // namespace
#endif  // RINGATTN_TUTORIAL_WITH_CUDA

int main(int argc, char** argv) {
  return ringattn::tutorial::run([&] {
    ringattn::tutorial::Tutorial t(argc, argv, "10_cuda_vs_reference", "A CUDA kernel against the CPU reference");
#if !RINGATTN_TUTORIAL_WITH_CUDA
    t.stage("A CUDA kernel needs a CUDA build");
    t.say("This program was built without CUDA (RINGATTN_WITH_CUDA=OFF, as in the sanitizer build),");
    t.say("so it is a stand-in that reports itself skipped. A build with nvcc and without");
    t.say("RINGATTN_SANITIZE compiles the kernels: tutorials/10_cuda_vs_reference/10_cuda_kernels.cu.");
    t.skip("built without CUDA (RINGATTN_WITH_CUDA=OFF)");
#else
    using ringattn::tutorial::format;
    t.stage("The GPU");
    const tut10::GpuInfo gpu = tut10::probe_gpu();
    if (!gpu.available) {
      t.say("No GPU to run the kernels on (" + gpu.reason + ").");
      t.say("The kernels are in tutorials/10_cuda_vs_reference/10_cuda_kernels.cu; run me on a machine");
      t.say("with an NVIDIA GPU to see them checked against the CPU reference.");
      t.skip("no CUDA GPU visible: " + gpu.reason);
      return t.finish();
    }
    t.say(format("%s, compute capability %d.%d, %d multiprocessors, %.0f GiB.", gpu.name.c_str(), gpu.major,
                 gpu.minor, gpu.multiprocessors, gpu.memory_gib));

    t.stage("Two kernels, the same online softmax");
    t.say("v1: one thread per (batch, head, query row). It reads every key row from global memory");
    t.say("and keeps its row's running max m, sum l and output o in registers (tutorial 04):");
    t.say("  m' = max(m, s_j), l' = l e^(m - m') + e^(s_j - m'), o' = o e^(m - m') + e^(s_j - m') v_j.");
    t.say(format("v2: a block of Br = %d threads owns Br query rows and walks the keys in tiles of Bc = %d",
                 tut10::tile_rows(), tut10::tile_cols()));
    t.say(format("rows. Each K/V tile is loaded once into shared memory (2 Bc D x 4 = %d bytes) and used",
                 2 * tut10::tile_cols() * tut10::compiled_head_dim() * 4));
    t.say("by all Br rows, with FlashAttention's per-tile update (Algorithm 1, lines 9-12): the tile's");
    t.say("own max and sum first, then one rescale of the running state per tile, not per key.");
    t.say(format("Both in float32, compiled for D = %d. Each is compared with ringattn::ref::naive_forward",
                 tut10::compiled_head_dim()));
    t.say(format("in double on the same inputs: max |x - x_ref| <= %.0e max(1, max |x_ref|) for O and LSE.", kTol));

    const float scale = 1.0f / std::sqrt(64.0f);
    const Case cases[] = {
        {"Not causal: every query sees all 1000 keys", {2, 1000, 1000, 8, 2, 64, false, scale}},
        {"Causal: query i sees keys 0..i", {2, 1000, 1000, 8, 2, 64, true, scale}},
        {"Causal, 333 queries at the end of 1000 keys", {1, 333, 1000, 8, 2, 64, true, scale}},
    };
    std::uint64_t seed = 10;
    for (const Case& c : cases) run_case(t, c, seed++, &c == &cases[0]);
#endif
    return t.finish();
  });
}
