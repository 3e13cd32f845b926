/// @file cost.hpp
/// @brief FLOPs and bytes of attention blocks, forward and backward, and the overlap threshold.
#pragma once

#include <cstdint>

namespace ringattn {

/// Forward FLOPs of attention over @p visible (query, key) pairs per head: QK^T and PV are
/// 2*D FLOPs each per pair, so 4 * B * H_q * D * visible.
[[nodiscard]] double attention_flops_forward(std::int64_t batch, std::int64_t heads_q,
                                             std::int64_t head_dim, std::int64_t visible);
/// Backward FLOPs: recomputing S = QK^T, dV = P^T dO, dP = dO V^T, dQ = dS K and dK = dS^T Q are
/// five products of 2*D FLOPs per pair, 2.5x the forward.
[[nodiscard]] double attention_flops_backward(std::int64_t batch, std::int64_t heads_q,
                                              std::int64_t head_dim, std::int64_t visible);
/// Bytes of a K block plus a V block of @p tokens tokens: 2 * B * tokens * H_kv * D * elem_bytes.
[[nodiscard]] double kv_block_bytes(std::int64_t batch, std::int64_t tokens, std::int64_t heads_kv,
                                    std::int64_t head_dim, int elem_bytes);
/// The smallest block (tokens per device) whose compute hides its K/V transfer (Ring Attention,
/// section 3): a block of c tokens costs 4*D*c^2 FLOPs per head and moves 2*c*D*elem_bytes bytes,
/// so 4*D*c^2/F >= 2*c*D*e/B gives c >= e*F/(2*B), which is F/B for 2-byte (bf16) elements.
/// @param flops_per_s achieved compute rate F, FLOP/s per device
/// @param bytes_per_s link bandwidth B, bytes/s per direction
/// @param elem_bytes  bytes per K/V element e (2 for bf16 and fp16, 4 for fp32)
/// @return the threshold c in tokens (not rounded; the block must be at least this large)
[[nodiscard]] double min_overlap_block(double flops_per_s, double bytes_per_s, int elem_bytes = 2);

}  // namespace ringattn
