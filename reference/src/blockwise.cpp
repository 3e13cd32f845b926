// Blockwise attention with online softmax (flash-attention), forward and backward.
//
// Forward, per query tile Q_i (Br rows) and for each key tile K_j, V_j (Bc rows), with running
// row max m, row sum l and unnormalized output O (flash-attention-2, Algorithm 1):
//   S_ij  = scale * Q_i K_j^T                     (masked entries = -inf)
//   m_new = max(m, rowmax(S_ij))
//   P_ij  = exp(S_ij - m_new)
//   l     = exp(m - m_new) * l + rowsum(P_ij)
//   O     = diag(exp(m - m_new)) O + P_ij V_j
// and at the end O = diag(l)^-1 O, LSE = m + log(l).
// Backward (flash-attention-2, Algorithm 2), per key tile K_j, V_j and each query tile Q_i:
//   P_ij = exp(scale * Q_i K_j^T - LSE_i),  dV_j += P_ij^T dO_i,  dP_ij = dO_i V_j^T,
//   dS_ij = P_ij * (dP_ij - D_i),  dQ_i += scale dS_ij K_j,  dK_j += scale dS_ij^T Q_i,
// with D_i = rowsum(dO_i * O_i).
#include <algorithm>
#include <cmath>

#include "detail.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/reference/attention.hpp"

namespace ringattn::ref {
namespace {

using detail::Mat;
using detail::neg_inf;
using detail::Vec;

template <class A, class B>
void check_rows_match(const SeqView<A>& a, const SeqView<B>& b, const char* an, const char* bn) {
  require(a.batch == b.batch && a.seq == b.seq && a.heads == b.heads && a.dim == b.dim, an,
          " and ", bn, " views must have the same shape");
}

template <class T>
void check_kernel_views(const SeqView<const T>& q, const SeqView<const T>& k, const SeqView<const T>& v,
                        const KernelArgs& args) {
  require(q.batch == k.batch && q.dim == k.dim, "kernel: Q and K views disagree on B or D");
  check_rows_match(k, v, "K", "V");
  require(k.heads >= 1 && q.heads % k.heads == 0, "kernel: H_q=", q.heads,
          " is not a multiple of H_kv=", k.heads);
  require(args.qpos.stride >= 1 && args.kpos.stride >= 1, "kernel: position strides must be >= 1");
  require(args.block_q >= 1 && args.block_kv >= 1, "kernel: block sizes must be >= 1");
  require(!args.scale || (std::isfinite(*args.scale) && *args.scale > 0),
          "kernel: scale must be finite and positive");
}

template <class L, class T>
void check_lse_view(const LseView<L>& l, const SeqView<const T>& q, const char* name) {
  require(l.batch == q.batch && l.heads == q.heads && l.seq == q.seq, name,
          " view must be (B, H_q, S_q) of the query rows");
}

// Number of keys of the tile [j0, j0 + cols) that query position p sees (keys are sorted).
std::int64_t visible_in_tile(std::int64_t p, Positions kpos, std::int64_t j0, std::int64_t cols) {
  const std::int64_t k0 = kpos.at(j0);
  if (p < k0) return 0;
  return std::min(cols, (p - k0) / kpos.stride + 1);
}

// Sets the masked entries of a (rows, cols) score tile to -inf (the caller only calls it for
// tiles that straddle the diagonal).
template <class Block>
void mask_tile(Block& s, const KernelArgs& a, std::int64_t i0, std::int64_t j0) {
  using T = typename Block::Scalar;
  for (std::int64_t r = 0; r < s.rows(); ++r) {
    const std::int64_t n = visible_in_tile(a.qpos.at(i0 + r), a.kpos, j0, s.cols());
    if (n < s.cols()) s.row(r).tail(s.cols() - n).setConstant(neg_inf<T>());
  }
}

}  // namespace

template <class T>
void block_forward(SeqView<const T> q, SeqView<const T> k, SeqView<const T> v, const KernelArgs& args,
                   SeqView<T> out, LseView<T> lse) {
  check_kernel_views(q, k, v, args);
  check_rows_match(q, out.as_const(), "Q", "O");
  check_lse_view(lse, q, "LSE");
  const std::int64_t Br = args.block_q, Bc = args.block_kv, D = q.dim;
  const std::int64_t group = q.heads / k.heads;
  const T scale = static_cast<T>(resolve_scale(args.scale, D));
  Mat<T> Qs(std::min(Br, q.seq), D), S(std::min(Br, q.seq), std::min(Bc, std::max<std::int64_t>(k.seq, 1)));
  Mat<T> O(std::min(Br, q.seq), D);
  Vec<T> m(Qs.rows()), l(Qs.rows()), m_safe(Qs.rows()), alpha(Qs.rows());
  for (std::int64_t b = 0; b < q.batch; ++b) {
    for (std::int64_t h = 0; h < q.heads; ++h) {
      const std::int64_t g = h / group;
      const auto Qh = detail::head(q, b, h);
      const auto Kh = detail::head(k, b, g);
      const auto Vh = detail::head(v, b, g);
      auto Oh = detail::head(out, b, h);
      auto Lh = detail::lse_row(lse, b, h);
      for (std::int64_t i0 = 0; i0 < q.seq; i0 += Br) {
        const std::int64_t rows = std::min(Br, q.seq - i0);
        const std::int64_t q_first = args.qpos.at(i0), q_last = args.qpos.at(i0 + rows - 1);
        auto Qt = Qs.topRows(rows);
        auto Ot = O.topRows(rows);
        auto mt = m.head(rows), lt = l.head(rows), ms = m_safe.head(rows), at = alpha.head(rows);
        Qt = Qh.middleRows(i0, rows) * scale;  // scale folded into Q once per tile
        mt.setConstant(neg_inf<T>());
        lt.setZero();
        Ot.setZero();
        for (std::int64_t j0 = 0; j0 < k.seq; j0 += Bc) {
          const std::int64_t cols = std::min(Bc, k.seq - j0);
          const std::int64_t k_first = args.kpos.at(j0), k_last = args.kpos.at(j0 + cols - 1);
          // Keys are sorted by position: once a tile starts after the last query, all later do.
          if (args.causal && k_first > q_last) break;
          auto St = S.topLeftCorner(rows, cols);
          St.noalias() = Qt * Kh.middleRows(j0, cols).transpose();  // S_ij = scale Q_i K_j^T
          if (args.causal && k_last > q_first) mask_tile(St, args, i0, j0);
          // m_new = max(m, rowmax(S_ij)); a row that has seen no key yet keeps m = -inf and is
          // shifted by 0 instead, so exp never sees -inf - -inf.
          for (std::int64_t r = 0; r < rows; ++r) {
            const T m_new = std::max(mt(r), St.row(r).maxCoeff());
            ms(r) = m_new == neg_inf<T>() ? T(0) : m_new;
            at(r) = std::exp(mt(r) - ms(r));  // exp(m - m_new); 0 when m = -inf
            mt(r) = m_new;
          }
          St.array().colwise() -= ms.array();
          St = detail::exp_flush(St.array());                            // P_ij
          lt = at.cwiseProduct(lt) + St.rowwise().sum();                 // l update
          Ot = at.asDiagonal() * Ot;                                     // rescale old O
          Ot.noalias() += St * Vh.middleRows(j0, cols);                  // O += P_ij V_j
          if (args.progress) args.progress();
        }
        for (std::int64_t r = 0; r < rows; ++r) {
          if (lt(r) > T(0)) {
            Oh.row(i0 + r) = Ot.row(r) / lt(r);  // O = diag(l)^-1 O
            Lh(i0 + r) = mt(r) + std::log(lt(r));
          } else {  // no visible key: O = 0, LSE = -inf
            Oh.row(i0 + r).setZero();
            Lh(i0 + r) = neg_inf<T>();
          }
        }
      }
    }
  }
}

template <class T>
void block_backward(SeqView<const T> q, SeqView<const T> k, SeqView<const T> v, SeqView<const T> dout,
                    LseView<const T> lse, LseView<const T> delta, const KernelArgs& args, SeqView<T> dq,
                    SeqView<T> dk, SeqView<T> dv) {
  check_kernel_views(q, k, v, args);
  check_rows_match(q, dout, "Q", "dO");
  check_rows_match(q, dq.as_const(), "Q", "dQ");
  check_rows_match(k, dk.as_const(), "K", "dK");
  check_rows_match(k, dv.as_const(), "K", "dV");
  check_lse_view(lse, q, "LSE");
  check_lse_view(delta, q, "D");
  const std::int64_t Br = args.block_q, Bc = args.block_kv, D = q.dim;
  const std::int64_t group = q.heads / k.heads;
  const T scale = static_cast<T>(resolve_scale(args.scale, D));
  const std::int64_t br = std::min(Br, q.seq), bc = std::min(Bc, k.seq);
  Mat<T> Qs(br, D), S(br, bc), dP(br, bc), dK(bc, D), dV(bc, D);
  for (std::int64_t b = 0; b < q.batch; ++b) {
    for (std::int64_t g = 0; g < k.heads; ++g) {
      const auto Kh = detail::head(k, b, g);
      const auto Vh = detail::head(v, b, g);
      auto dKh = detail::head(dk, b, g);
      auto dVh = detail::head(dv, b, g);
      for (std::int64_t j0 = 0; j0 < k.seq; j0 += Bc) {
        const std::int64_t cols = std::min(Bc, k.seq - j0);
        const std::int64_t k_first = args.kpos.at(j0), k_last = args.kpos.at(j0 + cols - 1);
        const auto Kt = Kh.middleRows(j0, cols);
        const auto Vt = Vh.middleRows(j0, cols);
        auto dKt = dK.topRows(cols), dVt = dV.topRows(cols);
        dKt.setZero();
        dVt.setZero();
        for (std::int64_t h = g * group; h < (g + 1) * group; ++h) {  // query heads sharing K_j
          const auto Qh = detail::head(q, b, h);
          const auto dOh = detail::head(dout, b, h);
          auto dQh = detail::head(dq, b, h);
          const auto Lh = detail::lse_row(lse, b, h);
          const auto Dh = detail::lse_row(delta, b, h);
          for (std::int64_t i0 = 0; i0 < q.seq; i0 += Br) {
            const std::int64_t rows = std::min(Br, q.seq - i0);
            const std::int64_t q_first = args.qpos.at(i0), q_last = args.qpos.at(i0 + rows - 1);
            if (args.causal && k_first > q_last) continue;  // no query of this tile sees K_j
            auto Qt = Qs.topRows(rows);
            auto St = S.topLeftCorner(rows, cols);
            auto dPt = dP.topLeftCorner(rows, cols);
            const auto dOt = dOh.middleRows(i0, rows);
            Qt = Qh.middleRows(i0, rows) * scale;
            St.noalias() = Qt * Kt.transpose();
            if (args.causal && k_last > q_first) mask_tile(St, args, i0, j0);
            // P_ij = exp(S_ij - LSE_i); a row with LSE = -inf saw no key and has P = 0.
            for (std::int64_t r = 0; r < rows; ++r) {
              const T L = Lh(i0 + r);
              if (L == neg_inf<T>()) {
                St.row(r).setZero();
              } else {
                St.row(r) = detail::exp_flush(St.row(r).array() - L);
              }
            }
            dVt.noalias() += St.transpose() * dOt;                   // dV_j += P^T dO_i
            dPt.noalias() = dOt * Vt.transpose();                    // dP_ij = dO_i V_j^T
            dPt.array().colwise() -= Dh.segment(i0, rows).array();   // dP_ij - D_i
            dPt.array() *= St.array();                               // dS_ij = P * (dP - D)
            dQh.middleRows(i0, rows).noalias() += (scale * dPt) * Kt;  // dQ_i += scale dS K_j
            dKt.noalias() += dPt.transpose() * Qt;                   // dK_j += dS^T (scale Q_i)
            if (args.progress) args.progress();
          }
        }
        dKh.middleRows(j0, cols) += dKt;
        dVh.middleRows(j0, cols) += dVt;
      }
    }
  }
}

template <class T>
Tensor<T> softmax_delta(const Tensor<T>& out, const Tensor<T>& dout) {
  require(out.shape() == dout.shape(), "O is ", shape_string(out.shape()), " but dO is ",
          shape_string(dout.shape()), ": they must have the same shape");
  const auto ov = seq_view(out), dov = seq_view(dout);
  Tensor<T> delta({ov.batch, ov.heads, ov.seq});
  const auto dv = lse_view(delta);
  for (std::int64_t b = 0; b < ov.batch; ++b) {
    for (std::int64_t h = 0; h < ov.heads; ++h) {
      detail::lse_row(dv, b, h) =
          (detail::head(ov, b, h).array() * detail::head(dov, b, h).array()).rowwise().sum();
    }
  }
  return delta;
}

template <class T>
ForwardResult<T> blockwise_forward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                   const AttentionOptions& options) {
  const AttentionShape sh = check_qkv(q, k, v);
  check_options(options);
  ForwardResult<T> r{Tensor<T>(q.shape()), Tensor<T>({sh.batch, sh.heads_q, sh.seq_q})};
  const KernelArgs args{{sh.causal_query_offset(), 1}, {0, 1}, options.causal,
                        resolve_scale(options, sh.head_dim), options.block_q, options.block_kv, {}};
  block_forward(seq_view(q), seq_view(k), seq_view(v), args, seq_view(r.out), lse_view(r.lse));
  return r;
}

template <class T>
Gradients<T> blockwise_backward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                const Tensor<T>& out, const Tensor<T>& lse, const Tensor<T>& dout,
                                const AttentionOptions& options) {
  const AttentionShape sh = check_qkv(q, k, v);
  check_backward_inputs(sh, out, lse, dout);
  check_options(options);
  Gradients<T> g{Tensor<T>(q.shape()), Tensor<T>(k.shape()), Tensor<T>(v.shape())};
  const Tensor<T> delta = softmax_delta(out, dout);
  const KernelArgs args{{sh.causal_query_offset(), 1}, {0, 1}, options.causal,
                        resolve_scale(options, sh.head_dim), options.block_q, options.block_kv, {}};
  block_backward(seq_view(q), seq_view(k), seq_view(v), seq_view(dout), lse_view(lse), lse_view(delta),
                 args, seq_view(g.dq), seq_view(g.dk), seq_view(g.dv));
  return g;
}

#define INSTANTIATE(T)                                                                               \
  template void block_forward<T>(SeqView<const T>, SeqView<const T>, SeqView<const T>,              \
                                 const KernelArgs&, SeqView<T>, LseView<T>);                        \
  template void block_backward<T>(SeqView<const T>, SeqView<const T>, SeqView<const T>,             \
                                  SeqView<const T>, LseView<const T>, LseView<const T>,             \
                                  const KernelArgs&, SeqView<T>, SeqView<T>, SeqView<T>);           \
  template Tensor<T> softmax_delta<T>(const Tensor<T>&, const Tensor<T>&);                          \
  template ForwardResult<T> blockwise_forward<T>(const Tensor<T>&, const Tensor<T>&,                \
                                                 const Tensor<T>&, const AttentionOptions&);        \
  template Gradients<T> blockwise_backward<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&, \
                                              const Tensor<T>&, const Tensor<T>&, const Tensor<T>&, \
                                              const AttentionOptions&);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace ringattn::ref
