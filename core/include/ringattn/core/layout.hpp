/// @file layout.hpp
/// @brief SequenceLayout: how a sequence of S tokens is split over N ranks, both directions.
///
/// Three layouts, each defined for any S >= the number of chunks, with uneven shards allowed:
/// rank r holds L_r = floor((r+1)*S/N) - floor(r*S/N) tokens, so lengths differ by at most one.
/// - contiguous: rank r holds the r-th run of L_r tokens;
/// - striped:    rank r holds positions r, r+N, r+2N, ... (Striped Attention);
/// - zigzag:     the sequence is cut into 2N chunks and rank r holds chunks r and 2N-1-r, in
///               that order, of floor(L_r/2) and ceil(L_r/2) tokens (2N equal chunks when 2N | S).
/// A rank's shard is a list of Segments: runs of positions start, start+stride, ... that sit
/// one after another in the rank's local buffer. Every kernel takes (offset, stride) positions,
/// so every layout maps onto the same kernels.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ringattn {

/// The three ways of splitting a sequence over ranks (see SequenceLayout and
/// docs/ring-schedule.md for pictures).
enum class Layout {
  Contiguous,  ///< rank r holds one run of consecutive tokens, the r-th of N
  Striped,     ///< rank r holds positions r, r+N, r+2N, ... (Striped Attention)
  Zigzag,      ///< rank r holds chunks r and 2N-1-r of 2N: one early, one late
};

/// "contiguous", "striped" or "zigzag".
[[nodiscard]] std::string_view to_string(Layout layout);
/// Parses "contiguous", "striped" or "zigzag"; throws ringattn::Error for anything else.
[[nodiscard]] Layout parse_layout(std::string_view name);
/// All layouts, for loops in tests and sweeps.
[[nodiscard]] const std::vector<Layout>& all_layouts();

/// An arithmetic run of global positions stored consecutively in a rank's local buffer:
/// local index local_begin + i holds global position start + i * stride, 0 <= i < length.
struct Segment {
  std::int64_t start = 0;        ///< global position of the first element
  std::int64_t stride = 1;       ///< distance between consecutive global positions (>= 1)
  std::int64_t length = 0;       ///< number of positions
  std::int64_t local_begin = 0;  ///< index of the first element in the rank's local buffer

  /// Global position of the i-th element of the run.
  [[nodiscard]] std::int64_t position(std::int64_t i) const { return start + i * stride; }
  /// Global position of the last element (length must be > 0).
  [[nodiscard]] std::int64_t last() const { return start + (length - 1) * stride; }
  /// Equal when every field is equal.
  friend bool operator==(const Segment&, const Segment&) = default;
};

/// Where a global position lives: the rank and the index in that rank's local buffer.
struct LocalIndex {
  int rank = 0;             ///< owning rank
  std::int64_t index = 0;   ///< index within the rank's shard
  /// Equal when rank and index are equal.
  friend bool operator==(const LocalIndex&, const LocalIndex&) = default;
};

/// A sequence of seq_len tokens split over `ranks` ranks with one of the three layouts.
class SequenceLayout {
 public:
  /// Throws ringattn::Error if ranks < 1, seq_len < 1, or the sequence is shorter than the
  /// number of chunks (N for contiguous and striped, 2N for zigzag): every rank must hold a token.
  SequenceLayout(Layout kind, std::int64_t seq_len, int ranks);

  [[nodiscard]] Layout kind() const { return kind_; }             ///< the layout
  [[nodiscard]] std::int64_t seq_len() const { return seq_len_; } ///< S
  [[nodiscard]] int ranks() const { return ranks_; }              ///< N
  /// True when every shard has the same length (N divides S).
  [[nodiscard]] bool even() const;
  /// Number of tokens rank r holds.
  [[nodiscard]] std::int64_t shard_length(int rank) const;
  /// Longest shard (the buffer size a ring needs).
  [[nodiscard]] std::int64_t max_shard_length() const;
  /// The runs of positions rank r holds, in local-buffer order.
  [[nodiscard]] const std::vector<Segment>& segments(int rank) const;
  /// Global position held at local index `index` of rank `rank`.
  [[nodiscard]] std::int64_t position(int rank, std::int64_t index) const;
  /// Rank and local index that hold global position `position`.
  [[nodiscard]] LocalIndex locate(std::int64_t position) const;
  /// All global positions of rank r, in local order.
  [[nodiscard]] std::vector<std::int64_t> positions(int rank) const;

 private:
  void check_rank(int rank) const;
  struct Run {  // a stride-1 segment, for locate()
    std::int64_t start;
    int rank;
    std::int64_t local_begin;
  };
  Layout kind_;
  std::int64_t seq_len_;
  int ranks_;
  std::vector<std::vector<Segment>> segments_;  // per rank
  std::vector<Run> runs_;                       // contiguous and zigzag: every run, by start
};

}  // namespace ringattn
