// Flash-decoding (split keys, combine partials) and the LSE merge against the long-double oracle:
// order independence, -inf safety (rows that see no key), huge LSE values, views, and invalid
// inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/check.hpp"
#include "common/oracle.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/core/tensor.hpp"
#include "ringattn/reference/attention.hpp"

namespace {

using ringattn::Tensor;
using ringattn::ref::AttentionOptions;
using ringattn::ref::ForwardResult;
using namespace ringattn::test;  // NOLINT(google-build-using-namespace): test helpers

constexpr double kInf = std::numeric_limits<double>::infinity();

// ---- flash-decoding ------------------------------------------------------------------------

enum class Splits { One, Three, EqualsSkv, MoreThanSkv };

std::string splits_name(Splits s) {
  switch (s) {
    case Splits::One:
      return "splits1";
    case Splits::Three:
      return "splits3";
    case Splits::EqualsSkv:
      return "splitsSkv";
    case Splits::MoreThanSkv:
      return "splitsSkvPlus5";
  }
  return "unknown";
}

std::int64_t splits_for(Splits s, std::int64_t seq_kv) {
  switch (s) {
    case Splits::One:
      return 1;
    case Splits::Three:
      return 3;
    case Splits::EqualsSkv:
      return seq_kv;
    case Splits::MoreThanSkv:
      return seq_kv + 5;  // some splits are empty
  }
  return 1;
}

using DecodeParam = std::tuple<ShapeCase, bool, Precision>;

class Decode : public ::testing::TestWithParam<DecodeParam> {};

template <class T>
void check_decode(const ShapeCase& shape, bool causal, Splits splits) {
  RINGATTN_SEEDED_RNG(rng);
  const Inputs<T> in = random_inputs<T>(shape, rng);
  AttentionOptions options;
  options.causal = causal;
  options.block_q = 2;
  options.block_kv = 3;
  const ForwardResult<T> got =
      ringattn::ref::decode_forward(in.q, in.k, in.v, splits_for(splits, shape.seq_kv), options);
  const Tensor<double> q = to_double(in.q), k = to_double(in.k);
  const OracleForward want = oracle_forward(q, k, to_double(in.v), causal);
  const double logit = max_abs_logit(q, k, 1.0 / std::sqrt(static_cast<double>(shape.head_dim)));
  const Tolerance to = tolerance_for<T>(max_abs(want.out), logit);
  const Tolerance tl = tolerance_for<T>(1.0, logit);
  EXPECT_TRUE(AllClose(got.out, want.out, to.atol, to.rtol)) << "O";
  EXPECT_TRUE(AllClose(got.lse, want.lse, tl.atol, tl.rtol)) << "LSE";
  EXPECT_TRUE(EmptyRowsExact(got.out, got.lse, want.lse));
}

// Every split count in one case (named by SCOPED_TRACE on failure): fewer ctest processes.
TEST_P(Decode, EverySplitCountMatchesOracle) {
  const auto& [shape, causal, prec] = GetParam();
  for (Splits splits : {Splits::One, Splits::Three, Splits::EqualsSkv, Splits::MoreThanSkv}) {
    SCOPED_TRACE(splits_name(splits));
    if (prec == Precision::Double) {
      check_decode<double>(shape, causal, splits);
    } else {
      check_decode<float>(shape, causal, splits);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Reference, Decode,
    ::testing::Combine(::testing::Values(ShapeCase{1, 1, 1, 1, 1, 8}, ShapeCase{2, 1, 17, 4, 2, 16},
                                         ShapeCase{1, 3, 100, 8, 1, 64},
                                         ShapeCase{1, 7, 5, 6, 3, 8}),
                       ::testing::Bool(), ::testing::Values(Precision::Float, Precision::Double)),
    [](const ::testing::TestParamInfo<DecodeParam>& tp) {
      return to_string(std::get<0>(tp.param)) + (std::get<1>(tp.param) ? "_causal_" : "_full_") +
             to_string(std::get<2>(tp.param));
    });

// ---- partials over key ranges --------------------------------------------------------------

// Rows [r0, r0 + n) of a (B, S, H, D) tensor.
Tensor<double> slice_rows(const Tensor<double>& t, std::int64_t r0, std::int64_t n) {
  const std::int64_t B = t.dim(0), S = t.dim(1), HD = t.dim(2) * t.dim(3);
  Tensor<double> r({B, n, t.dim(2), t.dim(3)});
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t e = 0; e < HD; ++e) r[(b * n + i) * HD + e] = t[(b * S + r0 + i) * HD + e];
    }
  }
  return r;
}

// The oracle's (O, LSE) of all queries against keys [j0, j1) only, at their global positions.
OracleForward partial_over_keys(const Inputs<double>& in, bool causal, std::int64_t j0,
                                std::int64_t j1) {
  const std::int64_t sq = in.q.dim(1), skv = in.k.dim(1);
  return oracle_forward(in.q, slice_rows(in.k, j0, j1 - j0), slice_rows(in.v, j0, j1 - j0),
                        1.0 / std::sqrt(static_cast<double>(in.q.dim(3))), causal,
                        end_aligned_query_positions(sq, skv), arithmetic_positions(j1 - j0, j0));
}

template <class T>
ForwardResult<T> as_result(const OracleForward& f) {
  return {convert<T>(f.out), convert<T>(f.lse)};
}

template <class T>
ForwardResult<T> empty_accumulator(const ShapeCase& s) {
  return {Tensor<T>(s.q_shape(), T(0)),
          Tensor<T>(s.lse_shape(), -std::numeric_limits<T>::infinity())};
}

using MergeParam = std::tuple<bool, Precision>;

class MergeOrder : public ::testing::TestWithParam<MergeParam> {};

template <class T>
void check_merge_order(bool causal) {
  RINGATTN_SEEDED_RNG(rng);
  // More queries than keys: with causal masking some rows see no key in some (or all) parts.
  const ShapeCase shape{2, 23, 20, 4, 2, 8};
  const Inputs<double> in = random_inputs<double>(shape, rng);
  const std::vector<std::pair<std::int64_t, std::int64_t>> cuts = {{0, 6}, {6, 13}, {13, 20}};
  std::vector<ForwardResult<T>> parts;
  for (const auto& [j0, j1] : cuts) parts.push_back(as_result<T>(partial_over_keys(in, causal, j0, j1)));
  const OracleForward full = oracle_forward(in.q, in.k, in.v, causal);

  ForwardResult<T> abc = empty_accumulator<T>(shape);
  for (int p : {0, 1, 2}) {
    ringattn::ref::merge_into(abc.out, abc.lse, parts[static_cast<std::size_t>(p)].out,
                              parts[static_cast<std::size_t>(p)].lse);
  }
  ForwardResult<T> cba = empty_accumulator<T>(shape);
  for (int p : {2, 1, 0}) {
    ringattn::ref::merge_into(cba.out, cba.lse, parts[static_cast<std::size_t>(p)].out,
                              parts[static_cast<std::size_t>(p)].lse);
  }
  // Starting from a real partial instead of the empty accumulator.
  ForwardResult<T> bca = parts[1];
  ringattn::ref::merge_into(bca.out, bca.lse, parts[2].out, parts[2].lse);
  ringattn::ref::merge_into(bca.out, bca.lse, parts[0].out, parts[0].lse);
  const ForwardResult<T> combined = ringattn::ref::combine_partials(parts);
  const ForwardResult<T> combined_rev =
      ringattn::ref::combine_partials(std::vector<ForwardResult<T>>{parts[2], parts[0], parts[1]});

  const bool is_double = std::is_same_v<T, double>;
  const double same = is_double ? 1e-12 : 2e-6;  // between orders: rounding of T only
  const Tolerance to = tolerance_for<T>(max_abs(full.out), 4.0);
  const Tolerance tl = tolerance_for<T>(1.0, 4.0);
  const std::vector<const ForwardResult<T>*> results = {&abc, &cba, &bca, &combined, &combined_rev};
  for (const ForwardResult<T>* r : results) {
    EXPECT_TRUE(AllClose(r->out, abc.out, same, same)) << "O differs between merge orders";
    EXPECT_TRUE(AllClose(r->lse, abc.lse, same, same)) << "LSE differs between merge orders";
    EXPECT_TRUE(AllClose(r->out, full.out, to.atol, to.rtol)) << "merged O vs full attention";
    EXPECT_TRUE(AllClose(r->lse, full.lse, tl.atol, tl.rtol)) << "merged LSE vs full attention";
    EXPECT_TRUE(EmptyRowsExact(r->out, r->lse, full.lse));
  }
  if (causal) {
    // The case is built so that some rows see no key at all and some see only the first part.
    std::int64_t empty = 0;
    EXPECT_TRUE(EmptyRowsExact(abc.out, abc.lse, full.lse, &empty));
    EXPECT_GT(empty, 0);
  }
}

TEST_P(MergeOrder, OrderIndependentAndEqualsFullAttention) {
  const auto& [causal, prec] = GetParam();
  if (prec == Precision::Double) {
    check_merge_order<double>(causal);
  } else {
    check_merge_order<float>(causal);
  }
}

INSTANTIATE_TEST_SUITE_P(Reference, MergeOrder,
                         ::testing::Combine(::testing::Bool(),
                                            ::testing::Values(Precision::Float, Precision::Double)),
                         [](const ::testing::TestParamInfo<MergeParam>& tp) {
                           return std::string(std::get<0>(tp.param) ? "causal_" : "full_") +
                                  to_string(std::get<1>(tp.param));
                         });

// Splits computed by the reference's own kernel (block_forward on key sub-views) and merged give
// full attention: the ring's and flash-decoding's algorithm in miniature.
TEST(MergeSplits, BlockForwardOnKeySplitsMergesToFullAttention) {
  RINGATTN_SEEDED_RNG(rng);
  const ShapeCase shape{2, 11, 29, 6, 3, 16};
  const Inputs<double> in = random_inputs<double>(shape, rng);
  for (bool causal : {false, true}) {
    for (std::int64_t nsplit : {std::int64_t{1}, std::int64_t{2}, std::int64_t{5}, std::int64_t{29}}) {
      SCOPED_TRACE("causal " + std::to_string(causal) + " splits " + std::to_string(nsplit));
      ForwardResult<double> acc = empty_accumulator<double>(shape);
      for (std::int64_t p = 0; p < nsplit; ++p) {
        const std::int64_t j0 = p * 29 / nsplit, j1 = (p + 1) * 29 / nsplit;
        ForwardResult<double> part{Tensor<double>(shape.q_shape(), kInf),
                                   Tensor<double>(shape.lse_shape(), kInf)};
        ringattn::ref::KernelArgs args;
        args.qpos = {29 - 11, 1};
        args.kpos = {j0, 1};
        args.causal = causal;
        args.scale = 0.25;
        args.block_q = 4;
        args.block_kv = 4;
        ringattn::ref::block_forward<double>(
            ringattn::seq_view(in.q), ringattn::seq_view(in.k).rows(j0, j1 - j0),
            ringattn::seq_view(in.v).rows(j0, j1 - j0), args, ringattn::seq_view(part.out),
            ringattn::lse_view(part.lse));
        ringattn::ref::merge_into(acc.out, acc.lse, part.out, part.lse);
      }
      const OracleForward full = oracle_forward(in.q, in.k, in.v, causal);
      EXPECT_TRUE(AllClose(acc.out, full.out, 2e-12, 1e-12));
      EXPECT_TRUE(AllClose(acc.lse, full.lse, 2e-12, 1e-12));
    }
  }
}

// ---- -inf safety and extreme values --------------------------------------------------------

template <class T>
void check_merge_infinities() {
  RINGATTN_SEEDED_RNG(rng);
  const T inf = std::numeric_limits<T>::infinity();
  const std::int64_t B = 1, S = 4, H = 2, D = 3;
  // Row i of head h: i = 0 acc -inf / part finite; 1 acc finite / part -inf; 2 both -inf;
  // 3 both finite.
  Tensor<T> acc_o = random_tensor<T>({B, S, H, D}, rng);
  Tensor<T> part_o = random_tensor<T>({B, S, H, D}, rng);  // junk where its LSE is -inf
  Tensor<T> acc_l({B, H, S}), part_l({B, H, S});
  for (std::int64_t h = 0; h < H; ++h) {
    const T a = static_cast<T>(0.3 + static_cast<double>(h)), p = static_cast<T>(-1.2);
    acc_l[h * S + 0] = -inf;
    part_l[h * S + 0] = p;
    acc_l[h * S + 1] = a;
    part_l[h * S + 1] = -inf;
    acc_l[h * S + 2] = -inf;
    part_l[h * S + 2] = -inf;
    acc_l[h * S + 3] = a;
    part_l[h * S + 3] = p;
    // An empty accumulator's O is undefined (here poisoned with NaN): the merge must not read it.
    for (std::int64_t x = 0; x < D; ++x) {
      acc_o[((0 * S + 0) * H + h) * D + x] = std::numeric_limits<T>::quiet_NaN();
      acc_o[((0 * S + 2) * H + h) * D + x] = std::numeric_limits<T>::quiet_NaN();
    }
  }
  const Tensor<T> acc_o0 = acc_o, acc_l0 = acc_l;
  ringattn::ref::merge_into(acc_o, acc_l, part_o, part_l);
  EXPECT_TRUE(AllFinite(acc_o)) << "merged O";
  const double tol = std::is_same_v<T, double> ? 1e-15 : 1e-6;
  for (std::int64_t h = 0; h < H; ++h) {
    SCOPED_TRACE("head " + std::to_string(h));
    const double a = static_cast<double>(acc_l0[h * S + 3]), p = static_cast<double>(part_l[h * S + 3]);
    const double both = std::max(a, p) + std::log1p(std::exp(-std::fabs(a - p)));
    EXPECT_NEAR(static_cast<double>(acc_l[h * S + 0]), p, tol) << "acc -inf: takes the part";
    EXPECT_NEAR(static_cast<double>(acc_l[h * S + 1]), a, tol) << "part -inf: acc unchanged";
    EXPECT_EQ(static_cast<double>(acc_l[h * S + 2]), -kInf) << "both -inf stays -inf";
    EXPECT_NEAR(static_cast<double>(acc_l[h * S + 3]), both, tol);
    for (std::int64_t x = 0; x < D; ++x) {
      auto at = [&](std::int64_t i) { return (i * H + h) * D + x; };
      EXPECT_NEAR(static_cast<double>(acc_o[at(0)]), static_cast<double>(part_o[at(0)]), tol);
      EXPECT_NEAR(static_cast<double>(acc_o[at(1)]), static_cast<double>(acc_o0[at(1)]), tol);
      EXPECT_EQ(static_cast<double>(acc_o[at(2)]), 0.0) << "both -inf gives O = 0";
      const double wa = std::exp(a - both), wp = std::exp(p - both);
      EXPECT_NEAR(static_cast<double>(acc_o[at(3)]),
                  wa * static_cast<double>(acc_o0[at(3)]) + wp * static_cast<double>(part_o[at(3)]),
                  tol);
    }
  }
  // combine_partials: a row that is -inf in every partial gives O = 0, LSE = -inf.
  ForwardResult<T> p1{Tensor<T>({B, S, H, D}, T(0)), Tensor<T>({B, H, S}, -inf)};
  ForwardResult<T> p2{Tensor<T>({B, S, H, D}, T(0)), Tensor<T>({B, H, S}, -inf)};
  p2.lse[1] = T(2);
  p2.out[(1 * H + 0) * D + 0] = T(5);
  const ForwardResult<T> c = ringattn::ref::combine_partials(std::vector<ForwardResult<T>>{p1, p2});
  for (std::int64_t n = 0; n < c.lse.size(); ++n) {
    if (n == 1) {
      EXPECT_NEAR(static_cast<double>(c.lse[n]), 2.0, tol);
    } else {
      EXPECT_EQ(static_cast<double>(c.lse[n]), -kInf) << "entry " << n;
    }
  }
  for (std::int64_t n = 0; n < c.out.size(); ++n) {
    EXPECT_EQ(static_cast<double>(c.out[n]), n == (1 * H + 0) * D + 0 ? 5.0 : 0.0) << "entry " << n;
  }
}

TEST(MergeInfinities, DoubleIsNegInfSafe) { check_merge_infinities<double>(); }
TEST(MergeInfinities, FloatIsNegInfSafe) { check_merge_infinities<float>(); }

template <class T>
void check_huge_lse() {
  const std::int64_t B = 1, S = 3, H = 1, D = 2;
  Tensor<T> acc_o({B, S, H, D}), part_o({B, S, H, D});
  Tensor<T> acc_l({B, H, S}), part_l({B, H, S});
  // Row 0: equal huge LSE -> average, LSE + log 2. Row 1: far apart -> the larger wins.
  // Row 2: huge negative but finite on both sides.
  const T lse_values[3][2] = {{T(800), T(800)}, {T(1000), T(-1000)}, {T(-900), T(-901)}};
  for (std::int64_t i = 0; i < S; ++i) {
    acc_l[i] = lse_values[i][0];
    part_l[i] = lse_values[i][1];
    acc_o[i * D] = T(1);
    acc_o[i * D + 1] = T(-2);
    part_o[i * D] = T(3);
    part_o[i * D + 1] = T(4);
  }
  ringattn::ref::merge_into(acc_o, acc_l, part_o, part_l);
  EXPECT_TRUE(AllFinite(acc_o));
  EXPECT_TRUE(AllFinite(acc_l));
  const double tol = std::is_same_v<T, double> ? 1e-12 : 1e-4;
  EXPECT_NEAR(static_cast<double>(acc_l[0]), 800 + std::log(2.0), tol * 800);
  EXPECT_NEAR(static_cast<double>(acc_o[0]), 2.0, tol);
  EXPECT_NEAR(static_cast<double>(acc_o[1]), 1.0, tol);
  EXPECT_NEAR(static_cast<double>(acc_l[1]), 1000.0, tol * 1000);
  EXPECT_NEAR(static_cast<double>(acc_o[2]), 1.0, tol);
  EXPECT_NEAR(static_cast<double>(acc_o[3]), -2.0, tol);
  const double w = 1.0 / (1.0 + std::exp(-1.0));  // weight of the -900 side
  EXPECT_NEAR(static_cast<double>(acc_l[2]), -900 + std::log1p(std::exp(-1.0)), tol * 900);
  EXPECT_NEAR(static_cast<double>(acc_o[4]), w * 1 + (1 - w) * 3, tol);
  EXPECT_NEAR(static_cast<double>(acc_o[5]), w * -2 + (1 - w) * 4, tol);
}

TEST(MergeExtremes, DoubleHugeLse) { check_huge_lse<double>(); }
TEST(MergeExtremes, FloatHugeLse) { check_huge_lse<float>(); }

// The view form merges into a sub-range of a larger accumulator and leaves the rest alone.
TEST(MergeViews, SubRangeOnly) {
  RINGATTN_SEEDED_RNG(rng);
  const std::int64_t B = 2, S = 10, H = 3, D = 4, r0 = 3, n = 5;
  Tensor<double> acc_o = random_tensor<double>({B, S, H, D}, rng);
  Tensor<double> acc_l = random_tensor<double>({B, H, S}, rng);
  const Tensor<double> part_o = random_tensor<double>({B, n, H, D}, rng);
  const Tensor<double> part_l = random_tensor<double>({B, H, n}, rng);
  const Tensor<double> o0 = acc_o, l0 = acc_l;
  ringattn::ref::merge_into<double>(ringattn::seq_view(acc_o).rows(r0, n),
                                    ringattn::lse_view(acc_l).rows(r0, n),
                                    ringattn::seq_view(part_o), ringattn::lse_view(part_l));
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t h = 0; h < H; ++h) {
      for (std::int64_t i = 0; i < S; ++i) {
        const std::int64_t li = (b * H + h) * S + i;
        if (i < r0 || i >= r0 + n) {
          EXPECT_EQ(acc_l[li], l0[li]);
          for (std::int64_t x = 0; x < D; ++x) {
            EXPECT_EQ(acc_o[((b * S + i) * H + h) * D + x], o0[((b * S + i) * H + h) * D + x]);
          }
          continue;
        }
        const double a = l0[li], p = part_l[(b * H + h) * n + i - r0];
        const double m = std::max(a, p), lse = m + std::log(std::exp(a - m) + std::exp(p - m));
        EXPECT_NEAR(acc_l[li], lse, 1e-14);
        for (std::int64_t x = 0; x < D; ++x) {
          const double want = std::exp(a - lse) * o0[((b * S + i) * H + h) * D + x] +
                              std::exp(p - lse) * part_o[((b * n + i - r0) * H + h) * D + x];
          EXPECT_NEAR(acc_o[((b * S + i) * H + h) * D + x], want, 1e-14);
        }
      }
    }
  }
}

TEST(MergeInvalid, ShapeMismatchThrowsOneLineError) {
  Tensor<double> acc_o({1, 4, 2, 8}), acc_l({1, 2, 4});
  const Tensor<double> o_seq({1, 5, 2, 8}), l_seq({1, 2, 5});
  const Tensor<double> o_dim({1, 4, 2, 4}), l_heads({1, 3, 4});
  EXPECT_TRUE(ThrowsError([&] { ringattn::ref::merge_into(acc_o, acc_l, o_seq, l_seq); }));
  EXPECT_TRUE(ThrowsError([&] { ringattn::ref::merge_into(acc_o, acc_l, o_dim, acc_l); }));
  EXPECT_TRUE(ThrowsError([&] { ringattn::ref::merge_into(acc_o, acc_l, acc_o, l_heads); }));
  const std::vector<ForwardResult<double>> mismatched = {
      {Tensor<double>({1, 4, 2, 8}), Tensor<double>({1, 2, 4})},
      {Tensor<double>({1, 5, 2, 8}), Tensor<double>({1, 2, 5})}};
  EXPECT_TRUE(ThrowsError([&] { (void)ringattn::ref::combine_partials(mismatched); }));
}

}  // namespace
