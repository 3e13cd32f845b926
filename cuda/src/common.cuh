// Device helpers the kernels of cuda/ share: element conversions (every kernel reads its dtype and
// computes in float32), an 8-element vector load, indexing of BSHD tensors, the host-side
// dispatch from a runtime DType / head dim to a template instance, and the stream launcher.
// Everything but StreamLauncher also compiles with the host compiler (the CUDA headers give
// host versions of the conversions), so the CPU emulation in tests/cuda runs the kernels on it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "launch.hpp"
#include "ringattn/cuda/device.hpp"

/// Checks the launch just queued (a bad configuration shows up here; a fault inside the kernel
/// shows up at the next synchronizing call).
#define RINGATTN_CHECK_LAUNCH(name) \
  ::ringattn::cuda::check_cuda(static_cast<int>(cudaGetLastError()), "launch of " name, __FILE__, __LINE__)

namespace ringattn::cuda::detail {

// ---- element conversions: load as float, store from float (round to nearest even) --------------

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

/// Loads 8 consecutive elements at @p p (16-byte aligned for 2-byte types, 32-byte for float)
/// with 16-byte loads and widens them to float.
__device__ __forceinline__ void load8(const float* p, float out[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0];
  const float4 b = reinterpret_cast<const float4*>(p)[1];
  out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
  out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}
__device__ __forceinline__ void load8(const __half* p, float out[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __half2* h2 = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
  for (int n = 0; n < 4; ++n) {
    const float2 f = __half22float2(h2[n]);
    out[2 * n] = f.x, out[2 * n + 1] = f.y;
  }
}
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float out[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* b2 = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int n = 0; n < 4; ++n) {
    const float2 f = __bfloat1622float2(b2[n]);
    out[2 * n] = f.x, out[2 * n + 1] = f.y;
  }
}

/// Element offset of row (b, s, h) of a (B, S, H, D) tensor, in 64 bits (B S H D may pass 2^31).
__device__ __forceinline__ std::int64_t bshd_row(std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t seq,
                                                 std::int64_t heads, std::int64_t dim) {
  return ((b * seq + s) * heads + h) * dim;
}

// ---- host-side dispatch: runtime DType / head dim -> template instance --------------------------

/// A type carried as a value, so a generic lambda can receive it.
template <class T>
struct Tag {
  using type = T;
};

/// Calls f(Tag<In>, Tag<Out>) for the element types of @p in and @p out (out is F32 or @p in;
/// resolve_forward checked it).
template <class F>
void dispatch_in_out(DType in, DType out, F&& f) {
  const bool f32_out = out == DType::F32;
  switch (in) {
    case DType::F32: f(Tag<float>{}, Tag<float>{}); return;
    case DType::F16:
      if (f32_out) f(Tag<__half>{}, Tag<float>{});
      else f(Tag<__half>{}, Tag<__half>{});
      return;
    case DType::BF16:
      if (f32_out) f(Tag<__nv_bfloat16>{}, Tag<float>{});
      else f(Tag<__nv_bfloat16>{}, Tag<__nv_bfloat16>{});
      return;
  }
}

/// Calls f(Tag<In>) for the element type of @p in.
template <class F>
void dispatch_in(DType in, F&& f) {
  switch (in) {
    case DType::F32: f(Tag<float>{}); return;
    case DType::F16: f(Tag<__half>{}); return;
    case DType::BF16: f(Tag<__nv_bfloat16>{}); return;
  }
}

/// Calls f(std::integral_constant<int, B>) for @p bucket in {32, 64, 128, 256} (head_dim_bucket).
template <class F>
void dispatch_bucket(int bucket, F&& f) {
  switch (bucket) {
    case 32: f(std::integral_constant<int, 32>{}); return;
    case 64: f(std::integral_constant<int, 64>{}); return;
    case 128: f(std::integral_constant<int, 128>{}); return;
    case 256: f(std::integral_constant<int, 256>{}); return;
    default: fail("internal: no kernel instance for head-dim bucket ", bucket);
  }
}

// ---- launchers: how the kernel headers' run_* functions launch ----------------------------------
//
// Each SIMT kernel's header (forward_simple.cuh, ...) holds its kernels and a run_* function that
// picks the template instance and the grid and launches through a launcher, called as
//   launch("kernel name", kernel, grid, block, args...)
// On the GPU that is StreamLauncher below; tests/cuda/simt_emulator.hpp's SimtLauncher runs the
// same run_* functions, and the same kernels compiled for the host, on the CPU.

#if defined(__CUDACC__)
/// Queues kernel<<<grid, block, 0, stream>>>(args...) and checks the launch (a bad configuration
/// shows up here; a fault inside the kernel at the next synchronizing call).
struct StreamLauncher {
  cudaStream_t stream = nullptr;

  template <class... P, class... A>
  void operator()(const char* name, void (*kernel)(P...), unsigned grid, unsigned block, A&&... args) const {
    static_assert(sizeof...(P) == sizeof...(A), "kernel arguments");
    kernel<<<grid, block, 0, stream>>>(static_cast<P>(args)...);
    const cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess) {
      check_cuda(static_cast<int>(status), (std::string("launch of ") + name).c_str(), __FILE__, __LINE__);
    }
  }
};
#endif

}  // namespace ringattn::cuda::detail
