// Tutorial 05: ring attention step by step over N virtual ranks.
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
// What this one shows: S = 16 tokens split over N = 4 virtual ranks (contiguous layout, one
// head, D = 4, double). Each rank keeps its queries; the K/V blocks move one rank forward per
// step. The table of which block each rank holds comes from core's RingSchedule and is checked
// against the rule "at step s rank r holds block (r - s) mod N" and against the buffers actually
// passed around. The loop is driven here, with ref::block_forward for each (queries, held block)
// and ref::merge_into for the LSE merge (tutorial 03); one query row is printed at every step,
// and the merged result equals naive attention to ~1e-12. ref::ring_forward gives the same.
//
// What it leaves out: the causal mask and the load balance of the layouts (06), the backward
// pass (07), real devices and overlapping the transfer with compute (09, 11, docs/ring-schedule.md).
//
// Run:   build/bin/tutorial_05_ring_attention [--step]   (--step pauses for Enter between stages)
// Needs: nothing beyond the build (CPU only; uses the CPU reference library).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "ringattn/core/layout.hpp"
#include "ringattn/core/schedule.hpp"
#include "ringattn/core/tensor.hpp"
#include "ringattn/reference/attention.hpp"
#include "ringattn/reference/ring.hpp"
#include "tutorial.hpp"

namespace {

using ringattn::Tensor;
using ringattn::tutorial::format;
using Vec = std::vector<double>;

constexpr int N = 4;          // ranks
constexpr std::int64_t S = 16;  // tokens
constexpr std::int64_t D = 4;   // head dimension
constexpr double kTol = 1e-12;

using ringattn::tutorial::Rng;

// A (1, S, 1, D) tensor of standard normal numbers.
Tensor<double> random_tokens(Rng& rng) {
  Tensor<double> t({1, S, 1, D});
  for (double& x : t.values()) x = rng.normal();
  return t;
}

// Row s of a (1, S, 1, D) tensor.
Vec row(const Tensor<double>& t, std::int64_t s) {
  return Vec(t.data() + s * D, t.data() + (s + 1) * D);
}

double max_abs_diff(const Vec& a, const Vec& b) {
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

std::string vec_string(const Vec& x) {
  std::string s = "[";
  for (double v : x) s += format(" %7.4f", v);
  return s + " ]";
}

}  // namespace

int main(int argc, char** argv) {
  return ringattn::tutorial::run([&] {
    ringattn::tutorial::Tutorial t(argc, argv, "05_ring_attention",
                                   "Ring attention: N ranks, K/V blocks passed around, LSE-merged");
    namespace ref = ringattn::ref;

    Rng rng(5);
    const Tensor<double> q = random_tokens(rng), k = random_tokens(rng), v = random_tokens(rng);
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    const ringattn::AttentionShape shape{1, S, S, 1, 1, D};
    const auto schedule = ringattn::RingSchedule::for_shape(shape, ringattn::Layout::Contiguous, N, false);
    const ringattn::SequenceLayout& layout = schedule.q_layout();

    // ---------------------------------------------------------------------------------------
    t.stage("Four ranks, each with a quarter of the sequence");
    t.say(format("S = %lld tokens, D = %lld, one head, scale = 1/sqrt(D) = %.4f, not causal.",
                 static_cast<long long>(S), static_cast<long long>(D), scale));
    t.say("Rank r keeps Q, K and V of its own tokens; only its K/V block will travel.");
    for (int r = 0; r < N; ++r) {
      const auto pos = layout.positions(r);
      t.say(format("rank %d: tokens %2lld..%2lld", r, static_cast<long long>(pos.front()),
                   static_cast<long long>(pos.back())));
    }

    // ---------------------------------------------------------------------------------------
    t.stage("Which K/V block each rank holds at each step");
    t.say("After each step a rank sends its block to rank r+1 and receives one from rank r-1.");
    t.say("Entry = the rank the block started on (RingSchedule::work(step, rank).kv_owner):");
    std::printf("\n            rank 0  rank 1  rank 2  rank 3\n");
    std::vector<int> passed(N);  // the block in each rank's buffer, moved as the buffers are
    for (int r = 0; r < N; ++r) passed[static_cast<std::size_t>(r)] = r;
    bool matches_rule = true, matches_buffers = true;
    std::vector<std::vector<int>> seen(N, std::vector<int>(N, 0));  // seen[r][block]
    for (int s = 0; s < N; ++s) {
      std::printf("  step %d  ", s);
      for (int r = 0; r < N; ++r) {
        const int owner = schedule.work(s, r).kv_owner;
        std::printf("  %6d", owner);
        matches_rule = matches_rule && owner == ((r - s) % N + N) % N;
        matches_buffers = matches_buffers && owner == passed[static_cast<std::size_t>(r)];
        ++seen[static_cast<std::size_t>(r)][static_cast<std::size_t>(owner)];
      }
      std::printf("\n");
      std::vector<int> next(N);  // rank r receives what rank r-1 held
      for (int r = 0; r < N; ++r) next[static_cast<std::size_t>(r)] = passed[static_cast<std::size_t>((r + N - 1) % N)];
      passed = next;
    }
    std::printf("\n");
    t.check(matches_rule, "every entry is (r - s) mod N");
    t.check(matches_buffers, "every entry is the block that passing buffers to r+1 delivers");
    bool once = true;
    for (const auto& r : seen)
      for (int c : r) once = once && c == 1;
    t.check(once, "each rank holds each of the 4 blocks exactly once over the 4 steps");

    // ---------------------------------------------------------------------------------------
    t.stage("The loop, and one query row at every step");
    const int r_show = 1;
    const std::int64_t i_show = 2, token = layout.position(r_show, i_show);
    t.say("Each rank computes its queries against the block it holds (block_forward): a partial");
    t.say("(O_b, LSE_b), normalized over that block's keys only. It merges it into its running");
    t.say("(O, LSE) (tutorial 03): LSE' = log(e^LSE + e^LSE_b), O' = w O + w_b O_b, where");
    t.say("w = e^(LSE - LSE') and w_b = e^(LSE_b - LSE') are the two sides' shares of the mass.");
    t.say(format("Printed: rank %d, query token %lld (its local row %lld).", r_show,
                 static_cast<long long>(token), static_cast<long long>(i_show)));
    t.say("At step 0 nothing has been seen (LSE = -inf), so w = 0 and the block is taken as is.");
    t.say("Check: after each step the merged row is plain attention over the keys seen so far.");

    std::vector<Tensor<double>> q_shard, k_held, v_held, o_acc, l_acc;
    for (int r = 0; r < N; ++r) {
      q_shard.push_back(ref::shard_rows(q, layout, r));
      k_held.push_back(ref::shard_rows(k, layout, r));
      v_held.push_back(ref::shard_rows(v, layout, r));
      o_acc.emplace_back(q_shard.back().shape());  // O = 0 and LSE = -inf: nothing seen yet
      l_acc.emplace_back(std::vector<std::int64_t>{1, 1, layout.shard_length(r)}, -INFINITY);
    }
    Vec q_row = row(q, token);
    std::vector<std::int64_t> keys_seen;
    double worst_lse_b = 0, worst_seen = 0, worst_formula = 0;
    std::printf("\n  step  block  keys    max s_j       LSE   O\n");
    for (int s = 0; s < N; ++s) {
      for (int r = 0; r < N; ++r) {
        const auto ri = static_cast<std::size_t>(r);
        const ringattn::StepWork w = schedule.work(s, r);
        for (const ringattn::PairWork& p : w.pairs) {  // contiguous: one pair, mask "full"
          Tensor<double> o_b({1, p.q_rows, 1, D});
          Tensor<double> l_b({1, 1, p.q_rows});
          ref::KernelArgs args;
          args.qpos = p.q;
          args.kpos = p.k;
          args.causal = false;
          args.scale = scale;
          ref::block_forward(ringattn::seq_view(std::as_const(q_shard[ri])).rows(p.q_local, p.q_rows),
                             ringattn::seq_view(std::as_const(k_held[ri])).rows(p.k_local, p.k_rows),
                             ringattn::seq_view(std::as_const(v_held[ri])).rows(p.k_local, p.k_rows),
                             args, ringattn::seq_view(o_b), ringattn::lse_view(l_b));
          if (r != r_show) {
            ref::merge_into(o_acc[ri], l_acc[ri], o_b, l_b);
            continue;
          }
          // The printed row: its partial against this block, by hand and from block_forward.
          const std::int64_t li = i_show - p.q_local;
          double m = -INFINITY;
          Vec scores;
          for (std::int64_t j = 0; j < p.k_rows; ++j) {
            const std::int64_t key = p.k.at(j);
            keys_seen.push_back(key);
            double dot = 0;
            for (std::int64_t d = 0; d < D; ++d) dot += q_row[static_cast<std::size_t>(d)] * k[key * D + d];
            scores.push_back(scale * dot);  // s_ij = scale * q_i . k_j
            m = std::max(m, scores.back());
          }
          double sum = 0;
          for (double sc : scores) sum += std::exp(sc - m);
          const double lse_b = l_b[li];
          worst_lse_b = std::max(worst_lse_b, std::abs(lse_b - (m + std::log(sum))));
          const Vec ob = row(o_b, li), o_old = row(o_acc[ri], i_show);
          const double lse_old = l_acc[ri][i_show];
          ref::merge_into(o_acc[ri], l_acc[ri], o_b, l_b);
          const double lse_new = l_acc[ri][i_show];
          const Vec o_new = row(o_acc[ri], i_show);
          const double w_old = std::exp(lse_old - lse_new), w_b = std::exp(lse_b - lse_new);
          Vec formula(static_cast<std::size_t>(D));
          for (std::size_t d = 0; d < formula.size(); ++d) formula[d] = w_old * o_old[d] + w_b * ob[d];
          worst_formula = std::max(worst_formula, max_abs_diff(formula, o_new));
          // Attention over every key seen so far, computed from scratch.
          double m_all = -INFINITY;
          Vec sc_all;
          for (std::int64_t key : keys_seen) {
            double dot = 0;
            for (std::int64_t d = 0; d < D; ++d) dot += q_row[static_cast<std::size_t>(d)] * k[key * D + d];
            sc_all.push_back(scale * dot);
            m_all = std::max(m_all, sc_all.back());
          }
          double l_all = 0;
          for (double sc : sc_all) l_all += std::exp(sc - m_all);
          const double lse_all = m_all + std::log(l_all);
          Vec o_all(static_cast<std::size_t>(D), 0.0);
          for (std::size_t j = 0; j < keys_seen.size(); ++j)
            for (std::int64_t d = 0; d < D; ++d)
              o_all[static_cast<std::size_t>(d)] += std::exp(sc_all[j] - lse_all) * v[keys_seen[j] * D + d];
          worst_seen = std::max({worst_seen, std::abs(lse_all - lse_new), max_abs_diff(o_all, o_new)});

          std::printf("  %4d  %5d  %2lld..%-2lld  %8.4f  %7.4f   %s  block: O_b, LSE_b\n", s, w.kv_owner,
                      static_cast<long long>(p.k.at(0)), static_cast<long long>(p.k.at(p.k_rows - 1)), m,
                      lse_b, vec_string(ob).c_str());
          std::printf("  %-31s%7.4f   %s  merged\n", format("   w = %.4f, w_b = %.4f", w_old, w_b).c_str(),
                      lse_new, vec_string(o_new).c_str());
        }
      }
      if (s + 1 < N) {  // send to r+1, receive from r-1: rank r now holds what r-1 held
        std::rotate(k_held.rbegin(), k_held.rbegin() + 1, k_held.rend());
        std::rotate(v_held.rbegin(), v_held.rbegin() + 1, v_held.rend());
      }
    }
    std::printf("\n");
    t.check(worst_lse_b <= kTol, "each LSE_b = log sum_j exp(s_j) over its block's 4 keys",
            format("max |diff| %.2e (tolerance %.0e)", worst_lse_b, kTol));
    t.check(worst_formula <= kTol, "merged O' = w O + w_b O_b, w = e^(LSE - LSE')",
            format("max |diff| %.2e (tolerance %.0e)", worst_formula, kTol));
    t.check(worst_seen <= kTol, "after each step: attention over the keys seen so far",
            format("max |diff| %.2e (tolerance %.0e)", worst_seen, kTol));

    // ---------------------------------------------------------------------------------------
    t.stage("Every rank after N steps: the ring equals naive attention");
    Tensor<double> o_ring(q.shape()), lse_ring({1, 1, S});
    for (int r = 0; r < N; ++r) {
      ref::unshard_rows(o_acc[static_cast<std::size_t>(r)], layout, r, o_ring);
      ref::unshard_lse(l_acc[static_cast<std::size_t>(r)], layout, r, lse_ring);
    }
    const auto naive = ref::naive_forward(q, k, v);
    t.say("naive_forward materializes all 16 x 16 scores at once; the ring never held more than");
    t.say("one 4 x 4 block of scores per rank.");
    const std::string label = format("token %lld", static_cast<long long>(token));
    std::printf("\n  %-9s %-6s %s  LSE %.6f\n", label.c_str(), "ring", vec_string(row(o_ring, token)).c_str(),
                lse_ring[token]);
    std::printf("  %-9s %-6s %s  LSE %.6f\n\n", "", "naive", vec_string(row(naive.out, token)).c_str(),
                naive.lse[token]);
    t.check_all_close(o_ring.values(), naive.out.values(), kTol, "O of all 16 tokens equals naive O");
    t.check_all_close(lse_ring.values(), naive.lse.values(), kTol, "LSE of all 16 tokens equals naive LSE");

    // ---------------------------------------------------------------------------------------
    t.stage("ref::ring_forward runs the same loop");
    ref::RingOptions opt;
    opt.ranks = N;
    opt.layout = ringattn::Layout::Contiguous;
    const auto ring = ref::ring_forward(q, k, v, opt);
    t.check_all_close(ring.out.values(), o_ring.values(), kTol, "ring_forward's O equals the loop above");
    t.check_all_close(ring.lse.values(), naive.lse.values(), kTol, "ring_forward's LSE equals naive LSE");
    t.say("Without a mask, how tokens are dealt to ranks does not change the result:");
    double worst_layout = 0;
    for (ringattn::Layout lay : {ringattn::Layout::Striped, ringattn::Layout::Zigzag}) {
      opt.layout = lay;
      const auto other = ref::ring_forward(q, k, v, opt);
      for (std::int64_t i = 0; i < other.out.size(); ++i)
        worst_layout = std::max(worst_layout, std::abs(other.out[i] - naive.out[i]));
    }
    t.check(worst_layout <= kTol, "striped and zigzag rings give naive O too",
            format("max |diff| %.2e (tolerance %.0e)", worst_layout, kTol));
    return t.finish();
  });
}
