#include "ringattn/core/cost.hpp"

#include "ringattn/core/error.hpp"

namespace ringattn {

double attention_flops_forward(std::int64_t batch, std::int64_t heads_q, std::int64_t head_dim,
                               std::int64_t visible) {
  // S = Q K^T and O = P V: 2*D FLOPs (a multiply and an add per element of D) each per pair.
  return 4.0 * static_cast<double>(batch) * static_cast<double>(heads_q) *
         static_cast<double>(head_dim) * static_cast<double>(visible);
}

double attention_flops_backward(std::int64_t batch, std::int64_t heads_q, std::int64_t head_dim,
                                std::int64_t visible) {
  // Five products of the forward's size (S recomputed, dV, dP, dQ, dK) against its two.
  return 2.5 * attention_flops_forward(batch, heads_q, head_dim, visible);
}

double kv_block_bytes(std::int64_t batch, std::int64_t tokens, std::int64_t heads_kv,
                      std::int64_t head_dim, int elem_bytes) {
  return 2.0 * static_cast<double>(batch) * static_cast<double>(tokens) *
         static_cast<double>(heads_kv) * static_cast<double>(head_dim) * elem_bytes;
}

double min_overlap_block(double flops_per_s, double bytes_per_s, int elem_bytes) {
  require(flops_per_s > 0 && bytes_per_s > 0 && elem_bytes > 0,
          "min_overlap_block needs positive FLOP/s, bandwidth and element size");
  // 4 D c^2 / F >= 2 c D e / B  <=>  c >= e F / (2 B).
  return static_cast<double>(elem_bytes) * flops_per_s / (2.0 * bytes_per_s);
}

}  // namespace ringattn
