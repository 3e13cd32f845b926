/// @file shape.hpp
/// @brief AttentionShape: the sizes of one attention call, with validation that names the problem.
#pragma once

#include <cstdint>
#include <string>

namespace ringattn {

/// Sizes of one attention call. Tensors are row-major BSHD:
/// Q is (B, S_q, H_q, D), K and V are (B, S_kv, H_kv, D), O has Q's shape and the
/// log-sum-exp LSE is (B, H_q, S_q). Grouped-query attention (GQA) when H_q is a multiple of
/// H_kv: query head h reads key/value head h / (H_q / H_kv).
struct AttentionShape {
  std::int64_t batch = 0;    ///< B
  std::int64_t seq_q = 0;    ///< S_q, query tokens
  std::int64_t seq_kv = 0;   ///< S_kv, key/value tokens
  std::int64_t heads_q = 0;  ///< H_q, query heads
  std::int64_t heads_kv = 0; ///< H_kv, key/value heads (divides H_q)
  std::int64_t head_dim = 0; ///< D

  /// Throws ringattn::Error naming the first problem: a dimension that is not positive, or
  /// H_q not a multiple of H_kv.
  void validate() const;

  /// Query heads that share one key/value head: H_q / H_kv.
  [[nodiscard]] std::int64_t group_size() const { return heads_q / heads_kv; }
  /// Elements of Q (and O): B * S_q * H_q * D.
  [[nodiscard]] std::int64_t q_elements() const { return batch * seq_q * heads_q * head_dim; }
  /// Elements of K (and of V): B * S_kv * H_kv * D.
  [[nodiscard]] std::int64_t kv_elements() const { return batch * seq_kv * heads_kv * head_dim; }
  /// Elements of LSE: B * H_q * S_q.
  [[nodiscard]] std::int64_t lse_elements() const { return batch * heads_q * seq_q; }
  /// "B=2 S_q=128 S_kv=128 H_q=8 H_kv=2 D=64", for messages and reports.
  [[nodiscard]] std::string to_string() const;

  /// Position of query row i in key coordinates when masking causally: queries are aligned to
  /// the end of the keys, as in flash-attention, so query i sits at S_kv - S_q + i.
  [[nodiscard]] std::int64_t causal_query_offset() const { return seq_kv - seq_q; }

  /// Equal when all six sizes are equal.
  friend bool operator==(const AttentionShape&, const AttentionShape&) = default;
};

}  // namespace ringattn
