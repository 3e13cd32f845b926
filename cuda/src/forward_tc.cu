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
// The warp-level tile math (scores, mask, softmax, P V, epilogue) is in forward_tc_tile.hpp as
// templates over a warp policy; DeviceWarp, the policy made of real PTX, and the cp.async helpers
// are in tc_device.cuh (shared with backward_tc.cu); this file is the CTA around them. tests/cuda/mma_emulation_test.cpp runs the same templates on the CPU with
// an emulated warp and checks a whole CTA against the long-double oracle.
//
// Needs sm_80+ (cp.async, ldmatrix, bf16 mma); built for 80 and 90 (HOPPER.md: this is the
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

/// Kernel arguments (FwdLaunch resolved into what the kernel indexes with).
struct Params {
  const std::uint16_t* q = nullptr;  // (B, S_q, H_q, D)
  const std::uint16_t* k = nullptr;  // (B, S_kv, H_kv, D)
  const std::uint16_t* v = nullptr;  // (B, S_kv, H_kv, D)
  void* out = nullptr;               // (B, S_q, H_q, D), fp32 or the input type
  float* lse = nullptr;              // (B, H_q, S_q) or null
  bool out_f32 = true;
  int seq_q = 0, heads_q = 0, heads_kv = 0, group = 1;  // group = H_q / H_kv
  MaskParams mask;
  float scale_log2 = 0.0f;  // scale * log2(e)
};

template <int D>
constexpr int smem_bytes() {
  return (kBr + 2 * 2 * kBc) * D * static_cast<int>(sizeof(std::uint16_t));  // Q + 2 stages of K, V
}

/// One CTA: query rows [blockIdx.x Br, +Br) of head blockIdx.y, batch blockIdx.z.
template <class Elem, int D>
__global__ void __launch_bounds__(kThreads) forward_tc_kernel(const Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  // Shared memory (bf16/fp16 bits, every tile swizzled): Q (Br x D), then K stage 0, K stage 1,
  // V stage 0, V stage 1 (Bc x D each): 40 KiB for D = 64, 80 KiB for D = 128.
  extern __shared__ __align__(128) std::uint16_t smem[];
  std::uint16_t* const sQ = smem;
  std::uint16_t* const sK = sQ + kBr * D;
  std::uint16_t* const sV = sK + 2 * kBc * D;

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int q0 = static_cast<int>(blockIdx.x) * kBr;
  const int h = static_cast<int>(blockIdx.y);
  const int b = static_cast<int>(blockIdx.z);
  const int hk = h / p.group;  // GQA: query head h reads K/V head h / (H_q / H_kv)
  const int seq_kv = p.mask.seq_kv;
  const std::int64_t q_stride = static_cast<std::int64_t>(p.heads_q) * D;  // between query rows
  const std::int64_t kv_stride = static_cast<std::int64_t>(p.heads_kv) * D;
  const std::uint16_t* const gQ = p.q + (static_cast<std::int64_t>(b) * p.seq_q + q0) * q_stride + h * D;
  const std::int64_t kv_base = static_cast<std::int64_t>(b) * seq_kv * kv_stride + hk * D;
  const std::uint16_t* const gK = p.k + kv_base;
  const std::uint16_t* const gV = p.v + kv_base;
  const int rows = min(kBr, p.seq_q - q0);

  // Tiles above the causal diagonal are skipped without loading: only [0, n_tiles) is visited.
  const int n_tiles = kv_tile_count(key_limit(p.mask, q0 + rows - 1));
  const int warp_first_limit = key_limit(p.mask, q0 + 16 * warp);

  auto load_kv = [&](int tile, int stage) {
    const std::int64_t first = static_cast<std::int64_t>(tile) * kBc;
    const int valid = min(kBc, seq_kv - tile * kBc);
    load_tile_async<D, kBc>(sK + stage * kBc * D, gK + first * kv_stride, kv_stride, valid);
    cp_async_commit();
    load_tile_async<D, kBc>(sV + stage * kBc * D, gV + first * kv_stride, kv_stride, valid);
    cp_async_commit();
  };

  // Prologue: groups Q, K_0, V_0 (empty groups when there is no tile keep the counts below
  // the same on every path: an empty group completes at once).
  load_tile_async<D, kBr>(sQ, gQ, q_stride, rows);
  cp_async_commit();
  if (n_tiles > 0) {
    load_kv(0, 0);
  } else {
    cp_async_commit();
    cp_async_commit();
  }
  cp_async_wait<2>();  // this thread's Q chunks have landed (K_0, V_0 may be in flight) ...
  __syncthreads();     // ... and everyone's: each warp reads rows other threads copied

  using W = DeviceWarp<Elem>;
  W w;
  WarpState<W, D> st;
  warp_begin(w, st, sQ, warp, [&](int row) { return key_limit(p.mask, q0 + row); });

  for (int j = 0; j < n_tiles; ++j) {
    const int stage = j & 1;
    cp_async_wait<1>();  // K_j has landed (V_j may still be in flight) ...
    __syncthreads();     // ... for every thread; and every warp has finished tile j-1, so the
                         // other stage (read by tile j-1) may be overwritten now
    if (j + 1 < n_tiles) {
      load_kv(j + 1, stage ^ 1);  // overlaps with all of tile j's math
    } else {
      cp_async_commit();
      cp_async_commit();
    }

    float s[kBc / 8][4];
    warp_scores(w, st, sK + stage * kBc * D, s);
    if (tile_needs_mask(j, warp_first_limit)) {
      warp_softmax<true>(w, st, s, j * kBc, p.scale_log2);
    } else {
      warp_softmax<false>(w, st, s, j * kBc, p.scale_log2);
    }

    cp_async_wait<2>();  // V_j has landed (K_{j+1}, V_{j+1} may be in flight) ...
    __syncthreads();     // ... for every thread
    warp_pv(w, st, s, sV + stage * kBc * D);
  }

  const WarpResult<W, D> res = warp_end(w, st);
  OutBlock out;
  const std::int64_t first_row = (static_cast<std::int64_t>(b) * p.seq_q + q0) * q_stride + h * D;
  out.out_f32 = p.out_f32;
  out.out = p.out_f32 ? static_cast<void*>(static_cast<float*>(p.out) + first_row)
                      : static_cast<void*>(static_cast<std::uint16_t*>(p.out) + first_row);
  out.row_stride = q_stride;
  const std::int64_t first_lse = (static_cast<std::int64_t>(b) * p.heads_q + h) * p.seq_q + q0;
  out.lse = p.lse == nullptr ? nullptr : p.lse + first_lse;
  out.rows = rows;
  warp_store(w, st, res, warp, out);
#else
  // Built for an architecture without cp.async / ldmatrix / bf16 mma: never launched there
  // (forward_tensor_core_supports checks the device), trap if it is anyway.
  (void)p;
  __trap();
#endif
}

template <class Elem, int D>
void launch(const FwdLaunch& a, const Params& params, cudaStream_t stream) {
  constexpr int bytes = smem_bytes<D>();
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
  const int need = a.head_dim == 64 ? tc::smem_bytes<64>() : tc::smem_bytes<128>();
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

  tc::Params p;
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
