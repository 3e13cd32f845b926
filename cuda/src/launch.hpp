// Internal to cuda/: what happens between the public API (attention.hpp) and a kernel launch.
//
//   1. validate + resolve   resolve_forward / resolve_backward / check_merge: every argument
//                           checked with a one-line ringattn::Error, MaskArgs defaults filled in
//                           (FwdLaunch / BwdLaunch, detail.hpp). No CUDA call happens here, so
//                           tests/cuda/cuda_host_test.cpp runs all of it on a machine without GPU.
//   2. choose the kernel    kernel_supports / choose_forward_kernel (Auto -> TensorCore when it is
//                           built and supports the call, else Tiled, else Simple);
//                           backward_kernel_supports / choose_backward_kernel (Auto -> TensorCore,
//                           else Simple).
//   3. launch shape         *_launch / *_config: grid and block sizes, pure arithmetic, tested
//                           on the CPU as well.
//   4. launch               launch_* in the .cu files: pick the template instance (dtype, head-dim
//                           bucket), launch on the stream, check the launch.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "detail.hpp"
#include "ringattn/cuda/attention.hpp"
#include "tile_math.hpp"

namespace ringattn::cuda::detail {

// ---- 1. validation and resolution -------------------------------------------------------------

/// Largest head dim any kernel of this version runs (the simple, tiled and decode kernels keep a
/// query row's state in registers/local memory sized for it).
inline constexpr std::int64_t kMaxHeadDim = 256;
/// Positions (offset + i * stride) must lie within +-2^62 so the mask arithmetic cannot overflow.
inline constexpr std::int64_t kMaxPosition = std::int64_t{1} << 62;

/// Validates a forward call and resolves its defaults (q_pos: offset S_kv - S_q, stride 1; k_pos:
/// offset 0, stride 1; scale 1/sqrt(D)). @p who prefixes the messages ("forward", "decode").
/// Throws ringattn::Error; makes no CUDA call.
FwdLaunch resolve_forward(const ForwardArgs& args, const char* who = "forward");
/// Validates a backward call and resolves its defaults as resolve_forward does.
BwdLaunch resolve_backward(const BackwardArgs& args);
/// Validates merge()'s arguments.
void check_merge(const float* out_acc, const float* lse_acc, const float* out_part, const float* lse_part,
                 std::int64_t batch, std::int64_t seq, std::int64_t heads, std::int64_t head_dim);
/// Validates decode()'s own arguments (splits, workspace) on top of resolve_forward's.
void check_decode(const FwdLaunch& a, int splits, const void* workspace);

// ---- 2. kernel choice -------------------------------------------------------------------------

/// Whether the tensor-core forward is built into this library (forward_tc.cu wired in).
bool tensor_core_built();
/// Whether version @p kernel (not Auto) runs the resolved call @p a; if not, @p why says why.
bool kernel_supports(const FwdLaunch& a, Kernel kernel, std::string* why);
/// The version that runs @p a: @p requested itself if it supports the call (else ringattn::Error
/// saying why), or for Auto the fastest that does: TensorCore, Tiled, Simple.
Kernel choose_forward_kernel(const FwdLaunch& a, Kernel requested);
/// Whether backward version @p kernel runs the resolved call @p a (Simple: D <= 256; TensorCore:
/// backward_tensor_core_supports; Tiled: never; Auto: either); if not, @p why says why.
bool backward_kernel_supports(const BwdLaunch& a, Kernel kernel, std::string* why);
/// The backward version that runs @p a: @p requested itself if it supports the call (else
/// ringattn::Error saying why), or for Auto TensorCore where it supports the call, else Simple.
Kernel choose_backward_kernel(const BwdLaunch& a, Kernel requested);

// ---- 3. launch shapes (pure arithmetic) --------------------------------------------------------

/// A one-dimensional launch: @c blocks blocks of @c threads threads.
struct Launch1D {
  std::int64_t blocks = 0;  ///< grid size (x)
  int threads = 0;          ///< block size (x)
};
/// Largest grid (x) a launch may have: 2^31 - 1.
inline constexpr std::int64_t kMaxGridX = 2147483647;

/// Smallest of the buckets 32, 64, 128, 256 that holds @p head_dim: the template instance of a
/// kernel keeps a row's state in arrays of that size (or a lane owns bucket / 32 dims); 0 when
/// head_dim > 256.
int head_dim_bucket(std::int64_t head_dim);

/// Threads per block of the one-thread-per-row kernels (simple forward, backward, delta).
inline constexpr int kRowThreads = 128;
/// One thread per row of @p rows rows (simple forward: B*H_q*S_q; backward dQ and D: B*H_q*S_q;
/// backward dK/dV: B*H_kv*S_kv); throws ringattn::Error if the grid would be too large.
Launch1D row_launch(std::int64_t rows, const char* who);

/// The tiled forward's launch: the tile for D's bucket and one block per (query tile, h, b).
struct TiledLaunch {
  TiledTile tile{};         ///< Br, Bc, threads per row, threads
  std::int64_t q_tiles = 0; ///< Tr = ceil(S_q / Br)
  std::int64_t blocks = 0;  ///< Tr * H_q * B
  std::size_t smem_bytes = 0;  ///< K_j and V_j, float32
};
/// Launch shape of the tiled forward for @p a (D must be supported: <= 256).
TiledLaunch tiled_launch(const FwdLaunch& a);

/// Warps per block of the merge and decode-combine kernels (one warp per row).
inline constexpr int kWarpRowsPerBlock = 4;
/// One warp per row for @p rows rows, kWarpRowsPerBlock rows per block.
Launch1D warp_row_launch(std::int64_t rows, const char* who);

/// Warps per block of the decode partial kernel (the warps split the keys of one split).
inline constexpr int kDecodeWarps = 4;
/// Where decode() puts its partials in the workspace, and how it launches.
struct DecodeLayout {
  std::int64_t splits = 0;        ///< number of key splits
  std::int64_t partial_rows = 0;  ///< splits * B * H_q * S_q partial rows
  std::size_t lse_offset = 0;     ///< byte offset of the LSE partials (after O's, 256-aligned)
  std::size_t bytes = 0;          ///< workspace bytes
  Launch1D partial{};             ///< one block per (split, h, b)
  Launch1D combine{};             ///< one warp per (b, h, i) row
};
/// Layout and launch shapes of decode() for @p shape and @p splits (throws on overflow or a grid
/// too large). The workspace holds O_s (splits, B, H_q, S_q, D) float32, then at lse_offset
/// LSE_s (splits, B, H_q, S_q) float32.
DecodeLayout decode_layout(const AttentionShape& shape, std::int64_t splits);

// ---- 4. launchers (the .cu files) ---------------------------------------------------------------

/// Forward v1 (forward_simple.cu).
void launch_forward_simple(const FwdLaunch& a, cudaStream_t stream);
/// Forward v2 (forward_tiled.cu).
void launch_forward_tiled(const FwdLaunch& a, cudaStream_t stream);
/// Backward: D pre-pass (if asked), dQ, dK/dV (backward_simple.cu).
void launch_backward_simple(const BwdLaunch& a, cudaStream_t stream);
/// LSE merge (merge.cu). O is (B, S, H, D), LSE (B, H, S).
void launch_merge(float* out_acc, float* lse_acc, const float* out_part, const float* lse_part, std::int64_t batch,
                  std::int64_t seq, std::int64_t heads, std::int64_t head_dim, cudaStream_t stream);
/// Split-KV decoding: partials, then combine (decode.cu).
void launch_decode(const FwdLaunch& a, const DecodeLayout& layout, void* workspace, cudaStream_t stream);

}  // namespace ringattn::cuda::detail
