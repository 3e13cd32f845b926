/// @file svg.hpp
/// @brief Pictures of a simulation as standalone SVG: the ring's timeline and a block-size sweep.
///
/// Both return the whole document as a string (no external fonts, scripts or styles), so it can
/// be written with write_file_atomic() and embedded in Markdown with `![](timeline.svg)`.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "ringattn/simulator/simulate.hpp"

namespace ringattn::sim {

/// Options of timeline_svg().
struct TimelineSvgOptions {
  std::string title;          ///< drawn above the plot (escaped)
  int max_devices = 16;       ///< devices drawn (the first ones); the rest are left out, and the
                              ///< picture says so
  int width_px = 1000;        ///< width of the document in pixels
  /// Spans with a hover tooltip (`<title>`); beyond this count none get one, to keep big
  /// timelines small.
  std::size_t max_tooltips = 20000;
};

/// The timeline of a run as an SVG Gantt chart: for each device a compute row and a link row,
/// one box per task (forward kernel, merge, pre-pass, backward kernel, dK/dV add; K/V and dK/dV
/// transfers), coloured by kind, with a time axis, a legend and the layer's end marked. Gaps in
/// a compute row are time the device waited for a block.
/// @param spans the spans of the run (SimOptions::on_span), in any order
/// @param devices ring size N of the run (rows are drawn for min(N, max_devices) devices)
/// @param options title, size, how many devices to draw and how many tooltips
/// @throws ringattn::Error if @p devices < 1 or a span names a device outside [0, N)
[[nodiscard]] std::string timeline_svg(const std::vector<Span>& spans, int devices,
                                       const TimelineSvgOptions& options = {});

/// Options of sweep_svg().
struct SweepSvgOptions {
  std::string title;                 ///< drawn above the plot (escaped)
  int width_px = 760;                ///< width of the document in pixels
  int height_px = 420;               ///< height of the document in pixels
  /// A block size to mark with a labelled vertical line besides the recommended block (for
  /// example the paper's rule c = F/B).
  std::optional<double> rule_block;
  std::string rule_label = "c = F/B";  ///< label of rule_block's line
};

/// A block-size sweep as an SVG line chart over tokens per device c (log scale): the overlap
/// efficiency (compute / layer time) and the exposed-communication fraction of each point, with
/// the recommended block (and optionally a rule's block) marked.
/// @param sweep a block-size sweep (SweepKind::BlockSize) with at least one point
/// @param options title, size and an optional rule block to mark
/// @throws ringattn::Error if @p sweep is not a block-size sweep or has no points
[[nodiscard]] std::string sweep_svg(const SweepResult& sweep, const SweepSvgOptions& options = {});

}  // namespace ringattn::sim
