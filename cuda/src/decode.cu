// Split-KV decoding (the kernels: decode.cuh), launched on a stream.
#include "decode.cuh"

namespace ringattn::cuda::detail {

void launch_decode(const FwdLaunch& a, const DecodeLayout& layout, void* workspace, cudaStream_t stream) {
  run_decode(a, layout, workspace, StreamLauncher{stream});
}

}  // namespace ringattn::cuda::detail
