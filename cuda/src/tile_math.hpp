// The index arithmetic of the masks and splits, as __host__ __device__ functions: the kernels call
// them on the device, tests/cuda/cuda_host_test.cpp checks them on the CPU against brute force.
//
// Positions (docs/conventions.md): query row i sits at q_offset + i * q_stride, key row j at
// k_offset + j * k_stride, strides >= 1. Keys are sorted by position, so the keys a query sees
// under the causal mask (k_pos <= q_pos) are a prefix of the key rows, and the queries that see a
// key are a suffix of the query rows. The kernels loop over exactly those ranges instead of
// testing the mask per (query, key) pair. The API validates that every position lies within
// +-2^62, so the differences below do not overflow.
#pragma once

#include <cstdint>

// Host and device under nvcc, plain (constexpr, hence inline) functions for a host compiler.
#if defined(__CUDACC__)
#define RINGATTN_HOST_DEVICE __host__ __device__
#else
#define RINGATTN_HOST_DEVICE
#endif

namespace ringattn::cuda::detail {

/// Smaller of two int64 (std::min is not a device function without --expt-relaxed-constexpr).
RINGATTN_HOST_DEVICE constexpr std::int64_t min64(std::int64_t a, std::int64_t b) { return a < b ? a : b; }
/// Larger of two int64.
RINGATTN_HOST_DEVICE constexpr std::int64_t max64(std::int64_t a, std::int64_t b) { return a > b ? a : b; }

/// ceil(a / b) for a >= 0, b > 0.
RINGATTN_HOST_DEVICE constexpr std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

/// Number of key rows a query at position @p p sees: the keys j with k_offset + j * k_stride <= p
/// are j < end = floor((p - k_offset) / k_stride) + 1, clamped to [0, seq_kv].
RINGATTN_HOST_DEVICE constexpr std::int64_t visible_key_end(std::int64_t p, std::int64_t k_offset, std::int64_t k_stride,
                                         std::int64_t seq_kv) {
  if (p < k_offset) return 0;
  return min64((p - k_offset) / k_stride + 1, seq_kv);  // p - k_offset >= 0: '/' is floor here
}

/// First query row that sees a key at position @p kp: the smallest i with
/// q_offset + i * q_stride >= kp, i.e. ceil((kp - q_offset) / q_stride), clamped to [0, seq_q]
/// (seq_q: no query sees it).
RINGATTN_HOST_DEVICE constexpr std::int64_t first_visible_query(std::int64_t kp, std::int64_t q_offset, std::int64_t q_stride,
                                             std::int64_t seq_q) {
  if (kp <= q_offset) return 0;
  return min64(ceil_div(kp - q_offset, q_stride), seq_q);
}

/// First key row of split @p s of @p splits over @p seq_kv keys: s * seq_kv / splits, the
/// reference's balanced split (decode_forward); split s is [begin(s), begin(s + 1)), empty when
/// splits > seq_kv. Exact for seq_kv, splits < 2^31 (the API checks).
RINGATTN_HOST_DEVICE constexpr std::int64_t split_begin(std::int64_t s, std::int64_t seq_kv, std::int64_t splits) {
  return s * seq_kv / splits;
}

/// The tile of the tiled forward (v2) for the head-dim bucket @p max_d (32, 64, 128 or 256; the
/// kernel runs any D <= max_d that is a multiple of 8):
///   group    threads that share one query row, each owning 32 of its max_d dims (a slice);
///   br (Br)  query rows per block;  bc (Bc) key rows per K/V tile in shared memory;
///   threads  br * group (at most 256).
/// Shared memory is K_j and V_j in float32, 2 * bc * max_d * 4 bytes: 8, 16, 32 and 32 KiB, under
/// the 48 KiB a block gets without opting in. At max_d = 256 Br and Bc are halved to stay there.
struct TiledTile {
  int max_d;    ///< head-dim bucket
  int group;    ///< threads per query row
  int br;       ///< Br
  int bc;       ///< Bc
  int threads;  ///< threads per block
};
/// The tiled forward's tile for head-dim bucket @p max_d.
RINGATTN_HOST_DEVICE constexpr TiledTile tiled_tile(int max_d) {
  return {max_d, max_d / 32, max_d <= 128 ? 64 : 32, max_d <= 128 ? 32 : 16, (max_d <= 128 ? 64 : 32) * (max_d / 32)};
}

}  // namespace ringattn::cuda::detail
