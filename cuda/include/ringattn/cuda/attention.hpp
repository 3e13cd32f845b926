/// @file attention.hpp
/// @brief The CUDA attention kernels' host API: forward (O and LSE), backward, the LSE merge and
/// split-KV decoding, on device buffers, with arguments checked like the CPU reference's.
///
/// Conventions are the project's (docs/conventions.md): Q is (B, S_q, H_q, D), K and V are
/// (B, S_kv, H_kv, D), O has Q's shape, LSE is (B, H_q, S_q) natural-log in float32; all
/// row-major and contiguous, on the current device. Causal masks compare *global* positions:
/// query row i sits at q_pos.at(i), key row j at k_pos.at(j), and the key is visible when
/// k_pos.at(j) <= q_pos.at(i). Offsets and strides let a ring's contiguous, striped and zigzag
/// segments map onto one kernel call each (core's RingSchedule gives them). A row that sees no
/// key gets O = 0 and LSE = -inf.
///
/// Every call validates its arguments first (ringattn::Error with a one-line message naming the
/// problem: a null or misaligned pointer, a head dim the kernel does not support, H_q not a
/// multiple of H_kv, a stride < 1, ...), then launches on @c stream, checks the launch, and
/// returns without synchronizing. CUDA failures (out of memory included) become ringattn::Error
/// carrying cudaGetErrorString's text.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "ringattn/core/error.hpp"
#include "ringattn/core/schedule.hpp"
#include "ringattn/core/shape.hpp"

/// A CUDA stream handle without including the CUDA headers (same type as cudaStream_t).
using ringattn_cuda_stream_t = struct CUstream_st*;

namespace ringattn::cuda {

/// Element type of a device tensor.
enum class DType {
  F32,   ///< float32 (the exact-comparison path)
  F16,   ///< IEEE half
  BF16,  ///< bfloat16
};
/// "fp32", "fp16" or "bf16".
[[nodiscard]] std::string_view to_string(DType dtype);
/// Parses "fp32"/"float32", "fp16"/"float16", "bf16"/"bfloat16"; throws ringattn::Error otherwise.
[[nodiscard]] DType parse_dtype(std::string_view name);
/// Bytes of one element.
[[nodiscard]] std::size_t element_bytes(DType dtype);

/// Which version of a kernel runs (cuda/README.md explains each). The forward has all four; the
/// backward has Simple and TensorCore (Auto: TensorCore where it supports the call, else Simple).
enum class Kernel {
  Auto,        ///< TensorCore where it supports the arguments, else Tiled (forward) or Simple
  Simple,      ///< one thread per query (or key) row, float32 arithmetic: the exact-comparison path
  Tiled,       ///< forward only: the flash-attention-1 loop with K/V tiles in shared memory (Br x Bc)
  TensorCore,  ///< mma.sync + ldmatrix + cp.async, bf16/fp16 in, fp32 accumulation; D = 64, 128
};
/// "auto", "simple", "tiled" or "tensor-core".
[[nodiscard]] std::string_view to_string(Kernel kernel);
/// Parses a kernel name; throws ringattn::Error listing the names otherwise.
[[nodiscard]] Kernel parse_kernel(std::string_view name);

/// Mask and scale shared by every kernel call.
struct MaskArgs {
  bool causal = false;  ///< mask keys with k_pos.at(j) > q_pos.at(i)
  /// Global position of query row i; unset: S_kv - S_q + i (queries aligned to the end of the
  /// keys, as in the reference and flash-attention).
  std::optional<Positions> q_pos;
  /// Global position of key row j; unset: j.
  std::optional<Positions> k_pos;
  /// Softmax scale; unset: 1 / sqrt(D).
  std::optional<float> scale;
};

/// A forward call: O (and LSE) of Q against K, V.
struct ForwardArgs {
  AttentionShape shape;           ///< B, S_q, S_kv, H_q, H_kv, D
  DType dtype = DType::BF16;      ///< of Q, K and V
  const void* q = nullptr;        ///< (B, S_q, H_q, D), device
  const void* k = nullptr;        ///< (B, S_kv, H_kv, D), device
  const void* v = nullptr;        ///< (B, S_kv, H_kv, D), device
  void* out = nullptr;            ///< (B, S_q, H_q, D), device, in out_dtype
  DType out_dtype = DType::F32;   ///< F32 (what a ring merges) or the input dtype
  float* lse = nullptr;           ///< (B, H_q, S_q) float32, device; may be null
  MaskArgs mask;                  ///< causal mask, positions, scale
};

/// Runs the forward with the chosen kernel version. Throws ringattn::Error on bad arguments
/// (including a kernel version that does not support them, e.g. TensorCore with D = 96) and on
/// CUDA errors.
void forward(const ForwardArgs& args, Kernel kernel = Kernel::Auto, ringattn_cuda_stream_t stream = nullptr);

/// Whether @p kernel supports @p args (dtype, head dim, alignment); if not, @p why says why.
[[nodiscard]] bool supports(const ForwardArgs& args, Kernel kernel, std::string* why = nullptr);

/// A backward call given the forward's O and its *final* LSE.
struct BackwardArgs {
  AttentionShape shape;           ///< B, S_q, S_kv, H_q, H_kv, D
  DType dtype = DType::BF16;      ///< of Q, K, V, O and dO
  const void* q = nullptr;        ///< (B, S_q, H_q, D), device
  const void* k = nullptr;        ///< (B, S_kv, H_kv, D), device
  const void* v = nullptr;        ///< (B, S_kv, H_kv, D), device
  const void* out = nullptr;      ///< O of the forward, (B, S_q, H_q, D), device, in dtype
  const void* dout = nullptr;     ///< dO, (B, S_q, H_q, D), device, in dtype
  const float* lse = nullptr;     ///< final LSE of the forward, (B, H_q, S_q) float32
  /// D = rowsum(dO * O), (B, H_q, S_q) float32: computed into this buffer by the pre-pass when
  /// compute_delta, else read from it (a ring computes it once and reuses it every step).
  float* delta = nullptr;
  bool compute_delta = true;      ///< run the pre-pass D = rowsum(dO * O) into delta
  float* dq = nullptr;            ///< (B, S_q, H_q, D) float32, device
  float* dk = nullptr;            ///< (B, S_kv, H_kv, D) float32, device
  float* dv = nullptr;            ///< (B, S_kv, H_kv, D) float32, device
  /// Add into dq, dk, dv (a ring sums over steps) instead of overwriting them.
  bool accumulate = false;
  MaskArgs mask;                  ///< as in the forward
};

/// Runs the backward: the pre-pass (if asked), dK/dV per key tile, dQ accumulated. Throws
/// ringattn::Error on bad arguments and CUDA errors.
void backward(const BackwardArgs& args, Kernel kernel = Kernel::Auto, ringattn_cuda_stream_t stream = nullptr);

/// Folds a partial (O_part, LSE_part) into a running (O_acc, LSE_acc), row by row:
/// LSE = log(exp(LSE_acc) + exp(LSE_part)), O = exp(LSE_acc - LSE) O_acc + exp(LSE_part - LSE) O_part,
/// around the max so nothing overflows; -inf on either side is safe (both -inf: O = 0, LSE =
/// -inf). O tensors are (B, S, H, D) float32, LSE tensors (B, H, S) float32, all on the device.
void merge(float* out_acc, float* lse_acc, const float* out_part, const float* lse_part, std::int64_t batch,
           std::int64_t seq, std::int64_t heads, std::int64_t head_dim, ringattn_cuda_stream_t stream = nullptr);

/// Split-KV decoding (flash-decoding): the keys are cut into @p splits chunks computed in
/// parallel into (O_i, LSE_i) partials in @p workspace, then combined. Meant for few query rows
/// (S_q small) against a long cache. @p workspace must hold decode_workspace_bytes(...) bytes.
void decode(const ForwardArgs& args, int splits, void* workspace, ringattn_cuda_stream_t stream = nullptr);
/// Bytes of device workspace decode() needs for @p shape and @p splits.
[[nodiscard]] std::size_t decode_workspace_bytes(const AttentionShape& shape, int splits);
/// A split count that fills the device: enough (batch x heads x splits) blocks for every SM,
/// each split at least 256 keys.
[[nodiscard]] int decode_default_splits(const AttentionShape& shape, int multiprocessors);

/// Number of visible CUDA devices; 0 with @p why set when there is none or the driver is
/// missing (tests and tutorials skip with that reason).
[[nodiscard]] int device_count(std::string* why = nullptr);

}  // namespace ringattn::cuda
