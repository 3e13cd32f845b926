// The tensor-core backward: flash-attention-2's Algorithm 2 on mma.sync, the production backward
// of cuda/.
//
// Versions of the backward in cuda/ (cuda/README.md): simple (backward_simple.cu: one thread per
// query row for dQ, one per key row for dK/dV, fp32, the exact-comparison path) and this one:
//   - bf16 or fp16 Q, K, V, O, dO; fp32 accumulation; dQ, dK, dV in fp32 (written, or added to
//     with `accumulate`, as a ring sums over its steps); LSE and D = rowsum(dO * O) in fp32;
//   - head dim D = 64 or 128 (a template parameter: every loop below unrolls);
//   - pre-pass (when compute_delta): D_i = rowsum(dO_i * O_i), 8 threads per row with 16-byte
//     loads; then dQ is zeroed (unless accumulate) since the main kernel adds into it;
//   - main kernel: a CTA of 4 warps owns Bc = 64 key rows (K_j, V_j in shared memory for the
//     whole CTA), 16 per warp, of one (kv head, batch). It loops over the query tiles of Br = 64
//     rows of every query head of the GQA group (head-major), so dK_j and dV_j of the group sum in
//     registers (fp32 C fragments, no atomics) and are written once at the end;
//   - per query tile, each warp computes the transposed products for its 16 keys (the key rows
//     are the m16 dimension): S^T = K Q^T, P^T = exp(scale S^T - LSE), dV += P^T dO,
//     dP^T = V dO^T, dS^T = P^T o (dP^T - D), dK += dS^T Q (backward_tc_tile.hpp). P^T and dS^T
//     feed the next product from registers (C -> A identity); Q and dO reach the tensor cores
//     with ldmatrix (non-trans as B^T, .trans as B). At D = 128 a tile is done in two passes of
//     32 query columns so that S^T, dP^T fit beside the 128 accumulator registers of dK, dV;
//   - dQ_i += scale dS K_j: dS^T goes to shared memory in 16-bit, and after a barrier each warp
//     reads 16 query rows of it back with ldmatrix.trans as the A operand and K_j with .trans as
//     B, and adds its 16 x D result into the fp32 dQ in global memory with atomicAdd.
//     Why atomics and not a separate dQ pass (a second kernel per query tile looping over key
//     tiles): the dQ pass must recompute S = Q K^T and dP = dO V^T, 7 matrix products per (i, j)
//     pair instead of 5 (+40% tensor-core work, and the loads of K, V per query tile again),
//     while the atomics add Br x D fp32 reductions per pair that resolve in L2 (RED, no return
//     value) next to the 2 x Br x D 16-bit loads of Q_i and dO_i the pair already costs. It is
//     what flash-attention 2 does. The price: the summation order of dQ over key tiles is not
//     fixed, so dQ is not bitwise reproducible run to run (dK, dV are);
//   - Q_i, dO_i, LSE_i, D_i stream through a 2-stage cp.async pipeline (tile i+1 loads while
//     tile i computes) into XOR-swizzled shared memory (no ldmatrix bank conflicts);
//   - causal by global positions (q_pos(i) = q_offset + i q_stride, k_pos(j) likewise): query
//     tiles that see no key of the CTA's tile are never loaded (the loop starts at the first
//     query that sees the tile's first key); tiles crossing the diagonal, or with an S_q or S_kv
//     tail, mask per element (P = 0); any S_q, S_kv; a row with LSE = -inf contributes nothing.
// Shapes: Q, O, dO, dQ (B, S_q, H_q, D); K, V, dK, dV (B, S_kv, H_kv, D); LSE, D (B, H_q, S_q).
//
// Per query tile the CTA passes two barriers: one at the top (tile i has landed for every thread,
// and every warp is done with tile i-1, whose stage the next load overwrites and whose dS^T tile
// this one overwrites), one between writing dS^T and reading it back for dQ.
//
// The CTA program (backward_cta) and the warp-level tile math are in backward_tc_tile.hpp (shared
// matrix products: tc_warp_ops.hpp), run on the CPU by tests/cuda/mma_backward_emulation_test.cpp
// on an emulated CTA (with a shared-memory race check) against the long-double oracle; DeviceCta,
// DeviceWarp and cp.async are in tc_device.cuh. Needs sm_80+; built for 80 and 90.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "backward_tc_tile.hpp"
#include "common.cuh"
#include "detail.hpp"
#include "forward_tc_tile.hpp"
#include "ringattn/core/error.hpp"
#include "tc_device.cuh"

namespace ringattn::cuda::detail {
namespace tc {
namespace {

// ---- the pre-pass: D_i = rowsum(dO_i * O_i) ---------------------------------------------------

inline constexpr int kDeltaThreads = 128;
inline constexpr int kDeltaLanesPerRow = 8;  // each reads D / 8 consecutive elements, 16 bytes at a time
inline constexpr int kDeltaRowsPerBlock = kDeltaThreads / kDeltaLanesPerRow;

template <class Elem>
using CudaElem = std::conditional_t<std::is_same_v<Elem, Bf16>, __nv_bfloat16, __half>;

/// Row r of the (B S_q H_q) BSHD rows, 8 lanes per row (lanes 8k .. 8k+7 of a warp), written to
/// delta (B, H_q, S_q). Rows past the end compute 0 and store nothing, but shuffle with the rest.
template <class Elem, int D>
__global__ void __launch_bounds__(kDeltaThreads)
    delta_kernel(const std::uint16_t* out, const std::uint16_t* dout, float* delta, std::int64_t rows, int seq_q,
                 int heads_q) {
  using T = CudaElem<Elem>;
  const std::int64_t r = (static_cast<std::int64_t>(blockIdx.x) * kDeltaThreads + threadIdx.x) / kDeltaLanesPerRow;
  const int part = static_cast<int>(threadIdx.x) % kDeltaLanesPerRow;
  float acc = 0.0f;
  if (r < rows) {
    const T* o = reinterpret_cast<const T*>(out) + r * D;
    const T* g = reinterpret_cast<const T*>(dout) + r * D;
#pragma unroll
    for (int c = 0; c < D / (8 * kDeltaLanesPerRow); ++c) {
      const int at = 8 * (part + kDeltaLanesPerRow * c);  // consecutive lanes, consecutive 16 bytes
      float a[8], b[8];
      load8(o + at, a);
      load8(g + at, b);
#pragma unroll
      for (int e = 0; e < 8; ++e) acc += a[e] * b[e];
    }
  }
#pragma unroll
  for (int m = kDeltaLanesPerRow / 2; m >= 1; m /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, m);
  if (r < rows && part == 0) {
    const std::int64_t h = r % heads_q;
    const std::int64_t i = (r / heads_q) % seq_q;
    const std::int64_t b = r / (static_cast<std::int64_t>(heads_q) * seq_q);
    delta[(b * heads_q + h) * seq_q + i] = acc;
  }
}

// ---- the main kernel --------------------------------------------------------------------------

/// One CTA: backward_cta (backward_tc_tile.hpp) on the device's CTA policy.
template <class Elem, int D>
__global__ void __launch_bounds__(kThreads) backward_tc_kernel(const BwdParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  // Shared memory: BwdSmem<D> (57 KiB at D = 64, 105 KiB at D = 128).
  extern __shared__ __align__(128) std::uint16_t smem[];
  DeviceCta<Elem> cta(smem);
  backward_cta<D>(cta, p);
#else
  // Built for an architecture without cp.async / ldmatrix / bf16 mma: never launched there
  // (backward_tensor_core_supports checks the device), trap if it is anyway.
  (void)p;
  __trap();
#endif
}

template <class Elem, int D>
void launch(const BwdLaunch& a, const BwdParams& params, cudaStream_t stream) {
  if (a.compute_delta) {
    const std::int64_t rows = a.batch * a.seq_q * a.heads_q;
    const auto blocks = static_cast<unsigned>((rows + kDeltaRowsPerBlock - 1) / kDeltaRowsPerBlock);
    delta_kernel<Elem, D><<<blocks, kDeltaThreads, 0, stream>>>(static_cast<const std::uint16_t*>(a.out), params.dout,
                                                               a.delta, rows, params.seq_q, params.heads_q);
    RINGATTN_CHECK_LAUNCH("tensor-core backward: delta_kernel");
  }
  if (!a.accumulate) {
    // dQ is summed over the key tiles with atomics: it starts from 0 unless the caller's values count.
    const auto bytes = static_cast<std::size_t>(a.batch * a.seq_q * a.heads_q * a.head_dim) * sizeof(float);
    const cudaError_t e = cudaMemsetAsync(a.dq, 0, bytes, stream);
    if (e != cudaSuccess) fail("tensor-core backward: cannot zero dQ: ", cudaGetErrorString(e));
  }
  constexpr int bytes = BwdSmem<D>::kBytes;
  const auto kernel = backward_tc_kernel<Elem, D>;
  if (bytes > 48 * 1024) {
    // Above 48 KiB a block's dynamic shared memory must be opted into, per kernel.
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e != cudaSuccess) {
      fail("tensor-core backward: cannot give the kernel ", bytes, " bytes of shared memory: ", cudaGetErrorString(e));
    }
  }
  const dim3 grid(static_cast<unsigned>((a.seq_kv + kBwdBc - 1) / kBwdBc), static_cast<unsigned>(a.heads_kv),
                  static_cast<unsigned>(a.batch));
  kernel<<<grid, kThreads, bytes, stream>>>(params);
  RINGATTN_CHECK_LAUNCH("tensor-core backward: backward_tc_kernel");
}

bool aligned_to(const void* p, std::uintptr_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

}  // namespace
}  // namespace tc

bool backward_tensor_core_supports(const BwdLaunch& a, std::string* why) {
  auto no = [why](const std::string& reason) {
    if (why != nullptr) *why = "tensor-core backward: " + reason;
    return false;
  };
  if (a.dtype != DType::BF16 && a.dtype != DType::F16) {
    return no("takes bf16 or fp16 inputs, not " + std::string(to_string(a.dtype)) + " (use the simple kernel for fp32)");
  }
  if (a.head_dim != 64 && a.head_dim != 128) {
    return no("supports head dims 64 and 128, not " + std::to_string(a.head_dim) + " (use the simple kernel)");
  }
  if (!tc::aligned_to(a.q, 16) || !tc::aligned_to(a.k, 16) || !tc::aligned_to(a.v, 16) ||
      !tc::aligned_to(a.dout, 16) || (a.compute_delta && !tc::aligned_to(a.out, 16))) {
    return no("Q, K, V, dO (and O when computing D) must be 16-byte aligned (cp.async copies 16 bytes)");
  }
  if (!tc::aligned_to(a.dk, 8) || !tc::aligned_to(a.dv, 8)) {
    return no("dK and dV must be 8-byte aligned (two fp32 columns are stored at once)");
  }
  if (a.heads_kv <= 0 || a.heads_q % a.heads_kv != 0) {
    return no("H_q (" + std::to_string(a.heads_q) + ") must be a multiple of H_kv (" + std::to_string(a.heads_kv) +
              ")");
  }
  constexpr std::int64_t kMaxGrid = 65535;  // grid.y and grid.z limits
  if (a.heads_kv > kMaxGrid || a.batch > kMaxGrid) return no("H_kv and B must be at most 65535 (grid dimensions)");
  constexpr std::int64_t kMaxSeq = (std::int64_t{1} << 31) - 2 * tc::kBwdBr;  // row indices are int
  if (a.seq_q > kMaxSeq || a.seq_kv > kMaxSeq) return no("S_q and S_kv must be below 2^31 - 128");
  // The loop count group * query tiles is an int, and so is the pre-pass grid.
  const std::int64_t iterations = (a.heads_q / a.heads_kv) * ((a.seq_q + tc::kBwdBr - 1) / tc::kBwdBr);
  const std::int64_t delta_blocks = (a.batch * a.seq_q * a.heads_q + tc::kDeltaRowsPerBlock - 1) /
                                    tc::kDeltaRowsPerBlock;
  if (iterations > kMaxGridX || delta_blocks > kMaxGridX) {
    return no("too many query rows: (H_q / H_kv) x ceil(S_q / 64) and B S_q H_q / 16 must stay below 2^31");
  }
  if (a.q_stride < 1 || a.k_stride < 1) return no("position strides must be >= 1");
  if (!std::isfinite(a.scale)) return no("the scale must be finite");

  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  int major = 0;
  int minor = 0;
  int smem_optin = 0;
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // a machine without a GPU: do not leave the error for the next check
    return no(std::string("cannot query the device: ") + cudaGetErrorString(e));
  }
  if (major < 8) {
    return no("needs compute capability 8.0+ (cp.async, ldmatrix, bf16 mma); device " + std::to_string(device) +
              " is " + std::to_string(major) + "." + std::to_string(minor));
  }
  const int need = backward_tensor_core_smem_bytes(a.head_dim);
  if (smem_optin < need) {
    return no("needs " + std::to_string(need) + " bytes of shared memory per block; device " +
              std::to_string(device) + " allows " + std::to_string(smem_optin));
  }
  return true;
}

int backward_tensor_core_smem_bytes(std::int64_t head_dim) {
  return head_dim == 64 ? tc::BwdSmem<64>::kBytes : head_dim == 128 ? tc::BwdSmem<128>::kBytes : 0;
}

void backward_tensor_core(const BwdLaunch& a, cudaStream_t stream) {
  std::string why;
  if (!backward_tensor_core_supports(a, &why)) throw Error(why);

  tc::BwdParams p;
  p.q = static_cast<const std::uint16_t*>(a.q);
  p.k = static_cast<const std::uint16_t*>(a.k);
  p.v = static_cast<const std::uint16_t*>(a.v);
  p.dout = static_cast<const std::uint16_t*>(a.dout);
  p.lse = a.lse;
  p.delta = a.delta;
  p.dq = a.dq;
  p.dk = a.dk;
  p.dv = a.dv;
  p.accumulate = a.accumulate;
  p.seq_q = static_cast<int>(a.seq_q);
  p.heads_q = static_cast<int>(a.heads_q);
  p.heads_kv = static_cast<int>(a.heads_kv);
  p.group = static_cast<int>(a.heads_q / a.heads_kv);
  p.mask = tc::mask_params(a);
  p.scale = a.scale;
  p.scale_log2 = static_cast<float>(static_cast<double>(a.scale) * tc::kLog2e);

  const bool bf16 = a.dtype == DType::BF16;
  if (a.head_dim == 64) {
    bf16 ? tc::launch<tc::Bf16, 64>(a, p, stream) : tc::launch<tc::F16, 64>(a, p, stream);
  } else {
    bf16 ? tc::launch<tc::Bf16, 128>(a, p, stream) : tc::launch<tc::F16, 128>(a, p, stream);
  }
}

}  // namespace ringattn::cuda::detail
