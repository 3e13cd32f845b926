// Tutorial 04: online softmax and blockwise (flash) attention.
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
// What this one shows: attention without the S_q x S_kv score matrix. Each query row keeps a
// running max m, a running sum l and an unnormalized output O, and absorbs the keys one block of
// Bc at a time with the flash-attention-2 recurrences (Algorithm 1 of the FA2 paper):
//   S     = scale * Q_i K_j^T
//   m_new = max(m, rowmax(S))
//   P     = exp(S - m_new)
//   l     = exp(m - m_new) * l + rowsum(P)
//   O     = exp(m - m_new) * O + P V_j
// and at the end O / l and LSE = m + log l. exp(m - m_new) is tutorial 02's correction
// exp(m_c - m), applied as each block arrives instead of once at the end. On a small case
// (4 queries, 8 keys, D = 4, Bc = 2) it prints m, l and a row of O after each key block and checks
// that the state is then exactly the attention over the keys seen so far; on a larger random case
// (GQA, odd lengths, large scores) it checks O and LSE against ringattn::ref::naive_forward and
// ringattn::ref::blockwise_forward.
//
// What it leaves out: the causal mask and rows that see no key (the guard is in 03; masks per
// ring step in 06), spreading the key blocks over devices (05), the backward pass (07), and
// what makes a GPU kernel fast (tensor cores, shared memory: 10).
//
// Run:   build/bin/tutorial_04_online_softmax [--step]   (--step pauses for Enter between stages)
// Needs: nothing beyond the build (uses the CPU reference library).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "ringattn/reference/attention.hpp"
#include "tutorial.hpp"

namespace {

using ringattn::Tensor;
using ringattn::tutorial::format;
using ringattn::tutorial::print_vector;
using Vector = std::vector<double>;
using Index = std::int64_t;

// The running state of one query tile after a key block, as the tutorial's observer sees it.
struct TileState {
  Index i0, rows;        // query rows [i0, i0 + rows)
  Index j0, cols;        // the key block just absorbed: keys [j0, j0 + cols)
  const Vector& S;       // its scores, (rows x cols)
  const Vector& alpha;   // exp(m_old - m_new) per row
  const Vector& m;       // running max per row
  const Vector& l;       // running sum per row
  const Vector& O;       // unnormalized output, (rows x D)
};
using Observer = std::function<void(const TileState&)>;

// One head of blockwise attention: Q (Sq x D), K and V (Skv x D), row-major. Writes O (Sq x D)
// and LSE (Sq). The comments cite the lines of FlashAttention-2, Algorithm 1.
void flash_forward(const Vector& Q, const Vector& K, const Vector& V, Index Sq, Index Skv, Index D,
                   Index Br, Index Bc, double scale, Vector& O_out, Vector& lse_out,
                   const Observer& observe = {}) {
  for (Index i0 = 0; i0 < Sq; i0 += Br) {  // line 3: for each query tile Q_i
    const Index rows = std::min(Br, Sq - i0);
    Vector m(rows, -INFINITY), l(rows, 0.0), O(rows * D, 0.0);  // line 5
    Vector S(rows * Bc), alpha(rows);
    for (Index j0 = 0; j0 < Skv; j0 += Bc) {  // line 6: for each key tile K_j, V_j
      const Index cols = std::min(Bc, Skv - j0);
      for (Index r = 0; r < rows; ++r) {  // line 8: S = scale * Q_i K_j^T
        for (Index c = 0; c < cols; ++c) {
          double dot = 0;
          for (Index d = 0; d < D; ++d) dot += Q[(i0 + r) * D + d] * K[(j0 + c) * D + d];
          S[r * cols + c] = scale * dot;
        }
      }
      for (Index r = 0; r < rows; ++r) {
        // line 9: m_new = max(m, rowmax(S)). Unmasked, every tile has a finite score, so m_new
        // is finite and exp(m - m_new) is 0 on the first tile (m = -inf), never -inf - -inf.
        double m_new = m[r];
        for (Index c = 0; c < cols; ++c) m_new = std::max(m_new, S[r * cols + c]);
        alpha[r] = std::exp(m[r] - m_new);  // <= 1: rescales what was summed under the old max
        l[r] *= alpha[r];                                        // line 9: l = alpha l + ...
        for (Index d = 0; d < D; ++d) O[r * D + d] *= alpha[r];  // line 10: O = diag(alpha) O + ...
        for (Index c = 0; c < cols; ++c) {
          const double p = std::exp(S[r * cols + c] - m_new);  // line 9: P = exp(S - m_new)
          l[r] += p;                                           //   ... + rowsum(P)
          for (Index d = 0; d < D; ++d) O[r * D + d] += p * V[(j0 + c) * D + d];  // ... + P V_j
        }
        m[r] = m_new;
      }
      if (observe) observe({i0, rows, j0, cols, S, alpha, m, l, O});
    }
    for (Index r = 0; r < rows; ++r) {
      for (Index d = 0; d < D; ++d) O_out[(i0 + r) * D + d] = O[r * D + d] / l[r];  // line 12
      lse_out[i0 + r] = m[r] + std::log(l[r]);                                      // line 13
    }
  }
}

// Attention the naive way, over keys [0, n) only: the whole score matrix, a stable softmax per
// row, then P V. Independent of flash_forward; used to check its state after every block.
void naive_prefix(const Vector& Q, const Vector& K, const Vector& V, Index Sq, Index n, Index D,
                  double scale, Vector& O, Vector& m, Vector& l) {
  O.assign(Sq * D, 0.0);
  m.assign(Sq, -INFINITY);
  l.assign(Sq, 0.0);
  Vector s(n);
  for (Index i = 0; i < Sq; ++i) {
    for (Index j = 0; j < n; ++j) {
      double dot = 0;
      for (Index d = 0; d < D; ++d) dot += Q[i * D + d] * K[j * D + d];
      s[j] = scale * dot;
      m[i] = std::max(m[i], s[j]);
    }
    for (Index j = 0; j < n; ++j) l[i] += std::exp(s[j] - m[i]);
    for (Index j = 0; j < n; ++j) {
      const double p = std::exp(s[j] - m[i]) / l[i];
      for (Index d = 0; d < D; ++d) O[i * D + d] += p * V[j * D + d];
    }
  }
}

double max_abs_diff(const Vector& a, const Vector& b) {
  double worst = a.size() == b.size() ? 0.0 : INFINITY;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    const double d = std::abs(a[i] - b[i]);
    if (!(d <= worst)) worst = std::isnan(d) ? NAN : d;
  }
  return worst;
}

// The (S x D) matrix of head h in batch b of a (B, S, H, D) tensor.
Vector head_of(const Tensor<double>& t, Index b, Index h) {
  const Index S = t.dim(1), H = t.dim(2), D = t.dim(3);
  Vector out(S * D);
  for (Index s = 0; s < S; ++s) {
    for (Index d = 0; d < D; ++d) out[s * D + d] = t[((b * S + s) * H + h) * D + d];
  }
  return out;
}

// Uniform in [lo, hi) from the generator's raw bits (its output is fixed by the standard; std's
// distributions are not), so every platform computes the same inputs.
double uniform(std::mt19937_64& gen, double lo, double hi) {
  return lo + (hi - lo) * static_cast<double>(gen() >> 11) * 0x1.0p-53;
}

Tensor<double> random_tensor(std::vector<Index> shape, std::mt19937_64& gen, double amplitude) {
  Tensor<double> t(std::move(shape));
  for (double& x : t.values()) x = uniform(gen, -amplitude, amplitude);
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  return ringattn::tutorial::run([&] {
    namespace ref = ringattn::ref;
    ringattn::tutorial::Tutorial t(argc, argv, "04_online_softmax",
                                   "Online softmax: blockwise (flash) attention, block by block");

    // ---- the small case: 4 queries, 8 keys, D = 4, one query tile (Br = 4), Bc = 2 ----------
    constexpr Index Sq = 4, Skv = 8, D = 4, Br = 4, Bc = 2;
    const double scale = 0.5;  // 1 / sqrt(D)
    std::mt19937_64 gen(4);
    auto two_decimals = [&gen] {  // uniform in [-2, 2] in steps of 0.01, readable by hand
      return static_cast<double>(static_cast<Index>(gen() % 401) - 200) / 100.0;
    };
    Vector Q(Sq * D), K(Skv * D), V(Skv * D);
    for (double& x : Q) x = two_decimals();
    for (double& x : K) x = two_decimals();
    for (double& x : V) x = two_decimals();

    t.stage("The inputs: Q (4 x 4), K and V (8 x 4), scale = 1/sqrt(4) = 0.5");
    ringattn::tutorial::print_matrix("Q", Q, Sq, D, "%6.2f");
    std::printf("  %-6s%-31s%s\n", "key", "K", "V");
    for (Index j = 0; j < Skv; ++j) {
      std::printf("  %-4lld[", static_cast<long long>(j));
      for (Index d = 0; d < D; ++d) std::printf(" %6.2f", K[j * D + d]);
      std::printf(" ]  [");
      for (Index d = 0; d < D; ++d) std::printf(" %6.2f", V[j * D + d]);
      std::printf(" ]\n");
    }
    t.say("Naive attention would build the 4 x 8 scores at once. Here the keys arrive in blocks");
    t.say("of Bc = 2, and each query row keeps only m, l and O (D numbers) between blocks.");

    t.stage("Block by block: m, l and O after each key block");
    t.say("alpha = exp(m_old - m_new) rescales l and O, which were summed relative to m_old.");
    t.say("Block 0 starts from m = -inf, l = 0, O = 0: alpha = exp(-inf) = 0 discards nothing.");
    Vector O_small(Sq * D), lse_small(Sq);
    int rescaled = 0;
    double worst_m = 0, worst_o = 0, worst_l = 0;
    flash_forward(Q, K, V, Sq, Skv, D, Br, Bc, scale, O_small, lse_small, [&](const TileState& s) {
      std::printf("\n  key block %lld: keys %lld..%lld\n    %-9s %-19s  %8s  %8s  %8s\n",
                  static_cast<long long>(s.j0 / Bc), static_cast<long long>(s.j0),
                  static_cast<long long>(s.j0 + s.cols - 1), "", "S = scale Q K_j^T", "m",
                  "alpha", "l");
      for (Index r = 0; r < s.rows; ++r) {
        std::printf("    query %-3lld [", static_cast<long long>(s.i0 + r));
        for (Index c = 0; c < s.cols; ++c) std::printf(" %7.4f", s.S[r * s.cols + c]);
        std::printf(" ]  %8.4f  %8.4f  %8.4f\n", s.m[r], s.alpha[r], s.l[r]);
        if (s.j0 > 0 && s.alpha[r] < 1) ++rescaled;
      }
      Vector o0(s.O.begin(), s.O.begin() + D);
      print_vector("  O, query 0", o0, "%8.4f");
      for (double& x : o0) x /= s.l[0];
      print_vector("  O/l, query 0", o0, "%8.4f");
      // The invariant: after this block, (m, l, O / l) is the attention over keys 0..j0+cols-1.
      Vector O_n, m_n, l_n;
      naive_prefix(Q, K, V, Sq, s.j0 + s.cols, D, scale, O_n, m_n, l_n);
      for (Index r = 0; r < s.rows; ++r) {
        worst_m = std::max(worst_m, std::abs(s.m[r] - m_n[r]));
        worst_l = std::max(worst_l, std::abs(s.l[r] - l_n[r]) / l_n[r]);
        for (Index d = 0; d < D; ++d) {
          worst_o = std::max(worst_o, std::abs(s.O[r * D + d] / s.l[r] - O_n[r * D + d]));
        }
      }
    });
    std::printf("\n");
    t.say(format("The max moved %d times after block 0; each time alpha < 1 shrank the old terms.",
                 rescaled));
    t.say("After each block the state is exactly the attention over the keys seen so far:");
    t.check(worst_m <= 1e-15, "m = the max score over the keys seen so far",
            format("max |diff| %.2e (tolerance 1e-15)", worst_m));
    t.check(worst_l <= 1e-15, "l = sum exp(s - m) over the keys seen so far",
            format("max relative diff %.2e (tolerance 1e-15)", worst_l));
    t.check(worst_o <= 1e-15, "O / l = naive attention over the keys seen so far",
            format("max |diff| %.2e (tolerance 1e-15)", worst_o));

    t.stage("The end: O / l and LSE = m + log l, against the reference");
    ringattn::tutorial::print_matrix("O = O / l", O_small, Sq, D, "%8.4f");
    print_vector("LSE = m + log l", lse_small, "%8.4f");
    Tensor<double> q_t({1, Sq, 1, D}), k_t({1, Skv, 1, D}), v_t({1, Skv, 1, D});
    q_t.values() = Q;
    k_t.values() = K;
    v_t.values() = V;
    ref::AttentionOptions opts;
    opts.scale = scale;
    opts.block_q = Br;
    opts.block_kv = Bc;
    const auto naive = ref::naive_forward(q_t, k_t, v_t, opts);
    const auto blockwise = ref::blockwise_forward(q_t, k_t, v_t, opts);
    t.check_all_close(O_small, naive.out.values(), 1e-15, "O equals ref::naive_forward's");
    t.check_all_close(lse_small, naive.lse.values(), 1e-15, "LSE equals ref::naive_forward's");
    t.check_all_close(O_small, blockwise.out.values(), 1e-15,
                      "O equals ref::blockwise_forward's (Br = 4, Bc = 2)");
    double worst_bc = 0;
    for (Index bc : {1, 3, 8}) {
      Vector O_bc(Sq * D), lse_bc(Sq);
      flash_forward(Q, K, V, Sq, Skv, D, Br, bc, scale, O_bc, lse_bc);
      worst_bc = std::max({worst_bc, max_abs_diff(O_bc, naive.out.values()),
                           max_abs_diff(lse_bc, naive.lse.values())});
    }
    t.check(worst_bc <= 1e-15, "Bc = 1, 3 (a tail of 2) and 8 give the same O and LSE",
            format("max |diff| %.2e (tolerance 1e-15)", worst_bc));
    t.say("(O, LSE) is 03's partial result: a key block's answer can be merged with another's.");

    t.stage("A larger random case: GQA, odd lengths, and large scores");
    // B = 2, S_q = 77 queries, S_kv = 203 keys, H_q = 4 query heads sharing H_kv = 2 K/V heads,
    // D = 16; Br = 16 and Bc = 32 leave partial tiles at both ends.
    const Index B = 2, Sq2 = 77, Skv2 = 203, Hq = 4, Hkv = 2, D2 = 16, Br2 = 16, Bc2 = 32;
    std::mt19937_64 gen2(2024);
    const Tensor<double> q = random_tensor({B, Sq2, Hq, D2}, gen2, 2.0);
    const Tensor<double> k = random_tensor({B, Skv2, Hkv, D2}, gen2, 2.0);
    const Tensor<double> v = random_tensor({B, Skv2, Hkv, D2}, gen2, 1.0);
    const auto ll = [](Index x) { return static_cast<long long>(x); };
    t.say(format("B=%lld S_q=%lld S_kv=%lld H_q=%lld H_kv=%lld D=%lld; tiles of Br=%lld x Bc=%lld",
                 ll(B), ll(Sq2), ll(Skv2), ll(Hq), ll(Hkv), ll(D2), ll(Br2), ll(Bc2)));
    t.say(format("(both lengths leave partial tiles). Naive holds %lld x %lld = %lld scores per",
                 ll(Sq2), ll(Skv2), ll(Sq2 * Skv2)));
    t.say(format("head at once; a tile holds %lld x %lld = %lld.", ll(Br2), ll(Bc2),
                 ll(Br2 * Bc2)));
    for (double q_factor : {1.0, 50.0}) {
      Tensor<double> qf = q;
      for (double& x : qf.values()) x *= q_factor;
      ref::AttentionOptions o2;  // scale = 1/sqrt(16)
      o2.block_q = Br2;
      o2.block_kv = Bc2;
      const auto n2 = ref::naive_forward(qf, k, v, o2);
      const auto b2 = ref::blockwise_forward(qf, k, v, o2);
      Tensor<double> O2(qf.shape()), L2({B, Hq, Sq2});
      double max_score = 0;
      for (Index b = 0; b < B; ++b) {
        for (Index h = 0; h < Hq; ++h) {
          const Index g = h / (Hq / Hkv);  // GQA: query head h reads K/V head g
          const Vector Qh = head_of(qf, b, h), Kh = head_of(k, b, g), Vh = head_of(v, b, g);
          Vector Oh(Sq2 * D2), Lh(Sq2);
          flash_forward(Qh, Kh, Vh, Sq2, Skv2, D2, Br2, Bc2, 0.25, Oh, Lh,
                        [&](const TileState& s) {
                          for (double x : s.S) max_score = std::max(max_score, std::abs(x));
                        });
          for (Index s = 0; s < Sq2; ++s) {
            for (Index d = 0; d < D2; ++d) O2[((b * Sq2 + s) * Hq + h) * D2 + d] = Oh[s * D2 + d];
            L2[(b * Hq + h) * Sq2 + s] = Lh[s];
          }
        }
      }
      // 1e-13 at scores of a few units. At x50 the dot products are 50x larger and so are their
      // rounding errors (up to ~1e-12 on scores near 300), and p = exp(s - m) turns an absolute
      // error in s into the same relative error in p: 5e-12.
      const double tol = q_factor == 1.0 ? 1e-13 : 5e-12;
      const std::string what = q_factor == 1.0 ? "Q" : "Q*50";
      std::printf("  %s: largest |score| %.1f\n", what.c_str(), max_score);
      t.check_all_close(O2.values(), n2.out.values(), tol,
                        what + ": O equals ref::naive_forward's");
      t.check_all_close(O2.values(), b2.out.values(), tol,
                        what + ": O equals ref::blockwise_forward's");
      // LSE grows with the scores: compared relative to its size.
      double worst_lse = 0;
      for (Index i = 0; i < L2.size(); ++i) {
        const double rel = std::abs(L2[i] - n2.lse[i]) / std::max(1.0, std::abs(n2.lse[i]));
        worst_lse = std::max(worst_lse, rel);
      }
      t.check(worst_lse <= 1e-14, what + ": LSE equals ref::naive_forward's",
              format("max relative diff %.2e (tolerance 1e-14)", worst_lse));
    }
    t.say("05 gives each of N ranks one K/V block per step and merges the (O, LSE) results.");

    return t.finish();
  });
}
