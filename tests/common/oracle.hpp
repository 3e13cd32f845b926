/// @file oracle.hpp
/// @brief The tests' ground truth: attention forward and backward as plain loops in long double.
///
/// What this file is for: every attention path of the project (naive, blockwise, decoding, the
/// ring, later CUDA) is compared against these functions. They share no code with reference/
/// and use no Eigen: one loop nest per equation, accumulated in long double, so that a bug in
/// the code under test cannot hide by being repeated here. They are slow (O(B H S_q S_kv D)
/// with no tiling) and meant for the small shapes tests use.
///
/// Conventions (docs/conventions.md, DESIGN.md):
///   Q (B, S_q, H_q, D), K and V (B, S_kv, H_kv, D), O like Q, LSE (B, H_q, S_q), natural log.
///   GQA: query head h reads key/value head h / (H_q / H_kv).
///   Causal: query row i sits at position qpos[i], key row j at kpos[j]; j is visible iff
///   kpos[j] <= qpos[i]. The whole-tensor forms use end-aligned queries, qpos[i] = S_kv - S_q + i,
///   kpos[j] = j (flash-attention's convention).
///   A row that sees no key has O = 0 and LSE = -inf (and contributes no gradient).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "ringattn/core/tensor.hpp"

namespace ringattn::test {

/// O (B, S_q, H_q, D) and LSE (B, H_q, S_q) computed by the oracle.
struct OracleForward {
  Tensor<double> out;
  Tensor<double> lse;
};

/// dQ, dK, dV computed by the oracle, each with its input's shape.
struct OracleGradients {
  Tensor<double> dq;
  Tensor<double> dk;
  Tensor<double> dv;
};

namespace oracle_detail {

struct Dims {
  std::int64_t B, Sq, Skv, Hq, Hkv, D;
};

// The oracle checks its own inputs with std::logic_error: a wrong call here is a bug in a test,
// not a case the code under test should see.
inline Dims dims_of(const Tensor<double>& q, const Tensor<double>& k, const Tensor<double>& v) {
  if (q.rank() != 4 || k.rank() != 4 || v.rank() != 4) {
    throw std::logic_error("oracle: Q, K, V must be rank 4 (B, S, H, D)");
  }
  if (k.shape() != v.shape()) throw std::logic_error("oracle: K and V shapes differ");
  Dims d{q.dim(0), q.dim(1), k.dim(1), q.dim(2), k.dim(2), q.dim(3)};
  if (k.dim(0) != d.B || k.dim(3) != d.D) throw std::logic_error("oracle: B or D differ");
  if (d.Hkv <= 0 || d.Hq % d.Hkv != 0) throw std::logic_error("oracle: H_q % H_kv != 0");
  return d;
}

inline std::size_t at4(const Dims& d, std::int64_t S, std::int64_t H, std::int64_t b,
                       std::int64_t s, std::int64_t h, std::int64_t x) {
  return static_cast<std::size_t>(((b * S + s) * H + h) * d.D + x);
}

inline void check_positions(const Dims& d, const std::vector<std::int64_t>& qpos,
                            const std::vector<std::int64_t>& kpos) {
  if (static_cast<std::int64_t>(qpos.size()) != d.Sq ||
      static_cast<std::int64_t>(kpos.size()) != d.Skv) {
    throw std::logic_error("oracle: position vectors do not match S_q / S_kv");
  }
}

// Scaled score s_ij = scale * q_i . k_j (Attention is all you need, eq. 1), in long double.
inline long double score(const Tensor<double>& q, const Tensor<double>& k, const Dims& d,
                         long double scale, std::int64_t b, std::int64_t i, std::int64_t h,
                         std::int64_t j, std::int64_t hk) {
  long double acc = 0.0L;
  for (std::int64_t x = 0; x < d.D; ++x) {
    acc += static_cast<long double>(q[static_cast<std::int64_t>(at4(d, d.Sq, d.Hq, b, i, h, x))]) *
           static_cast<long double>(k[static_cast<std::int64_t>(at4(d, d.Skv, d.Hkv, b, j, hk, x))]);
  }
  return scale * acc;
}

}  // namespace oracle_detail

/// Query positions for end-aligned causal masking: S_kv - S_q + i.
inline std::vector<std::int64_t> end_aligned_query_positions(std::int64_t seq_q,
                                                             std::int64_t seq_kv) {
  std::vector<std::int64_t> p(static_cast<std::size_t>(seq_q));
  for (std::int64_t i = 0; i < seq_q; ++i) p[static_cast<std::size_t>(i)] = seq_kv - seq_q + i;
  return p;
}

/// Positions start, start + stride, ... (n of them).
inline std::vector<std::int64_t> arithmetic_positions(std::int64_t n, std::int64_t start = 0,
                                                      std::int64_t stride = 1) {
  std::vector<std::int64_t> p(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) p[static_cast<std::size_t>(i)] = start + i * stride;
  return p;
}

/// Forward with explicit positions: O_i = sum_j softmax_j(s_ij) v_j over visible j,
/// LSE_i = log sum_j exp(s_ij).
inline OracleForward oracle_forward(const Tensor<double>& q, const Tensor<double>& k,
                                    const Tensor<double>& v, double scale, bool causal,
                                    const std::vector<std::int64_t>& qpos,
                                    const std::vector<std::int64_t>& kpos) {
  using namespace oracle_detail;
  const Dims d = dims_of(q, k, v);
  check_positions(d, qpos, kpos);
  const std::int64_t group = d.Hq / d.Hkv;
  OracleForward r{Tensor<double>({d.B, d.Sq, d.Hq, d.D}, 0.0),
                  Tensor<double>({d.B, d.Hq, d.Sq}, 0.0)};
  std::vector<long double> s(static_cast<std::size_t>(d.Skv));
  std::vector<char> vis(static_cast<std::size_t>(d.Skv));
  std::vector<long double> o(static_cast<std::size_t>(d.D));
  const long double sc = scale;
  for (std::int64_t b = 0; b < d.B; ++b) {
    for (std::int64_t h = 0; h < d.Hq; ++h) {
      const std::int64_t hk = h / group;
      for (std::int64_t i = 0; i < d.Sq; ++i) {
        // m = max_j s_ij over the visible keys.
        long double m = -std::numeric_limits<long double>::infinity();
        bool any = false;
        for (std::int64_t j = 0; j < d.Skv; ++j) {
          const auto ju = static_cast<std::size_t>(j);
          vis[ju] = static_cast<char>(!causal || kpos[ju] <= qpos[static_cast<std::size_t>(i)]);
          if (!vis[ju]) continue;
          s[ju] = score(q, k, d, sc, b, i, h, j, hk);
          if (!any || s[ju] > m) m = s[ju];
          any = true;
        }
        const auto lse_at = (b * d.Hq + h) * d.Sq + i;
        if (!any) {
          r.lse[lse_at] = -std::numeric_limits<double>::infinity();
          continue;  // O row stays 0
        }
        // l = sum_j exp(s_ij - m);  O_i = sum_j exp(s_ij - m) v_j / l.
        long double l = 0.0L;
        for (auto& x : o) x = 0.0L;
        for (std::int64_t j = 0; j < d.Skv; ++j) {
          const auto ju = static_cast<std::size_t>(j);
          if (!vis[ju]) continue;
          const long double p = std::exp(s[ju] - m);
          l += p;
          for (std::int64_t x = 0; x < d.D; ++x) {
            o[static_cast<std::size_t>(x)] +=
                p * static_cast<long double>(
                        v[static_cast<std::int64_t>(at4(d, d.Skv, d.Hkv, b, j, hk, x))]);
          }
        }
        for (std::int64_t x = 0; x < d.D; ++x) {
          r.out[static_cast<std::int64_t>(at4(d, d.Sq, d.Hq, b, i, h, x))] =
              static_cast<double>(o[static_cast<std::size_t>(x)] / l);
        }
        r.lse[lse_at] = static_cast<double>(m + std::log(l));
      }
    }
  }
  return r;
}

/// Forward over whole tensors: end-aligned causal positions, scale 1/sqrt(D) unless given.
inline OracleForward oracle_forward(const Tensor<double>& q, const Tensor<double>& k,
                                    const Tensor<double>& v, bool causal,
                                    std::optional<double> scale = std::nullopt) {
  const double sc = scale ? *scale : 1.0 / std::sqrt(static_cast<double>(q.dim(3)));
  return oracle_forward(q, k, v, sc, causal, end_aligned_query_positions(q.dim(1), k.dim(1)),
                        arithmetic_positions(k.dim(1)));
}

/// Backward with explicit positions, from first principles (P recomputed here, not taken from
/// the code under test): P_ij = exp(s_ij - LSE_i), dV_j = sum_i P_ij dO_i, dP_ij = dO_i . v_j,
/// D_i = sum_j P_ij dP_ij (= dO_i . O_i), dS_ij = P_ij (dP_ij - D_i),
/// dQ_i = scale sum_j dS_ij k_j, dK_j = scale sum_i dS_ij q_i. GQA sums dK/dV over the group.
inline OracleGradients oracle_backward(const Tensor<double>& q, const Tensor<double>& k,
                                       const Tensor<double>& v, const Tensor<double>& dout,
                                       double scale, bool causal,
                                       const std::vector<std::int64_t>& qpos,
                                       const std::vector<std::int64_t>& kpos) {
  using namespace oracle_detail;
  const Dims d = dims_of(q, k, v);
  check_positions(d, qpos, kpos);
  if (dout.shape() != q.shape()) throw std::logic_error("oracle: dO must have Q's shape");
  const std::int64_t group = d.Hq / d.Hkv;
  std::vector<long double> dq(static_cast<std::size_t>(q.size()), 0.0L);
  std::vector<long double> dk(static_cast<std::size_t>(k.size()), 0.0L);
  std::vector<long double> dv(static_cast<std::size_t>(v.size()), 0.0L);
  std::vector<long double> s(static_cast<std::size_t>(d.Skv));
  std::vector<long double> p(static_cast<std::size_t>(d.Skv));
  std::vector<long double> dp(static_cast<std::size_t>(d.Skv));
  std::vector<char> vis(static_cast<std::size_t>(d.Skv));
  const long double sc = scale;
  auto qat = [&](std::int64_t b, std::int64_t i, std::int64_t h, std::int64_t x) {
    return at4(d, d.Sq, d.Hq, b, i, h, x);
  };
  auto kat = [&](std::int64_t b, std::int64_t j, std::int64_t h, std::int64_t x) {
    return at4(d, d.Skv, d.Hkv, b, j, h, x);
  };
  auto ld = [](double x) { return static_cast<long double>(x); };
  for (std::int64_t b = 0; b < d.B; ++b) {
    for (std::int64_t h = 0; h < d.Hq; ++h) {
      const std::int64_t hk = h / group;
      for (std::int64_t i = 0; i < d.Sq; ++i) {
        long double m = -std::numeric_limits<long double>::infinity();
        bool any = false;
        for (std::int64_t j = 0; j < d.Skv; ++j) {
          const auto ju = static_cast<std::size_t>(j);
          vis[ju] = static_cast<char>(!causal || kpos[ju] <= qpos[static_cast<std::size_t>(i)]);
          if (!vis[ju]) continue;
          s[ju] = score(q, k, d, sc, b, i, h, j, hk);
          if (!any || s[ju] > m) m = s[ju];
          any = true;
        }
        if (!any) continue;  // no key: O_i = 0 is constant, no gradient flows
        long double l = 0.0L;
        for (std::int64_t j = 0; j < d.Skv; ++j) {
          const auto ju = static_cast<std::size_t>(j);
          if (vis[ju]) l += std::exp(s[ju] - m);
        }
        const long double lse = m + std::log(l);
        long double delta = 0.0L;  // D_i = sum_j P_ij dP_ij
        for (std::int64_t j = 0; j < d.Skv; ++j) {
          const auto ju = static_cast<std::size_t>(j);
          if (!vis[ju]) continue;
          p[ju] = std::exp(s[ju] - lse);
          long double acc = 0.0L;
          for (std::int64_t x = 0; x < d.D; ++x) {
            acc += ld(dout[static_cast<std::int64_t>(qat(b, i, h, x))]) *
                   ld(v[static_cast<std::int64_t>(kat(b, j, hk, x))]);
          }
          dp[ju] = acc;
          delta += p[ju] * acc;
        }
        for (std::int64_t j = 0; j < d.Skv; ++j) {
          const auto ju = static_cast<std::size_t>(j);
          if (!vis[ju]) continue;
          const long double ds = p[ju] * (dp[ju] - delta);
          for (std::int64_t x = 0; x < d.D; ++x) {
            const std::size_t qi = qat(b, i, h, x);
            const std::size_t kj = kat(b, j, hk, x);
            dv[kj] += p[ju] * ld(dout[static_cast<std::int64_t>(qi)]);
            dq[qi] += sc * ds * ld(k[static_cast<std::int64_t>(kj)]);
            dk[kj] += sc * ds * ld(q[static_cast<std::int64_t>(qi)]);
          }
        }
      }
    }
  }
  auto to_tensor = [](const std::vector<long double>& src, const std::vector<std::int64_t>& shape) {
    Tensor<double> t(shape, 0.0);
    for (std::size_t n = 0; n < src.size(); ++n) {
      t[static_cast<std::int64_t>(n)] = static_cast<double>(src[n]);
    }
    return t;
  };
  return {to_tensor(dq, q.shape()), to_tensor(dk, k.shape()), to_tensor(dv, v.shape())};
}

/// Backward over whole tensors: end-aligned causal positions, scale 1/sqrt(D) unless given.
inline OracleGradients oracle_backward(const Tensor<double>& q, const Tensor<double>& k,
                                       const Tensor<double>& v, const Tensor<double>& dout,
                                       bool causal, std::optional<double> scale = std::nullopt) {
  const double sc = scale ? *scale : 1.0 / std::sqrt(static_cast<double>(q.dim(3)));
  return oracle_backward(q, k, v, dout, sc, causal,
                         end_aligned_query_positions(q.dim(1), k.dim(1)),
                         arithmetic_positions(k.dim(1)));
}

/// The loss L = sum(dO * O) whose gradients the backward computes, in long double, through the
/// oracle forward. Finite differences of this check the backward of every path (and the
/// oracle's own).
inline long double oracle_loss(const Tensor<double>& q, const Tensor<double>& k,
                               const Tensor<double>& v, const Tensor<double>& dout, bool causal,
                               double scale) {
  const OracleForward f = oracle_forward(q, k, v, causal, scale);
  long double acc = 0.0L;
  for (std::int64_t n = 0; n < f.out.size(); ++n) {
    acc += static_cast<long double>(dout[n]) * static_cast<long double>(f.out[n]);
  }
  return acc;
}

/// Largest |scale * q_i . k_j| over all pairs (masked or not): the size of the logits, which
/// sets how much error a low-precision softmax may make.
inline double max_abs_logit(const Tensor<double>& q, const Tensor<double>& k, double scale) {
  using namespace oracle_detail;
  const Dims d = dims_of(q, k, k);
  const std::int64_t group = d.Hq / d.Hkv;
  long double best = 0.0L;
  for (std::int64_t b = 0; b < d.B; ++b) {
    for (std::int64_t h = 0; h < d.Hq; ++h) {
      for (std::int64_t i = 0; i < d.Sq; ++i) {
        for (std::int64_t j = 0; j < d.Skv; ++j) {
          const long double sv = std::fabs(score(q, k, d, scale, b, i, h, j, h / group));
          if (sv > best) best = sv;
        }
      }
    }
  }
  return static_cast<double>(best);
}

}  // namespace ringattn::test
