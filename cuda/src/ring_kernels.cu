// The ring driver's element-wise kernels (ring_kernels.cuh), launched on a stream.
#include "ring_kernels.cuh"

#include "ring_kernels.hpp"

namespace ringattn::cuda::detail {

void ring_fill(float* dst, std::size_t n, float value, cudaStream_t stream) {
  run_ring_fill(dst, n, value, StreamLauncher{stream});
}

void ring_add(float* dst, const float* src, std::size_t n, cudaStream_t stream) {
  run_ring_add(dst, src, n, StreamLauncher{stream});
}

void ring_convert(const float* src, std::size_t src_pitch, void* dst, DType dtype, std::size_t dst_pitch,
                  std::size_t width, std::size_t rows, cudaStream_t stream) {
  run_ring_convert(src, src_pitch, dst, dtype, dst_pitch, width, rows, StreamLauncher{stream});
}

void ring_delta(const void* out, const void* dout, DType dtype, float* delta, std::int64_t batch, std::int64_t seq,
                std::int64_t heads, std::int64_t head_dim, cudaStream_t stream) {
  run_ring_delta(out, dout, dtype, delta, batch, seq, heads, head_dim, StreamLauncher{stream});
}

}  // namespace ringattn::cuda::detail
