// Naive attention: the definition, written out. S = scale * Q K^T is materialized (S_q x S_kv per
// head), so memory grows with S_q * S_kv; the blockwise path exists to avoid exactly that.
#include <cmath>

#include "detail.hpp"
#include "ringattn/reference/attention.hpp"

namespace ringattn::ref {
namespace {

using detail::Mat;
using detail::neg_inf;

// Scaled, masked scores of head h (query head) against its key/value head, (S_q, S_kv).
template <class T>
Mat<T> scores(SeqView<const T> q, SeqView<const T> k, std::int64_t b, std::int64_t h, std::int64_t g,
              T scale, bool causal, std::int64_t q_offset) {
  Mat<T> s(q.seq, k.seq);
  s.noalias() = detail::head(q, b, h) * detail::head(k, b, g).transpose();
  s *= scale;
  if (causal) {
    // Query i at global position q_offset + i sees keys j <= q_offset + i.
    for (std::int64_t i = 0; i < s.rows(); ++i) {
      const std::int64_t first_hidden = std::max<std::int64_t>(0, q_offset + i + 1);
      if (first_hidden < s.cols()) s.row(i).tail(s.cols() - first_hidden).setConstant(neg_inf<T>());
    }
  }
  return s;
}

// Row-wise softmax of masked scores in place; returns the LSE of each row (-inf: no key seen).
template <class T>
detail::Vec<T> softmax_rows(Mat<T>& s) {
  detail::Vec<T> lse(s.rows());
  for (std::int64_t i = 0; i < s.rows(); ++i) {
    const T m = s.row(i).maxCoeff();
    if (m == neg_inf<T>()) {  // every key masked: P = 0, O = 0, LSE = -inf
      s.row(i).setZero();
      lse(i) = neg_inf<T>();
      continue;
    }
    s.row(i) = detail::exp_flush(s.row(i).array() - m);
    const T l = s.row(i).sum();
    s.row(i) /= l;
    lse(i) = m + std::log(l);
  }
  return lse;
}

}  // namespace

template <class T>
ForwardResult<T> naive_forward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                               const AttentionOptions& options) {
  const AttentionShape sh = check_qkv(q, k, v);
  check_options(options);
  const T scale = static_cast<T>(resolve_scale(options, sh.head_dim));
  ForwardResult<T> r{Tensor<T>({sh.batch, sh.seq_q, sh.heads_q, sh.head_dim}),
                     Tensor<T>({sh.batch, sh.heads_q, sh.seq_q})};
  const auto qv = seq_view(q), kv = seq_view(k), vv = seq_view(v);
  const auto ov = seq_view(r.out);
  const auto lv = lse_view(r.lse);
  for (std::int64_t b = 0; b < sh.batch; ++b) {
    for (std::int64_t h = 0; h < sh.heads_q; ++h) {
      const std::int64_t g = h / sh.group_size();  // GQA: the key/value head this query head reads
      Mat<T> p = scores(qv, kv, b, h, g, scale, options.causal, sh.causal_query_offset());
      detail::lse_row(lv, b, h) = softmax_rows(p);
      detail::head(ov, b, h).noalias() = p * detail::head(vv, b, g);  // O = P V
    }
  }
  return r;
}

template <class T>
Gradients<T> naive_backward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                            const Tensor<T>& out, const Tensor<T>& lse, const Tensor<T>& dout,
                            const AttentionOptions& options) {
  const AttentionShape sh = check_qkv(q, k, v);
  check_backward_inputs(sh, out, lse, dout);
  check_options(options);
  const T scale = static_cast<T>(resolve_scale(options, sh.head_dim));
  Gradients<T> g{Tensor<T>(q.shape()), Tensor<T>(k.shape()), Tensor<T>(v.shape())};
  const auto qv = seq_view(q), kv = seq_view(k), vv = seq_view(v), dov = seq_view(dout);
  const auto dqv = seq_view(g.dq), dkv = seq_view(g.dk), dvv = seq_view(g.dv);
  for (std::int64_t b = 0; b < sh.batch; ++b) {
    for (std::int64_t h = 0; h < sh.heads_q; ++h) {
      const std::int64_t kh = h / sh.group_size();
      // The naive backward recomputes P from Q and K alone, so it does not trust the given O and
      // LSE: D_i = rowsum(P_i * dP_i) equals rowsum(dO_i * O_i) for the true O.
      Mat<T> p = scores(qv, kv, b, h, kh, scale, options.causal, sh.causal_query_offset());
      softmax_rows(p);
      const auto dO = detail::head(dov, b, h);
      const Mat<T> dP = dO * detail::head(vv, b, kh).transpose();        // dP = dO V^T
      const detail::Vec<T> D = (p.array() * dP.array()).rowwise().sum();  // D_i
      const Mat<T> dS = (p.array() * (dP.array().colwise() - D.array())).matrix();
      detail::head(dvv, b, kh) += p.transpose() * dO;                             // dV = P^T dO
      detail::head(dqv, b, h) = scale * (dS * detail::head(kv, b, kh));           // dQ = scale dS K
      detail::head(dkv, b, kh) += scale * (dS.transpose() * detail::head(qv, b, h));  // dK = scale dS^T Q
    }
  }
  return g;
}

#define INSTANTIATE(T)                                                                           \
  template ForwardResult<T> naive_forward<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&, \
                                             const AttentionOptions&);                           \
  template Gradients<T> naive_backward<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&,   \
                                          const Tensor<T>&, const Tensor<T>&, const Tensor<T>&,   \
                                          const AttentionOptions&);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace ringattn::ref
