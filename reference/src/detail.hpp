// Internal helpers of the reference: Eigen maps over the project's BSHD views.
#pragma once

#include <Eigen/Dense>
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

}  // namespace ringattn::ref::detail

#define RINGATTN_INSTANTIATE_FLOAT_DOUBLE(MACRO) \
  MACRO(float)                                    \
  MACRO(double)
