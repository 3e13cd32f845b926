// The ring driver's element-wise kernels: fill, add, float32 -> input-type conversion with row
// pitches, and the backward's D = rowsum(dO * O) pre-pass on a segment. Grid-stride loops; all
// of them are memory-bound and small next to the attention kernels of a ring step.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "common.cuh"
#include "ring_kernels.hpp"

namespace ringattn::cuda::detail {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(std::size_t n) {
  const std::size_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::clamp<std::size_t>(b, 1, 65535));
}

__global__ void fill_kernel(float* dst, std::size_t n, float value) {
  for (std::size_t i = blockIdx.x * std::size_t{blockDim.x} + threadIdx.x; i < n; i += std::size_t{gridDim.x} * blockDim.x) {
    dst[i] = value;
  }
}

__global__ void add_kernel(float* dst, const float* src, std::size_t n) {
  for (std::size_t i = blockIdx.x * std::size_t{blockDim.x} + threadIdx.x; i < n; i += std::size_t{gridDim.x} * blockDim.x) {
    dst[i] += src[i];
  }
}

template <class T>
__global__ void convert_kernel(const float* src, std::size_t src_pitch, T* dst, std::size_t dst_pitch,
                               std::size_t width, std::size_t rows) {
  const std::size_t n = width * rows;
  for (std::size_t i = blockIdx.x * std::size_t{blockDim.x} + threadIdx.x; i < n; i += std::size_t{gridDim.x} * blockDim.x) {
    const std::size_t r = i / width, c = i % width;
    dst[r * dst_pitch + c] = from_float<T>(src[r * src_pitch + c]);
  }
}

// One warp per (b, s, h) row: D = sum_d dO[d] * O[d], written at (b, h, s).
template <class T>
__global__ void delta_kernel(const T* out, const T* dout, float* delta, std::int64_t batch, std::int64_t seq,
                             std::int64_t heads, std::int64_t head_dim) {
  const std::int64_t warp = (blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const std::int64_t rows = batch * seq * heads;
  if (warp >= rows) return;
  const std::int64_t h = warp % heads, s = (warp / heads) % seq, b = warp / (heads * seq);
  const T* o = out + warp * head_dim;  // (B, S, H, D): row `warp` in that order
  const T* d = dout + warp * head_dim;
  float acc = 0.0f;
  for (std::int64_t x = lane; x < head_dim; x += 32) acc += to_float(o[x]) * to_float(d[x]);
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffU, acc, off);
  if (lane == 0) delta[(b * heads + h) * seq + s] = acc;
}

}  // namespace

void ring_fill(float* dst, std::size_t n, float value, cudaStream_t stream) {
  if (n == 0) return;
  fill_kernel<<<blocks_for(n), kThreads, 0, stream>>>(dst, n, value);
  RINGATTN_CHECK_LAUNCH("ring fill_kernel");
}

void ring_add(float* dst, const float* src, std::size_t n, cudaStream_t stream) {
  if (n == 0) return;
  add_kernel<<<blocks_for(n), kThreads, 0, stream>>>(dst, src, n);
  RINGATTN_CHECK_LAUNCH("ring add_kernel");
}

void ring_convert(const float* src, std::size_t src_pitch, void* dst, DType dtype, std::size_t dst_pitch,
                  std::size_t width, std::size_t rows, cudaStream_t stream) {
  if (width * rows == 0) return;
  dispatch_in(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    convert_kernel<T><<<blocks_for(width * rows), kThreads, 0, stream>>>(src, src_pitch, static_cast<T*>(dst),
                                                                          dst_pitch, width, rows);
  });
  RINGATTN_CHECK_LAUNCH("ring convert_kernel");
}

void ring_delta(const void* out, const void* dout, DType dtype, float* delta, std::int64_t batch, std::int64_t seq,
                std::int64_t heads, std::int64_t head_dim, cudaStream_t stream) {
  const std::int64_t rows = batch * seq * heads;
  if (rows == 0) return;
  const std::int64_t warps_per_block = kThreads / 32;
  const auto grid = static_cast<unsigned>((rows + warps_per_block - 1) / warps_per_block);
  dispatch_in(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    delta_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(out), static_cast<const T*>(dout), delta,
                                                   batch, seq, heads, head_dim);
  });
  RINGATTN_CHECK_LAUNCH("ring delta_kernel");
}

}  // namespace ringattn::cuda::detail
