// The device side shared by the tensor-core kernels (forward_tc.cu, backward_tc.cu): DeviceWarp,
// the warp policy of forward_tc_tile.hpp / backward_tc_tile.hpp made of real PTX (one lane per
// thread), the cp.async instructions, and DeviceCta, the CTA policy the kernels' CTA programs
// (forward_cta, backward_cta) run on. Device code only (nvcc); the CPU emulations of the same
// policies are tests/cuda/mma_emulator.hpp (the warp) and tests/cuda/cta_emulator.hpp (the CTA).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "backward_tc_tile.hpp"
#include "forward_tc_tile.hpp"
#include "mma_fragments.hpp"

namespace ringattn::cuda::detail::tc {

// ---- the device warp policy: one lane, real PTX -----------------------------------------

__device__ __forceinline__ std::uint32_t smem_address(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

template <class Elem>
struct DeviceWarp {
  using F = float;
  using I = int;
  using U = std::uint32_t;
  using B = bool;

  __device__ __forceinline__ I lane() const { return static_cast<int>(threadIdx.x & 31u); }

  // ex2.approx.ftz: 2 ulp, exp2(-inf) = +0, the instruction flash-attention uses.
  __device__ __forceinline__ F exp2(F x) const {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
  }
  __device__ __forceinline__ F log(F x) const { return logf(x); }
  __device__ __forceinline__ F max(F a, F b) const { return fmaxf(a, b); }
  __device__ __forceinline__ F select(B c, F a, F b) const { return c ? a : b; }
  template <class Fn>
  __device__ __forceinline__ I map_lanes(I x, Fn&& f) const {
    return f(x);
  }
  __device__ __forceinline__ F shfl_xor(F x, int mask) const {
    return __shfl_xor_sync(0xffffffffu, x, mask);
  }

  __device__ __forceinline__ U pack2(F lo, F hi) const {
    U u;
    if constexpr (std::is_same_v<Elem, Bf16>) {
      const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x = lo: bits 0..15
      std::memcpy(&u, &v, sizeof u);
    } else {
      const __half2 v = __floats2half2_rn(lo, hi);
      std::memcpy(&u, &v, sizeof u);
    }
    return u;
  }

  // ldmatrix: this lane passes the address of one 16-byte row (mma_fragments.hpp).
  __device__ __forceinline__ void ldsm_x4(U (&r)[4], const std::uint16_t* base, I offset) const {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(base) + 2u * static_cast<std::uint32_t>(offset)));
  }
  __device__ __forceinline__ void ldsm_x4_trans(U (&r)[4], const std::uint16_t* base, I offset) const {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(base) + 2u * static_cast<std::uint32_t>(offset)));
  }

  // d += a b: 16x8 fp32 tile += 16x16 (row) x 16x8 (col).
  __device__ __forceinline__ void mma(F (&d)[4], const U (&a)[4], U b0, U b1) const {
    if constexpr (std::is_same_v<Elem, Bf16>) {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
          "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
          "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
  }

  // ---- what the backward adds (backward_tc_tile.hpp) ----
  __device__ __forceinline__ F lds_f32(const float* base, I index) const { return base[index]; }
  __device__ __forceinline__ void sts_u32(std::uint16_t* base, I offset, U v) const {
    *reinterpret_cast<U*>(base + offset) = v;  // offset even: 4-byte aligned
  }
  // dQ is summed over the key tiles of every CTA: atomicAdd (a red.global.add.f32, no return).
  __device__ __forceinline__ void add_dq(const DqBlock& o, I row, I col, F v0, F v1) const {
    if (row >= o.rows) return;
    float* p = o.dq + row * o.row_stride + col;
    atomicAdd(p, v0);
    atomicAdd(p + 1, v1);
  }
  // Two adjacent columns of one dK and one dV row: 8-byte stores (col even, rows 8-byte aligned:
  // backward_tensor_core_supports checks dk, dv).
  __device__ __forceinline__ void store_dkdv(const DkvBlock& o, I row, I col, F k0, F k1, F v0, F v1) const {
    if (row >= o.rows) return;
    const std::int64_t at = row * o.row_stride + col;
    float2* dk = reinterpret_cast<float2*>(o.dk + at);
    float2* dv = reinterpret_cast<float2*>(o.dv + at);
    if (o.accumulate) {
      const float2 k = *dk;
      const float2 v = *dv;
      k0 += k.x, k1 += k.y, v0 += v.x, v1 += v.y;
    }
    *dk = make_float2(k0, k1);
    *dv = make_float2(v0, v1);
  }

  // Two adjacent columns of one O row: 8 bytes (fp32) or 4 bytes (bf16/fp16), aligned because
  // col is even and rows start 16-byte aligned (D is a multiple of 8, out 16-byte aligned).
  __device__ __forceinline__ void store_o(const OutBlock& o, I row, I col, F v0, F v1) const {
    if (row >= o.rows) return;
    const std::int64_t at = row * o.row_stride + col;
    if (o.out_f32) {
      *reinterpret_cast<float2*>(static_cast<float*>(o.out) + at) = make_float2(v0, v1);
    } else {
      *reinterpret_cast<U*>(static_cast<std::uint16_t*>(o.out) + at) = pack2(v0, v1);
    }
  }
  __device__ __forceinline__ void store_lse(const OutBlock& o, I row, B writer, F v) const {
    if (o.lse != nullptr && writer && row < o.rows) o.lse[row] = v;
  }
};

// ---- cp.async (PTX ISA "Data Movement and Conversion Instructions: cp.async") -------------

// 16 bytes global -> shared, bypassing L1 (.cg); src_bytes = 0 reads nothing and zero-fills.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)), "l"(src),
               "r"(src_bytes));
}
// 4 bytes global -> shared (.ca: the 4-byte size exists only with it); src_bytes = 0 zero-fills.
__device__ __forceinline__ void cp_async_4(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_address(dst)), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// ---- the CTA policy of forward_cta / backward_cta (forward_tc_tile.hpp lists its members) ----

template <class Elem>
class DeviceCta {
 public:
  using W = DeviceWarp<Elem>;

  __device__ __forceinline__ explicit DeviceCta(std::uint16_t* smem) : smem_(smem) {}

  __device__ __forceinline__ W& w() { return w_; }
  __device__ __forceinline__ int warp() const { return static_cast<int>(threadIdx.x) / 32; }
  __device__ __forceinline__ int block_x() const { return static_cast<int>(blockIdx.x); }
  __device__ __forceinline__ int block_y() const { return static_cast<int>(blockIdx.y); }
  __device__ __forceinline__ int block_z() const { return static_cast<int>(blockIdx.z); }
  __device__ __forceinline__ std::uint16_t* smem() const { return smem_; }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
  template <class Fn>
  __device__ __forceinline__ void for_each_thread(Fn&& f) const {
    f(static_cast<int>(threadIdx.x));
  }
  __device__ __forceinline__ void cp_async_16(void* dst, const void* src, int src_bytes) const {
    tc::cp_async_16(dst, src, src_bytes);
  }
  __device__ __forceinline__ void cp_async_4(void* dst, const void* src, int src_bytes) const {
    tc::cp_async_4(dst, src, src_bytes);
  }
  __device__ __forceinline__ void commit() const { cp_async_commit(); }
  template <int N>
  __device__ __forceinline__ void wait() const {
    cp_async_wait<N>();
  }

 private:
  std::uint16_t* smem_;
  W w_;
};

}  // namespace ringattn::cuda::detail::tc
