// A RingPlan run on the CPU: each operation with the reference's kernels (block_forward,
// merge_into, block_backward) or plain loops, in an order plan_graph() allows.
#include "ringattn/cuda/ring_plan_cpu.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <random>

#include "ringattn/core/error.hpp"
#include "ringattn/reference/attention.hpp"

namespace ringattn::cuda {
namespace {

class Runner {
 public:
  Runner(const RingPlan& plan, PlanMemory& memory) : plan_(plan), mem_(memory) {}

  void execute(const PlanNode& node) {
    const PlanOp& op = plan_.ops[node.op];
    const AttentionShape& s = op.shape;
    switch (op.kind) {
      case OpKind::Copy2D:
        for (std::size_t r = 0; r < op.rows; ++r) {
          std::memcpy(reinterpret_cast<char*>(at(op.dst)) + r * op.dst_pitch,
                      reinterpret_cast<const char*>(at(op.src)) + r * op.src_pitch, op.width);
        }
        return;
      case OpKind::Convert:  // float32 -> the input type, which is float32 here
        for (std::size_t r = 0; r < op.rows; ++r) {
          std::memcpy(at(op.dst) + r * op.dst_pitch, at(op.src) + r * op.src_pitch, op.width * 4);
        }
        return;
      case OpKind::Fill: std::fill_n(at(op.dst), op.n, op.value); return;
      case OpKind::Add: {
        float* d = at(op.dst);
        const float* x = at(op.src);
        for (std::size_t i = 0; i < op.n; ++i) d[i] += x[i];
        return;
      }
      case OpKind::Forward:
        ref::block_forward<float>(rows(op.q, s.seq_q, s.heads_q, s).as_const(), rows(op.k, s.seq_kv, s.heads_kv, s).as_const(),
                                  rows(op.v, s.seq_kv, s.heads_kv, s).as_const(), args(op),
                                  rows(op.out, s.seq_q, s.heads_q, s), lse(op.lse, s));
        return;
      case OpKind::Merge:
        ref::merge_into<float>(rows(op.acc_out, s.seq_q, s.heads_q, s), lse(op.acc_lse, s),
                               rows(op.out, s.seq_q, s.heads_q, s).as_const(), lse(op.lse, s).as_const());
        return;
      case OpKind::Delta: {
        const auto o = rows(op.out, s.seq_q, s.heads_q, s);
        const auto d = rows(op.dout, s.seq_q, s.heads_q, s);
        const auto delta = lse(op.delta, s);
        for (std::int64_t b = 0; b < s.batch; ++b) {
          for (std::int64_t h = 0; h < s.heads_q; ++h) {
            for (std::int64_t i = 0; i < s.seq_q; ++i) {
              float acc = 0;  // D_i = rowsum(dO_i * O_i)
              for (std::int64_t x = 0; x < s.head_dim; ++x) acc += o.row(b, i, h)[x] * d.row(b, i, h)[x];
              delta.at(b, h, i) = acc;
            }
          }
        }
        return;
      }
      case OpKind::Backward:
        ref::block_backward<float>(
            rows(op.q, s.seq_q, s.heads_q, s).as_const(), rows(op.k, s.seq_kv, s.heads_kv, s).as_const(),
            rows(op.v, s.seq_kv, s.heads_kv, s).as_const(), rows(op.dout, s.seq_q, s.heads_q, s).as_const(),
            lse(op.lse, s).as_const(), lse(op.delta, s).as_const(), args(op), rows(op.dq, s.seq_q, s.heads_q, s),
            rows(op.dk, s.seq_kv, s.heads_kv, s), rows(op.dv, s.seq_kv, s.heads_kv, s));
        return;
      case OpKind::Record:
      case OpKind::Wait: return;
      case OpKind::Shift:
        if (!node.transfer) return;  // the completion half moves nothing
        for (const ShiftPart& p : op.shift[static_cast<std::size_t>(RingSchedule::prev_rank(node.rank, plan_.ranks))]) {
          std::memcpy(at(p.dst_next), at(p.src), p.src.bytes);
        }
        return;
    }
  }

 private:
  float* at(const Region& r) {
    require(r.offset % 4 == 0 && r.bytes % 4 == 0, "ring plan: a region is not made of float32 elements");
    return mem_.at(r.buffer).data() + r.offset / 4;
  }
  // A (B, rows, H, D) view of a region; its size must match.
  SeqView<float> rows(const Region& r, std::int64_t n, std::int64_t heads, const AttentionShape& s) {
    require(r.bytes == static_cast<std::size_t>(s.batch * n * heads * s.head_dim) * 4,
            "ring plan: a tensor region has the wrong size");
    return {at(r), s.batch, n, heads, s.head_dim, n * heads * s.head_dim};
  }
  // A (B, H_q, rows) view of a region.
  LseView<float> lse(const Region& r, const AttentionShape& s) {
    require(r.bytes == static_cast<std::size_t>(s.batch * s.heads_q * s.seq_q) * 4,
            "ring plan: an LSE region has the wrong size");
    return {at(r), s.batch, s.heads_q, s.seq_q, s.heads_q * s.seq_q, s.seq_q};
  }
  ref::KernelArgs args(const PlanOp& op) const {
    ref::KernelArgs a;
    a.qpos = op.q_pos;
    a.kpos = op.k_pos;
    a.causal = op.causal;
    a.scale = plan_.scale;
    a.block_q = 5;  // odd tiles: the reference's tails are exercised too
    a.block_kv = 7;
    return a;
  }

  const RingPlan& plan_;
  PlanMemory& mem_;
};

}  // namespace

PlanMemory::PlanMemory(const RingPlan& plan) : plan_(&plan) {
  require(plan.input_bytes == 4, "a plan runs on the CPU only with float32 inputs (input_bytes = 4), not ",
          plan.input_bytes);
  for (const PlanBuffer& b : plan.buffers) {
    buffers_.emplace_back(b.bytes / 4, std::numeric_limits<float>::quiet_NaN());
  }
}

std::vector<float>& PlanMemory::buffer(int rank, const std::string& name) {
  return buffers_.at(static_cast<std::size_t>(plan_->buffer(rank, name)));
}

std::size_t interpret_plan(const RingPlan& plan, PlanMemory& memory, std::uint32_t seed) {
  const PlanGraph g = plan_graph(plan);
  Runner runner(plan, memory);
  if (seed == 0) {  // nodes are created in issue order, which is one topological order
    for (const PlanNode& n : g.nodes) runner.execute(n);
    return g.nodes.size();
  }
  std::vector<std::vector<std::size_t>> succ(g.nodes.size());
  std::vector<std::size_t> missing(g.nodes.size());
  for (std::size_t v = 0; v < g.nodes.size(); ++v) {
    missing[v] = g.preds[v].size();
    for (std::size_t p : g.preds[v]) succ[p].push_back(v);
  }
  std::vector<std::size_t> ready;
  for (std::size_t v = 0; v < g.nodes.size(); ++v) {
    if (missing[v] == 0) ready.push_back(v);
  }
  std::mt19937 rng(seed);
  std::size_t ran = 0;
  while (!ready.empty()) {
    std::uniform_int_distribution<std::size_t> pick(0, ready.size() - 1);
    const std::size_t i = pick(rng);
    const std::size_t v = ready[i];
    ready[i] = ready.back();
    ready.pop_back();
    runner.execute(g.nodes[v]);
    ++ran;
    for (std::size_t s : succ[v]) {
      if (--missing[s] == 0) ready.push_back(s);
    }
  }
  require(ran == g.nodes.size(), "ring plan: the happens-before graph has a cycle");
  return ran;
}

}  // namespace ringattn::cuda
