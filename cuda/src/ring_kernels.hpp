// Internal to cuda/: the small element-wise kernels the ring driver needs between attention
// calls (ring_kernels.cu). Each checks its launch and returns without synchronizing.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "ringattn/cuda/attention.hpp"

namespace ringattn::cuda::detail {

/// dst[0..n) = value.
void ring_fill(float* dst, std::size_t n, float value, cudaStream_t stream);
/// dst[0..n) += src[0..n): a scratch block's dK/dV added into the travelling accumulator.
void ring_add(float* dst, const float* src, std::size_t n, cudaStream_t stream);
/// rows x width float32 elements (row pitches in elements) converted to @p dtype, round to
/// nearest even.
void ring_convert(const float* src, std::size_t src_pitch, void* dst, DType dtype, std::size_t dst_pitch,
                  std::size_t width, std::size_t rows, cudaStream_t stream);
/// D = rowsum(dO * O) of (B, S, H, D) tensors in @p dtype into a (B, H, S) float32 tensor: one
/// warp per row.
void ring_delta(const void* out, const void* dout, DType dtype, float* delta, std::int64_t batch,
                std::int64_t seq, std::int64_t heads, std::int64_t head_dim, cudaStream_t stream);

}  // namespace ringattn::cuda::detail
