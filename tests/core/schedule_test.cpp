// Tests of the ring schedule: ownership rotation, mask classes against brute force over global
// positions, the closed-form visible count against the row loop it replaced, total visible work,
// sub-blocks of a step, causal load balance of the layouts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/check.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/core/layout.hpp"
#include "ringattn/core/schedule.hpp"
#include "ringattn/core/shape.hpp"

namespace {

using ringattn::AttentionShape;
using ringattn::Layout;
using ringattn::MaskClass;
using ringattn::PairWork;
using ringattn::Positions;
using ringattn::RingSchedule;
using ringattn::SequenceLayout;
using ringattn::StepWork;
using ringattn::test::ThrowsError;

std::int64_t chunks(Layout kind, int n) { return kind == Layout::Zigzag ? 2 * n : n; }

// Brute force: number of pairs with key position <= query position (all pairs if not causal).
std::int64_t brute_visible(Positions q, std::int64_t ql, Positions k, std::int64_t kl,
                           bool causal) {
  std::int64_t c = 0;
  for (std::int64_t i = 0; i < ql; ++i) {
    for (std::int64_t j = 0; j < kl; ++j) c += (!causal || k.at(j) <= q.at(i)) ? 1 : 0;
  }
  return c;
}

// The O(q_len) row loop visible_pairs used before its closed form: query i at position p sees
// min(k_len, floor((p - k.offset) / k.stride) + 1) keys when p >= k.offset, none otherwise.
std::int64_t loop_visible(Positions q, std::int64_t ql, Positions k, std::int64_t kl,
                          bool causal) {
  if (!causal) return ql * kl;
  std::int64_t n = 0;
  for (std::int64_t i = 0; i < ql; ++i) {
    const std::int64_t p = q.at(i);
    if (p >= k.offset) n += std::min(kl, (p - k.offset) / k.stride + 1);
  }
  return n;
}

// True when the visible pattern is exactly "key j visible iff j <= i".
bool diagonal_pattern(Positions q, std::int64_t ql, Positions k, std::int64_t kl) {
  if (ql != kl) return false;
  for (std::int64_t i = 0; i < ql; ++i) {
    for (std::int64_t j = 0; j < kl; ++j) {
      if ((k.at(j) <= q.at(i)) != (j <= i)) return false;
    }
  }
  return true;
}

// The mask class must agree with the brute-force visibility of the pair.
::testing::AssertionResult MaskConsistent(MaskClass mask, Positions q, std::int64_t ql,
                                          Positions k, std::int64_t kl, bool causal) {
  const std::int64_t vis = brute_visible(q, ql, k, kl, causal);
  const std::int64_t all = ql * kl;
  auto fail = [&](const char* why) {
    return ::testing::AssertionFailure()
           << why << ": mask " << ringattn::to_string(mask) << ", q {offset " << q.offset
           << ", stride " << q.stride << ", len " << ql << "}, k {offset " << k.offset
           << ", stride " << k.stride << ", len " << kl << "}, causal " << causal << ", visible "
           << vis << " of " << all;
  };
  if (!causal && mask != MaskClass::Full) return fail("non-causal pair not Full");
  if ((vis == 0) != (mask == MaskClass::Skip)) return fail("Skip iff nothing visible");
  if (mask == MaskClass::Full && vis != all) return fail("Full but not all visible");
  if (mask == MaskClass::CausalDiagonal && !diagonal_pattern(q, ql, k, kl)) {
    return fail("CausalDiagonal but pattern is not j <= i");
  }
  if (mask == MaskClass::OffsetCausal && !(vis > 0 && vis < all)) {
    return fail("OffsetCausal must have some but not all pairs visible");
  }
  if (vis == all && all > 1 && mask != MaskClass::Full) return fail("all visible but not Full");
  if (causal && q == k && ql == kl && ql >= 2 && mask != MaskClass::CausalDiagonal) {
    return fail("same positions must be CausalDiagonal");
  }
  return ::testing::AssertionSuccess();
}

TEST(ClassifyMask, AgreesWithBruteForceOnSmallRuns) {
  int checked = 0;
  for (bool causal : {false, true}) {
    for (std::int64_t qo = -4; qo <= 6; ++qo) {
      for (std::int64_t qs = 1; qs <= 3; ++qs) {
        for (std::int64_t ql = 1; ql <= 4; ++ql) {
          for (std::int64_t ko = -2; ko <= 5; ++ko) {
            for (std::int64_t ks = 1; ks <= 3; ++ks) {
              for (std::int64_t kl = 1; kl <= 4; ++kl) {
                const Positions q{qo, qs};
                const Positions k{ko, ks};
                const std::int64_t want = brute_visible(q, ql, k, kl, causal);
                ASSERT_EQ(ringattn::visible_pairs(q, ql, k, kl, causal), want)
                    << "q {" << qo << "," << qs << "," << ql << "} k {" << ko << "," << ks << ","
                    << kl << "} causal " << causal;
                ASSERT_TRUE(MaskConsistent(ringattn::classify_mask(q, ql, k, kl, causal), q, ql,
                                           k, kl, causal));
                ++checked;
              }
            }
          }
        }
      }
    }
  }
  EXPECT_GT(checked, 10000);
}

TEST(ClassifyMask, HandCases) {
  // Same positions: the diagonal.
  EXPECT_EQ(ringattn::classify_mask({0, 1}, 4, {0, 1}, 4, true), MaskClass::CausalDiagonal);
  EXPECT_EQ(ringattn::visible_pairs({0, 1}, 4, {0, 1}, 4, true), 10);
  // Keys entirely before queries: Full; after: Skip.
  EXPECT_EQ(ringattn::classify_mask({8, 1}, 4, {0, 1}, 4, true), MaskClass::Full);
  EXPECT_EQ(ringattn::classify_mask({0, 1}, 4, {8, 1}, 4, true), MaskClass::Skip);
  EXPECT_EQ(ringattn::visible_pairs({0, 1}, 4, {8, 1}, 4, true), 0);
  // Not causal: always Full.
  EXPECT_EQ(ringattn::classify_mask({0, 1}, 4, {8, 1}, 4, false), MaskClass::Full);
  EXPECT_EQ(ringattn::visible_pairs({0, 1}, 4, {8, 1}, 3, false), 12);
  // Shifted by 2: query i at 2+i sees keys 0..2+i.
  EXPECT_EQ(ringattn::classify_mask({2, 1}, 4, {0, 1}, 6, true), MaskClass::OffsetCausal);
  EXPECT_EQ(ringattn::visible_pairs({2, 1}, 4, {0, 1}, 6, true), 3 + 4 + 5 + 6);
}

// ---- the closed form of visible_pairs ----------------------------------------------------------

// Random runs: strides 1..9, offsets of either sign, lengths 1..300, queries placed around the
// keys so that most pairs are partially masked; every answer against the row loop.
TEST(VisiblePairs, ClosedFormMatchesRowLoopOnRandomRuns) {
  RINGATTN_SEEDED_RNG(rng);
  auto uniform = [&](std::int64_t lo, std::int64_t hi) {
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
  };
  int partial = 0;
  for (int trial = 0; trial < 40000; ++trial) {
    const bool causal = uniform(0, 7) != 0;
    const std::int64_t ql = uniform(1, 300), kl = uniform(1, 300);
    const Positions k{uniform(-1000, 1000), uniform(1, 9)};
    const std::int64_t qs = uniform(1, 9);
    // A query run that starts anywhere from well before the first key to past the last.
    const Positions q{uniform(k.offset - qs * ql - 20, k.at(kl - 1) + 20), qs};
    const std::int64_t want = loop_visible(q, ql, k, kl, causal);
    ASSERT_EQ(ringattn::visible_pairs(q, ql, k, kl, causal), want)
        << "q {" << q.offset << "," << q.stride << "," << ql << "} k {" << k.offset << ","
        << k.stride << "," << kl << "} causal " << causal;
    if (want > 0 && want < ql * kl) ++partial;
  }
  EXPECT_GT(partial, 10000) << "too few partially masked runs to test the floor sum";
}

// The same with large strides and positions near +-2^40 (a shift changes nothing: only the
// difference of the offsets matters), and against the pair-by-pair brute force on small runs.
TEST(VisiblePairs, ClosedFormMatchesOnLargeStridesAndPositions) {
  RINGATTN_SEEDED_RNG(rng);
  auto uniform = [&](std::int64_t lo, std::int64_t hi) {
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
  };
  for (int trial = 0; trial < 20000; ++trial) {
    const std::int64_t base = uniform(0, 2) == 0 ? 0 : (uniform(0, 1) ? 1 : -1) * (std::int64_t{1} << 40);
    const std::int64_t ql = uniform(1, 300), kl = uniform(1, 300);
    const std::int64_t ks = uniform(1, 3) == 1 ? uniform(1, 9) : uniform(1, std::int64_t{1} << 20);
    const std::int64_t qs = uniform(1, 3) == 1 ? uniform(1, 9) : uniform(1, std::int64_t{1} << 20);
    const Positions k{base + uniform(-5000, 5000), ks};
    const Positions q{uniform(k.offset - qs * ql, k.at(kl - 1) + qs), qs};
    const std::int64_t got = ringattn::visible_pairs(q, ql, k, kl, true);
    ASSERT_EQ(got, loop_visible(q, ql, k, kl, true))
        << "q {" << q.offset << "," << q.stride << "," << ql << "} k {" << k.offset << ","
        << k.stride << "," << kl << "}";
    const Positions q0{q.offset - base, q.stride}, k0{k.offset - base, k.stride};
    ASSERT_EQ(ringattn::visible_pairs(q0, ql, k0, kl, true), got) << "not shift-invariant";
    if (ql * kl <= 2000) {
      ASSERT_EQ(got, brute_visible(q, ql, k, kl, true));
    }
  }
}

TEST(VisiblePairs, EdgeCases) {
  using ringattn::visible_pairs;
  // Empty runs see nothing, causal or not.
  EXPECT_EQ(visible_pairs({0, 1}, 0, {0, 1}, 5, true), 0);
  EXPECT_EQ(visible_pairs({0, 1}, 5, {0, 1}, 0, false), 0);
  // One query, one key: visible iff key <= query.
  EXPECT_EQ(visible_pairs({3, 1}, 1, {3, 7}, 1, true), 1);
  EXPECT_EQ(visible_pairs({3, 1}, 1, {4, 7}, 1, true), 0);
  // The first query exactly at the last key: Full; the last query one before the first key: Skip.
  EXPECT_EQ(visible_pairs({18, 2}, 4, {0, 6}, 4, true), 16);
  EXPECT_EQ(visible_pairs({-9, 3}, 4, {1, 2}, 4, true), 0);
  // Queries every 4, keys every 3 from 0: query 4i sees floor(4i/3) + 1 keys, capped at 5.
  EXPECT_EQ(visible_pairs({0, 4}, 5, {0, 3}, 5, true), 1 + 2 + 3 + 5 + 5);
  // Negative query offset (S_q > S_kv, end-aligned): query i at i - 3 sees max(0, i - 2) keys.
  EXPECT_EQ(visible_pairs({-3, 1}, 8, {0, 1}, 5, true), 0 + 0 + 0 + 1 + 2 + 3 + 4 + 5);
  // Runs across the whole int64 range: 7 * stride = 2^63 - 1, so the last row sits at -1.
  // Keys sit one after the queries, so query i sees keys j < i.
  const std::int64_t lowest = std::numeric_limits<std::int64_t>::min();
  const std::int64_t wide = std::numeric_limits<std::int64_t>::max() / 7;
  const std::int64_t e61 = std::int64_t{1} << 61;
  const Positions q{lowest, wide}, k{lowest + 1, wide};
  EXPECT_EQ(visible_pairs(q, 8, k, 8, true), 0 + 1 + 2 + 3 + 4 + 5 + 6 + 7);
  EXPECT_EQ(visible_pairs(q, 8, k, 8, true), brute_visible(q, 8, k, 8, true));
  EXPECT_EQ(visible_pairs({lowest, 1}, 3, {lowest + 1, 1}, 3, true), 0 + 1 + 2);
  EXPECT_EQ(visible_pairs({std::numeric_limits<std::int64_t>::max() - 4, 1}, 5, {lowest, e61}, 4,
                          true),
            5 * 4);
}

// Runs of 2^30 rows (a loop over the rows would take seconds; a floor sum takes a few steps),
// against sums worked by hand.
TEST(VisiblePairs, HugeRunsInClosedForm) {
  using ringattn::visible_pairs;
  const std::int64_t n = std::int64_t{1} << 30;
  const std::int64_t tri = n * (n + 1) / 2;       // sum_{i<n} (i + 1)
  const std::int64_t tri_below = n * (n - 1) / 2;  // sum_{i<n} i
  // The striped diagonal: rank 5 of 1024 against its own block, j visible iff j <= i.
  EXPECT_EQ(visible_pairs({5, 1024}, n, {5, 1024}, n, true), tri);
  // Striped, an earlier rank's block (o < r): key o + 1024 j <= r + 1024 i iff j <= i.
  EXPECT_EQ(visible_pairs({700, 1024}, n, {3, 1024}, n, true), tri);
  // Striped, a later rank's block (o > r): j < i.
  EXPECT_EQ(visible_pairs({3, 1024}, n, {700, 1024}, n, true), tri_below);
  // Shifted by -2^40 (end-aligned queries with S_q > S_kv): only differences count.
  const std::int64_t shift = std::int64_t{1} << 40;
  EXPECT_EQ(visible_pairs({3 - shift, 1024}, n, {700 - shift, 1024}, n, true), tri_below);
  // Queries every 2, keys every 1 (2n of them): query 2i sees keys 0..2i, 2i + 1 of them:
  // sum = n^2.
  EXPECT_EQ(visible_pairs({0, 2}, n, {0, 1}, 2 * n, true), n * n);
  // Queries every 1 (2n of them), keys every 2: query i sees floor(i/2) + 1 keys, so each
  // t + 1 (t < n) twice: 2 * n(n+1)/2 = n(n+1).
  EXPECT_EQ(visible_pairs({0, 1}, 2 * n, {0, 2}, n, true), n * (n + 1));

  // The simulator's load: about a million striped (step, rank) pairs of 2^30-row shards. The
  // row loop would need about 2^50 steps; the closed form takes milliseconds (no timing is
  // asserted here: bench_simulator measures the simulator's speed).
  const int calls = 1 << 20;
  const std::int64_t ranks = 1024;
  std::uint64_t sink = 0;  // wraps: the sum of 2^20 answers near 2^59 passes 2^63
  for (int c = 0; c < calls; ++c) {
    const std::int64_t r = c % ranks, o = (c / ranks) % ranks;
    sink += static_cast<std::uint64_t>(visible_pairs({r, ranks}, n, {o, ranks}, n, true));
  }
  EXPECT_NE(sink, 0u);
}

TEST(MaskClass, Names) {
  EXPECT_EQ(ringattn::to_string(MaskClass::Full), "full");
  EXPECT_EQ(ringattn::to_string(MaskClass::CausalDiagonal), "causal-diagonal");
  EXPECT_EQ(ringattn::to_string(MaskClass::OffsetCausal), "offset-causal");
  EXPECT_EQ(ringattn::to_string(MaskClass::Skip), "skip");
}

TEST(RingSchedule, KvOwnerAndNeighbours) {
  for (int n = 1; n <= 8; ++n) {
    for (int r = 0; r < n; ++r) {
      EXPECT_EQ(RingSchedule::next_rank(r, n), (r + 1) % n);
      EXPECT_EQ(RingSchedule::prev_rank(r, n), (r - 1 + n) % n);
      for (int s = 0; s < n; ++s) {
        EXPECT_EQ(RingSchedule::kv_owner(r, s, n), ((r - s) % n + n) % n)
            << "rank " << r << " step " << s << " N " << n;
      }
    }
  }
  EXPECT_EQ(RingSchedule::kv_owner(0, 1, 4), 3);
  EXPECT_EQ(RingSchedule::kv_owner(2, 3, 4), 3);
}

TEST(RingSchedule, ConstructorRejectsDisagreeingLayouts) {
  EXPECT_TRUE(ThrowsError([] {
    RingSchedule(SequenceLayout(Layout::Contiguous, 16, 4), SequenceLayout(Layout::Striped, 16, 4),
                 true, 0);
  }));
  EXPECT_TRUE(ThrowsError([] {
    RingSchedule(SequenceLayout(Layout::Zigzag, 16, 4), SequenceLayout(Layout::Zigzag, 16, 2),
                 true, 0);
  }));
}

TEST(RingSchedule, ForShapeRejectsTooShortSequences) {
  EXPECT_TRUE(ThrowsError(
      [] { (void)RingSchedule::for_shape(AttentionShape{1, 7, 7, 1, 1, 8}, Layout::Zigzag, 4, true); }));
  EXPECT_TRUE(ThrowsError([] {
    (void)RingSchedule::for_shape(AttentionShape{1, 3, 16, 1, 1, 8}, Layout::Contiguous, 4, true);
  }));
  EXPECT_TRUE(ThrowsError([] {
    (void)RingSchedule::for_shape(AttentionShape{1, 16, 16, 1, 1, 8}, Layout::Striped, 0, false);
  }));
}

// ---- the sweep: every layout, N = 1..8, causal or not, S_q == S_kv and not --------------------

class ScheduleSweep : public ::testing::TestWithParam<std::tuple<Layout, int>> {};

std::vector<std::pair<std::int64_t, std::int64_t>> lengths_to_test(Layout kind, int n) {
  const std::int64_t m = chunks(kind, n);
  return {{m, m}, {3 * m + 1, 3 * m + 1}, {37, 37}, {m + 2, 4 * m + 3}, {4 * m + 3, m + 2},
          {m, 2 * m + 1}};
}

TEST_P(ScheduleSweep, StepsAgreeWithLayoutsAndBruteForce) {
  const auto [kind, n] = GetParam();
  std::vector<std::tuple<bool, std::int64_t, std::int64_t>> cases;
  for (const bool c : {false, true}) {
    for (const auto& [a, b] : lengths_to_test(kind, n)) cases.emplace_back(c, a, b);
  }
  for (const auto& [causal, sq, skv] : cases) {
    if (sq < chunks(kind, n) || skv < chunks(kind, n)) continue;
    SCOPED_TRACE("S_q=" + std::to_string(sq) + " S_kv=" + std::to_string(skv) +
                 (causal ? " causal" : " not causal"));
    const AttentionShape shape = AttentionShape{1, sq, skv, 2, 1, 8};
    const RingSchedule sch = RingSchedule::for_shape(shape, kind, n, causal);
    ASSERT_EQ(sch.ranks(), n);
    ASSERT_EQ(sch.steps(), n);
    EXPECT_EQ(sch.causal(), causal);
    EXPECT_EQ(sch.q_offset(), skv - sq);
    EXPECT_EQ(sch.q_layout().seq_len(), sq);
    EXPECT_EQ(sch.kv_layout().seq_len(), skv);
    EXPECT_EQ(sch.q_layout().kind(), kind);
    const SequenceLayout& ql = sch.q_layout();
    const SequenceLayout& kl = sch.kv_layout();

    std::set<std::pair<int, int>> rank_owner;
    std::int64_t total = 0;
    for (int s = 0; s < n; ++s) {
      for (int r = 0; r < n; ++r) {
        SCOPED_TRACE("step " + std::to_string(s) + " rank " + std::to_string(r));
        const StepWork& w = sch.work(s, r);
        ASSERT_EQ(w.step, s);
        ASSERT_EQ(w.rank, r);
        ASSERT_EQ(w.kv_owner, RingSchedule::kv_owner(r, s, n));
        EXPECT_TRUE(rank_owner.insert({r, w.kv_owner}).second) << "pair seen twice";
        const auto& qsegs = ql.segments(r);
        const auto& ksegs = kl.segments(w.kv_owner);
        ASSERT_EQ(w.pairs.size(), qsegs.size() * ksegs.size());
        std::set<std::pair<int, int>> seg_pairs;
        std::int64_t step_visible = 0;
        for (const PairWork& p : w.pairs) {
          ASSERT_GE(p.q_segment, 0);
          ASSERT_LT(static_cast<std::size_t>(p.q_segment), qsegs.size());
          ASSERT_GE(p.kv_segment, 0);
          ASSERT_LT(static_cast<std::size_t>(p.kv_segment), ksegs.size());
          EXPECT_TRUE(seg_pairs.insert({p.q_segment, p.kv_segment}).second);
          const auto& qs = qsegs[static_cast<std::size_t>(p.q_segment)];
          const auto& ks = ksegs[static_cast<std::size_t>(p.kv_segment)];
          ASSERT_EQ(p.q_rows, qs.length);
          ASSERT_EQ(p.q_local, qs.local_begin);
          ASSERT_EQ(p.k_rows, ks.length);
          ASSERT_EQ(p.k_local, ks.local_begin);
          // Positions are global, queries in key coordinates (shifted by S_kv - S_q).
          for (std::int64_t i = 0; i < p.q_rows; ++i) {
            ASSERT_EQ(p.q.at(i), ql.position(r, p.q_local + i) + (skv - sq)) << "query row " << i;
          }
          for (std::int64_t j = 0; j < p.k_rows; ++j) {
            ASSERT_EQ(p.k.at(j), kl.position(w.kv_owner, p.k_local + j)) << "key row " << j;
          }
          EXPECT_EQ(p.visible, brute_visible(p.q, p.q_rows, p.k, p.k_rows, causal));
          EXPECT_TRUE(MaskConsistent(p.mask, p.q, p.q_rows, p.k, p.k_rows, causal));
          step_visible += p.visible;
        }
        EXPECT_EQ(w.visible, step_visible);
        EXPECT_EQ(w.idle(), step_visible == 0);
        total += w.visible;
      }
    }
    EXPECT_EQ(rank_owner.size(), static_cast<std::size_t>(n * n));
    // Brute force over all (query, key) pairs, end-aligned.
    std::int64_t want = 0;
    for (std::int64_t i = 0; i < sq; ++i) {
      for (std::int64_t j = 0; j < skv; ++j) want += (!causal || j <= skv - sq + i) ? 1 : 0;
    }
    EXPECT_EQ(total, want);
    if (sq == skv) {
      EXPECT_EQ(total, causal ? sq * (sq + 1) / 2 : sq * skv);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllLayouts, ScheduleSweep,
    ::testing::Combine(::testing::Values(Layout::Contiguous, Layout::Striped, Layout::Zigzag),
                       ::testing::Range(1, 9)),
    [](const ::testing::TestParamInfo<std::tuple<Layout, int>>& tp) {
      return std::string(ringattn::to_string(std::get<0>(tp.param))) + "_N" +
             std::to_string(std::get<1>(tp.param));
    });

// ---- sub-blocks: a step's block sent as several messages ----------------------------------------

TEST(SubBlock, BalancedCoverLikeTheLayouts) {
  for (std::int64_t rows = 1; rows <= 60; ++rows) {
    for (int parts = 1; parts <= std::min<std::int64_t>(rows, 13); ++parts) {
      std::int64_t next = 0;
      const SequenceLayout contiguous(Layout::Contiguous, rows, parts);
      for (int i = 0; i < parts; ++i) {
        const auto [first, last] = RingSchedule::sub_block(rows, parts, i);
        ASSERT_EQ(first, next) << rows << " rows, " << parts << " parts, index " << i;
        ASSERT_GT(last, first);
        EXPECT_GE(last - first, rows / parts);
        EXPECT_LE(last - first, (rows + parts - 1) / parts);
        // The same split as the contiguous layout of `rows` tokens over `parts` ranks.
        EXPECT_EQ(first, contiguous.segments(i).front().start);
        EXPECT_EQ(last - first, contiguous.shard_length(i));
        next = last;
      }
      EXPECT_EQ(next, rows);
    }
  }
  // No overflow of index * rows for huge blocks.
  const std::int64_t big = std::int64_t{1} << 62;
  EXPECT_EQ(RingSchedule::sub_block(big, 3, 2).second, big);
  EXPECT_EQ(RingSchedule::sub_block(big, 4, 1), std::make_pair(big / 4, big / 2));
}

TEST(SubBlock, RejectsBadSplits) {
  EXPECT_TRUE(ThrowsError([] { (void)RingSchedule::sub_block(8, 0, 0); }));
  EXPECT_TRUE(ThrowsError([] { (void)RingSchedule::sub_block(3, 4, 0); }));
  EXPECT_TRUE(ThrowsError([] { (void)RingSchedule::sub_block(0, 1, 0); }));
  EXPECT_TRUE(ThrowsError([] { (void)RingSchedule::sub_block(8, 2, -1); }));
  EXPECT_TRUE(ThrowsError([] { (void)RingSchedule::sub_block(8, 2, 2); }));
}

TEST(SubBlock, WorkRejectsBadRanges) {
  const RingSchedule sch =
      RingSchedule::for_shape(AttentionShape{1, 19, 19, 1, 1, 8}, Layout::Zigzag, 4, true);
  // 19 tokens over 4 ranks: shards of 4, 5, 5, 5 rows; rank 3 holds rank 2's block at step 1.
  const std::int64_t len = sch.kv_layout().shard_length(RingSchedule::kv_owner(3, 1, 4));
  ASSERT_EQ(len, 5);
  EXPECT_NO_THROW((void)sch.work(1, 3, 0, len));
  EXPECT_NO_THROW((void)sch.work(1, 3, len - 1, len));
  EXPECT_TRUE(ThrowsError([&] { (void)sch.work(1, 3, -1, 2); }));
  EXPECT_TRUE(ThrowsError([&] { (void)sch.work(1, 3, 2, 2); }));
  EXPECT_TRUE(ThrowsError([&] { (void)sch.work(1, 3, 3, 2); }));
  EXPECT_TRUE(ThrowsError([&] { (void)sch.work(1, 3, 0, len + 1); }));
  EXPECT_TRUE(ThrowsError([&] { (void)sch.work(4, 3, 0, 1); }));
  EXPECT_TRUE(ThrowsError([&] { (void)sch.work(1, -1, 0, 1); }));
}

class SubBlockSweep : public ::testing::TestWithParam<std::tuple<Layout, int>> {};

// Every layout, N = 1..6, causal or not, even and uneven lengths, S_q != S_kv: the sub-blocks
// of a step (1..4 of them, and every two-way cut) add up to the step, and each restricted pair
// is the key segment's rows inside the range, at the positions the layout gives them.
TEST_P(SubBlockSweep, SubBlocksAddUpToTheStep) {
  const auto [kind, n] = GetParam();
  const std::int64_t m = chunks(kind, n);
  for (const bool causal : {false, true}) {
    for (const auto& [sq, skv] : std::vector<std::pair<std::int64_t, std::int64_t>>{
             {m, m}, {2 * m + 1, 2 * m + 1}, {3 * m + 2, 3 * m + 2}, {m + 1, 4 * m + 3},
             {4 * m + 3, m + 1}, {23, 31}}) {
      if (sq < m || skv < m) continue;
      SCOPED_TRACE("S_q=" + std::to_string(sq) + " S_kv=" + std::to_string(skv) +
                   (causal ? " causal" : " not causal"));
      const RingSchedule sch =
          RingSchedule::for_shape(AttentionShape{1, sq, skv, 1, 1, 8}, kind, n, causal);
      const SequenceLayout& kl = sch.kv_layout();
      for (int s = 0; s < n; ++s) {
        for (int r = 0; r < n; ++r) {
          SCOPED_TRACE("step " + std::to_string(s) + " rank " + std::to_string(r));
          const StepWork whole = sch.work(s, r);
          const int owner = whole.kv_owner;
          const std::int64_t len = kl.shard_length(owner);
          ASSERT_EQ(sch.work(s, r, 0, len), whole);
          // Checks one restricted step against the whole one; returns its visible count.
          auto check = [&](std::int64_t b, std::int64_t e) {
            const StepWork w = sch.work(s, r, b, e);
            EXPECT_EQ(w.step, s);
            EXPECT_EQ(w.rank, r);
            EXPECT_EQ(w.kv_owner, owner);
            std::int64_t vis = 0;
            std::vector<std::int64_t> rows_per_q(sch.q_layout().segments(r).size(), 0);
            for (const PairWork& p : w.pairs) {
              const auto& ks = kl.segments(owner)[static_cast<std::size_t>(p.kv_segment)];
              EXPECT_EQ(p.k_local, std::max(b, ks.local_begin));
              EXPECT_EQ(p.k_local + p.k_rows, std::min(e, ks.local_begin + ks.length));
              EXPECT_GT(p.k_rows, 0);
              EXPECT_EQ(p.k.stride, ks.stride);
              for (std::int64_t j = 0; j < p.k_rows; ++j) {
                EXPECT_EQ(p.k.at(j), kl.position(owner, p.k_local + j)) << "key row " << j;
              }
              // The query side is the whole step's.
              const auto it = std::find_if(whole.pairs.begin(), whole.pairs.end(), [&](const PairWork& x) {
                return x.q_segment == p.q_segment && x.kv_segment == p.kv_segment;
              });
              EXPECT_NE(it, whole.pairs.end());
              if (it != whole.pairs.end()) {
                EXPECT_EQ(p.q, it->q);
                EXPECT_EQ(p.q_rows, it->q_rows);
                EXPECT_EQ(p.q_local, it->q_local);
              }
              EXPECT_EQ(p.visible, brute_visible(p.q, p.q_rows, p.k, p.k_rows, causal));
              EXPECT_TRUE(MaskConsistent(p.mask, p.q, p.q_rows, p.k, p.k_rows, causal));
              rows_per_q[static_cast<std::size_t>(p.q_segment)] += p.k_rows;
              vis += p.visible;
            }
            // Every query segment meets every key row of the range exactly once.
            for (const std::int64_t rows : rows_per_q) EXPECT_EQ(rows, e - b);
            EXPECT_EQ(w.visible, vis);
            return vis;
          };
          for (int parts = 1; parts <= std::min<std::int64_t>(4, len); ++parts) {
            std::int64_t sum = 0;
            for (int i = 0; i < parts; ++i) {
              const auto [b, e] = RingSchedule::sub_block(len, parts, i);
              sum += check(b, e);
            }
            EXPECT_EQ(sum, whole.visible) << parts << " sub-blocks";
          }
          for (std::int64_t cut = 1; cut < len; ++cut) {
            EXPECT_EQ(check(0, cut) + check(cut, len), whole.visible) << "cut at " << cut;
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllLayouts, SubBlockSweep,
    ::testing::Combine(::testing::Values(Layout::Contiguous, Layout::Striped, Layout::Zigzag),
                       ::testing::Range(1, 7)),
    [](const ::testing::TestParamInfo<std::tuple<Layout, int>>& tp) {
      return std::string(ringattn::to_string(std::get<0>(tp.param))) + "_N" +
             std::to_string(std::get<1>(tp.param));
    });

// ---- hand-worked mask classes (S = 16, N = 4, shard length 4) ----------------------------------

TEST(RingScheduleHand, ContiguousCausal) {
  const RingSchedule sch =
      RingSchedule::for_shape(AttentionShape{1, 16, 16, 1, 1, 8}, Layout::Contiguous, 4, true);
  for (int s = 0; s < 4; ++s) {
    for (int r = 0; r < 4; ++r) {
      SCOPED_TRACE("step " + std::to_string(s) + " rank " + std::to_string(r));
      const StepWork& w = sch.work(s, r);
      ASSERT_EQ(w.pairs.size(), 1u);
      if (s == 0) {
        EXPECT_EQ(w.pairs[0].mask, MaskClass::CausalDiagonal);
        EXPECT_EQ(w.visible, 10);
      } else if (w.kv_owner < r) {
        EXPECT_EQ(w.pairs[0].mask, MaskClass::Full);
        EXPECT_EQ(w.visible, 16);
      } else {
        EXPECT_EQ(w.pairs[0].mask, MaskClass::Skip);
        EXPECT_EQ(w.visible, 0);
        EXPECT_TRUE(w.idle());
      }
    }
  }
}

TEST(RingScheduleHand, StripedCausal) {
  const RingSchedule sch =
      RingSchedule::for_shape(AttentionShape{1, 16, 16, 1, 1, 8}, Layout::Striped, 4, true);
  for (int s = 0; s < 4; ++s) {
    for (int r = 0; r < 4; ++r) {
      SCOPED_TRACE("step " + std::to_string(s) + " rank " + std::to_string(r));
      const StepWork& w = sch.work(s, r);
      ASSERT_EQ(w.pairs.size(), 1u);
      const MaskClass m = w.pairs[0].mask;
      if (w.kv_owner == r) {
        EXPECT_EQ(m, MaskClass::CausalDiagonal);
        EXPECT_EQ(w.visible, 10);
      } else if (w.kv_owner < r) {
        // query r + 4i sees key o + 4j iff j <= i: the diagonal pattern on shifted positions.
        EXPECT_TRUE(m == MaskClass::CausalDiagonal || m == MaskClass::OffsetCausal)
            << ringattn::to_string(m);
        EXPECT_EQ(w.visible, 10);
      } else {
        // query r + 4i sees key o + 4j iff j < i.
        EXPECT_EQ(m, MaskClass::OffsetCausal);
        EXPECT_EQ(w.visible, 6);
      }
      EXPECT_FALSE(w.idle());
    }
  }
}

TEST(RingScheduleHand, ZigzagCausal) {
  const RingSchedule sch =
      RingSchedule::for_shape(AttentionShape{1, 16, 16, 1, 1, 8}, Layout::Zigzag, 4, true);
  // Rank r holds chunks r and 7-r (2 tokens each). Against another rank's block it sees exactly
  // two full chunks (2 * 4 pairs); at step 0 it sees its own chunks' diagonals plus one full chunk.
  for (int s = 0; s < 4; ++s) {
    for (int r = 0; r < 4; ++r) {
      EXPECT_EQ(sch.work(s, r).visible, s == 0 ? 3 + 4 + 3 : 8) << "step " << s << " rank " << r;
    }
  }
}

TEST(RingScheduleHand, ZigzagCausalNeverIdle) {
  for (int n = 2; n <= 8; ++n) {
    for (std::int64_t s : {2 * std::int64_t{n}, 2 * std::int64_t{n} + 1, 5 * std::int64_t{n} + 3}) {
      const RingSchedule sch =
          RingSchedule::for_shape(AttentionShape{1, s, s, 1, 1, 8}, Layout::Zigzag, n, true);
      for (int st = 0; st < n; ++st) {
        for (int r = 0; r < n; ++r) {
          EXPECT_FALSE(sch.work(st, r).idle())
              << "N " << n << " S " << s << " step " << st << " rank " << r;
        }
      }
    }
  }
}

TEST(RingScheduleHand, NonCausalAllFull) {
  for (Layout kind : ringattn::all_layouts()) {
    const RingSchedule sch =
        RingSchedule::for_shape(AttentionShape{1, 16, 16, 1, 1, 8}, kind, 4, false);
    for (int s = 0; s < 4; ++s) {
      for (int r = 0; r < 4; ++r) {
        for (const PairWork& p : sch.work(s, r).pairs) {
          EXPECT_EQ(p.mask, MaskClass::Full);
          EXPECT_EQ(p.visible, p.q_rows * p.k_rows);
        }
        EXPECT_EQ(sch.work(s, r).visible, 16);
      }
    }
  }
}

// ---- load balance ----------------------------------------------------------------------------

// The ring's critical path: at each step every rank waits for the slowest, so the time is
// sum over steps of max over ranks of the step's visible work.
std::int64_t critical_path(const RingSchedule& sch) {
  std::int64_t t = 0;
  for (int s = 0; s < sch.steps(); ++s) {
    std::int64_t worst = 0;
    for (int r = 0; r < sch.ranks(); ++r) worst = std::max(worst, sch.work(s, r).visible);
    t += worst;
  }
  return t;
}

TEST(RingScheduleBalance, ZigzagAndStripedBeatContiguousWhenCausal) {
  for (int n : {4, 8}) {
    const std::int64_t s = 32 * n;
    SCOPED_TRACE("N=" + std::to_string(n) + " S=" + std::to_string(s));
    const AttentionShape shape = AttentionShape{1, s, s, 1, 1, 8};
    const double contiguous =
        static_cast<double>(critical_path(RingSchedule::for_shape(shape, Layout::Contiguous, n, true)));
    const double striped =
        static_cast<double>(critical_path(RingSchedule::for_shape(shape, Layout::Striped, n, true)));
    const double zigzag =
        static_cast<double>(critical_path(RingSchedule::for_shape(shape, Layout::Zigzag, n, true)));
    const double ideal = static_cast<double>(s * (s + 1) / 2) / n;
    // Contiguous: the last rank does a full L x L block every step, about twice the ideal.
    EXPECT_GT(contiguous, 1.7 * ideal);
    EXPECT_LE(zigzag, 0.6 * contiguous);
    EXPECT_LE(striped, 0.6 * contiguous);
    EXPECT_LE(zigzag, 1.05 * ideal);
    EXPECT_LE(striped, 1.05 * ideal);
  }
}

// ---- costs of a step -----------------------------------------------------------------------

TEST(RingScheduleCost, MatchesClosedForm) {
  const AttentionShape shape = AttentionShape{2, 37, 37, 8, 2, 64};
  for (Layout kind : ringattn::all_layouts()) {
    for (bool causal : {false, true}) {
      const int n = 4;
      const RingSchedule sch = RingSchedule::for_shape(shape, kind, n, causal);
      for (int s = 0; s < n; ++s) {
        for (int r = 0; r < n; ++r) {
          SCOPED_TRACE(std::string(ringattn::to_string(kind)) + " causal " +
                       std::to_string(causal) + " step " + std::to_string(s) + " rank " +
                       std::to_string(r));
          const StepWork& w = sch.work(s, r);
          const auto c = sch.cost(s, r, shape, 2, 4);
          const double vis = static_cast<double>(w.visible);
          EXPECT_DOUBLE_EQ(c.flops_forward, 4.0 * 2 * 8 * 64 * vis);
          EXPECT_DOUBLE_EQ(c.flops_backward, 2.5 * c.flops_forward);
          const double len = static_cast<double>(sch.kv_layout().shard_length(w.kv_owner));
          if (s < n - 1) {
            EXPECT_DOUBLE_EQ(c.kv_bytes, 2.0 * 2 * len * 2 * 64 * 2);
          } else {
            EXPECT_EQ(c.kv_bytes, 0.0) << "the last step sends no K/V";
          }
          EXPECT_DOUBLE_EQ(c.dkv_bytes, 2.0 * 2 * len * 2 * 64 * 4);
        }
      }
    }
  }
}

// A cluster-sized ring: 4096 ranks over a million tokens. The schedule keeps only its layouts,
// so building it is cheap and any (step, rank) can be asked for; the answers still add up.
TEST(RingScheduleScale, ThousandsOfRanksOnDemand) {
  const std::int64_t s = std::int64_t{1} << 20;
  const int n = 4096;
  const AttentionShape shape = AttentionShape{1, s, s, 8, 8, 128};
  for (Layout kind : ringattn::all_layouts()) {
    const RingSchedule sch = RingSchedule::for_shape(shape, kind, n, true);
    const std::int64_t c = s / n;  // 256 tokens per rank
    // Contiguous: rank r at step s > r holds a later block (skip), at step 0 its own (diagonal).
    // Zigzag and striped: every rank computes at every step.
    for (int step : {0, 1, n / 2, n - 1}) {
      for (int r : {0, 1, n / 2, n - 1}) {
        const StepWork w = sch.work(step, r);
        EXPECT_EQ(w.kv_owner, ((r - step) % n + n) % n);
        if (kind == Layout::Contiguous) {
          const std::int64_t want = step == 0 ? c * (c + 1) / 2 : (w.kv_owner < r ? c * c : 0);
          EXPECT_EQ(w.visible, want) << "step " << step << " rank " << r;
        } else {
          EXPECT_GT(w.visible, 0) << ringattn::to_string(kind) << " step " << step << " rank " << r;
        }
      }
    }
  }
}

}  // namespace
