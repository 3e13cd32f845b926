// Internal to cuda/: the validated, resolved arguments every kernel launcher receives (positions
// and scale filled in, pointers checked), and the launchers of each kernel version. The public
// API (attention.hpp) validates and resolves, then calls one of these.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "ringattn/cuda/attention.hpp"

namespace ringattn::cuda::detail {

/// A forward call after validation: sizes, pointers, global positions and the scale resolved.
struct FwdLaunch {
  const void* q = nullptr;    // (B, S_q, H_q, D)
  const void* k = nullptr;    // (B, S_kv, H_kv, D)
  const void* v = nullptr;    // (B, S_kv, H_kv, D)
  void* out = nullptr;        // (B, S_q, H_q, D) in out_dtype
  float* lse = nullptr;       // (B, H_q, S_q) or null
  std::int64_t batch = 0, seq_q = 0, seq_kv = 0, heads_q = 0, heads_kv = 0, head_dim = 0;
  DType dtype = DType::BF16;
  DType out_dtype = DType::F32;
  bool causal = false;
  std::int64_t q_offset = 0, q_stride = 1;  // query row i at q_offset + i * q_stride
  std::int64_t k_offset = 0, k_stride = 1;  // key row j at k_offset + j * k_stride
  float scale = 1.0f;
};

/// A backward call after validation (see BackwardArgs for the meaning of each field).
struct BwdLaunch {
  const void *q = nullptr, *k = nullptr, *v = nullptr, *out = nullptr, *dout = nullptr;
  const float* lse = nullptr;
  float* delta = nullptr;
  bool compute_delta = true;
  float *dq = nullptr, *dk = nullptr, *dv = nullptr;
  bool accumulate = false;
  std::int64_t batch = 0, seq_q = 0, seq_kv = 0, heads_q = 0, heads_kv = 0, head_dim = 0;
  DType dtype = DType::BF16;
  bool causal = false;
  std::int64_t q_offset = 0, q_stride = 1;
  std::int64_t k_offset = 0, k_stride = 1;
  float scale = 1.0f;
};

// The tensor-core forward (forward_tc.cu): bf16/fp16 inputs, fp32 accumulation, D = 64 or 128.
/// Whether the tensor-core forward supports @p a; if not, @p why says why.
bool forward_tensor_core_supports(const FwdLaunch& a, std::string* why);
/// Launches the tensor-core forward on @p stream (arguments already validated and supported).
void forward_tensor_core(const FwdLaunch& a, cudaStream_t stream);

// The tensor-core backward (backward_tc.cu): bf16/fp16 inputs, fp32 gradients, D = 64 or 128.
/// Whether the tensor-core backward supports @p a; if not, @p why says why. The argument checks
/// come first, the device query (compute capability, shared memory) last.
bool backward_tensor_core_supports(const BwdLaunch& a, std::string* why);
/// Shared memory per block of the tensor-core backward for @p head_dim (64 or 128; else 0).
int backward_tensor_core_smem_bytes(std::int64_t head_dim);
/// Launches the tensor-core backward on @p stream: the D pre-pass (if asked), dQ zeroed (unless
/// accumulate), then the main kernel (arguments already validated and supported).
void backward_tensor_core(const BwdLaunch& a, cudaStream_t stream);

}  // namespace ringattn::cuda::detail
