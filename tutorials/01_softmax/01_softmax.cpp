// Tutorial 01: softmax, and why the naive one overflows.
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
// What this one shows: softmax(x)_i = exp(x_i) / sum_j exp(x_j) written as defined works for small
// x, but exp overflows above x = 709.78 in double (88.72 in float), and then a probability is
// inf / inf = nan; when every x is very negative, every exp underflows and it is 0 / 0 = nan.
// Subtracting the row maximum m first changes no number (exp(-m) cancels) and makes both
// failures impossible: the largest term is exp(0) = 1, so the sum lies in [1, n].
//
// What it leaves out: the softmax of a row that does not fit in one piece (02), merging partial
// results (03), and attention itself (04 onwards).
//
// Run:   build/bin/tutorial_01_softmax [--step]     (--step pauses for Enter between stages)
// Needs: nothing beyond the build (the standard library only).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <vector>

#include "tutorial.hpp"

namespace {

using ringattn::tutorial::format;
using ringattn::tutorial::print_vector;
using Vector = std::vector<double>;

// softmax(x)_i = exp(x_i) / sum_j exp(x_j): the definition, as written.
Vector naive_softmax(const Vector& x) {
  Vector p(x.size());
  double sum = 0;
  for (std::size_t i = 0; i < x.size(); ++i) sum += (p[i] = std::exp(x[i]));
  for (double& pi : p) pi /= sum;
  return p;
}

// softmax(x)_i = exp(x_i - m) / sum_j exp(x_j - m), m = max_j x_j: every exponent is <= 0.
Vector stable_softmax(const Vector& x) {
  double m = -INFINITY;
  for (double xi : x) m = std::max(m, xi);
  Vector p(x.size());
  double l = 0;
  for (std::size_t i = 0; i < x.size(); ++i) l += (p[i] = std::exp(x[i] - m));
  for (double& pi : p) pi /= l;
  return p;
}

double sum_of(const Vector& v) {
  double s = 0;
  for (double vi : v) s += vi;
  return s;
}

Vector map(const Vector& x, double (*f)(double)) {
  Vector y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = f(x[i]);
  return y;
}

Vector plus(const Vector& x, double c) {
  Vector y(x);
  for (double& yi : y) yi += c;
  return y;
}

Vector times(const Vector& x, double c) {
  Vector y(x);
  for (double& yi : y) yi *= c;
  return y;
}

// printf writes a nan whose sign bit is set (inf / inf, 0 / 0 on x86) as "-nan"; the sign of a
// nan means nothing, so it is shown as "nan".
Vector shown(Vector v) {
  for (double& vi : v) vi = std::isnan(vi) ? std::fabs(vi) : vi;
  return v;
}

bool all_nan(const Vector& v) {
  for (double vi : v) {
    if (!std::isnan(vi)) return false;
  }
  return true;
}

bool any_nan(const Vector& v) {
  for (double vi : v) {
    if (std::isnan(vi)) return true;
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  return ringattn::tutorial::run([&] {
    ringattn::tutorial::Tutorial t(argc, argv, "01_softmax",
                                   "Softmax, why the naive one overflows, and the stable form");

    // The logits of one row. Multiples of 1/4, so x*100 and x-1000 are exact in double and every
    // difference below is the one written here.
    const Vector x = {2.0, 7.5, 3.25, -1.0, 0.5};

    t.stage("The definition: softmax(x)_i = exp(x_i) / sum_j exp(x_j)");
    t.say("Softmax turns a row of scores into probabilities: positive, summing to 1.");
    print_vector("x", x, "%10.4g");
    const Vector ex = map(x, [](double v) { return std::exp(v); });
    print_vector("exp(x)", ex, "%10.4g");
    std::printf("  %-14s   %.6g\n", "sum exp(x)", sum_of(ex));
    const Vector p = naive_softmax(x);
    print_vector("softmax(x)", p, "%10.4g");
    t.check_close(sum_of(p), 1.0, 1e-15, "naive softmax(x) sums to 1");
    // A row whose answer is known without computing any softmax: exp(log w_i) = w_i, so the
    // probabilities are w / sum(w) = [0.1, 0.2, 0.3, 0.4].
    const Vector w = {1, 2, 3, 4};
    const Vector pw = naive_softmax(map(w, [](double v) { return std::log(v); }));
    print_vector("softmax(log w)", pw, "%10.4g");
    t.check_all_close(pw, {0.1, 0.2, 0.3, 0.4}, 1e-15,
                      "softmax(log [1 2 3 4]) = [1 2 3 4] / 10, a known answer");

    t.stage("Where exp runs out of range");
    t.say(format("exp(x) overflows to inf above log(DBL_MAX) = %.5f in double,",
                 std::log(DBL_MAX)));
    t.say(format("and above log(FLT_MAX) = %.5f in float (what GPU kernels compute in).",
                 std::log(static_cast<double>(FLT_MAX))));
    t.say(format("exp(709) = %.4e   exp(710) = %g   exp(88.f) = %.4e   exp(89.f) = %g",
                 std::exp(709.0), std::exp(710.0), static_cast<double>(std::exp(88.0f)),
                 static_cast<double>(std::exp(89.0f))));
    t.check(std::isfinite(std::exp(709.0)) && std::isinf(std::exp(710.0)),
            "double: exp(709) is finite, exp(710) is inf");
    t.check(std::isfinite(std::exp(88.0f)) && std::isinf(std::exp(89.0f)),
            "float: exp(88) is finite, exp(89) is inf");
    t.say("Attention scores are q.k / sqrt(D); trained models do produce scores in the hundreds.");

    t.stage("Naive softmax of x*100: inf / inf = nan");
    const Vector y = times(x, 100.0);
    print_vector("y = x*100", y, "%10.4g");
    const Vector ey = map(y, [](double v) { return std::exp(v); });
    print_vector("exp(y)", ey, "%10.3e");
    const double sum_ey = sum_of(ey);
    std::printf("  %-14s   %g   (one inf term makes the sum inf)\n", "sum exp(y)", sum_ey);
    std::printf("  %-14s   exp(750) / sum = %g / %g = %g\n", "p[1]", ey[1], sum_ey,
                std::fabs(ey[1] / sum_ey));
    const Vector py = naive_softmax(y);
    print_vector("naive(y)", shown(py), "%10.4g");
    t.check(std::isinf(ey[1]) && std::isinf(sum_ey), "exp(750) and the sum are inf");
    t.check(std::isnan(py[1]), "naive softmax(x*100)[1] = inf / inf = nan");
    t.check(py[0] == 0 && py[2] == 0 && py[3] == 0 && py[4] == 0,
            "the other entries are finite / inf = exactly 0");
    t.check(std::isnan(sum_of(py)), "so the row sums to nan, not 1");
    t.say("One nan poisons every sum, max and matrix product it enters: a whole output row.");
    const Vector xu = plus(x, -1000.0);
    const Vector pu = naive_softmax(xu);
    t.say("The other direction: x - 1000 underflows, every exp(x_i) = 0, so p = 0 / 0.");
    print_vector("x - 1000", xu, "%10.6g");
    print_vector("naive(x-1000)", shown(pu), "%10.4g");
    t.check(all_nan(pu), "naive softmax(x - 1000) is nan everywhere (0 / 0)");

    t.stage("The stable form: subtract the max m first");
    t.say("exp(x_i - m) / sum_j exp(x_j - m) = exp(x_i) / sum_j exp(x_j): exp(-m) cancels.");
    t.say("Now the largest term is exp(0) = 1, every other is in (0, 1], and the sum l is in");
    t.say("[1, n]: nothing overflows, and the denominator is never 0.");
    const Vector ps = stable_softmax(x);
    print_vector("naive(x)", p, "%10.6g");
    print_vector("stable(x)", ps, "%10.6g");
    t.check_all_close(ps, p, 1e-15, "where naive works, stable gives the same numbers");

    t.stage("The stable form where naive fails");
    const Vector pys = stable_softmax(y);
    print_vector("stable(x*100)", pys, "%10.3e");
    t.check(!any_nan(pys), "stable softmax(x*100) has no nan");
    t.check_close(sum_of(pys), 1.0, 1e-15, "stable softmax(x*100) sums to 1");
    // p_i / p_j = exp(y_i - y_j), whatever the denominator: a check independent of the sum.
    t.check_close(pys[2] / pys[0], std::exp(y[2] - y[0]), 1e-14,
                  "p[2] / p[0] = exp(325 - 200) = exp(125)");
    t.say("750 beats 325 by 425: p[1] = 1 to double precision and the rest are ~e^-425 or less.");
    // The known answer again, pushed out of range: softmax(1000 + log w) = w / sum(w).
    const Vector z = plus(map(w, [](double v) { return std::log(v); }), 1000.0);
    print_vector("z=1000+log w", z, "%10.6g");
    print_vector("naive(z)", shown(naive_softmax(z)), "%10.4g");
    print_vector("stable(z)", stable_softmax(z), "%10.4g");
    t.check(all_nan(naive_softmax(z)), "naive softmax(1000 + log w) is nan everywhere");
    // 1e-12, not 1e-15: 1000 + log(2) is itself rounded, to the 1.1e-13 spacing of doubles near
    // 1000, and that rounding is in the logits before any softmax runs.
    t.check_all_close(stable_softmax(z), {0.1, 0.2, 0.3, 0.4}, 1e-12,
                      "stable softmax(1000 + log w) = [1 2 3 4] / 10");
    const Vector pus = stable_softmax(xu);
    print_vector("stable(x-1000)", pus, "%10.6g");
    bool identical = pus.size() == ps.size();
    for (std::size_t i = 0; identical && i < ps.size(); ++i) identical = pus[i] == ps[i];
    t.check(identical, "stable softmax(x - 1000) equals stable softmax(x) bit for bit",
            "x_i - m is the same exact number for both");
    t.say("Every kernel in this project computes softmax this way. 02 splits the row in chunks.");

    return t.finish();
  });
}
