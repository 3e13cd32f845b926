// Tutorial 08: flash-decoding, one query token against a long K/V cache split into pieces.
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
// What this one shows: decoding generates one token at a time, so attention has one query row
// against a cache of S_kv keys (here 4096, D = 8, one head, double, with one "needle" key the
// query attends to strongly). Flash-decoding cuts the cache into `splits` pieces (8 here), each
// computed on its own, giving a partial (o_i, lse_i); the combine is the LSE merge of tutorial
// 03. It prints each split's max score, lse_i and weight e^(lse_i - LSE) (checked against the
// softmax mass of its keys), the combine, and checks the result against naive attention and
// ref::decode_forward for several split counts (empty splits included). Last, as arithmetic and
// not a timing: how many of a GPU's 132 SMs one query keeps busy with and without splitting, for
// a 128k-token cache, and that result computed on the CPU with 132 splits.
//
// What it leaves out: the GPU kernel itself and its timing (10, cuda/), batching several
// sequences, paged caches, and the ring (05), which splits the keys across devices instead.
//
// Run:   build/bin/tutorial_08_flash_decoding [--step]   (--step pauses for Enter between stages)
// Needs: nothing beyond the build (CPU only; uses the CPU reference library).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "ringattn/core/tensor.hpp"
#include "ringattn/reference/attention.hpp"
#include "tutorial.hpp"

namespace {

using ringattn::Tensor;
using ringattn::tutorial::format;
using Vec = std::vector<double>;

constexpr std::int64_t D = 8;  // head dimension
constexpr double kTol = 1e-12;

using ringattn::tutorial::Rng;

Tensor<double> random_tokens(Rng& rng, std::int64_t s) {
  Tensor<double> t({1, s, 1, D});
  for (double& x : t.values()) x = rng.normal();
  return t;
}

std::string vec_string(const double* x, std::int64_t n) {
  std::string s = "[";
  for (std::int64_t i = 0; i < n; ++i) s += format(" %7.4f", x[i]);
  return s + " ]";
}

double max_abs_diff(const Tensor<double>& a, const Tensor<double>& b) {
  double worst = a.size() == b.size() ? 0.0 : INFINITY;
  for (std::int64_t i = 0; i < a.size() && i < b.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

// Split s of P covers keys [floor(s*S/P), floor((s+1)*S/P)): sizes differ by at most one.
std::int64_t split_begin(std::int64_t s, std::int64_t keys, std::int64_t splits) { return s * keys / splits; }

}  // namespace

int main(int argc, char** argv) {
  return ringattn::tutorial::run([&] {
    ringattn::tutorial::Tutorial t(argc, argv, "08_flash_decoding",
                                   "Flash-decoding: one query token, a long K/V cache, split and merged");
    namespace ref = ringattn::ref;

    constexpr std::int64_t S_kv = 4096, splits = 8, needle = 2900;
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    Rng rng(8);
    const Tensor<double> q = random_tokens(rng, 1);
    Tensor<double> k = random_tokens(rng, S_kv);
    const Tensor<double> v = random_tokens(rng, S_kv);
    // The needle: key 2900 points along q, scaled so that its score scale * q.k is exactly 10.
    double qq = 0;
    for (std::int64_t d = 0; d < D; ++d) qq += q[d] * q[d];
    for (std::int64_t d = 0; d < D; ++d) k[needle * D + d] = q[d] * 10.0 / (scale * qq);

    // Scores and softmax of the single row, by hand, for the checks.
    Vec score(static_cast<std::size_t>(S_kv));
    for (std::int64_t j = 0; j < S_kv; ++j) {
      double dot = 0;
      for (std::int64_t d = 0; d < D; ++d) dot += q[d] * k[j * D + d];
      score[static_cast<std::size_t>(j)] = scale * dot;
    }
    const double m_all = *std::max_element(score.begin(), score.end());
    double l_all = 0;
    for (double s : score) l_all += std::exp(s - m_all);
    const double lse_all = m_all + std::log(l_all);

    // ---------------------------------------------------------------------------------------
    t.stage("One query token against a 4096-token cache");
    t.say("Decoding adds one token at a time: its query, one row of D numbers, attends to every");
    t.say("cached key. It is the newest token, so causally it sees every key: no mask is needed.");
    t.say(format("S_kv = %lld, D = %lld, scale = 1/sqrt(D) = %.4f; key %lld is a 'needle' with score",
                 static_cast<long long>(S_kv), static_cast<long long>(D), scale, static_cast<long long>(needle)));
    t.say(format("10 (the others: max %.4f). LSE of the row, by hand: %.6f.",
                 [&] {
                   double m = -INFINITY;
                   for (std::int64_t j = 0; j < S_kv; ++j)
                     if (j != needle) m = std::max(m, score[static_cast<std::size_t>(j)]);
                   return m;
                 }(),
                 lse_all));
    t.say("A flash kernel gives each thread block a tile of query rows: one row is one block,");
    t.say("which walks all 4096 keys alone while the rest of the GPU waits.");

    // ---------------------------------------------------------------------------------------
    t.stage("Split the cache into 8 pieces, each computed on its own");
    t.say("Split i attends over its 512 keys only (block_forward), giving (o_i, lse_i) normalized");
    t.say("over those keys. Its weight in the result is w_i = e^(lse_i - LSE): the share of the");
    t.say("softmax mass (sum of P_j over its keys) that falls in the split.");
    std::vector<ref::ForwardResult<double>> partials;
    double worst_lse_i = 0, worst_mass = 0;
    std::vector<double> m_i;
    for (std::int64_t s = 0; s < splits; ++s) {
      const std::int64_t b = split_begin(s, S_kv, splits), e = split_begin(s + 1, S_kv, splits);
      ref::ForwardResult<double> p{Tensor<double>(q.shape()), Tensor<double>({1, 1, 1})};
      ref::KernelArgs args;
      args.qpos = {S_kv - 1, 1};  // the query is the newest token
      args.kpos = {b, 1};
      args.causal = false;
      args.scale = scale;
      const auto kv = ringattn::seq_view(std::as_const(k)), vv = ringattn::seq_view(v);
      ref::block_forward(ringattn::seq_view(q), kv.rows(b, e - b), vv.rows(b, e - b), args,
                         ringattn::seq_view(p.out), ringattn::lse_view(p.lse));
      double m = -INFINITY, l = 0;
      for (std::int64_t j = b; j < e; ++j) m = std::max(m, score[static_cast<std::size_t>(j)]);
      for (std::int64_t j = b; j < e; ++j) l += std::exp(score[static_cast<std::size_t>(j)] - m);
      worst_lse_i = std::max(worst_lse_i, std::abs(p.lse[0] - (m + std::log(l))));
      m_i.push_back(m);
      partials.push_back(std::move(p));
    }
    // The combine, written out: LSE = M + log sum_i e^(lse_i - M) with M = max_i lse_i, then
    // O = sum_i e^(lse_i - LSE) o_i (the LSE merge of tutorial 03, over 8 partials at once).
    double big = -INFINITY;
    for (const auto& p : partials) big = std::max(big, p.lse[0]);
    double sum = 0;
    for (const auto& p : partials) sum += std::exp(p.lse[0] - big);
    const double lse = big + std::log(sum);
    Tensor<double> out(q.shape());
    std::printf("\n  split  keys         max s_j    lse_i    w_i    P mass   o_i[0..3]\n");
    for (std::int64_t s = 0; s < splits; ++s) {
      const auto& p = partials[static_cast<std::size_t>(s)];
      const std::int64_t b = split_begin(s, S_kv, splits), e = split_begin(s + 1, S_kv, splits);
      const double w = std::exp(p.lse[0] - lse);
      for (std::int64_t d = 0; d < D; ++d) out[d] += w * p.out[d];
      double mass = 0;
      for (std::int64_t j = b; j < e; ++j) mass += std::exp(score[static_cast<std::size_t>(j)] - lse_all);
      worst_mass = std::max(worst_mass, std::abs(w - mass));
      std::printf("  %5lld  %4lld..%-4lld  %8.4f  %7.4f  %6.4f  %6.4f   %s\n", static_cast<long long>(s),
                  static_cast<long long>(b), static_cast<long long>(e - 1), m_i[static_cast<std::size_t>(s)],
                  p.lse[0], w, mass, vec_string(p.out.data(), 4).c_str());
    }
    std::printf("\n");
    t.check(worst_lse_i <= kTol, "each lse_i = log sum_j exp(s_j) over its 512 keys",
            format("max |diff| %.2e (tolerance %.0e)", worst_lse_i, kTol));
    t.check(worst_mass <= kTol, "each w_i = the softmax mass of its split's keys",
            format("max |diff| %.2e (tolerance %.0e)", worst_mass, kTol));
    const std::int64_t needle_split = needle / (S_kv / splits);
    const double w_needle = std::exp(partials[static_cast<std::size_t>(needle_split)].lse[0] - lse);
    t.say(format("Split %lld holds the needle: its lse_i is close to the needle's score 10, so it",
                 static_cast<long long>(needle_split)));
    t.say(format("carries %.1f%% of the weight and the other 7 splits share the remaining %.1f%%.",
                 100.0 * w_needle, 100.0 * (1.0 - w_needle)));

    // ---------------------------------------------------------------------------------------
    t.stage("Combine the 8 partials with the LSE merge");
    t.say("M = max_i lse_i, LSE = M + log sum_i e^(lse_i - M), O = sum_i w_i o_i: D + 1 numbers per");
    t.say("split are all the combine reads, against 2 x 512 x D per split for the keys and values.");
    const auto naive = ref::naive_forward(q, k, v);
    std::printf("\n  combined  LSE %9.6f  O %s\n", lse, vec_string(out.data(), D).c_str());
    std::printf("  naive     LSE %9.6f  O %s\n\n", naive.lse[0], vec_string(naive.out.data(), D).c_str());
    t.check(std::max(max_abs_diff(out, naive.out), std::abs(lse - naive.lse[0])) <= kTol,
            "combined O and LSE = naive attention over 4096 keys",
            format("max |diff| %.2e (tolerance %.0e)", std::max(max_abs_diff(out, naive.out), std::abs(lse - naive.lse[0])), kTol));
    const auto combined = ref::combine_partials(partials);
    t.check(max_abs_diff(combined.out, out) <= kTol && std::abs(combined.lse[0] - lse) <= kTol,
            "ref::combine_partials gives the same",
            format("max |diff| %.2e (tolerance %.0e)", max_abs_diff(combined.out, out), kTol));
    // A GPU may instead merge in a tree, pairs first: (0,1), (2,3), ... then pairs of pairs.
    std::vector<ref::ForwardResult<double>> level = partials;
    while (level.size() > 1) {
      std::vector<ref::ForwardResult<double>> next;
      for (std::size_t i = 0; i + 1 < level.size(); i += 2) {
        ref::merge_into(level[i].out, level[i].lse, level[i + 1].out, level[i + 1].lse);
        next.push_back(std::move(level[i]));
      }
      level = std::move(next);
    }
    t.check(max_abs_diff(level[0].out, naive.out) <= kTol,
            "pairwise merge_into in a tree (3 levels) = naive O",
            format("max |diff| %.2e (tolerance %.0e)", max_abs_diff(level[0].out, naive.out), kTol));

    // ---------------------------------------------------------------------------------------
    t.stage("ref::decode_forward with any number of splits");
    t.say("More splits than keys leave some empty: they return lse = -inf and weigh nothing.");
    std::printf("\n  %8s  %14s  %22s\n", "splits", "keys per split", "max |diff| O, LSE");
    double worst_splits = 0;
    for (std::int64_t p : {std::int64_t{1}, std::int64_t{3}, splits, std::int64_t{64}, std::int64_t{5000}}) {
      const auto r = ref::decode_forward(q, k, v, p);
      const double err = std::max(max_abs_diff(r.out, naive.out), std::abs(r.lse[0] - naive.lse[0]));
      worst_splits = std::max(worst_splits, err);
      const std::int64_t lo = S_kv / p, hi = (S_kv + p - 1) / p;
      std::printf("  %8lld  %14s  %22.2e\n", static_cast<long long>(p),
                  (lo == hi ? format("%lld", static_cast<long long>(lo))
                            : format("%lld or %lld", static_cast<long long>(lo), static_cast<long long>(hi)))
                      .c_str(),
                  err);
    }
    std::printf("\n");
    t.check(worst_splits <= kTol, "decode_forward = naive for 1, 3, 8, 64, 5000 splits",
            format("max |diff| %.2e (tolerance %.0e)", worst_splits, kTol));

    // ---------------------------------------------------------------------------------------
    t.stage("Why split: the parallelism one query leaves a GPU (arithmetic, not a timing)");
    constexpr std::int64_t cache = 131072, sms = 132;
    t.say("A 128k-token cache (131072 keys) on a GPU with 132 SMs (an H100 SXM), batch 1. One");
    t.say("thread block per (head, split); without splitting that is one block per head. The");
    t.say("split count below is the largest that keeps every block in one wave: floor(132 / heads).");
    std::printf("\n  %5s  %15s  %8s  %6s  %6s  %8s  %14s\n", "heads", "blocks, 1 split", "SMs busy", "splits",
                "blocks", "SMs busy", "keys per block");
    for (std::int64_t heads : {std::int64_t{1}, std::int64_t{8}, std::int64_t{32}}) {
      const std::int64_t p = std::max<std::int64_t>(1, sms / heads), blocks = heads * p;
      const std::int64_t lo = cache / p, hi = (cache + p - 1) / p;
      std::printf("  %5lld  %15lld  %7.1f%%  %6lld  %6lld  %7.1f%%  %14s\n", static_cast<long long>(heads),
                  static_cast<long long>(heads), 100.0 * static_cast<double>(std::min(heads, sms)) / sms,
                  static_cast<long long>(p), static_cast<long long>(blocks),
                  100.0 * static_cast<double>(std::min(blocks, sms)) / sms,
                  (lo == hi ? format("%lld", static_cast<long long>(lo))
                            : format("%lld or %lld", static_cast<long long>(lo), static_cast<long long>(hi)))
                      .c_str());
    }
    std::printf("\n");
    t.say("With one head, one SM of 132 would read the whole cache alone: 131072 keys; with 132");
    t.say("splits each SM reads ~993, and the combine adds 132 x (D + 1) numbers per head.");
    // The bounds floor(s*S/P) must tile the cache exactly, in pieces of 992 or 993 keys.
    bool tiles = true;
    std::int64_t smallest = cache, largest = 0;
    for (std::int64_t s = 0; s < sms; ++s) {
      const std::int64_t b = split_begin(s, cache, sms), e = split_begin(s + 1, cache, sms);
      tiles = tiles && (s == 0 ? b == 0 : true) && e > b;
      smallest = std::min(smallest, e - b);
      largest = std::max(largest, e - b);
    }
    tiles = tiles && split_begin(sms, cache, sms) == cache;
    t.check(tiles && smallest == 992 && largest == 993, "132 splits tile the 131072 keys in pieces of 992 or 993",
            format("sizes %lld..%lld", static_cast<long long>(smallest), static_cast<long long>(largest)));
    Rng big_rng(9);
    const Tensor<double> q_big = random_tokens(big_rng, 1), k_big = random_tokens(big_rng, cache),
                         v_big = random_tokens(big_rng, cache);
    const auto dec_big = ref::decode_forward(q_big, k_big, v_big, sms);
    const auto naive_big = ref::naive_forward(q_big, k_big, v_big);
    t.check(max_abs_diff(dec_big.out, naive_big.out) <= kTol && std::abs(dec_big.lse[0] - naive_big.lse[0]) <= kTol,
            "the 128k cache in 132 splits = naive, on the CPU",
            format("max |diff| %.2e (tolerance %.0e)", max_abs_diff(dec_big.out, naive_big.out), kTol));
    return t.finish();
  });
}
