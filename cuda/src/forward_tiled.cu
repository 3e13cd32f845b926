// Forward v2 (the kernel: forward_tiled.cuh), launched on a stream.
#include "forward_tiled.cuh"

namespace ringattn::cuda::detail {

void launch_forward_tiled(const FwdLaunch& a, cudaStream_t stream) { run_forward_tiled(a, StreamLauncher{stream}); }

}  // namespace ringattn::cuda::detail
