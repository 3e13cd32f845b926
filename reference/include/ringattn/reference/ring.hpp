/// @file ring.hpp
/// @brief Ring attention over N virtual ranks in one process, forward and backward, every layout.
///
/// Each rank holds its shard of Q, K and V (split by a SequenceLayout). At step s rank r computes
/// its queries against the K/V block that started on rank (r - s) mod N, merges the partial
/// (O, LSE) into its running result, and passes the block to rank r + 1 (core's RingSchedule says
/// which pairs to compute and how they are masked; Skip pairs are not computed). In the backward
/// pass dQ accumulates on the rank, while dK and dV travel with their K/V block and take one
/// last hop home after step N-1. The per-rank step functions here are the ones the MPI ring
/// calls; ring_forward/ring_backward drive N of them with explicit send/receive buffers.
#pragma once

#include <cstdint>

#include "ringattn/core/layout.hpp"
#include "ringattn/core/schedule.hpp"
#include "ringattn/reference/attention.hpp"

namespace ringattn::ref {

/// Options of the ring: the attention options plus the layout and the number of ranks.
struct RingOptions : AttentionOptions {
  Layout layout = Layout::Contiguous;  ///< how the sequence is split
  int ranks = 1;                       ///< N
};

/// Rows of @p full (B, S, H, D) that rank @p rank holds under @p layout, as a (B, S_r, H, D) tensor.
template <class T>
Tensor<T> shard_rows(const Tensor<T>& full, const SequenceLayout& layout, int rank);
/// Entries of @p full (B, H, S) that rank @p rank holds, as a (B, H, S_r) tensor.
template <class T>
Tensor<T> shard_lse(const Tensor<T>& full, const SequenceLayout& layout, int rank);
/// Writes rank @p rank's (B, S_r, H, D) shard back into its rows of @p full.
template <class T>
void unshard_rows(const Tensor<T>& shard, const SequenceLayout& layout, int rank, Tensor<T>& full);
/// Writes rank @p rank's (B, H, S_r) shard back into its entries of @p full.
template <class T>
void unshard_lse(const Tensor<T>& shard, const SequenceLayout& layout, int rank, Tensor<T>& full);

/// One forward ring step of one rank: the rank's query shard against the K/V block it holds at
/// @p step (the block of rank schedule.kv_owner), merged into the running (out_acc, lse_acc).
/// out_acc must start at 0 and lse_acc at -inf. @p progress, when set, is called after every tile.
template <class T>
void ring_forward_step(const RingSchedule& schedule, int step, int rank, const Tensor<T>& q_shard,
                       const Tensor<T>& k_block, const Tensor<T>& v_block,
                       const AttentionOptions& options, Tensor<T>& out_acc, Tensor<T>& lse_acc,
                       const std::function<void()>& progress = {});

/// One backward ring step of one rank: accumulates into the rank's dq_acc and into the
/// travelling dk_block/dv_block of the block it holds. @p lse_shard is the final LSE and
/// @p delta_shard D = rowsum(dO * O) of the rank's queries. @p progress: as in ring_forward_step.
template <class T>
void ring_backward_step(const RingSchedule& schedule, int step, int rank, const Tensor<T>& q_shard,
                        const Tensor<T>& k_block, const Tensor<T>& v_block,
                        const Tensor<T>& dout_shard, const Tensor<T>& lse_shard,
                        const Tensor<T>& delta_shard, const AttentionOptions& options,
                        Tensor<T>& dq_acc, Tensor<T>& dk_block, Tensor<T>& dv_block,
                        const std::function<void()>& progress = {});

/// Ring attention forward over options.ranks virtual ranks: shards, runs the ring, gathers.
template <class T>
ForwardResult<T> ring_forward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                              const RingOptions& options);
/// Ring attention backward: dQ stays on its rank, dK/dV travel with their block and return home.
template <class T>
Gradients<T> ring_backward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                           const Tensor<T>& out, const Tensor<T>& lse, const Tensor<T>& dout,
                           const RingOptions& options);

}  // namespace ringattn::ref
