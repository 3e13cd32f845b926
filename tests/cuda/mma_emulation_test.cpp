// The tensor-core forward's index and tile math, checked on the CPU through an emulated warp.
//
// What this file is for: forward_tc.cu is mma.sync + ldmatrix + cp.async, and a wrong fragment
// index there shows on a GPU only as wrong numbers. Here a warp is emulated (mma_emulator.hpp:
// 32 lanes' registers in arrays, each warp-collective instruction implemented as the PTX ISA text
// describes it, independently of cuda/src/mma_fragments.hpp), so the tests compare two
// transcriptions of the manual. Then the kernel's own CTA program (tc::forward_cta in
// cuda/src/forward_tc_tile.hpp: the code forward_tc_kernel runs, pipeline and barriers
// included) runs on every CTA of the launch grid on an emulated CTA of four warps
// (cta_emulator.hpp), which checks every shared-memory access against the barriers and the
// cp.async groups; the result is checked against the long-double oracle.
//
// What it leaves to a GPU: that the hardware matches the manual, real asynchrony and timing,
// real bf16/fp16 conversions, ex2.approx, register allocation, speed.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "../../cuda/src/forward_tc_tile.hpp"
#include "../../cuda/src/mma_fragments.hpp"
#include "common/check.hpp"
#include "common/oracle.hpp"
#include "cta_emulator.hpp"
#include "mma_emulator.hpp"

namespace ringattn::test {
namespace {


// ---- (a) fragment layouts -----------------------------------------------------------------------

TEST(MmaFragments, HeaderMatchesThePtxIsaText) {
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 8; ++i) {
      const auto h = mma::a_coord(lane, i);
      const auto p = ptx::a_elem(lane, i);
      ASSERT_TRUE(h.row == p.row && h.col == p.col) << "A lane " << lane << " a" << i;
    }
    for (int i = 0; i < 4; ++i) {
      const auto hb = mma::b_coord(lane, i);
      const auto pb = ptx::b_elem(lane, i);
      ASSERT_TRUE(hb.row == pb.row && hb.col == pb.col) << "B lane " << lane << " b" << i;
      const auto hc = mma::c_coord(lane, i);
      const auto pc = ptx::c_elem(lane, i);
      ASSERT_TRUE(hc.row == pc.row && hc.col == pc.col) << "C lane " << lane << " c" << i;
      ASSERT_EQ(mma::c_row_half(i), hc.row >= 8 ? 1 : 0);
    }
    for (int half = 0; half < 2; ++half) {
      for (bool trans : {false, true}) {
        const auto h = mma::ldsm_dest(lane, half, trans);
        const auto p = ptx::ldmatrix_elem(lane, half, trans);
        ASSERT_TRUE(h.row == p.row && h.col == p.col) << "ldmatrix lane " << lane << " half " << half;
      }
    }
  }
  for (int m = 0; m < 4; ++m) {
    for (int row = 0; row < 8; ++row) ASSERT_EQ(mma::ldsm_address_lane(m, row), 8 * m + row);
  }
}

// A few values read off the PTX ISA figures, so that a shared misreading of the formulas fails.
TEST(MmaFragments, SpotValuesFromThePtxFigures) {
  // Figure "fragment layout for matrix A": T0 holds a0,a1 at row 0 cols 0,1; a2,a3 at row 8;
  // a4..a7 at cols 8,9. T5 (groupID 1, threadID_in_group 1) holds a0 at (1, 2).
  EXPECT_EQ(mma::a_coord(0, 0).row, 0);
  EXPECT_EQ(mma::a_coord(0, 1).col, 1);
  EXPECT_EQ(mma::a_coord(0, 2).row, 8);
  EXPECT_EQ(mma::a_coord(0, 4).col, 8);
  EXPECT_EQ(mma::a_coord(5, 0).row, 1);
  EXPECT_EQ(mma::a_coord(5, 0).col, 2);
  EXPECT_EQ(mma::a_coord(31, 7).row, 15);
  EXPECT_EQ(mma::a_coord(31, 7).col, 15);
  // Matrix B: T0 holds b0, b1 at (k 0, 1; n 0), b2, b3 at k 8, 9; T31 b3 at (k 15, n 7).
  EXPECT_EQ(mma::b_coord(0, 1).row, 1);
  EXPECT_EQ(mma::b_coord(0, 2).row, 8);
  EXPECT_EQ(mma::b_coord(31, 3).row, 15);
  EXPECT_EQ(mma::b_coord(31, 3).col, 7);
  // C: T6 holds c0 at (1, 4), c3 at (9, 5).
  EXPECT_EQ(mma::c_coord(6, 0).row, 1);
  EXPECT_EQ(mma::c_coord(6, 0).col, 4);
  EXPECT_EQ(mma::c_coord(6, 3).row, 9);
  EXPECT_EQ(mma::c_coord(6, 3).col, 5);
}

// Every element of A, B and C is held by exactly one (lane, element).
TEST(MmaFragments, EachLayoutCoversItsMatrixOnce) {
  std::array<int, 16 * 16> a{};
  std::array<int, 16 * 8> b{};
  std::array<int, 16 * 8> c{};
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 8; ++i) {
      ++a[static_cast<std::size_t>(mma::a_coord(lane, i).row * 16 + mma::a_coord(lane, i).col)];
    }
    for (int i = 0; i < 4; ++i) {
      ++b[static_cast<std::size_t>(mma::b_coord(lane, i).row * 8 + mma::b_coord(lane, i).col)];
      ++c[static_cast<std::size_t>(mma::c_coord(lane, i).row * 8 + mma::c_coord(lane, i).col)];
    }
  }
  for (int n : a) ASSERT_EQ(n, 1);
  for (int n : b) ASSERT_EQ(n, 1);
  for (int n : c) ASSERT_EQ(n, 1);
}

template <class Codec>
std::vector<float> random_lowp(std::size_t n, std::mt19937_64& rng, double scale = 1.0) {
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<float> x(n);
  for (auto& v : x) v = Codec::decode(Codec::encode(static_cast<float>(normal(rng))));
  return x;
}

template <class Elem>
void check_mma_product() {
  using Codec = CodecOf<Elem>;
  RINGATTN_SEEDED_RNG(rng);
  const auto A = random_lowp<Codec>(16 * 16, rng);
  const auto Bm = random_lowp<Codec>(16 * 8, rng);
  const auto C = random_lowp<Codec>(16 * 8, rng);
  std::vector<std::uint16_t> arena(8);
  HostWarp<Elem> w(arena.data(), arena.size());
  Lanes<std::uint32_t> a[4];
  Lanes<std::uint32_t> b[2];
  Lanes<float> d[4];
  // Registers filled through the header's index functions.
  for (int l = 0; l < 32; ++l) {
    for (int r = 0; r < 4; ++r) {
      const auto lo = mma::a_coord(l, 2 * r);
      const auto hi = mma::a_coord(l, 2 * r + 1);
      a[r][l] = HostWarp<Elem>::pack(Codec::encode(A[static_cast<std::size_t>(lo.row * 16 + lo.col)]),
                                     Codec::encode(A[static_cast<std::size_t>(hi.row * 16 + hi.col)]));
    }
    for (int r = 0; r < 2; ++r) {
      const auto lo = mma::b_coord(l, 2 * r);
      const auto hi = mma::b_coord(l, 2 * r + 1);
      b[r][l] = HostWarp<Elem>::pack(Codec::encode(Bm[static_cast<std::size_t>(lo.row * 8 + lo.col)]),
                                     Codec::encode(Bm[static_cast<std::size_t>(hi.row * 8 + hi.col)]));
    }
    for (int i = 0; i < 4; ++i) {
      const auto c = mma::c_coord(l, i);
      d[i][l] = C[static_cast<std::size_t>(c.row * 8 + c.col)];
    }
  }
  w.mma(d, a, b[0], b[1]);
  for (int l = 0; l < 32; ++l) {
    for (int i = 0; i < 4; ++i) {
      const auto c = mma::c_coord(l, i);
      double want = C[static_cast<std::size_t>(c.row * 8 + c.col)];
      for (int k = 0; k < 16; ++k) {
        want += static_cast<double>(A[static_cast<std::size_t>(c.row * 16 + k)]) *
                Bm[static_cast<std::size_t>(k * 8 + c.col)];
      }
      ASSERT_NEAR(d[i][l], want, 1e-5 * (1.0 + std::fabs(want)))
          << "D(" << c.row << ", " << c.col << ") lane " << l;
    }
  }
}

TEST(MmaFragments, ProductThroughFragmentsEqualsMatrixProductBf16) { check_mma_product<tc::Bf16>(); }
TEST(MmaFragments, ProductThroughFragmentsEqualsMatrixProductF16) { check_mma_product<tc::F16>(); }

// ---- (b) ldmatrix addresses, the swizzle, bank conflicts ----------------------------------------

/// A (rows x D) matrix of random 16-bit values stored as a swizzled tile.
template <int D>
struct SwizzledTile {
  std::vector<std::uint16_t> logical;  // [row][col]
  std::vector<std::uint16_t> smem;     // swizzled
  SwizzledTile(int rows, std::mt19937_64& rng)
      : logical(static_cast<std::size_t>(rows * D)), smem(logical.size()) {
    std::uniform_int_distribution<int> bits(0, 0xFFFF);
    for (auto& x : logical) x = static_cast<std::uint16_t>(bits(rng));
    for (int r = 0; r < rows; ++r) {
      for (int c = 0; c < D; ++c) {
        smem[static_cast<std::size_t>(mma::tile_offset<D>(r, c / 8) + c % 8)] =
            logical[static_cast<std::size_t>(r * D + c)];
      }
    }
  }
  std::uint16_t at(int r, int c) const { return logical[static_cast<std::size_t>(r * D + c)]; }
};

template <int D>
void check_ldmatrix_operands() {
  RINGATTN_SEEDED_RNG(rng);
  using W = HostWarp<tc::Bf16>;
  const SwizzledTile<D> q(tc::kBr, rng);
  const SwizzledTile<D> k(tc::kBc, rng);
  const SwizzledTile<D> v(tc::kBc, rng);
  const Lanes<int> lane = W(nullptr, 0).lane();
  auto expect = [](std::uint32_t got, std::uint16_t lo, std::uint16_t hi) { return got == W::pack(lo, hi); };

  // Q as A operands (warp_begin's addresses).
  {
    W w(q.smem.data(), q.smem.size());
    for (int warp = 0; warp < tc::kWarps; ++warp) {
      for (int kk = 0; kk < D / 16; ++kk) {
        Lanes<std::uint32_t> r[4];
        w.ldsm_x4(r, q.smem.data(),
                  mma::tile_offset<D>(Lanes<int>(16 * warp) + mma::ldsm_a_row(lane),
                                      Lanes<int>(2 * kk) + mma::ldsm_a_chunk(lane)));
        for (int l = 0; l < 32; ++l) {
          for (int reg = 0; reg < 4; ++reg) {
            const auto lo = mma::a_coord(l, 2 * reg);
            const auto hi = mma::a_coord(l, 2 * reg + 1);
            ASSERT_TRUE(expect(r[reg][l], q.at(16 * warp + lo.row, 16 * kk + lo.col),
                               q.at(16 * warp + hi.row, 16 * kk + hi.col)))
                << "Q warp " << warp << " kk " << kk << " lane " << l << " reg " << reg;
          }
        }
      }
    }
    EXPECT_EQ(w.bad_addresses, 0);
    EXPECT_EQ(w.bank_conflicts, 0) << "of " << w.ldsm_phases << " phases";
    EXPECT_EQ(w.ldsm_phases, 4L * tc::kWarps * (D / 16));
  }
  // K as B operands of S = Q K^T (warp_scores' addresses): B(k = dim, n = key) = K[key][dim].
  {
    W w(k.smem.data(), k.smem.size());
    for (int kk = 0; kk < D / 16; ++kk) {
      for (int np = 0; np < tc::kBc / 16; ++np) {
        Lanes<std::uint32_t> r[4];
        w.ldsm_x4(r, k.smem.data(),
                  mma::tile_offset<D>(Lanes<int>(16 * np) + mma::ldsm_bt_row(lane),
                                      Lanes<int>(2 * kk) + mma::ldsm_bt_chunk(lane)));
        for (int l = 0; l < 32; ++l) {
          for (int reg = 0; reg < 4; ++reg) {
            const int ntile = 2 * np + reg / 2;  // registers 0, 1: n-tile 2np; 2, 3: 2np + 1
            const auto lo = mma::b_coord(l, 2 * (reg % 2));
            const auto hi = mma::b_coord(l, 2 * (reg % 2) + 1);
            ASSERT_TRUE(expect(r[reg][l], k.at(8 * ntile + lo.col, 16 * kk + lo.row),
                               k.at(8 * ntile + hi.col, 16 * kk + hi.row)))
                << "K kk " << kk << " np " << np << " lane " << l << " reg " << reg;
          }
        }
      }
    }
    EXPECT_EQ(w.bad_addresses, 0);
    EXPECT_EQ(w.bank_conflicts, 0) << "of " << w.ldsm_phases << " phases";
  }
  // V as B operands of O = P V (warp_pv's addresses, .trans): B(k = key, n = dim) = V[key][dim].
  {
    W w(v.smem.data(), v.smem.size());
    for (int kk = 0; kk < tc::kBc / 16; ++kk) {
      for (int np = 0; np < D / 16; ++np) {
        Lanes<std::uint32_t> r[4];
        w.ldsm_x4_trans(r, v.smem.data(),
                        mma::tile_offset<D>(Lanes<int>(16 * kk) + mma::ldsm_b_trans_row(lane),
                                            Lanes<int>(2 * np) + mma::ldsm_b_trans_chunk(lane)));
        for (int l = 0; l < 32; ++l) {
          for (int reg = 0; reg < 4; ++reg) {
            const int ntile = 2 * np + reg / 2;
            const auto lo = mma::b_coord(l, 2 * (reg % 2));
            const auto hi = mma::b_coord(l, 2 * (reg % 2) + 1);
            ASSERT_TRUE(expect(r[reg][l], v.at(16 * kk + lo.row, 8 * ntile + lo.col),
                               v.at(16 * kk + hi.row, 8 * ntile + hi.col)))
                << "V kk " << kk << " np " << np << " lane " << l << " reg " << reg;
          }
        }
      }
    }
    EXPECT_EQ(w.bad_addresses, 0);
    EXPECT_EQ(w.bank_conflicts, 0) << "of " << w.ldsm_phases << " phases";
  }
}

TEST(Ldmatrix, DeliversTheOperandFragmentsConflictFreeD64) { check_ldmatrix_operands<64>(); }
TEST(Ldmatrix, DeliversTheOperandFragmentsConflictFreeD128) { check_ldmatrix_operands<128>(); }

// The conflict detector itself: without the swizzle, K's rows (128 or 256 bytes apart) all sit
// in one bank group, an 8-way conflict in every phase.
TEST(Ldmatrix, UnswizzledTileWouldConflict) {
  constexpr int D = 64;
  std::vector<std::uint16_t> smem(static_cast<std::size_t>(tc::kBc * D));
  HostWarp<tc::Bf16> w(smem.data(), smem.size());
  const Lanes<int> lane = w.lane();
  Lanes<std::uint32_t> r[4];
  w.ldsm_x4(r, smem.data(), (Lanes<int>(0) + mma::ldsm_bt_row(lane)) * D + mma::ldsm_bt_chunk(lane) * 8);
  EXPECT_EQ(w.bank_conflicts, 4);
  EXPECT_EQ(w.bad_addresses, 0);
}

// cp.async: every chunk of a tile is copied exactly once, and the 8 threads of each 16-byte
// store phase write 8 distinct bank groups; each warp reads whole 16-byte chunks in row order.
template <int D>
void check_copy_plan(int rows) {
  std::vector<int> seen(static_cast<std::size_t>(rows * D / 8), 0);
  for (int step = 0; step < tc::copy_steps<D>(rows); ++step) {
    for (int phase = 0; phase < tc::kThreads / 8; ++phase) {
      unsigned groups = 0;
      for (int t = 8 * phase; t < 8 * phase + 8; ++t) {
        const mma::Coord c = tc::copy_chunk<D>(t, step);
        ASSERT_LT(c.row, rows);
        ++seen[static_cast<std::size_t>(c.row * (D / 8) + c.col)];
        const unsigned g = 1u << mma::bank_group(2 * mma::tile_offset<D>(c.row, c.col));
        ASSERT_EQ(groups & g, 0u) << "store phase " << phase << " of step " << step << " conflicts";
        groups |= g;
        if (t % 32 != 0) {  // within a warp, consecutive threads read consecutive global chunks
          const mma::Coord p = tc::copy_chunk<D>(t - 1, step);
          ASSERT_EQ(p.row * (D / 8) + p.col + 1, c.row * (D / 8) + c.col);
        }
      }
    }
  }
  for (int n : seen) ASSERT_EQ(n, 1);
}

TEST(CpAsyncPlan, CoversTilesOnceWithoutStoreConflicts) {
  check_copy_plan<64>(tc::kBr);
  check_copy_plan<64>(tc::kBc);
  check_copy_plan<128>(tc::kBr);
  check_copy_plan<128>(tc::kBc);
}

// ---- (c) C fragments reused as A fragments ------------------------------------------------------

TEST(CToA, RegisterIdentityHoldsForEveryLane) {
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r) {
      for (int h = 0; h < 2; ++h) {
        const auto a = mma::a_coord(lane, 2 * r + h);
        const auto c = mma::c_coord(lane, mma::c_to_a_elem(r) + h);
        ASSERT_EQ(a.row, c.row) << "lane " << lane << " reg " << r;
        ASSERT_EQ(a.col, c.col + 8 * mma::c_to_a_tile(r)) << "lane " << lane << " reg " << r;
      }
    }
  }
}

// S (16x16) held as two C tiles, turned into A in registers and multiplied by V (16x8): equals
// round(S) V.
template <class Elem>
void check_p_times_v() {
  using Codec = CodecOf<Elem>;
  RINGATTN_SEEDED_RNG(rng);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  std::vector<float> S(16 * 16);
  for (auto& x : S) x = unit(rng);
  const auto V = random_lowp<Codec>(16 * 8, rng);
  std::vector<std::uint16_t> arena(8);
  HostWarp<Elem> w(arena.data(), arena.size());
  Lanes<float> s[2][4];
  for (int l = 0; l < 32; ++l) {
    for (int t = 0; t < 2; ++t) {
      for (int i = 0; i < 4; ++i) {
        const auto c = mma::c_coord(l, i);
        s[t][i][l] = S[static_cast<std::size_t>(c.row * 16 + 8 * t + c.col)];
      }
    }
  }
  Lanes<std::uint32_t> a[4];
  for (int r = 0; r < 4; ++r) {
    const int t = mma::c_to_a_tile(r);
    const int e = mma::c_to_a_elem(r);
    a[r] = w.pack2(s[t][e], s[t][e + 1]);
  }
  Lanes<std::uint32_t> b[2];
  for (int l = 0; l < 32; ++l) {
    for (int r = 0; r < 2; ++r) {
      const auto lo = mma::b_coord(l, 2 * r);
      const auto hi = mma::b_coord(l, 2 * r + 1);
      b[r][l] = HostWarp<Elem>::pack(Codec::encode(V[static_cast<std::size_t>(lo.row * 8 + lo.col)]),
                                     Codec::encode(V[static_cast<std::size_t>(hi.row * 8 + hi.col)]));
    }
  }
  Lanes<float> o[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  w.mma(o, a, b[0], b[1]);
  for (int l = 0; l < 32; ++l) {
    for (int i = 0; i < 4; ++i) {
      const auto c = mma::c_coord(l, i);
      double want = 0.0;
      for (int k = 0; k < 16; ++k) {
        const float p = Codec::decode(Codec::encode(S[static_cast<std::size_t>(c.row * 16 + k)]));
        want += static_cast<double>(p) * V[static_cast<std::size_t>(k * 8 + c.col)];
      }
      ASSERT_NEAR(o[i][l], want, 1e-5 * (1.0 + std::fabs(want))) << "O(" << c.row << ", " << c.col << ")";
    }
  }
}

TEST(CToA, PTimesVThroughRegistersBf16) { check_p_times_v<tc::Bf16>(); }
TEST(CToA, PTimesVThroughRegistersF16) { check_p_times_v<tc::F16>(); }

// ---- (d) the quad reduction ----------------------------------------------------------------------

TEST(QuadReduction, CoversExactlyTheLanesSharingARow) {
  for (int lane = 0; lane < 32; ++lane) {
    std::set<int> reached = {lane};
    for (int round = 0; round < 2; ++round) {
      std::set<int> next = reached;
      for (int x : reached) next.insert(mma::quad_partner(x, round));
      reached = next;
    }
    std::set<int> same_rows;
    for (int other = 0; other < 32; ++other) {
      if (mma::c_coord(other, 0).row == mma::c_coord(lane, 0).row) same_rows.insert(other);
    }
    ASSERT_EQ(reached, same_rows) << "lane " << lane;
    ASSERT_EQ(reached.size(), 4u);
  }
  // The two shuffle rounds warp_softmax does give every lane its rows' max over all 8 columns.
  RINGATTN_SEEDED_RNG(rng);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::uint16_t> arena(8);
  HostWarp<tc::Bf16> w(arena.data(), arena.size());
  float C[16][8];
  for (auto& row : C) {
    for (auto& x : row) x = normal(rng);
  }
  for (int half = 0; half < 2; ++half) {
    Lanes<float> mx;
    for (int l = 0; l < 32; ++l) {
      const auto c0 = mma::c_coord(l, 2 * half);
      mx[l] = std::fmax(C[c0.row][c0.col], C[c0.row][c0.col + 1]);
    }
    mx = w.max(mx, w.shfl_xor(mx, 1));
    mx = w.max(mx, w.shfl_xor(mx, 2));
    for (int l = 0; l < 32; ++l) {
      const int row = mma::c_coord(l, 2 * half).row;
      ASSERT_EQ(mx[l], *std::max_element(std::begin(C[row]), std::end(C[row]))) << "lane " << l;
    }
  }
}

// ---- the mask and the tile schedule ------------------------------------------------------------

tc::MaskParams random_mask(std::mt19937_64& rng, int seq_kv) {
  std::uniform_int_distribution<int> off(-300, 300);
  std::uniform_int_distribution<int> stride(1, 5);
  tc::MaskParams p;
  p.causal = true;
  p.q_offset = off(rng);
  p.q_stride = stride(rng);
  p.k_offset = off(rng);
  p.k_stride = stride(rng);
  p.seq_kv = seq_kv;
  return p;
}

bool visible(const tc::MaskParams& p, std::int64_t i, std::int64_t j) {
  return j < p.seq_kv && (!p.causal || p.k_offset + j * p.k_stride <= p.q_offset + i * p.q_stride);
}

TEST(TileSchedule, KeyLimitMatchesBruteForce) {
  RINGATTN_SEEDED_RNG(rng);
  for (int trial = 0; trial < 200; ++trial) {
    const int seq_kv = static_cast<int>(rng() % 200);
    tc::MaskParams p = random_mask(rng, seq_kv);
    p.causal = trial % 5 != 0;
    for (int i = 0; i < 150; ++i) {
      int want = -1;
      for (int j = 0; j < seq_kv; ++j) {
        if (visible(p, i, j)) want = j;
      }
      ASSERT_EQ(tc::key_limit(p, i), want)
          << "row " << i << " q " << p.q_offset << "+" << p.q_stride << "i, k " << p.k_offset << "+"
          << p.k_stride << "j, S_kv " << seq_kv;
    }
  }
}

// Tiles at or past kv_tile_count hold no visible pair of the block (they are skipped unloaded),
// the last tile before it holds one; a tile tile_needs_mask() calls clean is fully visible to
// every row of the warp.
TEST(TileSchedule, SkipsOnlyMaskedTilesAndMasksEveryPartialTile) {
  RINGATTN_SEEDED_RNG(rng);
  for (int trial = 0; trial < 200; ++trial) {
    const int seq_q = 1 + static_cast<int>(rng() % 200);
    const int seq_kv = static_cast<int>(rng() % 300);
    tc::MaskParams p = random_mask(rng, seq_kv);
    p.causal = trial % 5 != 0;
    for (int q0 = 0; q0 < seq_q; q0 += tc::kBr) {
      const int rows = std::min(tc::kBr, seq_q - q0);
      const int n = tc::kv_tile_count(tc::key_limit(p, q0 + rows - 1));
      const int all_tiles = (seq_kv + tc::kBc - 1) / tc::kBc;
      ASSERT_LE(n, all_tiles);
      for (int t = 0; t < all_tiles; ++t) {
        bool any = false;
        for (int i = q0; i < q0 + rows; ++i) {
          for (int j = t * tc::kBc; j < (t + 1) * tc::kBc; ++j) any = any || visible(p, i, j);
        }
        if (t >= n) {
          ASSERT_FALSE(any) << "tile " << t << " skipped but visible";
        }
        if (t == n - 1) {
          ASSERT_TRUE(any) << "tile " << t << " visited but fully masked";
        }
      }
      for (int warp = 0; warp < tc::kWarps; ++warp) {
        const int first = q0 + 16 * warp;
        if (first >= seq_q) continue;
        for (int t = 0; t < n; ++t) {
          if (tc::tile_needs_mask(t, tc::key_limit(p, first))) continue;
          for (int i = first; i < std::min(first + 16, seq_q); ++i) {
            for (int j = t * tc::kBc; j < (t + 1) * tc::kBc; ++j) {
              ASSERT_TRUE(visible(p, i, j)) << "tile " << t << " left unmasked, row " << i << " key " << j;
            }
          }
        }
      }
    }
  }
}

// ---- whole CTAs: the kernel's own CTA program on an emulated CTA -------------------------------

struct CtaCase {
  std::string name;
  ShapeCase shape;
  bool causal = false;
  std::int64_t q_offset = 0, q_stride = 1, k_offset = 0, k_stride = 1;
  double q_multiplier = 1.0;
  bool out_f32 = true;
  bool expect_empty_rows = false;
};
std::ostream& operator<<(std::ostream& os, const CtaCase& c) { return os << c.name; }

enum class Dtype { Bf16, F16 };
std::string to_string(Dtype d) { return d == Dtype::Bf16 ? "bf16" : "fp16"; }
std::ostream& operator<<(std::ostream& os, Dtype d) { return os << to_string(d); }

struct CtaResult {
  Tensor<double> out;  // (B, S_q, H_q, D) as the kernel would write it (after out-dtype rounding)
  Tensor<double> lse;  // (B, H_q, S_q)
  std::vector<std::uint8_t> writes;  // per O element
  WarpCounters counters;
  Findings findings;  // races, barrier mismatches, accesses outside the buffers
};

/// forward_tc_kernel on the CPU: the kernel's own CTA program (tc::forward_cta, what the kernel
/// calls) on every block of the launch grid, each an emulated CTA of four warps whose every
/// shared-memory access is checked against the barriers and cp.async groups (cta_emulator.hpp).
/// Inputs are the 16-bit encodings; O and LSE start as NaN.
template <class Elem, int D>
CtaResult run_ctas(const CtaCase& c, const std::vector<std::uint16_t>& q, const std::vector<std::uint16_t>& k,
                   const std::vector<std::uint16_t>& v, float scale) {
  using Codec = CodecOf<Elem>;
  const ShapeCase& s = c.shape;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::size_t o_elems = static_cast<std::size_t>(s.batch * s.seq_q * s.heads_q * D);
  std::vector<float> out_f32(c.out_f32 ? o_elems : 0, nan);
  std::vector<std::uint16_t> out_lowp(c.out_f32 ? 0 : o_elems, Codec::encode(nan));
  std::vector<float> lse(static_cast<std::size_t>(s.batch * s.heads_q * s.seq_q), nan);

  tc::FwdParams p;  // as forward_tensor_core resolves a launch
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.out = c.out_f32 ? static_cast<void*>(out_f32.data()) : static_cast<void*>(out_lowp.data());
  p.lse = lse.data();
  p.out_f32 = c.out_f32;
  p.seq_q = static_cast<int>(s.seq_q);
  p.heads_q = static_cast<int>(s.heads_q);
  p.heads_kv = static_cast<int>(s.heads_kv);
  p.group = p.heads_q / p.heads_kv;
  p.mask = tc::mask_params(c, s.seq_kv);
  p.scale_log2 = static_cast<float>(static_cast<double>(scale) * tc::kLog2e);

  GlobalMap globals;
  globals.add("Q", q.data(), q.size() * 2, false);
  globals.add("K", k.data(), k.size() * 2, false);
  globals.add("V", v.data(), v.size() * 2, false);
  if (c.out_f32) {
    globals.add("O", out_f32.data(), o_elems * 4, true, 4, true);
  } else {
    globals.add("O", out_lowp.data(), o_elems * 2, true, 2, true);
  }
  globals.add("LSE", lse.data(), lse.size() * 4, true, 4, true);

  CtaResult res;
  const int grid_x = static_cast<int>((s.seq_q + tc::kBr - 1) / tc::kBr);  // as forward_tc.cu's launch
  run_grid<Elem>(grid_x, static_cast<int>(s.heads_q), static_cast<int>(s.batch), tc::fwd_smem_bytes<D>(),
                 Codec::encode(nan), globals, res.findings, res.counters,
                 [&](HostCta<Elem>& cta) { tc::forward_cta<D>(cta, p); });

  res.writes = globals.buffer("O").writes;
  for (const std::uint8_t n : globals.buffer("LSE").writes) {
    if (n != 1) res.findings.add("an LSE element written " + std::to_string(n) + " times");
  }
  res.out = Tensor<double>(s.q_shape());
  for (std::size_t n = 0; n < o_elems; ++n) {
    res.out[static_cast<std::int64_t>(n)] = c.out_f32 ? out_f32[n] : Codec::decode(out_lowp[n]);
  }
  res.lse = Tensor<double>(s.lse_shape());
  for (std::size_t n = 0; n < lse.size(); ++n) res.lse[static_cast<std::int64_t>(n)] = lse[n];
  return res;
}

/// The error yardstick (DESIGN.md): the same attention done naively in low precision: fp32
/// scores of the 16-bit inputs, fp32 softmax, P rounded to the 16-bit type, fp32 P V, O rounded
/// to the output type. Also returns max |scale q.k| for the LSE tolerance.
template <class Codec>
Tensor<double> naive_lowp(const CtaCase& c, const Tensor<double>& q, const Tensor<double>& k,
                          const Tensor<double>& v, float scale, double* max_logit) {
  const ShapeCase& s = c.shape;
  const std::int64_t D = s.head_dim;
  Tensor<double> out(s.q_shape(), 0.0);
  *max_logit = 0.0;
  std::vector<float> sc(static_cast<std::size_t>(s.seq_kv));
  for (std::int64_t b = 0; b < s.batch; ++b) {
    for (std::int64_t h = 0; h < s.heads_q; ++h) {
      const std::int64_t hk = h / (s.heads_q / s.heads_kv);
      for (std::int64_t i = 0; i < s.seq_q; ++i) {
        float m = -INFINITY;
        for (std::int64_t j = 0; j < s.seq_kv; ++j) {
          float dot = 0.0f;
          for (std::int64_t x = 0; x < D; ++x) {
            dot += static_cast<float>(q[((b * s.seq_q + i) * s.heads_q + h) * D + x]) *
                   static_cast<float>(k[((b * s.seq_kv + j) * s.heads_kv + hk) * D + x]);
          }
          const bool vis = !c.causal || c.k_offset + j * c.k_stride <= c.q_offset + i * c.q_stride;
          sc[static_cast<std::size_t>(j)] = vis ? dot * scale : -INFINITY;
          if (vis) *max_logit = std::max(*max_logit, std::fabs(static_cast<double>(dot * scale)));
          m = std::max(m, sc[static_cast<std::size_t>(j)]);
        }
        if (m == -INFINITY) continue;
        float l = 0.0f;
        for (auto& x : sc) {
          x = std::exp(x - m);
          l += x;
        }
        for (std::int64_t x = 0; x < D; ++x) {
          float o = 0.0f;
          for (std::int64_t j = 0; j < s.seq_kv; ++j) {
            o += Codec::decode(Codec::encode(sc[static_cast<std::size_t>(j)] / l)) *
                 static_cast<float>(v[((b * s.seq_kv + j) * s.heads_kv + hk) * D + x]);
          }
          out[((b * s.seq_q + i) * s.heads_q + h) * D + x] = c.out_f32 ? o : Codec::decode(Codec::encode(o));
        }
      }
    }
  }
  return out;
}

double max_abs_diff(const Tensor<double>& a, const Tensor<double>& b) {
  double e = 0.0;
  for (std::int64_t n = 0; n < a.size(); ++n) {
    if (std::isfinite(b[n])) e = std::max(e, std::fabs(a[n] - b[n]));
  }
  return e;
}

class CtaEmulation : public ::testing::TestWithParam<std::tuple<Dtype, int, CtaCase>> {};

template <class Elem, int D>
void check_cta(const CtaCase& base) {
  using Codec = CodecOf<Elem>;
  CtaCase c = base;
  c.shape.head_dim = D;
  RINGATTN_SEEDED_RNG(rng);
  // Inputs drawn in double, rounded to the 16-bit type; the oracle sees the rounded values.
  auto in = random_inputs<double>(c.shape, rng, c.q_multiplier);
  auto encode = [](Tensor<double>& t) {
    std::vector<std::uint16_t> bits(static_cast<std::size_t>(t.size()));
    for (std::int64_t n = 0; n < t.size(); ++n) {
      bits[static_cast<std::size_t>(n)] = Codec::encode(static_cast<float>(t[n]));
      t[n] = Codec::decode(bits[static_cast<std::size_t>(n)]);
    }
    return bits;
  };
  const auto qb = encode(in.q);
  const auto kb = encode(in.k);
  const auto vb = encode(in.v);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));

  const CtaResult got = run_ctas<Elem, D>(c, qb, kb, vb, scale);
  const auto ref = oracle_forward(in.q, in.k, in.v, static_cast<double>(scale), c.causal,
                                  arithmetic_positions(c.shape.seq_q, c.q_offset, c.q_stride),
                                  arithmetic_positions(c.shape.seq_kv, c.k_offset, c.k_stride));
  double max_logit = 0.0;
  const auto naive = naive_lowp<Codec>(c, in.q, in.k, in.v, scale, &max_logit);

  // The emulated hardware saw only legal, conflict-free shared-memory rows, no race between the
  // warps, the barriers and the cp.async groups, and no access outside the buffers.
  EXPECT_EQ(got.findings.count, 0) << got.findings.summary();
  EXPECT_EQ(got.counters.bad_addresses, 0);
  EXPECT_EQ(got.counters.bank_conflicts, 0) << "of " << got.counters.ldsm_phases << " ldmatrix phases";
  // Every O element written exactly once (NaN poison would also show below).
  for (std::size_t n = 0; n < got.writes.size(); ++n) {
    ASSERT_EQ(got.writes[n], 1) << "O element " << n << " written " << int{got.writes[n]} << " times";
  }
  std::int64_t empty = 0;
  EXPECT_TRUE(EmptyRowsExact(got.out, got.lse, ref.lse, &empty));
  if (c.expect_empty_rows) {
    EXPECT_GT(empty, 0) << "the case was meant to have rows that see no key";
  }

  // LSE involves no 16-bit rounding after the inputs: fp32 accuracy, growing with the logits.
  EXPECT_TRUE(AllClose(got.lse, ref.lse, 2e-6 * (1.0 + max_logit), 1e-6));
  // O: within 3x of the naive low-precision error (plus a floor for cases where it is ~0).
  const double naive_err = max_abs_diff(naive, ref.out);
  const double tol = 3.0 * naive_err + 1e-6 * (1.0 + max_abs(ref.out));
  EXPECT_TRUE(AllClose(got.out, ref.out, tol, 0.0)) << "naive " << Codec::kName << " error " << naive_err;
  if (c.shape.seq_kv > 0 && c.shape.seq_q > 0) {
    EXPECT_GT(got.counters.mma_calls, 0);
  }
}

TEST_P(CtaEmulation, MatchesTheOracle) {
  const auto& [dtype, d, c] = GetParam();
  if (dtype == Dtype::Bf16) {
    d == 64 ? check_cta<tc::Bf16, 64>(c) : check_cta<tc::Bf16, 128>(c);
  } else {
    d == 64 ? check_cta<tc::F16, 64>(c) : check_cta<tc::F16, 128>(c);
  }
}

std::vector<CtaCase> cta_cases() {
  auto make = [](std::string name, std::int64_t B, std::int64_t sq, std::int64_t skv, std::int64_t hq,
                 std::int64_t hkv) {
    CtaCase c;
    c.name = std::move(name);
    c.shape = ShapeCase{B, sq, skv, hq, hkv, 64};
    return c;
  };
  std::vector<CtaCase> cases;
  cases.push_back(make("full_whole_tiles", 1, 128, 128, 2, 2));
  {
    auto c = make("full_tails_gqa_out16", 2, 77, 150, 4, 2);
    c.out_f32 = false;
    cases.push_back(c);
  }
  {
    auto c = make("causal_end_aligned_gqa", 1, 100, 260, 2, 1);
    c.causal = true;
    c.q_offset = 160;
    cases.push_back(c);
  }
  {
    auto c = make("causal_diagonal_out16", 1, 130, 130, 2, 2);
    c.causal = true;
    c.out_f32 = false;
    cases.push_back(c);
  }
  {
    auto c = make("causal_striped", 1, 70, 90, 3, 1);  // ring striping: rank 1 queries vs rank 3 keys
    c.causal = true;
    c.q_offset = 1;
    c.q_stride = 4;
    c.k_offset = 3;
    c.k_stride = 4;
    cases.push_back(c);
  }
  {
    auto c = make("causal_rows_without_keys", 1, 100, 80, 2, 2);
    c.causal = true;
    c.k_offset = 50;
    c.k_stride = 2;
    c.expect_empty_rows = true;
    cases.push_back(c);
  }
  {
    auto c = make("causal_negative_offsets", 1, 65, 129, 2, 1);
    c.causal = true;
    c.q_offset = -37;
    c.q_stride = 3;
    c.k_offset = -100;
    c.k_stride = 2;
    cases.push_back(c);
  }
  {
    auto c = make("causal_block_skipped_entirely", 1, 70, 64, 1, 1);  // block 0 visits no tile
    c.causal = true;
    c.k_offset = 69;
    c.expect_empty_rows = true;
    cases.push_back(c);
  }
  {
    auto c = make("large_logits_x100", 1, 64, 96, 2, 2);
    c.causal = true;
    c.q_offset = 32;
    c.q_multiplier = 100.0;
    cases.push_back(c);
  }
  {
    auto c = make("no_keys", 1, 20, 0, 1, 1);
    c.expect_empty_rows = true;
    cases.push_back(c);
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(
    Forward, CtaEmulation,
    ::testing::Combine(::testing::Values(Dtype::Bf16, Dtype::F16), ::testing::Values(64, 128),
                       ::testing::ValuesIn(cta_cases())),
    [](const ::testing::TestParamInfo<CtaEmulation::ParamType>& tp) {
      return to_string(std::get<0>(tp.param)) + "_D" + std::to_string(std::get<1>(tp.param)) + "_" +
             std::get<2>(tp.param).name;
    });

}  // namespace
}  // namespace ringattn::test
