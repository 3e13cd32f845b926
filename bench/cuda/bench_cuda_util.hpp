/// @file bench_cuda_util.hpp
/// @brief Device helpers of bench_attention_cuda: random fill, NaN poison, dtype conversion and
/// an output-vs-reference comparison, all on device buffers.
///
/// Plain C++17 with no project header and no CUDA header: device code in this project is C++17
/// (nvcc via CMake 3.25), while the harness (bench_attention_cuda.cpp) is C++20 host code that
/// includes the ringattn::cuda host API. Every function checks its CUDA calls and throws
/// std::runtime_error with cudaGetErrorString's text.
#pragma once

#include <cstdint>

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

}  // namespace ringattn::bench_cuda
