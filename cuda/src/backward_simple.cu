// The simple backward (the kernels: backward_simple.cuh), launched on a stream.
#include "backward_simple.cuh"

namespace ringattn::cuda::detail {

void launch_backward_simple(const BwdLaunch& a, cudaStream_t stream) {
  run_backward_simple(a, StreamLauncher{stream});
}

}  // namespace ringattn::cuda::detail
