// Which element of which matrix each lane of a warp holds, for the tensor-core instructions the
// forward and backward kernels use (forward_tc.cu, backward_tc.cu): mma.sync.m16n8k16 (bf16/fp16
// in, fp32 accumulate) and ldmatrix.m8n8.x4{.trans}.b16, plus the XOR swizzle of the shared-memory
// tiles they read.
//
// What this file is for: the index math of a tensor-core kernel is where its bugs live, and a
// GPU only shows them as wrong numbers. Here it is plain constexpr integer arithmetic that
// compiles for the device (nvcc) and for the host (any C++17 compiler, no CUDA headers), so
// tests/cuda/mma_emulation_test.cpp can check it on the CPU against an emulated warp that
// follows the PTX ISA text, and the kernel uses the very same functions.
//
// Source of truth: the PTX ISA (docs.nvidia.com/cuda/parallel-thread-execution/), sections
//   "Matrix Fragments for mma.m16n8k16 with floating point type"
//       (#warp-level-matrix-fragment-mma-16816-float)
//   "Warp-level matrix load instruction: ldmatrix"
//       (#warp-level-matrix-instructions-ldmatrix)
// (9.7.14.5.8 and 9.7.14.5.15 in the PTX ISA 8.x numbering). Notation there and here:
//   groupID = laneid >> 2 (0..7), threadID_in_group = laneid % 4 (0..3); a "quad" is the four
//   lanes with one groupID. A .f16x2/.bf16x2 register holds its lower-index element in bits 0..15.
#pragma once

#include <cstdint>

// Host and device under nvcc, plain functions for a host compiler (the same definition as
// tile_math.hpp's, which may be included alongside).
#ifndef RINGATTN_HOST_DEVICE
#if defined(__CUDACC__)
#define RINGATTN_HOST_DEVICE __host__ __device__
#else
#define RINGATTN_HOST_DEVICE
#endif
#endif

// Full unrolling of the fragment loops (register arrays must only be indexed by constants) in
// the device pass; the host compiler does not know the pragma.
#if defined(__CUDA_ARCH__)
#define RINGATTN_UNROLL _Pragma("unroll")
#else
#define RINGATTN_UNROLL
#endif

namespace ringattn::cuda::detail::mma {

/// A (row, column) inside a fragment's matrix.
struct Coord {
  int row = 0;
  int col = 0;
};

RINGATTN_HOST_DEVICE constexpr int group_id(int lane) { return lane >> 2; }
RINGATTN_HOST_DEVICE constexpr int thread_in_group(int lane) { return lane & 3; }

// ---- mma.m16n8k16 .row.col, A and B in .f16/.bf16, C and D in .f32 -------------------------
//
// D (16x8) = A (16x16, row-major "row") * B (16x8, column-major "col") + C. Per lane:
// A: four 32-bit registers = 8 elements a0..a7 (register r holds a_{2r} low, a_{2r+1} high);
// B: two 32-bit registers = 4 elements b0..b3; C, D: four fp32 registers c0..c3.

/// Element a_i (0 <= i < 8) of lane @p lane: row = groupID (+8 for i in {2,3,6,7}),
/// col = 2 threadID_in_group + (i & 1) (+8 for i >= 4). So register 0 covers rows 0..7 /
/// cols 0..7, register 1 rows 8..15 / cols 0..7, register 2 rows 0..7 / cols 8..15, register 3
/// rows 8..15 / cols 8..15: the four 8x8 quarters in column-major order.
RINGATTN_HOST_DEVICE constexpr Coord a_coord(int lane, int i) {
  return {group_id(lane) + 8 * ((i >> 1) & 1), 2 * thread_in_group(lane) + (i & 1) + 8 * (i >> 2)};
}

/// Element b_i (0 <= i < 4) of lane @p lane, as (k, n): k = 2 threadID_in_group + (i & 1)
/// (+8 for i >= 2), n = groupID. Register 0 covers k 0..7, register 1 k 8..15.
RINGATTN_HOST_DEVICE constexpr Coord b_coord(int lane, int i) {
  return {2 * thread_in_group(lane) + (i & 1) + 8 * (i >> 1), group_id(lane)};
}

/// Element c_i (0 <= i < 4) of lane @p lane: row = groupID (+8 for i >= 2),
/// col = 2 threadID_in_group + (i & 1). So each lane holds two rows, groupID and groupID + 8,
/// two adjacent columns of each, and the four lanes of a quad together hold all 8 columns.
RINGATTN_HOST_DEVICE constexpr Coord c_coord(int lane, int i) {
  return {group_id(lane) + 8 * (i >> 1), 2 * thread_in_group(lane) + (i & 1)};
}

/// The row of the C fragment that c_i belongs to, as 0 (groupID) or 1 (groupID + 8).
RINGATTN_HOST_DEVICE constexpr int c_row_half(int i) { return i >> 1; }

// ---- C fragment -> A fragment (the register identity flash-attention-2 relies on) ----------
//
// Two adjacent 16x8 C tiles (columns 0..7 and 8..15 of a 16x16 block) hold, lane by lane, the
// same (row, col) elements as one 16x16 A fragment: a_{2r} and a_{2r+1} are c_{e}, c_{e+1} of
// C tile t with t = r >> 1 and e = 2 (r & 1). So P = exp(S - m), computed in S's C fragments,
// becomes the A operand of P V by converting pairs to bf16/fp16 in place: no shared memory and
// no shuffles. tests/cuda checks the identity lane by lane.

/// Which of the two C tiles A register @p r (0..3) comes from (0: columns 0..7, 1: 8..15).
RINGATTN_HOST_DEVICE constexpr int c_to_a_tile(int r) { return r >> 1; }
/// The first of the two C elements (c_e, c_{e+1}) A register @p r packs.
RINGATTN_HOST_DEVICE constexpr int c_to_a_elem(int r) { return 2 * (r & 1); }

// ---- ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16 ---------------------------------------
//
// Loads four 8x8 matrices of 16-bit elements. Lanes 8m .. 8m+7 give the shared-memory addresses
// of rows 0..7 of matrix m (each row 16 contiguous bytes, 16-byte aligned); destination register
// m of every lane receives two elements of matrix m (Figure "ldmatrix fragment layout for one
// 8x8 matrix with 16-bit elements"): without .trans, lane i gets row i/4, columns 2(i%4) and
// 2(i%4)+1 of the matrix as stored; with .trans (the matrix read column-major), lane i gets
// stored rows 2(i%4) and 2(i%4)+1 of column i/4. Low half = first of the two.

/// The lane that supplies the address of row @p row (0..7) of matrix @p matrix (0..3).
RINGATTN_HOST_DEVICE constexpr int ldsm_address_lane(int matrix, int row) { return 8 * matrix + row; }

/// Which element (stored row, stored column) of its 8x8 matrix lane @p lane receives in half
/// @p half (0 low, 1 high) of a destination register.
RINGATTN_HOST_DEVICE constexpr Coord ldsm_dest(int lane, int half, bool trans) {
  return trans ? Coord{2 * thread_in_group(lane) + half, group_id(lane)}
               : Coord{group_id(lane), 2 * thread_in_group(lane) + half};
}

// Row and 8-column chunk each lane addresses so that one ldmatrix.x4 delivers a whole operand.
// The functions are templates on the lane type so that the CPU emulator can evaluate them for
// all 32 lanes at once (tests/cuda); in the kernel I is int.

/// A operand, 16x16 tile of a row-major matrix [row][k] (Q): matrix m = lane/8 is the quarter
/// that feeds A register m (rows +8 when m is odd, k +8 when m >= 2), so lane l addresses tile
/// row l % 16 in chunk l / 16.
template <class I>
RINGATTN_HOST_DEVICE constexpr I ldsm_a_row(I lane) { return lane & 15; }
template <class I>
RINGATTN_HOST_DEVICE constexpr I ldsm_a_chunk(I lane) { return lane >> 4; }

/// B operands of two adjacent n8 tiles, from a matrix stored [n][k] (K, whose rows are the
/// columns of K^T): matrix m feeds register (m & 1) of n-tile (m >> 1): registers 0, 1 are B of
/// n rows 0..7 (k 0..7, k 8..15), registers 2, 3 B of n rows 8..15. No .trans: a stored row of K
/// is a column n of B, and lane i must hold (k = 2(i%4), n = i/4): row i/4, column 2(i%4).
template <class I>
RINGATTN_HOST_DEVICE constexpr I ldsm_bt_row(I lane) { return (lane & 7) + ((lane >> 4) << 3); }
template <class I>
RINGATTN_HOST_DEVICE constexpr I ldsm_bt_chunk(I lane) { return (lane >> 3) & 1; }

/// B operands of two adjacent n8 tiles, from a matrix stored [k][n] (V): .trans, matrix m feeds
/// register (m & 1) of n-tile (m >> 1): rows k + 8 (m & 1), columns n + 8 (m >> 1). With .trans
/// lane i receives stored rows 2(i%4), 2(i%4)+1 of column i/4 = (k, n) of b0, b1.
template <class I>
RINGATTN_HOST_DEVICE constexpr I ldsm_b_trans_row(I lane) { return lane & 15; }
template <class I>
RINGATTN_HOST_DEVICE constexpr I ldsm_b_trans_chunk(I lane) { return lane >> 4; }

/// A operand of a 16x16 block (m x k) from a matrix stored transposed, [k][m] (the backward's
/// dS^T tile, read as dS for dQ = dS K): .trans, matrix q feeds A register q, i.e. the quarter
/// m + 8 (q & 1), k + 8 (q >> 1) (a_coord). Its stored rows are k, so lane 8q + r addresses stored
/// row k = r + 8 (q >> 1) in m-chunk q & 1; with .trans lane i receives stored rows 2(i%4),
/// 2(i%4)+1 of column i/4 = (k, m) of a_{2r}, a_{2r+1}. (The same address pattern as ldsm_bt_*:
/// both read two 8-wide column blocks of 16 stored rows; tests/cuda checks each on its own.)
template <class I>
RINGATTN_HOST_DEVICE constexpr I ldsm_a_trans_row(I lane) { return (lane & 7) + ((lane >> 4) << 3); }
template <class I>
RINGATTN_HOST_DEVICE constexpr I ldsm_a_trans_chunk(I lane) { return (lane >> 3) & 1; }

// ---- shared-memory tile layout: 16-byte chunks XOR-swizzled by row ---------------------------
//
// A tile row of D 16-bit elements is D/8 chunks of 16 bytes; D = 64 or 128 makes the row 128 or
// 256 bytes, a multiple of the 128 bytes the 32 banks span, so the same chunk of 8 consecutive
// rows would sit in one bank group and an ldmatrix phase (8 row addresses) would be an 8-way
// conflict. Storing logical chunk c of row r at physical chunk c ^ (r % 8) spreads those 8 rows
// over the 8 bank groups (16 bytes = 4 banks each); the row's bytes stay contiguous in 16-byte
// pieces, so cp.async still writes whole chunks. kChunks must be a multiple of 8.

/// Physical chunk of logical chunk @p chunk in row @p row.
template <class I>
RINGATTN_HOST_DEVICE constexpr I swizzle_chunk(I row, I chunk) { return chunk ^ (row & 7); }

/// Element offset of (row, first element of logical chunk) in a swizzled tile with D columns.
template <int D, class I>
RINGATTN_HOST_DEVICE constexpr I tile_offset(I row, I chunk) {
  static_assert(D % 64 == 0, "rows must span a multiple of 8 chunks of 16 bytes");
  return row * D + swizzle_chunk(row, chunk) * 8;
}

/// tile_offset<D>(R + r, C + c) split into a per-lane part and a per-use constant: for R a
/// multiple of 8, C even and c in {0, 1} (or C any chunk and c = 0), (C + c) ^ (r % 8) =
/// C ^ (c ^ (r % 8)) and the chunk bits of r D are zero, so the offset is
/// R D + (tile_offset<D>(r, c) ^ 8 C). A kernel keeps one register per lane pattern
/// @p lane_part = tile_offset<D>(r, c) and spends one XOR per ldmatrix, instead of keeping a
/// register for every (R, C) of an unrolled loop live (tests/cuda checks the identity).
template <int D, class I>
RINGATTN_HOST_DEVICE constexpr I tile_offset_at(I lane_part, int R, int C) {
  return I(R * D) + (lane_part ^ I(8 * C));
}

/// The 16-byte bank group (0..7) of a shared-memory byte address: 32 banks x 4 bytes = 128
/// bytes per cycle, so 8 accesses of 16 bytes are conflict-free iff their groups differ.
RINGATTN_HOST_DEVICE constexpr int bank_group(std::int64_t byte_address) {
  return static_cast<int>((byte_address >> 4) & 7);
}

// ---- quad reduction ------------------------------------------------------------------------
//
// The 8 columns of a C-fragment row are spread over the 4 lanes of a quad (c_coord), so a row
// max or sum is a lane-local reduction followed by __shfl_xor_sync with masks 1 and 2: lane l
// meets l^1, then (l^2) which has already met (l^3). XOR with 1 and 2 never changes bits 2..4 of
// the lane, i.e. never leaves the quad, and the two rounds together reach all four lanes.

/// The partners a lane exchanges with in the quad reduction, round 0 and round 1.
RINGATTN_HOST_DEVICE constexpr int quad_partner(int lane, int round) { return lane ^ (1 << round); }

}  // namespace ringattn::cuda::detail::mma
