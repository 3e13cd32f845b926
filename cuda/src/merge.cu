// The LSE merge (the kernel: merge.cuh), launched on a stream.
#include "merge.cuh"

namespace ringattn::cuda::detail {

void launch_merge(float* out_acc, float* lse_acc, const float* out_part, const float* lse_part, std::int64_t batch,
                  std::int64_t seq, std::int64_t heads, std::int64_t head_dim, cudaStream_t stream) {
  run_merge(out_acc, lse_acc, out_part, lse_part, batch, seq, heads, head_dim, StreamLauncher{stream});
}

}  // namespace ringattn::cuda::detail
