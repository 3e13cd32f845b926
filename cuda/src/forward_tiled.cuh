// Attention forward with K/V tiles in shared memory: FlashAttention's tile loop.
//
//   (v1 simple: forward_simple.cu)
//   v2 tiled    a block owns Br query rows; the keys are walked in tiles of Bc rows, each K/V tile
//               loaded from global memory once (16-byte loads, converted to float32) into shared
//               memory and used by all Br rows. A query row is owned by `group` threads, each
//               holding a 32-dim slice of q and O (so nothing spills at D = 128); their partial
//               dot products are summed with warp shuffles. Causal: tiles past the last key the
//               block's last row sees are never loaded; partial tiles at either end are masked.
//               Any S_q, S_kv; D a multiple of 8 up to 256; K and V 16-byte aligned.
//   (v3 tensor cores: forward_tc.cu)
//
// FlashAttention, Dao et al. 2022, Algorithm 1, names as in the paper: Br, Bc, Tr = ceil(S_q/Br)
// query tiles Q_i (one per block), Tc key tiles K_j, V_j; per row the running max m, sum l and
// output O. Algorithm 1 runs the K/V loop outside the Q loop and keeps O, l, m in HBM between the
// two; here each block keeps its tile's O, l, m in registers for its whole K/V loop and normalizes
// once at the end (the order FlashAttention-2 adopted): the same arithmetic, fewer trips to HBM.
// Tile sizes per head-dim bucket: tiled_tile() in tile_math.hpp.
#pragma once

#include <cmath>

#include "common.cuh"

namespace ringattn::cuda::detail {
// The kernels and run_* below are in an unnamed namespace: tests/cuda compiles them a second time
// with the host compiler to run them on the CPU (simt_emulator.hpp), and those copies must not
// share symbols with the nvcc-compiled ones (whose host stubs launch on the GPU).
namespace {

template <class T, class OutT, int kMaxD>
__global__ void __launch_bounds__(tiled_tile(kMaxD).threads) forward_tiled_kernel(const FwdLaunch a) {
  constexpr TiledTile kTile = tiled_tile(kMaxD);
  constexpr int G = kTile.group;     // threads per query row
  constexpr int Br = kTile.br;       // query rows per block
  constexpr int Bc = kTile.bc;       // key rows per tile
  constexpr int kSlice = kMaxD / G;  // dims of q and O per thread: 32
  constexpr int kChunksPerRow = kMaxD / 8;
  __shared__ __align__(16) float K_j[Bc][kMaxD];
  __shared__ __align__(16) float V_j[Bc][kMaxD];

  // Block -> (query tile, h, b); thread -> (row r of the tile, slice g). The thread owns dims
  // g, g + G, g + 2G, ...: the G threads of a row read G consecutive floats of a K/V row in shared
  // memory (distinct banks), and the rows of a warp read the same ones (a broadcast).
  const std::int64_t Tr = ceil_div(a.seq_q, Br);
  const std::int64_t tile = blockIdx.x % Tr;
  const std::int64_t h = (blockIdx.x / Tr) % a.heads_q;
  const std::int64_t b = blockIdx.x / (Tr * a.heads_q);
  const std::int64_t hk = h / (a.heads_q / a.heads_kv);  // GQA
  const int r = static_cast<int>(threadIdx.x) / G;
  const int g = static_cast<int>(threadIdx.x) % G;
  const int D = static_cast<int>(a.head_dim);
  const std::int64_t i = tile * Br + r;
  // The last query tile may be partial: its spare threads still load K/V tiles and reach every
  // barrier and shuffle, they just own no row.
  const bool has_row = i < a.seq_q;

  const T* k_base = static_cast<const T*>(a.k) + bshd_row(b, 0, hk, a.seq_kv, a.heads_kv, D);
  const T* v_base = static_cast<const T*>(a.v) + bshd_row(b, 0, hk, a.seq_kv, a.heads_kv, D);
  const std::int64_t kv_row_stride = a.heads_kv * D;

  // Line 8: this row's Q_i slice (scale folded in once), O, l, m.
  float q[kSlice], O[kSlice];
  const T* q_row = static_cast<const T*>(a.q) + bshd_row(b, has_row ? i : 0, h, a.seq_q, a.heads_q, D);
#pragma unroll
  for (int x = 0; x < kSlice; ++x) {
    const int d = g + G * x;
    q[x] = has_row && d < D ? to_float(q_row[d]) * a.scale : 0.0f;
    O[x] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;

  // Keys this row sees: [0, row_end). Keys the block's last row sees: [0, block_end); beyond it
  // every row of the block is masked (positions grow with i), so those tiles are skipped. It
  // depends only on the block, so every thread runs the same Tc tiles and meets the same barriers.
  const std::int64_t row_end =
      !has_row ? 0
      : a.causal ? visible_key_end(a.q_offset + i * a.q_stride, a.k_offset, a.k_stride, a.seq_kv)
                 : a.seq_kv;
  const std::int64_t i_last = min64(a.seq_q, (tile + 1) * Br) - 1;
  const std::int64_t block_end =
      a.causal ? visible_key_end(a.q_offset + i_last * a.q_stride, a.k_offset, a.k_stride, a.seq_kv) : a.seq_kv;
  const std::int64_t Tc = ceil_div(block_end, Bc);

  for (std::int64_t jt = 0; jt < Tc; ++jt) {
    const std::int64_t j0 = jt * Bc;
    // Line 6: load K_j, V_j from HBM into shared memory, 8 elements (16 bytes of bf16/fp16) per
    // load, widened to float. Rows past S_kv and dims past D are zeros, so the dot products below
    // need no bounds test on d (q is 0 there too) and the tail tile is masked by row_end alone.
    for (int c = static_cast<int>(threadIdx.x); c < Bc * kChunksPerRow; c += kTile.threads) {
      const int row = c / kChunksPerRow;
      const int d0 = (c % kChunksPerRow) * 8;
      const std::int64_t j = j0 + row;
      float kx[8], vx[8];
      if (j < a.seq_kv && d0 < D) {
        load8(k_base + j * kv_row_stride + d0, kx);
        load8(v_base + j * kv_row_stride + d0, vx);
      } else {
#pragma unroll
        for (int n = 0; n < 8; ++n) kx[n] = vx[n] = 0.0f;
      }
      float4* ks = reinterpret_cast<float4*>(&K_j[row][d0]);
      float4* vs = reinterpret_cast<float4*>(&V_j[row][d0]);
      ks[0] = make_float4(kx[0], kx[1], kx[2], kx[3]);
      ks[1] = make_float4(kx[4], kx[5], kx[6], kx[7]);
      vs[0] = make_float4(vx[0], vx[1], vx[2], vx[3]);
      vs[1] = make_float4(vx[4], vx[5], vx[6], vx[7]);
    }
    __syncthreads();  // K_j, V_j complete before any thread reads them

    // Line 9: S_ij = Q_i K_j^T for this row (Bc scores), masked entries -inf.
    // Line 10: m~_ij = rowmax(S_ij).
    float s[Bc];
    float m_tile = -INFINITY;
#pragma unroll
    for (int c = 0; c < Bc; ++c) {
      float acc = 0.0f;
#pragma unroll
      for (int x = 0; x < kSlice; ++x) acc += q[x] * K_j[c][g + G * x];
      // Sum the G slices of the row: butterfly over the G adjacent lanes of the group. Every lane
      // of the warp takes part (the loops are uniform), as the full mask requires.
#pragma unroll
      for (int offset = G / 2; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
      s[c] = j0 + c < row_end ? acc : -INFINITY;
      m_tile = fmaxf(m_tile, s[c]);
    }
    // Lines 10-13 folded: with m_new = max(m, m~_ij), P~_ij = exp(S_ij - m_new),
    // l = e^(m - m_new) l + rowsum(P~_ij), O = e^(m - m_new) O + P~_ij V_j, m = m_new.
    // A row with no visible key in this tile skips it (no shuffle inside, so divergence is safe).
    if (m_tile > -INFINITY) {
      const float m_new = fmaxf(m, m_tile);
      const float correction = expf(m - m_new);  // 0 on the row's first tile (m = -inf)
      l *= correction;
#pragma unroll
      for (int x = 0; x < kSlice; ++x) O[x] *= correction;
#pragma unroll
      for (int c = 0; c < Bc; ++c) {
        const float p = expf(s[c] - m_new);  // masked: exp(-inf) = 0
        l += p;
#pragma unroll
        for (int x = 0; x < kSlice; ++x) O[x] += p * V_j[c][g + G * x];
      }
      m = m_new;
    }
    __syncthreads();  // every thread is done with K_j, V_j before the next tile overwrites them
  }

  // Line 12's diag(l)^-1, once at the end; LSE = m + log l (FlashAttention-2). A row that saw no
  // key: O = 0, LSE = -inf.
  if (!has_row) return;
  const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
  OutT* o_row = static_cast<OutT*>(a.out) + bshd_row(b, i, h, a.seq_q, a.heads_q, D);
#pragma unroll
  for (int x = 0; x < kSlice; ++x) {
    const int d = g + G * x;
    if (d < D) o_row[d] = from_float<OutT>(O[x] * inv_l);
  }
  if (g == 0 && a.lse) a.lse[(b * a.heads_q + h) * a.seq_q + i] = l > 0.0f ? m + logf(l) : -INFINITY;
}

/// Launches forward v2 for @p a through @p launch (StreamLauncher on the GPU).
template <class Launcher>
void run_forward_tiled(const FwdLaunch& a, Launcher&& launch) {
  const TiledLaunch shape = tiled_launch(a);
  dispatch_in_out(a.dtype, a.out_dtype, [&](auto in, auto out) {
    using T = typename decltype(in)::type;
    using OutT = typename decltype(out)::type;
    dispatch_bucket(shape.tile.max_d, [&](auto max_d) {
      constexpr int kMaxD = decltype(max_d)::value;
      launch("forward_tiled_kernel", forward_tiled_kernel<T, OutT, kMaxD>, static_cast<unsigned>(shape.blocks),
             static_cast<unsigned>(shape.tile.threads), a);
    });
  });
}

}  // namespace
}  // namespace ringattn::cuda::detail
