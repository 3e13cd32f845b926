// The tile math of the tensor-core backward (backward_tc.cu), written once for the GPU and for a
// CPU emulation of a warp (tests/cuda/mma_backward_emulation_test.cpp).
//
// What this file is for: as forward_tc_tile.hpp does for the forward, it holds the warp-level
// program of the backward as templates over a warp policy W (the same policy; the backward adds
//   w.lds_f32(smem, index)         a lane's float from shared memory (LSE_i, D_i of a column)
//   w.sts_u32(smem, offset, u)     a lane's 32-bit store to shared memory (dS^T, two 16-bit values)
//   w.add_dq(out, row, col, a, b)  dQ[row][col, col + 1] += (a, b) in global memory (atomicAdd)
//   w.store_dkdv(out, row, col, dk0, dk1, dv0, dv1)  dK, dV rows written (or added to)
// ), the CTA-level index math (which query tiles a key tile visits, which need the mask, how
// an iteration maps to a GQA head and a query tile) as constexpr functions, and the CTA program
// itself (backward_cta, over the CTA policy of forward_tc_tile.hpp): the kernel calls it on the
// GPU, the emulation runs it on four emulated warps with a shared-memory race check.
//
// FlashAttention-2 backward (Dao 2023, Algorithm 2), one CTA per key tile j (Bc = 64 rows, 16 per
// warp), iterating over query tiles i (Br = 64 rows) of every query head of the GQA group. Each
// warp owns 16 key rows and works on transposed products, so every matrix it accumulates has its
// key rows as the m16 dimension:
//   S^T  = K_j Q_i^T                      (line 11; scale applied below)
//   P^T  = exp(scale S^T - LSE_i)         (line 13; masked: 0)
//   dV_j += P^T dO_i                      (line 16)
//   dP^T = V_j dO_i^T                     (line 17)
//   dS^T = P^T o (dP^T - D_i)             (line 19)
//   dK_j += dS^T Q_i                      (line 21; scale applied once, at the end)
//   dQ_i += scale dS K_j                  (line 20: through shared memory, see warp_dq)
// P^T and dS^T stay in registers and become the A operands of the dV and dK products through the
// C -> A identity; dS^T also goes to shared memory in 16-bit, where the dQ product reads it back
// transposed (ldmatrix.trans) as A = dS. Scores are in log2 units as in the forward:
// P = exp2(s * scale * log2(e) - LSE * log2(e)).
#pragma once

#include <cmath>
#include <cstdint>

#include "forward_tc_tile.hpp"
#include "mma_fragments.hpp"
#include "tc_warp_ops.hpp"
#include "tile_math.hpp"

namespace ringattn::cuda::detail::tc {

inline constexpr int kBwdBc = 16 * kWarps;  // key rows per CTA: one m16 tile per warp
inline constexpr int kBwdBr = 64;           // query rows per Q_i / dO_i tile
static_assert(kBwdBr % 64 == 0, "a dS^T row (Br 16-bit values) must span whole 8-chunk swizzle rows");
static_assert(2 * kBwdBr == kThreads, "one thread per LSE / D element of a query tile");
static_assert(kBwdBc == kBwdBr && kBwdBr == 16 * kWarps,
              "the dQ product gives each warp 16 query rows of the tile: Br = 16 warps (and Bc = Br here)");

// ---- shared memory (element offsets in 16-bit units; LSE and D in floats after them) ----------

/// Layout of the backward CTA's shared memory for head dim @p D: K_j, V_j (Bc x D), Q_i and dO_i
/// in two stages each (Br x D), dS^T (Bc x Br), all XOR-swizzled 16-bit tiles; then LSE_i and D_i
/// in two stages (Br floats each).
template <int D>
struct BwdSmem {
  static constexpr int kK = 0;
  static constexpr int kV = kK + kBwdBc * D;
  static constexpr int kQ = kV + kBwdBc * D;             // + stage * kBwdBr * D
  static constexpr int kDO = kQ + 2 * kBwdBr * D;        // + stage * kBwdBr * D
  static constexpr int kDS = kDO + 2 * kBwdBr * D;
  static constexpr int kElems16 = kDS + kBwdBc * kBwdBr;  // 16-bit elements
  static constexpr int kLse = 0;                          // floats after the 16-bit part: + stage * Br
  static constexpr int kDelta = 2 * kBwdBr;               // + stage * Br
  static constexpr int kFloats = 4 * kBwdBr;
  static constexpr int kBytes = 2 * kElems16 + 4 * kFloats;  // 57 KiB at D = 64, 105 KiB at D = 128
  static_assert((2 * kElems16) % 16 == 0, "the float part starts 16-byte aligned");
};

// ---- the causal mask seen from a key row, and the query-tile schedule of one key tile ----------

/// The first query row that sees key row @p key: key j is visible to query i iff j < S_kv and
/// (not causal or k_pos(j) <= q_pos(i)); query positions grow with i, so the queries that see a key
/// are a suffix [query_start, S_q) (tile_math.hpp's first_visible_query). S_q when none does,
/// including keys past S_kv (the tail of the last key tile). One integer per key row turns the
/// mask of a whole tile into "query < start" and folds the S_kv tail into the same compare.
RINGATTN_HOST_DEVICE constexpr int query_start(const MaskParams& p, int seq_q, std::int64_t key) {
  if (key >= p.seq_kv) return seq_q;
  if (!p.causal) return 0;
  return static_cast<int>(first_visible_query(p.k_offset + key * p.k_stride, p.q_offset, p.q_stride, seq_q));
}

/// The first query tile a key tile visits, from the query_start of its *first* key row (starts
/// grow with the key since k_pos does): tiles before it hold no query that sees any key of the
/// tile, and are skipped without being loaded. Tiles [begin, ceil(S_q / Br)) are visited.
RINGATTN_HOST_DEVICE constexpr int q_tile_begin(int first_key_start) { return first_key_start / kBwdBr; }

/// Number of query tiles of S_q rows.
RINGATTN_HOST_DEVICE constexpr int q_tile_count(int seq_q) { return (seq_q + kBwdBr - 1) / kBwdBr; }

/// Whether the query tile starting at row @p q0 needs the per-element mask for the warp whose
/// *last* key row has query_start @p last_key_start: not when that key (hence every earlier one)
/// is visible to every row of the tile, and the tile has no S_q tail.
RINGATTN_HOST_DEVICE constexpr bool bwd_tile_needs_mask(int q0, int last_key_start, int seq_q) {
  return q0 < last_key_start || q0 + kBwdBr > seq_q;
}

/// What iteration @p it of a key tile's loop works on: the query head (of the GQA group of kv
/// head @p hk, @p group heads) and the first row of the query tile. The loop runs over
/// group * per_head iterations, per_head = q_tile_count - begin query tiles per head, head-major,
/// so the CTA visits every (head, tile) pair that can see its keys exactly once and dK, dV sum
/// over the whole group in registers (no atomics).
struct BwdIteration {
  int head = 0;  // query head h in [hk group, (hk + 1) group)
  int q0 = 0;    // first query row of the tile
};
RINGATTN_HOST_DEVICE constexpr BwdIteration bwd_iteration(int it, int per_head, int begin, int hk, int group) {
  return {hk * group + it / per_head, (begin + it % per_head) * kBwdBr};
}

/// Element offset of row (b, s, h) of a (B, S, H, D) tensor: where a CTA's K_j / V_j / dK_j / dV_j
/// tile (s = first key row, h = kv head) or a query tile's Q_i / dO_i / dQ_i rows (s = q0, h =
/// query head) start; consecutive rows are H D elements apart.
RINGATTN_HOST_DEVICE constexpr std::int64_t bshd_offset(int b, int s, int h, int seq, int heads, int dim) {
  return ((static_cast<std::int64_t>(b) * seq + s) * heads + h) * dim;
}
/// Element offset of row i of (b, h) in a (B, H, S) tensor (LSE, D).
RINGATTN_HOST_DEVICE constexpr std::int64_t bhs_offset(int b, int h, int i, int heads, int seq) {
  return (static_cast<std::int64_t>(b) * heads + h) * seq + i;
}

/// Which LSE / D element thread @p tid copies into shared memory for a query tile: threads
/// 0 .. Br-1 copy LSE rows, Br .. 2 Br-1 the D rows (one 4-byte cp.async each).
struct RowCopy {
  bool delta = false;  // false: LSE, true: D
  int row = 0;
};
RINGATTN_HOST_DEVICE constexpr RowCopy row_copy(int tid) { return {tid >= kBwdBr, tid % kBwdBr}; }

// ---- where the warps write --------------------------------------------------------------------

/// dQ rows of one query tile: row r (0 .. Br-1) at dq + r * row_stride; rows >= rows are past S_q.
struct DqBlock {
  float* dq = nullptr;
  std::int64_t row_stride = 0;
  int rows = 0;
};

/// dK, dV rows of the CTA's key tile: row r at dk / dv + r * row_stride; rows >= rows are past
/// S_kv. With accumulate the gradients are added to what the rows hold, else written.
struct DkvBlock {
  float* dk = nullptr;
  float* dv = nullptr;
  std::int64_t row_stride = 0;
  int rows = 0;
  bool accumulate = false;
};

// ---- the warp program -------------------------------------------------------------------------

/// A warp's registers across the query-tile loop: the dK_j and dV_j rows of its 16 keys (C
/// fragments, two rows per lane: groupID and groupID + 8), and the query_start of those two keys.
template <class W, int D>
struct BwdWarpState {
  typename W::F dk[D / 8][4];  // sum of dS^T Q (scale applied at the store)
  typename W::F dv[D / 8][4];  // sum of P^T dO
  typename W::I start[2];      // query_start of key rows 16 warp + groupID (+ 8)
};

/// Resets dK, dV and computes the two query starts of each lane; @p key_start(row) gives
/// query_start of key row 0 .. Bc-1 of the tile.
template <class W, int D, class KeyStart>
RINGATTN_HOST_DEVICE void bwd_warp_begin(W& w, BwdWarpState<W, D>& st, int warp, KeyStart&& key_start) {
  using I = typename W::I;
  zero_c<D, W>(st.dk);
  zero_c<D, W>(st.dv);
  RINGATTN_UNROLL
  for (int r = 0; r < 2; ++r) st.start[r] = key_start(I(16 * warp + 8 * r) + (w.lane() >> 2));
}

/// Query columns one pass of bwd_warp_tile covers: all Br at D = 64; at D = 128 two passes of 32,
/// so that S^T and dP^T (fp32, 16 x cols) fit next to the 2 x 64 registers of dK and dV without
/// spilling (the price: the warp's K and V A fragments are read from shared memory twice).
template <int D>
inline constexpr int kBwdPassCols = D <= 64 ? kBwdBr : kBwdBr / 2;

/// Everything of query tile i for the warp's 16 keys except dQ: S^T, P^T, dV += P^T dO, dP^T,
/// dS^T, dK += dS^T Q, and dS^T stored (16-bit) into the swizzled tile @p sdS for warp_dq; in
/// passes over kBwdPassCols query columns. @p q_valid: query rows of the tile below S_q; @p lse,
/// @p delta: LSE_i and D_i of the tile in shared memory (natural log; LSE = -inf, a row that saw
/// no key, gives P = 0).
template <bool kMask, class W, int D>
RINGATTN_HOST_DEVICE void bwd_warp_tile(W& w, BwdWarpState<W, D>& st, int warp, int q0, int q_valid,
                                        const std::uint16_t* sK, const std::uint16_t* sV, const std::uint16_t* sQ,
                                        const std::uint16_t* sdO, const float* lse, const float* delta,
                                        std::uint16_t* sdS, float scale_log2) {
  using F = typename W::F;
  using I = typename W::I;
  using U = typename W::U;
  constexpr int kCols = kBwdPassCols<D>;
  constexpr int kN = kCols / 8;  // n8 tiles of query columns per pass
  const I lane = w.lane();
  const I col_lane = (lane & 3) << 1;  // column of c_0 in n-tile 0 (c_coord)
  const int row0 = 16 * warp;          // the warp's first key row in the tile
  // dS^T store: lane part of (key row groupID, chunk 0) + its column pair (tile_offset_at).
  const I ds_part = mma::tile_offset<kBwdBr>(lane >> 2, I(0)) + col_lane;

  RINGATTN_UNROLL
  for (int c0 = 0; c0 < kBwdBr; c0 += kCols) {
    // Rows c0 .. c0 + kCols - 1 of the Q_i and dO_i tiles: c0 is a multiple of 8, so the
    // sub-tile keeps the swizzle pattern of its rows (mma_fragments.hpp, tile_offset_at).
    const std::uint16_t* const q_rows = sQ + c0 * D;
    const std::uint16_t* const do_rows = sdO + c0 * D;

    // S^T = K_j Q_i^T: A = the warp's K rows (ldmatrix), B^T = Q_i stored [query][dim].
    F s[kN][4];
    zero_c<kCols, W>(s);
    warp_mma_abt<D, kCols>(w, s, [&](int kk, U(&a)[4]) { ldsm_a<D>(w, a, sK, row0, kk); }, q_rows);

    // P^T = exp2(s' - LSE'), column by column (a column is a query row i of the tile).
    RINGATTN_UNROLL
    for (int n = 0; n < kN; ++n) {
      RINGATTN_UNROLL
      for (int e = 0; e < 2; ++e) {
        const I col = col_lane + (c0 + 8 * n + e);
        const F l = w.lds_f32(lse, col);
        // -inf (no key seen) -> +inf: exp2(s' - inf) = 0 instead of +inf.
        const F l2 = w.select(l == F(-INFINITY), F(INFINITY), l * float(kLog2e));
        RINGATTN_UNROLL
        for (int r = 0; r < 2; ++r) {
          F x = s[n][2 * r + e] * scale_log2;
          if constexpr (kMask) {
            x = w.select(col + q0 < st.start[r], F(-INFINITY), x);  // above the diagonal / key tail
            x = w.select(col >= q_valid, F(-INFINITY), x);           // query tail
          }
          s[n][2 * r + e] = w.exp2(x - l2);
        }
      }
    }

    // dV_j += P^T dO_i: A = P^T from registers, B = dO_i stored [query][dim] (.trans).
    warp_mma_ab<kCols, D>(w, st.dv, [&](int kk, U(&a)[4]) { pack_c_as_a<kCols>(w, s, kk, a); }, do_rows);

    // dP^T = V_j dO_i^T: A = the warp's V rows, B^T = dO_i stored [query][dim].
    F dp[kN][4];
    zero_c<kCols, W>(dp);
    warp_mma_abt<D, kCols>(w, dp, [&](int kk, U(&a)[4]) { ldsm_a<D>(w, a, sV, row0, kk); }, do_rows);

    // dS^T = P^T o (dP^T - D_i), left in dp; a masked element has P = 0, so dS = 0.
    RINGATTN_UNROLL
    for (int n = 0; n < kN; ++n) {
      RINGATTN_UNROLL
      for (int e = 0; e < 2; ++e) {
        const F d = w.lds_f32(delta, col_lane + (c0 + 8 * n + e));
        RINGATTN_UNROLL
        for (int r = 0; r < 2; ++r) dp[n][2 * r + e] = s[n][2 * r + e] * (dp[n][2 * r + e] - d);
      }
    }

    // dS^T in 16-bit A fragments: the operand of dK += dS^T Q_i, and what warp_dq reads back.
    U ds[kCols / 16][4];
    RINGATTN_UNROLL
    for (int kk = 0; kk < kCols / 16; ++kk) pack_c_as_a<kCols>(w, dp, kk, ds[kk]);
    warp_mma_ab<kCols, D>(
        w, st.dk,
        [&](int kk, U(&a)[4]) {
          RINGATTN_UNROLL
          for (int r = 0; r < 4; ++r) a[r] = ds[kk][r];
        },
        q_rows);

    // A register r of k-step kk holds C tile n = 2 kk + (r >> 1), elements 2 (r & 1), +1: key row
    // groupID + 8 (r & 1), query columns c0 + 8 n + 2 threadID_in_group, +1 (c_to_a_*, c_coord).
    RINGATTN_UNROLL
    for (int kk = 0; kk < kCols / 16; ++kk) {
      RINGATTN_UNROLL
      for (int r = 0; r < 4; ++r) {
        const int n = c0 / 8 + 2 * kk + mma::c_to_a_tile(r);  // chunk n of key row row0 + 8 (r & 1) + groupID
        w.sts_u32(sdS, mma::tile_offset_at<kBwdBr>(ds_part, row0 + 8 * (r & 1), n), ds[kk][r]);
      }
    }
  }
}

/// dQ_i += scale dS K_j for query rows 16 warp .. 16 warp + 15 of the tile, over the Bc keys of
/// every warp: A = dS read transposed from the dS^T tile @p sdS (ldmatrix.trans), B = K_j stored
/// [key][dim] (.trans). The 16 x D result goes out 16 columns at a time through w.add_dq
/// (atomicAdd: other key tiles add to the same rows), so only 8 accumulators are live.
template <class W, int D>
RINGATTN_HOST_DEVICE void bwd_warp_dq(W& w, int warp, const std::uint16_t* sdS, const std::uint16_t* sK, float scale,
                                      const DqBlock& out) {
  using F = typename W::F;
  using I = typename W::I;
  using U = typename W::U;
  const I lane = w.lane();
  U a[kBwdBc / 16][4];
  RINGATTN_UNROLL
  for (int kk = 0; kk < kBwdBc / 16; ++kk) ldsm_a_trans<kBwdBr>(w, a[kk], sdS, 16 * warp, kk);
  const I part = mma::tile_offset<D>(mma::ldsm_b_trans_row(lane), mma::ldsm_b_trans_chunk(lane));
  RINGATTN_UNROLL
  for (int np = 0; np < D / 16; ++np) {
    F c[2][4];
    zero_c<16, W>(c);
    RINGATTN_UNROLL
    for (int kk = 0; kk < kBwdBc / 16; ++kk) {
      // K rows (keys) 16 kk .. 16 kk + 15, head dims 16 np .. 16 np + 15.
      U b[4];
      w.ldsm_x4_trans(b, sK, mma::tile_offset_at<D>(part, 16 * kk, 2 * np));
      w.mma(c[0], a[kk], b[0], b[1]);
      w.mma(c[1], a[kk], b[2], b[3]);
    }
    RINGATTN_UNROLL
    for (int t = 0; t < 2; ++t) {
      RINGATTN_UNROLL
      for (int r = 0; r < 2; ++r) {
        const I row = I(16 * warp + 8 * r) + (lane >> 2);
        const I col = I(16 * np + 8 * t) + ((lane & 3) << 1);
        w.add_dq(out, row, col, c[t][2 * r] * scale, c[t][2 * r + 1] * scale);
      }
    }
  }
}

/// Writes (or adds) the warp's dK = scale sum dS^T Q and dV = sum P^T dO rows.
template <class W, int D>
RINGATTN_HOST_DEVICE void bwd_warp_store(W& w, const BwdWarpState<W, D>& st, int warp, float scale,
                                         const DkvBlock& out) {
  using I = typename W::I;
  const I lane = w.lane();
  RINGATTN_UNROLL
  for (int r = 0; r < 2; ++r) {
    const I row = I(16 * warp + 8 * r) + (lane >> 2);
    RINGATTN_UNROLL
    for (int n = 0; n < D / 8; ++n) {
      w.store_dkdv(out, row, I(8 * n) + ((lane & 3) << 1), st.dk[n][2 * r] * scale, st.dk[n][2 * r + 1] * scale,
                   st.dv[n][2 * r], st.dv[n][2 * r + 1]);
    }
  }
}

// ---- the CTA program: backward_tc_kernel -----------------------------------------------------

/// Kernel arguments (BwdLaunch resolved into what the kernel indexes with).
struct BwdParams {
  const std::uint16_t* q = nullptr;     // (B, S_q, H_q, D)
  const std::uint16_t* k = nullptr;     // (B, S_kv, H_kv, D)
  const std::uint16_t* v = nullptr;     // (B, S_kv, H_kv, D)
  const std::uint16_t* dout = nullptr;  // (B, S_q, H_q, D)
  const float* lse = nullptr;           // (B, H_q, S_q)
  const float* delta = nullptr;         // (B, H_q, S_q)
  float* dq = nullptr;                  // (B, S_q, H_q, D), added to
  float* dk = nullptr;                  // (B, S_kv, H_kv, D)
  float* dv = nullptr;                  // (B, S_kv, H_kv, D)
  bool accumulate = false;              // dK, dV added to (dQ always is: zeroed first otherwise)
  int seq_q = 0, heads_q = 0, heads_kv = 0, group = 1;  // group = H_q / H_kv
  MaskParams mask;
  float scale = 0.0f;
  float scale_log2 = 0.0f;  // scale * log2(e)
};

/// One CTA of the backward: key rows [block_x Bc, +Bc) of kv head block_y, batch block_z.
/// Per query tile the CTA passes two barriers: one at the top (tile i has landed for every
/// thread, and every warp is done with tile i-1, whose stage the next load overwrites and whose
/// dS^T tile this one overwrites), one between writing dS^T and reading it back for dQ.
template <int D, class C>
RINGATTN_HOST_DEVICE void backward_cta(C& c, const BwdParams& p) {
  using W = typename C::W;
  using L = BwdSmem<D>;
  // Shared memory (every 16-bit tile swizzled): K_j, V_j, Q_i x 2 stages, dO_i x 2, dS^T; then
  // LSE_i x 2, D_i x 2 in floats.
  std::uint16_t* const smem = c.smem();
  std::uint16_t* const sK = smem + L::kK;
  std::uint16_t* const sV = smem + L::kV;
  std::uint16_t* const sQ = smem + L::kQ;
  std::uint16_t* const sdO = smem + L::kDO;
  std::uint16_t* const sdS = smem + L::kDS;
  float* const sRows = reinterpret_cast<float*>(smem + L::kElems16);

  const int warp = c.warp();
  const int k0 = c.block_x() * kBwdBc;
  const int hk = c.block_y();
  const int b = c.block_z();
  const int seq_q = p.seq_q;
  const int seq_kv = p.mask.seq_kv;
  const std::int64_t q_row_stride = static_cast<std::int64_t>(p.heads_q) * D;  // between query rows
  const std::int64_t kv_row_stride = static_cast<std::int64_t>(p.heads_kv) * D;
  const std::int64_t kv_first = bshd_offset(b, k0, hk, seq_kv, p.heads_kv, D);
  const int kv_rows = static_cast<int>(min64(kBwdBc, seq_kv - k0));

  // Query tiles that see no key of this tile are skipped without loading: [begin, Tr) per head.
  const int first_start = query_start(p.mask, seq_q, k0);  // S_q: no query sees any key of the tile
  const int begin = q_tile_begin(first_start);
  const int per_head = q_tile_count(seq_q) - begin;
  const int n_iter = first_start < seq_q ? p.group * per_head : 0;

  auto rows_of = [&](int it) { return bwd_iteration(it, per_head, begin, hk, p.group); };
  auto load_q_tile = [&](int it, int stage) {
    const BwdIteration at = rows_of(it);
    const int valid = static_cast<int>(min64(kBwdBr, seq_q - at.q0));
    const std::int64_t first = bshd_offset(b, at.q0, at.head, seq_q, p.heads_q, D);
    load_tile<D, kBwdBr>(c, sQ + stage * kBwdBr * D, p.q + first, q_row_stride, valid);
    load_tile<D, kBwdBr>(c, sdO + stage * kBwdBr * D, p.dout + first, q_row_stride, valid);
    const std::int64_t row_first = bhs_offset(b, at.head, at.q0, p.heads_q, seq_q);
    c.for_each_thread([&](int tid) {
      const RowCopy rc = row_copy(tid);
      const float* src = (rc.delta ? p.delta : p.lse) + row_first;
      float* dst = sRows + (rc.delta ? L::kDelta : L::kLse) + stage * kBwdBr + rc.row;
      const bool ok = rc.row < valid;
      c.cp_async_4(dst, ok ? src + rc.row : src, ok ? 4 : 0);  // tails zero-filled (and masked)
    });
  };

  // Prologue: group 0 = K_j, V_j (tails zero-filled) and tile 0; nothing when no query sees the
  // tile (dK_j = dV_j = 0 are stored below all the same).
  if (n_iter > 0) {
    load_tile<D, kBwdBc>(c, sK, p.k + kv_first, kv_row_stride, kv_rows);
    load_tile<D, kBwdBc>(c, sV, p.v + kv_first, kv_row_stride, kv_rows);
    load_q_tile(0, 0);
  }
  c.commit();

  W& w = c.w();
  BwdWarpState<W, D> st;
  bwd_warp_begin(w, st, warp, [&](const auto& row) {
    return w.map_lanes(row, [&](int r) { return query_start(p.mask, seq_q, static_cast<std::int64_t>(k0) + r); });
  });
  // The warp's last key row: if every tile row sees it, every row sees all the warp's keys.
  const int last_start = query_start(p.mask, seq_q, static_cast<std::int64_t>(k0) + 16 * warp + 15);

  for (int it = 0; it < n_iter; ++it) {
    const int stage = it & 1;
    c.template wait<0>();  // tile it (and, at it = 0, K_j, V_j) has landed for this thread ...
    c.sync();              // ... and for all; every warp is done with tile it-1 (stage ^ 1, dS^T)
    if (it + 1 < n_iter) load_q_tile(it + 1, stage ^ 1);  // overlaps with all of tile it's math
    c.commit();

    const BwdIteration at = rows_of(it);
    const int q_valid = static_cast<int>(min64(kBwdBr, seq_q - at.q0));
    const std::uint16_t* const q_tile = sQ + stage * kBwdBr * D;
    const std::uint16_t* const do_tile = sdO + stage * kBwdBr * D;
    const float* const lse = sRows + L::kLse + stage * kBwdBr;
    const float* const delta = sRows + L::kDelta + stage * kBwdBr;
    if (bwd_tile_needs_mask(at.q0, last_start, seq_q)) {
      bwd_warp_tile<true>(w, st, warp, at.q0, q_valid, sK, sV, q_tile, do_tile, lse, delta, sdS, p.scale_log2);
    } else {
      bwd_warp_tile<false>(w, st, warp, at.q0, q_valid, sK, sV, q_tile, do_tile, lse, delta, sdS, p.scale_log2);
    }
    c.sync();  // dS^T of every warp is in sdS: each warp's dQ rows need all 64 keys

    DqBlock dq;
    dq.dq = p.dq + bshd_offset(b, at.q0, at.head, seq_q, p.heads_q, D);
    dq.row_stride = q_row_stride;
    dq.rows = q_valid;
    bwd_warp_dq<W, D>(w, warp, sdS, sK, p.scale, dq);
  }
  c.template wait<0>();  // no copy may still target shared memory when the CTA exits

  DkvBlock out;
  out.dk = p.dk + kv_first;
  out.dv = p.dv + kv_first;
  out.row_stride = kv_row_stride;
  out.rows = kv_rows;
  out.accumulate = p.accumulate;
  bwd_warp_store(w, st, warp, p.scale, out);
}

}  // namespace ringattn::cuda::detail::tc
