// The CUDA ring's plan: core's RingSchedule turned into the operations each rank queues on its
// compute and communication streams, and the happens-before checker that proves the plan free of
// races. Plain C++ (no CUDA), so CI tests it on any machine; ring.cpp turns each operation into
// one CUDA or NCCL call.
#include "ringattn/cuda/ring_plan.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <sstream>
#include <utility>

#include "ringattn/core/error.hpp"

namespace ringattn::cuda {

const char* to_string(OpKind kind) {
  switch (kind) {
    case OpKind::Copy2D: return "copy2d";
    case OpKind::Convert: return "convert";
    case OpKind::Fill: return "fill";
    case OpKind::Forward: return "forward";
    case OpKind::Merge: return "merge";
    case OpKind::Delta: return "delta";
    case OpKind::Backward: return "backward";
    case OpKind::Add: return "add";
    case OpKind::Record: return "record";
    case OpKind::Wait: return "wait";
    case OpKind::Shift: return "shift";
  }
  return "?";
}

int RingPlan::buffer(int rank, const std::string& name) const {
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    if (buffers[i].rank == rank && buffers[i].name == name) return static_cast<int>(i);
  }
  fail("ring plan: rank ", rank, " has no buffer '", name, "'");
}

namespace {

using u64 = std::uint64_t;

std::size_t to_size(std::int64_t v) { return static_cast<std::size_t>(v); }

// Builds the operations of one plan. Sizes follow the conventions: Q, O, dO (B, L, H_q, D), K, V
// (B, L, H_kv, D), LSE (B, H_q, L), stored segment-major (see ring_plan.hpp).
class Builder {
 public:
  Builder(const RingSchedule& schedule, const AttentionShape& shape, const PlanOptions& o, bool backward)
      : s_(schedule), n_(schedule.ranks()) {
    require(o.input_bytes == 2 || o.input_bytes == 4, "ring plan: input elements must be 2 or 4 bytes, got ",
            o.input_bytes);
    require(o.output_bytes == 4 || o.output_bytes == o.input_bytes,
            "ring plan: O must be float32 or the input type");
    require(schedule.q_layout().seq_len() == shape.seq_q && schedule.kv_layout().seq_len() == shape.seq_kv,
            "ring plan: the schedule splits ", schedule.q_layout().seq_len(), " queries and ",
            schedule.kv_layout().seq_len(), " keys but the shape has S_q = ", shape.seq_q, ", S_kv = ",
            shape.seq_kv);
    require(schedule.q_offset() == shape.seq_kv - shape.seq_q,
            "ring plan: the schedule's query offset must be S_kv - S_q");
    p_.backward = backward;
    p_.ranks = n_;
    p_.steps = schedule.steps();
    p_.shape = shape;
    p_.layout = schedule.q_layout().kind();
    p_.causal = schedule.causal();
    p_.input_bytes = o.input_bytes;
    p_.output_bytes = backward ? 4 : o.output_bytes;
    p_.scale = o.scale;
    p_.events.assign(to_size(n_), 0);
    ib_ = to_size(o.input_bytes);
  }

  RingPlan forward() {
    // The first launched pair of a query segment writes (O, LSE) straight into the accumulator
    // (the kernel overwrites every row: O = 0, LSE = -inf where no key is visible), so it needs
    // neither a partial, nor a merge, nor a fill; only segments no pair reaches are filled.
    first_pair_.assign(to_size(n_), {});
    pairs_.assign(to_size(n_), {});
    for (int r = 0; r < n_; ++r) {
      first_pair_[to_size(r)].assign(s_.q_layout().segments(r).size(), {-1, -1});
      pairs_[to_size(r)].assign(s_.q_layout().segments(r).size(), 0);
      for (int step = 0; step < n_; ++step) {
        for (const PairWork& pw : s_.work(step, r).pairs) {
          if (pw.mask == MaskClass::Skip) continue;
          auto& first = first_pair_[to_size(r)][to_size(pw.q_segment)];
          if (first.first < 0) first = {step, pw.kv_segment};
          ++pairs_[to_size(r)][to_size(pw.q_segment)];
        }
      }
    }
    for (int r = 0; r < n_; ++r) declare_forward_buffers(r);
    std::vector<int> packed(to_size(n_));
    for (int r = 0; r < n_; ++r) {
      gather_rows(r, "q", "q_sm", p_.shape.heads_q, ib_, s_.q_layout());
      pack_block(r);
      const auto& segs = s_.q_layout().segments(r);
      for (std::size_t i = 0; i < segs.size(); ++i) {
        if (first_pair_[to_size(r)][i].first >= 0) continue;
        fill_region(r, seg_rows(r, o_acc(r), 0, segs[i], p_.shape.heads_q, 4), 0.0f,
                    "O_acc = 0 (q" + std::to_string(i) + " sees no key)");
        fill_region(r, seg_lse(r, lse_acc(r), segs[i]), -std::numeric_limits<float>::infinity(),
                    "LSE_acc = -inf (q" + std::to_string(i) + " sees no key)");
      }
      packed[to_size(r)] = record(r, PlanStream::Compute, -1, "own K/V packed");
    }
    std::vector<std::vector<int>> arrived(to_size(n_), std::vector<int>(to_size(n_), -1));
    std::vector<std::vector<int>> done(to_size(n_), std::vector<int>(to_size(n_), -1));
    for (int step = 0; step < n_; ++step) {
      if (step + 1 < n_) {  // the next block's transfer is queued before this block's kernels
        kv_shift(step, packed, done, arrived);
      }
      for (int r = 0; r < n_; ++r) {
        const StepWork w = s_.work(step, r);
        if (w.idle()) continue;  // every pair masked: nothing to launch, the block only passes through
        if (step > 0) wait(r, PlanStream::Compute, arrived[to_size(r)][to_size(step)], step, "K/V block arrived");
        for (const PairWork& pw : w.pairs) {
          if (pw.mask == MaskClass::Skip) continue;
          forward_pair(r, step, w.kv_owner, pw);
        }
        done[to_size(r)][to_size(step)] = record(r, PlanStream::Compute, step, "step done: K/V buffer free");
      }
    }
    for (int r = 0; r < n_; ++r) finish_forward(r);
    return std::move(p_);
  }

  RingPlan backward() {
    for (int r = 0; r < n_; ++r) declare_backward_buffers(r);
    std::vector<int> packed(to_size(n_));
    for (int r = 0; r < n_; ++r) {
      gather_rows(r, "q", "q_sm", p_.shape.heads_q, ib_, s_.q_layout());
      gather_rows(r, "dout", "dout_sm", p_.shape.heads_q, ib_, s_.q_layout());
      gather_rows(r, "out", "out_sm", p_.shape.heads_q, ib_, s_.q_layout());
      gather_lse(r, "lse", "lse_sm", /*to_user=*/false);
      pack_block(r);
      fill(r, dq_acc(r), 0, q_elems(r), 0.0f, "dQ = 0");
      const std::int64_t own = s_.kv_layout().shard_length(r);
      fill(r, "dkv0", 0, to_size(2 * p_.shape.batch * own * p_.shape.heads_kv * p_.shape.head_dim), 0.0f,
           "dK/dV of the own block = 0");
      for (const Segment& g : s_.q_layout().segments(r)) delta(r, g);
      packed[to_size(r)] = record(r, PlanStream::Compute, -1, "own K/V packed");
    }
    const auto N = to_size(n_);
    std::vector<std::vector<int>> arrived(N, std::vector<int>(N + 1, -1));
    std::vector<std::vector<int>> done(N, std::vector<int>(N + 1, -1));
    std::vector<std::vector<int>> dkv_arrived(N, std::vector<int>(N + 1, -1));
    for (int step = 0; step < n_; ++step) {
      if (step + 1 < n_) kv_shift(step, packed, done, arrived, /*ordered=*/true);
      for (int r = 0; r < n_; ++r) {
        const StepWork w = s_.work(step, r);
        if (w.idle()) continue;  // the block and its dK/dV accumulator only pass through
        if (step > 0) wait(r, PlanStream::Compute, arrived[to_size(r)][to_size(step)], step, "K/V block arrived");
        {
          // Step 0 accumulates straight into the own block's dK/dV; later steps compute into a
          // scratch block while the travelling accumulator is still on its way, then add.
          const std::string target = step == 0 ? "dkv0" : "dkv_scratch";
          const std::size_t block = to_size(2 * p_.shape.batch * s_.kv_layout().shard_length(w.kv_owner) *
                                            p_.shape.heads_kv * p_.shape.head_dim);
          if (step > 0) fill(r, "dkv_scratch", 0, block, 0.0f, "dK/dV scratch = 0", step);
          for (const PairWork& pw : w.pairs) {
            if (pw.mask == MaskClass::Skip) continue;
            backward_pair(r, step, w.kv_owner, pw, target);
          }
          if (step > 0) {
            wait(r, PlanStream::Compute, dkv_arrived[to_size(r)][to_size(step)], step, "dK/dV accumulator arrived");
            PlanOp add = op(OpKind::Add, r, PlanStream::Compute, step, "dK/dV += scratch");
            add.dst = region(r, dkv_name(step), 0, block * 4);
            add.src = region(r, "dkv_scratch", 0, block * 4);
            add.n = block;
            push(std::move(add));
          }
        }
        done[to_size(r)][to_size(step)] = record(r, PlanStream::Compute, step, "step done: K/V free, dK/dV ready");
      }
      if (n_ > 1) dkv_shift(step, done, dkv_arrived);  // after the last step: the hop home
    }
    for (int r = 0; r < n_; ++r) finish_backward(r, dkv_arrived[to_size(r)][N]);
    return std::move(p_);
  }

 private:
  // ---- sizes and regions -----------------------------------------------------------------------
  std::size_t q_elems(int r) const {
    return to_size(p_.shape.batch * s_.q_layout().shard_length(r) * p_.shape.heads_q * p_.shape.head_dim);
  }
  std::size_t lse_elems(int r) const {
    return to_size(p_.shape.batch * p_.shape.heads_q * s_.q_layout().shard_length(r));
  }
  std::size_t kv_elems(int r) const {
    return to_size(p_.shape.batch * s_.kv_layout().shard_length(r) * p_.shape.heads_kv * p_.shape.head_dim);
  }
  std::size_t max_block_elems() const {
    return to_size(2 * p_.shape.batch * s_.kv_layout().max_shard_length() * p_.shape.heads_kv * p_.shape.head_dim);
  }
  // Whether rank r's (B, L, H, D) shard is already segment-major: one batch entry or one segment.
  bool rows_alias(const SequenceLayout& l, int r) const {
    return p_.shape.batch == 1 || l.segments(r).size() == 1;
  }
  // The same for a (B, H, L) LSE: one segment, or a single (b, h) row.
  bool lse_alias(int r) const {
    return s_.q_layout().segments(r).size() == 1 || p_.shape.batch * p_.shape.heads_q == 1;
  }

  void add_buffer(int r, std::string name, std::size_t bytes, bool user) {
    p_.buffers.push_back({r, std::move(name), bytes, user});
  }
  // The name of the buffer that holds the segment-major form of a user tensor.
  static std::string sm(const std::string& user, const std::string& internal, bool alias) {
    return alias ? user : internal;
  }
  Region region(int r, const std::string& name, std::size_t offset, std::size_t bytes) const {
    const int b = p_.buffer(r, name);
    return {b, offset, bytes};
  }
  std::string kv_name(int step) const { return step % 2 == 0 ? "kv0" : "kv1"; }
  // The running O, LSE and dQ live in the caller's buffers when those are already in the plan's
  // (segment-major, float32) form: no extra memory, no copy at the end.
  bool o_in_place(int r) const { return p_.output_bytes == 4 && rows_alias(s_.q_layout(), r); }
  std::string o_acc(int r) const { return o_in_place(r) ? "out" : "o_acc"; }
  std::string lse_acc(int r) const { return lse_alias(r) ? "lse" : "lse_acc"; }
  std::string dq_acc(int r) const { return rows_alias(s_.q_layout(), r) ? "dq" : "dq_acc"; }
  std::string dkv_name(int step) const { return step % 2 == 0 ? "dkv0" : "dkv1"; }

  // Region of segment g's rows inside a segment-major (B, L, H, D) buffer (base offset bytes).
  Region seg_rows(int r, const std::string& name, std::size_t base, const Segment& g, std::int64_t heads,
                  std::size_t elem) const {
    const std::size_t per_row = to_size(heads * p_.shape.head_dim) * elem;
    return region(r, name, base + to_size(p_.shape.batch * g.local_begin) * per_row,
                  to_size(p_.shape.batch * g.length) * per_row);
  }
  Region seg_lse(int r, const std::string& name, const Segment& g) const {
    return region(r, name, to_size(p_.shape.batch * p_.shape.heads_q * g.local_begin) * 4,
                  to_size(p_.shape.batch * p_.shape.heads_q * g.length) * 4);
  }
  // Where K (which = 0) or V (which = 1) of owner o's segment g lies in a packed block buffer.
  Region block_rows(int r, const std::string& name, int owner, const Segment& g, int which, std::size_t elem) const {
    const std::size_t half = kv_elems(owner) * elem;
    return seg_rows(r, name, which == 0 ? 0 : half, g, p_.shape.heads_kv, elem);
  }
  Region whole_block(int r, const std::string& name, int owner, std::size_t elem) const {
    return region(r, name, 0, 2 * kv_elems(owner) * elem);
  }
  const Segment& kv_segment(int owner, int index) const {
    return s_.kv_layout().segments(owner).at(to_size(index));
  }
  const Segment& q_segment(int r, int index) const { return s_.q_layout().segments(r).at(to_size(index)); }

  // ---- buffers ---------------------------------------------------------------------------------
  void declare_common(int r) {
    const std::size_t q_bytes = q_elems(r) * ib_;
    const std::size_t kv_bytes = kv_elems(r) * ib_;
    add_buffer(r, "q", q_bytes, true);
    add_buffer(r, "k", kv_bytes, true);
    add_buffer(r, "v", kv_bytes, true);
    if (!rows_alias(s_.q_layout(), r)) add_buffer(r, "q_sm", q_bytes, false);
    add_buffer(r, "kv0", max_block_elems() * ib_, false);
    if (n_ > 1) add_buffer(r, "kv1", max_block_elems() * ib_, false);
  }
  void declare_forward_buffers(int r) {
    declare_common(r);
    add_buffer(r, "out", q_elems(r) * to_size(p_.output_bytes), true);
    add_buffer(r, "lse", lse_elems(r) * 4, true);
    if (!o_in_place(r)) add_buffer(r, "o_acc", q_elems(r) * 4, false);
    if (!lse_alias(r)) add_buffer(r, "lse_acc", lse_elems(r) * 4, false);
    // One pair's partial at a time: the kernels of a rank run in order on its compute stream, so
    // the next pair's forward writes the partial only after the merge of the last one read it.
    // Only segments with a second pair need one (the first writes the accumulator).
    std::int64_t longest = 0;
    const auto& segs = s_.q_layout().segments(r);
    for (std::size_t i = 0; i < segs.size(); ++i) {
      if (pairs_[to_size(r)][i] >= 2) longest = std::max(longest, segs[i].length);
    }
    if (longest == 0) return;
    const auto part_rows = to_size(p_.shape.batch * longest);
    add_buffer(r, "o_part", part_rows * to_size(p_.shape.heads_q * p_.shape.head_dim) * 4, false);
    add_buffer(r, "lse_part", part_rows * to_size(p_.shape.heads_q) * 4, false);
  }
  void declare_backward_buffers(int r) {
    declare_common(r);
    const bool alias = rows_alias(s_.q_layout(), r);
    add_buffer(r, "out", q_elems(r) * ib_, true);
    add_buffer(r, "dout", q_elems(r) * ib_, true);
    add_buffer(r, "lse", lse_elems(r) * 4, true);
    add_buffer(r, "dq", q_elems(r) * 4, true);
    add_buffer(r, "dk", kv_elems(r) * 4, true);
    add_buffer(r, "dv", kv_elems(r) * 4, true);
    if (!alias) {
      add_buffer(r, "out_sm", q_elems(r) * ib_, false);
      add_buffer(r, "dout_sm", q_elems(r) * ib_, false);
    }
    if (!lse_alias(r)) add_buffer(r, "lse_sm", lse_elems(r) * 4, false);
    add_buffer(r, "delta", lse_elems(r) * 4, false);
    if (!alias) add_buffer(r, "dq_acc", q_elems(r) * 4, false);
    add_buffer(r, "dkv0", max_block_elems() * 4, false);
    if (n_ > 1) add_buffer(r, "dkv1", max_block_elems() * 4, false);
    if (n_ > 1) add_buffer(r, "dkv_scratch", max_block_elems() * 4, false);
  }

  // ---- operations ------------------------------------------------------------------------------
  PlanOp op(OpKind kind, int r, PlanStream stream, int step, std::string label) const {
    PlanOp o;
    o.kind = kind;
    o.rank = r;
    o.stream = stream;
    o.step = step;
    o.label = std::move(label);
    return o;
  }
  void push(PlanOp o) { p_.ops.push_back(std::move(o)); }
  int record(int r, PlanStream stream, int step, std::string label) {
    PlanOp o = op(OpKind::Record, r, stream, step, std::move(label));
    o.event = p_.events[to_size(r)]++;
    const int e = o.event;
    push(std::move(o));
    return e;
  }
  void wait(int r, PlanStream stream, int event, int step, std::string label) {
    PlanOp o = op(OpKind::Wait, r, stream, step, std::move(label));
    o.event = event;
    push(std::move(o));
  }
  void fill_region(int r, Region dst, float value, std::string label) {
    PlanOp o = op(OpKind::Fill, r, PlanStream::Compute, -1, std::move(label));
    o.dst = dst;
    o.n = dst.bytes / 4;
    o.value = value;
    push(std::move(o));
  }
  void fill(int r, const std::string& name, std::size_t first, std::size_t n, float value, std::string label,
            int step = -1) {
    PlanOp o = op(OpKind::Fill, r, PlanStream::Compute, step, std::move(label));
    o.dst = region(r, name, first * 4, n * 4);
    o.n = n;
    o.value = value;
    push(std::move(o));
  }
  // A 2-D copy of `rows` rows of `width` bytes.
  void copy2d(int r, int step, std::string label, Region src, std::size_t src_pitch, Region dst,
              std::size_t dst_pitch, std::size_t width, std::size_t rows) {
    PlanOp o = op(OpKind::Copy2D, r, PlanStream::Compute, step, std::move(label));
    o.src = src;
    o.dst = dst;
    o.src_pitch = src_pitch;
    o.dst_pitch = dst_pitch;
    o.width = width;
    o.rows = rows;
    push(std::move(o));
  }
  // Segment g of a user (B, L, H, D) tensor <-> its segment-major place (base offset in `sm`).
  void rows_copy(int r, const std::string& user, const std::string& smb, std::size_t sm_base, const Segment& g,
                 std::int64_t heads, std::size_t elem, std::int64_t length, bool to_user, std::string label) {
    const std::size_t row = to_size(heads * p_.shape.head_dim) * elem;
    const std::size_t b = to_size(p_.shape.batch);
    const std::size_t user_pitch = to_size(length) * row, sm_pitch = to_size(g.length) * row;
    const Region u = region(r, user, to_size(g.local_begin) * row, (b - 1) * user_pitch + sm_pitch);
    const Region s = region(r, smb, sm_base + b * to_size(g.local_begin) * row, b * sm_pitch);
    if (to_user) {
      copy2d(r, -1, std::move(label), s, sm_pitch, u, user_pitch, sm_pitch, b);
    } else {
      copy2d(r, -1, std::move(label), u, user_pitch, s, sm_pitch, sm_pitch, b);
    }
  }
  void gather_rows(int r, const std::string& user, const std::string& internal, std::int64_t heads,
                   std::size_t elem, const SequenceLayout& l) {
    if (rows_alias(l, r)) return;
    for (const Segment& g : l.segments(r)) {
      rows_copy(r, user, internal, 0, g, heads, elem, l.shard_length(r), false, user + " -> segment-major");
    }
  }
  // LSE (B, H_q, L) <-> segment-major (per segment (B, H_q, L_g)): B*H_q rows per segment.
  void gather_lse(int r, const std::string& user, const std::string& internal, bool to_user) {
    if (lse_alias(r)) return;
    const std::size_t rows = to_size(p_.shape.batch * p_.shape.heads_q);
    const std::size_t length = to_size(s_.q_layout().shard_length(r));
    for (const Segment& g : s_.q_layout().segments(r)) {
      const std::size_t width = to_size(g.length) * 4;
      const Region u = region(r, user, to_size(g.local_begin) * 4, (rows - 1) * length * 4 + width);
      const Region s = seg_lse(r, internal, g);
      if (to_user) {
        copy2d(r, -1, "LSE segment-major -> " + user, s, width, u, length * 4, width, rows);
      } else {
        copy2d(r, -1, user + " -> segment-major", u, length * 4, s, width, width, rows);
      }
    }
  }
  // The rank's own K and V into kv0, packed [K | V], each segment-major.
  void pack_block(int r) {
    const std::int64_t len = s_.kv_layout().shard_length(r);
    const std::size_t half = kv_elems(r) * ib_;
    for (const Segment& g : s_.kv_layout().segments(r)) {
      rows_copy(r, "k", "kv0", 0, g, p_.shape.heads_kv, ib_, len, false, "K -> block");
      rows_copy(r, "v", "kv0", half, g, p_.shape.heads_kv, ib_, len, false, "V -> block");
    }
  }
  // The operands of one (query segment, key segment) pair.
  void pair_operands(PlanOp& o, int r, int step, int owner, const PairWork& pw) {
    const Segment& qg = q_segment(r, pw.q_segment);
    const Segment& kg = kv_segment(owner, pw.kv_segment);
    require(pw.q_local == qg.local_begin && pw.q_rows == qg.length && pw.k_local == kg.local_begin &&
                pw.k_rows == kg.length,
            "ring plan: a pair does not cover whole segments");
    o.shape = {p_.shape.batch, pw.q_rows, pw.k_rows, p_.shape.heads_q, p_.shape.heads_kv, p_.shape.head_dim};
    o.q_pos = pw.q;
    o.k_pos = pw.k;
    o.causal = pw.mask != MaskClass::Full && p_.causal;
    const std::string q_buf = sm("q", "q_sm", rows_alias(s_.q_layout(), r));
    o.q = seg_rows(r, q_buf, 0, qg, p_.shape.heads_q, ib_);
    o.k = block_rows(r, kv_name(step), owner, kg, 0, ib_);
    o.v = block_rows(r, kv_name(step), owner, kg, 1, ib_);
  }
  void forward_pair(int r, int step, int owner, const PairWork& pw) {
    std::ostringstream label;
    label << "forward q" << pw.q_segment << " x block " << owner << ":k" << pw.kv_segment << " ("
          << to_string(pw.mask) << ")";
    PlanOp f = op(OpKind::Forward, r, PlanStream::Compute, step, label.str());
    pair_operands(f, r, step, owner, pw);
    const Segment& qg = q_segment(r, pw.q_segment);
    if (first_pair_[to_size(r)][to_size(pw.q_segment)] == std::pair{step, pw.kv_segment}) {  // first: no merge
      f.label += " -> O_acc";
      f.out = seg_rows(r, o_acc(r), 0, qg, p_.shape.heads_q, 4);
      f.lse = seg_lse(r, lse_acc(r), qg);
      push(std::move(f));
      return;
    }
    const std::size_t rows = to_size(p_.shape.batch * qg.length);
    f.out = region(r, "o_part", 0, rows * to_size(p_.shape.heads_q * p_.shape.head_dim) * 4);
    f.lse = region(r, "lse_part", 0, rows * to_size(p_.shape.heads_q) * 4);
    PlanOp m = op(OpKind::Merge, r, PlanStream::Compute, step, "merge q" + std::to_string(pw.q_segment));
    m.shape = f.shape;
    m.out = f.out;
    m.lse = f.lse;
    m.acc_out = seg_rows(r, o_acc(r), 0, qg, p_.shape.heads_q, 4);
    m.acc_lse = seg_lse(r, lse_acc(r), qg);
    push(std::move(f));
    push(std::move(m));
  }
  void delta(int r, const Segment& g) {
    const bool alias = rows_alias(s_.q_layout(), r);
    PlanOp d = op(OpKind::Delta, r, PlanStream::Compute, -1, "D = rowsum(dO * O)");
    d.shape = {p_.shape.batch, g.length, g.length, p_.shape.heads_q, p_.shape.heads_kv, p_.shape.head_dim};
    d.out = seg_rows(r, sm("out", "out_sm", alias), 0, g, p_.shape.heads_q, ib_);
    d.dout = seg_rows(r, sm("dout", "dout_sm", alias), 0, g, p_.shape.heads_q, ib_);
    d.delta = seg_lse(r, "delta", g);
    push(std::move(d));
  }
  void backward_pair(int r, int step, int owner, const PairWork& pw, const std::string& target) {
    std::ostringstream label;
    label << "backward q" << pw.q_segment << " x block " << owner << ":k" << pw.kv_segment << " ("
          << to_string(pw.mask) << ")";
    PlanOp b = op(OpKind::Backward, r, PlanStream::Compute, step, label.str());
    pair_operands(b, r, step, owner, pw);
    const bool alias = rows_alias(s_.q_layout(), r);
    const Segment& qg = q_segment(r, pw.q_segment);
    const Segment& kg = kv_segment(owner, pw.kv_segment);
    b.out = seg_rows(r, sm("out", "out_sm", alias), 0, qg, p_.shape.heads_q, ib_);
    b.dout = seg_rows(r, sm("dout", "dout_sm", alias), 0, qg, p_.shape.heads_q, ib_);
    b.lse = seg_lse(r, sm("lse", "lse_sm", lse_alias(r)), qg);
    b.delta = seg_lse(r, "delta", qg);
    b.dq = seg_rows(r, dq_acc(r), 0, qg, p_.shape.heads_q, 4);
    b.dk = block_rows(r, target, owner, kg, 0, 4);
    b.dv = block_rows(r, target, owner, kg, 1, 4);
    push(std::move(b));
  }
  // K/V shift at `step`: every rank sends the block it holds to rank + 1, into the other buffer.
  // In the backward the dK/dV shift of step - 1 already waited for the kernels of step - 1 on
  // the same stream (`ordered`), so the K/V shift needs no wait of its own.
  void kv_shift(int step, const std::vector<int>& packed, const std::vector<std::vector<int>>& done,
                std::vector<std::vector<int>>& arrived, bool ordered = false) {
    for (int r = 0; r < n_; ++r) {
      if (step == 0) {
        wait(r, PlanStream::Comm, packed[to_size(r)], step, "own K/V packed");
      } else if (!ordered && done[to_size(r)][to_size(step - 1)] >= 0) {
        // the buffer we receive into was read by the kernels of step - 1 (if it had any)
        wait(r, PlanStream::Comm, done[to_size(r)][to_size(step - 1)], step, "K/V buffer free");
      }
    }
    PlanOp sh = op(OpKind::Shift, -1, PlanStream::Comm, step, "K/V shift");
    sh.shift.resize(to_size(n_));
    for (int r = 0; r < n_; ++r) {
      const int owner = RingSchedule::kv_owner(r, step, n_);
      const int next = RingSchedule::next_rank(r, n_);
      sh.shift[to_size(r)].push_back({whole_block(r, kv_name(step), owner, ib_),
                                      whole_block(next, kv_name(step + 1), owner, ib_)});
    }
    push(std::move(sh));
    for (int r = 0; r < n_; ++r) {
      arrived[to_size(r)][to_size(step + 1)] = record(r, PlanStream::Comm, step, "K/V block arrived");
    }
  }
  // dK/dV shift after `step`: the accumulator of the block each rank holds moves to rank + 1.
  void dkv_shift(int step, const std::vector<std::vector<int>>& done, std::vector<std::vector<int>>& arrived) {
    for (int r = 0; r < n_; ++r) {  // an idle step left the accumulator as it arrived, on this stream
      if (done[to_size(r)][to_size(step)] >= 0) wait(r, PlanStream::Comm, done[to_size(r)][to_size(step)], step, "dK/dV ready");
    }
    PlanOp sh = op(OpKind::Shift, -1, PlanStream::Comm, step, step + 1 == n_ ? "dK/dV home" : "dK/dV shift");
    sh.shift.resize(to_size(n_));
    for (int r = 0; r < n_; ++r) {
      const int owner = RingSchedule::kv_owner(r, step, n_);
      const int next = RingSchedule::next_rank(r, n_);
      sh.shift[to_size(r)].push_back({whole_block(r, dkv_name(step), owner, 4),
                                      whole_block(next, dkv_name(step + 1), owner, 4)});
    }
    push(std::move(sh));
    for (int r = 0; r < n_; ++r) {
      arrived[to_size(r)][to_size(step + 1)] = record(r, PlanStream::Comm, step, "dK/dV arrived");
    }
  }
  void finish_forward(int r) {
    const std::int64_t len = s_.q_layout().shard_length(r);
    const std::size_t row = to_size(p_.shape.heads_q * p_.shape.head_dim);
    const std::size_t b = to_size(p_.shape.batch);
    for (const Segment& g : s_.q_layout().segments(r)) {
      if (o_in_place(r)) break;
      // O_acc (float32, segment-major) -> the caller's O (its type, its order)
      const std::size_t user_pitch = to_size(len) * row, sm_pitch = to_size(g.length) * row;
      const std::size_t ob = to_size(p_.output_bytes);
      const Region src = region(r, "o_acc", b * to_size(g.local_begin) * row * 4, b * sm_pitch * 4);
      const Region dst = region(r, "out", to_size(g.local_begin) * row * ob, ((b - 1) * user_pitch + sm_pitch) * ob);
      if (p_.output_bytes == 4) {
        copy2d(r, -1, "O -> out", src, sm_pitch * 4, dst, user_pitch * 4, sm_pitch * 4, b);
      } else {
        PlanOp c = op(OpKind::Convert, r, PlanStream::Compute, -1, "O -> out (input type)");
        c.src = src;
        c.dst = dst;
        c.src_pitch = sm_pitch;
        c.dst_pitch = user_pitch;
        c.width = sm_pitch;
        c.rows = b;
        push(std::move(c));
      }
    }
    gather_lse(r, "lse", "lse_acc", /*to_user=*/true);  // nothing to do when the LSE is in place
  }
  void finish_backward(int r, int dkv_home) {
    const std::int64_t q_len = s_.q_layout().shard_length(r);
    const std::int64_t k_len = s_.kv_layout().shard_length(r);
    for (const Segment& g : s_.q_layout().segments(r)) {
      if (rows_alias(s_.q_layout(), r)) break;  // dQ accumulated in place
      rows_copy(r, "dq", "dq_acc", 0, g, p_.shape.heads_q, 4, q_len, true, "dQ -> dq");
    }
    if (n_ > 1) wait(r, PlanStream::Compute, dkv_home, -1, "dK/dV home");
    const std::string home = n_ == 1 ? "dkv0" : dkv_name(n_);  // one rank: never shifted
    const std::size_t half = kv_elems(r) * 4;
    for (const Segment& g : s_.kv_layout().segments(r)) {
      rows_copy(r, "dk", home, 0, g, p_.shape.heads_kv, 4, k_len, true, "dK -> dk");
      rows_copy(r, "dv", home, half, g, p_.shape.heads_kv, 4, k_len, true, "dV -> dv");
    }
  }

  const RingSchedule& s_;
  int n_;
  std::size_t ib_ = 2;
  // Forward: per rank and query segment, the (step, key segment) of its first launched pair.
  std::vector<std::vector<std::pair<int, int>>> first_pair_;
  // Forward: per rank and query segment, how many pairs are launched.
  std::vector<std::vector<int>> pairs_;
  RingPlan p_;
};

// ---- the happens-before graph ------------------------------------------------------------------

struct StreamKey {
  int rank;
  PlanStream stream;
  bool operator<(const StreamKey& o) const {
    return rank != o.rank ? rank < o.rank : static_cast<int>(stream) < static_cast<int>(o.stream);
  }
};

void check_region(const RingPlan& plan, const Region& r, std::size_t op_index, const char* what) {
  require(r.buffer >= 0 && static_cast<std::size_t>(r.buffer) < plan.buffers.size(), "ring plan: operation ",
          op_index, " (", what, ") names no buffer");
  const PlanBuffer& b = plan.buffers[static_cast<std::size_t>(r.buffer)];
  require(r.offset + r.bytes <= b.bytes, "ring plan: operation ", op_index, " (", what, ") reaches byte ",
          r.offset + r.bytes, " of ", b.name, " on rank ", b.rank, ", which has ", b.bytes);
}

bool overlap(const Region& a, const Region& b) {
  return a.buffer == b.buffer && a.bytes > 0 && b.bytes > 0 && a.offset < b.offset + b.bytes &&
         b.offset < a.offset + a.bytes;
}

}  // namespace

RingPlan plan_forward(const RingSchedule& schedule, const AttentionShape& shape, const PlanOptions& options) {
  return Builder(schedule, shape, options, false).forward();
}

RingPlan plan_backward(const RingSchedule& schedule, const AttentionShape& shape, const PlanOptions& options) {
  return Builder(schedule, shape, options, true).backward();
}

std::vector<Access> accesses(const RingPlan& plan, const PlanOp& op) {
  std::vector<Access> a;
  auto rd = [&](const Region& r) {
    if (r.buffer >= 0) a.push_back({op.rank, r, false});
  };
  auto wr = [&](const Region& r) {
    if (r.buffer >= 0) a.push_back({op.rank, r, true});
  };
  switch (op.kind) {
    case OpKind::Copy2D:
    case OpKind::Convert: rd(op.src); wr(op.dst); break;
    case OpKind::Fill: wr(op.dst); break;
    case OpKind::Forward: rd(op.q); rd(op.k); rd(op.v); wr(op.out); wr(op.lse); break;
    case OpKind::Merge: rd(op.out); rd(op.lse); rd(op.acc_out); rd(op.acc_lse); wr(op.acc_out); wr(op.acc_lse); break;
    case OpKind::Delta: rd(op.out); rd(op.dout); wr(op.delta); break;
    case OpKind::Backward:
      rd(op.q); rd(op.k); rd(op.v); rd(op.out); rd(op.dout); rd(op.lse); rd(op.delta);
      rd(op.dq); rd(op.dk); rd(op.dv); wr(op.dq); wr(op.dk); wr(op.dv);
      break;
    case OpKind::Add: rd(op.src); rd(op.dst); wr(op.dst); break;
    case OpKind::Record:
    case OpKind::Wait: break;
    case OpKind::Shift:
      for (std::size_t r = 0; r < op.shift.size(); ++r) {
        const int recv = RingSchedule::next_rank(static_cast<int>(r), plan.ranks);
        for (const ShiftPart& part : op.shift[r]) {
          a.push_back({recv, part.src, false});
          a.push_back({recv, part.dst_next, true});
        }
      }
      break;
  }
  return a;
}

PlanGraph plan_graph(const RingPlan& plan) {
  PlanGraph g;
  std::map<StreamKey, std::size_t> last;               // tail node of each stream
  std::map<std::pair<int, int>, std::size_t> recorded;  // (rank, event) -> node of its latest record
  auto add_node = [&](PlanNode n, std::vector<std::size_t> preds) {
    g.nodes.push_back(n);
    g.preds.push_back(std::move(preds));
    return g.nodes.size() - 1;
  };
  auto tail = [&](int rank, PlanStream s, std::vector<std::size_t>& preds) {
    const auto it = last.find({rank, s});
    if (it != last.end()) preds.push_back(it->second);
  };
  for (std::size_t i = 0; i < plan.ops.size(); ++i) {
    const PlanOp& op = plan.ops[i];
    for (const Access& a : accesses(plan, op)) check_region(plan, a.region, i, to_string(op.kind));
    if (op.kind == OpKind::Shift) {
      require(static_cast<int>(op.shift.size()) == plan.ranks, "ring plan: shift ", i, " has parts for ",
              op.shift.size(), " ranks, not ", plan.ranks);
      std::vector<std::size_t> transfer(op.shift.size());
      for (int recv = 0; recv < plan.ranks; ++recv) {
        const int send = RingSchedule::prev_rank(recv, plan.ranks);
        for (const ShiftPart& part : op.shift[static_cast<std::size_t>(send)]) {
          require(part.src.bytes == part.dst_next.bytes, "ring plan: shift ", i, " sends ", part.src.bytes,
                  " bytes from rank ", send, " into ", part.dst_next.bytes);
          require(plan.buffers[static_cast<std::size_t>(part.src.buffer)].rank == send &&
                      plan.buffers[static_cast<std::size_t>(part.dst_next.buffer)].rank == recv,
                  "ring plan: shift ", i, " part of rank ", send, " names another rank's buffer");
        }
        std::vector<std::size_t> preds;
        tail(recv, PlanStream::Comm, preds);
        tail(send, PlanStream::Comm, preds);
        transfer[static_cast<std::size_t>(recv)] = add_node({i, recv, true}, std::move(preds));
      }
      for (int r = 0; r < plan.ranks; ++r) {  // later Comm work of r follows its receive and its send
        const std::size_t done = add_node(
            {i, r, false}, {transfer[static_cast<std::size_t>(r)],
                            transfer[static_cast<std::size_t>(RingSchedule::next_rank(r, plan.ranks))]});
        last[{r, PlanStream::Comm}] = done;
      }
      continue;
    }
    require(op.rank >= 0 && op.rank < plan.ranks, "ring plan: operation ", i, " has rank ", op.rank);
    std::vector<std::size_t> preds;
    tail(op.rank, op.stream, preds);
    if (op.kind == OpKind::Wait) {
      const auto it = recorded.find({op.rank, op.event});
      require(it != recorded.end(), "ring plan: operation ", i, " (", op.label, ") on rank ", op.rank,
              " waits for event ", op.event, ", which was not recorded before it");
      preds.push_back(it->second);
    }
    const std::size_t node = add_node({i, op.rank, false}, std::move(preds));
    last[{op.rank, op.stream}] = node;
    if (op.kind == OpKind::Record) {
      require(op.event >= 0 && op.event < plan.events.at(static_cast<std::size_t>(op.rank)), "ring plan: event ",
              op.event, " of rank ", op.rank, " was not declared");
      recorded[{op.rank, op.event}] = node;
    }
  }
  return g;
}

std::vector<Hazard> check_hazards(const RingPlan& plan) {
  const PlanGraph g = plan_graph(plan);
  const std::size_t n = g.nodes.size();
  const std::size_t words = (n + 63) / 64;
  // reach[v]: every node that happens before v (nodes are created in a topological order).
  std::vector<u64> reach(n * words, 0);
  for (std::size_t v = 0; v < n; ++v) {
    u64* rv = &reach[v * words];
    for (std::size_t p : g.preds[v]) {
      const u64* rp = &reach[p * words];
      for (std::size_t w = 0; w < words; ++w) rv[w] |= rp[w];
      rv[p / 64] |= u64{1} << (p % 64);
    }
  }
  auto before = [&](std::size_t a, std::size_t b) { return (reach[b * words + a / 64] >> (a % 64)) & 1U; };

  struct Touch {
    std::size_t node;
    Region region;
    bool write;
  };
  std::map<int, std::vector<Touch>> by_buffer;
  for (std::size_t v = 0; v < n; ++v) {
    const PlanNode& node = g.nodes[v];
    const PlanOp& op = plan.ops[node.op];
    if (op.kind == OpKind::Shift) {
      if (!node.transfer) continue;  // the completion node touches nothing
      const int send = RingSchedule::prev_rank(node.rank, plan.ranks);
      for (const ShiftPart& part : op.shift[static_cast<std::size_t>(send)]) {
        by_buffer[part.src.buffer].push_back({v, part.src, false});
        by_buffer[part.dst_next.buffer].push_back({v, part.dst_next, true});
      }
      continue;
    }
    for (const Access& a : accesses(plan, op)) by_buffer[a.region.buffer].push_back({v, a.region, a.write});
  }
  std::vector<Hazard> hazards;
  for (const auto& [buffer, touches] : by_buffer) {
    for (std::size_t x = 0; x < touches.size(); ++x) {
      for (std::size_t y = x + 1; y < touches.size(); ++y) {
        const Touch& a = touches[x];
        const Touch& b = touches[y];
        if (a.node == b.node || (!a.write && !b.write) || !overlap(a.region, b.region)) continue;
        if (before(a.node, b.node) || before(b.node, a.node)) continue;
        const PlanBuffer& buf = plan.buffers[static_cast<std::size_t>(buffer)];
        const PlanOp& oa = plan.ops[g.nodes[a.node].op];
        const PlanOp& ob = plan.ops[g.nodes[b.node].op];
        std::ostringstream msg;
        msg << "race on " << buf.name << " of rank " << buf.rank << ": op " << g.nodes[a.node].op << " ("
            << oa.label << ", rank " << g.nodes[a.node].rank << ", step " << oa.step << ") and op "
            << g.nodes[b.node].op << " (" << ob.label << ", rank " << g.nodes[b.node].rank << ", step " << ob.step
            << ") are unordered";
        hazards.push_back({g.nodes[a.node].op, g.nodes[b.node].op, buffer, msg.str()});
      }
    }
  }
  return hazards;
}

std::string RingPlan::describe() const {
  std::ostringstream out;
  out << (backward ? "backward" : "forward") << " plan: " << ranks << " ranks, " << ops.size() << " operations, "
      << buffers.size() << " buffers\n";
  for (std::size_t i = 0; i < ops.size(); ++i) {
    const PlanOp& op = ops[i];
    out << i << "\t";
    if (op.kind == OpKind::Shift) {
      out << "all ranks\tcomm";
    } else {
      out << "rank " << op.rank << "\t" << (op.stream == PlanStream::Compute ? "compute" : "comm");
    }
    out << "\tstep " << op.step << "\t" << to_string(op.kind);
    if (op.kind == OpKind::Record || op.kind == OpKind::Wait) out << " e" << op.event;
    out << "\t" << op.label << "\n";
  }
  return out.str();
}

}  // namespace ringattn::cuda
