/// @file simulate.hpp
/// @brief Simulating one attention layer of ring attention on a cluster, and sweeps over it.
///
/// The tasks come from core's RingSchedule, the same schedule the reference and MPI rings run
/// (and the CUDA ring is to run): at step s device d computes on the K/V block of device (d - s) mod N while it forwards
/// that block to d + 1. Per device there is a compute stream and a communication engine that
/// feeds the device's outgoing link (a FIFO); both run their tasks in program order, a task
/// starting when its dependencies are done and its resource is free. Received blocks occupy
/// counted buffer slots. See docs/simulator.md for the model, its assumptions and validation.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ringattn/core/layout.hpp"
#include "ringattn/simulator/cluster.hpp"

/// @brief The discrete-event simulator of the ring: cluster specs and presets, the event queue,
/// the simulation of one attention layer and sweeps over it, and its reports.
namespace ringattn::sim {

/// Which passes of the layer are simulated.
enum class Pass {
  Forward,          ///< the forward pass only
  ForwardBackward,  ///< the forward pass, then the backward pass (dK/dV travel with their block)
};
/// "fwd" or "fwd+bwd".
[[nodiscard]] std::string_view to_string(Pass pass);
/// Parses "fwd" or "fwd+bwd"; throws ringattn::Error otherwise.
[[nodiscard]] Pass parse_pass(std::string_view name);

/// The attention layer (and optionally the model around it) to simulate.
struct Workload {
  std::int64_t batch = 1;        ///< B
  std::int64_t seq_len = 0;      ///< S, the whole sequence; each of N devices holds S/N tokens
  std::int64_t heads_q = 0;      ///< H_q
  std::int64_t heads_kv = 0;     ///< H_kv (0: same as H_q); must divide H_q
  std::int64_t head_dim = 0;     ///< D
  DType dtype = DType::BF16;     ///< Q, K, V, O and the K/V blocks that travel
  bool causal = false;           ///< causal mask over global positions
  Layout layout = Layout::Contiguous;  ///< how the sequence is split over devices
  Pass pass = Pass::Forward;     ///< forward only, or forward then backward
  int sub_blocks = 1;            ///< messages each device's K/V chunk is split into (>= 1)
  /// Receive buffers per device, in messages; 0 means sub_blocks + 1 (with one message per
  /// block, double buffering). At least sub_blocks + 1: a device's link sends in order, so it
  /// must hold a whole block and receive the first message of the next, or the ring deadlocks.
  int buffers = 0;
  int layers = 0;                ///< model layers (0: attention only, no MFU)
  std::int64_t hidden = 0;       ///< model hidden size h (required with layers)

  /// Receive buffers with the default applied.
  [[nodiscard]] int receive_buffers() const { return buffers > 0 ? buffers : sub_blocks + 1; }
  /// H_kv with the default applied.
  [[nodiscard]] std::int64_t kv_heads() const { return heads_kv > 0 ? heads_kv : heads_q; }
  /// Throws ringattn::Error naming the problem for a workload no ring of @p devices can run.
  void validate(int devices) const;
};

/// Where a task runs: a device's compute stream or its outgoing link.
enum class Row {
  Compute,  ///< the device's compute stream (attention kernels, merges, gradient adds)
  Link,     ///< the device's outgoing link to device d + 1 (K/V and dK/dV transfers)
};

/// One finished task, as written to a trace.
struct Span {
  int device = 0;            ///< the device whose stream or link ran it
  Row row = Row::Compute;    ///< which of its resources
  const char* name = "";     ///< "fwd", "merge", "bwd", "dkv add", "prepass", "kv", "dkv"
  bool backward = false;     ///< part of the backward pass
  int step = 0;              ///< ring step
  int sub_block = 0;         ///< sub-block of the step's K/V block
  int kv_owner = 0;          ///< device the K/V block started on
  double start_s = 0;        ///< start time
  double duration_s = 0;     ///< duration
  double flops = 0;          ///< FLOPs (compute) or 0
  double bytes = 0;          ///< bytes moved (link) or 0
};

/// Knobs of one simulation run.
struct SimOptions {
  /// The paper's model: no latency, no launch overhead, no merges or memory-bound passes,
  /// kernels at peak, no slowdown, straggler or jitter.
  bool ideal = false;
  /// Called for every finished task, in completion order, when set (writes traces).
  std::function<void(const Span&)> on_span;
};

/// What a run predicts for one attention layer.
struct SimResult {
  int devices = 0;                   ///< N
  std::int64_t seq_len = 0;          ///< S
  std::int64_t block_size = 0;       ///< tokens per device, S/N (the largest shard when uneven)
  double total_time_s = 0;           ///< the layer, first task start to last task end
  double forward_time_s = 0;         ///< end of the last forward task
  double compute_time_s = 0;         ///< busy time of the busiest compute stream
  double mean_compute_time_s = 0;    ///< busy time averaged over devices
  double exposed_comm_s = 0;         ///< total_time - compute_time: time the critical device waits
  double overlap_efficiency = 0;     ///< compute_time / total_time (1: transfers fully hidden)
  double load_imbalance = 0;         ///< compute_time / mean_compute_time (1: balanced)
  double link_busy_s = 0;            ///< busy time of the busiest link
  double flops = 0;                  ///< attention FLOPs executed, all devices
  double achieved_flops_per_device = 0;  ///< flops / (N * total_time)
  double peak_memory_bytes = 0;      ///< largest per-device working set of the layer
  bool fits_in_memory = false;       ///< peak_memory_bytes <= device memory
  std::optional<double> mfu;         ///< model FLOPs utilization, when layers and hidden are given
  std::optional<double> model_step_time_s;  ///< all layers: attention + other matmuls
  std::uint64_t events = 0;          ///< events processed
  std::vector<double> device_busy_s; ///< compute busy time per device
  /// exposed_comm_s / total_time_s (0 for an empty layer).
  [[nodiscard]] double exposed_fraction() const {
    return total_time_s > 0 ? exposed_comm_s / total_time_s : 0.0;
  }
};

/// Simulates one layer on @p devices devices of @p cluster. Validates the workload and the
/// cluster for that ring size first (ringattn::Error on bad input).
[[nodiscard]] SimResult simulate(const ClusterSpec& cluster, int devices, const Workload& workload,
                                 const SimOptions& options = {});

/// Tasks of one layer on a ring of @p devices, compute tasks and transfers of every device: the
/// events a run processes and the spans its trace holds (known before simulating).
[[nodiscard]] std::uint64_t task_count(const Workload& workload, int devices);

/// Per-device working set of the layer in bytes (inputs, outputs, fp32 accumulators, receive
/// buffers; backward adds dO, dQ, the travelling dK/dV and their buffers).
[[nodiscard]] double working_set_bytes(const Workload& workload, int devices);

/// What a sweep varies.
enum class SweepKind {
  BlockSize,  ///< tokens per device c, with N fixed (S = N * c)
  Devices,    ///< ring size N = 1, 2, 4, ...: weak scaling, or strong with a fixed S
  Layout,     ///< contiguous, striped and zigzag
};
/// "block-size", "devices" or "layout".
[[nodiscard]] std::string_view to_string(SweepKind kind);
/// Parses "block-size", "devices" or "layout"; throws ringattn::Error otherwise.
[[nodiscard]] SweepKind parse_sweep(std::string_view name);

/// One point of a sweep: the varied value and the run's result.
struct SweepPoint {
  std::string label;     ///< the value as text ("4096", "8", "zigzag")
  Workload workload;     ///< the workload of this point
  SimResult result;      ///< its prediction
};

/// A sweep and, for block sizes, the recommended block.
struct SweepResult {
  SweepKind kind = SweepKind::BlockSize;  ///< what was varied
  std::vector<SweepPoint> points;         ///< one point per value, in sweep order
  /// Smallest block with exposed communication at most 5% of the layer time from which on every
  /// larger grid block qualifies too (block-size sweeps): bisection between the largest failing
  /// grid block and the next; the smallest grid block if all qualify; empty if the largest fails.
  std::optional<std::int64_t> recommended_block_size;
  /// Under --ideal: the smallest block with no exposed communication at all (block-size sweeps).
  std::optional<std::int64_t> min_overlapped_block;
};

/// Sweep options: the grid of block sizes (powers of two from min to max, plus the workload's
/// own block) and a progress callback (done, total) for long sweeps.
struct SweepOptions {
  std::int64_t min_block = 256;       ///< smallest block of the grid
  std::int64_t max_block = 262144;    ///< largest block of the grid
  int max_devices = 0;                ///< devices sweeps: 1, 2, 4, ... up to this (0: the run's N)
  std::function<void(int, int)> progress;  ///< called after each point
};

/// Runs a sweep around (cluster, devices, workload). Block-size sweeps keep N and vary the tokens
/// per device c (S = N*c); device sweeps keep the block (weak scaling) unless
/// @p keep_seq_len, then S (strong scaling); layout sweeps try all three layouts.
[[nodiscard]] SweepResult sweep(const ClusterSpec& cluster, int devices, const Workload& workload,
                                SweepKind kind, const SimOptions& options,
                                const SweepOptions& sweep_options, bool keep_seq_len = false);

/// Smallest block c in [lo, hi] for which @p ok holds, assuming ok is monotone (false then
/// true) on that range: ok(hi) must be true. Bisection over integers: exact, O(log(hi - lo)).
[[nodiscard]] std::int64_t smallest_block(std::int64_t lo, std::int64_t hi,
                                          const std::function<bool(std::int64_t)>& ok);

}  // namespace ringattn::sim
