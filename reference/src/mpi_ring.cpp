// Ring attention across processes over MPI. The per-step work is the in-process ring's
// (ring_forward_step / ring_backward_step on core's RingSchedule); this file adds the real
// transfers: non-blocking sends and receives into second buffers, progress driven from inside the
// kernels, deadlines on every wait, and checks that all ranks agree before anything moves.
#include "ringattn/reference/mpi_ring.hpp"

#include <algorithm>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "ringattn/core/error.hpp"
#include "ringattn/core/npy.hpp"

namespace ringattn::ref::mpi {
namespace {

enum Tag : int { kTagK = 7101, kTagV = 7102, kTagDK = 7103, kTagDV = 7104 };

template <class T>
MPI_Datatype mpi_type() {
  return std::is_same_v<T, float> ? MPI_FLOAT : MPI_DOUBLE;
}

template <class T>
int message_count(const Tensor<T>& t) {
  require(t.size() <= INT_MAX, "a block of ", t.size(),
          " elements is larger than one MPI message can carry (2^31-1); use more ranks");
  return static_cast<int>(t.size());
}

// Non-blocking transfers of whole tensors; the tensor must be sized already.
template <class T>
void post_send(const Tensor<T>& t, int peer, int tag, MPI_Comm comm, std::vector<MPI_Request>& reqs) {
  reqs.emplace_back();
  MPI_Isend(t.data(), message_count(t), mpi_type<T>(), peer, tag, comm, &reqs.back());
}
template <class T>
void post_recv(Tensor<T>& t, int peer, int tag, MPI_Comm comm, std::vector<MPI_Request>& reqs) {
  reqs.emplace_back();
  MPI_Irecv(t.data(), message_count(t), mpi_type<T>(), peer, tag, comm, &reqs.back());
}

void wait(std::vector<MPI_Request>& reqs, double timeout_s, const std::string& what, int peer) {
  if (!reqs.empty()) wait_all(static_cast<int>(reqs.size()), reqs.data(), timeout_s, what, peer);
  reqs.clear();
}

// Exchanges one text of any length per rank: the lengths first, then the texts
// (MPI_Iallgather and MPI_Iallgatherv under a deadline).
std::vector<std::string> allgather_text(MPI_Comm comm, const std::string& mine, double timeout_s) {
  int n = 0;
  MPI_Comm_size(comm, &n);
  require(mine.size() <= INT_MAX / 64, "agreement text of ", mine.size(), " bytes is too long");
  int len = static_cast<int>(mine.size());
  std::vector<int> lens(static_cast<std::size_t>(n)), offsets(static_cast<std::size_t>(n));
  MPI_Request req;
  MPI_Iallgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, comm, &req);
  wait_all(1, &req, timeout_s, "answer to the agreement check", -1);
  long long total = 0;
  for (int r = 0; r < n; ++r) {
    offsets[static_cast<std::size_t>(r)] = static_cast<int>(total);
    total += lens[static_cast<std::size_t>(r)];
    require(total <= INT_MAX, "agreement texts are too long");
  }
  std::vector<char> all(static_cast<std::size_t>(std::max<long long>(total, 1)));
  MPI_Iallgatherv(mine.data(), len, MPI_CHAR, all.data(), lens.data(), offsets.data(), MPI_CHAR, comm, &req);
  wait_all(1, &req, timeout_s, "answer to the agreement check", -1);
  std::vector<std::string> out;
  for (int r = 0; r < n; ++r) {
    out.emplace_back(all.data() + offsets[static_cast<std::size_t>(r)],
                     static_cast<std::size_t>(lens[static_cast<std::size_t>(r)]));
  }
  return out;
}

struct Context {
  MPI_Comm comm;
  int rank = 0, ranks = 1, prev = 0, next = 0;
  double timeout_s;
};

Context context(MPI_Comm comm, double timeout_s) {
  Context c{comm, 0, 1, 0, 0, timeout_s};
  MPI_Comm_rank(comm, &c.rank);
  MPI_Comm_size(comm, &c.ranks);
  c.prev = RingSchedule::prev_rank(c.rank, c.ranks);
  c.next = RingSchedule::next_rank(c.rank, c.ranks);
  return c;
}

std::string number(double x) {
  std::ostringstream os;
  os.precision(17);
  os << x;
  return os.str();
}

// Checks this rank's shards, makes sure every rank agrees on the call, and builds the schedule.
// Every problem is raised on all ranks alike (CollectiveError).
template <class T>
RingSchedule agree_and_schedule(const Context& c, const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                const MpiRingOptions& o, const std::string& pass) {
  std::string local_error;
  AttentionShape local{};
  try {
    require(o.timeout_s > 0, "timeout must be positive, got ", o.timeout_s);
    local = check_qkv(q, k, v);  // B, D and heads agree within the rank's shards
    check_options(o);
  } catch (const Error& e) {
    local_error = e.what();
  }
  fail_together(c.comm, local_error, c.timeout_s);
  std::ostringstream cfg;
  cfg << "pass=" << pass << " dtype=" << to_string(dtype_of<T>()) << " B=" << local.batch << " H_q=" << local.heads_q
      << " H_kv=" << local.heads_kv << " D=" << local.head_dim << " S_q=" << o.seq_q << " S_kv=" << o.seq_kv
      << " layout=" << to_string(o.layout) << " causal=" << o.causal
      << " scale=" << (o.scale ? number(*o.scale) : std::string("default")) << " timeout=" << number(o.timeout_s);
  check_agreement(c.comm, cfg.str(), c.timeout_s);
  std::optional<RingSchedule> schedule;
  try {
    schedule.emplace(SequenceLayout(o.layout, o.seq_q, c.ranks), SequenceLayout(o.layout, o.seq_kv, c.ranks),
                     o.causal, o.seq_kv - o.seq_q);
  } catch (const Error& e) {
    throw CollectiveError(e.what());  // the same arguments everywhere: the same error everywhere
  }
  local_error.clear();
  const std::int64_t want_q = schedule->q_layout().shard_length(c.rank);
  const std::int64_t want_kv = schedule->kv_layout().shard_length(c.rank);
  if (q.dim(1) != want_q || k.dim(1) != want_kv) {
    std::ostringstream os;
    os << "holds " << q.dim(1) << " query and " << k.dim(1) << " key rows but the " << to_string(o.layout)
       << " layout gives it " << want_q << " and " << want_kv;
    local_error = os.str();
  }
  fail_together(c.comm, local_error, c.timeout_s);
  return *schedule;
}

template <class T>
Tensor<T> block_like(const Tensor<T>& shard, std::int64_t rows) {
  return Tensor<T>({shard.dim(0), rows, shard.dim(2), shard.dim(3)});
}

// A reused block buffer, shaped as @p rows rows of @p shard. The first use allocates room for the
// longest shard (@p longest rows) without touching it; later uses within that room allocate
// nothing. A buffer never used (one rank, or a pass that does not need it) costs nothing.
template <class T>
void shape_block(Tensor<T>& block, const Tensor<T>& shard, std::int64_t rows, std::int64_t longest) {
  block.reserve(shard.dim(0) * longest * shard.dim(2) * shard.dim(3));
  block.resize({shard.dim(0), rows, shard.dim(2), shard.dim(3)});
}

// The K/V block a rank holds: its own shard at step 0 (read in place, never copied), then the
// buffer of the pair that received it. Two receive buffers alternate: the one received at step
// s - 1 is held (and sent on) at step s while the next block lands in the other.
template <class T>
struct HeldBlocks {
  const Tensor<T>* k;
  const Tensor<T>* v;
  Tensor<T> k_buf[2], v_buf[2];
};

// Before computing on the block it holds at step s, a rank posts the receive of the next block
// (from rank r-1, into the other buffer of the pair, shaped for its owner) and the send of the
// held one (to rank r+1). Nothing is posted on the last step: the block held then is not passed on.
template <class T>
void post_kv_exchange(const Context& c, const SequenceLayout& kl, int s, const HeldBlocks<T>& held,
                      Tensor<T>& k_next, Tensor<T>& v_next, std::vector<MPI_Request>& recv,
                      std::vector<MPI_Request>& send) {
  if (s + 1 >= c.ranks) return;
  const int incoming = RingSchedule::kv_owner(c.rank, s + 1, c.ranks);
  const std::int64_t longest = kl.max_shard_length();
  shape_block(k_next, *held.k, kl.shard_length(incoming), longest);
  shape_block(v_next, *held.v, kl.shard_length(incoming), longest);
  post_recv(k_next, c.prev, kTagK, c.comm, recv);
  post_recv(v_next, c.prev, kTagV, c.comm, recv);
  post_send(*held.k, c.next, kTagK, c.comm, send);
  post_send(*held.v, c.next, kTagV, c.comm, send);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

void wait_all(int count, MPI_Request* requests, double timeout_s, const std::string& what, int peer) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  for (int spins = 0;; ++spins) {
    int done = 0;
    MPI_Testall(count, requests, &done, MPI_STATUSES_IGNORE);
    if (done) return;
    const double waited = seconds_since(start);
    if (waited > timeout_s) {
      fail("no ", what, peer >= 0 ? " from rank " + std::to_string(peer) : std::string(" from the other ranks"),
           " after ", timeout_s, " s (--timeout): a peer is dead or stuck");
    }
    // Spin briefly (a transfer about to finish), then back off so that oversubscribed ranks
    // sharing a core are not starved by a busy wait.
    if (waited < 2e-3) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(spins < 1000 ? 50 : 500));
    }
  }
}

void check_agreement(MPI_Comm comm, const std::string& mine, double timeout_s) {
  const std::vector<std::string> all = allgather_text(comm, mine, timeout_s);
  for (std::size_t r = 1; r < all.size(); ++r) {
    if (all[r] == all[0]) continue;
    std::istringstream a(all[r]), b(all[0]);
    std::string ta, tb;
    while (true) {  // the first token that differs; an empty one means that side ran out
      ta.clear();
      tb.clear();
      a >> ta;
      b >> tb;
      if (ta != tb || ta.empty()) break;
    }
    throw CollectiveError("ranks disagree on the ring attention call: rank " + std::to_string(r) + " has " +
                          (ta.empty() ? std::string("nothing") : ta) + " but rank 0 has " +
                          (tb.empty() ? std::string("nothing") : tb));
  }
}

void fail_together(MPI_Comm comm, const std::string& local_error, double timeout_s) {
  const std::vector<std::string> all = allgather_text(comm, local_error, timeout_s);
  for (std::size_t r = 0; r < all.size(); ++r) {
    if (!all[r].empty()) throw CollectiveError("rank " + std::to_string(r) + ": " + all[r]);
  }
}

void inject_fault_if_requested(int rank, int step) {
  const char* spec = std::getenv("RINGATTN_FAULT");
  if (!spec) return;
  int fault_rank = -1, fault_step = -1;
  char action[16] = {};
  if (std::sscanf(spec, "%d:%d:%15s", &fault_rank, &fault_step, action) != 3) return;
  if (fault_rank != rank || fault_step != step) return;
  if (std::strcmp(action, "exit") == 0) std::_Exit(3);     // a peer that dies mid-run
  if (std::strcmp(action, "stop") == 0) std::raise(SIGSTOP);  // a peer that is stuck
}

template <class T>
ForwardResult<T> ring_forward(MPI_Comm comm, const Tensor<T>& q_shard, const Tensor<T>& k_shard,
                              const Tensor<T>& v_shard, const MpiRingOptions& options, RingTiming* timing) {
  const auto t_start = std::chrono::steady_clock::now();
  const Context c = context(comm, options.timeout_s);
  const RingSchedule schedule = agree_and_schedule(c, q_shard, k_shard, v_shard, options, "forward");
  const SequenceLayout& kl = schedule.kv_layout();
  ForwardResult<T> acc{Tensor<T>(q_shard.shape()),
                       Tensor<T>({q_shard.dim(0), q_shard.dim(2), q_shard.dim(1)}, -std::numeric_limits<T>::infinity())};
  HeldBlocks<T> held{&k_shard, &v_shard, {}, {}};
  RingTiming t;
  std::vector<MPI_Request> recv, send;
  for (int s = 0; s < c.ranks; ++s) {
    inject_fault_if_requested(c.rank, s);
    Tensor<T>& k_next = held.k_buf[s % 2];
    Tensor<T>& v_next = held.v_buf[s % 2];
    post_kv_exchange(c, kl, s, held, k_next, v_next, recv, send);
    const auto progress = [&] {
      int done = 0;
      if (!recv.empty()) MPI_Testall(static_cast<int>(recv.size()), recv.data(), &done, MPI_STATUSES_IGNORE);
      if (!send.empty()) MPI_Testall(static_cast<int>(send.size()), send.data(), &done, MPI_STATUSES_IGNORE);
    };
    const auto t0 = std::chrono::steady_clock::now();
    ring_forward_step(schedule, s, c.rank, q_shard, *held.k, *held.v, options, acc.out, acc.lse,
                      std::function<void()>(progress));
    const auto t1 = std::chrono::steady_clock::now();
    t.compute_s += std::chrono::duration<double>(t1 - t0).count();
    wait(recv, c.timeout_s, "K/V block for step " + std::to_string(s + 1), c.prev);
    wait(send, c.timeout_s, "receipt of the K/V block sent at step " + std::to_string(s), c.next);
    t.wait_s += seconds_since(t1);
    if (s + 1 < c.ranks) {  // the block sent is gone: its buffer receives the one after next
      held.k = &k_next;
      held.v = &v_next;
    }
  }
  t.total_s = seconds_since(t_start);
  if (timing) *timing = t;
  return acc;
}

template <class T>
Gradients<T> ring_backward(MPI_Comm comm, const Tensor<T>& q_shard, const Tensor<T>& k_shard,
                           const Tensor<T>& v_shard, const Tensor<T>& out_shard, const Tensor<T>& lse_shard,
                           const Tensor<T>& dout_shard, const MpiRingOptions& options, RingTiming* timing) {
  const auto t_start = std::chrono::steady_clock::now();
  const Context c = context(comm, options.timeout_s);
  std::string local_error;
  try {
    if (q_shard.rank() == 4) {
      const AttentionShape local{q_shard.dim(0), q_shard.dim(1), q_shard.dim(1), q_shard.dim(2),
                                 q_shard.dim(2), q_shard.dim(3)};
      check_backward_inputs(local, out_shard, lse_shard, dout_shard);
    }
  } catch (const Error& e) {
    local_error = e.what();
  }
  fail_together(comm, local_error, c.timeout_s);
  const RingSchedule schedule = agree_and_schedule(c, q_shard, k_shard, v_shard, options, "backward");
  const SequenceLayout& kl = schedule.kv_layout();
  const Tensor<T> delta = softmax_delta(out_shard, dout_shard);  // D = rowsum(dO * O), local rows
  Gradients<T> g{Tensor<T>(q_shard.shape()), {}, {}};
  // Buffers are reused across steps and allocated on first use, with room for the longest
  // shard: the K/V blocks (HeldBlocks) and, for dK and for dV, the partial arriving (in), the
  // one being accumulated (acc) and the one sent after the previous step (out, in flight until
  // its send completes; then it becomes the next accumulator).
  const std::int64_t longest = kl.max_shard_length();
  HeldBlocks<T> held{&k_shard, &v_shard, {}, {}};
  Tensor<T> dk_in, dv_in, dk_acc, dv_acc, dk_out, dv_out;
  RingTiming t;
  std::vector<MPI_Request> kv_recv, kv_send, dkv_recv, dkv_send;
  for (int s = 0; s < c.ranks; ++s) {
    inject_fault_if_requested(c.rank, s);
    const int owner = RingSchedule::kv_owner(c.rank, s, c.ranks);
    Tensor<T>& k_next = held.k_buf[s % 2];
    Tensor<T>& v_next = held.v_buf[s % 2];
    post_kv_exchange(c, kl, s, held, k_next, v_next, kv_recv, kv_send);
    // The partial dK/dV of the block held now, as rank r-1 left it after its step s-1: in flight
    // while this rank accumulates its own contribution into zeroed buffers.
    if (s > 0) {
      shape_block(dk_in, k_shard, kl.shard_length(owner), longest);
      shape_block(dv_in, v_shard, kl.shard_length(owner), longest);
      post_recv(dk_in, c.prev, kTagDK, comm, dkv_recv);
      post_recv(dv_in, c.prev, kTagDV, comm, dkv_recv);
    }
    shape_block(dk_acc, k_shard, held.k->dim(1), longest);
    shape_block(dv_acc, v_shard, held.v->dim(1), longest);
    dk_acc.fill(T(0));
    dv_acc.fill(T(0));
    const auto progress = [&] {
      int done = 0;
      for (auto* reqs : {&kv_recv, &kv_send, &dkv_recv, &dkv_send}) {
        if (!reqs->empty()) MPI_Testall(static_cast<int>(reqs->size()), reqs->data(), &done, MPI_STATUSES_IGNORE);
      }
    };
    const auto t0 = std::chrono::steady_clock::now();
    ring_backward_step(schedule, s, c.rank, q_shard, *held.k, *held.v, dout_shard, lse_shard, delta, options, g.dq,
                       dk_acc, dv_acc, std::function<void()>(progress));
    const auto t1 = std::chrono::steady_clock::now();
    t.compute_s += std::chrono::duration<double>(t1 - t0).count();
    wait(dkv_recv, c.timeout_s, "dK/dV partial sums for step " + std::to_string(s), c.prev);
    if (s > 0) {
      for (std::int64_t i = 0; i < dk_acc.size(); ++i) dk_acc[i] += dk_in[i];
      for (std::int64_t i = 0; i < dv_acc.size(); ++i) dv_acc[i] += dv_in[i];
    }
    // The previous step's dK/dV must have left before their buffers are reused (they become
    // the next step's accumulators).
    wait(dkv_send, c.timeout_s, "receipt of the dK/dV sent at step " + std::to_string(s - 1), c.next);
    std::swap(dk_out, dk_acc);
    std::swap(dv_out, dv_acc);
    post_send(dk_out, c.next, kTagDK, comm, dkv_send);  // after step N-1 this is the hop home
    post_send(dv_out, c.next, kTagDV, comm, dkv_send);
    wait(kv_recv, c.timeout_s, "K/V block for step " + std::to_string(s + 1), c.prev);
    wait(kv_send, c.timeout_s, "receipt of the K/V block sent at step " + std::to_string(s), c.next);
    t.wait_s += seconds_since(t1);
    if (s + 1 < c.ranks) {
      held.k = &k_next;
      held.v = &v_next;
    }
  }
  // Our own block's dK/dV come home from rank r-1, which held it at step N-1.
  const auto t1 = std::chrono::steady_clock::now();
  g.dk = block_like(k_shard, k_shard.dim(1));
  g.dv = block_like(v_shard, v_shard.dim(1));
  post_recv(g.dk, c.prev, kTagDK, comm, dkv_recv);
  post_recv(g.dv, c.prev, kTagDV, comm, dkv_recv);
  wait(dkv_recv, c.timeout_s, "dK/dV of this rank's own block", c.prev);
  wait(dkv_send, c.timeout_s, "receipt of the last dK/dV", c.next);
  t.wait_s += seconds_since(t1);
  t.total_s = seconds_since(t_start);
  if (timing) *timing = t;
  return g;
}

#define INSTANTIATE(T)                                                                                     \
  template ForwardResult<T> ring_forward<T>(MPI_Comm, const Tensor<T>&, const Tensor<T>&, const Tensor<T>&, \
                                            const MpiRingOptions&, RingTiming*);                           \
  template Gradients<T> ring_backward<T>(MPI_Comm, const Tensor<T>&, const Tensor<T>&, const Tensor<T>&,   \
                                         const Tensor<T>&, const Tensor<T>&, const Tensor<T>&,             \
                                         const MpiRingOptions&, RingTiming*);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace ringattn::ref::mpi
