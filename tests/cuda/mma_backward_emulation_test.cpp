// The tensor-core backward's index and tile math, checked on the CPU through an emulated warp.
//
// What this file is for: backward_tc.cu runs five matrix products per (query tile, key tile)
// pair on tensor cores, two of them on transposed operands (dS read back transposed for dQ, K
// as a .trans B operand), masks by global positions seen from the key side, skips query tiles,
// loops over the query heads of a GQA group and adds dQ with atomics. Each of those is index
// math that a GPU shows only as wrong gradients. Here the kernel's own CTA program
// (tc::backward_cta in cuda/src/backward_tc_tile.hpp, the code backward_tc_kernel runs) computes
// every CTA of the launch grid on an emulated CTA (cta_emulator.hpp: four warps of
// mma_emulator.hpp, whose fragment layouts are the PTX ISA's written out independently, and a
// check of every shared-memory access against the barriers and cp.async groups), and dQ, dK, dV
// are checked against the long-double oracle (tests/common/oracle.hpp) by the project's
// criterion: within 3x of the error of the same computation done naively in the same precision.
//
// What it leaves to a GPU: the hardware's agreement with the manual, real asynchrony and timing,
// atomics' ordering, ex2.approx, register allocation, speed (tests/cuda/cuda_kernel_test.cpp runs
// the kernel itself).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../cuda/src/backward_tc_tile.hpp"
#include "../../cuda/src/mma_fragments.hpp"
#include "common/check.hpp"
#include "common/oracle.hpp"
#include "cta_emulator.hpp"
#include "mma_emulator.hpp"

namespace ringattn::test {
namespace {

// ---- (a) the fragment layouts the backward adds ------------------------------------------------

/// A (rows x M) matrix of random 16-bit values stored as a swizzled tile.
template <int M>
struct Tile16 {
  std::vector<std::uint16_t> logical;  // [row][col]
  std::vector<std::uint16_t> smem;     // swizzled
  Tile16(int rows, std::mt19937_64& rng) : logical(static_cast<std::size_t>(rows * M)), smem(logical.size()) {
    std::uniform_int_distribution<int> bits(0, 0xFFFF);
    for (auto& x : logical) x = static_cast<std::uint16_t>(bits(rng));
    for (int r = 0; r < rows; ++r) {
      for (int c = 0; c < M; ++c) {
        smem[static_cast<std::size_t>(mma::tile_offset<M>(r, c / 8) + c % 8)] = logical[static_cast<std::size_t>(r * M + c)];
      }
    }
  }
  std::uint16_t at(int r, int c) const { return logical[static_cast<std::size_t>(r * M + c)]; }
};

// dQ = dS K reads its A operand from the dS^T tile, stored [key][query]: ldmatrix.trans with
// ldsm_a_trans_* must deliver, lane by lane, A(m = query, k = key) = stored[key][query], without
// bank conflicts, for every warp's 16 query columns and every 16-key step.
TEST(BackwardFragments, TransposedAOperandFromTheDsTile) {
  RINGATTN_SEEDED_RNG(rng);
  using W = HostWarp<tc::Bf16>;
  const Tile16<tc::kBwdBr> ds(tc::kBwdBc, rng);  // rows: keys, columns: queries
  W w(ds.smem.data(), ds.smem.size());
  for (int warp = 0; warp < tc::kWarps; ++warp) {
    for (int kk = 0; kk < tc::kBwdBc / 16; ++kk) {
      Lanes<std::uint32_t> a[4];
      tc::ldsm_a_trans<tc::kBwdBr>(w, a, ds.smem.data(), 16 * warp, kk);
      for (int l = 0; l < 32; ++l) {
        for (int reg = 0; reg < 4; ++reg) {
          const auto lo = mma::a_coord(l, 2 * reg);
          const auto hi = mma::a_coord(l, 2 * reg + 1);
          const std::uint32_t want = W::pack(ds.at(16 * kk + lo.col, 16 * warp + lo.row),
                                             ds.at(16 * kk + hi.col, 16 * warp + hi.row));
          ASSERT_EQ(a[reg][l], want) << "warp " << warp << " kk " << kk << " lane " << l << " reg " << reg;
        }
      }
    }
  }
  EXPECT_EQ(w.bad_addresses, 0);
  EXPECT_EQ(w.bank_conflicts, 0) << "of " << w.ldsm_phases << " phases";
}

// The address split the kernels use (one register per lane pattern, one XOR per use) is the
// swizzled offset itself, for every lane pattern the kernels address with.
template <int D>
void check_offset_split() {
  using I = int;
  for (int lane = 0; lane < 32; ++lane) {
    const std::pair<I, I> patterns[] = {
        {mma::ldsm_a_row(lane), mma::ldsm_a_chunk(lane)},
        {mma::ldsm_bt_row(lane), mma::ldsm_bt_chunk(lane)},
        {mma::ldsm_b_trans_row(lane), mma::ldsm_b_trans_chunk(lane)},
        {mma::ldsm_a_trans_row(lane), mma::ldsm_a_trans_chunk(lane)},
    };
    for (const auto& [r, c] : patterns) {
      const I part = mma::tile_offset<D>(r, c);
      for (int R = 0; R < 128; R += 8) {
        for (int C = 0; C < D / 8; C += 2) {
          ASSERT_EQ(mma::tile_offset_at<D>(part, R, C), mma::tile_offset<D>(R + r, C + c))
              << "D " << D << " lane " << lane << " R " << R << " C " << C;
        }
      }
    }
    // The dS^T store: row groupID, any chunk (c = 0).
    const I part = mma::tile_offset<D>(lane >> 2, 0);
    for (int R = 0; R < 128; R += 8) {
      for (int C = 0; C < D / 8; ++C) {
        ASSERT_EQ(mma::tile_offset_at<D>(part, R, C), mma::tile_offset<D>(R + (lane >> 2), C));
      }
    }
  }
}

TEST(BackwardFragments, SwizzleOffsetSplitIsExact) {
  check_offset_split<64>();
  check_offset_split<128>();
}

// ---- (b) the schedule of a key tile: masks, skipped query tiles, GQA iterations ----------------

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

// Key j visible to query i (both valid rows), the definition the kernel's index math must match.
bool visible(const tc::MaskParams& p, int seq_q, std::int64_t i, std::int64_t j) {
  return i < seq_q && j < p.seq_kv && (!p.causal || p.k_offset + j * p.k_stride <= p.q_offset + i * p.q_stride);
}

TEST(BackwardSchedule, QueryStartMatchesBruteForce) {
  RINGATTN_SEEDED_RNG(rng);
  for (int trial = 0; trial < 200; ++trial) {
    const int seq_q = 1 + static_cast<int>(rng() % 150);
    const int seq_kv = 1 + static_cast<int>(rng() % 200);
    tc::MaskParams p = random_mask(rng, seq_kv);
    p.causal = trial % 5 != 0;
    for (int j = 0; j < seq_kv + 70; ++j) {  // past S_kv too: the last key tile's tail
      int want = seq_q;
      for (int i = seq_q - 1; i >= 0; --i) {
        if (visible(p, seq_q, i, j)) want = i;
      }
      ASSERT_EQ(tc::query_start(p, seq_q, j), want) << "key " << j << " q " << p.q_offset << "+" << p.q_stride
                                                    << "i, k " << p.k_offset << "+" << p.k_stride << "j";
    }
  }
}

// Query tiles before q_tile_begin hold no visible pair with any key of the key tile (they are
// skipped unloaded), the first visited tile holds one; a (warp, tile) that bwd_tile_needs_mask
// calls clean has every pair visible; and a key tile whose first key no query sees is skipped
// whole (the kernel's n_iter = 0) only when no key of it is visible to anyone.
TEST(BackwardSchedule, SkipsOnlyInvisibleTilesAndMasksEveryPartialOne) {
  RINGATTN_SEEDED_RNG(rng);
  for (int trial = 0; trial < 200; ++trial) {
    const int seq_q = 1 + static_cast<int>(rng() % 200);
    const int seq_kv = 1 + static_cast<int>(rng() % 300);
    tc::MaskParams p = random_mask(rng, seq_kv);
    p.causal = trial % 5 != 0;
    const int n_q_tiles = tc::q_tile_count(seq_q);
    ASSERT_EQ(n_q_tiles, (seq_q + 63) / 64);
    for (int k0 = 0; k0 < seq_kv; k0 += tc::kBwdBc) {
      const int first_start = tc::query_start(p, seq_q, k0);
      const int begin = tc::q_tile_begin(first_start);
      bool any_pair = false;
      for (int t = 0; t < n_q_tiles; ++t) {
        bool any = false;
        for (int i = t * tc::kBwdBr; i < (t + 1) * tc::kBwdBr; ++i) {
          for (int j = k0; j < k0 + tc::kBwdBc; ++j) any = any || visible(p, seq_q, i, j);
        }
        any_pair = any_pair || any;
        if (t < begin) {
          ASSERT_FALSE(any) << "query tile " << t << " skipped but visible to key tile " << k0;
        }
        if (t == begin && first_start < seq_q) {
          ASSERT_TRUE(any) << "query tile " << t << " is the first visited but sees nothing";
        }
      }
      ASSERT_EQ(first_start < seq_q, any_pair) << "key tile " << k0 << " skipped or visited wrongly";
      for (int warp = 0; warp < tc::kWarps; ++warp) {
        const int last_start = tc::query_start(p, seq_q, k0 + 16 * warp + 15);
        for (int t = begin; t < n_q_tiles; ++t) {
          if (tc::bwd_tile_needs_mask(t * tc::kBwdBr, last_start, seq_q)) continue;
          for (int i = t * tc::kBwdBr; i < (t + 1) * tc::kBwdBr; ++i) {
            for (int j = k0 + 16 * warp; j < k0 + 16 * warp + 16; ++j) {
              ASSERT_TRUE(visible(p, seq_q, i, j)) << "tile " << t << " left unmasked, query " << i << " key " << j;
            }
          }
        }
      }
    }
  }
}

// The iterations of a CTA visit every (query head of the group, visited query tile) exactly once,
// and only the group's heads; the LSE / D copy plan covers both rows of a tile once.
TEST(BackwardSchedule, GqaIterationsAndRowCopiesCoverOnce) {
  for (int group : {1, 2, 3, 8}) {
    for (int hk : {0, 1, 5}) {
      for (int begin : {0, 1, 4}) {
        for (int n_tiles : {begin + 1, begin + 3, begin + 7}) {
          const int per_head = n_tiles - begin;
          std::set<std::pair<int, int>> seen;
          for (int it = 0; it < group * per_head; ++it) {
            const tc::BwdIteration at = tc::bwd_iteration(it, per_head, begin, hk, group);
            ASSERT_GE(at.head, hk * group);
            ASSERT_LT(at.head, (hk + 1) * group);
            ASSERT_EQ(at.q0 % tc::kBwdBr, 0);
            ASSERT_GE(at.q0 / tc::kBwdBr, begin);
            ASSERT_LT(at.q0 / tc::kBwdBr, n_tiles);
            ASSERT_TRUE(seen.insert({at.head, at.q0}).second) << "visited twice: head " << at.head << " q0 " << at.q0;
          }
          ASSERT_EQ(static_cast<int>(seen.size()), group * per_head);
        }
      }
    }
  }
  std::set<std::pair<bool, int>> rows;
  for (int tid = 0; tid < tc::kThreads; ++tid) {
    const tc::RowCopy rc = tc::row_copy(tid);
    ASSERT_TRUE(rows.insert({rc.delta, rc.row}).second);
    ASSERT_LT(rc.row, tc::kBwdBr);
  }
  ASSERT_EQ(static_cast<int>(rows.size()), 2 * tc::kBwdBr);
}

// The shared-memory layout: tiles do not overlap, every tile starts 16-byte aligned (cp.async,
// ldmatrix), and the whole fits what an sm_80 block may opt into (163 KiB).
TEST(BackwardSchedule, SharedMemoryLayoutFits) {
  auto check = [](auto d_tag) {
    constexpr int D = decltype(d_tag)::value;
    using L = tc::BwdSmem<D>;
    const int starts[] = {L::kK, L::kV, L::kQ, L::kQ + tc::kBwdBr * D, L::kDO, L::kDO + tc::kBwdBr * D, L::kDS};
    const int sizes[] = {tc::kBwdBc * D, tc::kBwdBc * D, tc::kBwdBr * D, tc::kBwdBr * D,
                         tc::kBwdBr * D, tc::kBwdBr * D, tc::kBwdBc * tc::kBwdBr};
    for (std::size_t n = 0; n + 1 < std::size(starts); ++n) {
      EXPECT_EQ(starts[n] + sizes[n], starts[n + 1]) << "D " << D << " tile " << n;
      EXPECT_EQ((2 * starts[n]) % 128, 0) << "D " << D << " tile " << n;
    }
    EXPECT_EQ(L::kDS + tc::kBwdBc * tc::kBwdBr, L::kElems16);
    EXPECT_EQ(L::kBytes, 2 * L::kElems16 + 4 * 4 * tc::kBwdBr);
    EXPECT_LE(L::kBytes, 163 * 1024);
  };
  check(std::integral_constant<int, 64>{});
  check(std::integral_constant<int, 128>{});
  EXPECT_EQ(tc::BwdSmem<64>::kBytes, 58368);   // 57 KiB
  EXPECT_EQ(tc::BwdSmem<128>::kBytes, 107520);  // 105 KiB
}

// ---- (c) whole CTAs through the kernel's warp program ------------------------------------------

struct BwdCase {
  std::string name;
  ShapeCase shape;
  bool causal = false;
  std::int64_t q_offset = 0, q_stride = 1, k_offset = 0, k_stride = 1;
  double q_multiplier = 1.0;
  bool accumulate = false;
  bool expect_empty_rows = false;       // some query row sees no key (LSE = -inf)
  bool expect_idle_key_tiles = false;   // some key tile is seen by no query (its CTA only stores 0)
};
std::ostream& operator<<(std::ostream& os, const BwdCase& c) { return os << c.name; }

enum class Dtype { Bf16, F16 };
std::string to_string(Dtype d) { return d == Dtype::Bf16 ? "bf16" : "fp16"; }

struct Grads {
  Tensor<double> dq, dk, dv;
};

struct BwdRun {
  Grads g;
  WarpCounters counters;
  Findings findings;   // races, barrier mismatches, accesses outside the buffers
  long idle_ctas = 0;  // CTAs whose key tile no query sees
  long masked_tiles = 0, clean_tiles = 0;
};

/// backward_tc_kernel on the CPU: the kernel's own CTA program (tc::backward_cta, what the kernel
/// calls) on every block of the launch grid, each an emulated CTA of four warps whose every
/// shared-memory access is checked against the barriers and cp.async groups (cta_emulator.hpp).
/// dQ starts at 0 (the launcher's memset) or at @p init (accumulate); dK, dV start as NaN unless
/// accumulating. Inputs are the 16-bit encodings; LSE and D are float32 (B, H_q, S_q).
template <class Elem, int D>
BwdRun run_bwd_ctas(const BwdCase& c, const std::vector<std::uint16_t>& q, const std::vector<std::uint16_t>& k,
                    const std::vector<std::uint16_t>& v, const std::vector<std::uint16_t>& dout,
                    const std::vector<float>& lse, const std::vector<float>& delta, float scale, const Grads& init) {
  using Codec = CodecOf<Elem>;
  const ShapeCase& s = c.shape;
  const float nan = std::numeric_limits<float>::quiet_NaN();

  // dQ as the launcher leaves it; dK, dV poisoned unless accumulating (every row must be written).
  auto start = [&](const Tensor<double>& t, bool zero_else_nan) {
    std::vector<float> x(static_cast<std::size_t>(t.size()));
    for (std::int64_t n = 0; n < t.size(); ++n) {
      x[static_cast<std::size_t>(n)] = c.accumulate ? static_cast<float>(t[n]) : (zero_else_nan ? 0.0f : nan);
    }
    return x;
  };
  std::vector<float> dq = start(init.dq, true), dk = start(init.dk, false), dv = start(init.dv, false);

  tc::BwdParams p;  // as backward_tensor_core resolves a launch
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.dout = dout.data();
  p.lse = lse.data();
  p.delta = delta.data();
  p.dq = dq.data();
  p.dk = dk.data();
  p.dv = dv.data();
  p.accumulate = c.accumulate;
  p.seq_q = static_cast<int>(s.seq_q);
  p.heads_q = static_cast<int>(s.heads_q);
  p.heads_kv = static_cast<int>(s.heads_kv);
  p.group = p.heads_q / p.heads_kv;
  p.mask = tc::mask_params(c, s.seq_kv);
  p.scale = scale;
  p.scale_log2 = static_cast<float>(static_cast<double>(scale) * tc::kLog2e);

  GlobalMap globals;
  globals.add("Q", q.data(), q.size() * 2, false);
  globals.add("K", k.data(), k.size() * 2, false);
  globals.add("V", v.data(), v.size() * 2, false);
  globals.add("dO", dout.data(), dout.size() * 2, false);
  globals.add("LSE", lse.data(), lse.size() * 4, false);
  globals.add("D", delta.data(), delta.size() * 4, false);
  globals.add("dQ", dq.data(), dq.size() * 4, true);
  globals.add("dK", dk.data(), dk.size() * 4, true, 4, true);
  globals.add("dV", dv.data(), dv.size() * 4, true, 4, true);

  BwdRun run;
  const int grid_x = static_cast<int>((s.seq_kv + tc::kBwdBc - 1) / tc::kBwdBc);  // as backward_tc.cu's launch
  run_grid<Elem>(grid_x, static_cast<int>(s.heads_kv), static_cast<int>(s.batch), tc::BwdSmem<D>::kBytes,
                 Codec::encode(nan), globals, run.findings, run.counters,
                 [&](HostCta<Elem>& cta) { tc::backward_cta<D>(cta, p); });
  for (const char* name : {"dK", "dV"}) {
    for (const std::uint8_t n : globals.buffer(name).writes) {
      if (n != 1) run.findings.add(std::string("a ") + name + " element written " + std::to_string(n) + " times");
    }
  }

  // What the schedule made the CTAs do, for the cases' coverage checks (the kernel's helpers).
  for (int k0 = 0; k0 < s.seq_kv; k0 += tc::kBwdBc) {
    const int first_start = tc::query_start(p.mask, p.seq_q, k0);
    if (first_start >= p.seq_q) {
      run.idle_ctas += s.batch * s.heads_kv;
      continue;
    }
    for (int q0 = tc::q_tile_begin(first_start) * tc::kBwdBr; q0 < p.seq_q; q0 += tc::kBwdBr) {
      for (int warp = 0; warp < tc::kWarps; ++warp) {
        const int last_start = tc::query_start(p.mask, p.seq_q, k0 + 16 * warp + 15);
        (tc::bwd_tile_needs_mask(q0, last_start, p.seq_q) ? run.masked_tiles : run.clean_tiles) +=
            s.batch * s.heads_q;
      }
    }
  }

  auto to_tensor = [](const std::vector<float>& x, const std::vector<std::int64_t>& shape) {
    Tensor<double> t(shape);
    for (std::int64_t n = 0; n < t.size(); ++n) t[n] = x[static_cast<std::size_t>(n)];
    return t;
  };
  run.g = {to_tensor(dq, s.q_shape()), to_tensor(dk, s.kv_shape()), to_tensor(dv, s.kv_shape())};
  return run;
}

/// The yardstick (DESIGN.md): the same backward done naively in the same precision, pair by pair
/// from the same 16-bit inputs, LSE and D: fp32 scores and dP, P = exp(s - LSE) and
/// dS = P (dP - D) in fp32, rounded to the 16-bit type where the kernel rounds them (the
/// operands of dV += P^T dO, dK += dS^T Q, dQ += dS K), fp32 sums.
template <class Codec>
Grads naive_lowp_backward(const BwdCase& c, const Tensor<double>& q, const Tensor<double>& k, const Tensor<double>& v,
                          const Tensor<double>& dout, const std::vector<float>& lse, const std::vector<float>& delta,
                          float scale) {
  const ShapeCase& s = c.shape;
  const std::int64_t D = s.head_dim;
  std::vector<float> dq(static_cast<std::size_t>(q.size()), 0.0f), dk(static_cast<std::size_t>(k.size()), 0.0f),
      dv(static_cast<std::size_t>(v.size()), 0.0f);
  auto rnd = [](float x) { return Codec::decode(Codec::encode(x)); };
  for (std::int64_t b = 0; b < s.batch; ++b) {
    for (std::int64_t h = 0; h < s.heads_q; ++h) {
      const std::int64_t hk = h / (s.heads_q / s.heads_kv);
      for (std::int64_t i = 0; i < s.seq_q; ++i) {
        const float l = lse[static_cast<std::size_t>((b * s.heads_q + h) * s.seq_q + i)];
        const float d = delta[static_cast<std::size_t>((b * s.heads_q + h) * s.seq_q + i)];
        if (l == -INFINITY) continue;
        const std::int64_t qi = ((b * s.seq_q + i) * s.heads_q + h) * D;
        for (std::int64_t j = 0; j < s.seq_kv; ++j) {
          if (c.causal && c.k_offset + j * c.k_stride > c.q_offset + i * c.q_stride) continue;
          const std::int64_t kj = ((b * s.seq_kv + j) * s.heads_kv + hk) * D;
          float dot = 0.0f, dp = 0.0f;
          for (std::int64_t x = 0; x < D; ++x) {
            dot += static_cast<float>(q[qi + x]) * static_cast<float>(k[kj + x]);
            dp += static_cast<float>(dout[qi + x]) * static_cast<float>(v[kj + x]);
          }
          const float p = std::exp(dot * scale - l);
          const float p16 = rnd(p);
          const float ds16 = rnd(p * (dp - d));
          for (std::int64_t x = 0; x < D; ++x) {
            dv[static_cast<std::size_t>(kj + x)] += p16 * static_cast<float>(dout[qi + x]);
            dk[static_cast<std::size_t>(kj + x)] += scale * ds16 * static_cast<float>(q[qi + x]);
            dq[static_cast<std::size_t>(qi + x)] += scale * ds16 * static_cast<float>(k[kj + x]);
          }
        }
      }
    }
  }
  auto to_tensor = [](const std::vector<float>& x, const std::vector<std::int64_t>& shape) {
    Tensor<double> t(shape);
    for (std::int64_t n = 0; n < t.size(); ++n) t[n] = x[static_cast<std::size_t>(n)];
    return t;
  };
  return {to_tensor(dq, s.q_shape()), to_tensor(dk, s.kv_shape()), to_tensor(dv, s.kv_shape())};
}

double max_abs_diff(const Tensor<double>& a, const Tensor<double>& b) {
  double e = 0.0;
  for (std::int64_t n = 0; n < a.size(); ++n) e = std::max(e, std::fabs(a[n] - b[n]));
  return e;
}

class BwdCtaEmulation : public ::testing::TestWithParam<std::tuple<Dtype, int, BwdCase>> {};

template <class Elem, int D>
void check_bwd_cta(const BwdCase& base) {
  using Codec = CodecOf<Elem>;
  BwdCase c = base;
  c.shape.head_dim = D;
  const ShapeCase& s = c.shape;
  RINGATTN_SEEDED_RNG(rng);
  // Inputs drawn in double, rounded to the 16-bit type; the oracle sees the rounded values.
  auto in = random_inputs<double>(s, rng, c.q_multiplier);
  auto encode = [](Tensor<double>& t) {
    std::vector<std::uint16_t> bits(static_cast<std::size_t>(t.size()));
    for (std::int64_t n = 0; n < t.size(); ++n) {
      bits[static_cast<std::size_t>(n)] = Codec::encode(static_cast<float>(t[n]));
      t[n] = Codec::decode(bits[static_cast<std::size_t>(n)]);
    }
    return bits;
  };
  const auto qb = encode(in.q), kb = encode(in.k), vb = encode(in.v), dob = encode(in.dout);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  const auto qpos = arithmetic_positions(s.seq_q, c.q_offset, c.q_stride);
  const auto kpos = arithmetic_positions(s.seq_kv, c.k_offset, c.k_stride);

  // What the kernel is given: the forward's LSE and D = rowsum(dO * O) in float32 (from the
  // oracle's exact O here; the GPU test runs the pre-pass on the 16-bit O).
  const OracleForward fwd = oracle_forward(in.q, in.k, in.v, static_cast<double>(scale), c.causal, qpos, kpos);
  std::vector<float> lse(static_cast<std::size_t>(fwd.lse.size())), delta(lse.size());
  std::int64_t empty_rows = 0;
  for (std::int64_t b = 0; b < s.batch; ++b) {
    for (std::int64_t h = 0; h < s.heads_q; ++h) {
      for (std::int64_t i = 0; i < s.seq_q; ++i) {
        const std::int64_t li = (b * s.heads_q + h) * s.seq_q + i;
        lse[static_cast<std::size_t>(li)] = static_cast<float>(fwd.lse[li]);
        empty_rows += std::isinf(fwd.lse[li]) ? 1 : 0;
        long double acc = 0.0L;
        for (std::int64_t x = 0; x < D; ++x) {
          const std::int64_t at = ((b * s.seq_q + i) * s.heads_q + h) * D + x;
          acc += static_cast<long double>(in.dout[at]) * fwd.out[at];
        }
        delta[static_cast<std::size_t>(li)] = static_cast<float>(acc);
      }
    }
  }
  Grads init{Tensor<double>(s.q_shape(), 0.0), Tensor<double>(s.kv_shape(), 0.0), Tensor<double>(s.kv_shape(), 0.0)};
  if (c.accumulate) {
    init = {random_tensor<double>(s.q_shape(), rng), random_tensor<double>(s.kv_shape(), rng),
            random_tensor<double>(s.kv_shape(), rng)};
    for (Tensor<double>* t : {&init.dq, &init.dk, &init.dv}) {
      for (auto& x : t->values()) x = static_cast<float>(x);  // the fp32 values the buffers hold
    }
  }

  const BwdRun got = run_bwd_ctas<Elem, D>(c, qb, kb, vb, dob, lse, delta, scale, init);
  const OracleGradients ref = oracle_backward(in.q, in.k, in.v, in.dout, static_cast<double>(scale), c.causal, qpos, kpos);
  const Grads naive = naive_lowp_backward<Codec>(c, in.q, in.k, in.v, in.dout, lse, delta, scale);

  // The emulated hardware saw only legal, conflict-free shared-memory accesses, no race between
  // the warps, the barriers and the cp.async groups, and no access outside the buffers.
  EXPECT_EQ(got.findings.count, 0) << got.findings.summary();
  EXPECT_EQ(got.counters.bad_addresses, 0);
  EXPECT_EQ(got.counters.bank_conflicts, 0) << "of " << got.counters.ldsm_phases << " ldmatrix phases";
  EXPECT_EQ(got.counters.store_conflicts, 0) << "dS^T stores";
  if (c.expect_empty_rows) {
    EXPECT_GT(empty_rows, 0) << "the case was meant to have rows that see no key";
  }
  if (c.expect_idle_key_tiles) {
    EXPECT_GT(got.idle_ctas, 0) << "the case was meant to have key tiles no query sees";
  }
  const long ctas = s.batch * s.heads_kv * ((s.seq_kv + tc::kBwdBc - 1) / tc::kBwdBc);
  if (c.causal && got.idle_ctas < ctas) {
    EXPECT_GT(got.masked_tiles, 0) << "a causal case crosses the diagonal somewhere";
  }

  const struct {
    const char* name;
    const Tensor<double>& got;
    const Tensor<double>& ref;
    const Tensor<double>& naive;
    const Tensor<double>& init;
  } grads[] = {{"dQ", got.g.dq, ref.dq, naive.dq, init.dq},
               {"dK", got.g.dk, ref.dk, naive.dk, init.dk},
               {"dV", got.g.dv, ref.dv, naive.dv, init.dv}};
  for (const auto& g : grads) {
    // Within 3x of the naive low-precision error, plus a floor for gradients that are ~0 (and
    // for the fp32 rounding of adding to the accumulate case's starting values).
    Tensor<double> want = g.ref;
    for (std::int64_t n = 0; n < want.size(); ++n) want[n] += g.init[n];
    const double naive_err = max_abs_diff(g.naive, g.ref);
    const double tol = 3.0 * naive_err + 1e-6 * (1.0 + max_abs(want));
    EXPECT_TRUE(AllClose(g.got, want, tol, 0.0)) << g.name << ": naive " << Codec::kName << " error " << naive_err;
  }
  if (got.idle_ctas < ctas) {
    EXPECT_GT(got.counters.mma_calls, 0);
  }
  if (std::getenv("RINGATTN_PRINT_ERRORS") != nullptr) {  // how close the kernel is to the yardstick
    for (const auto& g : grads) {
      Tensor<double> want = g.ref;
      for (std::int64_t n = 0; n < want.size(); ++n) want[n] += g.init[n];
      std::printf("%s: error %.3g, naive %.3g, max|ref| %.3g\n", g.name, max_abs_diff(g.got, want),
                  max_abs_diff(g.naive, g.ref), max_abs(want));
    }
  }
}

TEST_P(BwdCtaEmulation, MatchesTheOracle) {
  const auto& [dtype, d, c] = GetParam();
  if (dtype == Dtype::Bf16) {
    d == 64 ? check_bwd_cta<tc::Bf16, 64>(c) : check_bwd_cta<tc::Bf16, 128>(c);
  } else {
    d == 64 ? check_bwd_cta<tc::F16, 64>(c) : check_bwd_cta<tc::F16, 128>(c);
  }
}

std::vector<BwdCase> bwd_cases() {
  auto make = [](std::string name, std::int64_t B, std::int64_t sq, std::int64_t skv, std::int64_t hq,
                 std::int64_t hkv) {
    BwdCase c;
    c.name = std::move(name);
    c.shape = ShapeCase{B, sq, skv, hq, hkv, 64};
    return c;
  };
  std::vector<BwdCase> cases;
  cases.push_back(make("full_whole_tiles", 1, 128, 128, 2, 2));
  cases.push_back(make("full_tails_gqa2_batch2", 2, 77, 150, 4, 2));
  {
    auto c = make("causal_end_aligned_gqa2", 1, 100, 260, 2, 1);
    c.causal = true;
    c.q_offset = 160;
    cases.push_back(c);
  }
  {
    auto c = make("causal_diagonal_accumulate", 1, 130, 130, 2, 2);
    c.causal = true;
    c.accumulate = true;
    cases.push_back(c);
  }
  {
    auto c = make("causal_striped_gqa3", 1, 70, 90, 3, 1);  // ring striping: rank 1 queries vs rank 3 keys
    c.causal = true;
    c.q_offset = 1;
    c.q_stride = 4;
    c.k_offset = 3;
    c.k_stride = 4;
    cases.push_back(c);
  }
  {
    auto c = make("causal_zigzag_later_queries_accumulate", 1, 96, 64, 2, 1);  // a later query chunk
    c.causal = true;
    c.q_offset = 96;
    c.k_offset = 32;
    c.accumulate = true;
    cases.push_back(c);
  }
  {
    auto c = make("causal_rows_without_keys", 1, 100, 80, 2, 2);
    c.causal = true;
    c.k_offset = 50;
    c.k_stride = 2;
    c.expect_empty_rows = true;
    c.expect_idle_key_tiles = true;
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
    auto c = make("causal_key_tiles_without_queries", 1, 40, 200, 2, 2);  // keys past every query
    c.causal = true;
    c.expect_idle_key_tiles = true;
    cases.push_back(c);
  }
  {
    auto c = make("causal_nothing_visible", 1, 20, 30, 2, 1);  // an earlier query chunk vs later keys
    c.causal = true;
    c.k_offset = 100;
    c.expect_empty_rows = true;
    c.expect_idle_key_tiles = true;
    cases.push_back(c);
  }
  {
    auto c = make("causal_gqa4_odd", 1, 33, 47, 8, 2);
    c.causal = true;
    c.q_offset = 14;
    cases.push_back(c);
  }
  {
    auto c = make("large_logits_x100", 1, 64, 96, 2, 2);
    c.causal = true;
    c.q_offset = 32;
    c.q_multiplier = 100.0;
    cases.push_back(c);
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(
    Backward, BwdCtaEmulation,
    ::testing::Combine(::testing::Values(Dtype::Bf16, Dtype::F16), ::testing::Values(64, 128),
                       ::testing::ValuesIn(bwd_cases())),
    [](const ::testing::TestParamInfo<BwdCtaEmulation::ParamType>& tp) {
      return to_string(std::get<0>(tp.param)) + "_D" + std::to_string(std::get<1>(tp.param)) + "_" +
             std::get<2>(tp.param).name;
    });

}  // namespace
}  // namespace ringattn::test
