// Ring attention over N virtual ranks against the long-double oracle: every layout, N = 1..8,
// causal or not, GQA, S_q != S_kv both ways, uneven shards; forward and backward; the step
// functions driven by hand with explicit buffer rotation; sharding; invalid inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/check.hpp"
#include "common/oracle.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/core/layout.hpp"
#include "ringattn/core/schedule.hpp"
#include "ringattn/core/tensor.hpp"
#include "ringattn/reference/attention.hpp"
#include "ringattn/reference/ring.hpp"

namespace {

using ringattn::Layout;
using ringattn::RingSchedule;
using ringattn::SequenceLayout;
using ringattn::Tensor;
using ringattn::ref::AttentionOptions;
using ringattn::ref::ForwardResult;
using ringattn::ref::Gradients;
using ringattn::ref::RingOptions;
using namespace ringattn::test;  // NOLINT(google-build-using-namespace): test helpers

constexpr double kBwdDouble = 5e-13;
constexpr double kBwdFloat = 1e-5;

std::int64_t chunks(Layout kind, int n) { return kind == Layout::Zigzag ? 2 * n : n; }

struct RingCase {
  std::string name;
  ShapeCase shape;
  std::int64_t block_q;
  std::int64_t block_kv;
};
std::ostream& operator<<(std::ostream& os, const RingCase& c) { return os << c.name; }

const std::vector<RingCase>& ring_cases() {
  static const std::vector<RingCase> cases = {
      // Every layout is valid for N <= 8; small tiles that do not divide the shards.
      {"S16_Hq4_Hkv2_Br3_Bc5", {1, 16, 16, 4, 2, 8}, 3, 5},
      // Uneven shards; zigzag needs S >= 2N, so N = 7, 8 must throw.
      {"B2_S13_Hq2_Hkv1", {2, 13, 13, 2, 1, 8}, 64, 128},
      // Fewer queries than keys, end-aligned; zigzag N >= 5 must throw (S_q = 9 < 2N).
      {"Sq9_Skv21_Hq6_Hkv3_Br2_Bc3", {1, 9, 21, 6, 3, 8}, 2, 3},
      // More queries than keys: causal rows with no key; zigzag N >= 5 must throw.
      {"Sq21_Skv9_Hq8_Hkv1", {1, 21, 9, 8, 1, 16}, 64, 128},
  };
  return cases;
}

bool ring_valid(const ShapeCase& s, Layout kind, int n) {
  return s.seq_q >= chunks(kind, n) && s.seq_kv >= chunks(kind, n);
}

using RingParam = std::tuple<RingCase, Layout, int>;

std::string ring_param_name(const ::testing::TestParamInfo<RingParam>& tp) {
  const auto& [rc, kind, n] = tp.param;
  return rc.name + "_" + std::string(ringattn::to_string(kind)) + "_N" + std::to_string(n);
}

RingOptions ring_options(const RingCase& rc, Layout kind, int n, bool causal) {
  RingOptions o;
  o.causal = causal;
  o.layout = kind;
  o.ranks = n;
  o.block_q = rc.block_q;
  o.block_kv = rc.block_kv;
  return o;
}

template <class T>
void check_ring_forward(const RingCase& rc, Layout kind, int n, bool causal) {
  RINGATTN_SEEDED_RNG(rng);
  const Inputs<T> in = random_inputs<T>(rc.shape, rng);
  const RingOptions options = ring_options(rc, kind, n, causal);
  if (!ring_valid(rc.shape, kind, n)) {
    EXPECT_TRUE(ThrowsError([&] { (void)ringattn::ref::ring_forward(in.q, in.k, in.v, options); }))
        << "a sequence shorter than the layout's " << chunks(kind, n) << " chunks must throw";
    return;
  }
  const ForwardResult<T> got = ringattn::ref::ring_forward(in.q, in.k, in.v, options);
  const Tensor<double> q = to_double(in.q), k = to_double(in.k), v = to_double(in.v);
  const OracleForward want = oracle_forward(q, k, v, causal);
  const double logit = max_abs_logit(q, k, 1.0 / std::sqrt(static_cast<double>(rc.shape.head_dim)));
  const Tolerance to = tolerance_for<T>(max_abs(want.out), logit);
  const Tolerance tl = tolerance_for<T>(1.0, logit);
  EXPECT_TRUE(AllClose(got.out, want.out, to.atol, to.rtol)) << "O";
  EXPECT_TRUE(AllClose(got.lse, want.lse, tl.atol, tl.rtol)) << "LSE";
  EXPECT_TRUE(EmptyRowsExact(got.out, got.lse, want.lse));
}

template <class T>
void check_ring_backward(const RingCase& rc, Layout kind, int n, bool causal) {
  RINGATTN_SEEDED_RNG(rng);
  const Inputs<T> in = random_inputs<T>(rc.shape, rng);
  const RingOptions options = ring_options(rc, kind, n, causal);
  const Tensor<double> q = to_double(in.q), k = to_double(in.k), v = to_double(in.v),
                       dout = to_double(in.dout);
  const OracleForward fwd = oracle_forward(q, k, v, causal);
  const Tensor<T> out = convert<T>(fwd.out), lse = convert<T>(fwd.lse);
  if (!ring_valid(rc.shape, kind, n)) {
    EXPECT_TRUE(ThrowsError([&] {
      (void)ringattn::ref::ring_backward(in.q, in.k, in.v, out, lse, in.dout, options);
    }));
    return;
  }
  const Gradients<T> got = ringattn::ref::ring_backward(in.q, in.k, in.v, out, lse, in.dout, options);
  const OracleGradients want = oracle_backward(q, k, v, dout, causal);
  const double logit = max_abs_logit(q, k, 1.0 / std::sqrt(static_cast<double>(rc.shape.head_dim)));
  const Tolerance tq = tolerance_for<T>(max_abs(want.dq), logit, kBwdDouble, kBwdFloat);
  const Tolerance tk = tolerance_for<T>(max_abs(want.dk), logit, kBwdDouble, kBwdFloat);
  const Tolerance tv = tolerance_for<T>(max_abs(want.dv), logit, kBwdDouble, kBwdFloat);
  EXPECT_TRUE(AllClose(got.dq, want.dq, tq.atol, tq.rtol)) << "dQ";
  EXPECT_TRUE(AllClose(got.dk, want.dk, tk.atol, tk.rtol)) << "dK";
  EXPECT_TRUE(AllClose(got.dv, want.dv, tv.atol, tv.rtol)) << "dV";
}

// One case per (shape, layout, N): forward and backward, causal and not, each named by
// SCOPED_TRACE on failure. Fewer, fuller cases keep ctest's per-case process overhead small.
template <class T>
void check_ring(const RingCase& rc, Layout kind, int n) {
  for (bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "not causal");
    {
      SCOPED_TRACE("ring_forward");
      check_ring_forward<T>(rc, kind, n, causal);
    }
    {
      SCOPED_TRACE("ring_backward");
      check_ring_backward<T>(rc, kind, n, causal);
    }
  }
}

class RingSweep : public ::testing::TestWithParam<RingParam> {};

TEST_P(RingSweep, ForwardAndBackwardMatchOracle) {
  const auto& [rc, kind, n] = GetParam();
  check_ring<double>(rc, kind, n);
}

INSTANTIATE_TEST_SUITE_P(Double, RingSweep,
                         ::testing::Combine(::testing::ValuesIn(ring_cases()),
                                            ::testing::Values(Layout::Contiguous, Layout::Striped,
                                                              Layout::Zigzag),
                                            ::testing::Range(1, 9)),
                         ring_param_name);

// float: partial outputs and LSE stay float between steps; fewer rank counts.
class RingSweepFloat : public ::testing::TestWithParam<RingParam> {};

TEST_P(RingSweepFloat, ForwardAndBackwardMatchOracle) {
  const auto& [rc, kind, n] = GetParam();
  check_ring<float>(rc, kind, n);
}

INSTANTIATE_TEST_SUITE_P(
    Float, RingSweepFloat,
    ::testing::Combine(::testing::Values(RingCase{"B2_Sq20_Skv24_Hq4_Hkv2_Br3_Bc5",
                                                  {2, 20, 24, 4, 2, 16}, 3, 5}),
                       ::testing::Values(Layout::Contiguous, Layout::Striped, Layout::Zigzag),
                       ::testing::Values(1, 3, 8)),
    ring_param_name);

// ---- the step functions driven by hand: N = 3, explicit buffer rotation ------------------------

using StepParam = std::tuple<Layout, bool>;

class RingSteps : public ::testing::TestWithParam<StepParam> {};

TEST_P(RingSteps, ForwardAndBackwardByHand) {
  const auto& [kind, causal] = GetParam();
  RINGATTN_SEEDED_RNG(rng);
  constexpr int N = 3;
  const ShapeCase sc{2, 14, 17, 4, 2, 8};
  const Inputs<double> in = random_inputs<double>(sc, rng);
  ringattn::AttentionShape shape;
  shape.batch = sc.batch;
  shape.seq_q = sc.seq_q;
  shape.seq_kv = sc.seq_kv;
  shape.heads_q = sc.heads_q;
  shape.heads_kv = sc.heads_kv;
  shape.head_dim = sc.head_dim;
  const RingSchedule schedule = RingSchedule::for_shape(shape, kind, N, causal);
  const SequenceLayout& ql = schedule.q_layout();
  const SequenceLayout& kl = schedule.kv_layout();
  AttentionOptions options;
  options.causal = causal;
  options.block_q = 3;
  options.block_kv = 2;

  // ---- forward: each rank starts with its own K/V block; after a step, rank r sends to r+1.
  std::vector<Tensor<double>> q(N), k(N), v(N), out(N), lse(N);
  std::vector<int> held(N);  // which rank's block each rank holds
  for (int r = 0; r < N; ++r) {
    q[static_cast<std::size_t>(r)] = ringattn::ref::shard_rows(in.q, ql, r);
    k[static_cast<std::size_t>(r)] = ringattn::ref::shard_rows(in.k, kl, r);
    v[static_cast<std::size_t>(r)] = ringattn::ref::shard_rows(in.v, kl, r);
    out[static_cast<std::size_t>(r)] =
        Tensor<double>({sc.batch, ql.shard_length(r), sc.heads_q, sc.head_dim}, 0.0);
    lse[static_cast<std::size_t>(r)] = Tensor<double>({sc.batch, sc.heads_q, ql.shard_length(r)},
                                                      -std::numeric_limits<double>::infinity());
    held[static_cast<std::size_t>(r)] = r;
  }
  auto rotate = [](auto& bufs) {
    // Rank r receives from r - 1: new[r] = old[r - 1].
    auto last = std::move(bufs[N - 1]);
    for (int r = N - 1; r > 0; --r) {
      bufs[static_cast<std::size_t>(r)] = std::move(bufs[static_cast<std::size_t>(r - 1)]);
    }
    bufs[0] = std::move(last);
  };
  for (int s = 0; s < N; ++s) {
    for (int r = 0; r < N; ++r) {
      const auto ru = static_cast<std::size_t>(r);
      ASSERT_EQ(held[ru], schedule.work(s, r).kv_owner) << "step " << s << " rank " << r;
      ringattn::ref::ring_forward_step(schedule, s, r, q[ru], k[ru], v[ru], options, out[ru],
                                       lse[ru]);
    }
    if (s + 1 < N) {
      rotate(k);
      rotate(v);
      rotate(held);
    }
  }
  Tensor<double> out_full(sc.q_shape(), std::numeric_limits<double>::quiet_NaN());
  Tensor<double> lse_full(sc.lse_shape(), std::numeric_limits<double>::quiet_NaN());
  for (int r = 0; r < N; ++r) {
    ringattn::ref::unshard_rows(out[static_cast<std::size_t>(r)], ql, r, out_full);
    ringattn::ref::unshard_lse(lse[static_cast<std::size_t>(r)], ql, r, lse_full);
  }
  const OracleForward want = oracle_forward(in.q, in.k, in.v, causal);
  const double logit = max_abs_logit(in.q, in.k, 1.0 / std::sqrt(8.0));
  const Tolerance t = tolerance_for<double>(max_abs(want.out), logit);
  EXPECT_TRUE(AllClose(out_full, want.out, t.atol, t.rtol)) << "O";
  EXPECT_TRUE(AllClose(lse_full, want.lse, tolerance_for<double>(1, logit).atol, t.rtol)) << "LSE";

  // ---- backward: dQ stays home; dK/dV travel with their block and take one last hop home.
  const Tensor<double> delta = ringattn::ref::softmax_delta(want.out, in.dout);
  std::vector<Tensor<double>> dout(N), lse_s(N), delta_s(N), dq(N), dk(N), dv(N);
  for (int r = 0; r < N; ++r) {
    const auto ru = static_cast<std::size_t>(r);
    dout[ru] = ringattn::ref::shard_rows(in.dout, ql, r);
    lse_s[ru] = ringattn::ref::shard_lse(want.lse, ql, r);
    delta_s[ru] = ringattn::ref::shard_lse(delta, ql, r);
    dq[ru] = Tensor<double>(q[ru].shape(), 0.0);
    k[ru] = ringattn::ref::shard_rows(in.k, kl, r);
    v[ru] = ringattn::ref::shard_rows(in.v, kl, r);
    dk[ru] = Tensor<double>(k[ru].shape(), 0.0);
    dv[ru] = Tensor<double>(v[ru].shape(), 0.0);
    held[ru] = r;
  }
  for (int s = 0; s < N; ++s) {
    for (int r = 0; r < N; ++r) {
      const auto ru = static_cast<std::size_t>(r);
      ASSERT_EQ(held[ru], schedule.work(s, r).kv_owner) << "step " << s << " rank " << r;
      ringattn::ref::ring_backward_step(schedule, s, r, q[ru], k[ru], v[ru], dout[ru], lse_s[ru],
                                        delta_s[ru], options, dq[ru], dk[ru], dv[ru]);
    }
    // After every step, including the last: the last hop brings dK/dV home.
    rotate(k);
    rotate(v);
    rotate(dk);
    rotate(dv);
    rotate(held);
  }
  for (int r = 0; r < N; ++r) {
    EXPECT_EQ(held[static_cast<std::size_t>(r)], r) << "after N hops every block is home";
  }
  Tensor<double> dq_full(sc.q_shape(), std::numeric_limits<double>::quiet_NaN());
  Tensor<double> dk_full(sc.kv_shape(), std::numeric_limits<double>::quiet_NaN());
  Tensor<double> dv_full(sc.kv_shape(), std::numeric_limits<double>::quiet_NaN());
  for (int r = 0; r < N; ++r) {
    const auto ru = static_cast<std::size_t>(r);
    ringattn::ref::unshard_rows(dq[ru], ql, r, dq_full);
    ringattn::ref::unshard_rows(dk[ru], kl, r, dk_full);
    ringattn::ref::unshard_rows(dv[ru], kl, r, dv_full);
  }
  const OracleGradients g = oracle_backward(in.q, in.k, in.v, in.dout, causal);
  const Tolerance tq = tolerance_for<double>(max_abs(g.dq), logit, kBwdDouble);
  const Tolerance tk = tolerance_for<double>(max_abs(g.dk), logit, kBwdDouble);
  const Tolerance tv = tolerance_for<double>(max_abs(g.dv), logit, kBwdDouble);
  EXPECT_TRUE(AllClose(dq_full, g.dq, tq.atol, tq.rtol)) << "dQ";
  EXPECT_TRUE(AllClose(dk_full, g.dk, tk.atol, tk.rtol)) << "dK";
  EXPECT_TRUE(AllClose(dv_full, g.dv, tv.atol, tv.rtol)) << "dV";

  // And the driver agrees with the hand-driven ring.
  RingOptions ro;
  ro.causal = causal;
  ro.layout = kind;
  ro.ranks = N;
  ro.block_q = 3;
  ro.block_kv = 2;
  const auto f = ringattn::ref::ring_forward(in.q, in.k, in.v, ro);
  EXPECT_TRUE(AllClose(f.out, out_full, 1e-13, 1e-13));
  EXPECT_TRUE(AllClose(f.lse, lse_full, 1e-13, 1e-13));
  const auto b = ringattn::ref::ring_backward(in.q, in.k, in.v, want.out, want.lse, in.dout, ro);
  EXPECT_TRUE(AllClose(b.dk, dk_full, tk.atol, tk.rtol));
}

INSTANTIATE_TEST_SUITE_P(
    N3, RingSteps,
    ::testing::Combine(::testing::Values(Layout::Contiguous, Layout::Striped, Layout::Zigzag),
                       ::testing::Bool()),
    [](const ::testing::TestParamInfo<StepParam>& tp) {
      return std::string(ringattn::to_string(std::get<0>(tp.param))) +
             (std::get<1>(tp.param) ? "_causal" : "_full");
    });

// ---- sharding -------------------------------------------------------------------------------

class Sharding : public ::testing::TestWithParam<std::tuple<Layout, int>> {};

TEST_P(Sharding, ShardsHoldLayoutRowsAndRoundTrip) {
  const auto& [kind, n] = GetParam();
  RINGATTN_SEEDED_RNG(rng);
  for (std::int64_t s : {chunks(kind, n), chunks(kind, n) + 3, 3 * chunks(kind, n) + 1}) {
    SCOPED_TRACE("S=" + std::to_string(s));
    const SequenceLayout lay(kind, s, n);
    const std::int64_t B = 2, H = 3, D = 4;
    const Tensor<double> full = random_tensor<double>({B, s, H, D}, rng);
    const Tensor<double> lse = random_tensor<double>({B, H, s}, rng);
    Tensor<double> back(full.shape(), std::numeric_limits<double>::quiet_NaN());
    Tensor<double> lback(lse.shape(), std::numeric_limits<double>::quiet_NaN());
    for (int r = 0; r < n; ++r) {
      const Tensor<double> shard = ringattn::ref::shard_rows(full, lay, r);
      const Tensor<double> lshard = ringattn::ref::shard_lse(lse, lay, r);
      const std::int64_t len = lay.shard_length(r);
      ASSERT_EQ(shard.shape(), (std::vector<std::int64_t>{B, len, H, D}));
      ASSERT_EQ(lshard.shape(), (std::vector<std::int64_t>{B, H, len}));
      for (std::int64_t b = 0; b < B; ++b) {
        for (std::int64_t i = 0; i < len; ++i) {
          const std::int64_t p = lay.position(r, i);
          for (std::int64_t e = 0; e < H * D; ++e) {
            ASSERT_EQ(shard[(b * len + i) * H * D + e], full[(b * s + p) * H * D + e]);
          }
          for (std::int64_t h = 0; h < H; ++h) {
            ASSERT_EQ(lshard[(b * H + h) * len + i], lse[(b * H + h) * s + p]);
          }
        }
      }
      ringattn::ref::unshard_rows(shard, lay, r, back);
      ringattn::ref::unshard_lse(lshard, lay, r, lback);
    }
    EXPECT_TRUE(AllClose(back, full, 0.0, 0.0)) << "unshard of every shard restores the tensor";
    EXPECT_TRUE(AllClose(lback, lse, 0.0, 0.0));
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllLayouts, Sharding,
    ::testing::Combine(::testing::Values(Layout::Contiguous, Layout::Striped, Layout::Zigzag),
                       ::testing::Values(1, 2, 3, 5, 8)),
    [](const ::testing::TestParamInfo<std::tuple<Layout, int>>& tp) {
      return std::string(ringattn::to_string(std::get<0>(tp.param))) + "_N" +
             std::to_string(std::get<1>(tp.param));
    });

// ---- invalid inputs ----------------------------------------------------------------------------

TEST(RingInvalid, BadOptionsAndShapesThrowOneLineError) {
  const Tensor<double> q({1, 8, 4, 16}, 0.5), k({1, 8, 2, 16}, 0.25), v({1, 8, 2, 16}, 1.0);
  const Tensor<double> out({1, 8, 4, 16}, 0.1), lse({1, 4, 8}, 0.0), dout({1, 8, 4, 16}, 1.0);
  auto fwd = [&](const RingOptions& o) { (void)ringattn::ref::ring_forward(q, k, v, o); };
  auto bwd = [&](const RingOptions& o) {
    (void)ringattn::ref::ring_backward(q, k, v, out, lse, dout, o);
  };
  RingOptions ok;
  ok.ranks = 2;
  ok.layout = Layout::Zigzag;
  EXPECT_NO_THROW(fwd(ok));
  EXPECT_NO_THROW(bwd(ok));
  for (int ranks : {0, -1}) {
    RingOptions o = ok;
    o.ranks = ranks;
    EXPECT_TRUE(ThrowsError([&] { fwd(o); })) << "ranks " << ranks;
    EXPECT_TRUE(ThrowsError([&] { bwd(o); })) << "ranks " << ranks;
  }
  {
    RingOptions o = ok;
    o.ranks = 5;  // zigzag needs 10 tokens, S = 8
    EXPECT_TRUE(ThrowsError([&] { fwd(o); }));
    EXPECT_TRUE(ThrowsError([&] { bwd(o); }));
    o.layout = Layout::Contiguous;
    o.ranks = 9;  // contiguous needs 9 tokens
    EXPECT_TRUE(ThrowsError([&] { fwd(o); }));
    o.layout = Layout::Striped;
    EXPECT_TRUE(ThrowsError([&] { fwd(o); }));
  }
  {
    RingOptions o = ok;
    o.scale = std::nan("");
    EXPECT_TRUE(ThrowsError([&] { fwd(o); }));
    EXPECT_TRUE(ThrowsError([&] { bwd(o); }));
    o.scale = -0.5;
    EXPECT_TRUE(ThrowsError([&] { fwd(o); }));
  }
  {
    RingOptions o = ok;
    o.block_q = 0;
    EXPECT_TRUE(ThrowsError([&] { fwd(o); }));
    EXPECT_TRUE(ThrowsError([&] { bwd(o); }));
  }
  // Bad tensors.
  const Tensor<double> kb({2, 8, 2, 16}, 0.25), k3({1, 8, 3, 16}, 0.25), vd({1, 8, 2, 8}, 1.0);
  const Tensor<double> q3({8, 4, 16}, 0.5);
  EXPECT_TRUE(ThrowsError([&] { (void)ringattn::ref::ring_forward(q, kb, kb, ok); }));
  EXPECT_TRUE(ThrowsError([&] { (void)ringattn::ref::ring_forward(q, k3, k3, ok); }, {"3", "4"}));
  EXPECT_TRUE(ThrowsError([&] { (void)ringattn::ref::ring_forward(q, k, vd, ok); }));
  EXPECT_TRUE(ThrowsError([&] { (void)ringattn::ref::ring_forward(q3, k, v, ok); }));
  const Tensor<double> dout_bad({1, 8, 2, 16}, 1.0), lse_bad({1, 8, 4}, 0.0), out_bad({1, 7, 4, 16});
  EXPECT_TRUE(ThrowsError(
      [&] { (void)ringattn::ref::ring_backward(q, k, v, out, lse, dout_bad, ok); }));
  EXPECT_TRUE(ThrowsError(
      [&] { (void)ringattn::ref::ring_backward(q, k, v, out, lse_bad, dout, ok); }));
  EXPECT_TRUE(ThrowsError(
      [&] { (void)ringattn::ref::ring_backward(q, k, v, out_bad, lse, dout, ok); }));
}

}  // namespace
