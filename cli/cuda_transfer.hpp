// Host tensors to and from the GPU for the CUDA paths of the command line (cuda_cmd.cpp,
// cuda_ring_cmd.cpp; built only with RINGATTN_WITH_CUDA). Values go through float: the kernels
// read bf16/fp16/fp32 and write float32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "ringattn/core/tensor.hpp"
#include "ringattn/cuda/device.hpp"

namespace ringattn::cli {

/// Uploads @p t converted to @p dtype into a new buffer on the current device.
template <class T>
cuda::DeviceBuffer upload_tensor(const Tensor<T>& t, cuda::DType dtype) {
  std::vector<float> f(static_cast<std::size_t>(t.size()));
  for (std::int64_t n = 0; n < t.size(); ++n) f[static_cast<std::size_t>(n)] = static_cast<float>(t[n]);
  return cuda::upload(dtype, f);
}

/// Downloads float32 elements (what every output of the kernels is here) into a Tensor<T>.
template <class T>
Tensor<T> download_f32(const cuda::DeviceBuffer& buf, std::vector<std::int64_t> shape) {
  Tensor<T> t(std::move(shape));
  const std::vector<float> f = cuda::download(cuda::DType::F32, buf.data(), static_cast<std::size_t>(t.size()));
  for (std::int64_t n = 0; n < t.size(); ++n) t[n] = static_cast<T>(f[static_cast<std::size_t>(n)]);
  return t;
}

}  // namespace ringattn::cli
