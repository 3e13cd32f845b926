// `--impl cuda-ring` of `ringattn attention` and `ringattn compare`: the CUDA ring
// (cuda/include/ringattn/cuda/ring.hpp) on host tensors. Built only with RINGATTN_WITH_CUDA
// (cuda_ring_cmd.cpp); the subcommands check for that before calling anything here.
//
// The host-level runner splits the full tensors into per-rank shards with the layout
// (ref::shard_rows), uploads each rank's shard converted to the compute dtype on that rank's
// device, runs RingAttention::forward and, given dO, RingAttention::backward (on O rounded to the
// dtype, as training keeps it, the final LSE and dO), downloads and unshards. Outputs come back
// float32 from the device and in the inputs' dtype on the host.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "cuda_cmd.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/core/shape.hpp"
#include "ringattn/core/tensor.hpp"

namespace ringattn::cuda {
class Communicator;
}  // namespace ringattn::cuda

namespace ringattn::cli {

/// What the command line asked of the CUDA ring.
struct CudaRingOptions {
  std::string dtype = "fp32";          ///< compute dtype: fp32 | fp16 | bf16
  std::string kernel = "auto";         ///< forward kernel: auto | simple | tiled | tensor-core
  bool causal = false;                 ///< causal over global positions (queries end-aligned)
  std::optional<double> scale;         ///< softmax scale; 1/sqrt(D) when empty
  std::string layout = "contiguous";   ///< contiguous | striped | zigzag
  int ranks = 1;                       ///< virtual ranks (LocalCommunicator only)
  double timeout_s = 600;              ///< how long the ring waits for a peer
};

/// An error every rank of the ring saw alike (spread with Communicator::agree): the processes can
/// stop together, in order.
class RingCollectiveError : public Error {
 public:
  using Error::Error;
};

/// One local rank's host tensors, in the layout's local order.
template <class T>
struct RingShardInputs {
  Tensor<T> q, k, v;  ///< (B, S_r, H_q, D), (B, S_r, H_kv, D) x 2
  Tensor<T> dout;     ///< (B, S_r, H_q, D); empty: forward only
};

/// One local rank's results.
template <class T>
struct RingShardOutputs {
  Tensor<T> out, lse;   ///< (B, S_r, H_q, D), (B, H_q, S_r)
  Tensor<T> dq, dk, dv; ///< empty without dO
};

/// Runs the ring on the ranks @p comm drives: shards[i] belongs to comm.local_ranks()[i];
/// @p shape is global. Collective over every process of the communicator. A failure before or
/// after the ring (bad shard, allocation, copy) is agreed on and thrown as RingCollectiveError on
/// every rank; one inside the ring is the driver's (it aborts the communicator).
template <class T>
std::vector<RingShardOutputs<T>> cuda_ring_shards(cuda::Communicator& comm, const AttentionShape& shape,
                                                  const CudaRingOptions& options,
                                                  const std::vector<RingShardInputs<T>>& shards);

/// Forward (and backward when @p dout is not null) on options.ranks virtual ranks on this
/// machine's GPUs (LocalCommunicator: ranks spread round-robin over the visible devices).
template <class T>
CudaAttentionResult<T> cuda_ring_attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                           const Tensor<T>* dout, const CudaRingOptions& options);

}  // namespace ringattn::cli
