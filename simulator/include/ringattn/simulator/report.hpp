/// @file report.hpp
/// @brief What the simulator prints and writes: a text table, JSON, CSV and a Chrome trace.
#pragma once

#include <cstdio>
#include <string>

#include "ringattn/simulator/simulate.hpp"

namespace ringattn::sim {

/// Everything that describes a run, for reports.
struct RunInfo {
  const ClusterSpec* cluster = nullptr;  ///< the cluster simulated
  int devices = 0;                       ///< N
  Workload workload;                     ///< the layer
  bool ideal = false;                    ///< the paper's idealized model
};

/// A human-readable report of one run: the setup, then a table of times and ratios.
[[nodiscard]] std::string format_text(const RunInfo& info, const SimResult& result);
/// A human-readable table of a sweep, with the recommended block.
[[nodiscard]] std::string format_sweep_text(const RunInfo& info, const SweepResult& sweep);
/// One JSON object: the setup and every SimResult field (total_time_s, compute_time_s,
/// exposed_comm_s, overlap_efficiency, load_imbalance, peak_memory_bytes, fits_in_memory, mfu,
/// events, ...). Per-device busy times are included for rings of at most @p max_device_rows.
[[nodiscard]] std::string result_json(const RunInfo& info, const SimResult& result, int max_device_rows = 64);
/// One JSON object for a sweep: the setup, `points` (one object per value),
/// `recommended_block_size` and, under --ideal, `min_overlapped_block` (null when none).
[[nodiscard]] std::string sweep_json(const RunInfo& info, const SweepResult& sweep);
/// CSV with a header row and one row per run (a single run or every sweep point).
[[nodiscard]] std::string results_csv(const std::vector<SweepPoint>& points);

/// Streams spans into a Chrome trace-event JSON file (for Perfetto or chrome://tracing): one
/// process per device with two rows, its compute stream and its outgoing link. The file is
/// written under a temporary name and renamed into place by finish(); if finish() is never
/// called (an error), the temporary file is removed and @p path is untouched.
class ChromeTraceWriter {
 public:
  /// Opens a temporary file next to @p path; throws ringattn::Error if it cannot.
  ChromeTraceWriter(std::string path, const ClusterSpec& cluster, int devices);
  ChromeTraceWriter(const ChromeTraceWriter&) = delete;             ///< owns a file: not copyable
  ChromeTraceWriter& operator=(const ChromeTraceWriter&) = delete;  ///< owns a file: not copyable
  /// If finish() was never called (an error), closes and removes the temporary file.
  ~ChromeTraceWriter();
  /// Appends one finished task.
  void add(const Span& span);
  /// Completes the JSON, flushes and renames it to the final path; throws on I/O errors.
  void finish();
  /// Spans written so far.
  [[nodiscard]] std::uint64_t spans() const { return spans_; }

 private:
  std::string path_, tmp_;
  std::FILE* file_ = nullptr;
  std::uint64_t spans_ = 0;
  bool ok_ = true;
};

}  // namespace ringattn::sim
