// Ring attention over MPI (ringattn::ref::mpi) against the in-process ring and the long-double
// oracle, run under mpirun with any number of ranks (CTest runs -np 1, 2, 3 and 4).
//
// Every rank builds the same full random Q, K, V, dO (one seed, broadcast from rank 0), takes its
// own shard with shard_rows/shard_lse, calls the collective ring_forward / ring_backward on
// MPI_COMM_WORLD, and compares its shard of the results with the same shard of
// ringattn::ref::ring_forward/ring_backward (same options, ~1e-13 in double) and of the oracle
// (~1e-12). Then the ranks agree on the verdict (MPI_Allgather of a failure flag), so every rank
// reports the same result and rank 0's log names the ranks that failed.
//
// Also: combinations the layout cannot split throw ringattn::Error on every rank; a rank whose
// configuration (causal, H_q, dtype, scale, layout, S) or shard length differs makes every rank
// throw an error that says the ranks disagree; check_agreement on its own.
//
// Output: rank 0 prints GoogleTest's usual log; the other ranks print only their failures,
// prefixed with "[rank r]". Every test is collective: all ranks run the same tests in the same
// order (same command line), and no test returns early on one rank only.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <iostream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/check.hpp"
#include "common/oracle.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/core/layout.hpp"
#include "ringattn/core/tensor.hpp"
#include "ringattn/reference/attention.hpp"
#include "ringattn/reference/mpi_ring.hpp"
#include "ringattn/reference/ring.hpp"

namespace {

using ringattn::Layout;
using ringattn::SequenceLayout;
using ringattn::Tensor;
using ringattn::ref::ForwardResult;
using ringattn::ref::Gradients;
using ringattn::ref::RingOptions;
using ringattn::ref::mpi::MpiRingOptions;
using ringattn::ref::mpi::RingTiming;
using namespace ringattn::test;  // NOLINT(google-build-using-namespace): test helpers

// Deadline for every wait inside the ring: far above what these small cases need (even under
// AddressSanitizer with 4 ranks on 2 cores), far below CTest's timeout, so a lost message fails
// a test instead of hanging the job.
constexpr double kTimeoutS = 60;

// Backward tolerances against the oracle, as in tests/reference/ring_test.cpp.
constexpr double kBwdDouble = 5e-13;
constexpr double kBwdFloat = 1e-5;

// Failures whose message contains this are the cross-rank verdict; the non-root printer does
// not echo them (rank 0 prints them once).
constexpr const char* kCollectiveTag = "(all ranks) ";

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

/// The ranks (of MPI_COMM_WORLD) where @p ok is false, the same list on every rank.
std::vector<int> failing_ranks(bool ok) {
  const int mine = ok ? 0 : 1;
  std::vector<int> all(static_cast<std::size_t>(world_size()), 0);
  MPI_Allgather(&mine, 1, MPI_INT, all.data(), 1, MPI_INT, MPI_COMM_WORLD);
  std::vector<int> bad;
  for (int r = 0; r < world_size(); ++r) {
    if (all[static_cast<std::size_t>(r)] != 0) bad.push_back(r);
  }
  return bad;
}

/// Collective verdict: passes on every rank only if the current test has no failure on any rank.
::testing::AssertionResult AllRanksPassed() {
  const bool ok = !::testing::Test::HasFailure();
  const std::vector<int> bad = failing_ranks(ok);
  if (bad.empty()) return ::testing::AssertionSuccess();
  std::ostringstream os;
  os << kCollectiveTag << "the test failed on rank(s)";
  for (int r : bad) os << ' ' << r;
  os << " of " << world_size() << " (each rank's own failures are printed above, prefixed "
     << "\"[rank r]\" for r > 0)";
  return ::testing::AssertionFailure() << os.str();
}

/// A fresh seed per test (tests/common/check.hpp), taken on rank 0 and broadcast, so every rank
/// builds the same full tensors.
std::uint64_t shared_seed() {
  std::uint64_t seed = fresh_seed();
  MPI_Bcast(&seed, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  return seed;
}

std::int64_t chunks(Layout kind, int n) { return kind == Layout::Zigzag ? 2 * n : n; }

bool layout_can_split(const ShapeCase& s, Layout kind, int n) {
  return s.seq_q >= chunks(kind, n) && s.seq_kv >= chunks(kind, n);
}

/// What a call did: returned, threw ringattn::Error (with its message), or threw something else.
struct Outcome {
  enum Kind { Returned, ThrewError, ThrewOther } kind = Returned;
  std::string message;
};

Outcome run_catching(const std::function<void()>& f) {
  Outcome o;
  try {
    f();
  } catch (const ringattn::Error& e) {
    o.kind = Outcome::ThrewError;
    o.message = e.what();
  } catch (const std::exception& e) {
    o.kind = Outcome::ThrewOther;
    o.message = e.what();
  } catch (...) {
    o.kind = Outcome::ThrewOther;
    o.message = "(not a std::exception)";
  }
  return o;
}

/// Passes when the call threw a one-line ringattn::Error mentioning every string in @p parts.
::testing::AssertionResult IsError(const Outcome& o, const std::vector<std::string>& parts = {}) {
  if (o.kind == Outcome::Returned) return ::testing::AssertionFailure() << "did not throw";
  if (o.kind == Outcome::ThrewOther) {
    return ::testing::AssertionFailure() << "threw something that is not ringattn::Error: "
                                         << o.message;
  }
  auto one = OneLine(o.message);
  if (!one) return one;
  for (const std::string& p : parts) {
    if (o.message.find(p) == std::string::npos) {
      return ::testing::AssertionFailure()
             << "message \"" << o.message << "\" does not mention \"" << p << "\"";
    }
  }
  return ::testing::AssertionSuccess() << "threw: " << o.message;
}

/// Every rank's message, gathered on every rank (for checking they all say the same thing).
std::vector<std::string> all_messages(const std::string& mine) {
  const int len = static_cast<int>(mine.size());
  const int n = world_size();
  std::vector<int> lens(static_cast<std::size_t>(n));
  MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, MPI_COMM_WORLD);
  std::vector<int> displs(static_cast<std::size_t>(n), 0);
  int total = 0;
  for (int r = 0; r < n; ++r) {
    displs[static_cast<std::size_t>(r)] = total;
    total += lens[static_cast<std::size_t>(r)];
  }
  std::string all(static_cast<std::size_t>(total), '\0');
  std::string send = mine;  // MPI-3 takes const void*, but keep a mutable copy for older MPIs
  MPI_Allgatherv(send.data(), len, MPI_CHAR, all.data(), lens.data(), displs.data(), MPI_CHAR,
                 MPI_COMM_WORLD);
  std::vector<std::string> out;
  for (int r = 0; r < n; ++r) {
    out.push_back(all.substr(static_cast<std::size_t>(displs[static_cast<std::size_t>(r)]),
                             static_cast<std::size_t>(lens[static_cast<std::size_t>(r)])));
  }
  return out;
}

// ---- the sweep: layout x causal x shape (GQA, uneven, S_q != S_kv), double and float ----------

struct MpiCase {
  std::string name;
  ShapeCase shape;
};
std::ostream& operator<<(std::ostream& os, const MpiCase& c) { return os << c.name; }

const std::vector<MpiCase>& double_cases() {
  static const std::vector<MpiCase> cases = {
      // Uneven shards for N = 2, 3, 4; GQA 4/2.
      {"S37_Hq4_Hkv2", {1, 37, 37, 4, 2, 8}},
      // Even shards, two batch elements, no GQA.
      {"B2_S64_Hq2_Hkv2", {2, 64, 64, 2, 2, 16}},
      // Fewer queries than keys, end-aligned: query i sits at key position 16 + i.
      {"Sq24_Skv40_Hq6_Hkv3", {1, 24, 40, 6, 3, 8}},
      // More queries than keys: causal rows that see no key (O = 0, LSE = -inf).
      {"Sq40_Skv24_Hq4_Hkv1", {1, 40, 24, 4, 1, 8}},
  };
  return cases;
}

const std::vector<MpiCase>& float_cases() {
  static const std::vector<MpiCase> cases = {
      {"S37_Hq4_Hkv2", {1, 37, 37, 4, 2, 8}},
      {"B2_Sq24_Skv40_Hq4_Hkv2", {2, 24, 40, 4, 2, 16}},
  };
  return cases;
}

using SweepParam = std::tuple<MpiCase, Layout, bool>;

std::string sweep_name(const ::testing::TestParamInfo<SweepParam>& tp) {
  const auto& [c, kind, causal] = tp.param;
  return c.name + "_" + std::string(ringattn::to_string(kind)) + (causal ? "_causal" : "_full");
}

// Small tiles that do not divide the shards: several key tiles per step, so the ring's progress
// calls between tiles run while transfers are in flight.
constexpr std::int64_t kBlockQ = 5;
constexpr std::int64_t kBlockKv = 7;

MpiRingOptions mpi_options(const ShapeCase& s, Layout kind, bool causal) {
  MpiRingOptions o;
  o.causal = causal;
  o.layout = kind;
  o.seq_q = s.seq_q;
  o.seq_kv = s.seq_kv;
  o.block_q = kBlockQ;
  o.block_kv = kBlockKv;
  o.timeout_s = kTimeoutS;
  return o;
}

RingOptions inprocess_options(Layout kind, bool causal, int n) {
  RingOptions o;
  o.causal = causal;
  o.layout = kind;
  o.ranks = n;
  o.block_q = kBlockQ;
  o.block_kv = kBlockKv;
  return o;
}

/// Tolerance against the in-process ring: same schedule and kernels, so only the order of the
/// dK/dV sums may differ (the MPI ring adds the incoming partial sum after its own).
template <class T>
Tolerance same_ring_tolerance(double magnitude) {
  const double base = std::is_same_v<T, double> ? 1e-13 : 2e-6;
  return {base * std::max(1.0, magnitude), base};
}

template <class T>
void check_sweep(const ShapeCase& sc, Layout kind, bool causal) {
  const int rank = world_rank();
  const int n = world_size();
  const std::uint64_t seed = shared_seed();
  SCOPED_TRACE(seed_message(seed));
  std::mt19937_64 rng(seed);
  const Inputs<T> in = random_inputs<T>(sc, rng);
  const MpiRingOptions mo = mpi_options(sc, kind, causal);

  if (!layout_can_split(sc, kind, n)) {
    // Every rank must refuse, without any rank waiting on another. The shards are cut with the
    // contiguous layout (which can split them): the call itself must notice the layout cannot.
    const SequenceLayout ql(Layout::Contiguous, sc.seq_q, n), kl(Layout::Contiguous, sc.seq_kv, n);
    const Tensor<T> q = ringattn::ref::shard_rows(in.q, ql, rank);
    const Tensor<T> k = ringattn::ref::shard_rows(in.k, kl, rank);
    const Tensor<T> v = ringattn::ref::shard_rows(in.v, kl, rank);
    EXPECT_TRUE(IsError(run_catching(
        [&] { (void)ringattn::ref::mpi::ring_forward(MPI_COMM_WORLD, q, k, v, mo); })))
        << "a sequence shorter than the layout's " << chunks(kind, n) << " chunks";
    return;
  }

  const SequenceLayout ql(kind, sc.seq_q, n), kl(kind, sc.seq_kv, n);
  const Tensor<T> q_s = ringattn::ref::shard_rows(in.q, ql, rank);
  const Tensor<T> k_s = ringattn::ref::shard_rows(in.k, kl, rank);
  const Tensor<T> v_s = ringattn::ref::shard_rows(in.v, kl, rank);
  const Tensor<T> do_s = ringattn::ref::shard_rows(in.dout, ql, rank);

  // Ground truths on every rank: the oracle (long double) and the in-process ring over N
  // virtual ranks with the same options.
  const Tensor<double> q = to_double(in.q), k = to_double(in.k), v = to_double(in.v),
                       dout = to_double(in.dout);
  const OracleForward ofwd = oracle_forward(q, k, v, causal);
  const OracleGradients ograd = oracle_backward(q, k, v, dout, causal);
  const RingOptions ro = inprocess_options(kind, causal, n);
  const ForwardResult<T> rfwd = ringattn::ref::ring_forward(in.q, in.k, in.v, ro);
  // The backward takes the oracle's O and LSE (rounded to T), in both rings alike.
  const Tensor<T> out_full = convert<T>(ofwd.out), lse_full = convert<T>(ofwd.lse);
  const Gradients<T> rgrad =
      ringattn::ref::ring_backward(in.q, in.k, in.v, out_full, lse_full, in.dout, ro);

  const double logit = max_abs_logit(q, k, 1.0 / std::sqrt(static_cast<double>(sc.head_dim)));

  // ---- forward
  ForwardResult<T> got;
  RingTiming timing;
  const Outcome f = run_catching([&] {
    got = ringattn::ref::mpi::ring_forward(MPI_COMM_WORLD, q_s, k_s, v_s, mo, &timing);
  });
  EXPECT_EQ(f.kind, Outcome::Returned) << "mpi ring_forward threw: " << f.message;
  if (f.kind == Outcome::Returned) {
    SCOPED_TRACE("forward");
    const Tensor<double> want_o = ringattn::ref::shard_rows(ofwd.out, ql, rank);
    const Tensor<double> want_l = ringattn::ref::shard_lse(ofwd.lse, ql, rank);
    const Tolerance to = tolerance_for<T>(max_abs(ofwd.out), logit);
    const Tolerance tl = tolerance_for<T>(1.0, logit);
    EXPECT_TRUE(AllClose(got.out, want_o, to.atol, to.rtol)) << "O shard vs oracle";
    EXPECT_TRUE(AllClose(got.lse, want_l, tl.atol, tl.rtol)) << "LSE shard vs oracle";
    EXPECT_TRUE(EmptyRowsExact(got.out, got.lse, want_l));
    const Tolerance so = same_ring_tolerance<T>(max_abs(ofwd.out));
    const Tolerance sl = same_ring_tolerance<T>(std::max(1.0, max_abs(ofwd.lse)));
    EXPECT_TRUE(AllClose(got.out, ringattn::ref::shard_rows(rfwd.out, ql, rank), so.atol, so.rtol))
        << "O shard vs in-process ring";
    EXPECT_TRUE(AllClose(got.lse, ringattn::ref::shard_lse(rfwd.lse, ql, rank), sl.atol, sl.rtol))
        << "LSE shard vs in-process ring";
    EXPECT_GE(timing.compute_s, 0.0);
    EXPECT_GE(timing.wait_s, 0.0);
    EXPECT_GE(timing.total_s, 0.0);
    EXPECT_LE(timing.compute_s + timing.wait_s, timing.total_s * (1 + 1e-9) + 1e-6)
        << "compute " << timing.compute_s << " s + wait " << timing.wait_s
        << " s must fit in the call's " << timing.total_s << " s";
  }

  // ---- backward (dQ of this rank's queries; dK/dV of the block this rank owns)
  Gradients<T> g;
  const Tensor<T> out_s = ringattn::ref::shard_rows(out_full, ql, rank);
  const Tensor<T> lse_s = ringattn::ref::shard_lse(lse_full, ql, rank);
  const Outcome b = run_catching([&] {
    g = ringattn::ref::mpi::ring_backward(MPI_COMM_WORLD, q_s, k_s, v_s, out_s, lse_s, do_s, mo);
  });
  EXPECT_EQ(b.kind, Outcome::Returned) << "mpi ring_backward threw: " << b.message;
  if (b.kind == Outcome::Returned) {
    SCOPED_TRACE("backward");
    const Tolerance tq = tolerance_for<T>(max_abs(ograd.dq), logit, kBwdDouble, kBwdFloat);
    const Tolerance tk = tolerance_for<T>(max_abs(ograd.dk), logit, kBwdDouble, kBwdFloat);
    const Tolerance tv = tolerance_for<T>(max_abs(ograd.dv), logit, kBwdDouble, kBwdFloat);
    EXPECT_TRUE(AllClose(g.dq, ringattn::ref::shard_rows(ograd.dq, ql, rank), tq.atol, tq.rtol))
        << "dQ shard vs oracle";
    EXPECT_TRUE(AllClose(g.dk, ringattn::ref::shard_rows(ograd.dk, kl, rank), tk.atol, tk.rtol))
        << "dK shard vs oracle";
    EXPECT_TRUE(AllClose(g.dv, ringattn::ref::shard_rows(ograd.dv, kl, rank), tv.atol, tv.rtol))
        << "dV shard vs oracle";
    const Tolerance sq = same_ring_tolerance<T>(max_abs(ograd.dq));
    const Tolerance sk = same_ring_tolerance<T>(max_abs(ograd.dk));
    const Tolerance sv = same_ring_tolerance<T>(max_abs(ograd.dv));
    EXPECT_TRUE(AllClose(g.dq, ringattn::ref::shard_rows(rgrad.dq, ql, rank), sq.atol, sq.rtol))
        << "dQ shard vs in-process ring";
    EXPECT_TRUE(AllClose(g.dk, ringattn::ref::shard_rows(rgrad.dk, kl, rank), sk.atol, sk.rtol))
        << "dK shard vs in-process ring";
    EXPECT_TRUE(AllClose(g.dv, ringattn::ref::shard_rows(rgrad.dv, kl, rank), sv.atol, sv.rtol))
        << "dV shard vs in-process ring";
  }
}

class MpiRingDouble : public ::testing::TestWithParam<SweepParam> {};

TEST_P(MpiRingDouble, ShardsMatchInProcessRingAndOracle) {
  const auto& [c, kind, causal] = GetParam();
  check_sweep<double>(c.shape, kind, causal);
  EXPECT_TRUE(AllRanksPassed());
}

INSTANTIATE_TEST_SUITE_P(Sweep, MpiRingDouble,
                         ::testing::Combine(::testing::ValuesIn(double_cases()),
                                            ::testing::Values(Layout::Contiguous, Layout::Striped,
                                                              Layout::Zigzag),
                                            ::testing::Bool()),
                         sweep_name);

class MpiRingFloat : public ::testing::TestWithParam<SweepParam> {};

TEST_P(MpiRingFloat, ShardsMatchInProcessRingAndOracle) {
  const auto& [c, kind, causal] = GetParam();
  check_sweep<float>(c.shape, kind, causal);
  EXPECT_TRUE(AllRanksPassed());
}

INSTANTIATE_TEST_SUITE_P(Sweep, MpiRingFloat,
                         ::testing::Combine(::testing::ValuesIn(float_cases()),
                                            ::testing::Values(Layout::Contiguous, Layout::Striped,
                                                              Layout::Zigzag),
                                            ::testing::Bool()),
                         sweep_name);

// Large logits (x100) stress the max-subtraction of every merge across ranks.
TEST(MpiRing, LargeLogitsMatchOracle) {
  const int n = world_size();
  const int rank = world_rank();
  const ShapeCase sc{1, 29, 29, 4, 2, 8};
  const std::uint64_t seed = shared_seed();
  SCOPED_TRACE(seed_message(seed));
  std::mt19937_64 rng(seed);
  const Inputs<double> in = random_inputs<double>(sc, rng, 100.0);
  for (bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "causal" : "full");
    const MpiRingOptions mo = mpi_options(sc, Layout::Striped, causal);
    const SequenceLayout lay(Layout::Striped, sc.seq_q, n);
    ForwardResult<double> got;
    const Outcome f = run_catching([&] {
      got = ringattn::ref::mpi::ring_forward(
          MPI_COMM_WORLD, ringattn::ref::shard_rows(in.q, lay, rank),
          ringattn::ref::shard_rows(in.k, lay, rank), ringattn::ref::shard_rows(in.v, lay, rank),
          mo);
    });
    EXPECT_EQ(f.kind, Outcome::Returned) << f.message;
    if (f.kind != Outcome::Returned) continue;
    const OracleForward want = oracle_forward(in.q, in.k, in.v, causal);
    const double logit = max_abs_logit(in.q, in.k, 1.0 / std::sqrt(8.0));
    const Tolerance to = tolerance_for<double>(max_abs(want.out), logit);
    const Tolerance tl = tolerance_for<double>(1.0, logit);
    EXPECT_TRUE(AllClose(got.out, ringattn::ref::shard_rows(want.out, lay, rank), to.atol, to.rtol));
    EXPECT_TRUE(AllClose(got.lse, ringattn::ref::shard_lse(want.lse, lay, rank), tl.atol, tl.rtol));
  }
  EXPECT_TRUE(AllRanksPassed());
}

// ---- a layout that cannot split the sequence over this many ranks -----------------------------

TEST(MpiRingInvalid, ZigzagShorterThanTwoChunksPerRankThrowsOnEveryRank) {
  // S = 2N - 1: contiguous and striped can split it (S >= N), zigzag cannot (S < 2N).
  const int n = world_size();
  const int rank = world_rank();
  const std::int64_t s = 2 * n - 1;
  const ShapeCase sc{1, s, s, 2, 1, 4};
  const std::uint64_t seed = shared_seed();
  SCOPED_TRACE(seed_message(seed));
  std::mt19937_64 rng(seed);
  const Inputs<double> in = random_inputs<double>(sc, rng);
  // Shards as contiguous would cut them: each rank holds something plausible.
  const SequenceLayout cl(Layout::Contiguous, s, n);
  const Tensor<double> q = ringattn::ref::shard_rows(in.q, cl, rank);
  const Tensor<double> k = ringattn::ref::shard_rows(in.k, cl, rank);
  const Tensor<double> v = ringattn::ref::shard_rows(in.v, cl, rank);
  const MpiRingOptions zig = mpi_options(sc, Layout::Zigzag, true);
  {
    SCOPED_TRACE("forward");
    EXPECT_TRUE(IsError(run_catching([&] {
      (void)ringattn::ref::mpi::ring_forward(MPI_COMM_WORLD, q, k, v, zig);
    }), {"zigzag"}));
  }
  {
    SCOPED_TRACE("backward");
    const Tensor<double> o(q.shape(), 0.5), lse({1, 2, q.dim(1)}, 0.0);
    EXPECT_TRUE(IsError(run_catching([&] {
      (void)ringattn::ref::mpi::ring_backward(MPI_COMM_WORLD, q, k, v, o, lse, q, zig);
    }), {"zigzag"}));
  }
  // And the communicator is still usable: the same shards with the contiguous layout work.
  {
    SCOPED_TRACE("contiguous after the refusal");
    const MpiRingOptions con = mpi_options(sc, Layout::Contiguous, true);
    ForwardResult<double> got;
    const Outcome f = run_catching(
        [&] { got = ringattn::ref::mpi::ring_forward(MPI_COMM_WORLD, q, k, v, con); });
    EXPECT_EQ(f.kind, Outcome::Returned) << f.message;
    if (f.kind == Outcome::Returned) {
      const OracleForward want = oracle_forward(in.q, in.k, in.v, true);
      EXPECT_TRUE(AllClose(got.out, ringattn::ref::shard_rows(want.out, cl, rank), 1e-12, 1e-12));
    }
  }
  EXPECT_TRUE(AllRanksPassed());
}

// ---- configuration disagreement: every rank throws, saying the ranks disagree -----------------

// A small valid case every disagreement test starts from.
struct Base {
  ShapeCase sc{1, 12, 12, 4, 2, 8};
  Inputs<double> in;
  SequenceLayout lay;
  Tensor<double> q, k, v, o, lse, dout;
  Base() : lay(Layout::Contiguous, 12, world_size()) {
    std::mt19937_64 rng(shared_seed());
    in = random_inputs<double>(sc, rng);
    const int rank = world_rank();
    q = ringattn::ref::shard_rows(in.q, lay, rank);
    k = ringattn::ref::shard_rows(in.k, lay, rank);
    v = ringattn::ref::shard_rows(in.v, lay, rank);
    dout = ringattn::ref::shard_rows(in.dout, lay, rank);
    o = Tensor<double>(q.shape(), 0.25);
    lse = Tensor<double>({sc.batch, sc.heads_q, q.dim(1)}, 1.0);
  }
  [[nodiscard]] MpiRingOptions options() const { return mpi_options(sc, Layout::Contiguous, false); }
};

/// The rank that misbehaves in the disagreement tests: the last one (rank 1 with two ranks).
int odd_rank() { return world_size() - 1; }

/// Every rank threw a one-line ringattn::Error mentioning @p parts; all ranks' messages are
/// gathered so rank 0's log shows them.
void expect_error_on_every_rank(const Outcome& o, const std::vector<std::string>& parts) {
  EXPECT_TRUE(IsError(o, parts));
  const std::vector<std::string> msgs = all_messages(o.message);
  if (world_rank() == 0) {
    for (std::size_t r = 0; r < msgs.size(); ++r) {
      std::cout << "  rank " << r << ": " << (msgs[r].empty() ? "(no error)" : msgs[r]) << "\n";
    }
  }
}

#define REQUIRE_TWO_RANKS()                                                                  \
  if (world_size() < 2) GTEST_SKIP() << "needs at least 2 ranks to disagree (run with -np 2+)"

TEST(MpiRingDisagree, CausalOnOneRankThrowsOnEveryRank) {
  REQUIRE_TWO_RANKS();
  const Base b;
  MpiRingOptions mo = b.options();
  if (world_rank() == odd_rank()) mo.causal = true;
  {
    SCOPED_TRACE("forward");
    expect_error_on_every_rank(run_catching([&] {
      (void)ringattn::ref::mpi::ring_forward(MPI_COMM_WORLD, b.q, b.k, b.v, mo);
    }), {"disagree", "causal"});
  }
  {
    SCOPED_TRACE("backward");
    expect_error_on_every_rank(run_catching([&] {
      (void)ringattn::ref::mpi::ring_backward(MPI_COMM_WORLD, b.q, b.k, b.v, b.o, b.lse, b.dout, mo);
    }), {"disagree", "causal"});
  }
  EXPECT_TRUE(AllRanksPassed());
}

TEST(MpiRingDisagree, QueryHeadsOnOneRankThrowsOnEveryRank) {
  REQUIRE_TWO_RANKS();
  const Base b;
  // The odd rank's Q has twice the heads: still a valid GQA shape locally (8 = 4 x 2).
  Tensor<double> q = b.q;
  if (world_rank() == odd_rank()) {
    q = Tensor<double>({b.q.dim(0), b.q.dim(1), 2 * b.q.dim(2), b.q.dim(3)}, 0.5);
  }
  expect_error_on_every_rank(run_catching([&] {
    (void)ringattn::ref::mpi::ring_forward(MPI_COMM_WORLD, q, b.k, b.v, b.options());
  }), {"disagree"});
  EXPECT_TRUE(AllRanksPassed());
}

TEST(MpiRingDisagree, DtypeOnOneRankThrowsOnEveryRank) {
  REQUIRE_TWO_RANKS();
  const Base b;
  const MpiRingOptions mo = b.options();
  const Outcome o = run_catching([&] {
    if (world_rank() == odd_rank()) {
      (void)ringattn::ref::mpi::ring_forward(MPI_COMM_WORLD, convert<float>(b.q),
                                             convert<float>(b.k), convert<float>(b.v), mo);
    } else {
      (void)ringattn::ref::mpi::ring_forward(MPI_COMM_WORLD, b.q, b.k, b.v, mo);
    }
  });
  expect_error_on_every_rank(o, {"disagree"});
  EXPECT_TRUE(AllRanksPassed());
}

TEST(MpiRingDisagree, ScaleLayoutOrLengthOnOneRankThrowsOnEveryRank) {
  REQUIRE_TWO_RANKS();
  const Base b;
  struct Variant {
    const char* name;
    std::function<void(MpiRingOptions&)> change;
  };
  const std::vector<Variant> variants = {
      {"scale", [](MpiRingOptions& o) { o.scale = 0.5; }},
      {"layout", [](MpiRingOptions& o) { o.layout = Layout::Striped; }},
      {"seq_kv", [](MpiRingOptions& o) { o.seq_kv += 1; }},
  };
  for (const Variant& var : variants) {
    SCOPED_TRACE(var.name);
    MpiRingOptions mo = b.options();
    if (world_rank() == odd_rank()) var.change(mo);
    expect_error_on_every_rank(run_catching([&] {
      (void)ringattn::ref::mpi::ring_forward(MPI_COMM_WORLD, b.q, b.k, b.v, mo);
    }), {});
  }
  EXPECT_TRUE(AllRanksPassed());
}

TEST(MpiRingDisagree, WrongShardLengthOnOneRankThrowsOnEveryRank) {
  // With one rank there is nobody to disagree with, but a shard that is not the whole sequence
  // must still be refused.
  const Base b;
  const int rank = world_rank();
  const bool odd = rank == odd_rank();
  {
    SCOPED_TRACE("Q shard one row short on the last rank");
    const Tensor<double> q =
        odd ? Tensor<double>({1, b.q.dim(1) - 1, b.q.dim(2), b.q.dim(3)}, 0.5) : b.q;
    expect_error_on_every_rank(run_catching([&] {
      (void)ringattn::ref::mpi::ring_forward(MPI_COMM_WORLD, q, b.k, b.v, b.options());
    }), {});
  }
  {
    SCOPED_TRACE("K/V shard one row long on the last rank");
    const Tensor<double> k = odd ? Tensor<double>({1, b.k.dim(1) + 1, b.k.dim(2), b.k.dim(3)}, 0.5) : b.k;
    const Tensor<double> v = odd ? Tensor<double>({1, b.v.dim(1) + 1, b.v.dim(2), b.v.dim(3)}, 0.5) : b.v;
    expect_error_on_every_rank(run_catching([&] {
      (void)ringattn::ref::mpi::ring_forward(MPI_COMM_WORLD, b.q, k, v, b.options());
    }), {});
  }
  {
    SCOPED_TRACE("backward: dO shard one row short on the last rank");
    const Tensor<double> d = odd ? Tensor<double>({1, b.q.dim(1) + 1, b.q.dim(2), b.q.dim(3)}, 0.5) : b.dout;
    expect_error_on_every_rank(run_catching([&] {
      (void)ringattn::ref::mpi::ring_backward(MPI_COMM_WORLD, b.q, b.k, b.v, b.o, b.lse, d,
                                              b.options());
    }), {});
  }
  // After all those refusals the ring still works and gives the right answer.
  {
    SCOPED_TRACE("a valid call after the refusals");
    ForwardResult<double> got;
    const Outcome f = run_catching(
        [&] { got = ringattn::ref::mpi::ring_forward(MPI_COMM_WORLD, b.q, b.k, b.v, b.options()); });
    EXPECT_EQ(f.kind, Outcome::Returned) << f.message;
    if (f.kind == Outcome::Returned) {
      const OracleForward want = oracle_forward(b.in.q, b.in.k, b.in.v, false);
      EXPECT_TRUE(AllClose(got.out, ringattn::ref::shard_rows(want.out, b.lay, rank), 1e-12, 1e-12));
    }
  }
  EXPECT_TRUE(AllRanksPassed());
}

// ---- check_agreement on its own ----------------------------------------------------------------

TEST(MpiCheckAgreement, SameStringsPassOnEveryRank) {
  const Outcome o = run_catching([] {
    ringattn::ref::mpi::check_agreement(MPI_COMM_WORLD, "dtype=float64 causal=1 S=37", kTimeoutS);
  });
  EXPECT_EQ(o.kind, Outcome::Returned) << o.message;
  EXPECT_TRUE(AllRanksPassed());
}

TEST(MpiCheckAgreement, OneDifferentTokenNamesRankAndToken) {
  REQUIRE_TWO_RANKS();
  const int bad = odd_rank();
  const std::string mine = world_rank() == bad ? "a=1 b=5 c=3" : "a=1 b=2 c=3";
  expect_error_on_every_rank(run_catching([&] {
    ringattn::ref::mpi::check_agreement(MPI_COMM_WORLD, mine, kTimeoutS);
  }), {"disagree", "rank " + std::to_string(bad), "b=5", "b=2"});
  EXPECT_TRUE(AllRanksPassed());
}

TEST(MpiCheckAgreement, ExtraOrMissingTokenThrowsOnEveryRank) {
  REQUIRE_TWO_RANKS();
  const bool odd = world_rank() == odd_rank();
  const std::string bad = "rank " + std::to_string(odd_rank());
  {
    SCOPED_TRACE("extra token on the last rank");
    const std::string mine = odd ? "a=1 b=2 c=3" : "a=1 b=2";
    const Outcome o = run_catching(
        [&] { ringattn::ref::mpi::check_agreement(MPI_COMM_WORLD, mine, kTimeoutS); });
    expect_error_on_every_rank(o, {"disagree", bad, "c=3"});
    // b=2 is on both ranks: the message must not say rank 0 has it where the ranks differ.
    EXPECT_TRUE(o.message.find("rank 0 has b=2") == std::string::npos)
        << "the message names b=2, which both ranks have, instead of saying rank 0 has nothing "
           "there: "
        << o.message;
  }
  {
    SCOPED_TRACE("missing token on the last rank");
    const std::string mine = odd ? "a=1" : "a=1 b=2";
    const Outcome o = run_catching(
        [&] { ringattn::ref::mpi::check_agreement(MPI_COMM_WORLD, mine, kTimeoutS); });
    expect_error_on_every_rank(o, {"disagree", bad, "b=2"});
    EXPECT_TRUE(o.message.find(bad + " has a=1") == std::string::npos)
        << "the message names a=1, which both ranks have, instead of saying " << bad
        << " has nothing there: " << o.message;
  }
  EXPECT_TRUE(AllRanksPassed());
}

TEST(MpiCheckAgreement, LongStringsDifferingAtTheEndThrow) {
  REQUIRE_TWO_RANKS();
  // 20 000 characters of agreement, then one token that differs: no fixed-size buffer or
  // truncated comparison may hide it.
  std::string common;
  for (int i = 0; i < 2000; ++i) common += "key" + std::to_string(i) + "=v ";
  const bool odd = world_rank() == odd_rank();
  const std::string mine = common + (odd ? "last=2" : "last=1");
  expect_error_on_every_rank(run_catching([&] {
    ringattn::ref::mpi::check_agreement(MPI_COMM_WORLD, mine, kTimeoutS);
  }), {"disagree", "last="});
  // And the same long strings agree when they are equal.
  const Outcome same = run_catching([&] {
    ringattn::ref::mpi::check_agreement(MPI_COMM_WORLD, common + "last=1", kTimeoutS);
  });
  EXPECT_EQ(same.kind, Outcome::Returned) << same.message;
  EXPECT_TRUE(AllRanksPassed());
}

TEST(MpiCheckAgreement, EveryRankDifferentNamesTheFirstOne) {
  if (world_size() < 3) GTEST_SKIP() << "needs at least 3 ranks";
  const int rank = world_rank();
  // Rank 0 says x=0; ranks 1.. say x=<rank>: the message names some rank that differs from 0.
  const std::string mine = "x=" + std::to_string(rank);
  const Outcome o = run_catching(
      [&] { ringattn::ref::mpi::check_agreement(MPI_COMM_WORLD, mine, kTimeoutS); });
  expect_error_on_every_rank(o, {"disagree", "x=0"});
  // Every rank reports the same error (the header promises "the same ringattn::Error").
  const std::vector<std::string> msgs = all_messages(o.message);
  for (std::size_t r = 1; r < msgs.size(); ++r) {
    EXPECT_EQ(msgs[r], msgs[0]) << "rank " << r << " and rank 0 report different errors";
  }
  EXPECT_TRUE(AllRanksPassed());
}

// ---- wait_all: the deadline every wait of the ring goes through -------------------------------

TEST(MpiWaitAll, CompletesWhenTheMessagesArrive) {
  const int n = world_size();
  const int rank = world_rank();
  const int next = (rank + 1) % n, prev = (rank + n - 1) % n;
  double in = -1.0;
  double out = 100.0 + rank;
  MPI_Request reqs[2];
  MPI_Irecv(&in, 1, MPI_DOUBLE, prev, 4242, MPI_COMM_WORLD, &reqs[0]);
  MPI_Isend(&out, 1, MPI_DOUBLE, next, 4242, MPI_COMM_WORLD, &reqs[1]);
  const Outcome o =
      run_catching([&] { ringattn::ref::mpi::wait_all(2, reqs, kTimeoutS, "test value", prev); });
  EXPECT_EQ(o.kind, Outcome::Returned) << o.message;
  if (o.kind == Outcome::Returned) {
    EXPECT_EQ(in, 100.0 + prev);
  }
  EXPECT_TRUE(AllRanksPassed());
}

TEST(MpiWaitAll, AMessageThatNeverComesThrowsNamingPeerAfterTheDeadline) {
  const int n = world_size();
  const int rank = world_rank();
  const int prev = (rank + n - 1) % n;
  double in = 0.0;
  MPI_Request req;
  // Nobody sends with this tag: the wait must give up after 0.3 s.
  MPI_Irecv(&in, 1, MPI_DOUBLE, prev, 4343, MPI_COMM_WORLD, &req);
  const double t0 = MPI_Wtime();
  const Outcome o = run_catching(
      [&] { ringattn::ref::mpi::wait_all(1, &req, 0.3, "imaginary block", prev); });
  const double waited = MPI_Wtime() - t0;
  EXPECT_TRUE(IsError(o, {"imaginary block", "rank " + std::to_string(prev)}));
  EXPECT_GE(waited, 0.3) << "gave up before the deadline";
  EXPECT_LT(waited, 5.0) << "took far longer than the 0.3 s deadline";
  // Leave no pending receive behind for later tests.
  MPI_Cancel(&req);
  MPI_Wait(&req, MPI_STATUS_IGNORE);
  EXPECT_TRUE(AllRanksPassed());
}

// ---- non-root ranks print only their failures, prefixed with the rank ----------------------

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestStart(const ::testing::TestInfo& info) override {
    // Remembered here: UnitTest::current_test_info() may not be called from OnTestPartResult
    // (GoogleTest holds its lock there).
    test_ = std::string(info.test_suite_name()) + "." + info.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    const std::string msg = r.message();
    if (msg.find(kCollectiveTag) != std::string::npos) return;  // rank 0 prints the verdict once
    std::ostringstream os;
    os << "[rank " << rank_ << "] " << test_ << ": " << (r.file_name() ? r.file_name() : "?") << ":"
       << r.line_number() << ": failure\n";
    std::istringstream lines(msg);
    for (std::string line; std::getline(lines, line);) os << "[rank " << rank_ << "]   " << line << "\n";
    std::cout << os.str() << std::flush;
  }

 private:
  int rank_;
  std::string test_ = "(no test)";
};

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  ::testing::InitGoogleTest(&argc, argv);
  if (rank != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(rank));
  } else {
    std::cout << "mpi_ring_test: " << world_size() << " rank(s); thread support "
              << (provided >= MPI_THREAD_FUNNELED ? "funneled" : "single") << "\n";
  }
  int rc = RUN_ALL_TESTS();
  // One exit status for the whole job: failed if any rank failed.
  int job_rc = 0;
  MPI_Allreduce(&rc, &job_rc, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return job_rc;
}
