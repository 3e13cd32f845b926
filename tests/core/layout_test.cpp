// Tests of SequenceLayout: the three ways of splitting S tokens over N ranks, checked against an
// independent formula for every rank, both directions (position <-> (rank, local index)), even
// and uneven S, down to the minimum S and below it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "common/check.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/core/layout.hpp"

namespace {

using ringattn::Layout;
using ringattn::LocalIndex;
using ringattn::Segment;
using ringattn::SequenceLayout;
using ringattn::test::ThrowsError;

// Number of chunks a layout cuts the sequence into (the minimum sequence length).
std::int64_t chunks(Layout kind, int n) { return kind == Layout::Zigzag ? 2 * n : n; }

// Chunk k of m covers [floor(k*S/m), floor((k+1)*S/m)); rank r of N holds L_r tokens, the
// length of its chunk of N (layout.hpp).
std::int64_t bound(std::int64_t k, std::int64_t m, std::int64_t s) { return k * s / m; }

// The positions rank r holds, in local order, written from the layout's definition.
std::vector<std::int64_t> expected_positions(Layout kind, std::int64_t s, int n, int r) {
  std::vector<std::int64_t> p;
  auto add_chunk = [&](std::int64_t k, std::int64_t m) {
    for (std::int64_t x = bound(k, m, s); x < bound(k + 1, m, s); ++x) p.push_back(x);
  };
  switch (kind) {
    case Layout::Contiguous:
      add_chunk(r, n);
      break;
    case Layout::Striped:
      for (std::int64_t x = r; x < s; x += n) p.push_back(x);
      break;
    case Layout::Zigzag: {
      // Front chunks of floor(L_q/2) tokens in rank order, then back chunks of ceil(L_q/2) in
      // reverse rank order; rank r holds its front chunk then its back chunk.
      auto len = [&](int q) { return bound(q + 1, n, s) - bound(q, n, s); };
      std::int64_t front_start = 0, back_start = 0;
      for (int q = 0; q < n; ++q) back_start += len(q) / 2;
      for (int q = 0; q < r; ++q) front_start += len(q) / 2;
      for (int q = n - 1; q > r; --q) back_start += len(q) - len(q) / 2;
      for (std::int64_t x = 0; x < len(r) / 2; ++x) p.push_back(front_start + x);
      for (std::int64_t x = 0; x < len(r) - len(r) / 2; ++x) p.push_back(back_start + x);
      break;
    }
  }
  return p;
}

std::vector<std::int64_t> lengths_to_test(Layout kind, int n) {
  const std::int64_t m = chunks(kind, n);
  std::vector<std::int64_t> s = {m, m + 1, 2 * m - 1, 2 * m, 3 * m + 2, 4 * m, 37, 64};
  s.erase(std::remove_if(s.begin(), s.end(), [m](std::int64_t x) { return x < m; }), s.end());
  std::sort(s.begin(), s.end());
  s.erase(std::unique(s.begin(), s.end()), s.end());
  return s;
}

class LayoutSweep : public ::testing::TestWithParam<std::tuple<Layout, int>> {};

TEST_P(LayoutSweep, MatchesDefinitionBothDirections) {
  const auto [kind, n] = GetParam();
  for (std::int64_t s : lengths_to_test(kind, n)) {
    SCOPED_TRACE("S=" + std::to_string(s));
    const SequenceLayout lay(kind, s, n);
    EXPECT_EQ(lay.kind(), kind);
    EXPECT_EQ(lay.seq_len(), s);
    EXPECT_EQ(lay.ranks(), n);
    std::vector<int> owner_count(static_cast<std::size_t>(s), 0);
    std::int64_t max_len = -1;
    for (int r = 0; r < n; ++r) {
      SCOPED_TRACE("rank " + std::to_string(r));
      const auto want = expected_positions(kind, s, n, r);
      ASSERT_EQ(lay.positions(r), want);
      ASSERT_EQ(lay.shard_length(r), static_cast<std::int64_t>(want.size()));
      EXPECT_GE(lay.shard_length(r), 1) << "every rank must hold a token";
      max_len = std::max(max_len, lay.shard_length(r));
      for (std::int64_t i = 0; i < static_cast<std::int64_t>(want.size()); ++i) {
        const std::int64_t p = want[static_cast<std::size_t>(i)];
        ASSERT_EQ(lay.position(r, i), p) << "local index " << i;
        ASSERT_EQ(lay.locate(p), (LocalIndex{r, i})) << "position " << p;
        ++owner_count[static_cast<std::size_t>(p)];
      }
      // Segments: consecutive in the local buffer, reproduce positions() in order.
      std::vector<std::int64_t> from_segments;
      std::int64_t local = 0;
      for (const Segment& seg : lay.segments(r)) {
        EXPECT_GE(seg.length, 1);
        EXPECT_GE(seg.stride, 1);
        EXPECT_EQ(seg.local_begin, local);
        for (std::int64_t i = 0; i < seg.length; ++i) from_segments.push_back(seg.position(i));
        EXPECT_EQ(seg.last(), seg.position(seg.length - 1));
        local += seg.length;
      }
      EXPECT_EQ(from_segments, want);
      // Segment structure of each layout.
      const auto& segs = lay.segments(r);
      if (kind == Layout::Contiguous) {
        ASSERT_EQ(segs.size(), 1u);
        EXPECT_EQ(segs[0].stride, 1);
      } else if (kind == Layout::Striped) {
        ASSERT_EQ(segs.size(), 1u);
        if (segs[0].length > 1) {
          EXPECT_EQ(segs[0].stride, n);
        }
      } else if (n >= 2) {
        ASSERT_EQ(segs.size(), 2u);
        EXPECT_EQ(segs[0].stride, 1);
        EXPECT_EQ(segs[1].stride, 1);
      }
    }
    // Every position is held exactly once, and locate/position are inverse bijections.
    for (std::int64_t p = 0; p < s; ++p) {
      ASSERT_EQ(owner_count[static_cast<std::size_t>(p)], 1) << "position " << p;
      const LocalIndex li = lay.locate(p);
      ASSERT_EQ(lay.position(li.rank, li.index), p);
    }
    EXPECT_EQ(lay.max_shard_length(), max_len);
  }
}

// layout.hpp: "shard lengths differ by at most one"; even(): "every shard has the same length".
TEST_P(LayoutSweep, ShardLengthsDifferByAtMostOneAndEvenMeansEqual) {
  const auto [kind, n] = GetParam();
  for (std::int64_t s : lengths_to_test(kind, n)) {
    const SequenceLayout lay(kind, s, n);
    std::vector<std::int64_t> lengths;
    for (int r = 0; r < n; ++r) lengths.push_back(lay.shard_length(r));
    const auto [lo, hi] = std::minmax_element(lengths.begin(), lengths.end());
    std::string all;
    for (std::int64_t x : lengths) all += std::to_string(x) + " ";
    EXPECT_LE(*hi - *lo, 1) << "S=" << s << ": shard lengths " << all;
    EXPECT_EQ(lay.even(), *lo == *hi) << "S=" << s << ": shard lengths " << all;
  }
}

TEST_P(LayoutSweep, BelowMinimumLengthThrows) {
  // Plain variables, not a structured binding: lambdas capture them (clang < 16 cannot).
  const Layout kind = std::get<0>(GetParam());
  const int n = std::get<1>(GetParam());
  const std::int64_t m = chunks(kind, n);
  if (m - 1 >= 1) {
    EXPECT_TRUE(ThrowsError([&] { (void)SequenceLayout(kind, m - 1, n); }));
  }
  EXPECT_TRUE(ThrowsError([&] { (void)SequenceLayout(kind, 0, n); }));
  EXPECT_TRUE(ThrowsError([&] { (void)SequenceLayout(kind, -5, n); }));
  EXPECT_NO_THROW((void)SequenceLayout(kind, m, n));
}

TEST_P(LayoutSweep, OutOfRangeQueriesThrow) {
  const Layout kind = std::get<0>(GetParam());
  const int n = std::get<1>(GetParam());
  const std::int64_t s = 4 * chunks(kind, n) + 1;
  const SequenceLayout lay(kind, s, n);
  EXPECT_TRUE(ThrowsError([&] { (void)lay.locate(s); }));
  EXPECT_TRUE(ThrowsError([&] { (void)lay.locate(-1); }));
  EXPECT_TRUE(ThrowsError([&] { (void)lay.segments(n); }));
  EXPECT_TRUE(ThrowsError([&] { (void)lay.segments(-1); }));
  EXPECT_TRUE(ThrowsError([&] { (void)lay.shard_length(n); }));
  EXPECT_TRUE(ThrowsError([&] { (void)lay.position(n, 0); }));
  EXPECT_TRUE(ThrowsError([&] { (void)lay.positions(n); }));
}

std::string layout_name(Layout l) { return std::string(ringattn::to_string(l)); }

INSTANTIATE_TEST_SUITE_P(
    AllLayouts, LayoutSweep,
    ::testing::Combine(::testing::Values(Layout::Contiguous, Layout::Striped, Layout::Zigzag),
                       ::testing::Range(1, 9)),
    [](const ::testing::TestParamInfo<std::tuple<Layout, int>>& tp) {
      return layout_name(std::get<0>(tp.param)) + "_N" + std::to_string(std::get<1>(tp.param));
    });

TEST(Layout, HandExamplesS16N4) {
  const SequenceLayout contiguous(Layout::Contiguous, 16, 4);
  EXPECT_EQ(contiguous.positions(1), (std::vector<std::int64_t>{4, 5, 6, 7}));
  EXPECT_EQ(contiguous.segments(1), (std::vector<Segment>{{4, 1, 4, 0}}));
  EXPECT_EQ(contiguous.locate(13), (LocalIndex{3, 1}));

  const SequenceLayout striped(Layout::Striped, 16, 4);
  EXPECT_EQ(striped.positions(1), (std::vector<std::int64_t>{1, 5, 9, 13}));
  EXPECT_EQ(striped.segments(1), (std::vector<Segment>{{1, 4, 4, 0}}));
  EXPECT_EQ(striped.locate(14), (LocalIndex{2, 3}));

  // zigzag: 8 chunks of 2; rank 1 holds chunks 1 and 6.
  const SequenceLayout zigzag(Layout::Zigzag, 16, 4);
  EXPECT_EQ(zigzag.positions(1), (std::vector<std::int64_t>{2, 3, 12, 13}));
  EXPECT_EQ(zigzag.segments(1), (std::vector<Segment>{{2, 1, 2, 0}, {12, 1, 2, 2}}));
  EXPECT_EQ(zigzag.positions(0), (std::vector<std::int64_t>{0, 1, 14, 15}));
  EXPECT_EQ(zigzag.positions(3), (std::vector<std::int64_t>{6, 7, 8, 9}));
  EXPECT_EQ(zigzag.locate(12), (LocalIndex{1, 2}));
  EXPECT_TRUE(zigzag.even());
}

TEST(Layout, HandExamplesUneven) {
  // S = 10 over 4 ranks contiguous: bounds floor(k*10/4) = 0, 2, 5, 7, 10.
  const SequenceLayout contiguous(Layout::Contiguous, 10, 4);
  EXPECT_EQ(contiguous.positions(0), (std::vector<std::int64_t>{0, 1}));
  EXPECT_EQ(contiguous.positions(1), (std::vector<std::int64_t>{2, 3, 4}));
  EXPECT_EQ(contiguous.positions(3), (std::vector<std::int64_t>{7, 8, 9}));
  EXPECT_FALSE(contiguous.even());
  EXPECT_EQ(contiguous.max_shard_length(), 3);
  // Striped S = 10 over 4: rank 2 holds 2, 6; rank 1 holds 1, 5, 9.
  const SequenceLayout striped(Layout::Striped, 10, 4);
  EXPECT_EQ(striped.positions(1), (std::vector<std::int64_t>{1, 5, 9}));
  EXPECT_EQ(striped.positions(2), (std::vector<std::int64_t>{2, 6}));
  // Zigzag S = 9 over 2 ranks: L = 4, 5; fronts of 2, 2 tokens (0-1, 2-3), then backs in
  // reverse rank order: rank 1's 3 tokens (4-6), rank 0's 2 (7-8).
  const SequenceLayout zigzag(Layout::Zigzag, 9, 2);
  EXPECT_EQ(zigzag.positions(0), (std::vector<std::int64_t>{0, 1, 7, 8}));
  EXPECT_EQ(zigzag.positions(1), (std::vector<std::int64_t>{2, 3, 4, 5, 6}));
}

TEST(Layout, MinimumLengthExact) {
  // Zigzag with S = 2N: one token per chunk; rank r holds r and 2N-1-r.
  const SequenceLayout z(Layout::Zigzag, 8, 4);
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(z.positions(r), (std::vector<std::int64_t>{r, 7 - r}));
  }
  EXPECT_TRUE(ThrowsError([] { (void)SequenceLayout(Layout::Zigzag, 7, 4); }));
  EXPECT_NO_THROW((void)SequenceLayout(Layout::Striped, 4, 4));
  EXPECT_TRUE(ThrowsError([] { (void)SequenceLayout(Layout::Striped, 3, 4); }));
  EXPECT_TRUE(ThrowsError([] { (void)SequenceLayout(Layout::Contiguous, 3, 4); }));
}

TEST(Layout, ZeroOrNegativeRanksThrow) {
  EXPECT_TRUE(ThrowsError([] { (void)SequenceLayout(Layout::Contiguous, 16, 0); }));
  EXPECT_TRUE(ThrowsError([] { (void)SequenceLayout(Layout::Striped, 16, -1); }));
  EXPECT_TRUE(ThrowsError([] { (void)SequenceLayout(Layout::Zigzag, 16, 0); }));
}

TEST(Layout, NamesRoundTrip) {
  ASSERT_EQ(ringattn::all_layouts().size(), 3u);
  for (Layout l : ringattn::all_layouts()) {
    EXPECT_EQ(ringattn::parse_layout(ringattn::to_string(l)), l);
  }
  EXPECT_EQ(ringattn::to_string(Layout::Contiguous), "contiguous");
  EXPECT_EQ(ringattn::to_string(Layout::Striped), "striped");
  EXPECT_EQ(ringattn::to_string(Layout::Zigzag), "zigzag");
  EXPECT_EQ(ringattn::parse_layout("zigzag"), Layout::Zigzag);
}

TEST(Layout, ParseRejectsUnknownNames) {
  EXPECT_TRUE(ThrowsError([] { (void)ringattn::parse_layout("zig-zag"); }, {"zig-zag"}));
  EXPECT_TRUE(ThrowsError([] { (void)ringattn::parse_layout(""); }));
  EXPECT_TRUE(ThrowsError([] { (void)ringattn::parse_layout("ring"); }));
  EXPECT_TRUE(ThrowsError([] { (void)ringattn::parse_layout("contiguous "); }));
}

}  // namespace
