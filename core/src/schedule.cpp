#include "ringattn/core/schedule.hpp"

#include <algorithm>
#include <utility>

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

namespace {

// 128-bit intermediates: positions and their differences are arbitrary int64, and a stride times
// a row count can pass 2^63 before the floors bring the value back into range.
__extension__ typedef __int128 i128;
__extension__ typedef unsigned __int128 u128;

// sum_{i=0}^{n-1} floor((a*i + b) / m) for a, b >= 0 and m >= 1, in O(log min(a, m)) steps: the
// Euclid-like recursion (AtCoder Library's floor_sum_unsigned). Reducing a and b modulo m peels
// off the terms (a/m)*i and b/m exactly; what is left counts lattice points under a line whose
// slope a/m < 1, and swapping the axes turns it into the same sum with (n, m, a, b) replaced by
// (floor(y/m), a, m, y mod m), y = a*n + b, so (m, a) shrink as in Euclid's algorithm. With
// a < m and b < m every y stays below m*(n+1), under 2^127 for int64 inputs; each addition to
// the sum is one of its non-negative parts, so never more than the caller's result.
u128 floor_sum(u128 n, u128 m, u128 a, u128 b) {
  u128 sum = 0;
  while (true) {
    if (a >= m) {
      sum += n * (n - 1) / 2 * (a / m);
      a %= m;
    }
    if (b >= m) {
      sum += n * (b / m);
      b %= m;
    }
    const u128 y = a * n + b;
    if (y < m) break;
    n = y / m;
    b = y % m;
    std::swap(m, a);
  }
  return sum;
}

// ceil(x / y) for y > 0 and any sign of x.
i128 ceil_div(i128 x, i128 y) { return x >= 0 ? (x + y - 1) / y : -(-x / y); }

}  // namespace

std::int64_t visible_pairs(Positions q, std::int64_t q_len, Positions k, std::int64_t k_len,
                           bool causal) {
  switch (classify_mask(q, q_len, k, k_len, causal)) {
    case MaskClass::Skip: return 0;
    case MaskClass::Full: return q_len * k_len;
    default: break;
  }
  // Query i at p_i = q.offset + i*q.stride sees the keys j with k.offset + j*k.stride <= p_i:
  //   count_i = clamp(floor((d + a*i) / m) + 1, 0, k_len),  d = q.offset - k.offset,
  // a = q.stride, m = k.stride. count_i never decreases with i, so the rows split into
  // [0, i0) seeing no key, [i0, i1) seeing some, [i1, q_len) seeing all k_len; over the middle
  // the clamp is inactive and the sum is n + floor_sum(n, m, a, b) with i = i0 + t,
  // b = d + a*i0 >= 0, n = i1 - i0.
  const i128 d = i128{q.offset} - k.offset;
  const i128 a = q.stride;
  const i128 m = k.stride;
  const i128 rows = q_len;
  // i0: first i with d + a*i >= 0 (count >= 1).
  const i128 i0 = std::clamp<i128>(ceil_div(-d, a), 0, rows);
  // i1: first i with d + a*i >= (k_len - 1)*m (count >= k_len); at or after i0 as k_len >= 1.
  const i128 i1 = std::clamp<i128>(ceil_div(i128{k_len - 1} * m - d, a), i0, rows);
  const i128 n = i1 - i0;
  const i128 b = d + a * i0;
  const i128 middle =
      n == 0 ? 0
             : n + static_cast<i128>(floor_sum(static_cast<u128>(n), static_cast<u128>(m),
                                               static_cast<u128>(a), static_cast<u128>(b)));
  return static_cast<std::int64_t>(middle + (rows - i1) * k_len);
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

std::pair<std::int64_t, std::int64_t> RingSchedule::sub_block(std::int64_t rows, int parts,
                                                               int index) {
  require(parts >= 1 && parts <= rows, "sub_block: cannot split ", rows, " rows into ", parts,
          " sub-blocks (need 1 <= parts <= rows)");
  require(index >= 0 && index < parts, "sub_block: index ", index, " out of range for ", parts,
          " sub-blocks");
  // floor(i*rows/parts) without forming i*rows: i*rows = i*parts*(rows/parts) + i*(rows%parts).
  const auto bound = [&](std::int64_t i) {
    return i * (rows / parts) + i * (rows % parts) / parts;
  };
  return {bound(index), bound(std::int64_t{index} + 1)};
}

StepWork RingSchedule::work(int step, int rank) const {
  const int n = ranks();
  require(step >= 0 && step < n && rank >= 0 && rank < n, "step ", step, " / rank ", rank,
          " out of range for a ring of ", n);
  return work(step, rank, 0, kv_layout_.shard_length(kv_owner(rank, step, n)));
}

StepWork RingSchedule::work(int step, int rank, std::int64_t kv_begin, std::int64_t kv_end) const {
  StepWork w;
  work(step, rank, kv_begin, kv_end, w);
  return w;
}

int RingSchedule::checked_owner(int step, int rank, std::int64_t kv_begin, std::int64_t kv_end) const {
  const int n = ranks();
  require(step >= 0 && step < n && rank >= 0 && rank < n, "step ", step, " / rank ", rank,
          " out of range for a ring of ", n);
  const int owner = kv_owner(rank, step, n);
  const std::int64_t block = kv_layout_.shard_length(owner);
  require(kv_begin >= 0 && kv_begin < kv_end && kv_end <= block, "key rows [", kv_begin, ", ",
          kv_end, ") are not a non-empty range inside the ", block, "-row block of rank ",
          owner, " (step ", step, ", rank ", rank, ")");
  return owner;
}

void RingSchedule::work(int step, int rank, std::int64_t kv_begin, std::int64_t kv_end,
                        StepWork& w) const {
  w.pairs.clear();
  w.visible = 0;
  w.step = step;
  w.rank = rank;
  w.kv_owner = for_each_pair(step, rank, kv_begin, kv_end, [&](const PairWork& pair) {
    PairWork& p = w.pairs.emplace_back(pair);
    p.mask = classify_mask(p.q, p.q_rows, p.k, p.k_rows, causal_);
    p.visible = visible_pairs(p.q, p.q_rows, p.k, p.k_rows, causal_);
    w.visible += p.visible;
  });
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
