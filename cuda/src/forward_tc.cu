// The tensor-core forward: flash-attention-2 on mma.sync, the production forward of cuda/.
//
// Versions of the forward in cuda/ (cuda/README.md): simple (one thread per query row, fp32),
// tiled (flash-attention-1 loop, K/V tiles in shared memory), and this one:
//   - bf16 or fp16 Q, K, V; fp32 accumulation; O in fp32 or the input type; LSE in fp32;
//   - head dim D = 64 or 128 (a template parameter: every loop below unrolls);
//   - a CTA of 4 warps owns Br = 64 query rows of one (batch, head), 16 rows per warp;
//   - S = Q K^T with mma.sync.m16n8k16; Q stays in registers (A fragments, ldmatrix.x4 once);
//   - the online softmax runs in registers on S's C fragments (row max over a quad of lanes);
//   - P is converted to bf16/fp16 in registers and used directly as the A operand of P V
//     (the C -> A fragment identity, mma_fragments.hpp); V arrives with ldmatrix.trans;
//   - K/V tiles of Bc = 64 rows stream through a 2-stage cp.async pipeline into XOR-swizzled
//     shared memory (no ldmatrix bank conflicts); K of tile j+1 and V of tile j+1 load while
//     tile j computes, and V of tile j loads while S of tile j is computed;
//   - causal by global positions (q_pos(i) = q_offset + i q_stride, k_pos(j) likewise): tiles
//     above the diagonal are never loaded, tiles crossing it mask per element;
//   - GQA by head mapping; any S_q, S_kv (tails zero-filled and masked); rows that see no key
//     get O = 0, LSE = -inf.
// The whole CTA program (the pipeline and barriers above, and the warp-level tile math: scores,
// mask, softmax, P V, epilogue) is forward_cta in forward_tc_tile.hpp, templates over a CTA and
// a warp policy; DeviceCta and DeviceWarp, the policies made of real PTX, are in tc_device.cuh
// (shared with backward_tc.cu); this file is the launch around them.
// tests/cuda/mma_emulation_test.cpp runs forward_cta on the CPU, on an emulated CTA of four
// warps that checks every shared-memory access against the barriers and cp.async groups, and
// compares whole CTAs with the long-double oracle.
//
// Needs sm_80+ (cp.async, ldmatrix, bf16 mma); built for 80 and 90 (on Hopper this is the
// mma.sync path, HMMA in SASS; a wgmma/TMA version for sm_90a would be the next step).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "detail.hpp"
#include "forward_tc_tile.hpp"
#include "mma_fragments.hpp"
#include "ringattn/core/error.hpp"
#include "tc_device.cuh"

namespace ringattn::cuda::detail {
namespace tc {
namespace {

/// One CTA: forward_cta (forward_tc_tile.hpp) on the device's CTA policy.
template <class Elem, int D>
__global__ void __launch_bounds__(kThreads) forward_tc_kernel(const FwdParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) std::uint16_t smem[];
  DeviceCta<Elem> cta(smem);
  forward_cta<D>(cta, p);
#else
  // Built for an architecture without cp.async / ldmatrix / bf16 mma: never launched there
  // (forward_tensor_core_supports checks the device), trap if it is anyway.
  (void)p;
  __trap();
#endif
}

template <class Elem, int D>
void launch(const FwdLaunch& a, const FwdParams& params, cudaStream_t stream) {
  constexpr int bytes = fwd_smem_bytes<D>();
  const auto kernel = forward_tc_kernel<Elem, D>;
  if (bytes > 48 * 1024) {
    // Above 48 KiB a block's dynamic shared memory must be opted into, per kernel.
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e != cudaSuccess) {
      fail("tensor-core forward: cannot give the kernel ", bytes, " bytes of shared memory: ",
           cudaGetErrorString(e));
    }
  }
  const dim3 grid(static_cast<unsigned>((a.seq_q + kBr - 1) / kBr), static_cast<unsigned>(a.heads_q),
                  static_cast<unsigned>(a.batch));
  kernel<<<grid, kThreads, bytes, stream>>>(params);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail("tensor-core forward: kernel launch failed: ", cudaGetErrorString(e));
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

}  // namespace
}  // namespace tc

bool forward_tensor_core_supports(const FwdLaunch& a, std::string* why) {
  auto no = [why](const std::string& reason) {
    if (why != nullptr) *why = "tensor-core forward: " + reason;
    return false;
  };
  if (a.dtype != DType::BF16 && a.dtype != DType::F16) {
    return no("takes bf16 or fp16 inputs, not " + std::string(to_string(a.dtype)) +
              " (use the tiled or simple kernel for fp32)");
  }
  if (a.out_dtype != DType::F32 && a.out_dtype != a.dtype) {
    return no("writes O in fp32 or in the input type (" + std::string(to_string(a.dtype)) + "), not " +
              std::string(to_string(a.out_dtype)));
  }
  if (a.head_dim != 64 && a.head_dim != 128) {
    return no("supports head dims 64 and 128, not " + std::to_string(a.head_dim) + " (use the tiled kernel)");
  }
  if (!tc::aligned16(a.q) || !tc::aligned16(a.k) || !tc::aligned16(a.v)) {
    return no("Q, K and V must be 16-byte aligned (cp.async copies 16 bytes)");
  }
  if (!tc::aligned16(a.out)) return no("O must be 16-byte aligned");
  if (a.heads_kv <= 0 || a.heads_q % a.heads_kv != 0) {
    return no("H_q (" + std::to_string(a.heads_q) + ") must be a multiple of H_kv (" +
              std::to_string(a.heads_kv) + ")");
  }
  constexpr std::int64_t kMaxGrid = 65535;  // grid.y and grid.z limits
  if (a.heads_q > kMaxGrid || a.batch > kMaxGrid) {
    return no("H_q and B must be at most 65535 (grid dimensions)");
  }
  constexpr std::int64_t kMaxSeq = (std::int64_t{1} << 31) - 2 * tc::kBr;  // row indices are int
  if (a.seq_q > kMaxSeq || a.seq_kv > kMaxSeq) return no("S_q and S_kv must be below 2^31 - 128");
  if (a.q_stride < 1 || a.k_stride < 1) return no("position strides must be >= 1");
  if (!std::isfinite(a.scale)) return no("the scale must be finite");

  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  int major = 0;
  int minor = 0;
  int smem_optin = 0;
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (e == cudaSuccess) {
    e = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // a machine without a GPU: do not leave the error for the next check
    return no(std::string("cannot query the device: ") + cudaGetErrorString(e));
  }
  if (major < 8) {
    return no("needs compute capability 8.0+ (cp.async, ldmatrix, bf16 mma); device " +
              std::to_string(device) + " is " + std::to_string(major) + "." + std::to_string(minor));
  }
  const int need = a.head_dim == 64 ? tc::fwd_smem_bytes<64>() : tc::fwd_smem_bytes<128>();
  if (smem_optin < need) {
    return no("needs " + std::to_string(need) + " bytes of shared memory per block; device " +
              std::to_string(device) + " allows " + std::to_string(smem_optin));
  }
  return true;
}

void forward_tensor_core(const FwdLaunch& a, cudaStream_t stream) {
  std::string why;
  if (!forward_tensor_core_supports(a, &why)) throw Error(why);
  if (a.batch == 0 || a.seq_q == 0 || a.heads_q == 0) return;  // nothing to write

  tc::FwdParams p;
  p.q = static_cast<const std::uint16_t*>(a.q);
  p.k = static_cast<const std::uint16_t*>(a.k);
  p.v = static_cast<const std::uint16_t*>(a.v);
  p.out = a.out;
  p.lse = a.lse;
  p.out_f32 = a.out_dtype == DType::F32;
  p.seq_q = static_cast<int>(a.seq_q);
  p.heads_q = static_cast<int>(a.heads_q);
  p.heads_kv = static_cast<int>(a.heads_kv);
  p.group = static_cast<int>(a.heads_q / a.heads_kv);
  p.mask = tc::mask_params(a);
  p.scale_log2 = static_cast<float>(static_cast<double>(a.scale) * tc::kLog2e);

  const bool bf16 = a.dtype == DType::BF16;
  if (a.head_dim == 64) {
    bf16 ? tc::launch<tc::Bf16, 64>(a, p, stream) : tc::launch<tc::F16, 64>(a, p, stream);
  } else {
    bf16 ? tc::launch<tc::Bf16, 128>(a, p, stream) : tc::launch<tc::F16, 128>(a, p, stream);
  }
}

}  // namespace ringattn::cuda::detail
