// Attention forward, the simplest correct version: the exact-comparison path.
//
//   v1 simple   one thread per (b, h, query row i); it streams over the keys the row sees with
//               the online softmax (running max m, sum l, output O in registers or local memory,
//               D <= 256), float32 arithmetic whatever the input dtype, and writes O (fp32 or
//               the input dtype) and LSE. Any D from 1 to 256, no alignment beyond the element's.
//   (v2 tiled: forward_tiled.cu; v3 tensor cores: forward_tc.cu)
//
// Shapes: Q (B, S_q, H_q, D), K and V (B, S_kv, H_kv, D), O like Q, LSE (B, H_q, S_q).
// GQA: query head h reads K/V head h / (H_q / H_kv). Causal: query i at position
// q_offset + i q_stride sees key j at k_offset + j k_stride when the key's position is <= the
// query's, i.e. the keys j < visible_key_end(...) (tile_math.hpp). A row that sees no key gets
// O = 0 and LSE = -inf.
#pragma once

#include <cmath>

#include "common.cuh"

namespace ringattn::cuda::detail {
// The kernels and run_* below are in an unnamed namespace: tests/cuda compiles them a second time
// with the host compiler to run them on the CPU (simt_emulator.hpp), and those copies must not
// share symbols with the nvcc-compiled ones (whose host stubs launch on the GPU).
namespace {

// v1. For one query row, one key at a time (online softmax, Milakov & Gimelshein 2018; tutorial
// 04):  s_j = scale q . k_j,  m' = max(m, s_j),  l' = l e^(m - m') + e^(s_j - m'),
//       O' = O e^(m - m') + e^(s_j - m') v_j;     at the end O = O / l,  LSE = m + log l.
// kMaxD is D's bucket: the arrays q and O are sized for it, so that with the loops unrolled they
// live in registers (at kMaxD = 256 they stay in local memory, which is fine for this version).
template <class T, class OutT, int kMaxD>
__global__ void __launch_bounds__(kRowThreads) forward_simple_kernel(const FwdLaunch a) {
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= a.batch * a.heads_q * a.seq_q) return;
  // Consecutive threads take consecutive query rows of one (b, h): a warp then reads the same key
  // row at the same time, which the memory system serves once (a broadcast).
  const std::int64_t i = row % a.seq_q;
  const std::int64_t h = (row / a.seq_q) % a.heads_q;
  const std::int64_t b = row / (a.seq_q * a.heads_q);
  const std::int64_t hk = h / (a.heads_q / a.heads_kv);  // GQA
  const int D = static_cast<int>(a.head_dim);
  const T* q_row = static_cast<const T*>(a.q) + bshd_row(b, i, h, a.seq_q, a.heads_q, D);
  const T* k_base = static_cast<const T*>(a.k) + bshd_row(b, 0, hk, a.seq_kv, a.heads_kv, D);
  const T* v_base = static_cast<const T*>(a.v) + bshd_row(b, 0, hk, a.seq_kv, a.heads_kv, D);
  const std::int64_t kv_row_stride = a.heads_kv * D;

  // Unrolled up to D = 128, q and O live in registers; at 256 they spill anyway, and rolled loops
  // keep them in local memory at a fraction of the compile time.
  [[maybe_unused]] constexpr int kUnroll = kMaxD <= 128 ? kMaxD : 1;
  float q[kMaxD], O[kMaxD];
#pragma unroll(kUnroll)
  for (int d = 0; d < kMaxD; ++d) {
    q[d] = d < D ? to_float(q_row[d]) * a.scale : 0.0f;  // the scale folded into q once
    O[d] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  // Masked keys are not even read: the keys this row sees are a prefix [0, end).
  const std::int64_t end =
      a.causal ? visible_key_end(a.q_offset + i * a.q_stride, a.k_offset, a.k_stride, a.seq_kv) : a.seq_kv;
  for (std::int64_t j = 0; j < end; ++j) {
    const T* k_row = k_base + j * kv_row_stride;
    const T* v_row = v_base + j * kv_row_stride;
    float s = 0.0f;  // s_j = (scale q) . k_j
#pragma unroll(kUnroll)
    for (int d = 0; d < kMaxD; ++d) {
      if (d < D) s += q[d] * to_float(k_row[d]);
    }
    const float m_new = fmaxf(m, s);
    const float correction = expf(m - m_new);  // rescales what was summed under the old max; 0 at j = 0
    const float p = expf(s - m_new);
    l = l * correction + p;
#pragma unroll(kUnroll)
    for (int d = 0; d < kMaxD; ++d) {
      if (d < D) O[d] = O[d] * correction + p * to_float(v_row[d]);
    }
    m = m_new;
  }
  // O = O / l; a row that saw no key has l = 0 and O = 0 (not 0/0), LSE = -inf.
  const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
  OutT* o_row = static_cast<OutT*>(a.out) + bshd_row(b, i, h, a.seq_q, a.heads_q, D);
#pragma unroll(kUnroll)
  for (int d = 0; d < kMaxD; ++d) {
    if (d < D) o_row[d] = from_float<OutT>(O[d] * inv_l);
  }
  if (a.lse) a.lse[(b * a.heads_q + h) * a.seq_q + i] = l > 0.0f ? m + logf(l) : -INFINITY;
}

/// Launches forward v1 for @p a through @p launch (StreamLauncher on the GPU).
template <class Launcher>
void run_forward_simple(const FwdLaunch& a, Launcher&& launch) {
  const Launch1D shape = row_launch(a.batch * a.heads_q * a.seq_q, "forward");
  dispatch_in_out(a.dtype, a.out_dtype, [&](auto in, auto out) {
    using T = typename decltype(in)::type;
    using OutT = typename decltype(out)::type;
    dispatch_bucket(head_dim_bucket(a.head_dim), [&](auto max_d) {
      constexpr int kMaxD = decltype(max_d)::value;
      launch("forward_simple_kernel", forward_simple_kernel<T, OutT, kMaxD>, static_cast<unsigned>(shape.blocks),
             static_cast<unsigned>(shape.threads), a);
    });
  });
}

}  // namespace
}  // namespace ringattn::cuda::detail
