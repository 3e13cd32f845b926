// Tutorial 02: softmax over chunks, correcting each with its sum of exponentials.
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
// What this one shows: a row too long for one piece (in ring attention: keys spread over many
// GPUs) can be softmaxed chunk by chunk. Each chunk c looks only at its own logits and keeps two
// numbers, its max m_c and its sum l_c = sum_{i in c} exp(x_i - m_c). From those alone come the
// global max m = max_c m_c and sum l = sum_c exp(m_c - m) l_c, and each chunk's exponentials are
// corrected by exp(m_c - m) / l. The result equals the one-pass softmax to rounding (1e-15).
//
// What it leaves out: attention outputs (the chunks here are only probabilities; 03 merges
// partial outputs), doing it with one running state instead of all chunks at once (04), and an
// empty or fully masked chunk (03).
//
// Run:   build/bin/tutorial_02_softmax_chunks [--step]   (--step pauses for Enter between stages)
// Needs: nothing beyond the build (the standard library only).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <random>
#include <vector>

#include "tutorial.hpp"

namespace {

using ringattn::tutorial::format;
using ringattn::tutorial::print_vector;
using Vector = std::vector<double>;

// The one-pass stable softmax of tutorial 01: p_i = exp(x_i - m) / sum_j exp(x_j - m).
Vector softmax(const Vector& x) {
  const double m = *std::max_element(x.begin(), x.end());
  Vector p(x.size());
  double l = 0;
  for (std::size_t i = 0; i < x.size(); ++i) l += (p[i] = std::exp(x[i] - m));
  for (double& pi : p) pi /= l;
  return p;
}

// What one chunk keeps after looking at its own logits x[begin, end).
struct Chunk {
  std::size_t begin = 0, end = 0;
  double m = 0;  // m_c = max_{i in c} x_i
  double l = 0;  // l_c = sum_{i in c} exp(x_i - m_c)
  Vector e;      // exp(x_i - m_c), the chunk's exponentials relative to its own max
};

Chunk local_pass(const Vector& x, std::size_t begin, std::size_t end) {
  Chunk c{begin, end, -INFINITY, 0, {}};
  for (std::size_t i = begin; i < end; ++i) c.m = std::max(c.m, x[i]);
  for (std::size_t i = begin; i < end; ++i) c.e.push_back(std::exp(x[i] - c.m));
  for (double ei : c.e) c.l += ei;
  return c;
}

// Softmax of x cut into chunks of the given sizes; `chunks` receives what each chunk kept.
Vector chunked_softmax(const Vector& x, const std::vector<std::size_t>& sizes,
                       std::vector<Chunk>& chunks) {
  chunks.clear();
  std::size_t begin = 0;
  for (std::size_t n : sizes) {
    chunks.push_back(local_pass(x, begin, begin + n));
    begin += n;
  }
  // Global max and sum from (m_c, l_c) alone:
  //   m = max_c m_c,   l = sum_c exp(m_c - m) l_c,
  // because sum_{i in c} exp(x_i - m) = exp(m_c - m) sum_{i in c} exp(x_i - m_c).
  double m = -INFINITY, l = 0;
  for (const Chunk& c : chunks) m = std::max(m, c.m);
  for (const Chunk& c : chunks) l += std::exp(c.m - m) * c.l;
  // p_i = exp(x_i - m_c) * exp(m_c - m) / l: every factor is <= 1 except the final 1 / l <= 1.
  Vector p(x.size());
  for (const Chunk& c : chunks) {
    const double correction = std::exp(c.m - m) / l;
    for (std::size_t i = c.begin; i < c.end; ++i) p[i] = c.e[i - c.begin] * correction;
  }
  return p;
}

Vector slice(const Vector& v, std::size_t begin, std::size_t end) {
  return Vector(v.begin() + static_cast<std::ptrdiff_t>(begin),
                v.begin() + static_cast<std::ptrdiff_t>(end));
}

double sum_of(const Vector& v) {
  double s = 0;
  for (double vi : v) s += vi;
  return s;
}

// max_i |a_i - b_i| / |b_i|: for probabilities down to 1e-270 an absolute difference says nothing.
double max_rel_diff(const Vector& a, const Vector& b) {
  double worst = a.size() == b.size() ? 0.0 : INFINITY;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    const double d = b[i] == 0 ? std::abs(a[i]) : std::abs(a[i] - b[i]) / std::abs(b[i]);
    if (!(d <= worst)) worst = std::isnan(d) ? NAN : d;
  }
  return worst;
}

bool any_nan(const Vector& v) {
  return std::any_of(v.begin(), v.end(), [](double vi) { return std::isnan(vi); });
}

// Uniform in [lo, hi) from the raw bits of the generator (std::mt19937_64's output is fixed by
// the standard; the distributions are not), so the numbers are the same everywhere.
double uniform(std::mt19937_64& gen, double lo, double hi) {
  return lo + (hi - lo) * static_cast<double>(gen() >> 11) * 0x1.0p-53;
}

}  // namespace

int main(int argc, char** argv) {
  return ringattn::tutorial::run([&] {
    ringattn::tutorial::Tutorial t(argc, argv, "02_softmax_chunks",
                                   "Softmax over chunks, corrected by each chunk's max and sum");

    const Vector x = {1.25, -0.5, 3.0, 0.75, 2.5, 4.25, -1.0, 0.0, -2.0, 1.5, 3.75, 0.25};
    const Vector p = softmax(x);

    t.stage("The row, and its one-pass softmax (the answer to reproduce)");
    ringattn::tutorial::print_matrix("x, 4 logits a line", x, 3, 4, "%8.4g");
    ringattn::tutorial::print_matrix("softmax(x), computed over all 12 at once", p, 3, 4, "%8.4f");
    t.say("Now pretend x is too long for one place: each line above is a chunk, seen alone.");

    t.stage("Each chunk alone: its max m_c and its sum l_c = sum exp(x_i - m_c)");
    std::vector<Chunk> chunks;
    const Vector pc = chunked_softmax(x, {4, 4, 4}, chunks);
    std::printf("  chunk  i           m_c      l_c     local softmax exp(x_i - m_c) / l_c\n");
    Vector local_all;
    for (std::size_t c = 0; c < chunks.size(); ++c) {
      const Chunk& ch = chunks[c];
      std::printf("  %zu      %2zu..%-2zu  %7.4g  %7.4f    [", c, ch.begin, ch.end - 1, ch.m, ch.l);
      for (double ei : ch.e) {
        std::printf(" %7.4f", ei / ch.l);
        local_all.push_back(ei / ch.l);
      }
      std::printf(" ]\n");
    }
    t.say("Each local softmax sums to 1 over its own chunk, so the three together sum to 3:");
    t.say("they are right relative to each other inside a chunk, but not across chunks.");
    t.check_close(sum_of(local_all), 3.0, 1e-15, "the local softmaxes together sum to 3, not 1");

    t.stage("The global max m and sum l, from (m_c, l_c) alone");
    t.say("m = max_c m_c.  And since exp(x_i - m) = exp(x_i - m_c) * exp(m_c - m), each chunk's");
    t.say("share of the global sum is exp(m_c - m) * l_c:  l = sum_c exp(m_c - m) * l_c.");
    double m = -INFINITY, l = 0;
    for (const Chunk& c : chunks) m = std::max(m, c.m);
    std::printf("  chunk  m_c      exp(m_c - m)  l_c      exp(m_c - m) * l_c\n");
    for (std::size_t c = 0; c < chunks.size(); ++c) {
      const double f = std::exp(chunks[c].m - m);
      std::printf("  %zu      %-7.4g  %-12.6f  %-7.4f  %.6f\n", c, chunks[c].m, f, chunks[c].l,
                  f * chunks[c].l);
      l += f * chunks[c].l;
    }
    std::printf("  m = %.4g   l = %.10f   (from the three pairs (m_c, l_c) alone)\n", m, l);
    double l_one_pass = 0;
    for (double xi : x) l_one_pass += std::exp(xi - m);
    t.check_close(l, l_one_pass, 1e-15, "l = sum_c exp(m_c - m) l_c equals sum_i exp(x_i - m)");

    t.stage("Correcting each chunk: p_i = exp(x_i - m_c) * exp(m_c - m) / l");
    t.say("Each chunk rescales the exponentials it already has; no chunk looks at x again.");
    t.say("Equivalently: local softmax * w_c, with w_c = exp(m_c - m) l_c / l the chunk's share.");
    Vector w, share;
    std::printf("  chunk  w_c        one-pass p summed over the chunk\n");
    for (std::size_t c = 0; c < chunks.size(); ++c) {
      w.push_back(std::exp(chunks[c].m - m) * chunks[c].l / l);
      share.push_back(sum_of(slice(p, chunks[c].begin, chunks[c].end)));
      std::printf("  %zu      %.6f   %.6f\n", c, w.back(), share.back());
    }
    t.check_all_close(w, share, 1e-15, "w_c is the probability mass of chunk c");
    ringattn::tutorial::print_matrix("chunked softmax", pc, 3, 4, "%8.4f");
    t.check_all_close(pc, p, 1e-15, "chunked softmax equals the one-pass softmax");

    t.stage("Large logits and uneven chunks");
    t.say("Every factor above is exp of something <= 0, so x*100 is as safe as x (tutorial 01).");
    Vector y(x);
    for (double& yi : y) yi *= 100;
    const Vector py = chunked_softmax(y, {5, 4, 3}, chunks);
    std::printf("  x*100 in chunks of 5, 4, 3\n  chunk  m_c    l_c        chunked p\n");
    for (std::size_t c = 0; c < chunks.size(); ++c) {
      std::printf("  %zu      %-5g  %-9.6f  [", c, chunks[c].m, chunks[c].l);
      for (std::size_t i = chunks[c].begin; i < chunks[c].end; ++i) std::printf(" %.3e", py[i]);
      std::printf(" ]\n");
    }
    t.say("l_c = 1: in each chunk one logit beats the rest by >= 175, and exp(-175) is far");
    t.say("below the 1.1e-16 spacing of doubles near 1.");
    const Vector py_one_pass = softmax(y);
    const double rel_y = max_rel_diff(py, py_one_pass);
    t.check(!any_nan(py), "chunked softmax(x*100) has no nan");
    // Relative, because the probabilities span 1 to 1e-272: a few rounding steps of exp and
    // products, each 1.1e-16 relative.
    t.check(rel_y <= 1e-14, "chunked softmax(x*100) equals the one-pass softmax",
            format("max relative diff %.2e (tolerance 1e-14)", rel_y));

    // A longer random row: 1000 logits in [-30, 30), cut at random places into 7 chunks.
    std::mt19937_64 gen(2024);
    Vector z(1000);
    for (double& zi : z) zi = uniform(gen, -30, 30);
    std::vector<std::size_t> cuts = {0, z.size()};
    for (int i = 0; i < 6; ++i) cuts.push_back(1 + static_cast<std::size_t>(uniform(gen, 0, 998)));
    std::sort(cuts.begin(), cuts.end());
    std::vector<std::size_t> sizes;
    for (std::size_t i = 1; i < cuts.size(); ++i) sizes.push_back(cuts[i] - cuts[i - 1]);
    const Vector pz = chunked_softmax(z, sizes, chunks);
    std::printf("  1000 random logits in chunks of");
    for (std::size_t n : sizes) std::printf(" %zu", n);
    std::printf("\n");
    t.check_close(sum_of(pz), 1.0, 1e-14, "the chunked probabilities sum to 1");
    const Vector pz_one_pass = softmax(z);
    t.check_all_close(pz, pz_one_pass, 1e-15,
                      "chunked softmax of 1000 logits equals the one-pass one");
    // 1e-13 relative: x_i - m_c and m_c - m are rounded to the spacing of doubles near 60
    // (7e-15), and exp turns an absolute error in its argument into the same relative error.
    const double rel_z = max_rel_diff(pz, pz_one_pass);
    t.check(rel_z <= 1e-13, "the same, entry by entry relative to each probability",
            format("max relative diff %.2e (tolerance 1e-13)", rel_z));
    t.say("Two numbers per chunk are all the chunks must exchange. 03 does the same for outputs.");

    return t.finish();
  });
}
