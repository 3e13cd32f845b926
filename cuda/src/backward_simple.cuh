// Attention backward, the simplest correct version: the exact-comparison path that the tensor-core
// backward will be checked against.
//
//   v1 simple   three kernels, float32 arithmetic whatever the input dtype, any D up to 256:
//               delta    D_i = rowsum(dO_i * O_i), one thread per (b, h, i)     (optional pre-pass)
//               dQ       one thread per (b, h, i): loops over the keys the row sees
//               dK, dV   one thread per (b, h_kv, j): loops over the queries of every head of
//                        its GQA group that see key j, so dK/dV sum over the group with no atomics
//               P is recomputed from the forward's final LSE, never stored; with `accumulate`
//               the gradients are added (a ring sums over steps), else written.
//
// FlashAttention-2 backward (Dao 2023, Algorithm 2), per visible pair (i, j):
//   P_ij = exp(scale q_i . k_j - LSE_i)      dV_j += P_ij dO_i
//   dP_ij = dO_i . v_j                       dS_ij = P_ij (dP_ij - D_i)
//   dQ_i += scale dS_ij k_j                  dK_j += scale dS_ij q_i
// A row with LSE = -inf saw no key in the forward: P = 0, it contributes nothing.
// Shapes: Q, O, dO, dQ (B, S_q, H_q, D); K, V, dK, dV (B, S_kv, H_kv, D); LSE, D (B, H_q, S_q).
#pragma once

#include <cmath>

#include "common.cuh"

namespace ringattn::cuda::detail {
// The kernels and run_* below are in an unnamed namespace: tests/cuda compiles them a second time
// with the host compiler to run them on the CPU (simt_emulator.hpp), and those copies must not
// share symbols with the nvcc-compiled ones (whose host stubs launch on the GPU).
namespace {

// D_i = rowsum(dO_i * O_i) (= sum_j P_ij dP_ij), once per row: every (i, j) pair needs it.
template <class T>
__global__ void __launch_bounds__(kRowThreads) backward_delta_kernel(const BwdLaunch a) {
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // (b, h, i)
  if (row >= a.batch * a.heads_q * a.seq_q) return;
  const std::int64_t i = row % a.seq_q;
  const std::int64_t h = (row / a.seq_q) % a.heads_q;
  const std::int64_t b = row / (a.seq_q * a.heads_q);
  const std::int64_t off = bshd_row(b, i, h, a.seq_q, a.heads_q, a.head_dim);
  const T* o = static_cast<const T*>(a.out) + off;
  const T* dO = static_cast<const T*>(a.dout) + off;
  float acc = 0.0f;
  for (std::int64_t d = 0; d < a.head_dim; ++d) acc += to_float(dO[d]) * to_float(o[d]);
  a.delta[row] = acc;  // (B, H_q, S_q): row is already in that order
}

// dQ_i = scale sum_j dS_ij k_j over the keys j the row sees.
template <class T, int kMaxD>
__global__ void __launch_bounds__(kRowThreads) backward_dq_kernel(const BwdLaunch a) {
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // (b, h, i)
  if (row >= a.batch * a.heads_q * a.seq_q) return;
  const std::int64_t i = row % a.seq_q;
  const std::int64_t h = (row / a.seq_q) % a.heads_q;
  const std::int64_t b = row / (a.seq_q * a.heads_q);
  const std::int64_t hk = h / (a.heads_q / a.heads_kv);  // GQA
  const int D = static_cast<int>(a.head_dim);
  const std::int64_t off = bshd_row(b, i, h, a.seq_q, a.heads_q, D);
  const T* q_row = static_cast<const T*>(a.q) + off;
  const T* do_row = static_cast<const T*>(a.dout) + off;
  const T* k_base = static_cast<const T*>(a.k) + bshd_row(b, 0, hk, a.seq_kv, a.heads_kv, D);
  const T* v_base = static_cast<const T*>(a.v) + bshd_row(b, 0, hk, a.seq_kv, a.heads_kv, D);
  const std::int64_t kv_row_stride = a.heads_kv * D;

  // Unrolled up to D = 64, the arrays live in registers; beyond, they spill anyway, and rolled
  // loops keep them in local memory at a fraction of the compile time.
  [[maybe_unused]] constexpr int kUnroll = kMaxD <= 64 ? kMaxD : 1;
  float q[kMaxD], dO[kMaxD], dQ[kMaxD];
#pragma unroll(kUnroll)
  for (int d = 0; d < kMaxD; ++d) {
    q[d] = d < D ? to_float(q_row[d]) * a.scale : 0.0f;  // scale q once: s = (scale q) . k
    dO[d] = d < D ? to_float(do_row[d]) : 0.0f;
    dQ[d] = 0.0f;
  }
  const float lse = a.lse[row];
  const float delta = a.delta[row];
  // The keys the row sees are a prefix [0, end); none when the forward saw none (LSE = -inf).
  std::int64_t end =
      a.causal ? visible_key_end(a.q_offset + i * a.q_stride, a.k_offset, a.k_stride, a.seq_kv) : a.seq_kv;
  if (lse == -INFINITY) end = 0;
  for (std::int64_t j = 0; j < end; ++j) {
    const T* k_row = k_base + j * kv_row_stride;
    const T* v_row = v_base + j * kv_row_stride;
    float s = 0.0f, dP = 0.0f;
#pragma unroll(kUnroll)
    for (int d = 0; d < kMaxD; ++d) {
      if (d < D) {
        s += q[d] * to_float(k_row[d]);    // s_ij = scale q_i . k_j
        dP += dO[d] * to_float(v_row[d]);  // dP_ij = dO_i . v_j
      }
    }
    const float P = expf(s - lse);            // P_ij
    const float dS = P * (dP - delta);        // dS_ij = P_ij (dP_ij - D_i)
#pragma unroll(kUnroll)
    for (int d = 0; d < kMaxD; ++d) {
      if (d < D) dQ[d] += dS * to_float(k_row[d]);  // scale applied once below
    }
  }
  float* dq_row = a.dq + off;
#pragma unroll(kUnroll)
  for (int d = 0; d < kMaxD; ++d) {
    if (d < D) dq_row[d] = (a.accumulate ? dq_row[d] : 0.0f) + a.scale * dQ[d];
  }
}

// dK_j = scale sum_i dS_ij q_i and dV_j = sum_i P_ij dO_i over the queries i (of every query head
// of the group) that see key j: under the causal mask a suffix [i0, S_q) of the query rows.
template <class T, int kMaxD>
__global__ void __launch_bounds__(kRowThreads) backward_dkdv_kernel(const BwdLaunch a) {
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // (b, hk, j)
  if (row >= a.batch * a.heads_kv * a.seq_kv) return;
  // Consecutive threads take consecutive keys of one (b, hk): a warp reads the same query row at
  // the same time (a broadcast).
  const std::int64_t j = row % a.seq_kv;
  const std::int64_t hk = (row / a.seq_kv) % a.heads_kv;
  const std::int64_t b = row / (a.seq_kv * a.heads_kv);
  const std::int64_t group = a.heads_q / a.heads_kv;
  const int D = static_cast<int>(a.head_dim);
  const std::int64_t off = bshd_row(b, j, hk, a.seq_kv, a.heads_kv, D);
  const T* k_row = static_cast<const T*>(a.k) + off;
  const T* v_row = static_cast<const T*>(a.v) + off;

  [[maybe_unused]] constexpr int kUnroll = kMaxD <= 64 ? kMaxD : 1;  // as in the dQ kernel
  float k[kMaxD], v[kMaxD], dK[kMaxD], dV[kMaxD];
#pragma unroll(kUnroll)
  for (int d = 0; d < kMaxD; ++d) {
    k[d] = d < D ? to_float(k_row[d]) * a.scale : 0.0f;  // scale k once: s = q . (scale k)
    v[d] = d < D ? to_float(v_row[d]) : 0.0f;
    dK[d] = dV[d] = 0.0f;
  }
  const std::int64_t i0 =
      a.causal ? first_visible_query(a.k_offset + j * a.k_stride, a.q_offset, a.q_stride, a.seq_q) : 0;
  const std::int64_t q_row_stride = a.heads_q * D;
  for (std::int64_t h = hk * group; h < (hk + 1) * group; ++h) {
    const T* q_base = static_cast<const T*>(a.q) + bshd_row(b, 0, h, a.seq_q, a.heads_q, D);
    const T* do_base = static_cast<const T*>(a.dout) + bshd_row(b, 0, h, a.seq_q, a.heads_q, D);
    const float* lse_row = a.lse + (b * a.heads_q + h) * a.seq_q;
    const float* delta_row = a.delta + (b * a.heads_q + h) * a.seq_q;
    for (std::int64_t i = i0; i < a.seq_q; ++i) {
      const float lse = lse_row[i];
      if (lse == -INFINITY) continue;  // the row saw no key: P = 0
      const T* q_i = q_base + i * q_row_stride;
      const T* do_i = do_base + i * q_row_stride;
      float s = 0.0f, dP = 0.0f;
#pragma unroll(kUnroll)
      for (int d = 0; d < kMaxD; ++d) {
        if (d < D) {
          s += to_float(q_i[d]) * k[d];    // s_ij = scale q_i . k_j
          dP += to_float(do_i[d]) * v[d];  // dP_ij = dO_i . v_j
        }
      }
      const float P = expf(s - lse);          // P_ij
      const float dS = P * (dP - delta_row[i]);  // dS_ij
#pragma unroll(kUnroll)
      for (int d = 0; d < kMaxD; ++d) {
        if (d < D) {
          dV[d] += P * to_float(do_i[d]);   // dV_j += P_ij dO_i
          dK[d] += dS * to_float(q_i[d]);   // dK_j += dS_ij q_i (scale below)
        }
      }
    }
  }
  float* dk_row = a.dk + off;
  float* dv_row = a.dv + off;
#pragma unroll(kUnroll)
  for (int d = 0; d < kMaxD; ++d) {
    if (d < D) {
      dk_row[d] = (a.accumulate ? dk_row[d] : 0.0f) + a.scale * dK[d];
      dv_row[d] = (a.accumulate ? dv_row[d] : 0.0f) + dV[d];
    }
  }
}

/// Launches the simple backward for @p a through @p launch (StreamLauncher on the GPU): the D
/// pre-pass (if asked), then dQ, then dK/dV; stream order makes D ready before the other two
/// read it.
template <class Launcher>
void run_backward_simple(const BwdLaunch& a, Launcher&& launch) {
  const Launch1D q_rows = row_launch(a.batch * a.heads_q * a.seq_q, "backward");
  const Launch1D k_rows = row_launch(a.batch * a.heads_kv * a.seq_kv, "backward");
  const auto grid = [](const Launch1D& l) { return static_cast<unsigned>(l.blocks); };
  const auto block = [](const Launch1D& l) { return static_cast<unsigned>(l.threads); };
  dispatch_in(a.dtype, [&](auto in) {
    using T = typename decltype(in)::type;
    if (a.compute_delta) launch("backward_delta_kernel", backward_delta_kernel<T>, grid(q_rows), block(q_rows), a);
    dispatch_bucket(head_dim_bucket(a.head_dim), [&](auto max_d) {
      constexpr int kMaxD = decltype(max_d)::value;
      launch("backward_dq_kernel", backward_dq_kernel<T, kMaxD>, grid(q_rows), block(q_rows), a);
      launch("backward_dkdv_kernel", backward_dkdv_kernel<T, kMaxD>, grid(k_rows), block(k_rows), a);
    });
  });
}

}  // namespace
}  // namespace ringattn::cuda::detail
