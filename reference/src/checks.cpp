#include <cmath>

#include "ringattn/core/error.hpp"
#include "ringattn/reference/attention.hpp"

namespace ringattn::ref {

template <class T>
AttentionShape check_qkv(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v) {
  require(q.rank() == 4, "Q must be (B, S_q, H_q, D), got shape ", shape_string(q.shape()));
  require(k.rank() == 4, "K must be (B, S_kv, H_kv, D), got shape ", shape_string(k.shape()));
  require(v.rank() == 4, "V must be (B, S_kv, H_kv, D), got shape ", shape_string(v.shape()));
  require(k.shape() == v.shape(), "K is ", shape_string(k.shape()), " but V is ",
          shape_string(v.shape()), ": K and V must have the same shape");
  require(q.dim(0) == k.dim(0), "Q has batch ", q.dim(0), " but K has batch ", k.dim(0));
  require(q.dim(3) == k.dim(3), "Q has head dim D=", q.dim(3), " but K has D=", k.dim(3));
  AttentionShape s{q.dim(0), q.dim(1), k.dim(1), q.dim(2), k.dim(2), q.dim(3)};
  s.validate();
  return s;
}

template <class T>
void check_backward_inputs(const AttentionShape& shape, const Tensor<T>& out, const Tensor<T>& lse,
                           const Tensor<T>& dout) {
  const std::vector<std::int64_t> o_shape = {shape.batch, shape.seq_q, shape.heads_q, shape.head_dim};
  const std::vector<std::int64_t> l_shape = {shape.batch, shape.heads_q, shape.seq_q};
  require(out.shape() == o_shape, "O is ", shape_string(out.shape()), " but must have Q's shape ",
          shape_string(o_shape));
  require(dout.shape() == o_shape, "dO is ", shape_string(dout.shape()), " but must have Q's shape ",
          shape_string(o_shape));
  require(lse.shape() == l_shape, "LSE is ", shape_string(lse.shape()), " but must be (B, H_q, S_q) = ",
          shape_string(l_shape));
}

void check_options(const AttentionOptions& options) {
  if (options.scale) {
    require(std::isfinite(*options.scale) && *options.scale > 0, "scale must be a finite positive number, got ",
            *options.scale);
  }
  require(options.block_q >= 1, "block_q (Br) must be at least 1, got ", options.block_q);
  require(options.block_kv >= 1, "block_kv (Bc) must be at least 1, got ", options.block_kv);
}

double resolve_scale(std::optional<double> scale, std::int64_t head_dim) {
  return scale ? *scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
}

double resolve_scale(const AttentionOptions& options, std::int64_t head_dim) {
  return resolve_scale(options.scale, head_dim);
}

#define INSTANTIATE(T)                                                                          \
  template AttentionShape check_qkv<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&);   \
  template void check_backward_inputs<T>(const AttentionShape&, const Tensor<T>&, const Tensor<T>&, \
                                         const Tensor<T>&);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace ringattn::ref
