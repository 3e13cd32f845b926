// Device helpers of the CUDA benchmarks (bench_cuda_util.hpp says what each does). Grid-stride
// loops over 64-bit indices (bench_ring_cuda's longest-sequence search goes past 2^32 elements),
// and nothing here is timed.
#include "bench_cuda_util.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

namespace ringattn::bench_cuda {
namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("bench_cuda_util: ") + what + ": " + cudaGetErrorString(err));
  }
}

constexpr int kThreads = 256;

int blocks_for(std::int64_t n) {
  const std::int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 4096 ? (b < 1 ? 1 : b) : 4096);
}

__device__ __forceinline__ float load(const void* p, int elem, std::int64_t i) {
  switch (elem) {
    case 0: return static_cast<const float*>(p)[i];
    case 1: return __half2float(static_cast<const __half*>(p)[i]);
    default: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  }
}

__device__ __forceinline__ void store(void* p, int elem, std::int64_t i, float x) {
  switch (elem) {
    case 0: static_cast<float*>(p)[i] = x; break;
    case 1: static_cast<__half*>(p)[i] = __float2half_rn(x); break;
    default: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(x); break;
  }
}

// splitmix64: a counter-based generator, element i from (seed, i) alone.
__device__ __forceinline__ std::uint64_t mix(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

__global__ void fill_normal_kernel(void* dst, int elem, std::int64_t n, std::uint64_t seed) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const std::uint64_t h = mix(seed ^ mix(static_cast<std::uint64_t>(i)));
    // Box-Muller: u1 in (0, 1], u2 in [0, 1), 24 bits each.
    const float u1 = (static_cast<float>(h >> 40) + 1.0f) * 5.9604645e-08f;
    const float u2 = static_cast<float>((h >> 8) & 0xFFFFFFu) * 5.9604645e-08f;
    const float z = sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
    store(dst, elem, i, z);
  }
}

__global__ void fill_nan_kernel(void* dst, int elem, std::int64_t n) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (elem == 0) {
      static_cast<std::uint32_t*>(dst)[i] = 0x7FC00000u;
    } else {
      static_cast<std::uint16_t*>(dst)[i] = elem == 1 ? std::uint16_t{0x7E00} : std::uint16_t{0x7FC0};
    }
  }
}

__global__ void convert_kernel(const void* src, int src_elem, void* dst, int dst_elem, std::int64_t n) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    store(dst, dst_elem, i, load(src, src_elem, i));
  }
}

struct DiffAcc {
  unsigned long long max_abs_bits;  // bits of a non-negative double: ordered like the values
  double sum_sq_diff;
  double sum_sq_ref;
  unsigned long long bad_out;
  unsigned long long bad_ref;
  unsigned long long first_bad_out;
};

__global__ void compare_kernel(const void* out, int out_elem, const void* ref, int ref_elem, std::int64_t n,
                               DiffAcc* acc) {
  double max_abs = 0, ssd = 0, ssr = 0;
  unsigned long long bad_out = 0, bad_ref = 0, first = ULLONG_MAX;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float o = load(out, out_elem, i);
    const float r = ref != nullptr ? load(ref, ref_elem, i) : 0.0f;
    if (ref != nullptr && isnan(r)) ++bad_ref;
    // NaN is always bad; an infinity only where the reference holds the same one (LSE = -inf).
    const bool o_bad = isnan(o) || (isinf(o) && !(ref != nullptr && o == r)) ||
                       (ref != nullptr && isinf(r) && !isnan(o) && o != r);
    if (o_bad) {
      ++bad_out;
      if (static_cast<unsigned long long>(i) < first) first = static_cast<unsigned long long>(i);
      continue;
    }
    if (ref != nullptr && isfinite(r) && isfinite(o)) {
      const double d = fabs(static_cast<double>(o) - static_cast<double>(r));
      ssd += d * d;
      ssr += static_cast<double>(r) * static_cast<double>(r);
      max_abs = fmax(max_abs, d);
    }
  }
  // Warp reduction, then one set of atomics per warp.
  for (int off = 16; off > 0; off /= 2) {
    max_abs = fmax(max_abs, __shfl_down_sync(0xFFFFFFFFu, max_abs, off));
    ssd += __shfl_down_sync(0xFFFFFFFFu, ssd, off);
    ssr += __shfl_down_sync(0xFFFFFFFFu, ssr, off);
    bad_out += __shfl_down_sync(0xFFFFFFFFu, bad_out, off);
    bad_ref += __shfl_down_sync(0xFFFFFFFFu, bad_ref, off);
    const unsigned long long f = __shfl_down_sync(0xFFFFFFFFu, first, off);
    first = f < first ? f : first;
  }
  if ((threadIdx.x & 31u) == 0) {
    atomicMax(&acc->max_abs_bits, static_cast<unsigned long long>(__double_as_longlong(max_abs)));
    atomicAdd(&acc->sum_sq_diff, ssd);
    atomicAdd(&acc->sum_sq_ref, ssr);
    atomicAdd(&acc->bad_out, bad_out);
    atomicAdd(&acc->bad_ref, bad_ref);
    atomicMin(&acc->first_bad_out, first);
  }
}

template <class Word>
__global__ void gather_rows_kernel(const Word* src, Word* dst, std::int64_t outer, std::int64_t src_seq,
                                   std::int64_t dst_seq, std::int64_t words, std::int64_t start, std::int64_t stride,
                                   std::int64_t length, std::int64_t dst_begin) {
  const std::int64_t n = outer * length * words;
  const std::int64_t step = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
    const std::int64_t w = i % words;
    const std::int64_t r = (i / words) % length;
    const std::int64_t o = i / (words * length);
    dst[(o * dst_seq + dst_begin + r) * words + w] = src[(o * src_seq + start + r * stride) * words + w];
  }
}

constexpr int kOracleWarps = 8;
constexpr int kOracleMaxDim = 256;
int oracle_chunks(int runs) { return runs >= 128 ? 1 : 128 / runs; }

// One warp walks every kOracleWarps-th key of its block's chunk with an online softmax in float64
// (m: running max, l: running sum of exp(s - m), acc: running sum of exp(s - m) v); lane t holds
// dimensions t, t + 32, ... The partial (m, l, acc) of each warp is merged on the host.
__global__ void oracle_kernel(const void* q, int elem, int D, double scale, int causal, std::int64_t q_pos,
                              const KeyRun* runs, int chunks, double* part) {
  const KeyRun run = runs[blockIdx.y];
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const std::int64_t lo = run.length * blockIdx.x / chunks, hi = run.length * (blockIdx.x + 1) / chunks;
  double qv[kOracleMaxDim / 32], acc[kOracleMaxDim / 32];
#pragma unroll
  for (int t = 0; t < kOracleMaxDim / 32; ++t) {
    const int d = lane + 32 * t;
    qv[t] = d < D ? static_cast<double>(load(q, elem, d)) : 0.0;
    acc[t] = 0.0;
  }
  double m = -HUGE_VAL, l = 0.0;
  for (std::int64_t j = lo + warp; j < hi; j += kOracleWarps) {
    if (causal != 0 && run.start + j * run.stride > q_pos) continue;  // the same for the whole warp
    const std::int64_t row = j * run.row_stride;
    double s = 0.0;
#pragma unroll
    for (int t = 0; t < kOracleMaxDim / 32; ++t) {
      const int d = lane + 32 * t;
      if (d < D) s += qv[t] * static_cast<double>(load(run.k, elem, row + d));
    }
    for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xFFFFFFFFu, s, off);
    s *= scale;
    if (s > m) {  // rescale what was summed around the old max (exp(-inf) = 0 on the first key)
      const double c = exp(m - s);
      l *= c;
#pragma unroll
      for (int t = 0; t < kOracleMaxDim / 32; ++t) acc[t] *= c;
      m = s;
    }
    const double p = exp(s - m);
    l += p;
#pragma unroll
    for (int t = 0; t < kOracleMaxDim / 32; ++t) {
      const int d = lane + 32 * t;
      if (d < D) acc[t] += p * static_cast<double>(load(run.v, elem, row + d));
    }
  }
  double* out = part + ((static_cast<std::int64_t>(blockIdx.y) * chunks + blockIdx.x) * kOracleWarps + warp) * (D + 2);
  if (lane == 0) {
    out[0] = m;
    out[1] = l;
  }
#pragma unroll
  for (int t = 0; t < kOracleMaxDim / 32; ++t) {
    const int d = lane + 32 * t;
    if (d < D) out[2 + d] = acc[t];
  }
}

}  // namespace

void fill_normal(void* dst, Elem elem, std::int64_t n, std::uint64_t seed, Stream stream) {
  fill_normal_kernel<<<blocks_for(n), kThreads, 0, stream>>>(dst, static_cast<int>(elem), n, seed);
  check(cudaGetLastError(), "fill_normal launch");
}

void fill_nan(void* dst, Elem elem, std::int64_t n, Stream stream) {
  fill_nan_kernel<<<blocks_for(n), kThreads, 0, stream>>>(dst, static_cast<int>(elem), n);
  check(cudaGetLastError(), "fill_nan launch");
}

void convert(const void* src, Elem src_elem, void* dst, Elem dst_elem, std::int64_t n, Stream stream) {
  convert_kernel<<<blocks_for(n), kThreads, 0, stream>>>(src, static_cast<int>(src_elem), dst,
                                                         static_cast<int>(dst_elem), n);
  check(cudaGetLastError(), "convert launch");
}

Diff compare(const void* out, Elem out_elem, const void* ref, Elem ref_elem, std::int64_t n, Stream stream) {
  DiffAcc* acc = nullptr;
  check(cudaMallocAsync(reinterpret_cast<void**>(&acc), sizeof(DiffAcc), stream), "compare allocation");
  DiffAcc init{0ull, 0.0, 0.0, 0ull, 0ull, ULLONG_MAX};
  check(cudaMemcpyAsync(acc, &init, sizeof init, cudaMemcpyHostToDevice, stream), "compare init");
  compare_kernel<<<blocks_for(n), kThreads, 0, stream>>>(out, static_cast<int>(out_elem), ref,
                                                         static_cast<int>(ref_elem), n, acc);
  check(cudaGetLastError(), "compare launch");
  DiffAcc host{};
  check(cudaMemcpyAsync(&host, acc, sizeof host, cudaMemcpyDeviceToHost, stream), "compare result");
  check(cudaFreeAsync(acc, stream), "compare free");
  check(cudaStreamSynchronize(stream), "compare");
  Diff d;
  double max_abs = 0;
  static_assert(sizeof max_abs == sizeof host.max_abs_bits, "64-bit double");
  std::memcpy(&max_abs, &host.max_abs_bits, sizeof max_abs);
  d.max_abs = max_abs;
  d.sum_sq_diff = host.sum_sq_diff;
  d.sum_sq_ref = host.sum_sq_ref;
  d.bad_out = static_cast<std::int64_t>(host.bad_out);
  d.bad_ref = static_cast<std::int64_t>(host.bad_ref);
  d.first_bad_out = host.first_bad_out == ULLONG_MAX ? -1 : static_cast<std::int64_t>(host.first_bad_out);
  return d;
}

void gather_rows(const void* src, void* dst, std::int64_t outer, std::int64_t src_seq, std::int64_t dst_seq,
                 std::int64_t row_bytes, std::int64_t start, std::int64_t stride, std::int64_t length,
                 std::int64_t dst_begin, Stream stream) {
  if (row_bytes <= 0 || row_bytes % 2 != 0) throw std::runtime_error("bench_cuda_util: gather_rows: odd row size");
  if (outer <= 0 || length <= 0) return;
  if (row_bytes % 4 == 0) {
    const std::int64_t words = row_bytes / 4;
    gather_rows_kernel<std::uint32_t><<<blocks_for(outer * length * words), kThreads, 0, stream>>>(
        static_cast<const std::uint32_t*>(src), static_cast<std::uint32_t*>(dst), outer, src_seq, dst_seq, words, start,
        stride, length, dst_begin);
  } else {
    const std::int64_t words = row_bytes / 2;
    gather_rows_kernel<std::uint16_t><<<blocks_for(outer * length * words), kThreads, 0, stream>>>(
        static_cast<const std::uint16_t*>(src), static_cast<std::uint16_t*>(dst), outer, src_seq, dst_seq, words, start,
        stride, length, dst_begin);
  }
  check(cudaGetLastError(), "gather_rows launch");
}

std::size_t oracle_workspace_bytes(int head_dim, int runs) {
  const std::size_t r = runs < 1 ? 1 : static_cast<std::size_t>(runs);
  const std::size_t partials = r * static_cast<std::size_t>(oracle_chunks(static_cast<int>(r))) * kOracleWarps;
  return r * sizeof(KeyRun) + partials * static_cast<std::size_t>(head_dim + 2) * sizeof(double) + 256;
}

void oracle_row(const void* q, Elem elem, int head_dim, double scale, bool causal, std::int64_t q_pos,
                const std::vector<KeyRun>& runs, void* workspace, double* out, double* lse, Stream stream) {
  if (head_dim < 1 || head_dim > kOracleMaxDim) throw std::runtime_error("bench_cuda_util: oracle_row: D must be 1..256");
  if (runs.empty()) throw std::runtime_error("bench_cuda_util: oracle_row: no key runs");
  const int nruns = static_cast<int>(runs.size());
  const int chunks = oracle_chunks(nruns);
  auto* desc = static_cast<KeyRun*>(workspace);
  // The partials start on a 256-byte boundary after the run descriptors.
  const std::size_t desc_bytes = (runs.size() * sizeof(KeyRun) + 255) / 256 * 256;
  auto* part = reinterpret_cast<double*>(static_cast<unsigned char*>(workspace) + desc_bytes);
  check(cudaMemcpyAsync(desc, runs.data(), runs.size() * sizeof(KeyRun), cudaMemcpyHostToDevice, stream), "oracle runs");
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(nruns));
  oracle_kernel<<<grid, kOracleWarps * 32, 0, stream>>>(q, static_cast<int>(elem), head_dim, scale, causal ? 1 : 0,
                                                        q_pos, desc, chunks, part);
  check(cudaGetLastError(), "oracle launch");
  const std::size_t n = static_cast<std::size_t>(nruns) * static_cast<std::size_t>(chunks) * kOracleWarps;
  const std::size_t width = static_cast<std::size_t>(head_dim) + 2;
  std::vector<double> host(n * width);
  check(cudaMemcpyAsync(host.data(), part, host.size() * sizeof(double), cudaMemcpyDeviceToHost, stream), "oracle result");
  check(cudaStreamSynchronize(stream), "oracle");
  double M = -HUGE_VAL;
  for (std::size_t i = 0; i < n; ++i) {
    if (host[i * width + 1] > 0 && host[i * width] > M) M = host[i * width];
  }
  double L = 0;
  for (int d = 0; d < head_dim; ++d) out[d] = 0;
  if (M == -HUGE_VAL) {  // no visible key: O = 0, LSE = -inf
    *lse = -HUGE_VAL;
    return;
  }
  for (std::size_t i = 0; i < n; ++i) {
    const double l = host[i * width + 1];
    if (!(l > 0)) continue;
    const double c = std::exp(host[i * width] - M);
    L += l * c;
    for (int d = 0; d < head_dim; ++d) out[d] += host[i * width + 2 + static_cast<std::size_t>(d)] * c;
  }
  for (int d = 0; d < head_dim; ++d) out[d] /= L;
  *lse = M + std::log(L);
}

}  // namespace ringattn::bench_cuda
