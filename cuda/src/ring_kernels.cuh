// The ring driver's element-wise kernels: fill, add, float32 -> input-type conversion with row
// pitches, and the backward's D = rowsum(dO * O) pre-pass on a segment. Grid-stride loops; all
// of them are memory-bound and small next to the attention kernels of a ring step.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "common.cuh"

namespace ringattn::cuda::detail {
// The kernels and run_* below are in an unnamed namespace: tests/cuda compiles them a second time
// with the host compiler to run them on the CPU (simt_emulator.hpp), and those copies must not
// share symbols with the nvcc-compiled ones (whose host stubs launch on the GPU).
namespace {

constexpr int kRingThreads = 256;

unsigned blocks_for(std::size_t n) {
  const std::size_t b = (n + kRingThreads - 1) / kRingThreads;
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

/// dst[0, n) = value.
template <class Launcher>
void run_ring_fill(float* dst, std::size_t n, float value, Launcher&& launch) {
  if (n == 0) return;
  launch("ring fill_kernel", fill_kernel, blocks_for(n), static_cast<unsigned>(kRingThreads), dst, n, value);
}

/// dst[0, n) += src[0, n).
template <class Launcher>
void run_ring_add(float* dst, const float* src, std::size_t n, Launcher&& launch) {
  if (n == 0) return;
  launch("ring add_kernel", add_kernel, blocks_for(n), static_cast<unsigned>(kRingThreads), dst, src, n);
}

/// rows x width float32 (row pitch src_pitch) -> @p dtype (row pitch dst_pitch), pitches in elements.
template <class Launcher>
void run_ring_convert(const float* src, std::size_t src_pitch, void* dst, DType dtype, std::size_t dst_pitch,
                      std::size_t width, std::size_t rows, Launcher&& launch) {
  if (width * rows == 0) return;
  dispatch_in(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch("ring convert_kernel", convert_kernel<T>, blocks_for(width * rows), static_cast<unsigned>(kRingThreads), src,
           src_pitch, static_cast<T*>(dst), dst_pitch, width, rows);
  });
}

/// delta (B, H, S) = rowsum(dO * O) of (B, S, H, D) tensors of @p dtype, a warp per row.
template <class Launcher>
void run_ring_delta(const void* out, const void* dout, DType dtype, float* delta, std::int64_t batch, std::int64_t seq,
                    std::int64_t heads, std::int64_t head_dim, Launcher&& launch) {
  const std::int64_t rows = batch * seq * heads;
  if (rows == 0) return;
  const std::int64_t warps_per_block = kRingThreads / 32;
  const auto grid = static_cast<unsigned>((rows + warps_per_block - 1) / warps_per_block);
  dispatch_in(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch("ring delta_kernel", delta_kernel<T>, grid, static_cast<unsigned>(kRingThreads), static_cast<const T*>(out),
           static_cast<const T*>(dout), delta, batch, seq, heads, head_dim);
  });
}

}  // namespace
}  // namespace ringattn::cuda::detail
