// What the CUDA kernels are judged by, shared by the GPU test (cuda_kernel_test.cpp) and the CPU
// emulation of the same kernels (simt_emulation_test.cpp): the inputs, the float64 reference, the
// low-precision naive baselines, the criteria and the case tables.
//
// How a kernel is judged (DESIGN.md, "How correctness is judged"): its inputs are drawn in double,
// rounded to the input dtype, and the *rounded* values are handed to the float64 reference
// (ringattn::ref::block_forward / block_backward / merge_into, with the same positions and scale),
// so the comparison measures the kernel's own arithmetic:
//   - fp32 outputs (O with out_dtype F32, LSE, dQ/dK/dV, D): the float32 tolerance (~1e-5
//     relative, growing with the size of the logits), whatever the input dtype;
//   - bf16/fp16 outputs (O with out_dtype = the input dtype): flash-attention's criterion,
//     max|O - O_ref| <= 2 max|O_naive - O_ref| + the rounding of O_ref to the dtype, where O_naive
//     is naive attention computed in that dtype (fp32 accumulation, every matmul and the softmax
//     rounded to the dtype, as a framework without a fused kernel computes it).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/check.hpp"
#include "ringattn/core/schedule.hpp"
#include "ringattn/core/tensor.hpp"
#include "ringattn/cuda/attention.hpp"
#include "ringattn/cuda/device.hpp"
#include "ringattn/reference/attention.hpp"

namespace ringattn::test::kernel_cases {

namespace rc = ringattn::cuda;
namespace ref = ringattn::ref;
using ringattn::AttentionShape;
using ringattn::Positions;
using ringattn::Tensor;
using ringattn::test::ShapeCase;

inline constexpr double kNegInf = -std::numeric_limits<double>::infinity();

inline std::string dtype_name(rc::DType d) { return std::string(rc::to_string(d)); }

// A random (B, S, H, D) tensor in double, rounded to @p dt: the values the device will hold.
inline Tensor<double> random_in(const std::vector<std::int64_t>& shape, rc::DType dt, std::mt19937_64& rng,
                         double multiplier = 1.0) {
  Tensor<double> t = ringattn::test::random_tensor<double>(shape, rng, ringattn::test::Dist::Normal, multiplier);
  for (auto& x : t.values()) x = rc::round_to(dt, static_cast<float>(x));
  return t;
}

inline double max_abs(const Tensor<double>& t) { return ringattn::test::max_abs(t); }

// Largest |scale q_i . k_j| over all pairs: how large the logits are (the float32 error of a
// softmax grows with it).
inline double max_logit(const Tensor<double>& q, const Tensor<double>& k, double scale) {
  const std::int64_t B = q.dim(0), Sq = q.dim(1), Hq = q.dim(2), D = q.dim(3), Skv = k.dim(1), Hkv = k.dim(2);
  double best = 0.0;
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t h = 0; h < Hq; ++h) {
      const std::int64_t hk = h / (Hq / Hkv);
      for (std::int64_t i = 0; i < Sq; ++i) {
        const double* qi = q.data() + ((b * Sq + i) * Hq + h) * D;
        for (std::int64_t j = 0; j < Skv; ++j) {
          const double* kj = k.data() + ((b * Skv + j) * Hkv + hk) * D;
          double s = 0.0;
          for (std::int64_t d = 0; d < D; ++d) s += qi[d] * kj[d];
          best = std::max(best, std::fabs(scale * s));
        }
      }
    }
  }
  return best;
}

// The float32 tolerance: 1e-5 relative (DESIGN.md), for outputs of size @p magnitude from logits
// of size @p logit (an error eps |s| in a score is a relative error of that size in its weight).
inline ringattn::test::Tolerance fp32_tolerance(double magnitude, double logit, double base = 1e-5) {
  return {base * (1.0 + logit / 4.0) * std::max(1.0, magnitude), base};
}

struct Mask {
  bool causal = false;
  Positions qpos;
  Positions kpos;
  double scale = 1.0;
};

// The mask of a case, with the API's defaults made explicit (queries end-aligned, keys from 0,
// scale the float 1/sqrt(D) the kernels use).
inline Mask resolve_mask(const ShapeCase& c, bool causal, const std::optional<Positions>& qpos,
                  const std::optional<Positions>& kpos) {
  Mask m;
  m.causal = causal;
  m.qpos = qpos.value_or(Positions{c.seq_kv - c.seq_q, 1});
  m.kpos = kpos.value_or(Positions{0, 1});
  m.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)));
  return m;
}

inline rc::MaskArgs mask_args(const Mask& m) {
  rc::MaskArgs a;
  a.causal = m.causal;
  a.q_pos = m.qpos;
  a.k_pos = m.kpos;
  a.scale = static_cast<float>(m.scale);
  return a;
}

inline ref::KernelArgs kernel_args(const Mask& m) {
  ref::KernelArgs a;
  a.qpos = m.qpos;
  a.kpos = m.kpos;
  a.causal = m.causal;
  a.scale = m.scale;
  a.block_q = 64;
  a.block_kv = 128;
  return a;
}

// The float64 reference forward with positions.
inline ref::ForwardResult<double> reference_forward(const Tensor<double>& q, const Tensor<double>& k,
                                             const Tensor<double>& v, const Mask& m) {
  ref::ForwardResult<double> r{Tensor<double>(q.shape()), Tensor<double>({q.dim(0), q.dim(2), q.dim(1)})};
  ref::block_forward<double>(ringattn::seq_view(q), ringattn::seq_view(k), ringattn::seq_view(v), kernel_args(m),
                             ringattn::seq_view(r.out), ringattn::lse_view(r.lse));
  return r;
}

// Naive attention computed in @p dt the way a framework without a fused kernel does it (the
// baseline of flash-attention's tests): S = (scale Q) K^T, P = softmax(S), O = P V, each matmul
// accumulated in float32 and its result rounded to dt, the softmax computed in float32 and
// rounded to dt. A row that sees no key gets 0 (the project's convention).
inline Tensor<double> lowp_naive_forward(const Tensor<double>& q, const Tensor<double>& k, const Tensor<double>& v,
                                  rc::DType dt, const Mask& m) {
  const std::int64_t B = q.dim(0), Sq = q.dim(1), Hq = q.dim(2), D = q.dim(3), Skv = k.dim(1), Hkv = k.dim(2);
  auto rnd = [dt](float x) { return rc::round_to(dt, x); };
  Tensor<double> out(q.shape(), 0.0);
  std::vector<float> qs(static_cast<std::size_t>(D)), s(static_cast<std::size_t>(Skv)), p(static_cast<std::size_t>(Skv));
  std::vector<char> vis(static_cast<std::size_t>(Skv));
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t h = 0; h < Hq; ++h) {
      const std::int64_t hk = h / (Hq / Hkv);
      for (std::int64_t i = 0; i < Sq; ++i) {
        const double* qi = q.data() + ((b * Sq + i) * Hq + h) * D;
        for (std::int64_t d = 0; d < D; ++d) {
          qs[static_cast<std::size_t>(d)] = rnd(static_cast<float>(qi[d]) * static_cast<float>(m.scale));
        }
        float mx = -std::numeric_limits<float>::infinity();
        for (std::int64_t j = 0; j < Skv; ++j) {
          const auto ju = static_cast<std::size_t>(j);
          vis[ju] = static_cast<char>(!m.causal || m.kpos.at(j) <= m.qpos.at(i));
          if (!vis[ju]) continue;
          const double* kj = k.data() + ((b * Skv + j) * Hkv + hk) * D;
          float acc = 0.0f;
          for (std::int64_t d = 0; d < D; ++d) acc += qs[static_cast<std::size_t>(d)] * static_cast<float>(kj[d]);
          s[ju] = rnd(acc);
          mx = std::max(mx, s[ju]);
        }
        if (mx == -std::numeric_limits<float>::infinity()) continue;  // no key: O = 0
        float sum = 0.0f;
        for (std::int64_t j = 0; j < Skv; ++j) {
          const auto ju = static_cast<std::size_t>(j);
          if (vis[ju]) sum += (p[ju] = std::exp(s[ju] - mx));
        }
        for (std::int64_t j = 0; j < Skv; ++j) {
          const auto ju = static_cast<std::size_t>(j);
          p[ju] = vis[ju] ? rnd(p[ju] / sum) : 0.0f;
        }
        double* oi = out.data() + ((b * Sq + i) * Hq + h) * D;
        for (std::int64_t d = 0; d < D; ++d) {
          float acc = 0.0f;
          for (std::int64_t j = 0; j < Skv; ++j) {
            if (vis[static_cast<std::size_t>(j)]) {
              acc += p[static_cast<std::size_t>(j)] * static_cast<float>(v[((b * Skv + j) * Hkv + hk) * D + d]);
            }
          }
          oi[d] = rnd(acc);
        }
      }
    }
  }
  return out;
}

// flash-attention's criterion for a low-precision output: its error against the float64
// reference is at most twice that of the naive low-precision computation, plus the error of
// rounding the reference itself to the dtype.
inline ::testing::AssertionResult FlashCriterion(const Tensor<double>& got, const Tensor<double>& lowp,
                                          const Tensor<double>& want, rc::DType dt) {
  double err = 0.0, err_naive = 0.0, slack = 0.0;
  std::int64_t worst = 0;
  for (std::int64_t n = 0; n < want.size(); ++n) {
    if (std::isnan(got[n])) {
      return ::testing::AssertionFailure() << "element " << ringattn::test::multi_index(got.shape(), n) << " is NaN";
    }
    const double e = std::fabs(got[n] - want[n]);
    if (!(e <= err)) worst = n;
    err = std::max(err, e);
    err_naive = std::max(err_naive, std::fabs(lowp[n] - want[n]));
    slack = std::max(slack, std::fabs(rc::round_to(dt, static_cast<float>(want[n])) - want[n]));
  }
  const double allowed = 2.0 * err_naive + slack;
  if (err <= allowed) {
    return ::testing::AssertionSuccess() << "max error " << err << " <= 2 x " << err_naive << " + " << slack;
  }
  return ::testing::AssertionFailure() << "max error " << err << " at " << ringattn::test::multi_index(got.shape(), worst)
                                       << " (got " << got[worst] << ", want " << want[worst] << ") exceeds 2 x naive "
                                       << dtype_name(dt) << " error " << err_naive << " + rounding " << slack;
}

struct FwdCase {
  std::string name;
  ShapeCase shape;
  bool causal = false;
  std::optional<Positions> qpos;
  std::optional<Positions> kpos;
  double q_mul = 1.0;  // 10: logits ~10x larger than usual
};

inline std::vector<FwdCase> forward_cases() {
  return {
      {"S1", {1, 1, 1, 1, 1, 64}, false, {}, {}, 1.0},
      {"S7_gqa4_causal", {2, 7, 7, 8, 2, 64}, true, {}, {}, 1.0},
      {"S127_gqa8_causal_D128", {1, 127, 127, 8, 1, 128}, true, {}, {}, 1.0},
      {"S1000_causal", {1, 1000, 1000, 2, 2, 64}, true, {}, {}, 1.0},
      {"Sq33_Skv1000_D32", {2, 33, 1000, 4, 2, 32}, false, {}, {}, 1.0},
      {"Sq100_Skv40_causal_emptyrows", {1, 100, 40, 2, 1, 16}, true, {}, {}, 1.0},
      // Ring segments: a zigzag rank's later query chunk against an earlier key chunk (all
      // visible), its diagonal, and an earlier query chunk against later keys (nothing visible).
      {"zigzag_q_after_k", {1, 32, 64, 4, 2, 64}, true, Positions{96, 1}, Positions{0, 1}, 1.0},
      {"zigzag_diagonal", {1, 32, 32, 4, 2, 64}, true, Positions{64, 1}, Positions{64, 1}, 1.0},
      {"zigzag_q_before_k", {1, 16, 32, 2, 2, 64}, true, Positions{0, 1}, Positions{64, 1}, 1.0},
      // Striped ranks (stride 4): query rank 3 against key rank 1, and rank 0 against rank 2 (its
      // first query sees no key).
      {"striped_3_vs_1", {2, 50, 50, 4, 4, 64}, true, Positions{3, 4}, Positions{1, 4}, 1.0},
      {"striped_0_vs_2_D40", {1, 31, 31, 2, 1, 40}, true, Positions{0, 4}, Positions{2, 4}, 1.0},
      {"D256_causal", {1, 65, 97, 2, 1, 256}, true, {}, {}, 1.0},
      {"D8_causal", {1, 33, 33, 1, 1, 8}, true, {}, {}, 1.0},
      {"D17_causal", {1, 45, 70, 2, 2, 17}, true, {}, {}, 1.0},
      {"D96_gqa2", {1, 129, 129, 6, 3, 96}, false, {}, {}, 1.0},
      {"large_logits_causal", {1, 300, 300, 4, 2, 64}, true, {}, {}, 10.0},
  };
}

inline void PrintTo(const FwdCase& c, std::ostream* os) { *os << c.name; }

// The same backward done naively in the kernel's precision, from the same 16-bit inputs, LSE and D
// (the yardstick of DESIGN.md): per visible pair, fp32 scores and dP, P = exp(s - LSE) and
// dS = P (dP - D) in fp32, rounded to @p dt where the kernel feeds them to the tensor cores
// (dV += P^T dO, dK += dS^T Q, dQ += dS K), sums in fp32.
inline ref::Gradients<double> lowp_naive_backward(const Tensor<double>& q, const Tensor<double>& k, const Tensor<double>& v,
                                           const Tensor<double>& dO, const Tensor<double>& lse,
                                           const Tensor<double>& delta, rc::DType dt, const Mask& m) {
  const std::int64_t B = q.dim(0), Sq = q.dim(1), Hq = q.dim(2), D = q.dim(3), Skv = k.dim(1), Hkv = k.dim(2);
  std::vector<float> dq(static_cast<std::size_t>(q.size()), 0.0f), dk(static_cast<std::size_t>(k.size()), 0.0f),
      dv(static_cast<std::size_t>(v.size()), 0.0f);
  const auto scale = static_cast<float>(m.scale);
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t h = 0; h < Hq; ++h) {
      const std::int64_t hk = h / (Hq / Hkv);
      for (std::int64_t i = 0; i < Sq; ++i) {
        const auto l = static_cast<float>(lse[(b * Hq + h) * Sq + i]);
        const auto d = static_cast<float>(delta[(b * Hq + h) * Sq + i]);
        if (l == -std::numeric_limits<float>::infinity()) continue;
        const std::int64_t qi = ((b * Sq + i) * Hq + h) * D;
        for (std::int64_t j = 0; j < Skv; ++j) {
          if (m.causal && m.kpos.at(j) > m.qpos.at(i)) continue;
          const std::int64_t kj = ((b * Skv + j) * Hkv + hk) * D;
          float s = 0.0f, dp = 0.0f;
          for (std::int64_t x = 0; x < D; ++x) {
            s += static_cast<float>(q[qi + x]) * static_cast<float>(k[kj + x]);
            dp += static_cast<float>(dO[qi + x]) * static_cast<float>(v[kj + x]);
          }
          const float p = std::exp(s * scale - l);
          const float p16 = rc::round_to(dt, p);
          const float ds16 = rc::round_to(dt, p * (dp - d));
          for (std::int64_t x = 0; x < D; ++x) {
            dv[static_cast<std::size_t>(kj + x)] += p16 * static_cast<float>(dO[qi + x]);
            dk[static_cast<std::size_t>(kj + x)] += scale * ds16 * static_cast<float>(q[qi + x]);
            dq[static_cast<std::size_t>(qi + x)] += scale * ds16 * static_cast<float>(k[kj + x]);
          }
        }
      }
    }
  }
  auto to_tensor = [](const std::vector<float>& x, const std::vector<std::int64_t>& shape) {
    Tensor<double> t(shape);
    for (std::int64_t n = 0; n < t.size(); ++n) t[n] = x[static_cast<std::size_t>(n)];
    return t;
  };
  return {to_tensor(dq, q.shape()), to_tensor(dk, k.shape()), to_tensor(dv, v.shape())};
}

// flash-attention's criterion for a gradient computed with 16-bit operands: its error against the
// float64 reference is at most 3x that of the naive computation in the same precision
// (lowp_naive_backward), plus a floor for gradients that are ~0 and for the fp32 rounding of
// adding to an accumulate case's starting values. NaN (an unwritten, poisoned element) fails.
inline ::testing::AssertionResult GradCriterion(const Tensor<double>& got, const Tensor<double>& naive,
                                         const Tensor<double>& want, const Tensor<double>& start, rc::DType dt) {
  double err = 0.0, err_naive = 0.0;
  std::int64_t worst = 0;
  for (std::int64_t n = 0; n < want.size(); ++n) {
    if (std::isnan(got[n])) {
      return ::testing::AssertionFailure() << "element " << ringattn::test::multi_index(got.shape(), n) << " is NaN";
    }
    const double e = std::fabs(got[n] - want[n]);
    if (!(e <= err)) worst = n;
    err = std::max(err, e);
    err_naive = std::max(err_naive, std::fabs(naive[n] + start[n] - want[n]));
  }
  const double allowed = 3.0 * err_naive + 1e-6 * (1.0 + max_abs(want));
  if (err <= allowed) {
    return ::testing::AssertionSuccess() << "max error " << err << " <= 3 x " << err_naive;
  }
  return ::testing::AssertionFailure() << "max error " << err << " at " << ringattn::test::multi_index(got.shape(), worst)
                                       << " (got " << got[worst] << ", want " << want[worst] << ") exceeds 3 x naive "
                                       << dtype_name(dt) << " error " << err_naive << " + floor";
}

inline std::vector<FwdCase> decode_cases() {
  return {
      {"Sq1_Skv1000_gqa4", {1, 1, 1000, 8, 2, 64}, false, {}, {}, 1.0},
      {"Sq4_Skv301_causal_D128", {2, 4, 301, 4, 4, 128}, true, {}, {}, 1.0},
      {"Sq3_Skv37_D17", {1, 3, 37, 2, 1, 17}, true, {}, {}, 1.0},
      {"Sq1_Skv5_D256", {1, 1, 5, 2, 2, 256}, false, {}, {}, 1.0},
      // A query in the middle of the cache: the splits past it see nothing.
      {"mid_cache_causal", {1, 2, 1000, 2, 1, 64}, true, Positions{500, 1}, Positions{0, 1}, 1.0},
      {"no_key_visible", {1, 2, 50, 2, 2, 64}, true, Positions{0, 1}, Positions{10, 1}, 1.0},
      {"large_logits", {1, 1, 777, 4, 1, 64}, false, {}, {}, 10.0},
  };
}

// The forward cases the simple backward is checked on (by name, from forward_cases()).
inline std::vector<FwdCase> simple_backward_cases() {
  const std::vector<std::string> names = {"S1", "S7_gqa4_causal", "S127_gqa8_causal_D128", "Sq33_Skv1000_D32",
                                          "Sq100_Skv40_causal_emptyrows", "zigzag_q_after_k", "zigzag_q_before_k",
                                          "striped_3_vs_1", "striped_0_vs_2_D40", "D256_causal", "D17_causal",
                                          "large_logits_causal"};
  std::vector<FwdCase> cases;
  for (const FwdCase& c : forward_cases()) {
    if (std::find(names.begin(), names.end(), c.name) != names.end()) cases.push_back(c);
  }
  return cases;
}

// The merge's shapes: one row, odd sizes, D = 256, many rows.
inline std::vector<ShapeCase> merge_shapes() {
  return {ShapeCase{1, 1, 1, 1, 1, 1}, ShapeCase{2, 37, 37, 3, 3, 40}, ShapeCase{1, 6, 6, 2, 2, 256},
          ShapeCase{3, 129, 129, 5, 5, 33}};
}

// Accumulator and partial of the merge test, row kinds cycling through every case of merge_into:
// accumulator empty, partial empty, both empty, both present (also far apart, and large). The O of
// an empty side is NaN: a kernel must not read it.
struct MergeInputs {
  Tensor<double> oa, la, ob, lb;
};
inline MergeInputs merge_inputs(const ShapeCase& s, std::mt19937_64& rng) {
  const std::int64_t B = s.batch, S = s.seq_q, H = s.heads_q, D = s.head_dim;
  MergeInputs in{random_in({B, S, H, D}, rc::DType::F32, rng), random_in({B, H, S}, rc::DType::F32, rng, 5.0),
                 random_in({B, S, H, D}, rc::DType::F32, rng), random_in({B, H, S}, rc::DType::F32, rng, 5.0)};
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (std::int64_t b = 0; b < B; ++b) {
    for (std::int64_t h = 0; h < H; ++h) {
      for (std::int64_t i = 0; i < S; ++i) {
        const std::int64_t li = (b * H + h) * S + i;
        const std::int64_t kind = (i + h + b) % 6;
        if (kind == 0 || kind == 2) in.la[li] = kNegInf;
        if (kind == 1 || kind == 2) in.lb[li] = kNegInf;
        if (kind == 4) in.la[li] = 80.0, in.lb[li] = -30.0;    // far apart: one weight underflows to ~0
        if (kind == 5) in.la[li] = 300.0, in.lb[li] = 301.0;  // large: exp would overflow without the max
        for (std::int64_t d = 0; d < D; ++d) {
          const std::int64_t oi = ((b * S + i) * H + h) * D + d;
          if (in.la[li] == kNegInf) in.oa[oi] = nan;
          if (in.lb[li] == kNegInf) in.ob[oi] = nan;
        }
      }
    }
  }
  return in;
}

// ---- the checks every forward-like and backward test makes ---------------------------------------

// A forward's O (in @p out_dt) and LSE against the float64 reference on the same inputs: rows that
// see no key exactly O = 0, LSE = -inf; LSE by the float32 tolerance; O by it too (fp32 out) or
// by flash-attention's criterion (16-bit out). Returns how many rows saw no key.
inline std::int64_t expect_forward_matches(const Tensor<double>& out, const Tensor<double>& lse, const Tensor<double>& q,
                                           const Tensor<double>& k, const Tensor<double>& v, const Mask& m,
                                           rc::DType dt, rc::DType out_dt) {
  const ref::ForwardResult<double> want = reference_forward(q, k, v, m);
  const double logit = max_logit(q, k, m.scale);
  std::int64_t empty = 0;
  EXPECT_TRUE(ringattn::test::EmptyRowsExact(out, lse, want.lse, &empty));
  const auto lse_tol = fp32_tolerance(1.0, logit);
  EXPECT_TRUE(ringattn::test::AllClose(lse, want.lse, lse_tol.atol * (1.0 + max_abs(want.lse)), lse_tol.rtol));
  if (out_dt == rc::DType::F32) {
    const auto tol = fp32_tolerance(max_abs(want.out), logit);
    EXPECT_TRUE(ringattn::test::AllClose(out, want.out, tol.atol, tol.rtol));
  } else {
    EXPECT_TRUE(FlashCriterion(out, lowp_naive_forward(q, k, v, dt, m), want.out, dt));
  }
  return empty;
}

// Whether forward case @p c is meant to have rows that see no key.
inline bool has_empty_rows(const FwdCase& c) {
  return c.name.find("empty") != std::string::npos || c.name == "zigzag_q_before_k";
}

// The simple backward's D and gradients against the float64 reference on exactly the inputs it
// was given (O in the input dtype and the forward's LSE; the gradients started from @p start when
// accumulating, zeros otherwise), by the float32 tolerance.
inline void expect_simple_backward_matches(const Tensor<double>& q, const Tensor<double>& k, const Tensor<double>& v,
                                           const Tensor<double>& dO, const Tensor<double>& out,
                                           const Tensor<double>& lse, const Mask& m,
                                           const ref::Gradients<double>& start, const Tensor<double>& delta,
                                           const ref::Gradients<double>& got) {
  const Tensor<double> want_delta = ref::softmax_delta(out, dO);
  ref::Gradients<double> want = start;
  ref::block_backward<double>(ringattn::seq_view(q), ringattn::seq_view(k), ringattn::seq_view(v),
                              ringattn::seq_view(dO), ringattn::lse_view(lse), ringattn::lse_view(want_delta),
                              kernel_args(m), ringattn::seq_view(want.dq), ringattn::seq_view(want.dk),
                              ringattn::seq_view(want.dv));
  const double logit = max_logit(q, k, m.scale);
  const auto dtol = fp32_tolerance(max_abs(want_delta), 0.0);
  EXPECT_TRUE(ringattn::test::AllClose(delta, want_delta, dtol.atol, dtol.rtol)) << "D = rowsum(dO * O)";
  const struct {
    const char* name;
    const Tensor<double>& got;
    const Tensor<double>& want;
  } grads[] = {{"dQ", got.dq, want.dq}, {"dK", got.dk, want.dk}, {"dV", got.dv, want.dv}};
  for (const auto& g : grads) {
    const auto tol = fp32_tolerance(max_abs(g.want), logit, 3e-5);  // five chained products: more room
    EXPECT_TRUE(ringattn::test::AllClose(g.got, g.want, tol.atol, tol.rtol)) << g.name;
  }
}

// ---- parameter tables -------------------------------------------------------------------------

// Forward: kernel x input dtype x output dtype (fp32, or the input's) x forward_cases().
using FwdParam = std::tuple<rc::Kernel, rc::DType, bool /*out in input dtype*/, FwdCase>;

inline std::vector<FwdParam> forward_params(const std::vector<rc::Kernel>& kernels) {
  std::vector<FwdParam> ps;
  for (rc::Kernel kernel : kernels) {
    for (rc::DType dt : {rc::DType::F32, rc::DType::F16, rc::DType::BF16}) {
      for (bool same : {false, true}) {
        if (dt == rc::DType::F32 && same) continue;  // fp32 out is the same thing
        for (const FwdCase& c : forward_cases()) ps.emplace_back(kernel, dt, same, c);
      }
    }
  }
  return ps;
}

inline std::string forward_name(const ::testing::TestParamInfo<FwdParam>& i) {
  const auto& [kernel, dt, same, c] = i.param;
  std::string k(rc::to_string(kernel));
  std::replace(k.begin(), k.end(), '-', '_');
  return k + "_" + dtype_name(dt) + (same ? "_out" + dtype_name(dt) : std::string("_outfp32")) + "_" + c.name;
}

// Simple backward: input dtype x accumulate x simple_backward_cases().
using BwdParam = std::tuple<rc::DType, bool /*accumulate*/, FwdCase>;

inline std::vector<BwdParam> backward_params() {
  std::vector<BwdParam> ps;
  for (rc::DType dt : {rc::DType::F32, rc::DType::F16, rc::DType::BF16}) {
    for (bool acc : {false, true}) {
      for (const FwdCase& c : simple_backward_cases()) ps.emplace_back(dt, acc, c);
    }
  }
  return ps;
}

inline std::string backward_name(const ::testing::TestParamInfo<BwdParam>& i) {
  const auto& [dt, acc, c] = i.param;
  return dtype_name(dt) + (acc ? "_accumulate_" : "_overwrite_") + c.name;
}

// Decode: input dtype x output dtype x splits (1, 3, 16 and S_kv + 5, written 0) x decode_cases().
using DecodeParam = std::tuple<rc::DType, bool /*out in input dtype*/, std::int64_t /*splits; 0: S_kv + 5*/, FwdCase>;

inline std::vector<DecodeParam> decode_params() {
  std::vector<DecodeParam> ps;
  for (rc::DType dt : {rc::DType::F32, rc::DType::F16, rc::DType::BF16}) {
    for (bool same : {false, true}) {
      if (dt == rc::DType::F32 && same) continue;
      for (std::int64_t splits : {1, 3, 16, 0}) {
        for (const FwdCase& c : decode_cases()) ps.emplace_back(dt, same, splits, c);
      }
    }
  }
  return ps;
}

inline std::string decode_name(const ::testing::TestParamInfo<DecodeParam>& i) {
  const auto& [dt, same, splits, c] = i.param;
  return dtype_name(dt) + (same ? "_out" + dtype_name(dt) : std::string("_outfp32")) +
         (splits > 0 ? "_splits" + std::to_string(splits) : std::string("_splitsSkvPlus5")) + "_" + c.name;
}

}  // namespace ringattn::test::kernel_cases
