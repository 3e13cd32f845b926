/// @file tensor.hpp
/// @brief A small owning row-major tensor and the strided views the kernels work on.
///
/// Views follow the project's layouts: SeqView is a (B, S, H, D) tensor whose S dimension may be
/// a sub-range (a segment of a shard), LseView a (B, H, S) one. Both are cheap to copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "ringattn/core/error.hpp"

namespace ringattn {

/// Owning, row-major (C order) tensor of any rank.
template <class T>
class Tensor {
 public:
  /// An empty tensor: no dimensions and no elements (size() == 0).
  Tensor() = default;
  /// A tensor of the given shape with every element set to @p fill.
  explicit Tensor(std::vector<std::int64_t> shape, T fill = T(0))
      : shape_(std::move(shape)), data_(static_cast<std::size_t>(count(shape_)), fill) {}

  [[nodiscard]] const std::vector<std::int64_t>& shape() const { return shape_; }  ///< sizes
  [[nodiscard]] int rank() const { return static_cast<int>(shape_.size()); }      ///< number of dims
  /// Size of dimension @p i.
  [[nodiscard]] std::int64_t dim(int i) const { return shape_.at(static_cast<std::size_t>(i)); }
  /// Number of elements.
  [[nodiscard]] std::int64_t size() const { return static_cast<std::int64_t>(data_.size()); }
  [[nodiscard]] T* data() { return data_.data(); }              ///< first element
  [[nodiscard]] const T* data() const { return data_.data(); }  ///< first element
  [[nodiscard]] std::vector<T>& values() { return data_; }              ///< the storage
  [[nodiscard]] const std::vector<T>& values() const { return data_; }  ///< the storage
  /// Element @p i in C order.
  T& operator[](std::int64_t i) { return data_[static_cast<std::size_t>(i)]; }
  /// Element @p i in C order.
  const T& operator[](std::int64_t i) const { return data_[static_cast<std::size_t>(i)]; }
  /// Sets every element to @p value.
  void fill(T value) { data_.assign(data_.size(), value); }
  /// Gives the tensor a new shape and element count, keeping its storage: no allocation while
  /// the count fits the capacity (see reserve()). Elements kept keep their values, added ones
  /// are T(0); callers that reuse a buffer overwrite or fill() it.
  void resize(std::vector<std::int64_t> shape) {
    const std::int64_t n = count(shape);
    data_.resize(static_cast<std::size_t>(n));
    shape_ = std::move(shape);
  }
  /// Makes room for @p elements so that later resize() calls up to that count do not allocate.
  void reserve(std::int64_t elements) {
    require(elements >= 0, "tensor capacity ", elements, " is negative");
    data_.reserve(static_cast<std::size_t>(elements));
  }

  /// Product of the sizes; throws ringattn::Error on a negative size or on overflow.
  static std::int64_t count(const std::vector<std::int64_t>& shape) {
    std::int64_t n = 1;
    for (std::int64_t d : shape) {
      require(d >= 0, "tensor dimension ", d, " is negative");
      require(d == 0 || n <= INT64_MAX / d, "tensor shape is too large (element count overflows)");
      n *= d;
    }
    return n;
  }

 private:
  std::vector<std::int64_t> shape_;
  std::vector<T> data_;
};

/// Shape as "(2, 128, 8, 64)".
std::string shape_string(const std::vector<std::int64_t>& shape);

/// A (B, S, H, D) view: element (b, s, h, d) at data[b*batch_stride + s*H*D + h*D + d].
/// The S range may be a sub-range of a larger buffer (then batch_stride > S*H*D).
template <class T>
struct SeqView {
  T* data = nullptr;              ///< element (0, 0, 0, 0)
  std::int64_t batch = 0;         ///< B
  std::int64_t seq = 0;           ///< S (rows in this view)
  std::int64_t heads = 0;         ///< H
  std::int64_t dim = 0;           ///< D
  std::int64_t batch_stride = 0;  ///< elements between consecutive batch entries

  /// Elements between consecutive rows of one head: H * D.
  [[nodiscard]] std::int64_t row_stride() const { return heads * dim; }
  /// Pointer to row s of head h in batch b (D consecutive elements).
  [[nodiscard]] T* row(std::int64_t b, std::int64_t s, std::int64_t h) const {
    return data + b * batch_stride + s * heads * dim + h * dim;
  }
  /// Rows [s0, s0 + n) of this view.
  [[nodiscard]] SeqView rows(std::int64_t s0, std::int64_t n) const {
    return {data + s0 * heads * dim, batch, n, heads, dim, batch_stride};
  }
  /// The same view, read-only.
  [[nodiscard]] SeqView<const T> as_const() const {
    return {data, batch, seq, heads, dim, batch_stride};
  }
};

/// A (B, H, S) view: element (b, h, s) at data[b*batch_stride + h*head_stride + s].
template <class T>
struct LseView {
  T* data = nullptr;              ///< element (0, 0, 0)
  std::int64_t batch = 0;         ///< B
  std::int64_t heads = 0;         ///< H
  std::int64_t seq = 0;           ///< S (entries in this view)
  std::int64_t batch_stride = 0;  ///< elements between consecutive batch entries
  std::int64_t head_stride = 0;   ///< elements between consecutive heads

  /// Element (b, h, s).
  [[nodiscard]] T& at(std::int64_t b, std::int64_t h, std::int64_t s) const {
    return data[b * batch_stride + h * head_stride + s];
  }
  /// Entries [s0, s0 + n) of this view.
  [[nodiscard]] LseView rows(std::int64_t s0, std::int64_t n) const {
    return {data + s0, batch, heads, n, batch_stride, head_stride};
  }
  /// The same view, read-only.
  [[nodiscard]] LseView<const T> as_const() const {
    return {data, batch, heads, seq, batch_stride, head_stride};
  }
};

/// View of a rank-4 (B, S, H, D) tensor; throws ringattn::Error if it is not rank 4.
template <class T>
SeqView<T> seq_view(Tensor<T>& t) {
  require(t.rank() == 4, "expected a (B, S, H, D) tensor, got shape ", shape_string(t.shape()));
  return {t.data(), t.dim(0), t.dim(1), t.dim(2), t.dim(3), t.dim(1) * t.dim(2) * t.dim(3)};
}
/// Read-only view of a rank-4 (B, S, H, D) tensor.
template <class T>
SeqView<const T> seq_view(const Tensor<T>& t) {
  require(t.rank() == 4, "expected a (B, S, H, D) tensor, got shape ", shape_string(t.shape()));
  return {t.data(), t.dim(0), t.dim(1), t.dim(2), t.dim(3), t.dim(1) * t.dim(2) * t.dim(3)};
}
/// View of a rank-3 (B, H, S) tensor; throws ringattn::Error if it is not rank 3.
template <class T>
LseView<T> lse_view(Tensor<T>& t) {
  require(t.rank() == 3, "expected a (B, H, S) tensor, got shape ", shape_string(t.shape()));
  return {t.data(), t.dim(0), t.dim(1), t.dim(2), t.dim(1) * t.dim(2), t.dim(2)};
}
/// Read-only view of a rank-3 (B, H, S) tensor.
template <class T>
LseView<const T> lse_view(const Tensor<T>& t) {
  require(t.rank() == 3, "expected a (B, H, S) tensor, got shape ", shape_string(t.shape()));
  return {t.data(), t.dim(0), t.dim(1), t.dim(2), t.dim(1) * t.dim(2), t.dim(2)};
}

}  // namespace ringattn
