// Backward attention of the reference (naive, blockwise, and the block_backward kernel on views)
// against the long-double oracle, and all of them (the oracle included) against central finite
// differences of L = sum(dO * O). Also: accumulation (+=) of block_backward, D = rowsum(dO * O),
// and invalid inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/check.hpp"
#include "common/oracle.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/core/schedule.hpp"
#include "ringattn/core/tensor.hpp"
#include "ringattn/reference/attention.hpp"

namespace {

using ringattn::Tensor;
using ringattn::ref::AttentionOptions;
using ringattn::ref::Gradients;
using namespace ringattn::test;  // NOLINT(google-build-using-namespace): test helpers

// Backward tolerances: five chained products instead of two, so more room than the forward.
constexpr double kBaseDouble = 5e-13;
constexpr double kBaseFloat = 1e-5;

enum class Path { Naive, Blockwise };

struct Kernel {
  Path path = Path::Naive;
  std::int64_t block_q = 64;
  std::int64_t block_kv = 128;
};

std::string kernel_name(const Kernel& k) {
  if (k.path == Path::Naive) return "naive";
  return "blockwise_Br" + std::to_string(k.block_q) + "_Bc" + std::to_string(k.block_kv);
}

template <class T>
Gradients<T> run_backward(const Kernel& kernel, const Tensor<T>& q, const Tensor<T>& k,
                          const Tensor<T>& v, const Tensor<T>& out, const Tensor<T>& lse,
                          const Tensor<T>& dout, AttentionOptions options) {
  options.block_q = kernel.block_q;
  options.block_kv = kernel.block_kv;
  if (kernel.path == Path::Naive) {
    return ringattn::ref::naive_backward(q, k, v, out, lse, dout, options);
  }
  return ringattn::ref::blockwise_backward(q, k, v, out, lse, dout, options);
}

// D_i = rowsum(dO_i * O_i) per (b, h, i), in long double: the oracle's view of softmax_delta.
Tensor<double> delta_of(const Tensor<double>& out, const Tensor<double>& dout) {
  const std::int64_t B = out.dim(0), S = out.dim(1), H = out.dim(2), D = out.dim(3);
  Tensor<double> delta({B, H, S});
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t s = 0; s < S; ++s) {
      for (std::int64_t h = 0; h < H; ++h) {
        long double acc = 0.0L;
        for (std::int64_t x = 0; x < D; ++x) {
          const std::int64_t n = ((b * S + s) * H + h) * D + x;
          acc += static_cast<long double>(out[n]) * static_cast<long double>(dout[n]);
        }
        delta[(b * H + h) * S + s] = static_cast<double>(acc);
      }
    }
  }
  return delta;
}

// T sets the tolerance (the precision the gradients were computed in); G is how they are stored.
template <class T, class G>
void expect_gradients(const Gradients<G>& got, const OracleGradients& want, double logit,
                      double base_double = kBaseDouble, double base_float = kBaseFloat) {
  const Tolerance tq = tolerance_for<T>(max_abs(want.dq), logit, base_double, base_float);
  const Tolerance tk = tolerance_for<T>(max_abs(want.dk), logit, base_double, base_float);
  const Tolerance tv = tolerance_for<T>(max_abs(want.dv), logit, base_double, base_float);
  EXPECT_TRUE(AllClose(got.dq, want.dq, tq.atol, tq.rtol)) << "dQ, max |logit| " << logit;
  EXPECT_TRUE(AllClose(got.dk, want.dk, tk.atol, tk.rtol)) << "dK, max |logit| " << logit;
  EXPECT_TRUE(AllClose(got.dv, want.dv, tv.atol, tv.rtol)) << "dV, max |logit| " << logit;
}

// ---- the parameterized sweep ------------------------------------------------------------------

// One case: a shape, causal or not, a precision; every kernel runs on the same inputs (named by
// SCOPED_TRACE on failure), which keeps ctest's one-process-per-case overhead small.
using BackwardParam = std::tuple<ShapeCase, bool, Precision>;

std::string backward_param_name(const ::testing::TestParamInfo<BackwardParam>& tp) {
  const auto& [shape, causal, prec] = tp.param;
  return to_string(shape) + (causal ? "_causal_" : "_full_") + to_string(prec);
}

const std::vector<Kernel>& backward_kernels() {
  static const std::vector<Kernel> kernels = {
      {Path::Naive, 64, 128},     {Path::Blockwise, 64, 128},   {Path::Blockwise, 5, 7},
      {Path::Blockwise, 1, 3},    {Path::Blockwise, 512, 1024},
  };
  return kernels;
}

template <class T>
void check_backward(const ShapeCase& shape, bool causal, const std::vector<Kernel>& kernels,
                    double multiplier) {
  RINGATTN_SEEDED_RNG(rng);
  const Inputs<T> in = random_inputs<T>(shape, rng, multiplier);
  const Tensor<double> q = to_double(in.q), k = to_double(in.k), v = to_double(in.v),
                       dout = to_double(in.dout);
  // O and LSE come from the oracle, so the backward is judged on its own.
  const OracleForward fwd = oracle_forward(q, k, v, causal);
  const OracleGradients want = oracle_backward(q, k, v, dout, causal);
  const double logit =
      max_abs_logit(q, k, 1.0 / std::sqrt(static_cast<double>(shape.head_dim)));
  AttentionOptions options;
  options.causal = causal;
  for (const Kernel& kernel : kernels) {
    SCOPED_TRACE("kernel " + kernel_name(kernel));
    const Gradients<T> got = run_backward<T>(kernel, in.q, in.k, in.v, convert<T>(fwd.out),
                                             convert<T>(fwd.lse), in.dout, options);
    expect_gradients<T>(got, want, logit);
    if (causal && shape.seq_q > shape.seq_kv) {
      // Rows that see no key give no gradient: their dQ rows are exactly zero.
      const std::int64_t empty = shape.seq_q - shape.seq_kv;
      const std::int64_t row = shape.heads_q * shape.head_dim;
      for (std::int64_t b = 0; b < shape.batch; ++b) {
        for (std::int64_t i = 0; i < empty; ++i) {
          for (std::int64_t e = 0; e < row; ++e) {
            const double g = static_cast<double>(got.dq[(b * shape.seq_q + i) * row + e]);
            ASSERT_EQ(g, 0.0) << "dQ of row " << i << " (sees no key), batch " << b;
          }
        }
      }
    }
  }
}

class BackwardSweep : public ::testing::TestWithParam<BackwardParam> {};

TEST_P(BackwardSweep, EveryKernelMatchesOracle) {
  const auto& [shape, causal, prec] = GetParam();
  if (prec == Precision::Double) {
    check_backward<double>(shape, causal, backward_kernels(), 1.0);
  } else {
    check_backward<float>(shape, causal, backward_kernels(), 1.0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Reference, BackwardSweep,
    ::testing::Combine(
        ::testing::Values(ShapeCase{1, 1, 1, 1, 1, 8}, ShapeCase{1, 7, 7, 4, 2, 16},
                          ShapeCase{2, 33, 33, 6, 3, 8}, ShapeCase{1, 100, 100, 1, 1, 16},
                          ShapeCase{2, 7, 33, 4, 2, 16}, ShapeCase{1, 33, 7, 8, 1, 8},
                          ShapeCase{1, 1, 100, 8, 1, 64}, ShapeCase{2, 16, 16, 2, 1, 64},
                          ShapeCase{1, 100, 33, 4, 2, 8}),
        ::testing::Bool(), ::testing::Values(Precision::Float, Precision::Double)),
    backward_param_name);

class BackwardLargeLogits : public ::testing::TestWithParam<BackwardParam> {};

TEST_P(BackwardLargeLogits, NoOverflowAndMatchesOracle) {
  const auto& [shape, causal, prec] = GetParam();
  const std::vector<Kernel> kernels = {{Path::Naive, 64, 128}, {Path::Blockwise, 5, 7}};
  if (prec == Precision::Double) {
    check_backward<double>(shape, causal, kernels, 100.0);
  } else {
    check_backward<float>(shape, causal, kernels, 100.0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Reference, BackwardLargeLogits,
    ::testing::Combine(::testing::Values(ShapeCase{1, 7, 7, 4, 2, 16}, ShapeCase{2, 21, 9, 2, 1, 32}),
                       ::testing::Bool(), ::testing::Values(Precision::Float, Precision::Double)),
    backward_param_name);

// ---- finite differences: the oracle and every backward against the derivative of the forward

using FdParam = std::tuple<ShapeCase, bool>;

class FiniteDifferences : public ::testing::TestWithParam<FdParam> {};

TEST_P(FiniteDifferences, GradientsMatchCentralDifferences) {
  const auto& [shape, causal] = GetParam();
  RINGATTN_SEEDED_RNG(rng);
  const Inputs<double> in = random_inputs<double>(shape, rng);
  const double scale = 1.0 / std::sqrt(static_cast<double>(shape.head_dim));
  const OracleForward fwd = oracle_forward(in.q, in.k, in.v, causal);
  AttentionOptions options;
  options.causal = causal;
  options.block_q = 2;
  options.block_kv = 3;
  struct Candidate {
    std::string name;
    Tensor<double> dq, dk, dv;
  };
  std::vector<Candidate> candidates;
  {
    const OracleGradients o = oracle_backward(in.q, in.k, in.v, in.dout, causal);
    candidates.push_back({"oracle", o.dq, o.dk, o.dv});
    const auto n = ringattn::ref::naive_backward(in.q, in.k, in.v, fwd.out, fwd.lse, in.dout, options);
    candidates.push_back({"naive", n.dq, n.dk, n.dv});
    const auto b =
        ringattn::ref::blockwise_backward(in.q, in.k, in.v, fwd.out, fwd.lse, in.dout, options);
    candidates.push_back({"blockwise", b.dq, b.dk, b.dv});
  }
  // dL/dx ~ (L(x + h) - L(x - h)) / (2h), L = sum(dO * O) in long double. Truncation error
  // ~h^2 f''' / 6 ~ 1e-10; the step actually taken is (x + h) - (x - h) as rounded in double.
  const double h = 1e-5;
  Inputs<double> work = in;
  int checked = 0;
  for (int which = 0; which < 3; ++which) {
    Tensor<double>& x = which == 0 ? work.q : which == 1 ? work.k : work.v;
    const char* xname = which == 0 ? "Q" : which == 1 ? "K" : "V";
    for (std::int64_t n = 0; n < x.size(); ++n) {
      const double orig = x[n];
      x[n] = orig + h;
      const double up = x[n];
      const long double lp = oracle_loss(work.q, work.k, work.v, in.dout, causal, scale);
      x[n] = orig - h;
      const double down = x[n];
      const long double lm = oracle_loss(work.q, work.k, work.v, in.dout, causal, scale);
      x[n] = orig;
      const double fd = static_cast<double>((lp - lm) / static_cast<long double>(up - down));
      for (const Candidate& c : candidates) {
        const Tensor<double>& g = which == 0 ? c.dq : which == 1 ? c.dk : c.dv;
        ASSERT_NEAR(g[n], fd, 1e-6 * (1.0 + std::fabs(fd)))
            << c.name << " d" << xname << " at flat index " << n << " = "
            << multi_index(x.shape(), n);
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, in.q.size() + in.k.size() + in.v.size());
}

INSTANTIATE_TEST_SUITE_P(
    Tiny, FiniteDifferences,
    ::testing::Combine(::testing::Values(ShapeCase{1, 4, 4, 2, 1, 3}, ShapeCase{1, 3, 5, 2, 2, 4},
                                         ShapeCase{2, 5, 3, 4, 2, 2}, ShapeCase{1, 1, 6, 3, 1, 4}),
                       ::testing::Bool()),
    [](const ::testing::TestParamInfo<FdParam>& tp) {
      return to_string(std::get<0>(tp.param)) + (std::get<1>(tp.param) ? "_causal" : "_full");
    });

// ---- block_backward on views: accumulates, touches nothing else ------------------------------

struct PositionsCase {
  std::string name;
  ringattn::Positions qpos;
  ringattn::Positions kpos;
};
std::ostream& operator<<(std::ostream& os, const PositionsCase& c) { return os << c.name; }

using BlockParam = std::tuple<PositionsCase, bool>;

class BlockBackward : public ::testing::TestWithParam<BlockParam> {};

// Copies rows [r0, r0 + n) of a (B, S, H, D) buffer into a (B, n, H, D) tensor.
template <class T>
Tensor<double> rows_of(const Tensor<T>& buf, std::int64_t r0, std::int64_t n) {
  const std::int64_t B = buf.dim(0), S = buf.dim(1), HD = buf.dim(2) * buf.dim(3);
  Tensor<double> t({B, n, buf.dim(2), buf.dim(3)});
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t e = 0; e < HD; ++e) {
        t[(b * n + i) * HD + e] = static_cast<double>(buf[(b * S + r0 + i) * HD + e]);
      }
    }
  }
  return t;
}

// The change a call made to rows [r0, r0 + n) of @p after relative to @p before, and a count of
// elements outside those rows that changed at all.
template <class T>
Tensor<double> change_in_rows(const Tensor<T>& before, const Tensor<T>& after, std::int64_t r0,
                              std::int64_t n, std::int64_t* outside_changed) {
  const std::int64_t B = before.dim(0), S = before.dim(1), HD = before.dim(2) * before.dim(3);
  Tensor<double> d({B, n, before.dim(2), before.dim(3)});
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t s = 0; s < S; ++s) {
      for (std::int64_t e = 0; e < HD; ++e) {
        const std::int64_t at = (b * S + s) * HD + e;
        if (s >= r0 && s < r0 + n) {
          d[(b * n + s - r0) * HD + e] =
              static_cast<double>(after[at]) - static_cast<double>(before[at]);
        } else if (!(after[at] == before[at])) {
          ++*outside_changed;
        }
      }
    }
  }
  return d;
}

Tensor<double> times(const Tensor<double>& t, double f) {
  Tensor<double> r = t;
  for (std::int64_t n = 0; n < r.size(); ++n) r[n] *= f;
  return r;
}

template <class T>
void check_block_backward(const PositionsCase& pc, bool causal) {
  RINGATTN_SEEDED_RNG(rng);
  const std::int64_t B = 2, Sq = 9, Skv = 11, Hq = 4, Hkv = 2, D = 8, pad = 2;
  const double scale = 0.35;
  const Tensor<T> qbuf = random_tensor<T>({B, Sq + pad, Hq, D}, rng);
  const Tensor<T> dobuf = random_tensor<T>({B, Sq + pad, Hq, D}, rng);
  const Tensor<T> kbuf = random_tensor<T>({B, Skv + 2 * pad, Hkv, D}, rng);
  const Tensor<T> vbuf = random_tensor<T>({B, Skv + 2 * pad, Hkv, D}, rng);
  const std::int64_t q0 = pad, k0 = pad;
  const Tensor<double> q = rows_of(qbuf, q0, Sq), k = rows_of(kbuf, k0, Skv),
                       v = rows_of(vbuf, k0, Skv), dout = rows_of(dobuf, q0, Sq);
  std::vector<std::int64_t> qp, kp;
  for (std::int64_t i = 0; i < Sq; ++i) qp.push_back(pc.qpos.at(i));
  for (std::int64_t j = 0; j < Skv; ++j) kp.push_back(pc.kpos.at(j));
  const OracleForward fwd = oracle_forward(q, k, v, scale, causal, qp, kp);
  const OracleGradients want = oracle_backward(q, k, v, dout, scale, causal, qp, kp);
  // The kernel's LSE and delta views sit inside larger (B, H, S + pad) buffers too.
  Tensor<T> lbuf({B, Hq, Sq + pad}, std::numeric_limits<T>::quiet_NaN());
  Tensor<T> dbuf({B, Hq, Sq + pad}, std::numeric_limits<T>::quiet_NaN());
  const Tensor<double> delta = delta_of(fwd.out, dout);
  for (std::int64_t bh = 0; bh < B * Hq; ++bh) {
    for (std::int64_t i = 0; i < Sq; ++i) {
      lbuf[bh * (Sq + pad) + 1 + i] = static_cast<T>(fwd.lse[bh * Sq + i]);
      dbuf[bh * (Sq + pad) + 1 + i] = static_cast<T>(delta[bh * Sq + i]);
    }
  }
  // Gradient buffers start at random values: the kernel must add to them, not overwrite.
  const Tensor<T> dq0 = random_tensor<T>({B, Sq + pad, Hq, D}, rng);
  const Tensor<T> dk0 = random_tensor<T>({B, Skv + 2 * pad, Hkv, D}, rng);
  const Tensor<T> dv0 = random_tensor<T>({B, Skv + 2 * pad, Hkv, D}, rng);
  Tensor<T> dq = dq0, dk = dk0, dv = dv0;
  ringattn::ref::KernelArgs args;
  args.qpos = pc.qpos;
  args.kpos = pc.kpos;
  args.causal = causal;
  args.scale = scale;
  args.block_q = 4;
  args.block_kv = 3;
  auto call = [&] {
    ringattn::ref::block_backward<T>(
        ringattn::seq_view(qbuf).rows(q0, Sq), ringattn::seq_view(kbuf).rows(k0, Skv),
        ringattn::seq_view(vbuf).rows(k0, Skv), ringattn::seq_view(dobuf).rows(q0, Sq),
        ringattn::lse_view(std::as_const(lbuf)).rows(1, Sq),
        ringattn::lse_view(std::as_const(dbuf)).rows(1, Sq), args,
        ringattn::seq_view(dq).rows(q0, Sq), ringattn::seq_view(dk).rows(k0, Skv),
        ringattn::seq_view(dv).rows(k0, Skv));
  };
  const double logit = max_abs_logit(q, k, scale);
  for (int calls = 1; calls <= 2; ++calls) {
    SCOPED_TRACE("after " + std::to_string(calls) + " call(s)");
    call();
    std::int64_t outside = 0;
    const Gradients<double> got{change_in_rows(dq0, dq, q0, Sq, &outside),
                                change_in_rows(dk0, dk, k0, Skv, &outside),
                                change_in_rows(dv0, dv, k0, Skv, &outside)};
    EXPECT_EQ(outside, 0) << "block_backward changed rows outside its views";
    const OracleGradients scaled{times(want.dq, calls), times(want.dk, calls),
                                 times(want.dv, calls)};
    // The change is measured against random starting values of size ~1, so the float
    // tolerance also carries the rounding of those values.
    expect_gradients<T>(got, scaled, logit, kBaseDouble, 4 * kBaseFloat);
  }
}

TEST_P(BlockBackward, AccumulatesIntoViewsAndMatchesOracle) {
  const auto& [pc, causal] = GetParam();
  {
    SCOPED_TRACE("double");
    check_block_backward<double>(pc, causal);
  }
  {
    SCOPED_TRACE("float");
    check_block_backward<float>(pc, causal);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Reference, BlockBackward,
    ::testing::Combine(::testing::Values(PositionsCase{"aligned", {2, 1}, {0, 1}},
                                         PositionsCase{"strided", {3, 4}, {1, 2}},
                                         PositionsCase{"late_queries", {-5, 1}, {0, 1}},
                                         PositionsCase{"keys_after", {0, 1}, {100, 1}}),
                       ::testing::Bool()),
    [](const ::testing::TestParamInfo<BlockParam>& tp) {
      return std::get<0>(tp.param).name + (std::get<1>(tp.param) ? "_causal" : "_full");
    });

// Zero-initialized accumulators: two calls give exactly twice one call's result (to rounding).
TEST(BlockBackward, TwoCallsDoubleTheResult) {
  RINGATTN_SEEDED_RNG(rng);
  const ShapeCase shape{1, 12, 12, 4, 2, 8};
  const Inputs<double> in = random_inputs<double>(shape, rng);
  const OracleForward fwd = oracle_forward(in.q, in.k, in.v, true);
  const Tensor<double> delta = delta_of(fwd.out, in.dout);
  ringattn::ref::KernelArgs args;
  args.causal = true;
  args.scale = 1.0 / std::sqrt(8.0);
  args.block_q = 5;
  args.block_kv = 5;
  Tensor<double> dq(shape.q_shape()), dk(shape.kv_shape()), dv(shape.kv_shape());
  auto call = [&] {
    ringattn::ref::block_backward<double>(
        ringattn::seq_view(in.q), ringattn::seq_view(in.k), ringattn::seq_view(in.v),
        ringattn::seq_view(in.dout), ringattn::lse_view(fwd.lse), ringattn::lse_view(delta), args,
        ringattn::seq_view(dq), ringattn::seq_view(dk), ringattn::seq_view(dv));
  };
  call();
  const Tensor<double> once_q = dq, once_k = dk, once_v = dv;
  EXPECT_GT(max_abs(once_q), 0.0);
  call();
  EXPECT_TRUE(AllClose(dq, times(once_q, 2), 1e-13, 1e-13));
  EXPECT_TRUE(AllClose(dk, times(once_k, 2), 1e-13, 1e-13));
  EXPECT_TRUE(AllClose(dv, times(once_v, 2), 1e-13, 1e-13));
  const OracleGradients want = oracle_backward(in.q, in.k, in.v, in.dout, true);
  EXPECT_TRUE(AllClose(once_q, want.dq, 1e-12, 1e-12));
  EXPECT_TRUE(AllClose(once_k, want.dk, 1e-12, 1e-12));
  EXPECT_TRUE(AllClose(once_v, want.dv, 1e-12, 1e-12));
}

// ---- D = rowsum(dO * O) --------------------------------------------------------------------

TEST(SoftmaxDelta, MatchesRowSums) {
  RINGATTN_SEEDED_RNG(rng);
  const Tensor<double> out = random_tensor<double>({2, 7, 3, 16}, rng);
  const Tensor<double> dout = random_tensor<double>({2, 7, 3, 16}, rng);
  const Tensor<double> got = ringattn::ref::softmax_delta(out, dout);
  ASSERT_EQ(got.shape(), (std::vector<std::int64_t>{2, 3, 7}));
  EXPECT_TRUE(AllClose(got, delta_of(out, dout), 1e-14, 1e-14));
  const Tensor<float> gotf = ringattn::ref::softmax_delta(convert<float>(out), convert<float>(dout));
  EXPECT_TRUE(AllClose(gotf, delta_of(to_double(convert<float>(out)), to_double(convert<float>(dout))),
                       1e-5, 1e-5));
}

// ---- invalid inputs ------------------------------------------------------------------------

using BackwardFn = std::function<void(const Tensor<double>&, const Tensor<double>&,
                                      const Tensor<double>&, const Tensor<double>&,
                                      const Tensor<double>&, const Tensor<double>&,
                                      const AttentionOptions&)>;

std::vector<std::pair<std::string, BackwardFn>> backward_entry_points() {
  return {
      {"naive",
       [](auto& q, auto& k, auto& v, auto& o, auto& l, auto& d, auto& opt) {
         (void)ringattn::ref::naive_backward(q, k, v, o, l, d, opt);
       }},
      {"blockwise",
       [](auto& q, auto& k, auto& v, auto& o, auto& l, auto& d, auto& opt) {
         (void)ringattn::ref::blockwise_backward(q, k, v, o, l, d, opt);
       }},
  };
}

TEST(BackwardInvalid, WrongShapedOutLseDoutThrowOneLineError) {
  const Tensor<double> q({1, 8, 4, 16}, 0.5), k({1, 6, 2, 16}, 0.25), v({1, 6, 2, 16}, 1.0);
  const Tensor<double> out({1, 8, 4, 16}, 0.1), lse({1, 4, 8}, 0.0), dout({1, 8, 4, 16}, 1.0);
  const AttentionOptions options;
  struct Bad {
    std::string name;
    std::vector<std::int64_t> out, lse, dout;
  };
  const std::vector<Bad> bad = {
      {"out_seq", {1, 7, 4, 16}, {1, 4, 8}, {1, 8, 4, 16}},
      {"out_dim", {1, 8, 4, 8}, {1, 4, 8}, {1, 8, 4, 16}},
      {"out_rank3", {8, 4, 16}, {1, 4, 8}, {1, 8, 4, 16}},
      {"lse_transposed", {1, 8, 4, 16}, {1, 8, 4}, {1, 8, 4, 16}},
      {"lse_rank4", {1, 8, 4, 16}, {1, 4, 8, 1}, {1, 8, 4, 16}},
      {"lse_batch", {1, 8, 4, 16}, {2, 4, 8}, {1, 8, 4, 16}},
      {"dout_heads", {1, 8, 4, 16}, {1, 4, 8}, {1, 8, 2, 16}},
      {"dout_seq_kv", {1, 8, 4, 16}, {1, 4, 8}, {1, 6, 4, 16}},
      {"dout_rank3", {1, 8, 4, 16}, {1, 4, 8}, {8, 4, 16}},
  };
  ringattn::AttentionShape shape = ringattn::ref::check_qkv(q, k, v);
  for (const auto& entry : backward_entry_points()) {
    const std::string& fname = entry.first;
    const BackwardFn& fn = entry.second;
    EXPECT_NO_THROW(fn(q, k, v, out, lse, dout, options)) << fname;
    for (const Bad& b : bad) {
      SCOPED_TRACE(fname + " / " + b.name);
      const Tensor<double> o2(b.out, 0.1), l2(b.lse, 0.0), d2(b.dout, 1.0);
      EXPECT_TRUE(ThrowsError([&] { fn(q, k, v, o2, l2, d2, options); }));
      EXPECT_TRUE(ThrowsError([&] { ringattn::ref::check_backward_inputs(shape, o2, l2, d2); }));
    }
    // Bad Q/K/V and options are rejected by the backward too.
    SCOPED_TRACE(fname);
    const Tensor<double> k3({1, 6, 3, 16}, 0.25);
    EXPECT_TRUE(ThrowsError([&] { fn(q, k3, k3, out, lse, dout, options); }, {"3", "4"}));
    const Tensor<double> vbad({1, 5, 2, 16}, 1.0);
    EXPECT_TRUE(ThrowsError([&] { fn(q, k, vbad, out, lse, dout, options); }));
    AttentionOptions nan_scale;
    nan_scale.scale = std::nan("");
    EXPECT_TRUE(ThrowsError([&] { fn(q, k, v, out, lse, dout, nan_scale); }));
    AttentionOptions zero_scale;
    zero_scale.scale = 0.0;
    EXPECT_TRUE(ThrowsError([&] { fn(q, k, v, out, lse, dout, zero_scale); }));
  }
  AttentionOptions zero_block;
  zero_block.block_q = 0;
  EXPECT_TRUE(ThrowsError([&] {
    (void)ringattn::ref::blockwise_backward(q, k, v, out, lse, dout, zero_block);
  }));
  zero_block.block_q = 4;
  zero_block.block_kv = 0;
  EXPECT_TRUE(ThrowsError([&] {
    (void)ringattn::ref::blockwise_backward(q, k, v, out, lse, dout, zero_block);
  }));
  EXPECT_NO_THROW(ringattn::ref::check_backward_inputs(shape, out, lse, dout));
}

}  // namespace
