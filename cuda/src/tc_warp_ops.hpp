// Warp-level matrix products on tensor cores, shared by the forward (forward_tc_tile.hpp) and the
// backward (backward_tc_tile.hpp): each is one m16 row block of a product whose B operand sits in
// an XOR-swizzled shared-memory tile (mma_fragments.hpp), written once for the GPU and for the
// CPU emulation of a warp (tests/cuda).
//
// Like the tile headers these are templates over a warp policy W (forward_tc_tile.hpp lists its
// members: W::F, W::U, w.lane(), w.ldsm_x4, w.ldsm_x4_trans, w.mma, w.pack2). Shapes are
// template parameters, so every loop unrolls and register arrays are indexed by constants.
//
//   ldsm_a          A (16 x 16) of a row-major tile [m][k]                     ldmatrix
//   ldsm_a_trans    A (16 x 16) of a tile stored transposed, [k][m]            ldmatrix.trans
//   pack_c_as_a     A (16 x 16) from two fp32 C fragments, in registers        (C -> A identity)
//   warp_mma_abt    C (16 x N) += A (16 x K) B^T, B stored [n][k] (K, V, Q, dO as "rows")
//   warp_mma_ab     C (16 x N) += A (16 x K) B,   B stored [k][n] (.trans)
#pragma once

#include <cstdint>

#include "mma_fragments.hpp"

namespace ringattn::cuda::detail::tc {

/// A fragment of rows @p row0 .. row0 + 15, k-step @p kk (columns 16 kk .. 16 kk + 15) of a
/// row-major swizzled tile with @p KD columns: lane l addresses row row0 + l % 16, chunk 2 kk + l / 16.
template <int KD, class W>
RINGATTN_HOST_DEVICE void ldsm_a(W& w, typename W::U (&a)[4], const std::uint16_t* sA, int row0, int kk) {
  using I = typename W::I;
  const I lane = w.lane();
  const I part = mma::tile_offset<KD>(mma::ldsm_a_row(lane), mma::ldsm_a_chunk(lane));
  w.ldsm_x4(a, sA, mma::tile_offset_at<KD>(part, row0, 2 * kk));
}

/// A fragment of the 16 x 16 block (m0 .. m0 + 15, k-step kk) of a matrix A whose transpose is
/// stored as a swizzled tile [k][m] with @p M columns (ldmatrix.trans; mma_fragments.hpp,
/// ldsm_a_trans_*). @p m0 is a multiple of 16.
template <int M, class W>
RINGATTN_HOST_DEVICE void ldsm_a_trans(W& w, typename W::U (&a)[4], const std::uint16_t* sAt, int m0, int kk) {
  using I = typename W::I;
  const I lane = w.lane();
  const I part = mma::tile_offset<M>(mma::ldsm_a_trans_row(lane), mma::ldsm_a_trans_chunk(lane));
  w.ldsm_x4_trans(a, sAt, mma::tile_offset_at<M>(part, 16 * kk, m0 / 8));
}

/// The A fragment of k-step @p kk of a 16 x K matrix held as fp32 C fragments c[K/8][4]: the C
/// tiles 2 kk, 2 kk + 1 converted to bf16/fp16 pairs in place (mma_fragments.hpp, c_to_a_*).
template <int K, class W>
RINGATTN_HOST_DEVICE void pack_c_as_a(W& w, const typename W::F (&c)[K / 8][4], int kk, typename W::U (&a)[4]) {
  RINGATTN_UNROLL
  for (int r = 0; r < 4; ++r) {
    const int n = 2 * kk + mma::c_to_a_tile(r);
    const int e = mma::c_to_a_elem(r);
    a[r] = w.pack2(c[n][e], c[n][e + 1]);
  }
}

/// C (16 x N) += A (16 x K) B^T where B^T's columns are the rows of a swizzled tile [n][k] with K
/// columns (no .trans: a stored row is a column of the B operand). @p a_of(kk, a) supplies the A
/// fragment of k-step kk (from registers or shared memory), once per k-step.
template <int K, int N, class W, class AOf>
RINGATTN_HOST_DEVICE void warp_mma_abt(W& w, typename W::F (&c)[N / 8][4], AOf&& a_of, const std::uint16_t* sB) {
  using I = typename W::I;
  static_assert(K % 16 == 0 && N % 16 == 0, "whole m16n8k16 steps, two n8 tiles per ldmatrix.x4");
  const I lane = w.lane();
  const I part = mma::tile_offset<K>(mma::ldsm_bt_row(lane), mma::ldsm_bt_chunk(lane));
  RINGATTN_UNROLL
  for (int kk = 0; kk < K / 16; ++kk) {
    typename W::U a[4];
    a_of(kk, a);
    RINGATTN_UNROLL
    for (int np = 0; np < N / 16; ++np) {
      // B rows (n) 16 np .. 16 np + 15 (two n8 tiles), k 16 kk .. 16 kk + 15.
      typename W::U b[4];
      w.ldsm_x4(b, sB, mma::tile_offset_at<K>(part, 16 * np, 2 * kk));
      w.mma(c[2 * np], a, b[0], b[1]);
      w.mma(c[2 * np + 1], a, b[2], b[3]);
    }
  }
}

/// C (16 x N) += A (16 x K) B where B is a swizzled tile stored [k][n] with N columns (ldmatrix
/// .trans). @p a_of(kk, a) supplies the A fragment of k-step kk, once per k-step.
template <int K, int N, class W, class AOf>
RINGATTN_HOST_DEVICE void warp_mma_ab(W& w, typename W::F (&c)[N / 8][4], AOf&& a_of, const std::uint16_t* sB) {
  using I = typename W::I;
  static_assert(K % 16 == 0 && N % 16 == 0, "whole m16n8k16 steps, two n8 tiles per ldmatrix.x4");
  const I lane = w.lane();
  const I part = mma::tile_offset<N>(mma::ldsm_b_trans_row(lane), mma::ldsm_b_trans_chunk(lane));
  RINGATTN_UNROLL
  for (int kk = 0; kk < K / 16; ++kk) {
    typename W::U a[4];
    a_of(kk, a);
    RINGATTN_UNROLL
    for (int np = 0; np < N / 16; ++np) {
      // B rows (k) 16 kk .. 16 kk + 15, columns (n) 16 np .. 16 np + 15 (two n8 tiles).
      typename W::U b[4];
      w.ldsm_x4_trans(b, sB, mma::tile_offset_at<N>(part, 16 * kk, 2 * np));
      w.mma(c[2 * np], a, b[0], b[1]);
      w.mma(c[2 * np + 1], a, b[2], b[3]);
    }
  }
}

/// Sets every element of C fragments to zero.
template <int N, class W>
RINGATTN_HOST_DEVICE void zero_c(typename W::F (&c)[N / 8][4]) {
  RINGATTN_UNROLL
  for (int n = 0; n < N / 8; ++n) {
    RINGATTN_UNROLL
    for (int i = 0; i < 4; ++i) c[n][i] = typename W::F(0.0f);
  }
}

}  // namespace ringattn::cuda::detail::tc
