// `--impl cuda-ring`: host tensors -> per-rank shards on each rank's device -> RingAttention
// forward/backward -> back to host tensors (cuda_ring_cmd.hpp says what each step promises).
// Only built with RINGATTN_WITH_CUDA.
#include "cuda_ring_cmd.hpp"

#include <cuda_runtime.h>

#include <exception>
#include <memory>
#include <new>
#include <utility>

#include "ringattn/core/layout.hpp"
#include "ringattn/core/schedule.hpp"
#include "ringattn/cuda/communicator.hpp"
#include "cuda_transfer.hpp"
#include "ringattn/cuda/device.hpp"
#include "ringattn/cuda/ring.hpp"
#include "ringattn/reference/ring.hpp"

namespace ringattn::cli {
namespace {

// Makes @p device current for the scope (DeviceBuffer allocates on the current device).
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    RINGATTN_CUDA_CHECK(cudaGetDevice(&previous_));
    RINGATTN_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceScope() { (void)cudaSetDevice(previous_); }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = 0;
};

// Runs @p f on this process and agrees on its outcome with every rank: a failure anywhere is
// thrown on every rank as RingCollectiveError (so no rank waits for a peer that gave up).
template <class F>
void agreed(cuda::Communicator& comm, F&& f) {
  std::string error;
  try {
    f();
  } catch (const std::bad_alloc&) {
    error = "out of host memory";
  } catch (const std::exception& e) {
    error = e.what();
  }
  try {
    comm.agree(error.empty(), error);
  } catch (const std::exception& e) {
    throw RingCollectiveError(e.what());
  }
  if (!error.empty()) throw RingCollectiveError(error);
}


// A float32 buffer of @p count elements, every byte @p byte (0xff: NaN, so an element the ring
// does not write is seen; 0: zeros).
cuda::DeviceBuffer f32_buffer(std::int64_t count, int byte) {
  cuda::DeviceBuffer b(static_cast<std::size_t>(count) * sizeof(float));
  if (!b.empty()) RINGATTN_CUDA_CHECK(cudaMemset(b.data(), byte, b.bytes()));
  return b;
}

// Device memory of one local rank.
struct RankMemory {
  int device = 0;
  std::vector<std::int64_t> q_shape, kv_shape, lse_shape;
  cuda::DeviceBuffer q, k, v, out, lse;           // forward
  cuda::DeviceBuffer o_in, dout, dq, dk, dv;      // backward
  void release() {
    DeviceScope on(device);
    for (cuda::DeviceBuffer* b : {&q, &k, &v, &out, &lse, &o_in, &dout, &dq, &dk, &dv}) b->reset();
  }
};

}  // namespace

template <class T>
std::vector<RingShardOutputs<T>> cuda_ring_shards(cuda::Communicator& comm, const AttentionShape& shape,
                                                  const CudaRingOptions& o,
                                                  const std::vector<RingShardInputs<T>>& shards) {
  const std::vector<int>& ranks = comm.local_ranks();
  const std::size_t n = ranks.size();
  require(shards.size() == n, "the CUDA ring got ", shards.size(), " shards for ", n, " local ranks");
  const bool backward = n > 0 && shards[0].dout.size() > 0;

  cuda::RingConfig cfg;
  cfg.shape = shape;
  cfg.layout = parse_layout(o.layout);
  cfg.causal = o.causal;
  if (o.scale) cfg.scale = static_cast<float>(*o.scale);
  cfg.dtype = cuda::parse_dtype(o.dtype);
  cfg.out_dtype = cuda::DType::F32;  // the file gets the most precise O the ring has
  cfg.kernel = cuda::parse_kernel(o.kernel);
  cfg.timeout_s = o.timeout_s;

  std::unique_ptr<cuda::RingAttention> ring;
  std::vector<RankMemory> mem(n);
  std::vector<RingShardOutputs<T>> res(n);
  // 1. The ring (it validates the configuration against the communicator) and the uploads.
  agreed(comm, [&] {
    ring = std::make_unique<cuda::RingAttention>(comm, cfg);
    const RingSchedule& sched = ring->schedule();
    for (std::size_t i = 0; i < n; ++i) {
      RankMemory& m = mem[i];
      const int g = ranks[i];
      const std::int64_t sq = sched.q_layout().shard_length(g), skv = sched.kv_layout().shard_length(g);
      m.q_shape = {shape.batch, sq, shape.heads_q, shape.head_dim};
      m.kv_shape = {shape.batch, skv, shape.heads_kv, shape.head_dim};
      m.lse_shape = {shape.batch, shape.heads_q, sq};
      const RingShardInputs<T>& s = shards[i];
      require(s.q.shape() == m.q_shape, "rank ", g, ": Q shard is ", shape_string(s.q.shape()), ", expected ",
              shape_string(m.q_shape));
      require(s.k.shape() == m.kv_shape && s.v.shape() == m.kv_shape, "rank ", g, ": K/V shards are ",
              shape_string(s.k.shape()), " and ", shape_string(s.v.shape()), ", expected ", shape_string(m.kv_shape));
      require(!backward || s.dout.shape() == m.q_shape, "rank ", g, ": dO shard is ", shape_string(s.dout.shape()),
              ", expected ", shape_string(m.q_shape));
      m.device = comm.device(static_cast<int>(i));
      DeviceScope on(m.device);
      m.q = upload_tensor(s.q, cfg.dtype);
      m.k = upload_tensor(s.k, cfg.dtype);
      m.v = upload_tensor(s.v, cfg.dtype);
      m.out = f32_buffer(s.q.size(), 0xff);
      m.lse = f32_buffer(shape.batch * shape.heads_q * sq, 0xff);
    }
  });

  // 2. The forward.
  std::vector<cuda::ForwardShard> fwd(n);
  for (std::size_t i = 0; i < n; ++i) {
    fwd[i].q = mem[i].q.data();
    fwd[i].k = mem[i].k.data();
    fwd[i].v = mem[i].v.data();
    fwd[i].out = mem[i].out.data();
    fwd[i].lse = mem[i].lse.as<float>();
  }
  ring->forward(fwd);

  // 3. O and LSE home; for the backward, O rounded to the dtype (what training keeps) and dO.
  agreed(comm, [&] {
    for (std::size_t i = 0; i < n; ++i) {
      RankMemory& m = mem[i];
      DeviceScope on(m.device);
      const std::vector<float> o32 =
          cuda::download(cuda::DType::F32, m.out.data(), static_cast<std::size_t>(shards[i].q.size()));
      res[i].out = Tensor<T>(m.q_shape);
      for (std::int64_t e = 0; e < res[i].out.size(); ++e) res[i].out[e] = static_cast<T>(o32[static_cast<std::size_t>(e)]);
      res[i].lse = download_f32<T>(m.lse, m.lse_shape);
      if (!backward) continue;
      m.o_in = cuda::upload(cfg.dtype, o32);
      m.dout = upload_tensor(shards[i].dout, cfg.dtype);
      // Zeros: whether the ring overwrites or accumulates into them, the result is the gradient.
      m.dq = f32_buffer(shards[i].q.size(), 0);
      m.dk = f32_buffer(shards[i].k.size(), 0);
      m.dv = f32_buffer(shards[i].v.size(), 0);
    }
  });
  if (!backward) {
    for (RankMemory& m : mem) m.release();
    return res;
  }

  // 4. The backward.
  std::vector<cuda::BackwardShard> bwd(n);
  for (std::size_t i = 0; i < n; ++i) {
    bwd[i].q = mem[i].q.data();
    bwd[i].k = mem[i].k.data();
    bwd[i].v = mem[i].v.data();
    bwd[i].out = mem[i].o_in.data();
    bwd[i].dout = mem[i].dout.data();
    bwd[i].lse = mem[i].lse.as<float>();
    bwd[i].dq = mem[i].dq.as<float>();
    bwd[i].dk = mem[i].dk.as<float>();
    bwd[i].dv = mem[i].dv.as<float>();
  }
  ring->backward(bwd);
  agreed(comm, [&] {
    for (std::size_t i = 0; i < n; ++i) {
      const RankMemory& m = mem[i];
      DeviceScope on(m.device);
      res[i].dq = download_f32<T>(m.dq, m.q_shape);
      res[i].dk = download_f32<T>(m.dk, m.kv_shape);
      res[i].dv = download_f32<T>(m.dv, m.kv_shape);
    }
  });
  for (RankMemory& m : mem) m.release();
  return res;
}

template <class T>
CudaAttentionResult<T> cuda_ring_attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                           const Tensor<T>* dout, const CudaRingOptions& o) {
  const AttentionShape shape = ref::check_qkv(q, k, v);
  // Refuses a split the layout cannot make, with the layout's own message.
  const RingSchedule sched = RingSchedule::for_shape(shape, parse_layout(o.layout), o.ranks, o.causal);
  cuda::LocalCommunicator comm(o.ranks);
  std::vector<RingShardInputs<T>> shards(comm.local_ranks().size());
  for (std::size_t i = 0; i < shards.size(); ++i) {
    const int r = comm.local_ranks()[i];
    shards[i].q = ref::shard_rows(q, sched.q_layout(), r);
    shards[i].k = ref::shard_rows(k, sched.kv_layout(), r);
    shards[i].v = ref::shard_rows(v, sched.kv_layout(), r);
    if (dout) shards[i].dout = ref::shard_rows(*dout, sched.q_layout(), r);
  }
  std::vector<RingShardOutputs<T>> outs = cuda_ring_shards(comm, shape, o, shards);
  shards.clear();  // host memory back before the full outputs are assembled

  CudaAttentionResult<T> r;
  r.fwd.out = Tensor<T>(q.shape());
  r.fwd.lse = Tensor<T>({shape.batch, shape.heads_q, shape.seq_q});
  ref::Gradients<T> g{Tensor<T>(q.shape()), Tensor<T>(k.shape()), Tensor<T>(v.shape())};
  for (std::size_t i = 0; i < outs.size(); ++i) {
    const int rank = comm.local_ranks()[i];
    ref::unshard_rows(outs[i].out, sched.q_layout(), rank, r.fwd.out);
    ref::unshard_lse(outs[i].lse, sched.q_layout(), rank, r.fwd.lse);
    if (dout) {
      ref::unshard_rows(outs[i].dq, sched.q_layout(), rank, g.dq);
      ref::unshard_rows(outs[i].dk, sched.kv_layout(), rank, g.dk);
      ref::unshard_rows(outs[i].dv, sched.kv_layout(), rank, g.dv);
    }
  }
  if (dout) r.grads = std::move(g);
  return r;
}

#define INSTANTIATE(T)                                                                                       \
  template std::vector<RingShardOutputs<T>> cuda_ring_shards<T>(cuda::Communicator&, const AttentionShape&, \
                                                                const CudaRingOptions&,                     \
                                                                const std::vector<RingShardInputs<T>>&);    \
  template CudaAttentionResult<T> cuda_ring_attention<T>(const Tensor<T>&, const Tensor<T>&, const Tensor<T>&, \
                                                         const Tensor<T>*, const CudaRingOptions&);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

}  // namespace ringattn::cli
