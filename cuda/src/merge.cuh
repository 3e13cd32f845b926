// The LSE merge: folds a partial result (O_b, LSE_b) into a running one (O_a, LSE_a), the step a
// ring takes after every K/V block (docs: derivations of the LSE merge):
//   LSE = log(e^LSE_a + e^LSE_b),  O = e^(LSE_a - LSE) O_a + e^(LSE_b - LSE) O_b,
// computed around max(LSE_a, LSE_b) so nothing overflows. The semantics are the reference's
// merge_into, case by case:
//   LSE_b = -inf                 the partial saw no key: O_a stays; if LSE_a = -inf too, O = 0
//                                (O_a is not read: the buffer may hold anything);
//   LSE_a = -inf, LSE_b finite   O = O_b, LSE = LSE_b (O_a is not read);
//   both finite                  the weighted sum above.
//
//   v1 warp per row   one warp per (b, s, h) row: lanes stride over D (coalesced), the row's two
//                     LSEs are read by every lane and the new LSE written by lane 0 after all
//                     lanes have read the old one.
// Shapes: O (B, S, H, D) float32, LSE (B, H, S) float32.
#pragma once

#include <cmath>

#include "common.cuh"

namespace ringattn::cuda::detail {
// The kernels and run_* below are in an unnamed namespace: tests/cuda compiles them a second time
// with the host compiler to run them on the CPU (simt_emulator.hpp), and those copies must not
// share symbols with the nvcc-compiled ones (whose host stubs launch on the GPU).
namespace {

__global__ void __launch_bounds__(32 * kWarpRowsPerBlock)
    merge_kernel(float* out_acc, float* lse_acc, const float* out_part, const float* lse_part, std::int64_t batch,
                 std::int64_t seq, std::int64_t heads, std::int64_t dim) {
  const std::int64_t row =
      static_cast<std::int64_t>(blockIdx.x) * kWarpRowsPerBlock + threadIdx.x / 32;  // (b, s, h) of O
  if (row >= batch * seq * heads) return;  // whole warps leave together: row is warp-uniform
  const int lane = static_cast<int>(threadIdx.x % 32);
  const std::int64_t h = row % heads;
  const std::int64_t s = (row / heads) % seq;
  const std::int64_t b = row / (heads * seq);
  const std::int64_t l_at = (b * heads + h) * seq + s;
  float* oa = out_acc + row * dim;
  const float* ob = out_part + row * dim;
  const float la = lse_acc[l_at];
  const float lb = lse_part[l_at];

  float wa = 0.0f, wb = 0.0f, lse = -INFINITY;  // O = wa O_a + wb O_b
  if (lb == -INFINITY) {
    if (la != -INFINITY) return;  // nothing to add: O_a and LSE_a stay as they are
    // Both saw no key: O = 0 and LSE stays -inf (wa = wb = 0, O_a is not read).
  } else if (la == -INFINITY) {
    wb = 1.0f;  // take the partial, exactly
    lse = lb;
  } else {
    const float mx = fmaxf(la, lb);
    const float ea = expf(la - mx), eb = expf(lb - mx);  // both in (0, 1], one of them is 1
    const float sum = ea + eb;
    wa = ea / sum;
    wb = eb / sum;
    lse = mx + logf(sum);
  }
  for (std::int64_t d = lane; d < dim; d += 32) {
    oa[d] = (wa != 0.0f ? wa * oa[d] : 0.0f) + (wb != 0.0f ? wb * ob[d] : 0.0f);
  }
  __syncwarp();  // every lane has read the old LSE_a before lane 0 replaces it
  if (lane == 0) lse_acc[l_at] = lse;
}

/// Launches the merge through @p launch (StreamLauncher on the GPU).
template <class Launcher>
void run_merge(float* out_acc, float* lse_acc, const float* out_part, const float* lse_part, std::int64_t batch,
               std::int64_t seq, std::int64_t heads, std::int64_t head_dim, Launcher&& launch) {
  const Launch1D shape = warp_row_launch(batch * seq * heads, "merge");
  launch("merge_kernel", merge_kernel, static_cast<unsigned>(shape.blocks), static_cast<unsigned>(shape.threads),
         out_acc, lse_acc, out_part, lse_part, batch, seq, heads, head_dim);
}

}  // namespace
}  // namespace ringattn::cuda::detail
