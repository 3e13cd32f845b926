// Tutorial 03: merging partial attention results in log space.
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
// What this one shows: one query row attends to keys cut into chunks. Each chunk alone gives a
// partial result (o_c, lse_c): o_c = softmax(s_c) V_c normalized over its own keys, and
// lse_c = log sum_{j in c} exp(s_j). Two partials merge exactly,
//   lse = mx + log(exp(lse_a - mx) + exp(lse_b - mx)),   mx = max(lse_a, lse_b)
//   o   = exp(lse_a - lse) o_a + exp(lse_b - lse) o_b,
// where exp(lse_a - lse) = sum_a exp(s_j) / sum_all exp(s_j): the division that renormalizes
// o_a is a subtraction in log space, so nothing overflows. It checks the merge over two and three
// chunks against the whole row, against ringattn::ref::merge_into and ref::naive_forward, shows a
// merge in linear space turn into nan where the log-space one does not, and shows that an empty
// or fully masked chunk (lse = -inf, o = 0) merges safely, and what goes wrong without a guard.
//
// What it leaves out: keeping one running state as key blocks arrive (04), many query rows and
// tiles (04), and which chunk each rank holds in a ring (05); the backward pass (07).
//
// Run:   build/bin/tutorial_03_lse_merge [--step]   (--step pauses for Enter between stages)
// Needs: nothing beyond the build (uses the CPU reference library).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
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

constexpr std::int64_t D = 4;   // head dimension
constexpr std::int64_t N = 8;   // keys
const double kScale = 0.5;      // 1 / sqrt(D)

// A partial attention result of one query row over some keys.
struct Partial {
  Vector o;     // softmax over these keys only, times their values: (D)
  double lse;   // log sum_j exp(s_j) over these keys; -inf when there are none
};

// s_j = scale * q . k_j for keys [begin, end) of K (N x D, row-major).
Vector scores(const Vector& q, const Vector& K, std::int64_t begin, std::int64_t end) {
  Vector s;
  for (std::int64_t j = begin; j < end; ++j) {
    double dot = 0;
    for (std::int64_t d = 0; d < D; ++d) dot += q[d] * K[j * D + d];
    s.push_back(kScale * dot);
  }
  return s;
}

// The attention of q over keys [begin, end), written out: o = sum_j p_j v_j with
// p_j = exp(s_j - m) / l, and lse = m + log l (tutorial 01's stable softmax).
Partial attend(const Vector& q, const Vector& K, const Vector& V, std::int64_t begin,
               std::int64_t end) {
  Partial r{Vector(D, 0.0), -INFINITY};
  if (begin == end) return r;  // no key: o = 0, lse = -inf
  const Vector s = scores(q, K, begin, end);
  const double m = *std::max_element(s.begin(), s.end());
  double l = 0;
  for (std::int64_t j = begin; j < end; ++j) {
    const double e = std::exp(s[j - begin] - m);
    l += e;
    for (std::int64_t d = 0; d < D; ++d) r.o[d] += e * V[j * D + d];
  }
  for (double& od : r.o) od /= l;
  r.lse = m + std::log(l);
  return r;
}

// The merge, written as the equations with no special case.
Partial merge_unguarded(const Partial& a, const Partial& b) {
  const double mx = std::max(a.lse, b.lse);
  const double lse = mx + std::log(std::exp(a.lse - mx) + std::exp(b.lse - mx));
  Partial r{Vector(D), lse};
  for (std::int64_t d = 0; d < D; ++d) {
    r.o[d] = std::exp(a.lse - lse) * a.o[d] + std::exp(b.lse - lse) * b.o[d];
  }
  return r;
}

// The merge as every engine in ringattn does it: when both sides saw no key, mx = -inf and
// lse_a - mx would be -inf - (-inf) = nan, so the result is the empty one (o = 0, lse = -inf).
// One side -inf needs nothing: exp(-inf - mx) = 0 drops it exactly.
Partial merge(const Partial& a, const Partial& b) {
  if (std::max(a.lse, b.lse) == -INFINITY) return {Vector(D, 0.0), -INFINITY};
  return merge_unguarded(a, b);
}

// The same merge done in linear space: weights exp(lse_a), exp(lse_b) and a division by their sum.
Partial merge_linear(const Partial& a, const Partial& b) {
  const double ea = std::exp(a.lse), eb = std::exp(b.lse);
  Partial r{Vector(D), std::log(ea + eb)};
  for (std::int64_t d = 0; d < D; ++d) r.o[d] = (ea * a.o[d] + eb * b.o[d]) / (ea + eb);
  return r;
}

// Rows [begin, end) of an (N x D) matrix as a (1, end - begin, 1, D) tensor (B, S, H, D).
Tensor<double> rows_as_tensor(const Vector& M, std::int64_t begin, std::int64_t end) {
  Tensor<double> t({1, end - begin, 1, D});
  std::copy(M.begin() + begin * D, M.begin() + end * D, t.values().begin());
  return t;
}

Partial from_tensors(const Tensor<double>& o, const Tensor<double>& lse) {
  return {o.values(), lse[0]};
}

bool same_bits(const Partial& a, const Partial& b) {
  return a.lse == b.lse && a.o == b.o;
}

bool has_nan(const Partial& p) {
  return std::isnan(p.lse) ||
         std::any_of(p.o.begin(), p.o.end(), [](double v) { return std::isnan(v); });
}

// printf writes a nan with its sign bit set as "-nan"; the sign of a nan means nothing.
double shown(double v) { return std::isnan(v) ? std::fabs(v) : v; }

void print_partial(const std::string& label, const Partial& p) {
  std::printf("  %-22s lse = %-10.6g o = [", label.c_str(), shown(p.lse));
  for (double od : p.o) std::printf(" %9.5f", shown(od));
  std::printf(" ]\n");
}

// Uniform in [-1, 1] rounded to two decimals, from the generator's raw bits (its output is fixed
// by the standard; std's distributions are not), so every platform prints the same inputs.
double two_decimals(std::mt19937_64& gen) {
  return static_cast<double>(static_cast<std::int64_t>(gen() % 201) - 100) / 100.0;
}

}  // namespace

int main(int argc, char** argv) {
  return ringattn::tutorial::run([&] {
    namespace ref = ringattn::ref;
    ringattn::tutorial::Tutorial t(argc, argv, "03_lse_merge",
                                   "Merging partial attention results in log space");

    std::mt19937_64 gen(3);
    Vector q(D), K(N * D), V(N * D);
    for (double& x : q) x = 2 * two_decimals(gen);
    for (double& x : K) x = 2 * two_decimals(gen);
    for (double& x : V) x = two_decimals(gen);
    const Tensor<double> q_t = rows_as_tensor(q, 0, 1);
    ref::AttentionOptions opts;
    opts.scale = kScale;

    t.stage("One query row over all 8 keys: the answer to reproduce");
    t.say("s_j = q . k_j / sqrt(D),  p = softmax(s),  o = sum_j p_j v_j,");
    t.say("lse = log sum_j exp(s_j)   (so p_j = exp(s_j - lse))");
    print_vector("q", q, "%6.2f");
    const Vector s = scores(q, K, 0, N);
    const Partial full = attend(q, K, V, 0, N);
    Vector p(N);
    for (std::int64_t j = 0; j < N; ++j) p[j] = std::exp(s[j] - full.lse);  // p_j = e^{s_j - lse}
    std::printf("  %-2s%-33s%-33s%7s%8s\n", "j", "k_j", "v_j", "s_j", "p_j");
    for (std::int64_t j = 0; j < N; ++j) {
      std::printf("  %lld [", static_cast<long long>(j));
      for (std::int64_t d = 0; d < D; ++d) std::printf(" %6.2f", K[j * D + d]);
      std::printf(" ]  [");
      for (std::int64_t d = 0; d < D; ++d) std::printf(" %6.2f", V[j * D + d]);
      std::printf(" ]  %7.4f  %6.4f\n", s[j], p[j]);
    }
    print_partial("whole row", full);
    const auto naive =
        ref::naive_forward(q_t, rows_as_tensor(K, 0, N), rows_as_tensor(V, 0, N), opts);
    t.check_all_close(full.o, naive.out.values(), 1e-15, "o equals ref::naive_forward's O");
    t.check_close(full.lse, naive.lse[0], 1e-15, "lse equals naive_forward's LSE");

    t.stage("Two chunks, keys 0..3 and 4..7, each alone; then the merge");
    const Partial a = attend(q, K, V, 0, 4), b = attend(q, K, V, 4, N);
    print_partial("a = keys 0..3", a);
    print_partial("b = keys 4..7", b);
    t.say("Each o_c is normalized over its own keys only: neither is the answer.");
    const double mx = std::max(a.lse, b.lse);
    const double lse = mx + std::log(std::exp(a.lse - mx) + std::exp(b.lse - mx));
    const double wa = std::exp(a.lse - lse), wb = std::exp(b.lse - lse);
    std::printf("  mx = max(lse_a, lse_b) = %.6f\n", mx);
    std::printf("  lse = mx + log(exp(lse_a - mx) + exp(lse_b - mx)) = %.6f\n", lse);
    std::printf("  w_a = exp(lse_a - lse) = %.6f    w_b = exp(lse_b - lse) = %.6f\n", wa, wb);
    t.say("exp(lse_a - lse) = sum_{j in a} exp(s_j) / sum_j exp(s_j): the share of chunk a,");
    t.say("a division done as a subtraction of logs. Then o = w_a o_a + w_b o_b.");
    const Partial ab = merge(a, b);
    print_partial("merge(a, b)", ab);
    print_partial("whole row", full);
    double mass_a = 0;
    for (std::int64_t j = 0; j < 4; ++j) mass_a += p[j];
    t.check_close(wa, mass_a, 1e-15, "w_a = p_0 + p_1 + p_2 + p_3 (whole row)");
    t.check_all_close(ab.o, full.o, 1e-15, "merged o equals the whole row's o");
    t.check_close(ab.lse, full.lse, 1e-15, "merged lse equals the whole row's lse");

    t.stage("Three chunks (0..2, 3..5, 6..7), in any order, and ringattn::ref::merge_into");
    const std::int64_t cuts[] = {0, 3, 6, N};
    std::vector<Partial> parts;
    Tensor<double> acc_o({1, 1, 1, D}, 0.0), acc_lse({1, 1, 1}, -INFINITY);
    t.say("ref::merge_into folds each chunk's (O, LSE), from ref::naive_forward on that chunk's");
    t.say("keys, into an accumulator that starts empty: O = 0, LSE = -inf.");
    for (int c = 0; c < 3; ++c) {
      const auto part = ref::naive_forward(q_t, rows_as_tensor(K, cuts[c], cuts[c + 1]),
                                           rows_as_tensor(V, cuts[c], cuts[c + 1]), opts);
      parts.push_back(from_tensors(part.out, part.lse));
      ref::merge_into(acc_o, acc_lse, part.out, part.lse);
      print_partial(format("after chunk %d", c), from_tensors(acc_o, acc_lse));
      if (c == 0) {
        t.check(same_bits(from_tensors(acc_o, acc_lse), parts[0]),
                "chunk 0 merged into the empty accumulator is chunk 0, bit for bit");
      }
    }
    const Partial ref_merged = from_tensors(acc_o, acc_lse);
    t.check_all_close(ref_merged.o, naive.out.values(), 1e-15,
                      "merge_into, 3 chunks: O = naive_forward's (8 keys)");
    t.check_close(ref_merged.lse, naive.lse[0], 1e-15, "... and LSE");
    const Partial cab = merge(merge(parts[2], parts[0]), parts[1]);
    print_partial("in the order 2, 0, 1", cab);
    t.check_all_close(cab.o, ref_merged.o, 1e-15, "another order, the same o");
    t.say("The merge commutes and associates (up to rounding): any order of arrival will do.");

    t.stage("Large scores: why the merge stays in log space");
    t.say("Give every key a shared component mu along q, mu = 1600 q / |q|^2: each score rises by");
    t.say("q . mu / 2 = 800. Softmax sees only differences of scores, so p and o do not change;");
    t.say("lse rises by 800, and exp(lse) is far beyond the 1.8e308 that a double holds.");
    double qq = 0;
    for (double x : q) qq += x * x;
    Vector K_big(K);
    for (std::int64_t j = 0; j < N; ++j) {
      for (std::int64_t d = 0; d < D; ++d) K_big[j * D + d] += 1600 * q[d] / qq;
    }
    const Partial a_big = attend(q, K_big, V, 0, 4), b_big = attend(q, K_big, V, 4, N);
    print_partial("a, keys + mu", a_big);
    print_partial("b, keys + mu", b_big);
    const Partial lin = merge_linear(a_big, b_big);
    const Partial log_big = merge(a_big, b_big);
    print_partial("linear-space merge", lin);
    print_partial("log-space merge", log_big);
    print_partial("whole row, stage 1", full);
    t.check(has_nan(lin), "linear space: exp(lse_a) = inf, inf / inf = nan");
    // 1e-12: the scores near 800 are rounded to the 1.1e-13 spacing of doubles there, and
    // p_j = exp(s_j - lse) turns that into a relative error of the same size.
    t.check_all_close(log_big.o, full.o, 1e-12, "log space: o as in stage 1");
    t.check_close(log_big.lse, full.lse + 800, 1e-15, "log space: lse = stage 1's + 800");
    const auto naive_big = ref::naive_forward(q_t, rows_as_tensor(K_big, 0, N),
                                              rows_as_tensor(V, 0, N), opts);
    t.check_all_close(log_big.o, naive_big.out.values(), 1e-12,
                      "log space: o = naive_forward's with keys + mu");

    t.stage("-inf: an empty or fully masked chunk");
    t.say("A chunk with no visible key has o = 0 and lse = log(0) = -inf (causal masking makes");
    t.say("these: a query never sees later keys). exp(-inf - mx) = 0, so it drops out exactly:");
    const Partial empty{Vector(D, 0.0), -INFINITY};
    const Partial a_e = merge(a, empty);
    print_partial("merge(a, empty)", a_e);
    t.check(same_bits(a_e, a), "merge(a, empty) is a, bit for bit");
    t.say("But two empty sides: mx = -inf and lse_a - mx = -inf - (-inf) = nan.");
    const Partial nan_merge = merge_unguarded(empty, empty);
    print_partial("unguarded merge", nan_merge);
    t.check(has_nan(nan_merge), "the formula alone turns two empty partials into nan");
    const Partial guarded = merge(empty, empty);
    print_partial("guarded merge", guarded);
    t.check(guarded.lse == -INFINITY && guarded.o == Vector(D, 0.0),
            "guarded: two empty partials give the empty result (o = 0, lse = -inf)");

    t.say("Causal, with the reference kernel: the query at position 4, keys at 0..7. Chunk 6..7");
    t.say("is all in the future (lse = -inf); of chunk 3..5 it sees 3 and 4. Merged in the order");
    t.say("2, 0, 1, so the first merge is empty into empty:");
    acc_o.fill(0.0);
    acc_lse.fill(-INFINITY);
    for (int c : {2, 0, 1}) {
      const std::int64_t n = cuts[c + 1] - cuts[c];
      const Tensor<double> kc = rows_as_tensor(K, cuts[c], cuts[c + 1]);
      const Tensor<double> vc = rows_as_tensor(V, cuts[c], cuts[c + 1]);
      Tensor<double> o_c({1, 1, 1, D}, NAN), lse_c({1, 1, 1}, NAN);  // poisoned: must be written
      ref::KernelArgs args;
      args.qpos = {4, 1};          // query row 0 is at global position 4
      args.kpos = {cuts[c], 1};    // key row 0 of this chunk is at global position cuts[c]
      args.causal = true;
      args.scale = kScale;
      ref::block_forward(ringattn::seq_view(q_t), ringattn::seq_view(kc), ringattn::seq_view(vc),
                         args, ringattn::seq_view(o_c), ringattn::lse_view(lse_c));
      print_partial(format("chunk %d (%lld..%lld)", c, static_cast<long long>(cuts[c]),
                           static_cast<long long>(cuts[c] + n - 1)),
                    from_tensors(o_c, lse_c));
      ref::merge_into(acc_o, acc_lse, o_c, lse_c);
    }
    const Partial causal = from_tensors(acc_o, acc_lse);
    print_partial("merged", causal);
    const auto visible =
        ref::naive_forward(q_t, rows_as_tensor(K, 0, 5), rows_as_tensor(V, 0, 5), opts);
    t.check(!has_nan(causal), "no nan, though the first merge was empty into empty");
    t.check_all_close(causal.o, visible.out.values(), 1e-15,
                      "= naive_forward over keys 0..4 (what position 4 sees)");
    t.check_close(causal.lse, visible.lse[0], 1e-15, "... and its LSE");
    t.say("04 keeps this state as a running (m, l, O) that absorbs one key block at a time.");

    return t.finish();
  });
}
