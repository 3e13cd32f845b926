/// @file bench_common.hpp
/// @brief What bench_attention and bench_summary share: the problem sizes, random inputs, the
/// FLOP count, the Eigen matrix products used as the ceiling, and the heap tracker self-check.
///
/// Every benchmark is single-threaded: Eigen is built without OpenMP here (its products run on
/// the calling thread) and Google Benchmark runs each case on one thread, so the attention paths
/// and the Eigen products compete on equal terms.
#pragma once

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "heap_tracker.hpp"
#include "ringattn/core/cost.hpp"
#include "ringattn/core/tensor.hpp"

namespace ringattn::bench {

/// Batch and heads of every attention case: one (b, h) slice, so S_q = S_kv = S is the only
/// size that grows and naive's score matrix is exactly S*S floats (1 GiB at S = 16384).
inline constexpr std::int64_t kBatch = 1;
inline constexpr std::int64_t kHeads = 1;

/// Q, K, V of shape (B, S, H, D), entries N(0, 1) from a fixed seed.
struct Inputs {
  Tensor<float> q;
  Tensor<float> k;
  Tensor<float> v;
};

inline Tensor<float> random_tensor(std::vector<std::int64_t> shape, std::uint32_t seed) {
  Tensor<float> t(std::move(shape));
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0F, 1.0F);
  for (float& x : t.values()) x = normal(gen);
  return t;
}

inline Inputs make_inputs(std::int64_t seq, std::int64_t dim, std::uint32_t seed = 42) {
  return {random_tensor({kBatch, seq, kHeads, dim}, seed),
          random_tensor({kBatch, seq, kHeads, dim}, seed + 1),
          random_tensor({kBatch, seq, kHeads, dim}, seed + 2)};
}

/// Non-causal forward FLOPs: 4 * B * H * S * S * D (QK^T and PV, 2*D each per (query, key)).
/// Softmax's exp/max/sum are not counted, as in the flash-attention papers.
inline double attention_flops(std::int64_t seq, std::int64_t dim) {
  return attention_flops_forward(kBatch, kHeads, dim, seq * seq);
}

// ---- the Eigen matrix product ceiling ---------------------------------------------------------

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// The shapes of the Eigen products measured as the ceiling (see docs/results.md):
///   square  2048 x 2048 x 2048               Eigen's best case, the usual "what the BLAS does"
///   qk      (S x D) * (D x S), S=4096 D=128  the shape of naive's Q K^T
///   pv      (S x S) * (S x D), S=4096 D=128  the shape of naive's P V
struct GemmShape {
  const char* name;
  Eigen::Index m;
  Eigen::Index k;
  Eigen::Index n;
};
inline constexpr GemmShape kCeilingShapes[] = {
    {"square 2048x2048x2048", 2048, 2048, 2048},
    {"qk (4096x128)*(128x4096)", 4096, 128, 4096},
    {"pv (4096x4096)*(4096x128)", 4096, 4096, 128},
};

/// C = A * B with A (m x k), B (k x n), float32, row-major, C preallocated: one Eigen GEMM of
/// 2*m*n*k FLOPs, single-threaded. A and B hold uniform values in [-1, 1].
struct Gemm {
  std::string name;
  RowMatrix a;
  RowMatrix b;
  RowMatrix c;

  explicit Gemm(const GemmShape& s)
      : name(s.name),
        a(RowMatrix::Random(s.m, s.k)),
        b(RowMatrix::Random(s.k, s.n)),
        c(RowMatrix::Zero(s.m, s.n)) {}

  void run() {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  [[nodiscard]] double flops() const {
    return 2.0 * static_cast<double>(a.rows()) * static_cast<double>(a.cols()) *
           static_cast<double>(b.cols());
  }
};

inline std::vector<Gemm> ceiling_gemms() {
  std::vector<Gemm> g;
  for (const GemmShape& s : kCeilingShapes) g.emplace_back(s);
  return g;
}

// ---- self-check of the heap tracker ------------------------------------------------------------

/// Allocates a 4 MiB Eigen matrix and a 4 MiB std::vector and checks that the tracked peak rises
/// by their size (within 64 KiB). Aborts with a message otherwise, since every peak-memory
/// figure would then be meaningless (e.g. a static link that bypassed the interposed malloc).
inline void check_heap_tracker() {
  constexpr std::int64_t kFloats = 1 << 20;
  constexpr std::int64_t kBytes = kFloats * static_cast<std::int64_t>(sizeof(float));
  constexpr std::int64_t kSlack = 64 * 1024;
  auto fail = [](const char* what, std::int64_t got, std::int64_t want) {
    std::fprintf(stderr,
                 "heap tracker self-check FAILED: %s raised the peak by %lld bytes, expected %lld "
                 "(+%lld). Peak memory figures would be wrong; is malloc interposed "
                 "(heap_tracker.cpp linked into this executable, glibc, no static libc)?\n",
                 what, static_cast<long long>(got), static_cast<long long>(want),
                 static_cast<long long>(kSlack));
    std::abort();
  };
  {
    const std::int64_t before = heap::current_bytes();
    heap::reset_peak();
    Eigen::MatrixXf m = Eigen::MatrixXf::Constant(1024, 1024, 1.0F);
    benchmark::DoNotOptimize(m.data());
    const std::int64_t grew = heap::peak_bytes() - before;
    if (grew < kBytes || grew > kBytes + kSlack)
      fail("an Eigen 1024x1024 float matrix", grew, kBytes);
  }
  {
    const std::int64_t before = heap::current_bytes();
    heap::reset_peak();
    std::vector<float> v(static_cast<std::size_t>(kFloats), 1.0F);
    benchmark::DoNotOptimize(v.data());
    const std::int64_t grew = heap::peak_bytes() - before;
    if (grew < kBytes || grew > kBytes + kSlack) fail("a std::vector<float> of 2^20", grew, kBytes);
  }
  {
    const std::int64_t before = heap::current_bytes();
    heap::reset_peak();
    Tensor<float> t({1, 1024, 1, 1024});
    benchmark::DoNotOptimize(t.data());
    const std::int64_t grew = heap::peak_bytes() - before;
    if (grew < kBytes || grew > kBytes + kSlack)
      fail("a ringattn::Tensor of 2^20 floats", grew, kBytes);
  }
}

/// Memory a call allocates at its peak: outputs it returns + workspace (inputs excluded).
template <class F>
std::int64_t peak_allocated(F&& f) {
  const std::int64_t before = heap::current_bytes();
  heap::reset_peak();
  f();
  return heap::peak_bytes() - before;
}

/// "Eigen 3.4.0, SSE SSE2 ... AVX512, 1 thread".
inline std::string eigen_description() {
  return "Eigen " + std::to_string(EIGEN_WORLD_VERSION) + "." +
         std::to_string(EIGEN_MAJOR_VERSION) + "." + std::to_string(EIGEN_MINOR_VERSION) + " [" +
         Eigen::SimdInstructionSetsInUse() + "], " + std::to_string(Eigen::nbThreads()) +
         " thread(s)";
}

}  // namespace ringattn::bench

namespace ringattn::bench {

/// max |a - b| and ||a - b|| / ||b|| over two tensors of the same size.
struct Diff {
  double max_abs = 0.0;
  double rel = 0.0;
};
inline Diff compare(const Tensor<float>& a, const Tensor<float>& b) {
  Diff d;
  double num = 0.0;
  double den = 0.0;
  for (std::int64_t i = 0; i < b.size(); ++i) {
    const double x = static_cast<double>(a[i]);
    const double y = static_cast<double>(b[i]);
    if (!(std::abs(x - y) <= d.max_abs)) d.max_abs = std::abs(x - y);  // NaN propagates
    num += (x - y) * (x - y);
    den += y * y;
  }
  d.rel = den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
  return d;
}

/// Pulls "--name=value" (an integer) out of argv, so the rest can go to Google Benchmark.
inline bool take_int_flag(int& argc, char** argv, const std::string& name, std::int64_t& value) {
  const std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind(prefix, 0) == 0) {
      const std::string text = arg.substr(prefix.size());
      std::size_t used = 0;
      try {
        value = std::stoll(text, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != text.size()) {
        std::fprintf(stderr, "%s: --%s needs an integer, got '%s'\n", argv[0], name.c_str(),
                     text.c_str());
        std::exit(2);
      }
      for (int j = i; j + 1 < argc; ++j) argv[j] = argv[j + 1];
      --argc;
      return true;
    }
  }
  return false;
}

}  // namespace ringattn::bench
