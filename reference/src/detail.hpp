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
/// product that follows by 10-100x. A flushed value is below 1e-37 of the row's largest term.
/// Written as a packet functor because Eigen 3.4 does not vectorize comparisons and select():
/// `(x < lo).select(0, x.exp())` runs one scalar exp per element (34% of the blockwise time).
template <class T>
struct ExpFlushOp {
  // log of the smallest normal number: log(FLT_MIN), log(DBL_MIN).
  static constexpr T lo = std::is_same_v<T, float> ? T(-87.33654475f) : T(-708.3964185322641);
  T operator()(const T& x) const { return x < lo ? T(0) : std::exp(x); }
  template <class Packet>
  Packet packetOp(const Packet& x) const {
    using namespace Eigen::internal;
    return pselect(pcmp_lt(x, pset1<Packet>(lo)), pzero(x), pexp(x));
  }
};

/// Coefficient-wise ExpFlushOp over an array expression.
template <class Derived>
auto exp_flush(const Eigen::ArrayBase<Derived>& x) {
  return x.unaryExpr(ExpFlushOp<typename Derived::Scalar>());
}

}  // namespace ringattn::ref::detail

namespace Eigen::internal {
template <class T>
struct functor_traits<ringattn::ref::detail::ExpFlushOp<T>> {
  enum { Cost = 20 * NumTraits<T>::MulCost, PacketAccess = packet_traits<T>::HasExp };
};
}  // namespace Eigen::internal

#define RINGATTN_INSTANTIATE_FLOAT_DOUBLE(MACRO) \
  MACRO(float)                                    \
  MACRO(double)
