// Forward attention of the reference (naive, blockwise, flash-decoding, and the block_forward
// kernel on views) against the long-double oracle: every shape family (odd lengths, S_q != S_kv
// both ways, GQA), causal or not, tiles that do not divide S, float and double, large logits.
// Also: rows with no visible key, poisoned outputs, and invalid inputs.
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
using ringattn::ref::ForwardResult;
using namespace ringattn::test;  // NOLINT(google-build-using-namespace): test helpers

constexpr double kInf = std::numeric_limits<double>::infinity();

// ---- the oracle itself, on cases small enough to work out by hand ----------------------------

TEST(Oracle, HandWorkedForward) {
  // D = 1, scale 1: q = 1, keys 0 and ln 3 -> weights 1/4, 3/4; values 10, 20 -> O = 17.5.
  Tensor<double> q({1, 1, 1, 1}, 1.0);
  Tensor<double> k({1, 2, 1, 1});
  Tensor<double> v({1, 2, 1, 1});
  k[0] = 0.0;
  k[1] = std::log(3.0);
  v[0] = 10.0;
  v[1] = 20.0;
  const auto f = oracle_forward(q, k, v, false, 1.0);
  EXPECT_NEAR(f.out[0], 17.5, 1e-14);
  EXPECT_NEAR(f.lse[0], std::log(4.0), 1e-15);
  // Causal, one query end-aligned at position 1: sees both keys, same result.
  const auto c = oracle_forward(q, k, v, true, 1.0);
  EXPECT_NEAR(c.out[0], 17.5, 1e-14);
  // Two queries against one key, causal: query 0 sits at position -1 and sees nothing.
  Tensor<double> q2({1, 2, 1, 1}, 2.0);
  Tensor<double> k1({1, 1, 1, 1}, 0.5);
  Tensor<double> v1({1, 1, 1, 1}, -3.0);
  const auto e = oracle_forward(q2, k1, v1, true, 1.0);
  EXPECT_EQ(e.out[0], 0.0);
  EXPECT_EQ(e.lse[0], -kInf);
  EXPECT_NEAR(e.out[1], -3.0, 1e-15);
  EXPECT_NEAR(e.lse[1], 1.0, 1e-15);  // log(exp(2 * 0.5))
}

TEST(Oracle, GqaMapsHeadToGroup) {
  // H_q = 4, H_kv = 2: query heads 0,1 read K/V head 0; heads 2,3 read head 1.
  Tensor<double> q({1, 1, 4, 1}, 0.0);
  Tensor<double> k({1, 1, 2, 1}, 0.0);
  Tensor<double> v({1, 1, 2, 1});
  v[0] = 7.0;
  v[1] = -2.0;
  const auto f = oracle_forward(q, k, v, false, 1.0);
  EXPECT_EQ(f.out[0], 7.0);
  EXPECT_EQ(f.out[1], 7.0);
  EXPECT_EQ(f.out[2], -2.0);
  EXPECT_EQ(f.out[3], -2.0);
}

// ---- the comparison helpers must be able to fail ---------------------------------------------

TEST(CheckHelpers, AllCloseFailsOnNaNInfinityAndNamesTheIndex) {
  Tensor<double> a({2, 3, 4}, 1.0), e({2, 3, 4}, 1.0);
  EXPECT_TRUE(AllClose(a, e, 0.0, 0.0));
  a[13] = 1.0 + 1e-9;  // (1, 0, 1)
  const auto r = AllClose(a, e, 1e-12, 1e-12);
  EXPECT_FALSE(r);
  EXPECT_NE(std::string(r.message()).find("(1, 0, 1)"), std::string::npos) << r.message();
  EXPECT_NE(std::string(r.message()).find("flat index 13"), std::string::npos) << r.message();
  EXPECT_TRUE(AllClose(a, e, 1e-8, 0.0));
  a[13] = std::nan("");
  EXPECT_FALSE(AllClose(a, e, 1e300, 1e300)) << "NaN never passes";
  EXPECT_FALSE(AllClose(e, a, 1e300, 1e300)) << "NaN never passes, expected side either";
  a[13] = -kInf;
  EXPECT_FALSE(AllClose(a, e, 1e300, 1e300)) << "-inf against a finite value";
  e[13] = -kInf;
  EXPECT_TRUE(AllClose(a, e, 0.0, 0.0)) << "-inf matches -inf exactly";
  a[13] = kInf;
  EXPECT_FALSE(AllClose(a, e, 1e300, 1e300)) << "+inf against -inf";
  EXPECT_FALSE(AllClose(Tensor<double>({2, 3}), Tensor<double>({3, 2}), 1, 1)) << "shapes";
  EXPECT_FALSE(AllFinite(a));
  EXPECT_TRUE(AllFinite(Tensor<float>({3}, 2.0f)));
}

TEST(CheckHelpers, SeedsAreFreshPerDrawAndStablePerTest) {
  const std::uint64_t s1 = fresh_seed(), s2 = fresh_seed();
  EXPECT_NE(s1, s2);
  std::mt19937_64 r1(s1), r2(s1);
  const auto t1 = random_tensor<double>({4, 5}, r1, Dist::Uniform, 100.0);
  const auto t2 = random_tensor<double>({4, 5}, r2, Dist::Uniform, 100.0);
  EXPECT_TRUE(AllClose(t1, t2, 0.0, 0.0)) << "same seed, same tensor";
  EXPECT_LE(max_abs(t1), 100.0);
  EXPECT_GT(max_abs(t1), 1.0) << "the multiplier is applied";
}

// ---- the parameterized sweep ------------------------------------------------------------------

enum class Path { Naive, Blockwise, Decode };

struct Kernel {
  Path path = Path::Naive;
  std::int64_t block_q = 64;
  std::int64_t block_kv = 128;
  std::int64_t splits = 1;
};

std::string kernel_name(const Kernel& k) {
  switch (k.path) {
    case Path::Naive:
      return "naive";
    case Path::Blockwise:
      return "blockwise_Br" + std::to_string(k.block_q) + "_Bc" + std::to_string(k.block_kv);
    case Path::Decode:
      return "decode_splits" + std::to_string(k.splits);
  }
  return "unknown";
}

template <class T>
ForwardResult<T> run(const Kernel& kernel, const Tensor<T>& q, const Tensor<T>& k,
                     const Tensor<T>& v, AttentionOptions options) {
  options.block_q = kernel.block_q;
  options.block_kv = kernel.block_kv;
  switch (kernel.path) {
    case Path::Naive:
      return ringattn::ref::naive_forward(q, k, v, options);
    case Path::Blockwise:
      return ringattn::ref::blockwise_forward(q, k, v, options);
    case Path::Decode:
      return ringattn::ref::decode_forward(q, k, v, kernel.splits, options);
  }
  return {};
}

const std::vector<ShapeCase>& forward_shapes() {
  static const std::vector<ShapeCase> shapes = {
      {1, 1, 1, 1, 1, 8},      // a single token
      {1, 7, 7, 4, 2, 16},     // odd length, GQA 2
      {2, 33, 33, 6, 3, 8},    // odd length, B = 2, GQA 2 with 3 groups
      {1, 100, 100, 1, 1, 16}, // longer than the default tiles
      {2, 7, 33, 4, 2, 16},    // fewer queries than keys (end-aligned)
      {1, 33, 7, 8, 1, 8},     // more queries than keys: causal rows with no key, MQA
      {1, 1, 100, 8, 1, 64},   // decode-like: one query, long cache, D = 64
      {2, 16, 16, 2, 1, 64},   // even, D = 64
      {1, 100, 33, 4, 2, 8},   // more queries than keys, uneven
  };
  return shapes;
}

const std::vector<Kernel>& forward_kernels() {
  static const std::vector<Kernel> kernels = {
      {Path::Naive, 64, 128, 1},
      {Path::Blockwise, 64, 128, 1},   // defaults: tiles larger than most S
      {Path::Blockwise, 5, 7, 1},      // tiles that divide nothing
      {Path::Blockwise, 1, 1, 1},      // degenerate tiles
      {Path::Blockwise, 16, 3, 1},
      {Path::Blockwise, 512, 1024, 1}, // tiles far larger than S
      {Path::Decode, 5, 7, 3},
  };
  return kernels;
}

// One case: a shape, causal or not, a precision; every kernel runs on the same inputs (the kernel
// is named by SCOPED_TRACE on failure). Fewer, fuller cases keep ctest's one-process-per-case
// overhead small under the sanitizers.
using ForwardParam = std::tuple<ShapeCase, bool, Precision>;

std::string forward_param_name(const ::testing::TestParamInfo<ForwardParam>& tp) {
  const auto& [shape, causal, prec] = tp.param;
  return to_string(shape) + (causal ? "_causal_" : "_full_") + to_string(prec);
}

template <class T>
void check_forward(const ShapeCase& shape, bool causal, const std::vector<Kernel>& kernels,
                   double multiplier) {
  RINGATTN_SEEDED_RNG(rng);
  const Inputs<T> in = random_inputs<T>(shape, rng, multiplier);
  const Tensor<double> q = to_double(in.q), k = to_double(in.k), v = to_double(in.v);
  const OracleForward want = oracle_forward(q, k, v, causal);
  const double scale = 1.0 / std::sqrt(static_cast<double>(shape.head_dim));
  const double logit = max_abs_logit(q, k, scale);
  const Tolerance to = tolerance_for<T>(max_abs(want.out), logit);
  const Tolerance tl = tolerance_for<T>(1.0, logit);
  AttentionOptions options;
  options.causal = causal;
  for (const Kernel& kernel : kernels) {
    SCOPED_TRACE("kernel " + kernel_name(kernel));
    const ForwardResult<T> got = run(kernel, in.q, in.k, in.v, options);
    EXPECT_TRUE(AllClose(got.out, want.out, to.atol, to.rtol)) << "O, max |logit| " << logit;
    EXPECT_TRUE(AllClose(got.lse, want.lse, tl.atol, tl.rtol)) << "LSE, max |logit| " << logit;
    std::int64_t empty = 0;
    EXPECT_TRUE(EmptyRowsExact(got.out, got.lse, want.lse, &empty));
    // Causal with more queries than keys must have exercised rows that see no key.
    if (causal && shape.seq_q > shape.seq_kv) {
      EXPECT_EQ(empty, shape.batch * shape.heads_q * (shape.seq_q - shape.seq_kv));
    } else {
      EXPECT_EQ(empty, 0);
    }
  }
}

class ForwardSweep : public ::testing::TestWithParam<ForwardParam> {};

TEST_P(ForwardSweep, EveryKernelMatchesOracle) {
  const auto& [shape, causal, prec] = GetParam();
  if (prec == Precision::Double) {
    check_forward<double>(shape, causal, forward_kernels(), 1.0);
  } else {
    check_forward<float>(shape, causal, forward_kernels(), 1.0);
  }
}

INSTANTIATE_TEST_SUITE_P(Reference, ForwardSweep,
                         ::testing::Combine(::testing::ValuesIn(forward_shapes()),
                                            ::testing::Bool(),
                                            ::testing::Values(Precision::Float, Precision::Double)),
                         forward_param_name);

// Logits ~100x the usual size: the softmax must subtract the running max (no overflow, no NaN)
// and still match the oracle within a tolerance that grows with the logits.
class LargeLogits : public ::testing::TestWithParam<ForwardParam> {};

TEST_P(LargeLogits, NoOverflowAndMatchesOracle) {
  const auto& [shape, causal, prec] = GetParam();
  const std::vector<Kernel> kernels = {{Path::Naive, 64, 128, 1},
                                       {Path::Blockwise, 5, 7, 1},
                                       {Path::Blockwise, 64, 128, 1},
                                       {Path::Decode, 64, 128, 4}};
  if (prec == Precision::Double) {
    check_forward<double>(shape, causal, kernels, 100.0);
  } else {
    check_forward<float>(shape, causal, kernels, 100.0);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Reference, LargeLogits,
    ::testing::Combine(::testing::Values(ShapeCase{1, 7, 7, 4, 2, 16}, ShapeCase{2, 33, 7, 2, 1, 64},
                                         ShapeCase{1, 5, 40, 6, 3, 8}),
                       ::testing::Bool(), ::testing::Values(Precision::Float, Precision::Double)),
    forward_param_name);

TEST(Forward, ExplicitScaleIsUsed) {
  RINGATTN_SEEDED_RNG(rng);
  const ShapeCase shape{1, 9, 12, 4, 2, 16};
  const Inputs<double> in = random_inputs<double>(shape, rng);
  for (double scale : {0.37, 1.0, 2.5}) {
    AttentionOptions options;
    options.causal = true;
    options.scale = scale;
    options.block_q = 4;
    options.block_kv = 5;
    const OracleForward want = oracle_forward(in.q, in.k, in.v, true, scale);
    const double logit = max_abs_logit(in.q, in.k, scale);
    const Tolerance t = tolerance_for<double>(max_abs(want.out), logit);
    for (const Kernel& kernel : forward_kernels()) {
      SCOPED_TRACE(kernel_name(kernel) + " scale " + std::to_string(scale));
      const auto got = run(kernel, in.q, in.k, in.v, options);
      EXPECT_TRUE(AllClose(got.out, want.out, t.atol, t.rtol));
      EXPECT_TRUE(AllClose(got.lse, want.lse, tolerance_for<double>(1, logit).atol, t.rtol));
    }
  }
  // The default is 1/sqrt(D), and differs from scale 1: a test that could not fail is a defect.
  AttentionOptions defaults;
  const auto got = ringattn::ref::naive_forward(in.q, in.k, in.v, defaults);
  const OracleForward unit = oracle_forward(in.q, in.k, in.v, false, 1.0);
  EXPECT_FALSE(AllClose(got.out, unit.out, 1e-6, 1e-6));
  EXPECT_DOUBLE_EQ(ringattn::ref::resolve_scale(defaults, 16), 0.25);
  defaults.scale = 0.7;
  EXPECT_DOUBLE_EQ(ringattn::ref::resolve_scale(defaults, 16), 0.7);
}

TEST(Forward, UniformInputsAndCausalSquareHasNoEmptyRows) {
  RINGATTN_SEEDED_RNG(rng);
  const ShapeCase shape{2, 17, 17, 3, 1, 8};
  const Inputs<double> in = random_inputs<double>(shape, rng, 1.0, Dist::Uniform);
  AttentionOptions options;
  options.causal = true;
  options.block_q = 3;
  options.block_kv = 4;
  const auto got = ringattn::ref::blockwise_forward(in.q, in.k, in.v, options);
  const auto want = oracle_forward(in.q, in.k, in.v, true);
  EXPECT_TRUE(AllClose(got.out, want.out, 1e-12, 1e-12));
  EXPECT_TRUE(AllClose(got.lse, want.lse, 1e-12, 1e-12));
  EXPECT_TRUE(AllFinite(got.lse));
  // Row 0 of a causal square sees exactly key 0: O equals V's row 0 of its head group.
  for (std::int64_t h = 0; h < 3; ++h) {
    for (std::int64_t x = 0; x < 8; ++x) {
      EXPECT_NEAR(got.out[h * 8 + x], in.v[x], 1e-15);
    }
  }
}

// ---- block_forward on views: poisoned outputs, sub-ranges, arbitrary positions ---------------

struct PositionsCase {
  std::string name;
  ringattn::Positions qpos;
  ringattn::Positions kpos;
};

std::ostream& operator<<(std::ostream& os, const PositionsCase& c) { return os << c.name; }

using BlockParam = std::tuple<PositionsCase, bool>;

class BlockForward : public ::testing::TestWithParam<BlockParam> {};

template <class T>
void check_block_forward(const PositionsCase& pc, bool causal) {
  RINGATTN_SEEDED_RNG(rng);
  // The kernel's views sit in the middle of larger buffers: rows outside must stay untouched.
  const std::int64_t B = 2, Sq = 11, Skv = 13, Hq = 4, Hkv = 2, D = 8, pad = 3;
  const Tensor<T> qbuf = random_tensor<T>({B, Sq + 2 * pad, Hq, D}, rng);
  const Tensor<T> kbuf = random_tensor<T>({B, Skv + pad, Hkv, D}, rng);
  const Tensor<T> vbuf = random_tensor<T>({B, Skv + pad, Hkv, D}, rng);
  const T nan = std::numeric_limits<T>::quiet_NaN();
  Tensor<T> obuf({B, Sq + 2 * pad, Hq, D}, nan);
  Tensor<T> lbuf({B, Hq, Sq + 2 * pad}, nan);
  ringattn::ref::KernelArgs args;
  args.qpos = pc.qpos;
  args.kpos = pc.kpos;
  args.causal = causal;
  args.scale = 0.3;
  args.block_q = 4;
  args.block_kv = 3;
  const std::int64_t q0 = pad, k0 = 1, o0 = 2 * pad, l0 = 1;
  ringattn::ref::block_forward<T>(ringattn::seq_view(qbuf).rows(q0, Sq),
                                  ringattn::seq_view(kbuf).rows(k0, Skv),
                                  ringattn::seq_view(vbuf).rows(k0, Skv), args,
                                  ringattn::seq_view(obuf).rows(o0, Sq),
                                  ringattn::lse_view(lbuf).rows(l0, Sq));
  // Contiguous copies of the rows the kernel saw, for the oracle.
  Tensor<double> q({B, Sq, Hq, D}), k({B, Skv, Hkv, D}), v({B, Skv, Hkv, D});
  Tensor<T> out({B, Sq, Hq, D}), lse({B, Hq, Sq});
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t i = 0; i < Sq; ++i) {
      for (std::int64_t e = 0; e < Hq * D; ++e) {
        q[(b * Sq + i) * Hq * D + e] = qbuf[(b * (Sq + 2 * pad) + q0 + i) * Hq * D + e];
        out[(b * Sq + i) * Hq * D + e] = obuf[(b * (Sq + 2 * pad) + o0 + i) * Hq * D + e];
      }
      for (std::int64_t h = 0; h < Hq; ++h) {
        lse[(b * Hq + h) * Sq + i] = lbuf[(b * Hq + h) * (Sq + 2 * pad) + l0 + i];
      }
    }
    for (std::int64_t j = 0; j < Skv; ++j) {
      for (std::int64_t e = 0; e < Hkv * D; ++e) {
        k[(b * Skv + j) * Hkv * D + e] = kbuf[(b * (Skv + pad) + k0 + j) * Hkv * D + e];
        v[(b * Skv + j) * Hkv * D + e] = vbuf[(b * (Skv + pad) + k0 + j) * Hkv * D + e];
      }
    }
  }
  std::vector<std::int64_t> qp(static_cast<std::size_t>(Sq)), kp(static_cast<std::size_t>(Skv));
  for (std::int64_t i = 0; i < Sq; ++i) qp[static_cast<std::size_t>(i)] = pc.qpos.at(i);
  for (std::int64_t j = 0; j < Skv; ++j) kp[static_cast<std::size_t>(j)] = pc.kpos.at(j);
  const OracleForward want = oracle_forward(q, k, v, 0.3, causal, qp, kp);
  const double logit = max_abs_logit(q, k, 0.3);
  const Tolerance to = tolerance_for<T>(max_abs(want.out), logit);
  const Tolerance tl = tolerance_for<T>(1.0, logit);
  // Every element inside the views was written (no NaN left) and matches.
  EXPECT_TRUE(AllFinite(out));
  EXPECT_TRUE(AllClose(out, want.out, to.atol, to.rtol)) << "O";
  EXPECT_TRUE(AllClose(lse, want.lse, tl.atol, tl.rtol)) << "LSE";
  EXPECT_TRUE(EmptyRowsExact(out, lse, want.lse));
  // Every element outside the views is still the poison.
  std::int64_t touched = 0;
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t i = 0; i < Sq + 2 * pad; ++i) {
      const bool inside_o = i >= o0 && i < o0 + Sq;
      const bool inside_l = i >= l0 && i < l0 + Sq;
      for (std::int64_t e = 0; e < Hq * D; ++e) {
        if (!inside_o && !std::isnan(obuf[(b * (Sq + 2 * pad) + i) * Hq * D + e])) ++touched;
      }
      for (std::int64_t h = 0; h < Hq; ++h) {
        if (!inside_l && !std::isnan(lbuf[(b * Hq + h) * (Sq + 2 * pad) + i])) ++touched;
      }
    }
  }
  EXPECT_EQ(touched, 0) << "block_forward wrote outside its output views";
}

TEST_P(BlockForward, PoisonedOutputsFullyWrittenAndMatchOracle) {
  const auto& [pc, causal] = GetParam();
  {
    SCOPED_TRACE("double");
    check_block_forward<double>(pc, causal);
  }
  {
    SCOPED_TRACE("float");
    check_block_forward<float>(pc, causal);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Reference, BlockForward,
    ::testing::Combine(
        ::testing::Values(
            PositionsCase{"aligned", {2, 1}, {0, 1}},            // S_kv - S_q = 2
            PositionsCase{"same", {0, 1}, {0, 1}},               // diagonal; keys 11, 12 unseen
            PositionsCase{"strided", {3, 4}, {1, 2}},            // striped-like interleave
            PositionsCase{"late_queries", {-6, 1}, {0, 1}},      // first 6 rows see no key
            PositionsCase{"keys_after", {0, 1}, {100, 1}},       // causal: nothing visible
            PositionsCase{"keys_before", {100, 3}, {0, 2}}),     // everything visible
        ::testing::Bool()),
    [](const ::testing::TestParamInfo<BlockParam>& tp) {
      return std::get<0>(tp.param).name + (std::get<1>(tp.param) ? "_causal" : "_full");
    });

// A kernel call that gives no scale uses 1/sqrt(D), as AttentionOptions does (not 1.0); a
// given scale must be finite and positive.
TEST(BlockForwardScale, UnsetScaleIsInverseSqrtHeadDim) {
  RINGATTN_SEEDED_RNG(rng);
  const std::int64_t B = 1, S = 9, H = 2, D = 16;
  const Tensor<double> q = random_tensor<double>({B, S, H, D}, rng);
  const Tensor<double> k = random_tensor<double>({B, S, H, D}, rng);
  const Tensor<double> v = random_tensor<double>({B, S, H, D}, rng);
  Tensor<double> out({B, S, H, D}), lse({B, H, S});
  ringattn::ref::KernelArgs args;
  args.causal = true;
  ringattn::ref::block_forward<double>(ringattn::seq_view(q), ringattn::seq_view(k), ringattn::seq_view(v),
                                       args, ringattn::seq_view(out), ringattn::lse_view(lse));
  const OracleForward want = oracle_forward(q, k, v, /*causal=*/true);  // 1/sqrt(D)
  EXPECT_TRUE(AllClose(out, want.out, 1e-12, 1e-12));
  EXPECT_TRUE(AllClose(lse, want.lse, 1e-12, 1e-12));
  for (double bad : {0.0, -0.5, std::nan(""), kInf}) {
    args.scale = bad;
    EXPECT_TRUE(ThrowsError([&] {
      ringattn::ref::block_forward<double>(ringattn::seq_view(q), ringattn::seq_view(k), ringattn::seq_view(v),
                                           args, ringattn::seq_view(out), ringattn::lse_view(lse));
    })) << bad;
  }
}

// ---- invalid inputs: ringattn::Error with a one-line message, never a crash -------------------

using ForwardFn = std::function<void(const Tensor<double>&, const Tensor<double>&,
                                     const Tensor<double>&, const AttentionOptions&)>;

std::vector<std::pair<std::string, ForwardFn>> forward_entry_points() {
  return {
      {"naive", [](auto& q, auto& k, auto& v, auto& o) { (void)ringattn::ref::naive_forward(q, k, v, o); }},
      {"blockwise",
       [](auto& q, auto& k, auto& v, auto& o) { (void)ringattn::ref::blockwise_forward(q, k, v, o); }},
      {"decode",
       [](auto& q, auto& k, auto& v, auto& o) { (void)ringattn::ref::decode_forward(q, k, v, 2, o); }},
  };
}

struct BadInput {
  std::string name;
  std::vector<std::int64_t> q, k, v;
  std::vector<std::string> mentions;  // numbers the message must name
};

TEST(ForwardInvalid, BadShapesThrowOneLineError) {
  const std::vector<BadInput> bad = {
      {"batch_mismatch", {1, 8, 4, 16}, {2, 8, 2, 16}, {2, 8, 2, 16}, {}},
      {"head_dim_mismatch", {1, 8, 4, 16}, {1, 8, 2, 8}, {1, 8, 2, 8}, {}},
      {"v_seq_differs_from_k", {1, 8, 4, 16}, {1, 8, 2, 16}, {1, 9, 2, 16}, {}},
      {"v_heads_differ_from_k", {1, 8, 4, 16}, {1, 8, 2, 16}, {1, 8, 1, 16}, {}},
      {"v_dim_differs_from_k", {1, 8, 4, 16}, {1, 8, 2, 16}, {1, 8, 2, 8}, {}},
      {"heads_not_multiple", {1, 8, 4, 16}, {1, 8, 3, 16}, {1, 8, 3, 16}, {"3", "4"}},
      {"more_kv_heads", {1, 8, 2, 16}, {1, 8, 4, 16}, {1, 8, 4, 16}, {}},
      {"q_rank3", {8, 4, 16}, {1, 8, 2, 16}, {1, 8, 2, 16}, {}},
      {"k_rank3", {1, 8, 4, 16}, {8, 2, 16}, {1, 8, 2, 16}, {}},
      {"v_rank5", {1, 8, 4, 16}, {1, 8, 2, 16}, {1, 1, 8, 2, 16}, {}},
      {"zero_batch", {0, 8, 4, 16}, {0, 8, 2, 16}, {0, 8, 2, 16}, {}},
      {"zero_seq_q", {1, 0, 4, 16}, {1, 8, 2, 16}, {1, 8, 2, 16}, {}},
      {"zero_seq_kv", {1, 8, 4, 16}, {1, 0, 2, 16}, {1, 0, 2, 16}, {}},
      {"zero_heads", {1, 8, 0, 16}, {1, 8, 0, 16}, {1, 8, 0, 16}, {}},
      {"zero_dim", {1, 8, 4, 0}, {1, 8, 2, 0}, {1, 8, 2, 0}, {}},
  };
  for (const auto& entry : forward_entry_points()) {
    const std::string& fname = entry.first;
    const ForwardFn& fn = entry.second;
    for (const BadInput& b : bad) {
      SCOPED_TRACE(fname + " / " + b.name);
      const Tensor<double> q(b.q, 0.5), k(b.k, 0.25), v(b.v, 1.0);
      const AttentionOptions options;
      EXPECT_TRUE(ThrowsError([&] { fn(q, k, v, options); }, b.mentions));
      EXPECT_TRUE(ThrowsError([&] { (void)ringattn::ref::check_qkv(q, k, v); }, b.mentions));
    }
  }
}

TEST(ForwardInvalid, BadOptionsThrowOneLineError) {
  const Tensor<double> q({1, 8, 4, 16}, 0.5), k({1, 8, 2, 16}, 0.25), v({1, 8, 2, 16}, 1.0);
  for (const auto& entry : forward_entry_points()) {
    const std::string& fname = entry.first;
    const ForwardFn& fn = entry.second;
    for (double scale : {0.0, -1.0, std::nan(""), kInf, -kInf}) {
      SCOPED_TRACE(fname + " scale " + std::to_string(scale));
      AttentionOptions options;
      options.scale = scale;
      EXPECT_TRUE(ThrowsError([&] { fn(q, k, v, options); }));
      EXPECT_TRUE(ThrowsError([&] { ringattn::ref::check_options(options); }));
    }
  }
  const std::vector<std::pair<std::int64_t, std::int64_t>> blocks = {
      {0, 128}, {64, 0}, {-1, 128}, {64, -5}};
  for (const auto& [bq, bk] : blocks) {
    SCOPED_TRACE("block_q " + std::to_string(bq) + " block_kv " + std::to_string(bk));
    AttentionOptions options;
    options.block_q = bq;
    options.block_kv = bk;
    EXPECT_TRUE(ThrowsError([&] { (void)ringattn::ref::blockwise_forward(q, k, v, options); }));
    EXPECT_TRUE(ThrowsError([&] { ringattn::ref::check_options(options); }));
  }
  EXPECT_NO_THROW(ringattn::ref::check_options(AttentionOptions{}));
}

TEST(ForwardInvalid, DecodeSplitsMustBePositive) {
  const Tensor<double> q({1, 1, 4, 16}, 0.5), k({1, 8, 2, 16}, 0.25), v({1, 8, 2, 16}, 1.0);
  for (std::int64_t splits : {std::int64_t{0}, std::int64_t{-3}}) {
    EXPECT_TRUE(ThrowsError([&] { (void)ringattn::ref::decode_forward(q, k, v, splits); }))
        << "splits " << splits;
  }
}

TEST(ForwardInvalid, CheckQkvReturnsShape) {
  const Tensor<float> q({2, 7, 6, 16}), k({2, 9, 3, 16}), v({2, 9, 3, 16});
  const ringattn::AttentionShape s = ringattn::ref::check_qkv(q, k, v);
  EXPECT_EQ(s.batch, 2);
  EXPECT_EQ(s.seq_q, 7);
  EXPECT_EQ(s.seq_kv, 9);
  EXPECT_EQ(s.heads_q, 6);
  EXPECT_EQ(s.heads_kv, 3);
  EXPECT_EQ(s.head_dim, 16);
}

}  // namespace
