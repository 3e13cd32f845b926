// The tile math of the tensor-core forward (forward_tc.cu), written once for the GPU and for a
// CPU emulation of a warp (tests/cuda/mma_emulation_test.cpp). The matrix products themselves are
// tc_warp_ops.hpp's, shared with the backward (backward_tc_tile.hpp).
//
// What this file is for: the kernel is a CTA-level pipeline (cp.async loads, barriers) around
// a warp-level program: S = Q K^T on tensor cores, the mask, the online softmax, O += P V, and
// the epilogue O / l, LSE. The warp-level program lives here as templates over a "warp policy"
// W that supplies the per-lane value types and the warp-collective operations:
//
//   W::F, W::I, W::U, W::B   a lane's float, int, 32-bit register and predicate
//   w.lane()                 this lane's index (0..31)
//   w.ldsm_x4(r, smem, off)  ldmatrix.x4 (each lane passes the element offset of one row)
//   w.ldsm_x4_trans(...)     ldmatrix.x4.trans
//   w.mma(d, a, b0, b1)      mma.sync.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32, d += a b
//   w.shfl_xor(x, mask)      __shfl_xor_sync
//   w.pack2(lo, hi)          two floats -> one bf16x2/f16x2 register (round to nearest even)
//   w.exp2, w.log, w.max, w.select, w.store_o, w.store_lse
//
//   w.map_lanes(i, f)        f applied to a lane's int (on the GPU: f(i))
//
// On the GPU (forward_tc.cu) W is one lane with float/int and the real PTX; in the test W holds
// 32 lanes in arrays and emulates each collective as the PTX ISA describes it. Loop bounds and
// branches here are warp-uniform, so both run the same instruction stream.
//
// The CTA program around the warps (forward_cta: which rows a CTA owns, the cp.async pipeline,
// the barriers, how many K/V tiles it visits) is written the same way, once, over a "CTA policy"
// C (see "the CTA policy" below): on the GPU DeviceCta (tc_device.cuh), one thread; in the test
// an emulated CTA of four warps that checks every shared-memory access against the barriers and
// the cp.async groups (tests/cuda/cta_emulator.hpp). The kernel is forward_cta and nothing else.
//
// Paper names (flash-attention-2, Dao 2023, Algorithm 1): Br query rows per CTA, Bc key rows
// per tile, m the running row max, l the running row sum of exp, O the unnormalized output.
// Scores are kept in log2 units: s' = s * scale * log2(e), so exp(s - m) = exp2(s' - m').
#pragma once

#include <cmath>
#include <cstdint>

#include "mma_fragments.hpp"
#include "tc_warp_ops.hpp"
#include "tile_math.hpp"

namespace ringattn::cuda::detail::tc {

inline constexpr int kWarps = 4;               // warps per CTA
inline constexpr int kThreads = 32 * kWarps;   // 128 threads
inline constexpr int kBr = 16 * kWarps;        // query rows per CTA: one m16 tile per warp
inline constexpr int kBc = 64;                 // key rows per K/V tile
inline constexpr double kLog2e = 1.4426950408889634;  // scale_log2 = scale * log2(e)
inline constexpr float kLn2 = 0.6931471805599453f;

/// Element types the kernel takes (tags; the warp policies specialize on them).
struct Bf16 {};
struct F16 {};

// ---- positions, the causal mask and the tile schedule of one query block ------------------

/// Global positions (layout of the ring segment) and the key count.
struct MaskParams {
  bool causal = false;
  std::int64_t q_offset = 0, q_stride = 1;  // query row i at q_offset + i q_stride
  std::int64_t k_offset = 0, k_stride = 1;  // key row j at k_offset + j k_stride
  int seq_kv = 0;
};

/// The mask of anything with a launch's position fields (causal, q_offset, q_stride, k_offset,
/// k_stride) for @p seq_kv keys.
template <class Positions>
MaskParams mask_params(const Positions& a, std::int64_t seq_kv) {
  MaskParams m;
  m.causal = a.causal;
  m.q_offset = a.q_offset;
  m.q_stride = a.q_stride;
  m.k_offset = a.k_offset;
  m.k_stride = a.k_stride;
  m.seq_kv = static_cast<int>(seq_kv);
  return m;
}
/// The mask of a resolved launch (detail::FwdLaunch or BwdLaunch: the same field names).
template <class Launch>
MaskParams mask_params(const Launch& a) {
  return mask_params(a, a.seq_kv);
}

/// The last key index query row @p row may see, -1 when none: key j is visible iff j < S_kv
/// and (not causal or k_pos(j) <= q_pos(row)); keys are sorted by position, so the visible keys
/// are a prefix [0, visible_key_end) (tile_math.hpp, shared with the other kernels). One integer
/// per row turns the mask of a whole tile into "column > limit" and folds the S_kv tail into
/// the same compare.
RINGATTN_HOST_DEVICE constexpr int key_limit(const MaskParams& p, std::int64_t row) {
  if (!p.causal) return p.seq_kv - 1;
  const std::int64_t end = visible_key_end(p.q_offset + row * p.q_stride, p.k_offset, p.k_stride, p.seq_kv);
  return static_cast<int>(end) - 1;
}

/// Number of K/V tiles a query block visits, from the key limit of its *last valid* row (limits
/// grow with the row since q_pos does): tiles [0, n) hold every visible key; a tile t >= n has
/// min key position k_pos(t Bc) > max query position of the block, i.e. lies entirely above the
/// causal diagonal, and is skipped without being loaded.
RINGATTN_HOST_DEVICE constexpr int kv_tile_count(int last_row_limit) {
  return (last_row_limit + kBc) / kBc;
}

/// Whether tile @p tile needs the per-element mask for the rows of a warp whose *first* row has
/// key limit @p first_row_limit: not when every key of the tile is visible to that row (then to
/// every later row too), which also means the tile has no S_kv tail.
RINGATTN_HOST_DEVICE constexpr bool tile_needs_mask(int tile, int first_row_limit) {
  return (tile + 1) * kBc - 1 > first_row_limit;
}

// ---- global -> shared copies (cp.async, 16 bytes per thread per step) ---------------------

/// Chunk @p step of thread @p tid when a CTA copies a (rows x D) tile: consecutive threads take
/// consecutive 16-byte chunks of a row, so a warp reads whole rows (coalesced), and the 8
/// threads of a store phase write 8 consecutive logical chunks of one row, which the swizzle
/// maps to 8 distinct bank groups.
template <int D>
RINGATTN_HOST_DEVICE constexpr mma::Coord copy_chunk(int tid, int step) {
  const int c = step * kThreads + tid;
  return {c / (D / 8), c % (D / 8)};
}
/// Copy steps per thread for a tile of @p rows rows.
template <int D>
RINGATTN_HOST_DEVICE constexpr int copy_steps(int rows) {
  return rows * (D / 8) / kThreads;
}

/// Copies a (rows x D) tile, rows >= @p valid zero-filled: calls copy(dst_offset, src_row,
/// chunk, valid) for each chunk of thread @p tid; dst_offset is the swizzled element offset.
template <int D, int kRows, class Copy>
RINGATTN_HOST_DEVICE void for_each_tile_chunk(int tid, int valid, Copy&& copy) {
  static_assert(kRows * (D / 8) % kThreads == 0, "every thread copies the same number of chunks");
  RINGATTN_UNROLL
  for (int step = 0; step < copy_steps<D>(kRows); ++step) {
    const mma::Coord c = copy_chunk<D>(tid, step);
    copy(mma::tile_offset<D>(c.row, c.col), c.row, c.col, c.row < valid);
  }
}

// ---- the CTA policy -------------------------------------------------------------------------
//
// What forward_cta and backward_cta (backward_tc_tile.hpp) ask of a CTA policy c:
//   C::W                         the warp policy; c.w() this warp's instance
//   c.warp()                     this warp's index in the CTA, 0 .. kWarps-1
//   c.block_x(), block_y(), block_z()   blockIdx
//   c.smem()                     the CTA's dynamic shared memory (16-bit units, 128-byte aligned)
//   c.sync()                     __syncthreads()
//   c.for_each_thread(f)         f(tid) for the calling thread (GPU), or for each of the warp's
//                                32 threads in turn (emulation); per-thread copy plans go here
//   c.cp_async_16(dst, src, n)   cp.async.cg of 16 bytes (n = 16) or zero-fill (n = 0)
//   c.cp_async_4(dst, src, n)    cp.async.ca of 4 bytes (n = 4) or zero-fill (n = 0)
//   c.commit()                   cp.async.commit_group
//   c.template wait<N>()         cp.async.wait_group N: all but the N newest groups have landed
//                                (for this thread: other threads see them after a barrier)

/// Issues the cp.async of a (kRows x D) tile from global rows at @p src (row stride
/// @p src_stride elements) into the swizzled tile @p dst; rows >= @p valid are zero-filled so
/// that tails never feed stale data (or NaN) to the tensor cores.
template <int D, int kRows, class C>
RINGATTN_HOST_DEVICE void load_tile(C& c, std::uint16_t* dst, const std::uint16_t* src, std::int64_t src_stride,
                                    int valid) {
  c.for_each_thread([&](int tid) {
    for_each_tile_chunk<D, kRows>(tid, valid, [&](int dst_offset, int row, int chunk, bool ok) {
      const std::uint16_t* from = ok ? src + row * src_stride + chunk * 8 : src;
      c.cp_async_16(dst + dst_offset, from, ok ? 16 : 0);
    });
  });
}

// ---- the warp program -----------------------------------------------------------------------

/// A warp's registers across the K/V loop: its 16 query rows (two per lane: groupID and
/// groupID + 8 of the m16 tile, c_coord), Q as A fragments, the O accumulator as C fragments.
template <class W, int D>
struct WarpState {
  typename W::U q[D / 16][4];  // Q (16 x D): A fragments of k-steps 0 .. D/16-1, loaded once
  typename W::F o[D / 8][4];   // O (16 x D): C fragments of n-tiles 0 .. D/8-1, unnormalized
  typename W::F m[2];          // running max of s' per row (log2 units), -inf before any key
  typename W::F l[2];          // running sum of exp2(s' - m) over this lane's columns only
  typename W::I limit[2];      // key_limit of each row
};

/// The epilogue's per-lane result besides the normalized O (left in WarpState::o).
template <class W, int D>
struct WarpResult {
  typename W::F lse[2];  // natural-log LSE of rows groupID, groupID + 8; -inf when no key
};

/// Loads the warp's Q fragments from the swizzled Q tile @p sQ (kBr x D) and resets m, l, O.
/// @p row_limit gives key_limit of a row of the block (0 .. kBr-1).
template <class W, int D, class RowLimit>
RINGATTN_HOST_DEVICE void warp_begin(W& w, WarpState<W, D>& st, const std::uint16_t* sQ, int warp,
                                     RowLimit&& row_limit) {
  using I = typename W::I;
  using F = typename W::F;
  const I lane = w.lane();
  // Rows 16 warp + (lane % 16), chunks 2 kk + lane / 16: A registers 0..3 (mma_fragments.hpp).
  RINGATTN_UNROLL
  for (int kk = 0; kk < D / 16; ++kk) ldsm_a<D>(w, st.q[kk], sQ, 16 * warp, kk);
  RINGATTN_UNROLL
  for (int r = 0; r < 2; ++r) {
    st.m[r] = F(-INFINITY);
    st.l[r] = F(0.0f);
    st.limit[r] = row_limit(I(16 * warp + 8 * r) + (lane >> 2));
  }
  RINGATTN_UNROLL
  for (int n = 0; n < D / 8; ++n) {
    RINGATTN_UNROLL
    for (int i = 0; i < 4; ++i) st.o[n][i] = F(0.0f);
  }
}

/// S = Q K_j^T for the warp's 16 rows against the Bc keys of the swizzled K tile @p sK:
/// s[n][i] is C element i of key columns 8n .. 8n+7 (flash-attention-2 Alg. 1, line 8).
template <class W, int D>
RINGATTN_HOST_DEVICE void warp_scores(W& w, const WarpState<W, D>& st, const std::uint16_t* sK,
                                      typename W::F (&s)[kBc / 8][4]) {
  zero_c<kBc, W>(s);
  // K stored [key][dim] is B^T: keys are the n columns of S (tc_warp_ops.hpp).
  warp_mma_abt<D, kBc>(
      w, s,
      [&](int kk, typename W::U(&a)[4]) {
        RINGATTN_UNROLL
        for (int r = 0; r < 4; ++r) a[r] = st.q[kk][r];
      },
      sK);
}

/// The online softmax of tile j (Alg. 1, lines 9-10) on S in place: scales to log2 units, masks
/// columns past each row's key limit (kMask), then per row
///   m_new = max(m, rowmax(s')),  P = exp2(s' - m_new),  l = exp2(m - m_new) l + rowsum(P),
///   O = exp2(m - m_new) O,
/// and leaves P in s. A row with no visible key so far keeps m = -inf; exponents then use 0
/// instead of m_new so that exp2(-inf - -inf) = NaN never appears (P = 0, alpha = 0).
/// l stays a per-lane partial sum (its quad is summed once, in warp_end): the rescale factor is
/// the same on the four lanes, so the partial sums stay consistent.
template <bool kMask, class W, int D>
RINGATTN_HOST_DEVICE void warp_softmax(W& w, WarpState<W, D>& st, typename W::F (&s)[kBc / 8][4], int col0,
                                       float scale_log2) {
  using F = typename W::F;
  using I = typename W::I;
  const I col_lane = I(col0) + ((w.lane() & 3) << 1);  // column of c_0 in n-tile 0
  RINGATTN_UNROLL
  for (int r = 0; r < 2; ++r) {
    F mx = F(-INFINITY);
    RINGATTN_UNROLL
    for (int n = 0; n < kBc / 8; ++n) {
      RINGATTN_UNROLL
      for (int e = 0; e < 2; ++e) {
        F x = s[n][2 * r + e] * scale_log2;
        if constexpr (kMask) x = w.select(col_lane + (8 * n + e) > st.limit[r], F(-INFINITY), x);
        s[n][2 * r + e] = x;
        mx = w.max(mx, x);
      }
    }
    // The row's 8 columns of each n-tile are spread over the quad: reduce across it.
    mx = w.max(mx, w.shfl_xor(mx, 1));
    mx = w.max(mx, w.shfl_xor(mx, 2));
    const F m_new = w.max(st.m[r], mx);
    const F m_use = w.select(m_new == F(-INFINITY), F(0.0f), m_new);
    const F alpha = w.exp2(st.m[r] - m_use);
    F sum = F(0.0f);
    RINGATTN_UNROLL
    for (int n = 0; n < kBc / 8; ++n) {
      RINGATTN_UNROLL
      for (int e = 0; e < 2; ++e) {
        const F p = w.exp2(s[n][2 * r + e] - m_use);
        s[n][2 * r + e] = p;
        sum = sum + p;
      }
    }
    st.l[r] = st.l[r] * alpha + sum;
    RINGATTN_UNROLL
    for (int n = 0; n < D / 8; ++n) {
      st.o[n][2 * r] = st.o[n][2 * r] * alpha;
      st.o[n][2 * r + 1] = st.o[n][2 * r + 1] * alpha;
    }
    st.m[r] = m_new;
  }
}

/// O += P V_j (Alg. 1, line 10) with P still in S's C fragments: for each 16-key step kk the A
/// operand is the pair of C tiles 2 kk, 2 kk + 1 converted in registers (c_to_a_*), and B comes
/// from the swizzled V tile @p sV with ldmatrix.trans (V is stored [key][dim]).
template <class W, int D>
RINGATTN_HOST_DEVICE void warp_pv(W& w, WarpState<W, D>& st, const typename W::F (&p)[kBc / 8][4],
                                  const std::uint16_t* sV) {
  // V stored [key][dim] is B: keys are the k dimension of P V (tc_warp_ops.hpp).
  warp_mma_ab<kBc, D>(
      w, st.o, [&](int kk, typename W::U(&a)[4]) { pack_c_as_a<kBc>(w, p, kk, a); }, sV);
}

/// The epilogue (Alg. 1, lines 12-13): l summed over the quad, O /= l, LSE = m ln 2 + ln l
/// (m is in log2 units). A row that saw no key has l = 0: O = 0 and LSE = -inf exactly.
template <class W, int D>
RINGATTN_HOST_DEVICE WarpResult<W, D> warp_end(W& w, WarpState<W, D>& st) {
  using F = typename W::F;
  WarpResult<W, D> res;
  RINGATTN_UNROLL
  for (int r = 0; r < 2; ++r) {
    F l = st.l[r];
    l = l + w.shfl_xor(l, 1);
    l = l + w.shfl_xor(l, 2);
    const auto seen = l > F(0.0f);
    const F inv = w.select(seen, F(1.0f) / l, F(0.0f));
    RINGATTN_UNROLL
    for (int n = 0; n < D / 8; ++n) {
      st.o[n][2 * r] = st.o[n][2 * r] * inv;
      st.o[n][2 * r + 1] = st.o[n][2 * r + 1] * inv;
    }
    res.lse[r] = w.select(seen, st.m[r] * kLn2 + w.log(l), F(-INFINITY));
  }
  return res;
}

/// Writes the warp's O rows and LSE through the policy's stores; @p out describes the block's
/// output (W::store_o / store_lse skip rows past the valid ones). Each lane writes two adjacent
/// columns of each n-tile (c_coord); the lane with threadID_in_group 0 writes the LSE.
template <class W, int D, class Out>
RINGATTN_HOST_DEVICE void warp_store(W& w, const WarpState<W, D>& st, const WarpResult<W, D>& res, int warp,
                                     const Out& out) {
  using I = typename W::I;
  const I lane = w.lane();
  const I col = (lane & 3) << 1;
  RINGATTN_UNROLL
  for (int r = 0; r < 2; ++r) {
    const I row = I(16 * warp + 8 * r) + (lane >> 2);
    RINGATTN_UNROLL
    for (int n = 0; n < D / 8; ++n) w.store_o(out, row, col + 8 * n, st.o[n][2 * r], st.o[n][2 * r + 1]);
    w.store_lse(out, row, (lane & 3) == 0, res.lse[r]);
  }
}

// ---- the CTA program: forward_tc_kernel ------------------------------------------------------

/// Kernel arguments (FwdLaunch resolved into what the kernel indexes with).
struct FwdParams {
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

/// Where a CTA writes O and LSE: O row r of the block at out + r * row_stride (elements), LSE
/// row r at lse[r]; rows >= rows are past S_q and not written.
struct OutBlock {
  void* out = nullptr;
  bool out_f32 = true;
  std::int64_t row_stride = 0;
  float* lse = nullptr;
  int rows = 0;
};

/// Shared memory of the forward CTA in bytes: Q (Br x D), then K stage 0, K stage 1, V stage 0,
/// V stage 1 (Bc x D each), all swizzled 16-bit tiles: 40 KiB for D = 64, 80 KiB for D = 128.
template <int D>
RINGATTN_HOST_DEVICE constexpr int fwd_smem_bytes() {
  return (kBr + 2 * 2 * kBc) * D * 2;
}

/// One CTA of the forward: query rows [block_x Br, +Br) of head block_y, batch block_z.
/// Flash-attention-2 Algorithm 1 with K/V tiles streaming through a 2-stage cp.async pipeline:
/// K of tile j+1 and V of tile j+1 load while tile j computes, and V of tile j loads while S of
/// tile j is computed. Tiles above the causal diagonal are never loaded.
template <int D, class C>
RINGATTN_HOST_DEVICE void forward_cta(C& c, const FwdParams& p) {
  using W = typename C::W;
  std::uint16_t* const sQ = c.smem();
  std::uint16_t* const sK = sQ + kBr * D;
  std::uint16_t* const sV = sK + 2 * kBc * D;

  const int warp = c.warp();
  const int q0 = c.block_x() * kBr;
  const int h = c.block_y();
  const int b = c.block_z();
  const int hk = h / p.group;  // GQA: query head h reads K/V head h / (H_q / H_kv)
  const int seq_kv = p.mask.seq_kv;
  const std::int64_t q_stride = static_cast<std::int64_t>(p.heads_q) * D;  // between query rows
  const std::int64_t kv_stride = static_cast<std::int64_t>(p.heads_kv) * D;
  const std::uint16_t* const gQ = p.q + (static_cast<std::int64_t>(b) * p.seq_q + q0) * q_stride + h * D;
  const std::int64_t kv_base = static_cast<std::int64_t>(b) * seq_kv * kv_stride + hk * D;
  const std::uint16_t* const gK = p.k + kv_base;
  const std::uint16_t* const gV = p.v + kv_base;
  const int rows = static_cast<int>(min64(kBr, p.seq_q - q0));

  // Tiles above the causal diagonal are skipped without loading: only [0, n_tiles) is visited.
  const int n_tiles = kv_tile_count(key_limit(p.mask, q0 + rows - 1));
  const int warp_first_limit = key_limit(p.mask, q0 + 16 * warp);

  auto load_kv = [&](int tile, int stage) {
    const std::int64_t first = static_cast<std::int64_t>(tile) * kBc;
    const int valid = static_cast<int>(min64(kBc, seq_kv - tile * kBc));
    load_tile<D, kBc>(c, sK + stage * kBc * D, gK + first * kv_stride, kv_stride, valid);
    c.commit();
    load_tile<D, kBc>(c, sV + stage * kBc * D, gV + first * kv_stride, kv_stride, valid);
    c.commit();
  };

  // Prologue: groups Q, K_0, V_0 (empty groups when there is no tile keep the counts below
  // the same on every path: an empty group completes at once).
  load_tile<D, kBr>(c, sQ, gQ, q_stride, rows);
  c.commit();
  if (n_tiles > 0) {
    load_kv(0, 0);
  } else {
    c.commit();
    c.commit();
  }
  c.template wait<2>();  // this thread's Q chunks have landed (K_0, V_0 may be in flight) ...
  c.sync();              // ... and everyone's: each warp reads rows other threads copied

  W& w = c.w();
  WarpState<W, D> st;
  warp_begin(w, st, sQ, warp,
             [&](const auto& row) { return w.map_lanes(row, [&](int r) { return key_limit(p.mask, q0 + r); }); });

  for (int j = 0; j < n_tiles; ++j) {
    const int stage = j & 1;
    c.template wait<1>();  // K_j has landed (V_j may still be in flight) ...
    c.sync();              // ... for every thread; and every warp has finished tile j-1, so the
                           // other stage (read by tile j-1) may be overwritten now
    if (j + 1 < n_tiles) {
      load_kv(j + 1, stage ^ 1);  // overlaps with all of tile j's math
    } else {
      c.commit();
      c.commit();
    }

    typename W::F s[kBc / 8][4];
    warp_scores(w, st, sK + stage * kBc * D, s);
    if (tile_needs_mask(j, warp_first_limit)) {
      warp_softmax<true>(w, st, s, j * kBc, p.scale_log2);
    } else {
      warp_softmax<false>(w, st, s, j * kBc, p.scale_log2);
    }

    c.template wait<2>();  // V_j has landed (K_{j+1}, V_{j+1} may be in flight) ...
    c.sync();              // ... for every thread
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
}

}  // namespace ringattn::cuda::detail::tc
