/// @file bench_cuda_util.hpp
/// @brief Device helpers of the CUDA benchmarks (bench_attention_cuda, bench_ring_cuda): random
/// fill, NaN poison, dtype conversion, an output-vs-reference comparison, a strided row gather
/// (a sequence split into a ring layout's shards) and a float64 oracle for single query rows,
/// all on device buffers.
///
/// Plain C++17 with no project header and no CUDA header: device code in this project is C++17
/// (nvcc via CMake 3.25), while the harnesses (bench_attention_cuda.cpp, bench_ring_cuda.cpp and
/// their shared host pieces in bench_harness.hpp) are C++20 host code that includes the
/// ringattn::cuda host API. Every function checks its CUDA calls and throws
/// std::runtime_error with cudaGetErrorString's text.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace ringattn::bench_cuda {

/// A CUDA stream handle without the CUDA headers (the same type as cudaStream_t).
using Stream = struct CUstream_st*;

/// Element type of a device buffer (mirrors ringattn::cuda::DType).
enum class Elem : int { F32 = 0, F16 = 1, BF16 = 2 };

/// Fills @p n elements with N(0, 1) samples from a counter-based generator: element i depends
/// only on (@p seed, i), so a buffer is the same whatever the launch shape.
void fill_normal(void* dst, Elem elem, std::int64_t n, std::uint64_t seed, Stream stream);

/// Fills @p n elements with a quiet NaN: an output element a kernel never writes stays NaN.
void fill_nan(void* dst, Elem elem, std::int64_t n, Stream stream);

/// dst[i] = src[i] converted (round to nearest even) for i < @p n.
void convert(const void* src, Elem src_elem, void* dst, Elem dst_elem, std::int64_t n, Stream stream);

/// What compare() found.
struct Diff {
  double max_abs = 0;              ///< max |out - ref| over the pairs where both are finite
  double sum_sq_diff = 0;          ///< sum (out - ref)^2 over those pairs
  double sum_sq_ref = 0;           ///< sum ref^2 over those pairs
  std::int64_t bad_out = 0;        ///< out is NaN, or infinite where ref is not the same infinity
  std::int64_t bad_ref = 0;        ///< ref is NaN
  std::int64_t first_bad_out = -1; ///< smallest index counted in bad_out, -1 if none
};

/// Compares @p n elements of @p out with @p ref (either may be any Elem; @p ref may be null, then
/// only out's NaN/inf are counted). Synchronizes @p stream.
Diff compare(const void* out, Elem out_elem, const void* ref, Elem ref_elem, std::int64_t n, Stream stream);

/// Gathers rows of a (outer, src_seq, row) tensor into a (outer, dst_seq, row) tensor:
/// dst[o, dst_begin + i] = src[o, start + i * stride] for i < @p length and every o < @p outer.
/// A row is @p row_bytes bytes (a multiple of 2). With outer = B and row = H * D elements this
/// moves one segment of a BSHD tensor into a rank's shard; with outer = B * H and row = 4 bytes
/// one segment of a (B, H, S) LSE.
void gather_rows(const void* src, void* dst, std::int64_t outer, std::int64_t src_seq, std::int64_t dst_seq,
                 std::int64_t row_bytes, std::int64_t start, std::int64_t stride, std::int64_t length,
                 std::int64_t dst_begin, Stream stream);

/// A run of key/value rows on the device for oracle_row(): row i (i < length) sits at global
/// position start + i * stride and its D elements at k + i * row_stride (likewise v), the
/// pointers already offset to the key/value head.
struct KeyRun {
  const void* k = nullptr;       ///< first key row of the run, at the head
  const void* v = nullptr;       ///< first value row of the run, at the head
  std::int64_t row_stride = 0;   ///< elements between consecutive rows (H_kv * D)
  std::int64_t start = 0;        ///< global position of row 0
  std::int64_t stride = 1;       ///< position step between rows
  std::int64_t length = 0;       ///< rows
};

/// Bytes of device workspace oracle_row() needs for @p head_dim and @p runs runs.
std::size_t oracle_workspace_bytes(int head_dim, int runs);

/// One query row's attention in float64 on the device: O (@p head_dim values, into @p out) and
/// LSE (natural log; -inf when no key is visible) of the query row @p q (D elements of @p elem)
/// at global position @p q_pos against every key of @p runs (causal: keys at positions <= q_pos
/// only), softmax scale @p scale. The keys are split over many blocks that each keep an online
/// softmax in float64; their partials are merged on the host. @p workspace holds
/// oracle_workspace_bytes(head_dim, runs.size()) bytes. Needs head_dim <= 256; synchronizes
/// @p stream.
void oracle_row(const void* q, Elem elem, int head_dim, double scale, bool causal, std::int64_t q_pos,
                const std::vector<KeyRun>& runs, void* workspace, double* out, double* lse, Stream stream);

}  // namespace ringattn::bench_cuda
