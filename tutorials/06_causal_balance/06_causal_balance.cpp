// Tutorial 06: the causal mask per rank and ring step, and the load balance of the layouts.
//
// The series (tutorials/NN_topic, each a self-checking executable):
//   01 softmax            naive softmax, why it overflows, the stable form
//   02 softmax_chunks     softmax over chunks, correcting each with its sum of exponentials
//   03 lse_merge          merging partial results in log space
//   04 online_softmax     the running max m, sum l and output O: blockwise (flash) attention
//   05 ring_attention     N virtual ranks, the K/V block each holds at each step, merged = naive
//   06 causal_balance     the causal mask per rank and step: contiguous, striped, zigzag
//   07 ring_backward      the backward around the ring: dQ stays, dK/dV travel home
//   08 flash_decoding     splitting a long K/V cache for one query token
//   09 mpi_ring           the ring over MPI (mpirun) and what overlap buys
//   10 cuda_vs_reference  a CUDA kernel against the CPU reference (needs a GPU)
//   11 simulator          1M tokens on 8 NVLink GPUs vs 32 over InfiniBand; choosing the block size
//   12 ring_streams       the CUDA ring as stream operations and events; why each wait is needed
//
// What this one shows: with a causal mask a query sees only keys at earlier (or equal) global
// positions, so how the sequence is dealt to the ranks decides how much work each rank has at
// each step. For N = 4 ranks and S = 16 tokens it draws, for the contiguous, striped and zigzag
// layouts, the mask of every (rank, step) pair, counts the visible (query, key) pairs by brute
// force and checks them against core's RingSchedule (visible counts and mask classes). From the
// counts it derives each rank's work, the busiest rank against the mean, and the critical path
// (each step lasts as long as its slowest rank), at S = 16 and S = 1024. Finally the causal ring
// of each layout (ref::ring_forward) equals naive causal attention, also with uneven shards.
//
// What it leaves out: how the partial results are merged (05), the backward (07), time: a
// pair's cost in a real kernel, where striped's tiles all straddle the diagonal and are computed
// in full and half masked (docs/ring-schedule.md, "Causal load balance"), and transfers (11).
//
// Run:   build/bin/tutorial_06_causal_balance [--step]   (--step pauses for Enter between stages)
// Needs: nothing beyond the build (CPU only; uses the CPU reference library).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "ringattn/core/layout.hpp"
#include "ringattn/core/schedule.hpp"
#include "ringattn/core/tensor.hpp"
#include "ringattn/reference/attention.hpp"
#include "ringattn/reference/ring.hpp"
#include "tutorial.hpp"

namespace {

using ringattn::Layout;
using ringattn::MaskClass;
using ringattn::RingSchedule;
using ringattn::SequenceLayout;
using ringattn::Tensor;
using ringattn::tutorial::format;
using Counts = std::vector<std::vector<std::int64_t>>;  // [step][rank]

constexpr int N = 4;
constexpr double kTol = 1e-12;
const Layout kLayouts[] = {Layout::Contiguous, Layout::Striped, Layout::Zigzag};

using ringattn::tutorial::Rng;

Tensor<double> random_tokens(Rng& rng, std::int64_t s, std::int64_t d) {
  Tensor<double> t({1, s, 1, d});
  for (double& x : t.values()) x = rng.normal();
  return t;
}

RingSchedule causal_schedule(Layout kind, std::int64_t s) {
  return RingSchedule(SequenceLayout(kind, s, N), SequenceLayout(kind, s, N), true, 0);
}

// Visible (query, key) pairs of every (step, rank), counted one pair at a time from the global
// positions of the rank's queries and of the block it holds: key j visible iff pos(j) <= pos(i).
Counts brute_force(const SequenceLayout& layout) {
  Counts c(N, std::vector<std::int64_t>(N, 0));
  for (int s = 0; s < N; ++s) {
    for (int r = 0; r < N; ++r) {
      const auto qpos = layout.positions(r), kpos = layout.positions(RingSchedule::kv_owner(r, s, N));
      for (std::int64_t qp : qpos)
        for (std::int64_t kp : kpos) c[static_cast<std::size_t>(s)][static_cast<std::size_t>(r)] += kp <= qp;
    }
  }
  return c;
}

Counts from_schedule(const RingSchedule& schedule) {
  Counts c(N, std::vector<std::int64_t>(N, 0));
  for (int s = 0; s < N; ++s)
    for (int r = 0; r < N; ++r) c[static_cast<std::size_t>(s)][static_cast<std::size_t>(r)] = schedule.work(s, r).visible;
  return c;
}

// The numbers of the balance table.
struct Balance {
  std::vector<std::int64_t> per_rank;  // visible pairs summed over the steps
  std::int64_t total = 0, busiest = 0, critical = 0;
  double mean = 0;
};

Balance balance(const Counts& c) {
  Balance b;
  b.per_rank.assign(N, 0);
  for (int s = 0; s < N; ++s) {
    std::int64_t slowest = 0;
    for (int r = 0; r < N; ++r) {
      const std::int64_t v = c[static_cast<std::size_t>(s)][static_cast<std::size_t>(r)];
      b.per_rank[static_cast<std::size_t>(r)] += v;
      slowest = std::max(slowest, v);
    }
    b.critical += slowest;  // a step ends when its slowest rank is done
  }
  for (std::int64_t v : b.per_rank) b.total += v;
  b.busiest = *std::max_element(b.per_rank.begin(), b.per_rank.end());
  b.mean = static_cast<double>(b.total) / N;
  return b;
}

const char* short_class(MaskClass m) {
  switch (m) {
    case MaskClass::Full: return "full";
    case MaskClass::CausalDiagonal: return "diag";
    case MaskClass::OffsetCausal: return "part";
    case MaskClass::Skip: return "skip";
  }
  return "?";
}

// The mask class of a (rank, step): a word for a single segment pair, otherwise one letter per
// pair (zigzag: 2 query segments x 2 key segments), in RingSchedule's order.
std::string step_class(const ringattn::StepWork& w) {
  if (w.pairs.size() == 1) return short_class(w.pairs.front().mask);
  std::string c;
  for (const auto& p : w.pairs) c += short_class(p.mask)[0];
  return c;
}

// Prints a line without its trailing spaces.
void print_line(std::string line) {
  line.erase(line.find_last_not_of(' ') + 1);
  std::printf("%s\n", line.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  return ringattn::tutorial::run([&] {
    ringattn::tutorial::Tutorial t(argc, argv, "06_causal_balance",
                                   "Causal ring attention: the mask per rank and step, and load balance");
    namespace ref = ringattn::ref;
    constexpr std::int64_t S = 16, L = S / N;

    // ---------------------------------------------------------------------------------------
    t.stage("Three ways to deal 16 tokens to 4 ranks");
    t.say("contiguous: rank r holds tokens [rL, rL+L); striped: r, r+N, r+2N, ...;");
    t.say("zigzag: cut into 2N chunks, rank r holds chunk r and chunk 2N-1-r (a front, a back).");
    std::printf("\n  token       ");
    for (std::int64_t p = 0; p < S; ++p) std::printf("%3lld", static_cast<long long>(p));
    std::printf("\n");
    bool rule_ok = true;
    for (Layout kind : kLayouts) {
      const SequenceLayout layout(kind, S, N);
      std::printf("  %-11s ", std::string(ringattn::to_string(kind)).c_str());
      for (std::int64_t p = 0; p < S; ++p) {
        const ringattn::LocalIndex at = layout.locate(p);
        std::printf("%3d", at.rank);
        const std::int64_t chunk = p / (S / (2 * N));  // zigzag's chunks of S/2N tokens
        const std::int64_t want = kind == Layout::Contiguous ? p / L
                                  : kind == Layout::Striped  ? p % N
                                                             : (chunk < N ? chunk : 2 * N - 1 - chunk);
        rule_ok = rule_ok && at.rank == want && layout.position(at.rank, at.index) == p;
      }
      std::printf("\n");
    }
    std::printf("\n");
    t.check(rule_ok, "SequenceLayout::locate follows each layout's rule, and position() inverts it");

    // ---------------------------------------------------------------------------------------
    t.stage("The mask of every rank at every step");
    t.say("Rank r holds block (r - s) mod N at step s (05). In each small grid, rows are the rank's");
    t.say("queries (global position at left), columns the held block's keys; '#' = the query sees");
    t.say("the key (key position <= query position), '.' = masked. b3 = the block of rank 3; then");
    t.say("the visible count and RingSchedule's mask class (full, diag = causal-diagonal,");
    t.say("part = offset-causal, skip = not computed); total = the rank's pairs over all steps.");
    bool counts_ok[3] = {true, true, true}, classes_ok = true;
    int li = 0;
    for (Layout kind : kLayouts) {
      const RingSchedule schedule = causal_schedule(kind, S);
      const SequenceLayout& layout = schedule.q_layout();
      std::printf("\n  %-14s  step 0           step 1           step 2           step 3        total\n",
                  std::string(ringattn::to_string(kind)).c_str());
      for (int r = 0; r < N; ++r) {
        const auto qpos = layout.positions(r);
        std::vector<ringattn::StepWork> w;
        std::vector<std::int64_t> drawn(N, 0);
        std::int64_t total = 0;
        for (int s = 0; s < N; ++s) w.push_back(schedule.work(s, r));
        for (std::size_t i = 0; i < qpos.size(); ++i) {
          std::string line = format("  %-6s  q%3lld ", i == 0 ? format("rank %d", r).c_str() : "",
                                    static_cast<long long>(qpos[i]));
          for (int s = 0; s < N; ++s) {
            const auto& ws = w[static_cast<std::size_t>(s)];
            const auto kpos = layout.positions(ws.kv_owner);
            std::string cells;
            for (std::int64_t kp : kpos) {
              const bool visible = kp <= qpos[i];
              cells += visible ? '#' : '.';
              drawn[static_cast<std::size_t>(s)] += visible;
            }
            line += i == 0 ? format("  b%d %s %2lld %-4s", ws.kv_owner, cells.c_str(),
                                    static_cast<long long>(ws.visible), step_class(ws).c_str())
                           : format("     %s %7s", cells.c_str(), "");
          }
          if (i == 0) {
            for (const auto& ws : w) total += ws.visible;
            line += format("   %4lld", static_cast<long long>(total));
          }
          print_line(line);
        }
        for (int s = 0; s < N; ++s) {
          const auto& ws = w[static_cast<std::size_t>(s)];
          const std::int64_t d = drawn[static_cast<std::size_t>(s)];
          counts_ok[li] = counts_ok[li] && ws.visible == d;
          // A class must agree with the picture: skip = no '#', full = all '#', diag = the block
          // is the rank's own (same positions), part = anything else in between.
          for (const auto& p : ws.pairs) {
            const std::int64_t all = p.q_rows * p.k_rows;
            const std::int64_t vis = [&] {
              std::int64_t n = 0;
              for (std::int64_t a = 0; a < p.q_rows; ++a)
                for (std::int64_t b = 0; b < p.k_rows; ++b) n += p.k.at(b) <= p.q.at(a);
              return n;
            }();
            const MaskClass want = vis == 0     ? MaskClass::Skip
                                   : vis == all ? MaskClass::Full
                                   : (p.q == p.k && p.q_rows == p.k_rows) ? MaskClass::CausalDiagonal
                                                                          : MaskClass::OffsetCausal;
            classes_ok = classes_ok && p.mask == want && p.visible == vis;
          }
        }
      }
      ++li;
    }
    std::printf("\n");
    for (int i = 0; i < 3; ++i)
      t.check(counts_ok[i], format("%s: RingSchedule's visible count = the '#' drawn, every (rank, step)",
                                   std::string(ringattn::to_string(kLayouts[i])).c_str()));
    t.check(classes_ok, "every segment pair's mask class and count agree with a pair-by-pair count");
    t.say("Zigzag ranks hold 2 chunks, so 4 segment pairs a step: one letter each (dsfd = diag,");
    t.say("skip, full, diag). Contiguous: rank 0 idles after step 0 while rank 3 computes full");
    t.say("blocks; striped and zigzag give every rank about half a block at every step.");

    // ---------------------------------------------------------------------------------------
    t.stage("Work per rank, the busiest rank, and the critical path");
    t.say("busiest/mean: how much longer the busiest rank works than a perfect split would take.");
    t.say("critical path: sum over steps of the slowest rank (every rank waits for the next block),");
    t.say("also as a share of N full blocks; ideal = total / N. Counts are visible (q, k) pairs.");
    Balance b16[3], b1k[3];
    bool brute_ok = true;
    for (std::int64_t seq : {S, std::int64_t{1024}}) {
      const std::int64_t l = seq / N;
      std::printf("\n  %-18s %8s %8s %8s %8s  %7s %6s  %8s %6s  %7s\n",
                  format("S = %lld (L = %lld)", static_cast<long long>(seq), static_cast<long long>(l)).c_str(),
                  "rank 0", "rank 1", "rank 2", "rank 3", "busiest", "/mean", "critical", "/ideal", "of full");
      for (int i = 0; i < 3; ++i) {
        const RingSchedule schedule = causal_schedule(kLayouts[i], seq);
        const Counts c = from_schedule(schedule);
        brute_ok = brute_ok && c == brute_force(schedule.q_layout());
        const Balance b = balance(c);
        (seq == S ? b16 : b1k)[i] = b;
        std::printf("  %-18s", std::string(ringattn::to_string(kLayouts[i])).c_str());
        for (std::int64_t v : b.per_rank) std::printf(" %8lld", static_cast<long long>(v));
        std::printf("  %7lld %6.3f  %8lld %6.3f  %6.1f%%\n", static_cast<long long>(b.busiest),
                    static_cast<double>(b.busiest) / b.mean, static_cast<long long>(b.critical),
                    static_cast<double>(b.critical) / b.mean,
                    100.0 * static_cast<double>(b.critical) / static_cast<double>(N * l * l));
      }
    }
    std::printf("\n");
    t.check(brute_ok, "at S = 1024 too, every (rank, step) count equals the brute-force count");
    bool totals_ok = true;
    for (int i = 0; i < 3; ++i)
      totals_ok = totals_ok && b16[i].total == S * (S + 1) / 2 && b1k[i].total == 1024 * 1025 / 2;
    t.check(totals_ok, "every layout does the same total work, S(S+1)/2 pairs: 136 and 524800");

    const auto ratio = [](const Balance& b, std::int64_t v) { return static_cast<double>(v) / b.mean; };
    t.check(ratio(b16[0], b16[0].busiest) >= 1.5 && ratio(b1k[0], b1k[0].busiest) >= 1.5,
            "contiguous is unbalanced: busiest rank >= 1.5x the mean",
            format("%.3f (S=16), %.3f (S=1024)", ratio(b16[0], b16[0].busiest), ratio(b1k[0], b1k[0].busiest)));
    t.check(b16[2].busiest * N == b16[2].total && b1k[2].busiest * N == b1k[2].total &&
                b16[2].critical * N == b16[2].total && b1k[2].critical * N == b1k[2].total,
            "zigzag is exactly balanced (2N | S): busiest = critical path = total / N");
    // Striped: a block from an earlier-or-equal rank gives L(L+1)/2 pairs, from a later one
    // L(L-1)/2, so rank r does N L(L-1)/2 + (r+1) L and the last rank exceeds the mean by
    // (N-1) L / 2: the diagonal, whose share shrinks like 1/L.
    bool striped_exact = true;
    for (const auto& [b, l] : {std::pair{b16[1], L}, std::pair{b1k[1], std::int64_t{1024 / N}}})
      striped_exact = striped_exact && 2 * b.busiest * N == 2 * b.total + N * (N - 1) * l;
    t.check(striped_exact && ratio(b1k[1], b1k[1].busiest) <= 1.01,
            "striped: busiest = mean + (N-1)L/2 exactly, within 1% of the mean at S = 1024",
            format("%.4f", ratio(b1k[1], b1k[1].busiest)));
    double frac[3];
    for (int i = 0; i < 3; ++i) frac[i] = static_cast<double>(b1k[i].critical) / (N * 256.0 * 256.0);
    t.check(std::abs(frac[0] - 0.875) < 0.005 && std::abs(frac[1] - 0.5) < 0.005 && std::abs(frac[2] - 0.5) < 0.005,
            "critical path at S = 1024 within 0.005 of the docs' 87.5%, 50%, 50%",
            format("%.4f %.4f %.4f", frac[0], frac[1], frac[2]));

    // ---------------------------------------------------------------------------------------
    t.stage("Causal ring attention equals naive causal attention in every layout");
    t.say("ref::ring_forward skips the 'skip' pairs and masks the others by global position, so the");
    {
      const SequenceLayout uneven(Layout::Contiguous, 37, N);
      t.say("layout changes who computes what, never the answer.");
      t.say(format("S = 37 (D = 8) leaves uneven shards: %lld, %lld, %lld, %lld tokens.", static_cast<long long>(uneven.shard_length(0)),
                   static_cast<long long>(uneven.shard_length(1)), static_cast<long long>(uneven.shard_length(2)),
                   static_cast<long long>(uneven.shard_length(3))));
    }
    std::printf("\n  %-12s %24s %24s %18s\n", "layout", "S = 16: max |O - naive|", "S = 37: max |O - naive|",
                "max |LSE - naive|");
    Rng rng(6);
    struct Case {
      std::int64_t s, d;
      Tensor<double> q, k, v;
      ref::ForwardResult<double> naive;
    };
    std::vector<Case> cases;
    for (const auto& [s, d] : {std::pair<std::int64_t, std::int64_t>{S, 4}, {37, 8}}) {
      Case c{s, d, random_tokens(rng, s, d), random_tokens(rng, s, d), random_tokens(rng, s, d), {}};
      ref::AttentionOptions o;
      o.causal = true;
      c.naive = ref::naive_forward(c.q, c.k, c.v, o);
      cases.push_back(std::move(c));
    }
    std::vector<double> worst_all;
    for (Layout kind : kLayouts) {
      double worst[2] = {0, 0}, worst_lse = 0;
      for (std::size_t ci = 0; ci < cases.size(); ++ci) {
        const Case& c = cases[ci];
        ref::RingOptions o;
        o.causal = true;
        o.layout = kind;
        o.ranks = N;
        const auto ring = ref::ring_forward(c.q, c.k, c.v, o);
        for (std::int64_t i = 0; i < ring.out.size(); ++i)
          worst[ci] = std::max(worst[ci], std::abs(ring.out[i] - c.naive.out[i]));
        for (std::int64_t i = 0; i < ring.lse.size(); ++i)
          worst_lse = std::max(worst_lse, std::abs(ring.lse[i] - c.naive.lse[i]));
      }
      std::printf("  %-12s %24.2e %24.2e %18.2e\n", std::string(ringattn::to_string(kind)).c_str(), worst[0],
                  worst[1], worst_lse);
      worst_all.push_back(std::max({worst[0], worst[1], worst_lse}));
    }
    std::printf("\n");
    for (std::size_t i = 0; i < worst_all.size(); ++i)
      t.check(worst_all[i] <= kTol, format("%s: causal ring O and LSE equal naive (tolerance %.0e)",
                                           std::string(ringattn::to_string(kLayouts[i])).c_str(), kTol));
    return t.finish();
  });
}
