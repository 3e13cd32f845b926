// `--impl cuda` of `ringattn attention` and `ringattn decode`: the CUDA kernels (cuda/) on .npy
// inputs. Built only with RINGATTN_WITH_CUDA (cuda_cmd.cpp); the subcommands check for that
// before calling anything here. float32/float64 inputs are converted to the compute dtype on
// upload; outputs come back in the inputs' dtype.
#pragma once

#include <optional>
#include <string>

#include "ringattn/core/tensor.hpp"
#include "ringattn/reference/attention.hpp"

namespace ringattn::cli {

/// What the command line asked of the CUDA path.
struct CudaOptions {
  std::string dtype = "fp32";   ///< compute dtype: fp32 | fp16 | bf16
  std::string kernel = "auto";  ///< forward kernel: auto | simple | tiled | tensor-core
  bool causal = false;          ///< causal mask (queries aligned to the end of the keys)
  std::optional<double> scale;  ///< softmax scale; 1/sqrt(D) when empty
};

/// Throws ringattn::Error "no CUDA device: <reason>" unless a CUDA device is visible.
void require_cuda_device();

/// Forward (O, LSE) on the GPU, and the backward (dQ, dK, dV) when @p dout is given.
template <class T>
struct CudaAttentionResult {
  ref::ForwardResult<T> fwd;              ///< O and LSE
  std::optional<ref::Gradients<T>> grads; ///< dQ, dK, dV when dO was given
};

/// Runs the forward (and the backward when @p dout is not null) with the CUDA kernels.
template <class T>
CudaAttentionResult<T> cuda_attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                      const Tensor<T>* dout, const CudaOptions& options);

/// Split-KV decoding with the CUDA kernels (@p splits pieces of the cache).
template <class T>
ref::ForwardResult<T> cuda_decode(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, std::int64_t splits,
                                  const CudaOptions& options);

}  // namespace ringattn::cli
