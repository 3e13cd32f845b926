// Tests of AttentionShape: validation messages, derived sizes, formatting.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/check.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/core/shape.hpp"
#include "ringattn/core/tensor.hpp"

namespace {

using ringattn::AttentionShape;
using ringattn::test::ThrowsError;

TEST(AttentionShape, ValidShapesPass) {
  EXPECT_NO_THROW((AttentionShape{1, 1, 1, 1, 1, 1}.validate()));
  EXPECT_NO_THROW((AttentionShape{2, 7, 33, 8, 2, 64}.validate()));
  EXPECT_NO_THROW((AttentionShape{1, 100, 7, 6, 3, 16}.validate()));
  EXPECT_NO_THROW((AttentionShape{1, 5, 5, 8, 1, 8}.validate()));
}

TEST(AttentionShape, DefaultShapeIsInvalid) {
  EXPECT_TRUE(ThrowsError([] { AttentionShape{}.validate(); }));
}

TEST(AttentionShape, EveryZeroOrNegativeDimensionThrowsOneLineError) {
  for (int which = 0; which < 6; ++which) {
    for (std::int64_t bad : {std::int64_t{0}, std::int64_t{-3}}) {
      AttentionShape s = AttentionShape{2, 7, 9, 4, 2, 16};
      std::int64_t* fields[] = {&s.batch, &s.seq_q, &s.seq_kv, &s.heads_q, &s.heads_kv,
                                &s.head_dim};
      *fields[which] = bad;
      SCOPED_TRACE("dimension " + std::to_string(which) + " set to " + std::to_string(bad));
      EXPECT_TRUE(ThrowsError([&] { s.validate(); }));
    }
  }
}

TEST(AttentionShape, HeadsNotMultipleMentionsBothCounts) {
  // H_q = 12 is not a multiple of H_kv = 5: the message must name both numbers.
  EXPECT_TRUE(ThrowsError([] { AttentionShape{1, 16, 16, 12, 5, 64}.validate(); }, {"12", "5"}));
  EXPECT_TRUE(ThrowsError([] { AttentionShape{1, 16, 16, 8, 3, 64}.validate(); }, {"8", "3"}));
  // More K/V heads than query heads is never a multiple.
  EXPECT_TRUE(ThrowsError([] { AttentionShape{1, 16, 16, 2, 4, 64}.validate(); }, {"2", "4"}));
}

TEST(AttentionShape, DerivedSizes) {
  const AttentionShape s = AttentionShape{2, 7, 33, 8, 2, 16};
  EXPECT_EQ(s.group_size(), 4);
  EXPECT_EQ(s.q_elements(), 2 * 7 * 8 * 16);
  EXPECT_EQ(s.kv_elements(), 2 * 33 * 2 * 16);
  EXPECT_EQ(s.lse_elements(), 2 * 8 * 7);
  EXPECT_EQ(s.causal_query_offset(), 33 - 7);
  EXPECT_EQ((AttentionShape{1, 33, 7, 1, 1, 8}.causal_query_offset()), 7 - 33);
  EXPECT_EQ((AttentionShape{1, 9, 9, 1, 1, 8}.causal_query_offset()), 0);
}

TEST(AttentionShape, ToStringFormat) {
  EXPECT_EQ((AttentionShape{2, 128, 128, 8, 2, 64}.to_string()), "B=2 S_q=128 S_kv=128 H_q=8 H_kv=2 D=64");
  EXPECT_EQ((AttentionShape{1, 7, 33, 6, 3, 16}.to_string()), "B=1 S_q=7 S_kv=33 H_q=6 H_kv=3 D=16");
}

TEST(AttentionShape, Equality) {
  EXPECT_EQ((AttentionShape{1, 2, 3, 4, 2, 8}), (AttentionShape{1, 2, 3, 4, 2, 8}));
  EXPECT_NE((AttentionShape{1, 2, 3, 4, 2, 8}), (AttentionShape{1, 2, 3, 4, 1, 8}));
}

TEST(TensorShape, ShapeStringAndCount) {
  EXPECT_EQ(ringattn::shape_string({2, 128, 8, 64}), "(2, 128, 8, 64)");
  EXPECT_EQ(ringattn::Tensor<float>::count({2, 3, 4}), 24);
  EXPECT_EQ(ringattn::Tensor<float>::count({2, 0, 4}), 0);
  EXPECT_TRUE(ThrowsError([] { (void)ringattn::Tensor<float>::count({2, -1}); }));
  EXPECT_TRUE(ThrowsError(
      [] { (void)ringattn::Tensor<float>::count({INT64_MAX / 2, 3}); }));
}

// resize() reshapes in place: within the reserved capacity the storage does not move, kept
// elements keep their values and added ones are zero; bad shapes throw and change nothing.
TEST(TensorShape, ResizeKeepsStorageWithinCapacity) {
  // The row counts come from a runtime value: with them as constants GCC 12 folds std::vector's
  // resize() and reports a false -Warray-bounds on a branch that cannot run.
  const std::vector<std::int64_t> rows = {3, 4, 2};
  ringattn::Tensor<float> t({1, rows[0], 2, 2}, 5.0f);
  t.reserve(1 * rows[1] * 2 * 2);
  const float* storage = t.data();
  t.resize({1, rows[1], 2, 2});
  EXPECT_EQ(t.shape(), (std::vector<std::int64_t>{1, 4, 2, 2}));
  EXPECT_EQ(t.data(), storage);
  EXPECT_EQ(t[0], 5.0f);
  EXPECT_EQ(t[11], 5.0f);
  EXPECT_EQ(t[12], 0.0f);
  t.resize({1, rows[2], 2, 2});
  EXPECT_EQ(t.size(), 8);
  EXPECT_EQ(t.data(), storage);
  EXPECT_TRUE(ThrowsError([&] { t.resize({1, -2, 2, 2}); }));
  EXPECT_TRUE(ThrowsError([&] { t.reserve(-1); }));
  EXPECT_EQ(t.size(), 8);
  EXPECT_EQ(t.shape(), (std::vector<std::int64_t>{1, 2, 2, 2}));
}

TEST(TensorShape, ViewsRejectWrongRank) {
  ringattn::Tensor<double> t3({2, 3, 4});
  ringattn::Tensor<double> t4({2, 3, 4, 5});
  EXPECT_TRUE(ThrowsError([&] { (void)ringattn::seq_view(t3); }));
  EXPECT_TRUE(ThrowsError([&] { (void)ringattn::lse_view(t4); }));
  const auto v = ringattn::seq_view(t4);
  EXPECT_EQ(v.batch_stride, 3 * 4 * 5);
  EXPECT_EQ(v.row(1, 2, 3) - t4.data(), ((1 * 3 + 2) * 4 + 3) * 5);
  const auto l = ringattn::lse_view(t3);
  EXPECT_EQ(&l.at(1, 2, 3) - t3.data(), (1 * 3 + 2) * 4 + 3);
}

}  // namespace
