// The float64 oracle of `ringattn compare`: an implementation's O, LSE, dQ, dK, dV checked against
// float64 attention on the values it computed on, either on every element (small problems:
// ref::naive_forward / naive_backward) or on sampled rows (long sequences: each sampled query row
// and key row computed exactly, O(rows * S * D) work, spread over threads).
//
// How a result is judged (DESIGN.md, "How correctness is judged"; the same numbers as
// tests/cuda/cuda_kernel_test.cpp, fp32_tolerance and FlashCriterion):
//   - float32 computation: every checked element within
//       |err| <= base (1 + L/4) max(1, M) + base |ref|       (LSE: base (1 + L/4) (1 + M))
//     and the relative error ||err|| / ||ref|| <= base (1 + L/4), where base = 1e-5 for O and LSE,
//     3e-5 for dQ, dK, dV (five chained products), L = max |scale q.k| over the checked rows (a
//     score error eps |s| is a relative error of that size in its weight, so the bound grows with
//     the logits) and M = max |ref| of the output;
//   - bf16/fp16 computation (flash-attention's criterion): max |err| <= f x the max error of the
//     same rows computed naively in that dtype + the rounding of the reference to the dtype,
//     f = 2 for O and LSE, 3 for the gradients. The naive computation rounds Q, K, V, dO to the
//     dtype (so does the implementation: the oracle sees those values), accumulates every matmul
//     in float32 and rounds its result to the dtype, and rounds P to the dtype before P V, as a
//     framework without a fused kernel does.
// NaN never passes; LSE = -inf (a row that sees no key) must match exactly.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ringattn/core/layout.hpp"
#include "ringattn/core/tensor.hpp"

namespace ringattn::cli {

/// The dtype an implementation computes in (its inputs are rounded to it).
enum class Precision { F32, F16, BF16 };

/// "fp32" | "fp16" | "bf16"; throws ringattn::Error otherwise.
[[nodiscard]] Precision parse_precision(std::string_view name);
/// The name parse_precision() reads.
[[nodiscard]] std::string_view to_string(Precision p);
/// @p x rounded to @p p (round to nearest, ties to even; overflow gives infinity, fp16 subnormals
/// kept) and widened back: the value a bf16/fp16 tensor holds.
[[nodiscard]] float round_to(Precision p, float x);

/// The problem as the implementation saw it: Q, K, V (and dO) already rounded to its precision.
struct CheckProblem {
  const Tensor<float>* q = nullptr;     ///< (B, S_q, H_q, D)
  const Tensor<float>* k = nullptr;     ///< (B, S_kv, H_kv, D)
  const Tensor<float>* v = nullptr;     ///< (B, S_kv, H_kv, D)
  const Tensor<float>* dout = nullptr;  ///< (B, S_q, H_q, D); null: forward only
  bool causal = false;                  ///< causal over positions, queries end-aligned
  double scale = 1.0;                   ///< the softmax scale the implementation used
};

/// What the implementation returned.
struct CheckResults {
  Tensor<float> out, lse;     ///< O (B, S_q, H_q, D), LSE (B, H_q, S_q)
  Tensor<float> dq, dk, dv;   ///< gradients (empty when forward only)
};

/// How to check.
struct CheckOptions {
  Precision precision = Precision::F32;  ///< the implementation's compute dtype
  bool full = true;                      ///< every element (else sampled rows)
  int sample_rows = 64;                  ///< sampled mode: query rows and key rows to check
  std::uint64_t seed = 0;                ///< sampled mode: which rows
  int threads = 1;                       ///< worker threads
  /// Sampled mode: the query / key layouts of a ring, whose segment boundaries are always checked.
  std::optional<SequenceLayout> q_layout, kv_layout;
};

/// The verdict on one output.
struct OutputCheck {
  std::string name;               ///< "O", "LSE", "dQ", "dK", "dV"
  std::int64_t elements = 0;      ///< elements checked
  double max_err = 0;             ///< max |got - ref| over finite elements
  double rel_err = 0;             ///< ||got - ref|| / ||ref||
  double naive_max_err = -1;      ///< low precision: max error of the naive computation
  double naive_rel_err = -1;      ///< low precision: its relative error
  double bound = 0;               ///< float32: element bound at |ref| = 0; low precision: allowed max error
  double rel_bound = -1;          ///< float32: bound on rel_err
  std::int64_t bad = 0;           ///< elements outside the bound (or NaN / infinity mismatch)
  std::string first_bad;          ///< where the first bad element is, and why
  bool pass = false;              ///< the verdict
};

/// The verdict on everything.
struct CheckReport {
  bool full = true;                          ///< every element was checked
  std::vector<std::int64_t> q_rows, k_rows;  ///< sampled mode: the positions checked
  double max_logit = 0;                      ///< L = max |scale q.k| over the checked rows
  std::vector<OutputCheck> outputs;          ///< O, LSE (and dQ, dK, dV)
  bool pass = false;                         ///< every output passed
};

/// Rows to check in a sequence of @p seq_len positions: the first and last, the first and last
/// of every segment of @p layout (and their neighbours), and random others (from @p seed) up to
/// @p count in all (more when the boundaries alone exceed it; all rows when count >= seq_len).
[[nodiscard]] std::vector<std::int64_t> sample_positions(std::int64_t seq_len, int count, std::uint64_t seed,
                                                         const std::optional<SequenceLayout>& layout);

/// Runs f(0), ..., f(n - 1) on up to @p threads threads (indices handed out one at a time).
void parallel_for(std::int64_t n, int threads, const std::function<void(std::int64_t)>& f);

/// Checks @p got against float64 attention on @p problem. Throws ringattn::Error if shapes
/// disagree.
[[nodiscard]] CheckReport check_against_float64(const CheckProblem& problem, const CheckResults& got,
                                                const CheckOptions& options);

}  // namespace ringattn::cli
