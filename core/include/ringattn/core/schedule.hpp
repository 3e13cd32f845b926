/// @file schedule.hpp
/// @brief The ring schedule: who holds which K/V block at each step and what each step costs.
///
/// This is the single description of ring attention that every engine consumes: the in-process
/// reference ring, the MPI ring, the CUDA ring and the simulator. At step s (0 <= s < N) rank r
/// holds the K/V block that started on rank (r - s) mod N; it then sends that block to rank
/// r + 1 and receives the next one from rank r - 1. For every (query segment, key segment) pair
/// of a step the schedule gives the mask class, computed from *global* positions:
///
///   - Full:           every query sees every key (non-causal, or all keys before all queries);
///   - CausalDiagonal: queries and keys are the same positions: key j visible iff j <= i;
///   - OffsetCausal:   some but not all pairs visible, positions shifted or interleaved;
///   - Skip:           no query sees any key; the step's kernel for this pair is not launched.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "ringattn/core/layout.hpp"
#include "ringattn/core/shape.hpp"

namespace ringattn {

/// How a (query segment, key segment) pair is masked.
enum class MaskClass {
  Full,            ///< every query sees every key: no mask is applied
  CausalDiagonal,  ///< queries and keys are the same positions: key j visible iff j <= i
  OffsetCausal,    ///< some but not all pairs visible: shifted or interleaved positions
  Skip,            ///< no query sees any key: nothing is computed
};

/// "full", "causal-diagonal", "offset-causal" or "skip".
[[nodiscard]] std::string_view to_string(MaskClass mask);

/// Global positions of a run of rows: row i sits at offset + i * stride.
/// Queries and keys are compared in key coordinates: query at position p sees keys at <= p.
struct Positions {
  std::int64_t offset = 0;  ///< position of row 0
  std::int64_t stride = 1;  ///< distance between consecutive rows (>= 1)
  /// Position of row i.
  [[nodiscard]] std::int64_t at(std::int64_t i) const { return offset + i * stride; }
  /// Equal when offset and stride are equal.
  friend bool operator==(const Positions&, const Positions&) = default;
};

/// Classifies the causal mask between @p q_len queries at @p q and @p k_len keys at @p k.
[[nodiscard]] MaskClass classify_mask(Positions q, std::int64_t q_len, Positions k,
                                      std::int64_t k_len, bool causal);
/// Number of (query, key) pairs with key position <= query position (all pairs when not causal).
/// Closed form in O(log(stride)) time (a floor sum), for any offsets and lengths whose product
/// q_len * k_len fits in 64 bits.
[[nodiscard]] std::int64_t visible_pairs(Positions q, std::int64_t q_len, Positions k,
                                         std::int64_t k_len, bool causal);

/// One kernel call of a ring step: a query segment of the rank against a key segment of the
/// block it holds.
struct PairWork {
  int q_segment = 0;          ///< index into the query layout's segments of the rank
  int kv_segment = 0;         ///< index into the key layout's segments of the block's owner
  Positions q;                ///< global positions of the query rows (key coordinates)
  std::int64_t q_rows = 0;    ///< number of query rows
  std::int64_t q_local = 0;   ///< first query row in the rank's local buffer
  Positions k;                ///< global positions of the key rows
  std::int64_t k_rows = 0;    ///< number of key rows
  std::int64_t k_local = 0;   ///< first key row in the block's local buffer
  MaskClass mask = MaskClass::Full;  ///< mask class of the pair
  std::int64_t visible = 0;   ///< visible (query, key) pairs, per batch element and head
  /// Equal when every field is equal.
  friend bool operator==(const PairWork&, const PairWork&) = default;
};

/// What one rank does at one ring step.
struct StepWork {
  int step = 0;      ///< s
  int rank = 0;      ///< r
  int kv_owner = 0;  ///< (r - s) mod N: the rank the K/V block started on
  /// Every (query segment, key segment) pair, Skip ones included; for a sub-block, those whose
  /// key segment has rows in it
  std::vector<PairWork> pairs;
  std::int64_t visible = 0;      ///< sum of visible pairs over the step
  /// True when every pair is Skip: the rank only forwards the block this step.
  [[nodiscard]] bool idle() const { return visible == 0; }
  /// Equal when every field, the pairs included, is equal.
  friend bool operator==(const StepWork&, const StepWork&) = default;
};

/// Cost of one rank's ring step, for one attention layer (all batch elements and heads).
struct StepCost {
  double flops_forward = 0;   ///< 4 * B * H_q * D * visible (QK^T and PV, 2 FLOPs per MAC)
  double flops_backward = 0;  ///< 2.5x forward: recompute QK^T, dV, dP, dQ, dK
  double kv_bytes = 0;        ///< K and V block sent to the next rank after this step (0 on the last step)
  double dkv_bytes = 0;       ///< dK and dV sent after this step in the backward pass (every step)
};

/// The ring schedule for N ranks. Queries are split with @p q_layout over S_q tokens and keys
/// and values with @p kv_layout over S_kv tokens (same kind and N). When causal, query i sits at
/// position q_offset + i in key coordinates (S_kv - S_q: end-aligned, as flash-attention does).
class RingSchedule {
 public:
  /// Throws ringattn::Error if the layouts disagree on kind or rank count.
  RingSchedule(SequenceLayout q_layout, SequenceLayout kv_layout, bool causal,
               std::int64_t q_offset);
  /// Self-attention-style schedule for a shape: both layouts of @p kind over N ranks,
  /// q_offset = S_kv - S_q.
  static RingSchedule for_shape(const AttentionShape& shape, Layout kind, int ranks, bool causal);

  [[nodiscard]] int ranks() const { return q_layout_.ranks(); }  ///< N
  [[nodiscard]] int steps() const { return q_layout_.ranks(); }  ///< N steps: every block visits every rank
  [[nodiscard]] bool causal() const { return causal_; }          ///< causal masking
  [[nodiscard]] std::int64_t q_offset() const { return q_offset_; }  ///< query position offset
  [[nodiscard]] const SequenceLayout& q_layout() const { return q_layout_; }    ///< query split
  [[nodiscard]] const SequenceLayout& kv_layout() const { return kv_layout_; }  ///< key/value split

  /// The rank whose K/V block rank @p rank holds at step @p step: (rank - step) mod N.
  [[nodiscard]] static int kv_owner(int rank, int step, int ranks);
  /// The rank this rank sends to: (rank + 1) mod N.
  [[nodiscard]] static int next_rank(int rank, int ranks) { return (rank + 1) % ranks; }
  /// The rank this rank receives from: (rank - 1) mod N.
  [[nodiscard]] static int prev_rank(int rank, int ranks) { return (rank + ranks - 1) % ranks; }

  /// Work of rank @p rank at step @p step, computed on demand (the schedule stores only its
  /// layouts, so it costs O(N) memory even for thousands of ranks; a call costs
  /// O(log(stride)) per segment pair, see visible_pairs). Equals
  /// work(step, rank, 0, kv_layout().shard_length(kv_owner)).
  [[nodiscard]] StepWork work(int step, int rank) const;
  /// Work of rank @p rank at step @p step against only the rows [@p kv_begin, @p kv_end) of the
  /// held block's local buffer: a sub-block sent as its own message. Each pair's k, k_rows and
  /// k_local describe the key segment's rows inside the range (k.offset is the position of the
  /// first such row, same stride); pairs whose key segment has no row in the range are omitted,
  /// so StepWork::pairs may be shorter than for the whole block. Throws ringattn::Error unless
  /// 0 <= kv_begin < kv_end <= the block's shard length and step and rank are in range.
  [[nodiscard]] StepWork work(int step, int rank, std::int64_t kv_begin,
                              std::int64_t kv_end) const;
  /// The same as work(step, rank, kv_begin, kv_end), written into @p out (its pair storage is
  /// reused, so a caller asking for millions of steps, like the simulator, does not allocate).
  void work(int step, int rank, std::int64_t kv_begin, std::int64_t kv_end, StepWork& out) const;
  /// Visits the pairs work(step, rank, kv_begin, kv_end) lists, in its order, without building
  /// a StepWork: @p fn(const PairWork&) sees every field but mask and visible (left at their
  /// defaults; classify_mask and visible_pairs give them), for loops that need only some of them,
  /// like the simulator's task costs. work() is built on it. Throws like work(); returns the
  /// block's owner.
  template <class Fn>
  int for_each_pair(int step, int rank, std::int64_t kv_begin, std::int64_t kv_end, Fn&& fn) const {
    const int owner = checked_owner(step, rank, kv_begin, kv_end);
    const auto& qsegs = q_layout_.segments(rank);
    const auto& ksegs = kv_layout_.segments(owner);
    PairWork p;
    for (std::size_t qi = 0; qi < qsegs.size(); ++qi) {
      const Segment& qs = qsegs[qi];
      for (std::size_t ki = 0; ki < ksegs.size(); ++ki) {
        const Segment& ks = ksegs[ki];
        // The key segment's rows inside [kv_begin, kv_end), in local indices.
        const std::int64_t first = std::max(ks.local_begin, kv_begin);
        const std::int64_t last = std::min(ks.local_begin + ks.length, kv_end);
        if (first >= last) continue;
        p.q_segment = static_cast<int>(qi);
        p.kv_segment = static_cast<int>(ki);
        p.q = {q_offset_ + qs.start, qs.stride};
        p.q_rows = qs.length;
        p.q_local = qs.local_begin;
        p.k = {ks.position(first - ks.local_begin), ks.stride};
        p.k_rows = last - first;
        p.k_local = first;
        fn(static_cast<const PairWork&>(p));
      }
    }
    return owner;
  }
  /// Local row range [first, last) of sub-block @p index when a block of @p rows rows is sent as
  /// @p parts messages, balanced like the layouts: [floor(index*rows/parts),
  /// floor((index+1)*rows/parts)), so sizes differ by at most one. Throws ringattn::Error unless
  /// 1 <= parts <= rows and 0 <= index < parts.
  [[nodiscard]] static std::pair<std::int64_t, std::int64_t> sub_block(std::int64_t rows,
                                                                       int parts, int index);
  /// Cost of rank @p rank at step @p step for @p shape with elements of @p elem_bytes bytes
  /// moving as K/V and gradients of @p grad_bytes bytes moving as dK/dV.
  [[nodiscard]] StepCost cost(int step, int rank, const AttentionShape& shape, int elem_bytes,
                              int grad_bytes) const;

 private:
  // Checks step, rank and the key row range as work() documents; returns the block's owner.
  [[nodiscard]] int checked_owner(int step, int rank, std::int64_t kv_begin, std::int64_t kv_end) const;

  SequenceLayout q_layout_;
  SequenceLayout kv_layout_;
  bool causal_;
  std::int64_t q_offset_;
};

}  // namespace ringattn
