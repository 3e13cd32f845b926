// The CUDA ring's plan, checked without a GPU:
//   - every plan (layouts x ranks x causal x GQA x odd lengths, forward and backward) is
//     race-free under the happens-before order CUDA and NCCL guarantee;
//   - every Wait in a plan is needed: dropping any one of them creates a race the checker names
//     (so the checker can fail, and the plan has no synchronization it does not need);
//   - a CPU interpreter runs the plan's operations in random orders allowed by that order, with
//     the reference's kernels on float32 buffers poisoned with NaN, and the outputs match the
//     float64 naive reference;
//   - malformed plans are refused with a one-line error.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/check.hpp"
#include "ringattn/cuda/ring_plan.hpp"
#include "ringattn/cuda/ring_plan_cpu.hpp"
#include "ringattn/reference/attention.hpp"
#include "ringattn/reference/ring.hpp"

namespace ringattn::cuda {
namespace {

struct Case {
  Layout layout;
  int ranks;
  bool causal;
  std::int64_t batch, seq_q, seq_kv, heads_q, heads_kv, dim;
};

std::string case_name(const Case& c) {
  std::string s = std::string(to_string(c.layout)) + "_N" + std::to_string(c.ranks) + (c.causal ? "_causal" : "_full") +
                  "_B" + std::to_string(c.batch) + "_S" + std::to_string(c.seq_q);
  if (c.seq_kv != c.seq_q) s += "x" + std::to_string(c.seq_kv);
  return s + "_H" + std::to_string(c.heads_q) + "x" + std::to_string(c.heads_kv) + "_D" + std::to_string(c.dim);
}

AttentionShape shape_of(const Case& c) { return {c.batch, c.seq_q, c.seq_kv, c.heads_q, c.heads_kv, c.dim}; }

RingSchedule schedule_of(const Case& c) {
  return RingSchedule::for_shape(shape_of(c), c.layout, c.ranks, c.causal);
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (Layout layout : all_layouts()) {
    for (int n : {1, 2, 3, 4, 8}) {
      for (bool causal : {false, true}) {
        cases.push_back({layout, n, causal, 1, 2 * n * 3 + 1, 2 * n * 3 + 1, 2, 2, 8});  // odd, uneven shards
        cases.push_back({layout, n, causal, 2, 2 * n * 2, 2 * n * 2, 4, 2, 4});          // B = 2, GQA
      }
      cases.push_back({layout, n, true, 2, 2 * n * 2 + 3, 2 * n * 3 + 1, 3, 1, 4});      // S_kv > S_q, MQA
      cases.push_back({layout, n, true, 1, 2 * n * 4 + 1, 2 * n * 2, 2, 1, 4});          // S_q > S_kv: early rows see no key
    }
  }
  return cases;
}

template <class T>
void put(std::vector<float>& dst, const Tensor<T>& t) {
  ASSERT_EQ(dst.size(), static_cast<std::size_t>(t.size()));
  for (std::int64_t i = 0; i < t.size(); ++i) dst[static_cast<std::size_t>(i)] = static_cast<float>(t[i]);
}
Tensor<double> get(const std::vector<float>& src, std::vector<std::int64_t> shape) {
  Tensor<double> t(std::move(shape));
  EXPECT_EQ(src.size(), static_cast<std::size_t>(t.size()));
  for (std::int64_t i = 0; i < t.size(); ++i) t[i] = src[static_cast<std::size_t>(i)];
  return t;
}

Tensor<double> random_tensor(std::vector<std::int64_t> shape, std::mt19937& rng) {
  Tensor<double> t(std::move(shape));
  std::normal_distribution<double> nd;
  for (std::int64_t i = 0; i < t.size(); ++i) t[i] = static_cast<float>(nd(rng));  // float32-representable
  return t;
}

double rel_err(const Tensor<double>& got, const Tensor<double>& want) {
  double num = 0, den = 0;
  for (std::int64_t i = 0; i < want.size(); ++i) {
    if (std::isinf(want[i]) && got[i] == want[i]) continue;
    const double e = got[i] - want[i];
    num += std::isnan(e) ? std::numeric_limits<double>::infinity() : e * e;
    den += want[i] * want[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

class RingPlanTest : public ::testing::TestWithParam<Case> {};

TEST_P(RingPlanTest, ForwardAndBackwardPlansAreRaceFree) {
  const Case c = GetParam();
  const RingSchedule schedule = schedule_of(c);
  for (int bytes : {2, 4}) {
    PlanOptions o;
    o.input_bytes = bytes;
    o.output_bytes = bytes;
    const RingPlan f = plan_forward(schedule, shape_of(c), o);
    for (const Hazard& h : check_hazards(f)) ADD_FAILURE() << "forward: " << h.message;
    const RingPlan b = plan_backward(schedule, shape_of(c), o);
    for (const Hazard& h : check_hazards(b)) ADD_FAILURE() << "backward: " << h.message;
  }
}

TEST_P(RingPlanTest, InterpretedInRandomOrdersMatchesTheReference) {
  const Case c = GetParam();
  const AttentionShape sh = shape_of(c);
  const RingSchedule schedule = schedule_of(c);
  std::mt19937 rng(static_cast<std::uint32_t>(std::hash<std::string>{}(case_name(c))));
  const Tensor<double> q = random_tensor({sh.batch, sh.seq_q, sh.heads_q, sh.head_dim}, rng);
  const Tensor<double> k = random_tensor({sh.batch, sh.seq_kv, sh.heads_kv, sh.head_dim}, rng);
  const Tensor<double> v = random_tensor({sh.batch, sh.seq_kv, sh.heads_kv, sh.head_dim}, rng);
  const Tensor<double> dout = random_tensor({sh.batch, sh.seq_q, sh.heads_q, sh.head_dim}, rng);
  ref::AttentionOptions ao;
  ao.causal = c.causal;
  const auto want = ref::naive_forward(q, k, v, ao);
  const auto want_g = ref::naive_backward(q, k, v, want.out, want.lse, dout, ao);

  PlanOptions po;
  po.input_bytes = 4;
  po.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(sh.head_dim)));
  const auto& ql = schedule.q_layout();
  const auto& kl = schedule.kv_layout();
  for (std::uint32_t seed : {0U, 1U, 2U, 3U}) {  // 0: issue order
    const RingPlan fp = plan_forward(schedule, sh, po);
    PlanMemory fwd(fp);
    for (int r = 0; r < c.ranks; ++r) {
      put(fwd.buffer(r, "q"), ref::shard_rows(q, ql, r));
      put(fwd.buffer(r, "k"), ref::shard_rows(k, kl, r));
      put(fwd.buffer(r, "v"), ref::shard_rows(v, kl, r));
    }
    EXPECT_GE(interpret_plan(fp, fwd, seed), fp.ops.size());
    Tensor<double> out(q.shape()), lse({sh.batch, sh.heads_q, sh.seq_q});
    for (int r = 0; r < c.ranks; ++r) {
      const std::int64_t len = ql.shard_length(r);
      ref::unshard_rows(get(fwd.buffer(r, "out"), {sh.batch, len, sh.heads_q, sh.head_dim}), ql, r, out);
      ref::unshard_lse(get(fwd.buffer(r, "lse"), {sh.batch, sh.heads_q, len}), ql, r, lse);
    }
    EXPECT_LT(rel_err(out, want.out), 2e-6) << "O, order seed " << seed;
    EXPECT_LT(rel_err(lse, want.lse), 2e-6) << "LSE, order seed " << seed;

    const RingPlan bp = plan_backward(schedule, sh, po);
    PlanMemory bwd(bp);
    for (int r = 0; r < c.ranks; ++r) {
      put(bwd.buffer(r, "q"), ref::shard_rows(q, ql, r));
      put(bwd.buffer(r, "k"), ref::shard_rows(k, kl, r));
      put(bwd.buffer(r, "v"), ref::shard_rows(v, kl, r));
      put(bwd.buffer(r, "out"), ref::shard_rows(want.out, ql, r));
      put(bwd.buffer(r, "dout"), ref::shard_rows(dout, ql, r));
      put(bwd.buffer(r, "lse"), ref::shard_lse(want.lse, ql, r));
    }
    EXPECT_GE(interpret_plan(bp, bwd, seed), bp.ops.size());
    Tensor<double> dq(q.shape()), dk(k.shape()), dv(v.shape());
    for (int r = 0; r < c.ranks; ++r) {
      const std::int64_t lq = ql.shard_length(r), lk = kl.shard_length(r);
      ref::unshard_rows(get(bwd.buffer(r, "dq"), {sh.batch, lq, sh.heads_q, sh.head_dim}), ql, r, dq);
      ref::unshard_rows(get(bwd.buffer(r, "dk"), {sh.batch, lk, sh.heads_kv, sh.head_dim}), kl, r, dk);
      ref::unshard_rows(get(bwd.buffer(r, "dv"), {sh.batch, lk, sh.heads_kv, sh.head_dim}), kl, r, dv);
    }
    EXPECT_LT(rel_err(dq, want_g.dq), 1e-5) << "dQ, order seed " << seed;
    EXPECT_LT(rel_err(dk, want_g.dk), 1e-5) << "dK, order seed " << seed;
    EXPECT_LT(rel_err(dv, want_g.dv), 1e-5) << "dV, order seed " << seed;
  }
}

INSTANTIATE_TEST_SUITE_P(Plans, RingPlanTest, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& param_info) { return case_name(param_info.param); });

// ---- the checker can fail ------------------------------------------------------------------------

class EveryWaitIsNeeded : public ::testing::TestWithParam<std::tuple<Layout, int, bool, bool>> {};

TEST_P(EveryWaitIsNeeded, DroppingAnyWaitIsARace) {
  const auto [layout, n, causal, backward] = GetParam();
  const Case c{layout, n, causal, 2, 4 * n + 1, 4 * n + 1, 2, 1, 4};
  PlanOptions o;
  const RingPlan plan = backward ? plan_backward(schedule_of(c), shape_of(c), o)
                                 : plan_forward(schedule_of(c), shape_of(c), o);
  ASSERT_TRUE(check_hazards(plan).empty());
  int waits = 0;
  for (std::size_t i = 0; i < plan.ops.size(); ++i) {
    if (plan.ops[i].kind != OpKind::Wait) continue;
    ++waits;
    RingPlan broken = plan;
    broken.ops.erase(broken.ops.begin() + static_cast<std::ptrdiff_t>(i));
    EXPECT_FALSE(check_hazards(broken).empty())
        << "op " << i << " (" << plan.ops[i].label << ", rank " << plan.ops[i].rank << ", step " << plan.ops[i].step
        << ") can be dropped without a race";
  }
  EXPECT_GT(waits, 0);
}

INSTANTIATE_TEST_SUITE_P(Plans, EveryWaitIsNeeded,
                         ::testing::Combine(::testing::ValuesIn(all_layouts()), ::testing::Values(2, 3, 4),
                                            ::testing::Bool(), ::testing::Bool()),
                         [](const auto& param_info) {
                           const auto& p = param_info.param;
                           return std::string(to_string(std::get<0>(p))) + "_N" + std::to_string(std::get<1>(p)) +
                                  (std::get<2>(p) ? "_causal" : "_full") + (std::get<3>(p) ? "_backward" : "_forward");
                         });

TEST(RingPlanChecker, SwappedReceiveBufferIsARace) {
  // Receiving the next block into the buffer the kernels are reading is the classic bug.
  const Case c{Layout::Zigzag, 3, true, 1, 13, 13, 2, 2, 4};
  RingPlan plan = plan_forward(schedule_of(c), shape_of(c), PlanOptions{});
  bool changed = false;
  for (PlanOp& op : plan.ops) {
    if (op.kind != OpKind::Shift || op.step != 1) continue;
    for (std::size_t r = 0; r < op.shift.size(); ++r) {
      const int next = RingSchedule::next_rank(static_cast<int>(r), 3);
      Region& dst = op.shift[r][0].dst_next;
      dst.buffer = plan.buffer(next, "kv1");  // the buffer step 1 computes on
      changed = true;
    }
  }
  ASSERT_TRUE(changed);
  const auto hazards = check_hazards(plan);
  ASSERT_FALSE(hazards.empty());
  EXPECT_NE(hazards.front().message.find("race on kv1"), std::string::npos) << hazards.front().message;
}

TEST(RingPlanChecker, MalformedPlansAreRefused) {
  const Case c{Layout::Striped, 2, false, 1, 8, 8, 2, 2, 4};
  const RingPlan plan = plan_forward(schedule_of(c), shape_of(c), PlanOptions{});
  {
    RingPlan bad = plan;
    for (std::size_t i = 0; i < bad.ops.size(); ++i) {
      if (bad.ops[i].kind == OpKind::Record) {
        bad.ops.erase(bad.ops.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
    }
    EXPECT_THROW(
        {
          try {
            (void)check_hazards(bad);
          } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("was not recorded before it"), std::string::npos) << e.what();
            throw;
          }
        },
        Error);
  }
  {
    RingPlan bad = plan;
    for (PlanOp& op : bad.ops) {
      if (op.kind == OpKind::Forward) {
        op.out.offset += 4;  // one float past the end of the partial O
        break;
      }
    }
    EXPECT_THROW((void)check_hazards(bad), Error);
  }
  {
    RingPlan bad = plan;
    for (PlanOp& op : bad.ops) {
      if (op.kind == OpKind::Shift) {
        op.shift[0][0].dst_next.bytes -= 4;
        break;
      }
    }
    EXPECT_THROW((void)check_hazards(bad), Error);
  }
}

TEST(RingPlanBuilder, RejectsAScheduleThatDoesNotFitTheShape) {
  const Case c{Layout::Contiguous, 2, false, 1, 8, 8, 2, 2, 4};
  AttentionShape other = shape_of(c);
  other.seq_q = other.seq_kv = 10;
  EXPECT_THROW((void)plan_forward(schedule_of(c), other, PlanOptions{}), Error);
  PlanOptions bad;
  bad.input_bytes = 3;
  EXPECT_THROW((void)plan_forward(schedule_of(c), shape_of(c), bad), Error);
}

TEST(RingPlanBuilder, SkipsFullyMaskedPairsAndDoubleBuffers) {
  // Causal contiguous over 4 ranks: rank 0 sees only its own block; every shift writes the
  // buffer the kernels are not reading; the next block's shift is queued before this step's
  // kernels.
  const Case c{Layout::Contiguous, 4, true, 1, 16, 16, 1, 1, 4};
  const RingPlan plan = plan_forward(schedule_of(c), shape_of(c), PlanOptions{});
  int rank0_forwards = 0;
  for (std::size_t i = 0; i < plan.ops.size(); ++i) {
    const PlanOp& op = plan.ops[i];
    if (op.kind == OpKind::Forward && op.rank == 0) ++rank0_forwards;
    if (op.kind == OpKind::Shift) {
      const std::string src = plan.buffers[static_cast<std::size_t>(op.shift[0][0].src.buffer)].name;
      const std::string dst = plan.buffers[static_cast<std::size_t>(op.shift[0][0].dst_next.buffer)].name;
      EXPECT_NE(src, dst) << "step " << op.step;
      for (std::size_t j = i; j < plan.ops.size(); ++j) {  // no kernel of this step before the shift
        if (plan.ops[j].kind == OpKind::Forward) {
          EXPECT_GE(plan.ops[j].step, op.step);
        }
      }
      for (std::size_t j = 0; j < i; ++j) {
        if (plan.ops[j].kind == OpKind::Forward) {
          EXPECT_LT(plan.ops[j].step, op.step);
        }
      }
    }
  }
  EXPECT_EQ(rank0_forwards, 1);
  EXPECT_NE(plan.describe().find("K/V shift"), std::string::npos);
}

}  // namespace
}  // namespace ringattn::cuda
