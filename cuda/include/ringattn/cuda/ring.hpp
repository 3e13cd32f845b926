/// @file ring.hpp
/// @brief Ring attention on CUDA: each rank holds a shard of the sequence; K/V blocks travel
/// around the ring through a Communicator while the attention kernels compute on the block in
/// hand, forward and backward, every layout, causal and not, GQA.
///
/// The driver builds a RingPlan (ring_plan.hpp) from core's RingSchedule and queues it: per rank
/// a compute stream and a communication stream, K/V double-buffered (the next block's shift is
/// queued before the current block's kernels, events order the streams, no device-wide
/// synchronization), partial (O, LSE) kept in float32 and merged after every pair, Skip pairs
/// not launched (a rank with nothing to compute still forwards the block). In the backward dQ
/// accumulates at home; dK/dV of a block are computed into a scratch block while the travelling
/// float32 accumulator arrives, added to it and passed on; after the last step every accumulator
/// takes one hop home.
///
/// Shards are the caller's device tensors in the layout's local order (SequenceLayout: rank r's
/// positions, segment after segment): Q, O, dO (B, S_r, H_q, D), K, V (B, S_r, H_kv, D), LSE
/// (B, H_q, S_r). Inputs are in the config's dtype; LSE, dQ, dK and dV are float32; O is float32
/// or the input dtype.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ringattn/core/layout.hpp"
#include "ringattn/core/schedule.hpp"
#include "ringattn/core/shape.hpp"
#include "ringattn/cuda/attention.hpp"
#include "ringattn/cuda/communicator.hpp"
#include "ringattn/cuda/ring_plan.hpp"

namespace ringattn::cuda {

/// What the ring computes.
struct RingConfig {
  AttentionShape shape;                 ///< global: S_q and S_kv are the whole sequence
  Layout layout = Layout::Contiguous;   ///< how the sequence is split over the ranks
  bool causal = false;                  ///< causal over global positions (queries end-aligned)
  std::optional<float> scale;           ///< softmax scale; unset: 1 / sqrt(D)
  DType dtype = DType::BF16;            ///< of Q, K, V (and O, dO in the backward)
  DType out_dtype = DType::F32;         ///< of the forward's O: F32 or dtype
  Kernel kernel = Kernel::Auto;         ///< forward kernel version (the backward uses Auto)
  /// Seconds forward() / backward() wait for the ring before they give up, abort the communicator
  /// and throw (a peer that never answers). 0: wait forever.
  double timeout_s = 600.0;
  /// Record CUDA events around every kernel and transfer, for timeline().
  bool timing = false;
};

/// One local rank's tensors for the forward (device pointers on that rank's device).
struct ForwardShard {
  const void* q = nullptr;  ///< (B, S_r, H_q, D), dtype
  const void* k = nullptr;  ///< (B, S_r, H_kv, D), dtype
  const void* v = nullptr;  ///< (B, S_r, H_kv, D), dtype
  void* out = nullptr;      ///< (B, S_r, H_q, D), out_dtype
  float* lse = nullptr;     ///< (B, H_q, S_r); may be null
};

/// One local rank's tensors for the backward.
struct BackwardShard {
  const void* q = nullptr;     ///< (B, S_r, H_q, D), dtype
  const void* k = nullptr;     ///< (B, S_r, H_kv, D), dtype
  const void* v = nullptr;     ///< (B, S_r, H_kv, D), dtype
  const void* out = nullptr;   ///< the forward's O, (B, S_r, H_q, D), dtype
  const void* dout = nullptr;  ///< dO, (B, S_r, H_q, D), dtype
  const float* lse = nullptr;  ///< the forward's final LSE, (B, H_q, S_r)
  float* dq = nullptr;         ///< (B, S_r, H_q, D), overwritten
  float* dk = nullptr;         ///< (B, S_r, H_kv, D), overwritten
  float* dv = nullptr;         ///< (B, S_r, H_kv, D), overwritten
};

/// One timed span of a rank, in milliseconds from the start of the run on its device: local ranks
/// that share a GPU share that zero, so their spans can be laid on one axis; ranks on other
/// devices or in other processes each have their own.
struct TimelineSpan {
  int rank = 0;          ///< global rank
  int step = -1;         ///< ring step (-1: before or after the ring)
  bool comm = false;     ///< on the communication stream
  std::string label;     ///< the plan operation's label
  double begin_ms = 0;   ///< start
  double end_ms = 0;     ///< end
};

/// The ring over a communicator. Buffers and streams are allocated on first use and reused by
/// later calls with the same configuration.
class RingAttention {
 public:
  /// Validates the configuration against the communicator (layout, rank count, shape, dtype)
  /// and builds the schedule. Throws ringattn::Error with a one-line message.
  RingAttention(Communicator& comm, RingConfig config);
  ~RingAttention();
  RingAttention(const RingAttention&) = delete;             ///< owns streams and buffers
  RingAttention& operator=(const RingAttention&) = delete;  ///< owns streams and buffers

  /// Queues the forward for every local rank (one shard per entry of local_ranks()) and waits
  /// for it. Every rank of every process must call it. Bad shards and failed allocations on any
  /// rank fail every rank (Communicator::agree, message "rank R: ...") before anything is
  /// queued; a failure after that aborts the communicator so that peers fail too; no progress
  /// within config.timeout_s aborts and throws. Work queued on the legacy default stream before
  /// the call finishes first.
  void forward(std::span<const ForwardShard> shards);
  /// Queues the backward for every local rank and waits for it (failures as in forward()).
  void backward(std::span<const BackwardShard> shards);

  /// The schedule the ring follows.
  [[nodiscard]] const RingSchedule& schedule() const;
  /// The plan of the last forward (or backward) call.
  [[nodiscard]] const RingPlan& plan(bool backward) const;
  /// Spans of the last call, when config.timing was set (empty otherwise).
  [[nodiscard]] const std::vector<TimelineSpan>& timeline() const;
  /// The configuration.
  [[nodiscard]] const RingConfig& config() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ringattn::cuda
