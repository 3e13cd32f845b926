// Forward v1 (the kernel: forward_simple.cuh), launched on a stream.
#include "forward_simple.cuh"

namespace ringattn::cuda::detail {

void launch_forward_simple(const FwdLaunch& a, cudaStream_t stream) { run_forward_simple(a, StreamLauncher{stream}); }

}  // namespace ringattn::cuda::detail
