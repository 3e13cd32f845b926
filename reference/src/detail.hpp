// Internal helpers of the reference: Eigen maps over the project's BSHD views.
#pragma once

#include <Eigen/Dense>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "ringattn/core/tensor.hpp"

namespace ringattn::ref::detail {

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
using Stride = Eigen::OuterStride<>;

/// The (S, D) matrix of head h in batch b of a (B, S, H, D) view: rows are H*D apart.
template <class T>
auto head(SeqView<T> v, std::int64_t b, std::int64_t h) {
  using M = std::conditional_t<std::is_const_v<T>, const Mat<std::remove_const_t<T>>, Mat<T>>;
  return Eigen::Map<M, Eigen::Unaligned, Stride>(v.row(b, 0, h), v.seq, v.dim, Stride(v.row_stride()));
}

/// The S entries of head h in batch b of a (B, H, S) view.
template <class T>
auto lse_row(LseView<T> v, std::int64_t b, std::int64_t h) {
  using V = std::conditional_t<std::is_const_v<T>, const Vec<std::remove_const_t<T>>, Vec<T>>;
  return Eigen::Map<V>(&v.at(b, h, 0), v.seq);
}

template <class T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

/// exp(x) with every result below the smallest normal number flushed to exactly 0 (x <= 0 here).
/// Eigen 3.4's vectorized double exp returns a denormal (~5.6e-309) for -inf instead of 0, so
/// masked probabilities would be non-zero denormals, and denormal operands slow every matrix
/// product that follows by 10-100x. A flushed value is below 1e-38 of the row's largest term.
template <class Derived>
auto exp_flush(const Eigen::ArrayBase<Derived>& x) {
  using T = typename Derived::Scalar;
  static const T lo = std::log(std::numeric_limits<T>::min());
  return (x < lo).select(T(0), x.exp());
}

}  // namespace ringattn::ref::detail

#define RINGATTN_INSTANTIATE_FLOAT_DOUBLE(MACRO) \
  MACRO(float)                                    \
  MACRO(double)
