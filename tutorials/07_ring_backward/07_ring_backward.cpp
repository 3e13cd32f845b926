// Tutorial 07: the backward pass of ring attention over N virtual ranks.
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
// What this one shows: S = 16 tokens over N = 4 virtual ranks (contiguous, one head, D = 4,
// double, not causal), a loss L = sum(dO * O) with a fixed random dO, and its gradients computed
// around the ring. First the pre-pass D_i = rowsum(dO_i * O_i), which each rank computes from its
// own rows. Then at every step each rank calls ref::block_backward for its queries against the
// K/V block it holds: dQ accumulates at home, while the partial dK/dV of the block travel with
// it and, after one last hop, arrive back on the block's owner. The table of which dK/dV
// accumulator each rank holds, the journey of one dK row and one dQ row, and the result equal to
// ref::naive_backward (~1e-12); then ref::ring_backward, a finite-difference check of the loss
// for three entries, and the causal ring in every layout.
//
// What it leaves out: the derivation of the softmax backward (docs/algorithms.md), the forward
// ring itself (05), the causal mask's pictures and balance (06), and overlapping the dK/dV
// transfers with compute (09, 11).
//
// Run:   build/bin/tutorial_07_ring_backward [--step]   (--step pauses for Enter between stages)
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

constexpr int N = 4;            // ranks
constexpr std::int64_t S = 16;  // tokens
constexpr std::int64_t D = 4;   // head dimension
constexpr double kTol = 1e-12;

using ringattn::tutorial::Rng;

Tensor<double> random_tokens(Rng& rng) {
  Tensor<double> t({1, S, 1, D});
  for (double& x : t.values()) x = rng.normal();
  return t;
}

// Row s of a (1, S, 1, D) tensor.
Vec row(const Tensor<double>& t, std::int64_t s) { return Vec(t.data() + s * D, t.data() + (s + 1) * D); }

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
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

// The rows of a (1, S, 1, D) tensor at the given token positions, as a (1, n, 1, D) tensor.
Tensor<double> gather_rows(const Tensor<double>& t, const std::vector<std::int64_t>& pos) {
  Tensor<double> out({1, static_cast<std::int64_t>(pos.size()), 1, D});
  for (std::size_t i = 0; i < pos.size(); ++i)
    std::copy_n(t.data() + pos[i] * D, D, out.data() + static_cast<std::int64_t>(i) * D);
  return out;
}

Tensor<double> gather_lse(const Tensor<double>& lse, const std::vector<std::int64_t>& pos) {
  Tensor<double> out({1, 1, static_cast<std::int64_t>(pos.size())});
  for (std::size_t i = 0; i < pos.size(); ++i) out[static_cast<std::int64_t>(i)] = lse[pos[i]];
  return out;
}

// L = sum(dO * O): the scalar whose gradient the backward computes (dL/dO = dO).
double loss(const Tensor<double>& q, const Tensor<double>& k, const Tensor<double>& v,
            const Tensor<double>& dout) {
  const auto f = ringattn::ref::naive_forward(q, k, v);
  double l = 0;
  for (std::int64_t i = 0; i < f.out.size(); ++i) l += dout[i] * f.out[i];
  return l;
}

}  // namespace

int main(int argc, char** argv) {
  return ringattn::tutorial::run([&] {
    ringattn::tutorial::Tutorial t(argc, argv, "07_ring_backward",
                                   "The ring backward: dQ stays home, dK/dV travel with their block");
    namespace ref = ringattn::ref;

    Rng rng(7);
    const Tensor<double> q = random_tokens(rng), k = random_tokens(rng), v = random_tokens(rng);
    const Tensor<double> dout = random_tokens(rng);
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    const ringattn::AttentionShape shape{1, S, S, 1, 1, D};
    const auto schedule = ringattn::RingSchedule::for_shape(shape, ringattn::Layout::Contiguous, N, false);
    const ringattn::SequenceLayout& layout = schedule.q_layout();
    ref::RingOptions ring_opt;
    ring_opt.ranks = N;
    const auto fwd = ref::ring_forward(q, k, v, ring_opt);  // O and LSE, as the forward ring left them

    // Scores, probabilities and dP = dO V^T of the whole problem, by hand, for the checks.
    std::vector<Vec> score(S, Vec(S)), prob(S, Vec(S)), dprob(S, Vec(S));
    for (std::int64_t i = 0; i < S; ++i)
      for (std::int64_t j = 0; j < S; ++j) {
        score[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)] = scale * dot(row(q, i), row(k, j));
        dprob[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)] = dot(row(dout, i), row(v, j));
      }
    for (std::size_t i = 0; i < score.size(); ++i) {
      const double m = *std::max_element(score[i].begin(), score[i].end());
      double l = 0;
      for (double sc : score[i]) l += std::exp(sc - m);
      for (std::size_t j = 0; j < score[i].size(); ++j) prob[i][j] = std::exp(score[i][j] - m) / l;
    }

    // ---------------------------------------------------------------------------------------
    t.stage("The forward result, a loss, and the pre-pass D = rowsum(dO * O)");
    t.say("S = 16, D = 4, one head, 4 ranks (contiguous), not causal. The forward ring (05) left");
    t.say("each rank O and LSE of its own queries. Loss L = sum(dO * O) with a fixed random dO,");
    t.say("so dL/dO = dO. Backward: dS_ij = P_ij (dP_ij - D_i), dP_ij = dO_i . V_j, and");
    t.say("D_i = sum_j P_ij dP_ij needs every key, but it equals dO_i . O_i (O_i = sum_j P_ij V_j):");
    t.say("each rank computes it from its own rows, before the ring starts, with no communication.");
    std::printf("\n");
    std::vector<Tensor<double>> q_sh, do_sh, lse_sh, delta_sh, dq_acc, k_held, v_held, dk_held, dv_held;
    double worst_delta = 0;
    for (int r = 0; r < N; ++r) {
      q_sh.push_back(ref::shard_rows(q, layout, r));
      do_sh.push_back(ref::shard_rows(dout, layout, r));
      lse_sh.push_back(ref::shard_lse(fwd.lse, layout, r));
      delta_sh.push_back(ref::softmax_delta(ref::shard_rows(fwd.out, layout, r), do_sh.back()));
      dq_acc.emplace_back(q_sh.back().shape());  // dQ: zero, stays on the rank
      k_held.push_back(ref::shard_rows(k, layout, r));
      v_held.push_back(ref::shard_rows(v, layout, r));
      dk_held.emplace_back(k_held.back().shape());  // dK, dV: zero, travel with the block
      dv_held.emplace_back(k_held.back().shape());
      const auto pos = layout.positions(r);
      Vec d_row;
      for (std::size_t i = 0; i < pos.size(); ++i) {
        const double d_here = delta_sh.back()[static_cast<std::int64_t>(i)];
        d_row.push_back(d_here);
        double by_p = 0;  // sum_j P_ij dP_ij, over all 16 keys
        for (std::size_t j = 0; j < static_cast<std::size_t>(S); ++j)
          by_p += prob[static_cast<std::size_t>(pos[i])][j] * dprob[static_cast<std::size_t>(pos[i])][j];
        worst_delta = std::max(worst_delta, std::abs(d_here - by_p));
      }
      std::printf("  rank %d, tokens %2lld..%-2lld  D = %s\n", r, static_cast<long long>(pos.front()),
                  static_cast<long long>(pos.back()), vec_string(d_row).c_str());
    }
    std::printf("\n");
    t.check(worst_delta <= kTol, "every D_i = sum_j P_ij dP_ij over all 16 keys",
            format("max |diff| %.2e (tolerance %.0e)", worst_delta, kTol));

    // ---------------------------------------------------------------------------------------
    t.stage("Around the ring: which dK/dV accumulator each rank holds");
    t.say("At step s rank r holds K/V block (r - s) mod N with that block's dK/dV accumulator. It");
    t.say("adds to its own dQ (scale dS K) and to the held dK (scale dS^T Q) and dV (P^T dO), then");
    t.say("passes block and accumulator on to rank r+1. After step N-1 the K/V are dropped but the");
    t.say("accumulators take one more hop, which brings each home: dK/dV of block b end on rank b.");
    t.say("Followed below: dK of key token 1 (block 0) and dQ of query token 6 (rank 1).");
    const std::int64_t key_show = 1, token_show = 6;
    const int block_show = layout.locate(key_show).rank, rank_show = layout.locate(token_show).rank;
    const std::int64_t key_local = layout.locate(key_show).index, q_local = layout.locate(token_show).index;
    std::vector<int> label(N);  // the block whose dK/dV each rank holds
    for (int r = 0; r < N; ++r) label[static_cast<std::size_t>(r)] = r;
    std::vector<std::vector<int>> table;
    bool rule_ok = true;
    double worst_dk_seen = 0, worst_dq_seen = 0;
    std::vector<std::string> dk_lines, dq_lines;
    std::vector<int> visited;       // ranks block 0's accumulator has visited
    std::vector<std::int64_t> seen; // keys rank 1 has seen
    for (int s = 0; s < N; ++s) {
      table.push_back(label);
      int holder = -1;
      for (int r = 0; r < N; ++r) {
        const auto ri = static_cast<std::size_t>(r);
        const ringattn::StepWork w = schedule.work(s, r);
        rule_ok = rule_ok && label[ri] == w.kv_owner && w.kv_owner == ((r - s) % N + N) % N;
        if (w.kv_owner == block_show) holder = r;
        const Vec dk_before = row(dk_held[ri], key_local), dq_before = row(dq_acc[ri], q_local);
        for (const ringattn::PairWork& p : w.pairs) {
          if (p.mask == ringattn::MaskClass::Skip) continue;
          ref::KernelArgs args;
          args.qpos = p.q;
          args.kpos = p.k;
          args.causal = false;
          args.scale = scale;
          const auto qv = ringattn::seq_view(std::as_const(q_sh[ri]));
          const auto kv = ringattn::seq_view(std::as_const(k_held[ri]));
          const auto vv = ringattn::seq_view(std::as_const(v_held[ri]));
          const auto dov = ringattn::seq_view(std::as_const(do_sh[ri]));
          // dQ_i += scale dS_ij K_j, dK_j += scale dS_ij^T Q_i, dV_j += P_ij^T dO_i (flash-attention-2)
          ref::block_backward(qv.rows(p.q_local, p.q_rows), kv.rows(p.k_local, p.k_rows),
                              vv.rows(p.k_local, p.k_rows), dov.rows(p.q_local, p.q_rows),
                              ringattn::lse_view(std::as_const(lse_sh[ri])).rows(p.q_local, p.q_rows),
                              ringattn::lse_view(std::as_const(delta_sh[ri])).rows(p.q_local, p.q_rows), args,
                              ringattn::seq_view(dq_acc[ri]).rows(p.q_local, p.q_rows),
                              ringattn::seq_view(dk_held[ri]).rows(p.k_local, p.k_rows),
                              ringattn::seq_view(dv_held[ri]).rows(p.k_local, p.k_rows));
        }
        if (w.kv_owner == block_show) {
          // After this step block 0's dK holds the share of every query on the ranks it visited:
          // the gradient of the loss restricted to those queries (naive, from scratch).
          visited.push_back(r);
          std::vector<std::int64_t> qpos;
          for (int vr : visited)
            for (std::int64_t p : layout.positions(vr)) qpos.push_back(p);
          const auto part = ref::naive_backward(gather_rows(q, qpos), k, v, gather_rows(fwd.out, qpos),
                                                gather_lse(fwd.lse, qpos), gather_rows(dout, qpos));
          const Vec now = row(dk_held[ri], key_local);
          worst_dk_seen = std::max(worst_dk_seen, max_abs_diff(now, row(part.dk, key_show)));
          Vec added(now.size());
          for (std::size_t d = 0; d < now.size(); ++d) added[d] = now[d] - dk_before[d];
          dk_lines.push_back(format("  %4d  %5d  + %s = %s", s, r, vec_string(added).c_str(), vec_string(now).c_str()));
        }
        if (r == rank_show) {
          // dQ_i after this step = scale sum_{j seen} P_ij (dP_ij - D_i) K_j, by hand.
          for (std::int64_t p : layout.positions(w.kv_owner)) seen.push_back(p);
          const auto i = static_cast<std::size_t>(token_show);
          const double d_i = delta_sh[ri][q_local];
          Vec want(static_cast<std::size_t>(D), 0.0);
          for (std::int64_t j : seen) {
            const auto ju = static_cast<std::size_t>(j);
            const double ds = prob[i][ju] * (dprob[i][ju] - d_i);
            for (std::int64_t d = 0; d < D; ++d) want[static_cast<std::size_t>(d)] += scale * ds * k[j * D + d];
          }
          const Vec now = row(dq_acc[ri], q_local);
          worst_dq_seen = std::max(worst_dq_seen, max_abs_diff(now, want));
          Vec added(now.size());
          for (std::size_t d = 0; d < now.size(); ++d) added[d] = now[d] - dq_before[d];
          dq_lines.push_back(format("  %4d  %5d  + %s = %s", s, w.kv_owner, vec_string(added).c_str(),
                                    vec_string(now).c_str()));
        }
      }
      rule_ok = rule_ok && holder == s;  // block 0 sits on rank s at step s
      if (s + 1 < N) {  // K and V go on to r+1, except after the last step
        std::rotate(k_held.rbegin(), k_held.rbegin() + 1, k_held.rend());
        std::rotate(v_held.rbegin(), v_held.rbegin() + 1, v_held.rend());
      }
      // dK/dV always move: after step N-1 this is the last hop home.
      std::rotate(dk_held.rbegin(), dk_held.rbegin() + 1, dk_held.rend());
      std::rotate(dv_held.rbegin(), dv_held.rbegin() + 1, dv_held.rend());
      std::rotate(label.rbegin(), label.rbegin() + 1, label.rend());
    }
    std::printf("\n  dK/dV held      rank 0  rank 1  rank 2  rank 3\n");
    for (int s = 0; s < N; ++s) {
      std::printf("  step %d       ", s);
      for (int b : table[static_cast<std::size_t>(s)]) std::printf("  %6d", b);
      std::printf("\n");
    }
    std::printf("  after the hop");
    bool home = true;
    for (int r = 0; r < N; ++r) {
      std::printf("  %6d", label[static_cast<std::size_t>(r)]);
      home = home && label[static_cast<std::size_t>(r)] == r;
    }
    std::printf("   (home)\n\n");
    t.check(rule_ok, "at step s rank r holds the dK/dV of block (r - s) mod N, as RingSchedule says");
    t.check(home, "after the last hop every rank holds the dK/dV of its own block");

    std::printf("\n  dK of key token %lld (block %d) as it travels\n", static_cast<long long>(key_show), block_show);
    std::printf("  %4s  %5s    %-35s = %s\n", "step", "rank", "added by the rank's queries", "dK so far");
    for (const auto& l : dk_lines) std::printf("%s\n", l.c_str());
    std::printf("\n  dQ of query token %lld, at home on rank %d\n", static_cast<long long>(token_show), rank_show);
    std::printf("  %4s  %5s    %-35s = %s\n", "step", "block", "added by the block's keys", "dQ so far");
    for (const auto& l : dq_lines) std::printf("%s\n", l.c_str());
    std::printf("\n");
    t.check(worst_dk_seen <= kTol, "dK so far = naive dK of the visited ranks' queries",
            format("max |diff| %.2e (tolerance %.0e)", worst_dk_seen, kTol));
    t.check(worst_dq_seen <= kTol, "dQ so far = scale sum_j P_ij (dP_ij - D_i) K_j, seen j",
            format("max |diff| %.2e (tolerance %.0e)", worst_dq_seen, kTol));

    // ---------------------------------------------------------------------------------------
    t.stage("The gradients equal naive_backward");
    Tensor<double> dq(q.shape()), dk(k.shape()), dv(v.shape());
    for (int r = 0; r < N; ++r) {
      const auto ri = static_cast<std::size_t>(r);
      ref::unshard_rows(dq_acc[ri], layout, r, dq);
      ref::unshard_rows(dk_held[ri], layout, r, dk);  // home: rank r holds block r's gradients
      ref::unshard_rows(dv_held[ri], layout, r, dv);
    }
    const auto naive = ref::naive_backward(q, k, v, fwd.out, fwd.lse, dout);
    t.say("naive_backward materializes P (16 x 16) and computes dV = P^T dO, dQ = scale dS K,");
    t.say("dK = scale dS^T Q in one go; the ring held one 4 x 4 block of P per rank at a time.");
    t.check_all_close(dq.values(), naive.dq.values(), kTol, "dQ (16 x 4) equals naive dQ");
    t.check_all_close(dk.values(), naive.dk.values(), kTol, "dK (16 x 4) equals naive dK");
    t.check_all_close(dv.values(), naive.dv.values(), kTol, "dV (16 x 4) equals naive dV");
    const auto ring = ref::ring_backward(q, k, v, fwd.out, fwd.lse, dout, ring_opt);
    Vec ring_all = ring.dq.values(), loop_all = dq.values();
    ring_all.insert(ring_all.end(), ring.dk.values().begin(), ring.dk.values().end());
    ring_all.insert(ring_all.end(), ring.dv.values().begin(), ring.dv.values().end());
    loop_all.insert(loop_all.end(), dk.values().begin(), dk.values().end());
    loop_all.insert(loop_all.end(), dv.values().begin(), dv.values().end());
    t.check_all_close(ring_all, loop_all, kTol, "ref::ring_backward gives the loop's dQ, dK, dV");

    // ---------------------------------------------------------------------------------------
    t.stage("An independent check: finite differences of the loss");
    t.say("Nudge one input entry by +-h and difference the loss, computed by naive_forward alone:");
    t.say("dL/dx ~ (L(x + h) - L(x - h)) / 2h, error O(h^2) + O(eps/h); h = 1e-5.");
    std::printf("\n  %-16s %14s %14s %10s\n", "entry", "ring backward", "finite diff", "|diff|");
    const double h = 1e-5;
    struct Entry {
      const char* name;
      int which;  // 0 Q, 1 K, 2 V
      std::int64_t token, d;
    };
    std::vector<std::pair<std::string, double>> fd_err;
    for (const Entry& e : {Entry{"dQ[token 6][1]", 0, 6, 1}, Entry{"dK[token 1][2]", 1, 1, 2},
                           Entry{"dV[token 9][0]", 2, 9, 0}}) {
      Tensor<double> qp = q, kp = k, vp = v, qm = q, km = k, vm = v;
      Tensor<double>& xp = e.which == 0 ? qp : e.which == 1 ? kp : vp;
      Tensor<double>& xm = e.which == 0 ? qm : e.which == 1 ? km : vm;
      xp[e.token * D + e.d] += h;
      xm[e.token * D + e.d] -= h;
      const double fd = (loss(qp, kp, vp, dout) - loss(qm, km, vm, dout)) / (2 * h);
      const Tensor<double>& g = e.which == 0 ? dq : e.which == 1 ? dk : dv;
      const double got = g[e.token * D + e.d];
      std::printf("  %-16s %14.8f %14.8f %10.2e\n", e.name, got, fd, std::abs(got - fd));
      fd_err.emplace_back(e.name, std::abs(got - fd) / std::max(1.0, std::abs(fd)));
    }
    std::printf("\n");
    for (const auto& [name, err] : fd_err)
      t.check(err <= 1e-8, format("%s from the ring = the finite difference", name.c_str()),
              format("|diff| %.2e (tolerance 1e-08)", err));

    // ---------------------------------------------------------------------------------------
    t.stage("With the causal mask, in every layout");
    t.say("Causal: skip pairs add nothing, so some accumulators pass through a rank unchanged (06).");
    ref::AttentionOptions causal;
    causal.causal = true;
    const auto fc = ref::naive_forward(q, k, v, causal);
    const auto gc = ref::naive_backward(q, k, v, fc.out, fc.lse, dout, causal);
    for (ringattn::Layout lay : ringattn::all_layouts()) {
      ref::RingOptions o;
      o.ranks = N;
      o.causal = true;
      o.layout = lay;
      const auto g = ref::ring_backward(q, k, v, fc.out, fc.lse, dout, o);
      double worst = 0;
      for (std::int64_t i = 0; i < g.dq.size(); ++i)
        worst = std::max({worst, std::abs(g.dq[i] - gc.dq[i]), std::abs(g.dk[i] - gc.dk[i]),
                          std::abs(g.dv[i] - gc.dv[i])});
      t.check(worst <= kTol,
              format("%-10s causal ring dQ, dK, dV equal naive", std::string(ringattn::to_string(lay)).c_str()),
              format("max |diff| %.2e (tolerance %.0e)", worst, kTol));
    }
    return t.finish();
  });
}
