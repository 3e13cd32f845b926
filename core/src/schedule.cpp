#include "ringattn/core/schedule.hpp"

#include <algorithm>

#include "ringattn/core/cost.hpp"
#include "ringattn/core/error.hpp"

namespace ringattn {

std::string_view to_string(MaskClass mask) {
  switch (mask) {
    case MaskClass::Full: return "full";
    case MaskClass::CausalDiagonal: return "causal-diagonal";
    case MaskClass::OffsetCausal: return "offset-causal";
    case MaskClass::Skip: return "skip";
  }
  return "unknown";
}

MaskClass classify_mask(Positions q, std::int64_t q_len, Positions k, std::int64_t k_len,
                        bool causal) {
  if (q_len <= 0 || k_len <= 0) return MaskClass::Skip;
  if (!causal) return MaskClass::Full;
  const std::int64_t q_first = q.at(0), q_last = q.at(q_len - 1);
  const std::int64_t k_first = k.at(0), k_last = k.at(k_len - 1);
  if (k_first > q_last) return MaskClass::Skip;  // even the last query sees no key
  if (k_last <= q_first) return MaskClass::Full;  // even the first query sees every key
  if (q == k && q_len == k_len) return MaskClass::CausalDiagonal;
  return MaskClass::OffsetCausal;
}

std::int64_t visible_pairs(Positions q, std::int64_t q_len, Positions k, std::int64_t k_len,
                           bool causal) {
  switch (classify_mask(q, q_len, k, k_len, causal)) {
    case MaskClass::Skip: return 0;
    case MaskClass::Full: return q_len * k_len;
    default: break;
  }
  // Query i at position p sees the keys j with k.offset + j*k.stride <= p.
  std::int64_t n = 0;
  for (std::int64_t i = 0; i < q_len; ++i) {
    const std::int64_t p = q.at(i);
    if (p >= k.offset) n += std::min(k_len, (p - k.offset) / k.stride + 1);
  }
  return n;
}

RingSchedule::RingSchedule(SequenceLayout q_layout, SequenceLayout kv_layout, bool causal,
                           std::int64_t q_offset)
    : q_layout_(std::move(q_layout)),
      kv_layout_(std::move(kv_layout)),
      causal_(causal),
      q_offset_(q_offset) {
  require(q_layout_.kind() == kv_layout_.kind(), "queries use the ", to_string(q_layout_.kind()),
          " layout but keys use ", to_string(kv_layout_.kind()), ": a ring uses one layout");
  require(q_layout_.ranks() == kv_layout_.ranks(), "queries are split over ", q_layout_.ranks(),
          " ranks but keys over ", kv_layout_.ranks());
}

RingSchedule RingSchedule::for_shape(const AttentionShape& shape, Layout kind, int ranks,
                                     bool causal) {
  shape.validate();
  return RingSchedule(SequenceLayout(kind, shape.seq_q, ranks), SequenceLayout(kind, shape.seq_kv, ranks),
                      causal, shape.causal_query_offset());
}

int RingSchedule::kv_owner(int rank, int step, int ranks) {
  require(ranks >= 1 && rank >= 0 && rank < ranks && step >= 0,
          "kv_owner: rank ", rank, " / step ", step, " out of range for ", ranks, " ranks");
  return ((rank - step) % ranks + ranks) % ranks;
}

StepWork RingSchedule::work(int step, int rank) const {
  const int n = ranks();
  require(step >= 0 && step < n && rank >= 0 && rank < n, "step ", step, " / rank ", rank,
          " out of range for a ring of ", n);
  StepWork w;
  w.step = step;
  w.rank = rank;
  w.kv_owner = kv_owner(rank, step, n);
  const auto& qsegs = q_layout_.segments(rank);
  const auto& ksegs = kv_layout_.segments(w.kv_owner);
  for (std::size_t qi = 0; qi < qsegs.size(); ++qi) {
    for (std::size_t ki = 0; ki < ksegs.size(); ++ki) {
      const Segment& qs = qsegs[qi];
      const Segment& ks = ksegs[ki];
      PairWork p;
      p.q_segment = static_cast<int>(qi);
      p.kv_segment = static_cast<int>(ki);
      p.q = {q_offset_ + qs.start, qs.stride};
      p.q_rows = qs.length;
      p.q_local = qs.local_begin;
      p.k = {ks.start, ks.stride};
      p.k_rows = ks.length;
      p.k_local = ks.local_begin;
      p.mask = classify_mask(p.q, p.q_rows, p.k, p.k_rows, causal_);
      p.visible = visible_pairs(p.q, p.q_rows, p.k, p.k_rows, causal_);
      w.visible += p.visible;
      w.pairs.push_back(p);
    }
  }
  return w;
}

StepCost RingSchedule::cost(int step, int rank, const AttentionShape& shape, int elem_bytes,
                            int grad_bytes) const {
  const StepWork w = work(step, rank);
  const std::int64_t block = kv_layout_.shard_length(w.kv_owner);
  StepCost c;
  c.flops_forward = attention_flops_forward(shape.batch, shape.heads_q, shape.head_dim, w.visible);
  c.flops_backward = attention_flops_backward(shape.batch, shape.heads_q, shape.head_dim, w.visible);
  // The block held at step s goes on to the next rank unless this was the last step; its
  // gradients always move: after step N-1 they take the last hop home to the owner.
  c.kv_bytes = step + 1 < steps()
                   ? kv_block_bytes(shape.batch, block, shape.heads_kv, shape.head_dim, elem_bytes)
                   : 0.0;
  c.dkv_bytes = kv_block_bytes(shape.batch, block, shape.heads_kv, shape.head_dim, grad_bytes);
  return c;
}

}  // namespace ringattn
