#include "accuracy.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "ringattn/core/error.hpp"
#include "ringattn/reference/attention.hpp"

namespace ringattn::cli {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr float kInfF = std::numeric_limits<float>::infinity();

}  // namespace

void parallel_for(std::int64_t n, int threads, const std::function<void(std::int64_t)>& f) {
  const auto t = static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(threads, n)));
  if (t == 1) {
    for (std::int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  std::atomic<std::int64_t> next{0};
  std::vector<std::thread> pool;
  pool.reserve(static_cast<std::size_t>(t));
  for (int w = 0; w < t; ++w) {
    pool.emplace_back([&] {
      for (std::int64_t i; (i = next.fetch_add(1)) < n;) f(i);
    });
  }
  for (auto& th : pool) th.join();
}

namespace {

// Sizes and the mask of the problem.
struct Dims {
  std::int64_t B = 0, Sq = 0, Skv = 0, Hq = 0, Hkv = 0, D = 0, group = 1, off = 0;
  bool causal = false;

  const float* qrow(const Tensor<float>& t, std::int64_t b, std::int64_t i, std::int64_t h) const {
    return t.data() + ((b * Sq + i) * Hq + h) * D;
  }
  const float* krow(const Tensor<float>& t, std::int64_t b, std::int64_t j, std::int64_t hk) const {
    return t.data() + ((b * Skv + j) * Hkv + hk) * D;
  }
  // Query i sees keys [0, key_end(i)): causal compares positions, queries end-aligned (i + off).
  std::int64_t key_end(std::int64_t i) const { return causal ? std::clamp<std::int64_t>(i + off + 1, 0, Skv) : Skv; }
  // Key j is seen by queries [query_begin(j), S_q).
  std::int64_t query_begin(std::int64_t j) const { return causal ? std::clamp<std::int64_t>(j - off, 0, Sq) : 0; }
  std::int64_t lse_index(std::int64_t b, std::int64_t h, std::int64_t i) const { return (b * Hq + h) * Sq + i; }
};

Dims dims_of(const CheckProblem& p) {
  Dims d;
  d.B = p.q->dim(0), d.Sq = p.q->dim(1), d.Hq = p.q->dim(2), d.D = p.q->dim(3);
  d.Skv = p.k->dim(1), d.Hkv = p.k->dim(2);
  d.group = d.Hq / d.Hkv;
  d.off = d.Skv - d.Sq;
  d.causal = p.causal;
  return d;
}

// Four partial sums: the float64 result is as exact as needed, and the additions no longer wait
// on each other (a 256k-token check is dominated by these dot products).
double dot64(const float* a, const float* b, std::int64_t n) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  std::int64_t x = 0;
  for (; x + 4 <= n; x += 4) {
    s0 += static_cast<double>(a[x]) * static_cast<double>(b[x]);
    s1 += static_cast<double>(a[x + 1]) * static_cast<double>(b[x + 1]);
    s2 += static_cast<double>(a[x + 2]) * static_cast<double>(b[x + 2]);
    s3 += static_cast<double>(a[x + 3]) * static_cast<double>(b[x + 3]);
  }
  for (; x < n; ++x) s0 += static_cast<double>(a[x]) * static_cast<double>(b[x]);
  return (s0 + s1) + (s2 + s3);
}

float dot32(const float* a, const float* b, std::int64_t n) {
  float s = 0.0f;
  for (std::int64_t x = 0; x < n; ++x) s += a[x] * b[x];
  return s;
}

// ---- float64, one query row: O_i, LSE_i, dQ_i (exact) ----------------------------------------
// s_j = scale q_i . k_j; LSE_i = log sum_j exp(s_j); P_ij = exp(s_j - LSE_i); O_i = sum_j P_ij v_j;
// D_i = dO_i . O_i; dQ_i = scale sum_j P_ij (dO_i . v_j - D_i) k_j.
struct Scratch64 {
  std::vector<double> s;
};

void query_row64(const Dims& d, const CheckProblem& p, std::int64_t b, std::int64_t h, std::int64_t i, double* o,
                 double* lse, double* dq, double* max_logit, Scratch64& w) {
  const std::int64_t hk = h / d.group, jend = d.key_end(i);
  const float* q = d.qrow(*p.q, b, i, h);
  std::fill(o, o + d.D, 0.0);
  if (dq) std::fill(dq, dq + d.D, 0.0);
  if (jend == 0) {
    *lse = -kInf;
    return;
  }
  w.s.resize(static_cast<std::size_t>(jend));
  double m = -kInf, big = 0.0;
  for (std::int64_t j = 0; j < jend; ++j) {
    const double s = p.scale * dot64(q, d.krow(*p.k, b, j, hk), d.D);
    w.s[static_cast<std::size_t>(j)] = s;
    m = std::max(m, s);
    big = std::max(big, std::fabs(s));
  }
  *max_logit = std::max(*max_logit, big);
  double l = 0.0;
  for (std::int64_t j = 0; j < jend; ++j) l += std::exp(w.s[static_cast<std::size_t>(j)] - m);
  *lse = m + std::log(l);
  for (std::int64_t j = 0; j < jend; ++j) {
    double& pj = w.s[static_cast<std::size_t>(j)];
    pj = std::exp(pj - *lse);
    const float* v = d.krow(*p.v, b, j, hk);
    for (std::int64_t x = 0; x < d.D; ++x) o[x] += pj * v[x];
  }
  if (!dq) return;
  const float* g = d.qrow(*p.dout, b, i, h);
  double delta = 0.0;
  for (std::int64_t x = 0; x < d.D; ++x) delta += static_cast<double>(g[x]) * o[x];
  for (std::int64_t j = 0; j < jend; ++j) {
    const double pj = w.s[static_cast<std::size_t>(j)];
    const double coef = pj * (dot64(g, d.krow(*p.v, b, j, hk), d.D) - delta);
    const float* k = d.krow(*p.k, b, j, hk);
    for (std::int64_t x = 0; x < d.D; ++x) dq[x] += coef * k[x];
  }
  for (std::int64_t x = 0; x < d.D; ++x) dq[x] *= p.scale;
}

// Largest |scale q_i . k_j| over the keys query row i sees.
double row_max_logit(const Dims& d, const CheckProblem& p, std::int64_t b, std::int64_t h, std::int64_t i) {
  const std::int64_t hk = h / d.group, jend = d.key_end(i);
  const float* q = d.qrow(*p.q, b, i, h);
  double big = 0.0;
  for (std::int64_t j = 0; j < jend; ++j) big = std::max(big, std::fabs(p.scale * dot64(q, d.krow(*p.k, b, j, hk), d.D)));
  return big;
}

// ---- float64, one key row: dK_j, dV_j given every query row's LSE_i and D_i ------------------
// dV_j = sum_i P_ij dO_i; dK_j = scale sum_i P_ij (dO_i . v_j - D_i) q_i, over the query heads of
// the key head's group and the query rows that see key j.
void key_row64(const Dims& d, const CheckProblem& p, std::int64_t b, std::int64_t hk, std::int64_t j,
               const std::vector<double>& lse, const std::vector<double>& delta, double* dk, double* dv,
               double* max_logit) {
  std::fill(dk, dk + d.D, 0.0);
  std::fill(dv, dv + d.D, 0.0);
  const float* k = d.krow(*p.k, b, j, hk);
  const float* v = d.krow(*p.v, b, j, hk);
  double big = 0.0;
  for (std::int64_t h = hk * d.group; h < (hk + 1) * d.group; ++h) {
    for (std::int64_t i = d.query_begin(j); i < d.Sq; ++i) {
      const float* q = d.qrow(*p.q, b, i, h);
      const float* g = d.qrow(*p.dout, b, i, h);
      const double s = p.scale * dot64(q, k, d.D);
      big = std::max(big, std::fabs(s));
      const std::int64_t li = d.lse_index(b, h, i);
      const double pij = std::exp(s - lse[static_cast<std::size_t>(li)]);
      const double coef = pij * (dot64(g, v, d.D) - delta[static_cast<std::size_t>(li)]);
      for (std::int64_t x = 0; x < d.D; ++x) {
        dv[x] += pij * g[x];
        dk[x] += coef * q[x];
      }
    }
  }
  for (std::int64_t x = 0; x < d.D; ++x) dk[x] *= p.scale;
  *max_logit = std::max(*max_logit, big);
}

// ---- the naive low-precision computation (flash-attention's baseline) -------------------------
// S = (scale Q) K^T rounded, P = softmax(S) in float32 rounded, O = P V rounded; backward as
// autograd through those ops: dP = dO V^T rounded, D = rowsum(P dP), dS = P (dP - D) rounded,
// dQ = dS K (times scale), dK = dS^T (scale Q), dV = P^T dO, each accumulated in float32 and
// rounded. The same steps as lowp_naive_forward in tests/cuda/cuda_kernel_test.cpp.
struct ScratchLow {
  std::vector<float> qs, s, dp;
};

void query_row_low(Precision pr, const Dims& d, const CheckProblem& p, std::int64_t b, std::int64_t h, std::int64_t i,
                   float* o, float* lse, float* dq, float* delta, ScratchLow& w) {
  const auto rnd = [pr](float x) { return round_to(pr, x); };
  const auto scale = static_cast<float>(p.scale);
  const std::int64_t hk = h / d.group, jend = d.key_end(i);
  std::fill(o, o + d.D, 0.0f);
  if (dq) std::fill(dq, dq + d.D, 0.0f);
  *delta = 0.0f;
  if (jend == 0) {
    *lse = -kInfF;
    return;
  }
  const float* q = d.qrow(*p.q, b, i, h);
  w.qs.resize(static_cast<std::size_t>(d.D));
  for (std::int64_t x = 0; x < d.D; ++x) w.qs[static_cast<std::size_t>(x)] = rnd(q[x] * scale);
  w.s.resize(static_cast<std::size_t>(jend));
  float m = -kInfF;
  for (std::int64_t j = 0; j < jend; ++j) {
    const float s = rnd(dot32(w.qs.data(), d.krow(*p.k, b, j, hk), d.D));
    w.s[static_cast<std::size_t>(j)] = s;
    m = std::max(m, s);
  }
  float sum = 0.0f;
  for (std::int64_t j = 0; j < jend; ++j) sum += std::exp(w.s[static_cast<std::size_t>(j)] - m);
  *lse = m + std::log(sum);
  std::vector<float> acc(static_cast<std::size_t>(d.D), 0.0f);
  for (std::int64_t j = 0; j < jend; ++j) {
    float& pj = w.s[static_cast<std::size_t>(j)];
    pj = rnd(std::exp(pj - m) / sum);
    const float* v = d.krow(*p.v, b, j, hk);
    for (std::int64_t x = 0; x < d.D; ++x) acc[static_cast<std::size_t>(x)] += pj * v[x];
  }
  for (std::int64_t x = 0; x < d.D; ++x) o[x] = rnd(acc[static_cast<std::size_t>(x)]);
  if (!dq) return;
  const float* g = d.qrow(*p.dout, b, i, h);
  w.dp.resize(static_cast<std::size_t>(jend));
  float dsum = 0.0f;
  for (std::int64_t j = 0; j < jend; ++j) {
    const float dpj = rnd(dot32(g, d.krow(*p.v, b, j, hk), d.D));
    w.dp[static_cast<std::size_t>(j)] = dpj;
    dsum += w.s[static_cast<std::size_t>(j)] * dpj;
  }
  *delta = dsum;
  std::fill(acc.begin(), acc.end(), 0.0f);
  for (std::int64_t j = 0; j < jend; ++j) {
    const auto ju = static_cast<std::size_t>(j);
    const float ds = rnd(w.s[ju] * (w.dp[ju] - dsum));
    const float* k = d.krow(*p.k, b, j, hk);
    for (std::int64_t x = 0; x < d.D; ++x) acc[static_cast<std::size_t>(x)] += ds * k[x];
  }
  for (std::int64_t x = 0; x < d.D; ++x) dq[x] = rnd(rnd(acc[static_cast<std::size_t>(x)]) * scale);
}

void key_row_low(Precision pr, const Dims& d, const CheckProblem& p, std::int64_t b, std::int64_t hk, std::int64_t j,
                 const std::vector<float>& lse, const std::vector<float>& delta, float* dk, float* dv, ScratchLow& w) {
  const auto rnd = [pr](float x) { return round_to(pr, x); };
  const auto scale = static_cast<float>(p.scale);
  const float* k = d.krow(*p.k, b, j, hk);
  const float* v = d.krow(*p.v, b, j, hk);
  std::vector<float> ak(static_cast<std::size_t>(d.D), 0.0f), av(static_cast<std::size_t>(d.D), 0.0f);
  w.qs.resize(static_cast<std::size_t>(d.D));
  for (std::int64_t h = hk * d.group; h < (hk + 1) * d.group; ++h) {
    for (std::int64_t i = d.query_begin(j); i < d.Sq; ++i) {
      const float* q = d.qrow(*p.q, b, i, h);
      const float* g = d.qrow(*p.dout, b, i, h);
      for (std::int64_t x = 0; x < d.D; ++x) w.qs[static_cast<std::size_t>(x)] = rnd(q[x] * scale);
      const float s = rnd(dot32(w.qs.data(), k, d.D));
      const auto li = static_cast<std::size_t>(d.lse_index(b, h, i));
      const float pij = rnd(std::exp(s - lse[li]));
      const float ds = rnd(pij * (rnd(dot32(g, v, d.D)) - delta[li]));
      for (std::int64_t x = 0; x < d.D; ++x) {
        av[static_cast<std::size_t>(x)] += pij * g[x];
        ak[static_cast<std::size_t>(x)] += ds * w.qs[static_cast<std::size_t>(x)];
      }
    }
  }
  for (std::int64_t x = 0; x < d.D; ++x) {
    dk[x] = rnd(ak[static_cast<std::size_t>(x)]);
    dv[x] = rnd(av[static_cast<std::size_t>(x)]);
  }
}

// ---- judging ---------------------------------------------------------------------------------

// The checked elements of one output: the implementation's value, the float64 reference, the
// naive low-precision value (low precision only) and the element's flat index.
struct Series {
  std::vector<double> got, ref, naive;
  std::vector<std::int64_t> flat;
  void add(double g, double r, std::int64_t f) {
    got.push_back(g);
    ref.push_back(r);
    flat.push_back(f);
  }
};

std::string index_text(const std::vector<std::int64_t>& shape, std::int64_t flat) {
  std::vector<std::int64_t> idx(shape.size());
  for (std::size_t n = shape.size(); n-- > 0;) {
    idx[n] = flat % shape[n];
    flat /= shape[n];
  }
  std::ostringstream os;
  os << "(";
  for (std::size_t n = 0; n < idx.size(); ++n) os << (n ? ", " : "") << idx[n];
  os << ")";
  return os.str();
}

OutputCheck judge(const std::string& name, const Series& s, const std::vector<std::int64_t>& shape, Precision pr,
                  bool gradient, bool is_lse, double max_logit) {
  OutputCheck c;
  c.name = name;
  c.elements = static_cast<std::int64_t>(s.got.size());
  const bool low = pr != Precision::F32;
  double m = 0.0, floor = 0.0;
  for (double r : s.ref) {
    if (std::isfinite(r)) {
      m = std::max(m, std::fabs(r));
      if (low) floor = std::max(floor, std::fabs(static_cast<double>(round_to(pr, static_cast<float>(r))) - r));
    }
  }
  const double base = gradient ? 3e-5 : 1e-5;
  const double grow = base * (1.0 + max_logit / 4.0);
  const double atol = is_lse ? grow * (1.0 + m) : grow * std::max(1.0, m);
  const double rtol = base;
  long double diff2 = 0, ref2 = 0, ndiff2 = 0;
  std::int64_t worst = -1;
  double naive_max = 0.0;
  auto note_bad = [&](std::size_t n, const char* why) {
    if (c.bad++ == 0) {
      std::ostringstream os;
      os.precision(9);
      os << why << " at " << index_text(shape, s.flat[n]) << ": got " << s.got[n] << ", reference " << s.ref[n];
      c.first_bad = os.str();
    }
  };
  for (std::size_t n = 0; n < s.got.size(); ++n) {
    const double a = s.got[n], e = s.ref[n];
    if (std::isnan(a) || std::isnan(e)) {
      note_bad(n, "NaN");
      continue;
    }
    if (std::isinf(a) || std::isinf(e)) {
      if (a != e) note_bad(n, "infinity mismatch");
      continue;
    }
    const double err = std::fabs(a - e);
    if (worst < 0 || err > c.max_err) worst = static_cast<std::int64_t>(n);
    c.max_err = std::max(c.max_err, err);
    diff2 += static_cast<long double>(err) * err;
    ref2 += static_cast<long double>(e) * e;
    if (low) {
      const double ne = std::fabs(s.naive[n] - e);
      naive_max = std::isnan(ne) ? kInf : std::max(naive_max, ne);
      ndiff2 += static_cast<long double>(ne) * ne;
    } else if (!(err <= atol + rtol * std::fabs(e))) {
      note_bad(n, "outside the bound");
    }
  }
  const auto rel = [&](long double d2) {
    return ref2 > 0 ? static_cast<double>(std::sqrt(d2 / ref2)) : static_cast<double>(std::sqrt(d2));
  };
  c.rel_err = rel(diff2);
  if (low) {
    c.naive_max_err = naive_max;
    c.naive_rel_err = rel(ndiff2);
    c.bound = (gradient ? 3.0 : 2.0) * naive_max + floor;
    if (c.bad == 0 && !(c.max_err <= c.bound) && worst >= 0) {
      const auto n = static_cast<std::size_t>(worst);
      std::ostringstream os;
      os.precision(9);
      os << "largest error at " << index_text(shape, s.flat[n]) << ": got " << s.got[n] << ", reference "
         << s.ref[n];
      c.first_bad = os.str();
    }
    c.pass = c.bad == 0 && c.max_err <= c.bound;
  } else {
    c.bound = atol;
    c.rel_bound = grow;
    if (c.bad == 0 && !(c.rel_err <= c.rel_bound)) c.first_bad = "relative error above its bound";
    c.pass = c.bad == 0 && c.rel_err <= c.rel_bound;
  }
  return c;
}

void check_shape(const Tensor<float>& t, const std::vector<std::int64_t>& want, const char* what) {
  require(t.shape() == want, "the implementation's ", what, " is ", shape_string(t.shape()), " but should be ",
          shape_string(want));
}

}  // namespace

Precision parse_precision(std::string_view name) {
  if (name == "fp32") return Precision::F32;
  if (name == "fp16") return Precision::F16;
  if (name == "bf16") return Precision::BF16;
  fail("unknown dtype '", printable(name), "': expected fp32, fp16 or bf16");
}

std::string_view to_string(Precision p) {
  switch (p) {
    case Precision::F32: return "fp32";
    case Precision::F16: return "fp16";
    case Precision::BF16: return "bf16";
  }
  return "?";
}

float round_to(Precision p, float x) {
  if (p == Precision::F32 || !std::isfinite(x) || x == 0.0f) return x;
  // Keep `bits` significant bits: scale the quantum of x's binade to 1, round to an integer with
  // the default mode (nearest, ties to even), scale back (both scalings are exact powers of two).
  const int bits = p == Precision::BF16 ? 8 : 11;
  const float a = std::fabs(x);
  if (p == Precision::F16) {
    if (a >= 65520.0f) return std::copysign(kInfF, x);  // 65504 + half an ulp and above
    if (a < 6.103515625e-05f) return std::nearbyint(x * 16777216.0f) / 16777216.0f;  // subnormal: quantum 2^-24
  }
  int e = 0;
  (void)std::frexp(a, &e);  // a = m 2^e, m in [0.5, 1)
  const float quantum = std::ldexp(1.0f, e - bits);
  return std::nearbyint(x / quantum) * quantum;  // a carry past the largest bf16 gives infinity
}

std::vector<std::int64_t> sample_positions(std::int64_t seq_len, int count, std::uint64_t seed,
                                           const std::optional<SequenceLayout>& layout) {
  std::vector<std::int64_t> all;
  if (count >= seq_len) {
    for (std::int64_t i = 0; i < seq_len; ++i) all.push_back(i);
    return all;
  }
  std::set<std::int64_t> rows = {0, seq_len - 1};
  const auto add_near = [&](std::int64_t pos) {
    for (std::int64_t d = -1; d <= 1; ++d) {
      if (pos + d >= 0 && pos + d < seq_len) rows.insert(pos + d);
    }
  };
  if (layout) {
    for (int r = 0; r < layout->ranks(); ++r) {
      for (const Segment& s : layout->segments(r)) {
        if (s.length == 0) continue;
        add_near(s.start);
        add_near(s.last());
      }
    }
  }
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int64_t> pick(0, seq_len - 1);
  while (static_cast<std::int64_t>(rows.size()) < count) rows.insert(pick(rng));
  return {rows.begin(), rows.end()};
}

CheckReport check_against_float64(const CheckProblem& p, const CheckResults& got, const CheckOptions& opt) {
  const Dims d = dims_of(p);
  const bool backward = p.dout != nullptr;
  const bool low = opt.precision != Precision::F32;
  const std::vector<std::int64_t> q_shape = p.q->shape(), kv_shape = p.k->shape(), lse_shape = {d.B, d.Hq, d.Sq};
  check_shape(got.out, q_shape, "O");
  check_shape(got.lse, lse_shape, "LSE");
  if (backward) {
    check_shape(got.dq, q_shape, "dQ");
    check_shape(got.dk, kv_shape, "dK");
    check_shape(got.dv, kv_shape, "dV");
  }
  CheckReport rep;
  rep.full = opt.full;
  Series so, sl, sdq, sdk, sdv;
  const auto D = d.D;

  if (opt.full) {
    // ---- every element: ref::naive_* in float64 on the values the implementation saw ----
    const auto widen = [](const Tensor<float>& t) {
      Tensor<double> w(t.shape());
      for (std::int64_t n = 0; n < t.size(); ++n) w[n] = t[n];
      return w;
    };
    const Tensor<double> q = widen(*p.q), k = widen(*p.k), v = widen(*p.v);
    ref::AttentionOptions ao;
    ao.causal = p.causal;
    ao.scale = p.scale;
    const ref::ForwardResult<double> f = ref::naive_forward(q, k, v, ao);
    ref::Gradients<double> g;
    if (backward) g = ref::naive_backward(q, k, v, f.out, f.lse, widen(*p.dout), ao);
    std::vector<double> logits(static_cast<std::size_t>(d.B * d.Hq * d.Sq));
    parallel_for(d.B * d.Hq * d.Sq, opt.threads, [&](std::int64_t t) {
      logits[static_cast<std::size_t>(t)] = row_max_logit(d, p, t / (d.Hq * d.Sq), (t / d.Sq) % d.Hq, t % d.Sq);
    });
    for (double x : logits) rep.max_logit = std::max(rep.max_logit, x);
    for (std::int64_t n = 0; n < f.out.size(); ++n) so.add(got.out[n], f.out[n], n);
    for (std::int64_t n = 0; n < f.lse.size(); ++n) sl.add(got.lse[n], f.lse[n], n);
    if (backward) {
      for (std::int64_t n = 0; n < g.dq.size(); ++n) sdq.add(got.dq[n], g.dq[n], n);
      for (std::int64_t n = 0; n < g.dk.size(); ++n) sdk.add(got.dk[n], g.dk[n], n);
      for (std::int64_t n = 0; n < g.dv.size(); ++n) sdv.add(got.dv[n], g.dv[n], n);
    }
    if (low) {
      // The naive low-precision computation of every row: queries first (its LSE and D feed the
      // key rows), then keys.
      const std::int64_t rows = d.B * d.Hq * d.Sq;
      std::vector<float> o(static_cast<std::size_t>(rows * D)), dq(static_cast<std::size_t>(rows * D));
      std::vector<float> lse(static_cast<std::size_t>(rows)), delta(static_cast<std::size_t>(rows));
      parallel_for(rows, opt.threads, [&](std::int64_t t) {
        thread_local ScratchLow w;
        const std::int64_t b = t / (d.Hq * d.Sq), h = (t / d.Sq) % d.Hq, i = t % d.Sq;
        const std::int64_t row = (b * d.Sq + i) * d.Hq + h;  // in O's layout
        query_row_low(opt.precision, d, p, b, h, i, &o[static_cast<std::size_t>(row * D)],
                      &lse[static_cast<std::size_t>(t)], backward ? &dq[static_cast<std::size_t>(row * D)] : nullptr,
                      &delta[static_cast<std::size_t>(t)], w);
      });
      so.naive.assign(o.begin(), o.end());
      sl.naive.assign(lse.begin(), lse.end());
      if (backward) {
        sdq.naive.assign(dq.begin(), dq.end());
        const std::int64_t krows = d.B * d.Hkv * d.Skv;
        std::vector<float> dk(static_cast<std::size_t>(krows * D)), dv(static_cast<std::size_t>(krows * D));
        parallel_for(krows, opt.threads, [&](std::int64_t t) {
          thread_local ScratchLow w;
          const std::int64_t b = t / (d.Skv * d.Hkv), j = (t / d.Hkv) % d.Skv, hk = t % d.Hkv;
          key_row_low(opt.precision, d, p, b, hk, j, lse, delta, &dk[static_cast<std::size_t>(t * D)],
                      &dv[static_cast<std::size_t>(t * D)], w);
        });
        sdk.naive.assign(dk.begin(), dk.end());
        sdv.naive.assign(dv.begin(), dv.end());
      }
    }
  } else {
    // ---- sampled rows ----
    rep.q_rows = sample_positions(d.Sq, opt.sample_rows, opt.seed, opt.q_layout);
    const auto nq = static_cast<std::int64_t>(rep.q_rows.size());
    // Query rows: task t = (row r, batch b, head h).
    const std::int64_t qtasks = nq * d.B * d.Hq;
    std::vector<double> o(static_cast<std::size_t>(qtasks * D)), dq(static_cast<std::size_t>(qtasks * D));
    std::vector<double> lse(static_cast<std::size_t>(qtasks)), logit(static_cast<std::size_t>(qtasks), 0.0);
    parallel_for(qtasks, opt.threads, [&](std::int64_t t) {
      thread_local Scratch64 w;
      const std::int64_t r = t / (d.B * d.Hq), b = (t / d.Hq) % d.B, h = t % d.Hq;
      const auto u = static_cast<std::size_t>(t);
      query_row64(d, p, b, h, rep.q_rows[static_cast<std::size_t>(r)], &o[u * D], &lse[u],
                  backward ? &dq[u * D] : nullptr, &logit[u], w);
    });
    for (double x : logit) rep.max_logit = std::max(rep.max_logit, x);
    std::vector<float> lo, llse, ldq, ldelta;
    if (low) {
      lo.resize(o.size()), llse.resize(lse.size()), ldq.resize(dq.size()), ldelta.resize(lse.size());
      parallel_for(qtasks, opt.threads, [&](std::int64_t t) {
        thread_local ScratchLow w;
        const std::int64_t r = t / (d.B * d.Hq), b = (t / d.Hq) % d.B, h = t % d.Hq;
        const auto u = static_cast<std::size_t>(t);
        query_row_low(opt.precision, d, p, b, h, rep.q_rows[static_cast<std::size_t>(r)], &lo[u * D], &llse[u],
                      backward ? &ldq[u * D] : nullptr, &ldelta[u], w);
      });
    }
    for (std::int64_t t = 0; t < qtasks; ++t) {
      const std::int64_t r = t / (d.B * d.Hq), b = (t / d.Hq) % d.B, h = t % d.Hq;
      const std::int64_t i = rep.q_rows[static_cast<std::size_t>(r)];
      const auto u = static_cast<std::size_t>(t);
      const std::int64_t li = d.lse_index(b, h, i);
      sl.add(got.lse[li], lse[u], li);
      if (low) sl.naive.push_back(llse[u]);
      for (std::int64_t x = 0; x < D; ++x) {
        const std::int64_t fi = ((b * d.Sq + i) * d.Hq + h) * D + x;
        so.add(got.out[fi], o[u * D + x], fi);
        if (low) so.naive.push_back(lo[u * D + x]);
        if (backward) {
          sdq.add(got.dq[fi], dq[u * D + x], fi);
          if (low) sdq.naive.push_back(ldq[u * D + x]);
        }
      }
    }
    if (backward) {
      // Key rows need every query row's LSE_i and D_i: the implementation's own (its LSE, and
      // D_i = dO_i . O_i from the O its backward was given), checked on the sampled rows above.
      rep.k_rows = sample_positions(d.Skv, opt.sample_rows, opt.seed ^ 0x6b657973ULL, opt.kv_layout);
      const auto nk = static_cast<std::int64_t>(rep.k_rows.size());
      const std::int64_t rows = d.B * d.Hq * d.Sq;
      std::vector<double> lse_all(static_cast<std::size_t>(rows)), delta_all(static_cast<std::size_t>(rows));
      std::vector<float> lse_all_f, delta_all_f;
      if (low) lse_all_f.resize(static_cast<std::size_t>(rows)), delta_all_f.resize(static_cast<std::size_t>(rows));
      parallel_for(rows, opt.threads, [&](std::int64_t t) {
        const std::int64_t b = t / (d.Hq * d.Sq), h = (t / d.Sq) % d.Hq, i = t % d.Sq;
        const float* orow = got.out.data() + ((b * d.Sq + i) * d.Hq + h) * D;
        const float* g = d.qrow(*p.dout, b, i, h);
        double s = 0.0;
        float sf = 0.0f;
        for (std::int64_t x = 0; x < D; ++x) {
          const float ox = round_to(opt.precision, orow[x]);
          s += static_cast<double>(g[x]) * static_cast<double>(ox);
          sf += g[x] * ox;
        }
        const auto u = static_cast<std::size_t>(t);
        lse_all[u] = got.lse[t];
        delta_all[u] = s;
        if (low) lse_all_f[u] = got.lse[t], delta_all_f[u] = sf;
      });
      const std::int64_t ktasks = nk * d.B * d.Hkv;
      std::vector<double> dk(static_cast<std::size_t>(ktasks * D)), dv(static_cast<std::size_t>(ktasks * D));
      std::vector<double> klogit(static_cast<std::size_t>(ktasks), 0.0);
      parallel_for(ktasks, opt.threads, [&](std::int64_t t) {
        const std::int64_t r = t / (d.B * d.Hkv), b = (t / d.Hkv) % d.B, hk = t % d.Hkv;
        const auto u = static_cast<std::size_t>(t);
        key_row64(d, p, b, hk, rep.k_rows[static_cast<std::size_t>(r)], lse_all, delta_all, &dk[u * D], &dv[u * D],
                  &klogit[u]);
      });
      for (double x : klogit) rep.max_logit = std::max(rep.max_logit, x);
      std::vector<float> ldk, ldv;
      if (low) {
        ldk.resize(dk.size()), ldv.resize(dv.size());
        parallel_for(ktasks, opt.threads, [&](std::int64_t t) {
          thread_local ScratchLow w;
          const std::int64_t r = t / (d.B * d.Hkv), b = (t / d.Hkv) % d.B, hk = t % d.Hkv;
          const auto u = static_cast<std::size_t>(t);
          key_row_low(opt.precision, d, p, b, hk, rep.k_rows[static_cast<std::size_t>(r)], lse_all_f, delta_all_f,
                      &ldk[u * D], &ldv[u * D], w);
        });
      }
      for (std::int64_t t = 0; t < ktasks; ++t) {
        const std::int64_t r = t / (d.B * d.Hkv), b = (t / d.Hkv) % d.B, hk = t % d.Hkv;
        const std::int64_t j = rep.k_rows[static_cast<std::size_t>(r)];
        const auto u = static_cast<std::size_t>(t);
        for (std::int64_t x = 0; x < D; ++x) {
          const std::int64_t fi = ((b * d.Skv + j) * d.Hkv + hk) * D + x;
          sdk.add(got.dk[fi], dk[u * D + x], fi);
          sdv.add(got.dv[fi], dv[u * D + x], fi);
          if (low) {
            sdk.naive.push_back(ldk[u * D + x]);
            sdv.naive.push_back(ldv[u * D + x]);
          }
        }
      }
    }
  }
  rep.outputs.push_back(judge("O", so, q_shape, opt.precision, false, false, rep.max_logit));
  rep.outputs.push_back(judge("LSE", sl, lse_shape, opt.precision, false, true, rep.max_logit));
  if (backward) {
    rep.outputs.push_back(judge("dQ", sdq, q_shape, opt.precision, true, false, rep.max_logit));
    rep.outputs.push_back(judge("dK", sdk, kv_shape, opt.precision, true, false, rep.max_logit));
    rep.outputs.push_back(judge("dV", sdv, kv_shape, opt.precision, true, false, rep.max_logit));
  }
  rep.pass = std::all_of(rep.outputs.begin(), rep.outputs.end(), [](const OutputCheck& c) { return c.pass; });
  return rep;
}

}  // namespace ringattn::cli
