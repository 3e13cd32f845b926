// The LSE merge: two softmax-normalized partial results over disjoint key sets combine exactly,
//   LSE = log(e^{LSE_a} + e^{LSE_b}),  O = e^{LSE_a - LSE} O_a + e^{LSE_b - LSE} O_b,
// which is a subtraction in log space. Computed around max(LSE_a, LSE_b) so it never overflows.
#include <algorithm>
#include <cmath>

#include "detail.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/reference/attention.hpp"

namespace ringattn::ref {

using detail::neg_inf;

template <class T>
void merge_into(SeqView<T> out_acc, LseView<T> lse_acc, SeqView<const T> out_part,
                LseView<const T> lse_part) {
  require(out_acc.batch == out_part.batch && out_acc.seq == out_part.seq &&
              out_acc.heads == out_part.heads && out_acc.dim == out_part.dim,
          "merge: the two partial outputs have different shapes");
  require(lse_acc.batch == out_acc.batch && lse_acc.heads == out_acc.heads && lse_acc.seq == out_acc.seq &&
              lse_part.batch == out_acc.batch && lse_part.heads == out_acc.heads &&
              lse_part.seq == out_acc.seq,
          "merge: LSE must be (B, H, S) of the outputs' rows");
  for (std::int64_t b = 0; b < out_acc.batch; ++b) {
    for (std::int64_t h = 0; h < out_acc.heads; ++h) {
      for (std::int64_t s = 0; s < out_acc.seq; ++s) {
        T& la = lse_acc.at(b, h, s);
        const T lb = lse_part.at(b, h, s);
        T* oa = out_acc.row(b, s, h);
        const T* ob = out_part.row(b, s, h);
        if (lb == neg_inf<T>()) {
          // The partial saw no key: nothing to add. If the running result saw none either, its
          // O is defined as 0, whatever the buffer held before (it may be poisoned).
          if (la == neg_inf<T>()) std::fill(oa, oa + out_acc.dim, T(0));
          continue;
        }
        if (la == neg_inf<T>()) {  // the running result saw no key yet: take the partial
          std::copy(ob, ob + out_acc.dim, oa);
          la = lb;
          continue;
        }
        const T mx = std::max(la, lb);
        const T wa = std::exp(la - mx), wb = std::exp(lb - mx);  // both in (0, 1], one is 1
        const T sum = wa + wb;
        for (std::int64_t d = 0; d < out_acc.dim; ++d) oa[d] = (wa * oa[d] + wb * ob[d]) / sum;
        la = mx + std::log(sum);
      }
    }
  }
}

template <class T>
void merge_into(Tensor<T>& out_acc, Tensor<T>& lse_acc, const Tensor<T>& out_part,
                const Tensor<T>& lse_part) {
  require(out_acc.shape() == out_part.shape(), "merge: O is ", shape_string(out_acc.shape()),
          " but the partial O is ", shape_string(out_part.shape()));
  require(lse_acc.shape() == lse_part.shape(), "merge: LSE is ", shape_string(lse_acc.shape()),
          " but the partial LSE is ", shape_string(lse_part.shape()));
  merge_into(seq_view(out_acc), lse_view(lse_acc), seq_view(out_part), lse_view(lse_part));
}

template <class T>
ForwardResult<T> combine_partials(const std::vector<ForwardResult<T>>& partials) {
  require(!partials.empty(), "combine_partials needs at least one partial result");
  const auto& shape = partials.front().out.shape();
  const auto& lshape = partials.front().lse.shape();
  for (const auto& p : partials) {
    require(p.out.shape() == shape && p.lse.shape() == lshape,
            "combine_partials: partial results have different shapes");
  }
  ForwardResult<T> r{Tensor<T>(shape), Tensor<T>(lshape)};
  const auto ov = seq_view(r.out);
  const auto lv = lse_view(r.lse);
  for (std::int64_t b = 0; b < ov.batch; ++b) {
    for (std::int64_t h = 0; h < ov.heads; ++h) {
      for (std::int64_t s = 0; s < ov.seq; ++s) {
        // LSE = logsumexp_p LSE_p around the max; all -inf: no partial saw a key.
        T mx = neg_inf<T>();
        for (const auto& p : partials) mx = std::max(mx, lse_view(p.lse).at(b, h, s));
        T* o = ov.row(b, s, h);
        if (mx == neg_inf<T>()) {
          std::fill(o, o + ov.dim, T(0));
          lv.at(b, h, s) = neg_inf<T>();
          continue;
        }
        T sum = 0;
        for (const auto& p : partials) sum += std::exp(lse_view(p.lse).at(b, h, s) - mx);
        const T lse = mx + std::log(sum);
        std::fill(o, o + ov.dim, T(0));
        for (const auto& p : partials) {
          const T w = std::exp(lse_view(p.lse).at(b, h, s) - lse);  // e^{LSE_p - LSE}
          const T* op = seq_view(p.out).row(b, s, h);
          for (std::int64_t d = 0; d < ov.dim; ++d) o[d] += w * op[d];
        }
        lv.at(b, h, s) = lse;
      }
    }
  }
  return r;
}

#define INSTANTIATE(T)                                                                           \
  template void merge_into<T>(SeqView<T>, LseView<T>, SeqView<const T>, LseView<const T>);       \
  template void merge_into<T>(Tensor<T>&, Tensor<T>&, const Tensor<T>&, const Tensor<T>&);       \
  template ForwardResult<T> combine_partials<T>(const std::vector<ForwardResult<T>>&);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace ringattn::ref
