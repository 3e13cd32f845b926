// Ring attention over N virtual ranks in one process. Each rank owns a shard of Q, K and V; the
// K/V blocks move one rank forward per step through explicit send/receive buffers, exactly as
// they would between devices, and core's RingSchedule says what each rank computes at each step.
#include <algorithm>
#include <stdexcept>
#include <utility>

#include "detail.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/reference/ring.hpp"

namespace ringattn::ref {
namespace {

// Copies rows between a (B, S, H, D) tensor and a rank's shard; to_shard picks the direction.
template <class T>
void copy_rows(const SequenceLayout& layout, int rank, const SeqView<const T>& from, SeqView<T> to,
               bool to_shard) {
  const std::int64_t width = from.heads * from.dim;
  for (const Segment& seg : layout.segments(rank)) {
    for (std::int64_t i = 0; i < seg.length; ++i) {
      const std::int64_t global = seg.position(i), local = seg.local_begin + i;
      const std::int64_t src = to_shard ? global : local, dst = to_shard ? local : global;
      for (std::int64_t b = 0; b < from.batch; ++b) {
        std::copy_n(from.row(b, src, 0), width, to.row(b, dst, 0));
      }
    }
  }
}

template <class T>
void copy_lse(const SequenceLayout& layout, int rank, const LseView<const T>& from, LseView<T> to,
              bool to_shard) {
  for (const Segment& seg : layout.segments(rank)) {
    for (std::int64_t i = 0; i < seg.length; ++i) {
      const std::int64_t global = seg.position(i), local = seg.local_begin + i;
      const std::int64_t src = to_shard ? global : local, dst = to_shard ? local : global;
      for (std::int64_t b = 0; b < from.batch; ++b) {
        for (std::int64_t h = 0; h < from.heads; ++h) to.at(b, h, dst) = from.at(b, h, src);
      }
    }
  }
}

void check_seq(std::int64_t got, std::int64_t want, const char* what, int rank) {
  require(got == want, what, " of rank ", rank, " has ", got, " tokens but the layout gives it ", want);
}

KernelArgs pair_args(const PairWork& p, const RingSchedule& schedule, const AttentionOptions& o,
                     std::int64_t head_dim, const std::function<void()>& progress) {
  return {p.q, p.k, schedule.causal(), resolve_scale(o, head_dim), o.block_q, o.block_kv, progress};
}

// Sends every rank's buffer to the next rank: after the call rank r holds what rank r-1 held.
template <class Buffer>
void pass_to_next(std::vector<Buffer>& held) {
  std::rotate(held.rbegin(), held.rbegin() + 1, held.rend());
}

}  // namespace

template <class T>
Tensor<T> shard_rows(const Tensor<T>& full, const SequenceLayout& layout, int rank) {
  const auto f = seq_view(full);
  require(f.seq == layout.seq_len(), "tensor has ", f.seq, " tokens but the layout splits ",
          layout.seq_len());
  Tensor<T> shard({f.batch, layout.shard_length(rank), f.heads, f.dim});
  copy_rows(layout, rank, f, seq_view(shard), true);
  return shard;
}

template <class T>
Tensor<T> shard_lse(const Tensor<T>& full, const SequenceLayout& layout, int rank) {
  const auto f = lse_view(full);
  require(f.seq == layout.seq_len(), "LSE has ", f.seq, " tokens but the layout splits ", layout.seq_len());
  Tensor<T> shard({f.batch, f.heads, layout.shard_length(rank)});
  copy_lse(layout, rank, f, lse_view(shard), true);
  return shard;
}

template <class T>
void unshard_rows(const Tensor<T>& shard, const SequenceLayout& layout, int rank, Tensor<T>& full) {
  const auto s = seq_view(shard);
  const auto f = seq_view(full);
  require(f.seq == layout.seq_len() && s.seq == layout.shard_length(rank) && s.batch == f.batch &&
              s.heads == f.heads && s.dim == f.dim,
          "unshard: shard ", shape_string(shard.shape()), " does not fit rank ", rank, " of ",
          shape_string(full.shape()));
  copy_rows(layout, rank, s, f, false);
}

template <class T>
void unshard_lse(const Tensor<T>& shard, const SequenceLayout& layout, int rank, Tensor<T>& full) {
  const auto s = lse_view(shard);
  const auto f = lse_view(full);
  require(f.seq == layout.seq_len() && s.seq == layout.shard_length(rank) && s.batch == f.batch &&
              s.heads == f.heads,
          "unshard: LSE shard ", shape_string(shard.shape()), " does not fit rank ", rank, " of ",
          shape_string(full.shape()));
  copy_lse(layout, rank, s, f, false);
}

template <class T>
void ring_forward_step(const RingSchedule& schedule, int step, int rank, const Tensor<T>& q_shard,
                       const Tensor<T>& k_block, const Tensor<T>& v_block, const AttentionOptions& options,
                       Tensor<T>& out_acc, Tensor<T>& lse_acc, const std::function<void()>& progress) {
  const StepWork w = schedule.work(step, rank);
  const auto qv = seq_view(q_shard), kv = seq_view(k_block), vv = seq_view(v_block);
  check_seq(qv.seq, schedule.q_layout().shard_length(rank), "the query shard", rank);
  check_seq(kv.seq, schedule.kv_layout().shard_length(w.kv_owner), "the K block", w.kv_owner);
  require(k_block.shape() == v_block.shape(), "the K and V blocks differ in shape");
  require(out_acc.shape() == q_shard.shape(), "the running O must have the query shard's shape");
  const auto ov = seq_view(out_acc);
  const auto lv = lse_view(lse_acc);
  require(lv.batch == qv.batch && lv.heads == qv.heads && lv.seq == qv.seq,
          "the running LSE must be (B, H_q, S_r)");
  for (const PairWork& p : w.pairs) {
    if (p.mask == MaskClass::Skip) continue;  // no query of the segment sees a key of this one
    Tensor<T> o_part({qv.batch, p.q_rows, qv.heads, qv.dim});
    Tensor<T> l_part({qv.batch, qv.heads, p.q_rows});
    block_forward(qv.rows(p.q_local, p.q_rows), kv.rows(p.k_local, p.k_rows), vv.rows(p.k_local, p.k_rows),
                  pair_args(p, schedule, options, qv.dim, progress), seq_view(o_part), lse_view(l_part));
    merge_into(ov.rows(p.q_local, p.q_rows), lv.rows(p.q_local, p.q_rows), seq_view(o_part).as_const(),
               lse_view(l_part).as_const());
  }
}

template <class T>
void ring_backward_step(const RingSchedule& schedule, int step, int rank, const Tensor<T>& q_shard,
                        const Tensor<T>& k_block, const Tensor<T>& v_block, const Tensor<T>& dout_shard,
                        const Tensor<T>& lse_shard, const Tensor<T>& delta_shard,
                        const AttentionOptions& options, Tensor<T>& dq_acc, Tensor<T>& dk_block,
                        Tensor<T>& dv_block, const std::function<void()>& progress) {
  const StepWork w = schedule.work(step, rank);
  const auto qv = seq_view(q_shard), kv = seq_view(k_block), vv = seq_view(v_block);
  check_seq(qv.seq, schedule.q_layout().shard_length(rank), "the query shard", rank);
  check_seq(kv.seq, schedule.kv_layout().shard_length(w.kv_owner), "the K block", w.kv_owner);
  require(k_block.shape() == v_block.shape() && dk_block.shape() == k_block.shape() &&
              dv_block.shape() == k_block.shape(),
          "the K, V, dK and dV blocks must have the same shape");
  require(dout_shard.shape() == q_shard.shape() && dq_acc.shape() == q_shard.shape(),
          "dO and dQ must have the query shard's shape");
  const auto dov = seq_view(dout_shard);
  const auto lv = lse_view(lse_shard), dl = lse_view(delta_shard);
  require(lv.batch == qv.batch && lv.heads == qv.heads && lv.seq == qv.seq && dl.batch == qv.batch &&
              dl.heads == qv.heads && dl.seq == qv.seq,
          "LSE and D must be (B, H_q, S_r) of the query shard");
  const auto dqv = seq_view(dq_acc), dkv = seq_view(dk_block), dvv = seq_view(dv_block);
  for (const PairWork& p : w.pairs) {
    if (p.mask == MaskClass::Skip) continue;
    block_backward(qv.rows(p.q_local, p.q_rows), kv.rows(p.k_local, p.k_rows), vv.rows(p.k_local, p.k_rows),
                   dov.rows(p.q_local, p.q_rows), lv.rows(p.q_local, p.q_rows), dl.rows(p.q_local, p.q_rows),
                   pair_args(p, schedule, options, qv.dim, progress), dqv.rows(p.q_local, p.q_rows),
                   dkv.rows(p.k_local, p.k_rows), dvv.rows(p.k_local, p.k_rows));
  }
}

template <class T>
ForwardResult<T> ring_forward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                              const RingOptions& options) {
  const AttentionShape sh = check_qkv(q, k, v);
  check_options(options);
  const RingSchedule schedule = RingSchedule::for_shape(sh, options.layout, options.ranks, options.causal);
  const int n = schedule.ranks();
  const auto& ql = schedule.q_layout();
  const auto& kl = schedule.kv_layout();
  std::vector<Tensor<T>> q_shard, k_held, v_held, o_acc, l_acc;
  std::vector<int> owner_held;  // which rank's block each rank holds, to check the rotation
  for (int r = 0; r < n; ++r) {
    q_shard.push_back(shard_rows(q, ql, r));
    k_held.push_back(shard_rows(k, kl, r));
    v_held.push_back(shard_rows(v, kl, r));
    o_acc.emplace_back(q_shard.back().shape());  // O starts at 0
    l_acc.emplace_back(std::vector<std::int64_t>{sh.batch, sh.heads_q, ql.shard_length(r)},
                       detail::neg_inf<T>());      // LSE starts at -inf: nothing seen yet
    owner_held.push_back(r);
  }
  for (int s = 0; s < n; ++s) {
    for (int r = 0; r < n; ++r) {
      if (owner_held[static_cast<std::size_t>(r)] != RingSchedule::kv_owner(r, s, n)) {
        throw std::logic_error("ring_forward: the K/V rotation disagrees with the schedule");
      }
      ring_forward_step(schedule, s, r, q_shard[static_cast<std::size_t>(r)], k_held[static_cast<std::size_t>(r)],
                        v_held[static_cast<std::size_t>(r)], options, o_acc[static_cast<std::size_t>(r)],
                        l_acc[static_cast<std::size_t>(r)]);
    }
    if (s + 1 < n) {  // send to r+1, receive from r-1; the last block is not passed on
      pass_to_next(k_held);
      pass_to_next(v_held);
      pass_to_next(owner_held);
    }
  }
  ForwardResult<T> result{Tensor<T>(q.shape()), Tensor<T>({sh.batch, sh.heads_q, sh.seq_q})};
  for (int r = 0; r < n; ++r) {
    unshard_rows(o_acc[static_cast<std::size_t>(r)], ql, r, result.out);
    unshard_lse(l_acc[static_cast<std::size_t>(r)], ql, r, result.lse);
  }
  return result;
}

template <class T>
Gradients<T> ring_backward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const Tensor<T>& out,
                           const Tensor<T>& lse, const Tensor<T>& dout, const RingOptions& options) {
  const AttentionShape sh = check_qkv(q, k, v);
  check_backward_inputs(sh, out, lse, dout);
  check_options(options);
  const RingSchedule schedule = RingSchedule::for_shape(sh, options.layout, options.ranks, options.causal);
  const int n = schedule.ranks();
  const auto& ql = schedule.q_layout();
  const auto& kl = schedule.kv_layout();
  std::vector<Tensor<T>> q_shard, do_shard, lse_shard, delta_shard, dq_acc;
  std::vector<Tensor<T>> k_held, v_held, dk_held, dv_held;
  std::vector<int> owner_held;
  for (int r = 0; r < n; ++r) {
    q_shard.push_back(shard_rows(q, ql, r));
    do_shard.push_back(shard_rows(dout, ql, r));
    lse_shard.push_back(shard_lse(lse, ql, r));
    delta_shard.push_back(softmax_delta(shard_rows(out, ql, r), do_shard.back()));  // D, computed locally
    dq_acc.emplace_back(q_shard.back().shape());
    k_held.push_back(shard_rows(k, kl, r));
    v_held.push_back(shard_rows(v, kl, r));
    dk_held.emplace_back(k_held.back().shape());  // dK/dV travel with their block, starting at 0
    dv_held.emplace_back(k_held.back().shape());
    owner_held.push_back(r);
  }
  for (int s = 0; s < n; ++s) {
    for (int r = 0; r < n; ++r) {
      const auto i = static_cast<std::size_t>(r);
      if (owner_held[i] != RingSchedule::kv_owner(r, s, n)) {
        throw std::logic_error("ring_backward: the K/V rotation disagrees with the schedule");
      }
      ring_backward_step(schedule, s, r, q_shard[i], k_held[i], v_held[i], do_shard[i], lse_shard[i],
                         delta_shard[i], options, dq_acc[i], dk_held[i], dv_held[i]);
    }
    if (s + 1 < n) {
      pass_to_next(k_held);
      pass_to_next(v_held);
    }
    pass_to_next(dk_held);  // after step N-1 this is the last hop: every dK/dV block returns home
    pass_to_next(dv_held);
    pass_to_next(owner_held);
  }
  Gradients<T> g{Tensor<T>(q.shape()), Tensor<T>(k.shape()), Tensor<T>(v.shape())};
  for (int r = 0; r < n; ++r) {
    const auto i = static_cast<std::size_t>(r);
    if (owner_held[i] != r) throw std::logic_error("ring_backward: dK/dV did not return to their owner");
    unshard_rows(dq_acc[i], ql, r, g.dq);
    unshard_rows(dk_held[i], kl, r, g.dk);
    unshard_rows(dv_held[i], kl, r, g.dv);
  }
  return g;
}

#define INSTANTIATE(T)                                                                                    \
  template Tensor<T> shard_rows<T>(const Tensor<T>&, const SequenceLayout&, int);                        \
  template Tensor<T> shard_lse<T>(const Tensor<T>&, const SequenceLayout&, int);                         \
  template void unshard_rows<T>(const Tensor<T>&, const SequenceLayout&, int, Tensor<T>&);               \
  template void unshard_lse<T>(const Tensor<T>&, const SequenceLayout&, int, Tensor<T>&);                \
  template void ring_forward_step<T>(const RingSchedule&, int, int, const Tensor<T>&, const Tensor<T>&,  \
                                     const Tensor<T>&, const AttentionOptions&, Tensor<T>&, Tensor<T>&,  \
                                     const std::function<void()>&);                                      \
  template void ring_backward_step<T>(const RingSchedule&, int, int, const Tensor<T>&, const Tensor<T>&, \
                                      const Tensor<T>&, const Tensor<T>&, const Tensor<T>&,              \
                                      const Tensor<T>&, const AttentionOptions&, Tensor<T>&, Tensor<T>&, \
                                      Tensor<T>&, const std::function<void()>&);                         \
  template ForwardResult<T> ring_forward<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&,        \
                                            const RingOptions&);                                         \
  template Gradients<T> ring_backward<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&,           \
                                         const Tensor<T>&, const Tensor<T>&, const Tensor<T>&,           \
                                         const RingOptions&);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace ringattn::ref
