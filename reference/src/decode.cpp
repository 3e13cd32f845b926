// Flash-decoding: one (or a few) query tokens against a long K/V cache. A single query row gives
// a kernel no parallelism over queries, so the keys are split into pieces that are processed
// independently (on a GPU: by different thread blocks), each giving a partial (O, LSE); the
// partials are then combined with the LSE merge.
#include "ringattn/core/error.hpp"
#include "ringattn/reference/attention.hpp"

namespace ringattn::ref {

template <class T>
ForwardResult<T> decode_forward(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                std::int64_t splits, const AttentionOptions& options) {
  const AttentionShape sh = check_qkv(q, k, v);
  check_options(options);
  require(splits >= 1, "splits must be at least 1, got ", splits);
  const double scale = resolve_scale(options, sh.head_dim);
  const auto qv = seq_view(q), kv = seq_view(k), vv = seq_view(v);
  std::vector<ForwardResult<T>> partials;
  partials.reserve(static_cast<std::size_t>(splits));
  for (std::int64_t s = 0; s < splits; ++s) {
    // Split s covers keys [floor(s*S/P), floor((s+1)*S/P)); empty when P > S (then it sees no
    // key: O = 0, LSE = -inf, and the combine ignores it).
    const std::int64_t begin = s * sh.seq_kv / splits, end = (s + 1) * sh.seq_kv / splits;
    ForwardResult<T> p{Tensor<T>(q.shape()), Tensor<T>({sh.batch, sh.heads_q, sh.seq_q})};
    const KernelArgs args{{sh.causal_query_offset(), 1}, {begin, 1}, options.causal, scale,
                          options.block_q, options.block_kv, {}};
    block_forward(qv, kv.rows(begin, end - begin), vv.rows(begin, end - begin), args, seq_view(p.out),
                  lse_view(p.lse));
    partials.push_back(std::move(p));
  }
  return combine_partials(partials);
}

#define INSTANTIATE(T)                                                                            \
  template ForwardResult<T> decode_forward<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&, \
                                              std::int64_t, const AttentionOptions&);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace ringattn::ref
