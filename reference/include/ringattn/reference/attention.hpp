/// @file attention.hpp
/// @brief The CPU ground truth: naive and blockwise (online-softmax) attention, forward and
/// backward, the LSE merge, and flash-decoding. Eigen, templated on float and double.
///
/// What this file is for: every other engine in ringattn (the ring over virtual ranks, the ring
/// over MPI, the CUDA kernels) is checked against these functions, and in double precision they
/// agree with each other to ~1e-12. They are written to be read first and to be reasonably fast
/// second (the blockwise forward runs near the speed of Eigen's matrix product).
///
/// Conventions (see docs/conventions.md):
///   Q (B, S_q, H_q, D), K and V (B, S_kv, H_kv, D), O like Q, LSE (B, H_q, S_q), natural log.
///   scale defaults to 1/sqrt(D). Causal compares global positions: with S_q != S_kv queries are
///   aligned to the end of the keys (query i at position S_kv - S_q + i). A query row that sees no
///   key gets O = 0 and LSE = -inf. Computation and accumulation run in T.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>

#include "ringattn/core/schedule.hpp"
#include "ringattn/core/shape.hpp"
#include "ringattn/core/tensor.hpp"

/// @brief The CPU reference (Eigen): naive, blockwise and ring attention, forward and backward,
/// the LSE merge and flash-decoding; the ground truth every other engine is checked against.
namespace ringattn::ref {

/// Options shared by every attention entry point.
struct AttentionOptions {
  bool causal = false;            ///< mask keys at later global positions than the query
  std::optional<double> scale;    ///< softmax scale; 1/sqrt(D) when empty
  std::int64_t block_q = 128;     ///< Br: query rows per tile (blockwise paths)
  std::int64_t block_kv = 256;    ///< Bc: key rows per tile (blockwise paths)
};

/// Output of a forward pass: O (B, S_q, H_q, D) and LSE (B, H_q, S_q).
template <class T>
struct ForwardResult {
  Tensor<T> out;  ///< O
  Tensor<T> lse;  ///< log-sum-exp of the scaled, masked scores of each query row
};

/// Gradients of a backward pass, each with its input's shape.
template <class T>
struct Gradients {
  Tensor<T> dq;  ///< dL/dQ (B, S_q, H_q, D)
  Tensor<T> dk;  ///< dL/dK (B, S_kv, H_kv, D)
  Tensor<T> dv;  ///< dL/dV (B, S_kv, H_kv, D)
};

/// Checks Q, K, V are rank-4 tensors that agree (B, D, H_q multiple of H_kv, K and V equal,
/// no zero dimension) and returns their shape; throws ringattn::Error naming the problem.
template <class T>
AttentionShape check_qkv(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v);
/// Checks O, LSE and dO agree with @p shape; throws ringattn::Error naming the problem.
template <class T>
void check_backward_inputs(const AttentionShape& shape, const Tensor<T>& out, const Tensor<T>& lse,
                           const Tensor<T>& dout);
/// Checks the options (finite positive scale, block sizes >= 1); throws ringattn::Error.
void check_options(const AttentionOptions& options);
/// The scale in use: @p scale or, when empty, 1/sqrt(D) (the one rule for options and kernels).
double resolve_scale(std::optional<double> scale, std::int64_t head_dim);
/// The scale in use: options.scale or 1/sqrt(D).
double resolve_scale(const AttentionOptions& options, std::int64_t head_dim);

// ---- whole-tensor entry points ----------------------------------------------------------------

/// Naive attention: materializes S = scale * Q K^T (S_q x S_kv per head), masks, softmax, P V.
template <class T>
ForwardResult<T> naive_forward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                               const AttentionOptions& options = {});
/// Naive backward from the materialized P: dV = P^T dO, dP = dO V^T,
/// dS = P * (dP - rowsum(dO * O)), dQ = scale dS K, dK = scale dS^T Q.
template <class T>
Gradients<T> naive_backward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                            const Tensor<T>& out, const Tensor<T>& lse, const Tensor<T>& dout,
                            const AttentionOptions& options = {});

/// Blockwise attention with online softmax (flash-attention): tiles of Br query rows and Bc key
/// rows (any sizes; tails are handled), running max m, sum l and output O per row; memory
/// O(Br * Bc) beyond the inputs and outputs.
template <class T>
ForwardResult<T> blockwise_forward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                   const AttentionOptions& options = {});
/// Blockwise backward in the flash-attention-2 style: P is recomputed tile by tile from Q, K and
/// LSE; D = rowsum(dO * O) is computed once per row.
template <class T>
Gradients<T> blockwise_backward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                const Tensor<T>& out, const Tensor<T>& lse, const Tensor<T>& dout,
                                const AttentionOptions& options = {});

/// Flash-decoding: the keys are cut into @p splits contiguous pieces (balanced; a split may be
/// empty when splits > S_kv), each gives a partial (O, LSE), and the partials are combined with
/// combine_partials. Meant for a few query tokens against a long K/V cache; valid for any S_q.
template <class T>
ForwardResult<T> decode_forward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                std::int64_t splits, const AttentionOptions& options = {});

// ---- the LSE merge ---------------------------------------------------------------------------

/// Folds a partial result (O_b, LSE_b) into a running one (O_a, LSE_a), row by row:
///   LSE = log(exp(LSE_a) + exp(LSE_b)),  O = exp(LSE_a - LSE) O_a + exp(LSE_b - LSE) O_b,
/// computed around max(LSE_a, LSE_b) so it never overflows. Safe when either LSE is -inf (that
/// side contributes nothing; both -inf gives O = 0, LSE = -inf). The views must agree in shape.
template <class T>
void merge_into(SeqView<T> out_acc, LseView<T> lse_acc, SeqView<const T> out_part,
                LseView<const T> lse_part);
/// Whole-tensor form of merge_into.
template <class T>
void merge_into(Tensor<T>& out_acc, Tensor<T>& lse_acc, const Tensor<T>& out_part,
                const Tensor<T>& lse_part);

// ---- kernels on views with global positions (what the ring and decoding call) -----------------

/// Arguments of one blockwise kernel call: queries at positions @c qpos against keys at
/// positions @c kpos. Views select rows; all views share B and the Q/K head counts.
struct KernelArgs {
  Positions qpos;              ///< global position of query row i: qpos.at(i)
  Positions kpos;              ///< global position of key row j: kpos.at(j)
  bool causal = false;         ///< mask keys with kpos.at(j) > qpos.at(i)
  std::optional<double> scale; ///< softmax scale; 1/sqrt(D) when empty, as in AttentionOptions
  std::int64_t block_q = 128;  ///< Br
  std::int64_t block_kv = 256; ///< Bc
  /// Called after every tile when set: the MPI ring tests its in-flight requests here, which is
  /// what lets MPI move the next block while this one is computed.
  std::function<void()> progress;
};

/// Blockwise forward of one (query rows, key rows) pair: writes O and LSE for the query rows
/// (overwrites; rows that see no key get O = 0, LSE = -inf).
template <class T>
void block_forward(SeqView<const T> q, SeqView<const T> k, SeqView<const T> v,
                   const KernelArgs& args, SeqView<T> out, LseView<T> lse);

/// Blockwise backward of one pair given the *final* LSE and D = rowsum(dO * O) of the query
/// rows: accumulates (+=) into dq, dk and dv, so a caller can sum over many key blocks (the
/// ring) or many query blocks.
template <class T>
void block_backward(SeqView<const T> q, SeqView<const T> k, SeqView<const T> v,
                    SeqView<const T> dout, LseView<const T> lse, LseView<const T> delta,
                    const KernelArgs& args, SeqView<T> dq, SeqView<T> dk, SeqView<T> dv);

/// D = rowsum(dO * O) per query row and head, as a (B, H_q, S) tensor.
template <class T>
Tensor<T> softmax_delta(const Tensor<T>& out, const Tensor<T>& dout);

/// Combines P partial results (O_p, LSE_p) of the same queries in one pass (flash-decoding's
/// combine step): LSE = logsumexp_p LSE_p, O = sum_p exp(LSE_p - LSE) O_p. -inf safe.
template <class T>
ForwardResult<T> combine_partials(const std::vector<ForwardResult<T>>& partials);

}  // namespace ringattn::ref
