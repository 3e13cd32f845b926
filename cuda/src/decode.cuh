// Split-KV decoding (flash-decoding): a few query rows against a long K/V cache. With S_q ~ 1 the
// forward's parallelism over query rows is gone, so the keys are cut into `splits` pieces that are
// computed in parallel, then combined with the LSE merge (docs: derivations of flash-decoding).
//
//   v1 partial + combine
//     partial  one block per (split s, h, b), kDecodeWarps warps: for each of the S_q query rows,
//              the warps take the split's keys in turn (warp w: keys begin + w, begin + w + W, ...);
//              a warp holds the row's q and O spread over its lanes (lane owns dims lane + 32x),
//              sums each dot product with shuffles and keeps its own online softmax (m, l, O);
//              then the W warp states are merged in shared memory into the split's normalized
//              partial (O_s float32, LSE_s) in the workspace.
//     combine  one warp per (b, h, i) row: LSE = logsumexp_s LSE_s, O = sum_s e^(LSE_s - LSE) O_s,
//              around the max so nothing overflows; all LSE_s = -inf gives O = 0, LSE = -inf.
//              Writes O (out_dtype) and LSE.
// Splits are the reference's (decode_forward): split s holds keys [s S_kv / splits, (s+1) S_kv /
// splits), empty when splits > S_kv; causal masks and positions apply as in the forward. Any D up
// to 256, no alignment beyond the element's.
// Workspace (decode_layout): O_s (splits, B, H_q, S_q, D) float32, LSE_s (splits, B, H_q, S_q).
#pragma once

#include <cmath>

#include "common.cuh"

namespace ringattn::cuda::detail {
// The kernels and run_* below are in an unnamed namespace: tests/cuda compiles them a second time
// with the host compiler to run them on the CPU (simt_emulator.hpp), and those copies must not
// share symbols with the nvcc-compiled ones (whose host stubs launch on the GPU).
namespace {

template <class T, int kMaxD>
__global__ void __launch_bounds__(32 * kDecodeWarps)
    decode_partial_kernel(const FwdLaunch a, std::int64_t splits, float* o_part, float* lse_part) {
  constexpr int NX = kMaxD / 32;  // dims per lane
  constexpr int W = kDecodeWarps;
  __shared__ float m_w[W], l_w[W];
  __shared__ float O_w[W][kMaxD];

  const std::int64_t split = blockIdx.x % splits;
  const std::int64_t h = (blockIdx.x / splits) % a.heads_q;
  const std::int64_t b = blockIdx.x / (splits * a.heads_q);
  const std::int64_t hk = h / (a.heads_q / a.heads_kv);  // GQA
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int D = static_cast<int>(a.head_dim);
  const std::int64_t begin = split_begin(split, a.seq_kv, splits);
  const std::int64_t end = split_begin(split + 1, a.seq_kv, splits);
  const T* k_base = static_cast<const T*>(a.k) + bshd_row(b, 0, hk, a.seq_kv, a.heads_kv, D);
  const T* v_base = static_cast<const T*>(a.v) + bshd_row(b, 0, hk, a.seq_kv, a.heads_kv, D);
  const std::int64_t kv_row_stride = a.heads_kv * D;

  for (std::int64_t i = 0; i < a.seq_q; ++i) {
    const T* q_row = static_cast<const T*>(a.q) + bshd_row(b, i, h, a.seq_q, a.heads_q, D);
    float q[NX], O[NX];
#pragma unroll
    for (int x = 0; x < NX; ++x) {
      const int d = lane + 32 * x;
      q[x] = d < D ? to_float(q_row[d]) * a.scale : 0.0f;
      O[x] = 0.0f;
    }
    // The split's keys this row sees: [begin, row_end) (a prefix of the split under the mask).
    const std::int64_t row_end =
        a.causal ? min64(end, visible_key_end(a.q_offset + i * a.q_stride, a.k_offset, a.k_stride, a.seq_kv)) : end;
    float m = -INFINITY, l = 0.0f;
    // Online softmax over this warp's keys (bounds uniform over the warp, as the shuffles need).
    for (std::int64_t j = begin + warp; j < row_end; j += W) {
      const T* k_row = k_base + j * kv_row_stride;
      const T* v_row = v_base + j * kv_row_stride;
      float s = 0.0f;
#pragma unroll
      for (int x = 0; x < NX; ++x) {
        const int d = lane + 32 * x;
        if (d < D) s += q[x] * to_float(k_row[d]);
      }
      // s_j = (scale q) . k_j: all-reduce over the 32 lanes, so every lane holds it.
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
      const float m_new = fmaxf(m, s);
      const float correction = expf(m - m_new);  // 0 on the warp's first key
      const float p = expf(s - m_new);
      l = l * correction + p;
#pragma unroll
      for (int x = 0; x < NX; ++x) {
        const int d = lane + 32 * x;
        O[x] = O[x] * correction + (d < D ? p * to_float(v_row[d]) : 0.0f);
      }
      m = m_new;
    }
    if (lane == 0) {
      m_w[warp] = m;
      l_w[warp] = l;
    }
#pragma unroll
    for (int x = 0; x < NX; ++x) O_w[warp][lane + 32 * x] = O[x];
    __syncthreads();  // every warp's (m, l, O) is in shared memory before they are merged

    // Merge the W warp states: M = max_w m_w, L = sum_w e^(m_w - M) l_w,
    // O_s = sum_w e^(m_w - M) O_w / L, LSE_s = M + log L. Warps that saw no key have m_w = -inf
    // and weight 0; a split (or row) with no visible key gets O_s = 0, LSE_s = -inf.
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < W; ++w) M = fmaxf(M, m_w[w]);
    float L = 0.0f;
    if (M != -INFINITY) {
#pragma unroll
      for (int w = 0; w < W; ++w) L += l_w[w] * expf(m_w[w] - M);
    }
    const std::int64_t p_row = ((split * a.batch + b) * a.heads_q + h) * a.seq_q + i;
    for (int d = static_cast<int>(threadIdx.x); d < D; d += 32 * W) {
      float acc = 0.0f;
      if (M != -INFINITY) {
#pragma unroll
        for (int w = 0; w < W; ++w) acc += O_w[w][d] * expf(m_w[w] - M);
        acc /= L;
      }
      o_part[p_row * D + d] = acc;
    }
    if (threadIdx.x == 0) lse_part[p_row] = M != -INFINITY ? M + logf(L) : -INFINITY;
    __syncthreads();  // the warp states are read before the next row overwrites them
  }
}

template <class OutT>
__global__ void __launch_bounds__(32 * kWarpRowsPerBlock)
    decode_combine_kernel(const FwdLaunch a, std::int64_t splits, const float* o_part, const float* lse_part) {
  const std::int64_t rows = a.batch * a.heads_q * a.seq_q;
  const std::int64_t row =
      static_cast<std::int64_t>(blockIdx.x) * kWarpRowsPerBlock + threadIdx.x / 32;  // (b, h, i)
  if (row >= rows) return;  // warp-uniform
  const int lane = static_cast<int>(threadIdx.x % 32);
  const std::int64_t i = row % a.seq_q;
  const std::int64_t h = (row / a.seq_q) % a.heads_q;
  const std::int64_t b = row / (a.seq_q * a.heads_q);
  const std::int64_t D = a.head_dim;
  OutT* o = static_cast<OutT*>(a.out) + bshd_row(b, i, h, a.seq_q, a.heads_q, D);
  // The partial of split s for this row sits at s * rows + row (layout (splits, B, H_q, S_q)).
  float M = -INFINITY;
  for (std::int64_t s = 0; s < splits; ++s) M = fmaxf(M, lse_part[s * rows + row]);
  float lse = -INFINITY;
  if (M == -INFINITY) {
    for (std::int64_t d = lane; d < D; d += 32) o[d] = from_float<OutT>(0.0f);  // no split saw a key
  } else {
    float L = 0.0f;  // sum_s e^(LSE_s - M): the max term is 1, so L in [1, splits]
    for (std::int64_t s = 0; s < splits; ++s) L += expf(lse_part[s * rows + row] - M);
    lse = M + logf(L);
    for (std::int64_t d = lane; d < D; d += 32) {
      float acc = 0.0f;
      for (std::int64_t s = 0; s < splits; ++s) {
        const float w = expf(lse_part[s * rows + row] - lse);  // e^(LSE_s - LSE); 0 for an empty split
        if (w != 0.0f) acc += w * o_part[(s * rows + row) * D + d];
      }
      o[d] = from_float<OutT>(acc);
    }
  }
  if (lane == 0 && a.lse) a.lse[row] = lse;
}

/// Launches split-KV decoding through @p launch (StreamLauncher on the GPU): the partials, then
/// (stream order: after every partial is written) the combine.
template <class Launcher>
void run_decode(const FwdLaunch& a, const DecodeLayout& layout, void* workspace, Launcher&& launch) {
  float* o_part = static_cast<float*>(workspace);
  float* lse_part = reinterpret_cast<float*>(static_cast<char*>(workspace) + layout.lse_offset);
  dispatch_in(a.dtype, [&](auto in) {
    using T = typename decltype(in)::type;
    dispatch_bucket(head_dim_bucket(a.head_dim), [&](auto max_d) {
      constexpr int kMaxD = decltype(max_d)::value;
      launch("decode_partial_kernel", decode_partial_kernel<T, kMaxD>, static_cast<unsigned>(layout.partial.blocks),
             static_cast<unsigned>(layout.partial.threads), a, layout.splits, o_part, lse_part);
    });
  });
  dispatch_in_out(a.dtype, a.out_dtype, [&](auto, auto out) {
    using OutT = typename decltype(out)::type;
    launch("decode_combine_kernel", decode_combine_kernel<OutT>, static_cast<unsigned>(layout.combine.blocks),
           static_cast<unsigned>(layout.combine.threads), a, layout.splits, o_part, lse_part);
  });
}

}  // namespace
}  // namespace ringattn::cuda::detail
