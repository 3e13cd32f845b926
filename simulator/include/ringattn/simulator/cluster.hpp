/// @file cluster.hpp
/// @brief The hardware the simulator models: devices, the links of the ring, presets and JSON.
///
/// A cluster is N identical devices in a ring, grouped in nodes of `devices_per_node`. The hop
/// from device d to device d+1 (mod N) uses the intra-node link when both sit in the same node
/// and the inter-node link otherwise. Units are SI throughout: FLOP/s, bytes/s, bytes, seconds.
/// In JSON, rates are given in the units people quote (TFLOP/s, GB/s = 1e9 bytes/s, GiB,
/// microseconds); see docs/simulator.md for the schema.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ringattn::sim {

/// Element type of Q, K, V and O (accumulators, LSE and gradients that travel are fp32).
enum class DType {
  BF16,  ///< bfloat16, 2 bytes, the device's bf16 peak
  FP16,  ///< IEEE half, 2 bytes, the device's fp16 peak
  FP32,  ///< IEEE single, 4 bytes, the device's fp32 peak
};
/// "bf16", "fp16" or "fp32".
[[nodiscard]] std::string_view to_string(DType dtype);
/// Parses "bf16", "fp16" or "fp32"; throws ringattn::Error otherwise.
[[nodiscard]] DType parse_dtype(std::string_view name);
/// Bytes per element: 2, 2 or 4.
[[nodiscard]] int dtype_bytes(DType dtype);

/// A measured point of kernel efficiency: the fraction of peak an attention kernel reaches for
/// a call with `tokens` key/value rows (and at least as many query rows) at head dim `head_dim`.
struct EfficiencyPoint {
  int head_dim = 128;          ///< D of the measurement
  std::int64_t tokens = 0;     ///< key/value rows per kernel call
  double efficiency = 0;       ///< achieved / peak, in (0, 1]
  /// Equal when every field is equal.
  friend bool operator==(const EfficiencyPoint&, const EfficiencyPoint&) = default;
};

/// Fraction of peak an attention kernel call reaches.
///
/// Default curve (when `table` is empty):
///   eff = max_efficiency * kv/(kv + half_tokens) * g(D) * waves(q),
/// with g(D) = [D/(D + half_head_dim)] / [128/(128 + half_head_dim)] (1 at D = 128, capped so
/// eff <= 1) and waves(q) the wave quantization of B*H_q*ceil(q/tile_rows) thread blocks over
/// `sm_count` multiprocessors times the fill of the last tile, q / (ceil(q/tile_rows)*tile_rows)
/// (both 1 when sm_count is 0).
/// With a measured `table`, the points of the nearest head dim are interpolated linearly in
/// log2(tokens) and clamped at both ends; the curve is not used.
struct KernelModel {
  double max_efficiency = 0.7;   ///< fraction of peak for large blocks at D = 128
  double half_tokens = 128;      ///< kv rows per call at which the kv factor is 1/2
  double half_head_dim = 32;     ///< head dim at which the D factor's raw value is 1/2
  int sm_count = 0;              ///< multiprocessors for wave quantization (0: not modelled)
  int tile_rows = 128;           ///< query rows per thread block, for wave quantization
  std::vector<EfficiencyPoint> table;  ///< measured points; when non-empty, replaces the curve

  /// Efficiency of one kernel call over @p q_rows queries and @p kv_rows keys for
  /// @p batch_heads = B*H_q independent heads of dim @p head_dim. In (0, 1].
  [[nodiscard]] double efficiency(std::int64_t batch_heads, std::int64_t q_rows,
                                  std::int64_t kv_rows, int head_dim) const;
  /// Throws ringattn::Error naming the field if a value is out of range.
  void validate() const;
};

/// One accelerator.
struct DeviceSpec {
  std::string name;                ///< e.g. "H100 SXM"
  double peak_flops_bf16 = 0;      ///< dense FLOP/s in bf16
  double peak_flops_fp16 = 0;      ///< dense FLOP/s in fp16
  double peak_flops_fp32 = 0;      ///< FLOP/s in fp32 (0: not supported by this preset)
  double memory_bytes = 0;         ///< device memory
  double memory_bandwidth = 0;     ///< bytes/s to device memory (merges, gradient adds)
  double launch_overhead_s = 0;    ///< fixed cost of every kernel launch
  double comm_slowdown = 0;        ///< fraction of compute rate lost while a transfer runs, [0, 1)
  double gemm_efficiency = 0.7;    ///< fraction of peak of the non-attention matmuls of a model
  KernelModel kernel;              ///< efficiency of the attention kernel

  /// Peak FLOP/s for @p dtype; throws ringattn::Error if the device has none for it.
  [[nodiscard]] double peak_flops(DType dtype) const;
  /// Throws ringattn::Error naming the field if a value is missing or out of range.
  void validate() const;
};

/// One direction of a hop between neighbouring devices. A transfer of n bytes occupies the
/// link for latency + n / bandwidth (FIFO, one transfer at a time).
struct LinkSpec {
  std::string name;          ///< e.g. "NVLink 4", "InfiniBand NDR"
  double bandwidth = 0;      ///< bytes/s per direction; > 0, may be +infinity in code (not JSON)
  double latency_s = 0;      ///< per-transfer latency, >= 0
  /// Seconds a transfer of @p bytes occupies the link.
  [[nodiscard]] double transfer_time(double bytes) const;
  /// Throws ringattn::Error naming @p what if bandwidth <= 0 or latency < 0 (or NaN).
  void validate(std::string_view what) const;
};

/// A device that runs slower than the others (compute durations multiplied by `slowdown`).
struct Straggler {
  int device = 0;        ///< index in the ring
  double slowdown = 1;   ///< >= 1
  /// Equal when device and slowdown are equal.
  friend bool operator==(const Straggler&, const Straggler&) = default;
};

/// Random variation of compute durations: each duration is multiplied by exp(sigma * z), z a
/// standard normal drawn from (seed, device, task), so a run is reproducible.
struct Jitter {
  double sigma = 0;          ///< >= 0; 0 disables jitter
  std::uint64_t seed = 1;    ///< seed of the counter-based generator
  /// Equal when sigma and seed are equal.
  friend bool operator==(const Jitter&, const Jitter&) = default;
};

/// The cluster: one kind of device, the links of the ring and optional perturbations.
struct ClusterSpec {
  std::string name;          ///< preset name or file name
  std::string description;   ///< one line for reports
  std::string source;        ///< where the figures come from (paper, datasheet)
  DeviceSpec device;         ///< every device of the ring
  int devices_per_node = 0;  ///< devices sharing the intra-node link; 0: all in one node
  LinkSpec intra_node;       ///< hop between devices of one node
  std::optional<LinkSpec> inter_node;  ///< hop between nodes; required if devices_per_node > 0
  std::optional<Straggler> straggler;  ///< optional slow device
  Jitter jitter;                       ///< optional compute-time noise

  /// The link used by the hop from @p from to (from + 1) mod @p devices.
  [[nodiscard]] const LinkSpec& hop(int from, int devices) const;
  /// Checks the spec on its own; throws ringattn::Error naming the field.
  void validate() const;
  /// Checks the spec for a ring of @p devices (straggler index in range, inter-node link present
  /// when the ring spans nodes); throws ringattn::Error.
  void validate_for(int devices) const;
};

/// Names of the shipped presets, sorted.
[[nodiscard]] std::vector<std::string> preset_names();
/// The JSON text of a shipped preset; throws ringattn::Error listing the presets if unknown.
[[nodiscard]] std::string preset_json(std::string_view name);
/// Parses a cluster from JSON text; @p origin names it in errors ("h100.json"). Throws
/// ringattn::Error with a one-line message for malformed JSON, a missing or mistyped field, an
/// unknown field, or an impossible value (zero bandwidth, negative size, ...).
[[nodiscard]] ClusterSpec parse_cluster_json(std::string_view text, std::string_view origin);
/// A preset name, or the path of a JSON file (anything containing '/' or ending in ".json").
[[nodiscard]] ClusterSpec load_cluster(std::string_view preset_or_path);
/// The JSON text of a spec (round-trips through parse_cluster_json).
[[nodiscard]] std::string to_json(const ClusterSpec& spec);

}  // namespace ringattn::sim
