// The CUDA ring driver: builds the plan (ring_plan.hpp) once per direction and walks it, one CUDA
// or NCCL call per operation. Everything that decides *what* happens lives in the plan, which the
// CPU tests prove race-free and run against the reference; this file only binds buffers, owns
// streams and events, and waits for the ring with a deadline.
#include "ringattn/cuda/ring.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <initializer_list>
#include <cmath>
#include <map>
#include <sstream>
#include <thread>
#include <utility>

#include "ring_kernels.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/cuda/device.hpp"

namespace ringattn::cuda {
namespace {

void check_shard_pointer(const void* p, const char* what, int rank, bool optional = false) {
  if (optional && p == nullptr) return;
  require(p != nullptr, "rank ", rank, ": ", what, " is null");
  require(reinterpret_cast<std::uintptr_t>(p) % 16 == 0, "rank ", rank, ": ", what,
          " must be 16-byte aligned (cudaMalloc pointers are)");
}

// The caller's tensors by (rank, plan buffer name).
using UserBuffers = std::map<std::pair<int, std::string>, void*>;

// One tensor of a shard: the plan's buffer name, the pointer, its name in messages.
struct ShardTensor {
  const char* plan_name;
  const void* ptr;
  const char* what;
  bool optional = false;
};

// Binds a rank's tensors and records its first problem (an empty string when there is none); the
// problems are agreed across ranks before anything runs.
void bind_shard(int rank, std::initializer_list<ShardTensor> tensors, UserBuffers& user,
                std::vector<std::string>& errors) {
  try {
    for (const ShardTensor& t : tensors) check_shard_pointer(t.ptr, t.what, rank, t.optional);
    errors.emplace_back();
  } catch (const std::exception& e) {
    errors.emplace_back(e.what());
  }
  for (const ShardTensor& t : tensors) user[{rank, t.plan_name}] = const_cast<void*>(t.ptr);
}

// Per local rank: streams, events and the driver's own buffers for one plan.
struct RankState {
  int rank = 0;
  int device = 0;
  cudaStream_t compute = nullptr;
  cudaStream_t comm = nullptr;
  std::vector<cudaEvent_t> events;
  std::vector<cudaEvent_t> timing;  // begin/end pairs of timed operations, plus the start mark
};

}  // namespace

struct RingAttention::Impl {
  Communicator& comm;
  RingConfig config;
  RingSchedule schedule;
  float scale = 1.0f;
  std::vector<RankState> ranks;            // one per local rank
  RingPlan plans[2];                       // forward, backward
  bool planned[2] = {false, false};
  std::map<int, DeviceBuffer> internal[2];  // plan buffer index -> memory (local ranks only)
  std::vector<TimelineSpan> timeline;

  Impl(Communicator& c, RingConfig cfg)
      : comm(c),
        config(std::move(cfg)),
        schedule(RingSchedule::for_shape(config.shape, config.layout, c.world_size(), config.causal)) {}

  ~Impl() {
    for (RankState& r : ranks) {
      (void)cudaSetDevice(r.device);
      if (r.compute) (void)cudaStreamSynchronize(r.compute);
      if (r.comm) (void)cudaStreamSynchronize(r.comm);
      for (cudaEvent_t e : r.events) (void)cudaEventDestroy(e);
      for (cudaEvent_t e : r.timing) (void)cudaEventDestroy(e);
      if (r.compute) (void)cudaStreamDestroy(r.compute);
      if (r.comm) (void)cudaStreamDestroy(r.comm);
    }
  }

  int local_index(int rank) const {
    const auto& lr = comm.local_ranks();
    for (std::size_t i = 0; i < lr.size(); ++i) {
      if (lr[i] == rank) return static_cast<int>(i);
    }
    return -1;
  }

  void create_streams() {
    if (!ranks.empty()) return;
    DeviceGuard guard;
    const auto& lr = comm.local_ranks();
    for (std::size_t i = 0; i < lr.size(); ++i) {
      RankState s;
      s.rank = lr[i];
      s.device = comm.device(static_cast<int>(i));
      RINGATTN_CUDA_CHECK(cudaSetDevice(s.device));
      RINGATTN_CUDA_CHECK(cudaStreamCreateWithFlags(&s.compute, cudaStreamNonBlocking));
      RINGATTN_CUDA_CHECK(cudaStreamCreateWithFlags(&s.comm, cudaStreamNonBlocking));
      ranks.push_back(s);
    }
  }

  const RingPlan& plan(bool backward) {
    const int k = backward ? 1 : 0;
    if (!planned[k]) {
      PlanOptions o;
      o.input_bytes = static_cast<int>(element_bytes(config.dtype));
      o.output_bytes = static_cast<int>(element_bytes(config.out_dtype));
      o.scale = scale;
      plans[k] = backward ? plan_backward(schedule, config.shape, o) : plan_forward(schedule, config.shape, o);
      planned[k] = true;
    }
    return plans[k];
  }

  // Allocates the plan's internal buffers of the local ranks (once) and the events it records.
  void prepare(const RingPlan& p, int k) {
    DeviceGuard guard;
    for (std::size_t b = 0; b < p.buffers.size(); ++b) {
      const PlanBuffer& buf = p.buffers[b];
      const int li = local_index(buf.rank);
      if (buf.user || li < 0 || internal[k].count(static_cast<int>(b))) continue;
      RINGATTN_CUDA_CHECK(cudaSetDevice(ranks[static_cast<std::size_t>(li)].device));
      internal[k].emplace(static_cast<int>(b), DeviceBuffer(buf.bytes));
    }
    for (RankState& r : ranks) {
      RINGATTN_CUDA_CHECK(cudaSetDevice(r.device));
      const auto want = static_cast<std::size_t>(p.events[static_cast<std::size_t>(r.rank)]);
      while (r.events.size() < want) {
        cudaEvent_t e = nullptr;
        RINGATTN_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
        r.events.push_back(e);
      }
    }
  }

  cudaEvent_t timing_event(RankState& r, std::size_t index) {
    while (r.timing.size() <= index) {
      cudaEvent_t e = nullptr;
      RINGATTN_CUDA_CHECK(cudaEventCreate(&e));
      r.timing.push_back(e);
    }
    return r.timing[index];
  }

  // Runs plan k with the user's buffers bound by name.
  void run(int k, const UserBuffers& user) {
    const RingPlan& p = plans[k];
    auto ptr = [&](const Region& reg) -> char* {
      const PlanBuffer& buf = p.buffers[static_cast<std::size_t>(reg.buffer)];
      char* base = nullptr;
      if (buf.user) {
        const auto it = user.find({buf.rank, buf.name});
        require(it != user.end() && it->second != nullptr, "rank ", buf.rank, ": ", buf.name, " was not given");
        base = static_cast<char*>(it->second);
      } else {
        base = static_cast<char*>(internal[k].at(reg.buffer).data());
      }
      return base + reg.offset;
    };
    DeviceGuard guard;
    timeline.clear();
    struct Timed {
      std::size_t rank_index, begin, end;
      int step;
      bool comm;
      std::string label;
    };
    std::vector<Timed> timed;
    std::vector<std::size_t> next_timing(ranks.size(), 1);

    // Inputs produced on the legacy default stream before the call are finished first.
    for (RankState& r : ranks) {
      RINGATTN_CUDA_CHECK(cudaSetDevice(r.device));
      cudaEvent_t ready = timing_event(r, 0);
      RINGATTN_CUDA_CHECK(cudaEventRecord(ready, cudaStreamLegacy));
      RINGATTN_CUDA_CHECK(cudaStreamWaitEvent(r.compute, ready, 0));
      RINGATTN_CUDA_CHECK(cudaStreamWaitEvent(r.comm, ready, 0));
    }
    auto begin_timed = [&](std::size_t li, cudaStream_t s) -> std::size_t {
      if (!config.timing) return 0;
      RankState& r = ranks[li];
      const std::size_t b = next_timing[li]++;
      RINGATTN_CUDA_CHECK(cudaEventRecord(timing_event(r, b), s));
      return b;
    };
    auto end_timed = [&](std::size_t li, cudaStream_t s, std::size_t b, const PlanOp& op, bool comm_stream) {
      if (!config.timing) return;
      RankState& r = ranks[li];
      const std::size_t e = next_timing[li]++;
      RINGATTN_CUDA_CHECK(cudaEventRecord(timing_event(r, e), s));
      timed.push_back({li, b, e, op.step, comm_stream, op.label});
    };

    MaskArgs mask_base;
    mask_base.scale = scale;
    for (const PlanOp& op : p.ops) {
      if (op.kind == OpKind::Shift) {
        std::vector<std::vector<ShiftBuffers>> parts(ranks.size());
        std::vector<ringattn_cuda_stream_t> streams(ranks.size());
        for (std::size_t li = 0; li < ranks.size(); ++li) {
          const int r = ranks[li].rank;
          const int prev = RingSchedule::prev_rank(r, p.ranks);
          const auto& mine = op.shift[static_cast<std::size_t>(r)];
          const auto& from = op.shift[static_cast<std::size_t>(prev)];
          for (std::size_t i = 0; i < mine.size(); ++i) {
            // What this rank receives is described by its sender's part (the region on this rank).
            parts[li].push_back({ptr(mine[i].src), ptr(from[i].dst_next), mine[i].src.bytes, from[i].dst_next.bytes});
          }
          streams[li] = ranks[li].comm;
        }
        std::vector<std::size_t> marks(ranks.size());
        for (std::size_t li = 0; li < ranks.size(); ++li) {
          RINGATTN_CUDA_CHECK(cudaSetDevice(ranks[li].device));
          marks[li] = begin_timed(li, ranks[li].comm);
        }
        comm.shift(parts, streams);
        for (std::size_t li = 0; li < ranks.size(); ++li) {
          RINGATTN_CUDA_CHECK(cudaSetDevice(ranks[li].device));
          end_timed(li, ranks[li].comm, marks[li], op, true);
        }
        continue;
      }
      const int li = local_index(op.rank);
      if (li < 0) continue;  // another process's rank
      RankState& r = ranks[static_cast<std::size_t>(li)];
      RINGATTN_CUDA_CHECK(cudaSetDevice(r.device));
      cudaStream_t s = op.stream == PlanStream::Compute ? r.compute : r.comm;
      if (op.kind == OpKind::Record) {
        RINGATTN_CUDA_CHECK(cudaEventRecord(r.events[static_cast<std::size_t>(op.event)], s));
        continue;
      }
      if (op.kind == OpKind::Wait) {
        RINGATTN_CUDA_CHECK(cudaStreamWaitEvent(s, r.events[static_cast<std::size_t>(op.event)], 0));
        continue;
      }
      const bool time_it = op.kind == OpKind::Forward || op.kind == OpKind::Backward || op.kind == OpKind::Merge ||
                           op.kind == OpKind::Add || op.kind == OpKind::Delta;
      const std::size_t mark = time_it ? begin_timed(static_cast<std::size_t>(li), s) : 0;
      issue(op, s, ptr, mask_base);
      if (time_it) end_timed(static_cast<std::size_t>(li), s, mark, op, false);
    }
    wait_all();
    if (config.timing) collect(timed);
  }

  template <class Ptr>
  void issue(const PlanOp& op, cudaStream_t s, const Ptr& ptr, const MaskArgs& mask_base) {
    switch (op.kind) {
      case OpKind::Copy2D:
        RINGATTN_CUDA_CHECK(cudaMemcpy2DAsync(ptr(op.dst), op.dst_pitch, ptr(op.src), op.src_pitch, op.width, op.rows,
                                              cudaMemcpyDeviceToDevice, s));
        return;
      case OpKind::Convert:
        detail::ring_convert(reinterpret_cast<const float*>(ptr(op.src)), op.src_pitch, ptr(op.dst), config.out_dtype,
                             op.dst_pitch, op.width, op.rows, s);
        return;
      case OpKind::Fill: detail::ring_fill(reinterpret_cast<float*>(ptr(op.dst)), op.n, op.value, s); return;
      case OpKind::Add:
        detail::ring_add(reinterpret_cast<float*>(ptr(op.dst)), reinterpret_cast<const float*>(ptr(op.src)), op.n, s);
        return;
      case OpKind::Delta:
        detail::ring_delta(ptr(op.out), ptr(op.dout), config.dtype, reinterpret_cast<float*>(ptr(op.delta)),
                           op.shape.batch, op.shape.seq_q, op.shape.heads_q, op.shape.head_dim, s);
        return;
      case OpKind::Forward: {
        ForwardArgs a;
        a.shape = op.shape;
        a.dtype = config.dtype;
        a.q = ptr(op.q);
        a.k = ptr(op.k);
        a.v = ptr(op.v);
        a.out = ptr(op.out);
        a.out_dtype = DType::F32;
        a.lse = reinterpret_cast<float*>(ptr(op.lse));
        a.mask = mask_base;
        a.mask.causal = op.causal;
        a.mask.q_pos = op.q_pos;
        a.mask.k_pos = op.k_pos;
        cuda::forward(a, config.kernel, s);
        return;
      }
      case OpKind::Merge:
        cuda::merge(reinterpret_cast<float*>(ptr(op.acc_out)), reinterpret_cast<float*>(ptr(op.acc_lse)),
              reinterpret_cast<const float*>(ptr(op.out)), reinterpret_cast<const float*>(ptr(op.lse)), op.shape.batch,
              op.shape.seq_q, op.shape.heads_q, op.shape.head_dim, s);
        return;
      case OpKind::Backward: {
        BackwardArgs a;
        a.shape = op.shape;
        a.dtype = config.dtype;
        a.q = ptr(op.q);
        a.k = ptr(op.k);
        a.v = ptr(op.v);
        a.out = ptr(op.out);
        a.dout = ptr(op.dout);
        a.lse = reinterpret_cast<const float*>(ptr(op.lse));
        a.delta = reinterpret_cast<float*>(ptr(op.delta));
        a.compute_delta = false;  // computed once per segment before the ring
        a.dq = reinterpret_cast<float*>(ptr(op.dq));
        a.dk = reinterpret_cast<float*>(ptr(op.dk));
        a.dv = reinterpret_cast<float*>(ptr(op.dv));
        a.accumulate = true;
        a.mask = mask_base;
        a.mask.causal = op.causal;
        a.mask.q_pos = op.q_pos;
        a.mask.k_pos = op.k_pos;
        cuda::backward(a, Kernel::Auto, s);
        return;
      }
      case OpKind::Record:
      case OpKind::Wait:
      case OpKind::Shift: return;  // handled by run()
    }
  }

  // Waits for every stream of every local rank, polling the communicator for asynchronous errors
  // and giving up after config.timeout_s (a peer that never answers): then the communicator is
  // aborted so that peers fail too, and the error says how long it waited.
  void wait_all() {
    const auto start = std::chrono::steady_clock::now();
    DeviceGuard guard;
    for (;;) {
      bool done = true;
      for (RankState& r : ranks) {
        RINGATTN_CUDA_CHECK(cudaSetDevice(r.device));
        for (cudaStream_t s : {r.compute, r.comm}) {
          const cudaError_t e = cudaStreamQuery(s);
          if (e == cudaErrorNotReady) {
            done = false;
          } else {
            RINGATTN_CUDA_CHECK(e);
          }
        }
      }
      if (done) return;
      comm.check_async();
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (config.timeout_s > 0 && waited > config.timeout_s) {
        comm.abort();
        fail("ring: no progress after ", config.timeout_s, " s: a peer did not answer (communicator '", comm.name(),
             "' aborted)");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  // Spans are measured from one zero per device: the start mark of the first local rank on that
  // device (events of one device compare; every rank's start mark is recorded on the device's
  // legacy stream, that rank's first). Ranks on one GPU therefore share one time axis.
  template <class T>
  void collect(const std::vector<T>& timed) {
    DeviceGuard guard;
    std::vector<cudaEvent_t> zero(ranks.size());
    for (std::size_t i = 0; i < ranks.size(); ++i) {
      std::size_t first = i;
      for (std::size_t j = 0; j < i; ++j) {
        if (ranks[j].device == ranks[i].device) {
          first = j;
          break;
        }
      }
      zero[i] = ranks[first].timing[0];
    }
    for (const auto& t : timed) {
      RankState& r = ranks[t.rank_index];
      RINGATTN_CUDA_CHECK(cudaSetDevice(r.device));
      float b = 0, e = 0;
      RINGATTN_CUDA_CHECK(cudaEventElapsedTime(&b, zero[t.rank_index], r.timing[t.begin]));
      RINGATTN_CUDA_CHECK(cudaEventElapsedTime(&e, zero[t.rank_index], r.timing[t.end]));
      timeline.push_back({r.rank, t.step, t.comm, t.label, b, e});
    }
  }

  // Binds every local rank's shard (bind(rank, shard, user, errors)) and runs the plan; when every
  // shard is fine, @p extra may add buffers per rank (its failures are agreed too).
  template <class Shard, class Bind, class Extra>
  void run_with_shards(std::span<const Shard> shards, bool backward, Bind&& bind, Extra&& extra) {
    const auto& lr = comm.local_ranks();
    require(shards.size() == lr.size(), backward ? "ring backward: " : "ring forward: ", shards.size(),
            " shards given for ", lr.size(), " local ranks");
    UserBuffers user;
    std::vector<std::string> errors;
    for (std::size_t i = 0; i < lr.size(); ++i) bind(lr[i], shards[i], user, errors);
    std::vector<DeviceBuffer> scratch;
    const bool shards_ok = std::all_of(errors.begin(), errors.end(), [](const std::string& e) { return e.empty(); });
    for (std::size_t i = 0; shards_ok && i < lr.size(); ++i) {  // nothing touches a device before that
      try {
        extra(i, shards[i], user, scratch);
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    }
    execute(backward, user, errors);
  }

  // Validation, allocation and the run, with failures agreed across ranks before any transfer is
  // queued (a bad shard on one rank fails every rank, nobody waits for it).
  void execute(bool backward, const UserBuffers& user,
               const std::vector<std::string>& shard_errors) {
    std::string error;
    for (const std::string& e : shard_errors) {
      if (error.empty() && !e.empty()) error = e;
    }
    const int k = backward ? 1 : 0;
    if (error.empty()) {
      try {
        create_streams();
        prepare(plan(backward), k);
      } catch (const std::exception& e) {
        error = e.what();
      }
    }
    comm.agree(error.empty(), error);
    try {
      run(k, user);
    } catch (...) {
      comm.abort();  // peers blocked in a transfer with this rank fail instead of hanging
      for (RankState& r : ranks) {  // nothing may still write into buffers about to be freed
        (void)cudaSetDevice(r.device);
        (void)cudaStreamSynchronize(r.compute);
        (void)cudaStreamSynchronize(r.comm);
      }
      throw;
    }
  }
};

RingAttention::RingAttention(Communicator& comm, RingConfig config) {
  const AttentionShape& s = config.shape;
  require(s.batch >= 1 && s.seq_q >= 1 && s.seq_kv >= 1 && s.heads_q >= 1 && s.heads_kv >= 1 && s.head_dim >= 1,
          "ring: every dimension of the shape must be >= 1, got B=", s.batch, " S_q=", s.seq_q, " S_kv=", s.seq_kv,
          " H_q=", s.heads_q, " H_kv=", s.heads_kv, " D=", s.head_dim);
  require(s.heads_q % s.heads_kv == 0, "ring: K has ", s.heads_kv, " heads but Q has ", s.heads_q,
          ": H_q must be a multiple of H_kv");
  require(config.out_dtype == DType::F32 || config.out_dtype == config.dtype, "ring: O must be fp32 or ",
          to_string(config.dtype), ", got ", to_string(config.out_dtype));
  require(!config.scale || (std::isfinite(*config.scale) && *config.scale > 0), "ring: the scale must be finite and > 0");
  require(config.timeout_s >= 0, "ring: the timeout must be >= 0 s");
  require(!comm.local_ranks().empty(), "ring: the communicator drives no rank in this process");
  // SequenceLayout refuses sequences too short for the layout with its own message.
  impl_ = std::make_unique<Impl>(comm, std::move(config));
  impl_->scale = impl_->config.scale.value_or(1.0f / std::sqrt(static_cast<float>(s.head_dim)));
}

RingAttention::~RingAttention() = default;

void RingAttention::forward(std::span<const ForwardShard> shards) {
  Impl& m = *impl_;
  m.run_with_shards(
      shards, false,
      [](int r, const ForwardShard& sh, UserBuffers& user, std::vector<std::string>& errors) {
        bind_shard(r, {{"q", sh.q, "Q"}, {"k", sh.k, "K"}, {"v", sh.v, "V"}, {"out", sh.out, "O"},
                       {"lse", sh.lse, "LSE", true}},
                   user, errors);
      },
      // The plan writes an LSE per rank; a caller that wants none gets it in a scratch buffer.
      [&m](std::size_t i, const ForwardShard& sh, UserBuffers& user, std::vector<DeviceBuffer>& scratch) {
        if (sh.lse) return;
        const int r = m.comm.local_ranks()[i];
        DeviceGuard guard;
        RINGATTN_CUDA_CHECK(cudaSetDevice(m.comm.device(static_cast<int>(i))));
        const std::int64_t len = m.schedule.q_layout().shard_length(r);
        scratch.emplace_back(static_cast<std::size_t>(m.config.shape.batch * m.config.shape.heads_q * len) * 4);
        user[{r, "lse"}] = scratch.back().data();
      });
}

void RingAttention::backward(std::span<const BackwardShard> shards) {
  impl_->run_with_shards(
      shards, true,
      [](int r, const BackwardShard& sh, UserBuffers& user, std::vector<std::string>& errors) {
        bind_shard(r, {{"q", sh.q, "Q"}, {"k", sh.k, "K"}, {"v", sh.v, "V"}, {"out", sh.out, "O"},
                       {"dout", sh.dout, "dO"}, {"lse", sh.lse, "LSE"}, {"dq", sh.dq, "dQ"}, {"dk", sh.dk, "dK"},
                       {"dv", sh.dv, "dV"}},
                   user, errors);
      },
      [](std::size_t, const BackwardShard&, UserBuffers&, std::vector<DeviceBuffer>&) {});
}

const RingSchedule& RingAttention::schedule() const { return impl_->schedule; }

const RingPlan& RingAttention::plan(bool backward) const { return impl_->plan(backward); }

const std::vector<TimelineSpan>& RingAttention::timeline() const { return impl_->timeline; }

const RingConfig& RingAttention::config() const { return impl_->config; }

}  // namespace ringattn::cuda
