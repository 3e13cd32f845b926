// 09_mpi_ring: the ring over MPI, one process per rank, and what overlapping the transfers buys.
//
// The tutorials, in order:
//   01 softmax            naive softmax, why it overflows, the stable form
//   02 softmax_chunks     softmax over chunks, correcting each with its sum of exponentials
//   03 lse_merge          merging partial results in log space
//   04 online_softmax     the running max m, sum l and output O: blockwise (flash) attention
//   05 ring_attention     N virtual ranks, the K/V block each holds at each step, merged = naive
//   06 causal_balance     the causal mask per rank and step: contiguous, striped, zigzag
//   07 ring_backward      the backward around the ring: dQ stays, dK/dV travel home
//   08 flash_decoding     splitting a long K/V cache for one query token
//   09 mpi_ring           the ring over MPI (mpirun) and what overlap buys
//   10 cuda_vs_reference  a CUDA kernel against the CPU reference (needs a GPU)
//   11 simulator          1M tokens on 8 NVLink GPUs vs 32 over InfiniBand; choosing the block size
//   12 ring_streams       the CUDA ring as stream operations and events; why each wait is needed
//
// What this one shows: tutorials 05 and 07 ran N virtual ranks inside one process. Here every
// rank is a process of its own, started by mpirun, holding only its shard of Q, K and V (zigzag
// layout, causal, S = 998 so that the shards differ in length), and the K/V blocks really travel:
// ringattn::ref::mpi::ring_forward and ring_backward post MPI_Isend of the held block to rank r+1
// and MPI_Irecv of the next one from rank r-1 before computing, and wait only afterwards. Rank 0
// gathers the results and checks them against naive attention (double, to 1e-12). Then it times
// the ring: the library's RingTiming (compute, waiting, total) against a ring written here that
// moves each block only after computing on it, and works out the overlap condition c >= F/B with
// F (FLOP/s) and B (bytes/s) measured on this machine.
//
// Only rank 0 prints; the other ranks run the same program with their output sent to /dev/null.
// Every check is made on every rank and reduced with MPI_Allreduce, so all ranks count the same
// failures, print (rank 0) or not the same disposition, and exit with the same code.
//
// What it leaves out: GPUs and NCCL (10, cuda/), overlap on NVLink and InfiniBand at scale (11),
// a dead or stuck peer (the deadlines and fault tests of docs/mpi-ring.md), the load balance of
// the layouts (06), reading and scattering real shards from files (`ringattn attention --impl
// mpi-ring`, docs/mpi-ring.md).
//
// Run: mpirun -np 4 build/bin/tutorial_09_mpi_ring [--step]
//      --step: rank 0 waits for Enter between stages (mpirun gives stdin to rank 0 only) and the
//      other ranks wait for rank 0. Open MPI: add --oversubscribe on fewer than 4 cores and
//      --allow-run-as-root as root. Without mpirun it runs as a ring of one rank.
// Needs: an MPI library (built when RINGATTN_WITH_MPI is ON). A few seconds with 4 ranks on 2 cores.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <limits>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "ringattn/core/cost.hpp"
#include "ringattn/core/layout.hpp"
#include "ringattn/core/schedule.hpp"
#include "ringattn/core/shape.hpp"
#include "ringattn/core/tensor.hpp"
#include "ringattn/reference/attention.hpp"
#include "ringattn/reference/mpi_ring.hpp"
#include "ringattn/reference/ring.hpp"
#include "tutorial.hpp"

namespace {

namespace ref = ringattn::ref;
namespace rmpi = ringattn::ref::mpi;
using ringattn::Layout;
using ringattn::RingSchedule;
using ringattn::SequenceLayout;
using ringattn::Tensor;
using ringattn::tutorial::format;
using ringattn::tutorial::Tutorial;

// The correctness run: 998 tokens split 249 + 250 + 249 + 250 over 4 ranks, GQA (4 query heads
// on 2 K/V heads), causal, float64.
constexpr std::int64_t kSeq = 998, kHeadsQ = 4, kHeadsKv = 2, kDim = 32;
// float64 against float64: the ring and naive attention add the same terms in a different order,
// so they differ by rounding, ~1e-16 relative per operation (DESIGN.md: ~1e-12). The backward
// sums dK/dV partials over the ranks in yet another order, and its values are larger.
constexpr double kTolForward = 1e-12, kTolBackward = 1e-11;
// The timing run: c tokens per rank, 8 heads each with its own K/V, D = 64, float32, no mask, so
// every step computes a full c x c block.
constexpr std::int64_t kBlock = 256, kTimeHeads = 8, kTimeDim = 64;
// Every wait inside the ring gives up after this long (a dead or stuck peer) instead of hanging.
constexpr double kTimeoutS = 120;
// Tags of the blocking ring's messages (the library's ring uses its own).
constexpr int kTagK = 901, kTagV = 902;

struct World {
  int rank = 0;
  int size = 1;
};

World world() {
  World w;
  MPI_Comm_rank(MPI_COMM_WORLD, &w.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &w.size);
  return w;
}

template <class T>
MPI_Datatype mpi_type() {
  if constexpr (std::is_same_v<T, float>) {
    return MPI_FLOAT;
  } else if constexpr (std::is_same_v<T, double>) {
    return MPI_DOUBLE;
  } else {
    static_assert(std::is_same_v<T, std::int64_t>);
    return MPI_INT64_T;
  }
}

// A check made on every rank: it passes only if it passes on all of them, so every rank counts
// the same failures and exits with the same code. A rank with nothing to check passes true (the
// comparisons on gathered data are rank 0's); the detail is printed by rank 0 only.
bool check_all(Tutorial& t, bool ok_here, const std::string& what, const std::string& detail = {}) {
  int ok = ok_here ? 1 : 0;
  int all = 0;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return t.check(all == 1, what, detail);
}

// Starts a stage on every rank. With --step rank 0 waits for Enter inside Tutorial::stage and the
// others wait for it here: a non-blocking barrier polled with short sleeps, so that waiting ranks
// leave the cores alone, and with no deadline, since it is a person they wait for.
void stage(Tutorial& t, const std::string& title) {
  t.stage(title);
  MPI_Request barrier = MPI_REQUEST_NULL;
  MPI_Ibarrier(MPI_COMM_WORLD, &barrier);
  for (int done = 0;;) {
    MPI_Test(&barrier, &done, MPI_STATUS_IGNORE);
    if (done) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

using ringattn::tutorial::Rng;

template <class T>
Tensor<T> random_tensor(std::vector<std::int64_t> shape, std::uint64_t seed) {
  Tensor<T> x(std::move(shape));
  Rng rng(seed);
  for (T& v : x.values()) v = static_cast<T>(rng.normal());
  return x;
}

// Every rank's tensor, on rank 0 (MPI_Gatherv); an empty list on the others. Shards differ in
// length, so their shapes travel first.
template <class T>
std::vector<Tensor<T>> gather(const Tensor<T>& mine, const World& w) {
  const int dims = mine.rank();
  std::vector<std::int64_t> shapes(static_cast<std::size_t>(dims * w.size));
  MPI_Gather(mine.shape().data(), dims, MPI_INT64_T, shapes.data(), dims, MPI_INT64_T, 0, MPI_COMM_WORLD);
  std::vector<Tensor<T>> out;
  std::vector<int> counts(static_cast<std::size_t>(w.size)), offsets(static_cast<std::size_t>(w.size));
  int total = 0;
  if (w.rank == 0) {
    for (int r = 0; r < w.size; ++r) {
      const auto first = shapes.begin() + static_cast<std::ptrdiff_t>(r) * dims;
      out.emplace_back(std::vector<std::int64_t>(first, first + dims));
      counts[static_cast<std::size_t>(r)] = static_cast<int>(out.back().size());
      offsets[static_cast<std::size_t>(r)] = total;
      total += counts[static_cast<std::size_t>(r)];
    }
  }
  std::vector<T> all(static_cast<std::size_t>(total));
  MPI_Gatherv(mine.data(), static_cast<int>(mine.size()), mpi_type<T>(), all.data(), counts.data(),
              offsets.data(), mpi_type<T>(), 0, MPI_COMM_WORLD);
  for (int r = 0; r < static_cast<int>(out.size()); ++r) {
    const auto first = all.begin() + offsets[static_cast<std::size_t>(r)];
    std::copy(first, first + counts[static_cast<std::size_t>(r)], out[static_cast<std::size_t>(r)].data());
  }
  return out;
}

// The full (B, S, H, D) tensor on rank 0, from every rank's rows (empty on the others). It starts
// as NaN, so a row that no rank sent cannot pass a comparison.
Tensor<double> gather_rows(const Tensor<double>& shard, const SequenceLayout& layout,
                           std::vector<std::int64_t> full_shape, const World& w) {
  const std::vector<Tensor<double>> shards = gather(shard, w);
  if (w.rank != 0) return {};
  Tensor<double> full(std::move(full_shape), std::numeric_limits<double>::quiet_NaN());
  for (int r = 0; r < w.size; ++r) ref::unshard_rows(shards[static_cast<std::size_t>(r)], layout, r, full);
  return full;
}

// The same for a (B, H, S) LSE.
Tensor<double> gather_lse(const Tensor<double>& shard, const SequenceLayout& layout,
                          std::vector<std::int64_t> full_shape, const World& w) {
  const std::vector<Tensor<double>> shards = gather(shard, w);
  if (w.rank != 0) return {};
  Tensor<double> full(std::move(full_shape), std::numeric_limits<double>::quiet_NaN());
  for (int r = 0; r < w.size; ++r) ref::unshard_lse(shards[static_cast<std::size_t>(r)], layout, r, full);
  return full;
}

// max |a - b|; NaN if any element is NaN or the shapes differ (equal infinities count as equal).
double max_abs_diff(const Tensor<double>& a, const Tensor<double>& b) {
  if (a.shape() != b.shape()) return NAN;
  double worst = 0;
  for (std::int64_t i = 0; i < a.size(); ++i) {
    if (a[i] == b[i]) continue;
    const double d = std::abs(a[i] - b[i]);
    if (std::isnan(d)) return NAN;
    worst = std::max(worst, d);
  }
  return worst;
}

double max_abs(const Tensor<double>& a) {
  double m = 0;
  for (double x : a.values()) m = std::max(m, std::abs(x));
  return m;
}

// "[0, 124) and [873, 998)": the runs of consecutive positions.
std::string runs_string(const std::vector<std::int64_t>& pos) {
  std::string s;
  int shown = 0;
  for (std::size_t i = 0; i < pos.size();) {
    std::size_t j = i + 1;
    while (j < pos.size() && pos[j] == pos[j - 1] + 1) ++j;
    if (shown == 3) return s + " ...";
    s += format("%s[%lld, %lld)", shown > 0 ? " and " : "", static_cast<long long>(pos[i]),
                static_cast<long long>(pos[j - 1] + 1));
    ++shown;
    i = j;
  }
  return s;
}

std::string ms(double s) { return format("%8.2f ms", s * 1e3); }

// ---- stages 1-3: correctness --------------------------------------------------------------------

void correctness(Tutorial& t, const World& w) {
  stage(t, "One process per rank, one shard per process");
  const SequenceLayout layout(Layout::Zigzag, kSeq, w.size);
  if (w.size == 1) {
    t.say("Only one process: a ring of one rank, where nothing travels. To see the ring, run");
    t.say("  mpirun -np 4 build/bin/tutorial_09_mpi_ring   (Open MPI: add --oversubscribe on fewer cores)");
  }
  t.say(format("%d MPI process%s, one rank per process. Attention: S = %lld tokens, H_q = %lld query heads on",
               w.size, w.size == 1 ? "" : "es", static_cast<long long>(kSeq), static_cast<long long>(kHeadsQ)));
  t.say(format("H_kv = %lld K/V heads, D = %lld, causal, float64, zigzag layout (rank r holds chunks",
               static_cast<long long>(kHeadsKv), static_cast<long long>(kDim)));
  t.say("r and 2N-1-r of 2N, tutorial 06). Every rank draws the same full Q, K, V, dO from one");
  t.say("seed and keeps its own rows (a real job would load only its shard). Who holds what,");
  t.say("as each rank reports it (MPI_Gatherv to rank 0):");
  const std::vector<std::int64_t> my_positions = layout.positions(w.rank);
  Tensor<std::int64_t> mine({static_cast<std::int64_t>(my_positions.size())});
  std::copy(my_positions.begin(), my_positions.end(), mine.data());
  const std::vector<Tensor<std::int64_t>> held = gather(mine, w);
  bool partition = w.rank == 0;
  if (w.rank == 0) {
    std::vector<int> owners(static_cast<std::size_t>(kSeq), 0);  // how many ranks hold each token
    for (int r = 0; r < w.size; ++r) {
      const std::vector<std::int64_t>& pos = held[static_cast<std::size_t>(r)].values();
      if (r < 8 || r == w.size - 1) {
        t.say(format("  rank %d holds %lld tokens: positions %s", r, static_cast<long long>(pos.size()),
                     runs_string(pos).c_str()));
      } else if (r == 8) {
        t.say("  ...");
      }
      for (std::size_t i = 0; i < pos.size(); ++i) {
        const bool in_range = pos[i] >= 0 && pos[i] < kSeq;
        partition = partition && in_range &&
                    layout.locate(pos[i]) == ringattn::LocalIndex{r, static_cast<std::int64_t>(i)};
        if (in_range) ++owners[static_cast<std::size_t>(pos[i])];
      }
    }
    partition = partition && std::all_of(owners.begin(), owners.end(), [](int n) { return n == 1; });
  }
  check_all(t, w.rank != 0 || partition,
            "every token is held by exactly one rank, where SequenceLayout::locate says");

  const Tensor<double> q_full = random_tensor<double>({1, kSeq, kHeadsQ, kDim}, 1);
  const Tensor<double> k_full = random_tensor<double>({1, kSeq, kHeadsKv, kDim}, 2);
  const Tensor<double> v_full = random_tensor<double>({1, kSeq, kHeadsKv, kDim}, 3);
  const Tensor<double> do_full = random_tensor<double>({1, kSeq, kHeadsQ, kDim}, 4);
  const Tensor<double> q = ref::shard_rows(q_full, layout, w.rank);
  const Tensor<double> k = ref::shard_rows(k_full, layout, w.rank);
  const Tensor<double> v = ref::shard_rows(v_full, layout, w.rank);
  const Tensor<double> dout = ref::shard_rows(do_full, layout, w.rank);

  // -------------------------------------------------------------------------------------------
  stage(t, "The forward ring: a block travels while the previous one is computed");
  t.say("At step s rank r holds the K/V block that started on rank (r - s) mod N. Before computing");
  t.say("on it, it posts MPI_Isend of that block to rank r+1 and MPI_Irecv of the next one from");
  t.say("rank r-1 into a second buffer; it waits for both only after its compute. The kernels call");
  t.say("MPI_Testall after every tile, so that MPI moves the bytes meanwhile (docs/mpi-ring.md).");
  const RingSchedule schedule(layout, layout, /*causal=*/true, /*q_offset=*/0);
  if (w.size <= 8) {
    t.say("Causal (query, key) pairs each rank computes per step, per head (RingSchedule::work):");
    std::printf("\n         ");
    for (int r = 0; r < w.size; ++r) std::printf("   rank %d", r);
    std::printf("\n");
  }
  std::int64_t visible = 0;
  for (int s = 0; s < w.size; ++s) {
    if (w.size <= 8) std::printf("  step %d ", s);
    for (int r = 0; r < w.size; ++r) {
      const std::int64_t pairs = schedule.work(s, r).visible;
      visible += pairs;
      if (w.size <= 8) std::printf(" %8lld", static_cast<long long>(pairs));
    }
    if (w.size <= 8) std::printf("\n");
  }
  std::printf("\n");
  t.say("Zigzag gives every rank about half a block per step: the causal work is balanced.");
  check_all(t, visible == kSeq * (kSeq + 1) / 2,
            "the ring computes every causal pair exactly once: S(S+1)/2",
            format("%lld pairs", static_cast<long long>(visible)));

  rmpi::MpiRingOptions options;
  options.causal = true;
  options.layout = Layout::Zigzag;
  options.seq_q = kSeq;
  options.seq_kv = kSeq;
  options.timeout_s = kTimeoutS;
  const ref::ForwardResult<double> fwd = rmpi::ring_forward(MPI_COMM_WORLD, q, k, v, options);
  const Tensor<double> out = gather_rows(fwd.out, layout, {1, kSeq, kHeadsQ, kDim}, w);
  const Tensor<double> lse = gather_lse(fwd.lse, layout, {1, kHeadsQ, kSeq}, w);
  ref::AttentionOptions naive_options;
  naive_options.causal = true;
  ref::ForwardResult<double> naive;
  double err_out = 0, err_lse = 0;
  if (w.rank == 0) {
    naive = ref::naive_forward(q_full, k_full, v_full, naive_options);
    err_out = max_abs_diff(out, naive.out);
    err_lse = max_abs_diff(lse, naive.lse);
    const std::int64_t last = kSeq - 1;
    const ringattn::LocalIndex where = layout.locate(last);
    t.say(format("Rank 0 gathered O and LSE from all ranks and ran naive attention on the full tensors."));
    t.say(format("Query %lld (rank %d's local row %lld), head 0, O[0..3]:", static_cast<long long>(last),
                 where.rank, static_cast<long long>(where.index)));
    const std::int64_t at = last * kHeadsQ * kDim;
    t.say(format("  ring  [%8.5f %8.5f %8.5f %8.5f]   LSE %.6f", out[at], out[at + 1], out[at + 2], out[at + 3],
                 lse[last]));
    t.say(format("  naive [%8.5f %8.5f %8.5f %8.5f]   LSE %.6f", naive.out[at], naive.out[at + 1],
                 naive.out[at + 2], naive.out[at + 3], naive.lse[last]));
  }
  check_all(t, w.rank != 0 || err_out <= kTolForward, "O from the MPI ring = naive attention",
            format("max |diff| %.1e (tolerance %.0e)", err_out, kTolForward));
  check_all(t, w.rank != 0 || err_lse <= kTolForward, "LSE from the MPI ring = naive attention",
            format("max |diff| %.1e (tolerance %.0e)", err_lse, kTolForward));

  // -------------------------------------------------------------------------------------------
  stage(t, "The backward ring: dQ stays, dK/dV travel home");
  t.say("Each rank accumulates dQ of its own queries. The dK/dV of a block travel with it: every");
  t.say("rank adds its queries' share and passes the sum on, and after step N-1 one more hop takes");
  t.say("them home: rank r receives its own block's dK/dV from rank r-1 (tutorial 07).");
  const ref::Gradients<double> g = rmpi::ring_backward(MPI_COMM_WORLD, q, k, v, fwd.out, fwd.lse, dout, options);
  const Tensor<double> dq = gather_rows(g.dq, layout, {1, kSeq, kHeadsQ, kDim}, w);
  const Tensor<double> dk = gather_rows(g.dk, layout, {1, kSeq, kHeadsKv, kDim}, w);
  const Tensor<double> dv = gather_rows(g.dv, layout, {1, kSeq, kHeadsKv, kDim}, w);
  ref::Gradients<double> want;
  if (w.rank == 0) {
    want = ref::naive_backward(q_full, k_full, v_full, naive.out, naive.lse, do_full, naive_options);
  }
  const struct {
    const char* name;
    const Tensor<double>& got;
    const Tensor<double>& want;
  } grads[] = {{"dQ", dq, want.dq}, {"dK", dk, want.dk}, {"dV", dv, want.dv}};
  for (const auto& gr : grads) {
    const double err = w.rank == 0 ? max_abs_diff(gr.got, gr.want) : 0.0;
    check_all(t, w.rank != 0 || err <= kTolBackward, format("%s from the MPI ring = naive backward", gr.name),
              format("max |diff| %.1e (largest |%s| %.2f, tolerance %.0e)", err, gr.name,
                     w.rank == 0 ? max_abs(gr.want) : 0.0, kTolBackward));
  }
}

// ---- stages 4-5: timing -------------------------------------------------------------------------

struct BlockingTiming {
  double compute_s = 0;   // inside ring_forward_step
  double transfer_s = 0;  // passing the block on and receiving the next, after the compute
  double total_s = 0;     // the whole call
};

// The ring without overlap, for comparison: compute on the block held, then pass it on and wait
// for the next one. Same schedule, same step function, same order of merges as
// rmpi::ring_forward, hence the same bits; only the transfers no longer run during the compute.
ref::ForwardResult<float> blocking_ring_forward(const RingSchedule& schedule, const World& w,
                                                const Tensor<float>& q, const Tensor<float>& k,
                                                const Tensor<float>& v, const ref::AttentionOptions& options,
                                                BlockingTiming& timing) {
  const double start = MPI_Wtime();
  const int prev = RingSchedule::prev_rank(w.rank, w.size), next = RingSchedule::next_rank(w.rank, w.size);
  ref::ForwardResult<float> acc{Tensor<float>(q.shape()),
                                Tensor<float>({q.dim(0), q.dim(2), q.dim(1)}, -std::numeric_limits<float>::infinity())};
  Tensor<float> k_cur = k, v_cur = v;
  for (int s = 0; s < w.size; ++s) {
    const double t0 = MPI_Wtime();
    ref::ring_forward_step(schedule, s, w.rank, q, k_cur, v_cur, options, acc.out, acc.lse);
    const double t1 = MPI_Wtime();
    timing.compute_s += t1 - t0;
    if (s + 1 == w.size) break;  // the last block is not passed on
    const std::int64_t rows = schedule.kv_layout().shard_length(RingSchedule::kv_owner(w.rank, s + 1, w.size));
    Tensor<float> k_next({k.dim(0), rows, k.dim(2), k.dim(3)}), v_next({v.dim(0), rows, v.dim(2), v.dim(3)});
    MPI_Request req[4];
    MPI_Irecv(k_next.data(), static_cast<int>(k_next.size()), MPI_FLOAT, prev, kTagK, MPI_COMM_WORLD, &req[0]);
    MPI_Irecv(v_next.data(), static_cast<int>(v_next.size()), MPI_FLOAT, prev, kTagV, MPI_COMM_WORLD, &req[1]);
    MPI_Isend(k_cur.data(), static_cast<int>(k_cur.size()), MPI_FLOAT, next, kTagK, MPI_COMM_WORLD, &req[2]);
    MPI_Isend(v_cur.data(), static_cast<int>(v_cur.size()), MPI_FLOAT, next, kTagV, MPI_COMM_WORLD, &req[3]);
    rmpi::wait_all(4, req, kTimeoutS, "K/V block for step " + std::to_string(s + 1), prev);
    timing.transfer_s += MPI_Wtime() - t1;
    k_cur = std::move(k_next);
    v_cur = std::move(v_next);
  }
  timing.total_s = MPI_Wtime() - start;
  return acc;
}

// The transfer alone, as in a ring step but with no compute: every rank sends its K/V block to
// r+1 and receives one from r-1 at the same time. The best of 5: the first pays for setting up
// the connection between the two processes.
double transfer_alone(const World& w, const Tensor<float>& k, const Tensor<float>& v) {
  const int prev = RingSchedule::prev_rank(w.rank, w.size), next = RingSchedule::next_rank(w.rank, w.size);
  Tensor<float> k_in(k.shape()), v_in(v.shape());
  double best = std::numeric_limits<double>::infinity();
  for (int rep = 0; rep < 5; ++rep) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = MPI_Wtime();
    MPI_Request req[4];
    MPI_Irecv(k_in.data(), static_cast<int>(k_in.size()), MPI_FLOAT, prev, kTagK, MPI_COMM_WORLD, &req[0]);
    MPI_Irecv(v_in.data(), static_cast<int>(v_in.size()), MPI_FLOAT, prev, kTagV, MPI_COMM_WORLD, &req[1]);
    MPI_Isend(k.data(), static_cast<int>(k.size()), MPI_FLOAT, next, kTagK, MPI_COMM_WORLD, &req[2]);
    MPI_Isend(v.data(), static_cast<int>(v.size()), MPI_FLOAT, next, kTagV, MPI_COMM_WORLD, &req[3]);
    rmpi::wait_all(4, req, kTimeoutS, "K/V block (transfer alone)", prev);
    best = std::min(best, MPI_Wtime() - t0);
  }
  return best;
}

double all_max(double x) {
  double m = 0;
  MPI_Allreduce(&x, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return m;
}

double all_min(double x) {
  double m = 0;
  MPI_Allreduce(&x, &m, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
  return m;
}

void timing(Tutorial& t, const World& w) {
  stage(t, "What overlap buys: compute and waiting, per rank");
  const std::int64_t seq = kBlock * w.size;
  const SequenceLayout layout(Layout::Contiguous, seq, w.size);
  const RingSchedule schedule(layout, layout, /*causal=*/false, /*q_offset=*/0);
  const ringattn::AttentionShape shape{1, seq, seq, kTimeHeads, kTimeHeads, kTimeDim};
  t.say(format("A larger ring to time: c = %lld tokens per rank (S = %lld), %lld heads, each with its",
               static_cast<long long>(kBlock), static_cast<long long>(seq), static_cast<long long>(kTimeHeads)));
  t.say(format("own K/V, D = %lld, float32, no mask: every step computes a full c x c block. Each rank",
               static_cast<long long>(kTimeDim)));
  t.say("draws only its own shard. Two rings on the same shards:");
  t.say("  overlapped: rmpi::ring_forward; RingTiming says how long it computed, how long it then");
  t.say("              waited for the transfers of the step, and the total;");
  t.say("  blocking:   written here: compute, then pass the block on and wait for the next.");
  const auto seed = static_cast<std::uint64_t>(100 + 3 * w.rank);
  const Tensor<float> q = random_tensor<float>({1, kBlock, kTimeHeads, kTimeDim}, seed);
  const Tensor<float> k = random_tensor<float>({1, kBlock, kTimeHeads, kTimeDim}, seed + 1);
  const Tensor<float> v = random_tensor<float>({1, kBlock, kTimeHeads, kTimeDim}, seed + 2);
  rmpi::MpiRingOptions options;
  options.layout = Layout::Contiguous;
  options.seq_q = seq;
  options.seq_kv = seq;
  options.timeout_s = kTimeoutS;

  // Three rounds of both, keeping for each the round whose slowest rank was fastest: the machine
  // may be busy with other work, which only ever adds time.
  (void)rmpi::ring_forward(MPI_COMM_WORLD, q, k, v, options);  // warm-up: connections, first touches
  rmpi::RingTiming rt;
  BlockingTiming bt;
  double best_ring = INFINITY, best_blocking = INFINITY;
  bool same = true;       // every round of both rings gives the same bits
  bool accounted = true;  // in every round, RingTiming's parts fit in its total
  std::vector<float> first_out;
  for (int round = 0; round < 3; ++round) {
    MPI_Barrier(MPI_COMM_WORLD);
    rmpi::RingTiming r;
    const ref::ForwardResult<float> overlapped = rmpi::ring_forward(MPI_COMM_WORLD, q, k, v, options, &r);
    MPI_Barrier(MPI_COMM_WORLD);
    BlockingTiming b;
    const ref::ForwardResult<float> blocking = blocking_ring_forward(schedule, w, q, k, v, options, b);
    if (round == 0) first_out = overlapped.out.values();
    same = same && overlapped.out.values() == first_out && blocking.out.values() == first_out &&
           overlapped.lse.values() == blocking.lse.values();
    // compute and waiting are disjoint intervals inside the call (1 ns for rounding the sums)
    accounted = accounted && r.compute_s >= 0 && r.wait_s >= 0 && r.compute_s + r.wait_s <= r.total_s + 1e-9;
    if (const double slowest = all_max(r.total_s); slowest < best_ring) {
      best_ring = slowest;
      rt = r;
    }
    if (const double slowest = all_max(b.total_s); slowest < best_blocking) {
      best_blocking = slowest;
      bt = b;
    }
  }

  const double mine[6] = {rt.compute_s, rt.wait_s, rt.total_s, bt.compute_s, bt.transfer_s, bt.total_s};
  std::vector<double> all(static_cast<std::size_t>(6 * w.size));
  MPI_Gather(mine, 6, MPI_DOUBLE, all.data(), 6, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  std::printf("\n         %-33s   %s\n", "overlapped (RingTiming)", "blocking (written here)");
  std::printf("  rank   %11s %11s %11s   %11s %11s %11s\n", "compute", "waiting", "total", "compute",
              "transfers", "total");
  for (int r = 0; r < w.size && w.rank == 0; ++r) {
    const double* x = all.data() + 6 * r;
    if (r >= 8 && r != w.size - 1) continue;
    std::printf("  %4d  %s %s %s  %s %s %s\n", r, ms(x[0]).c_str(), ms(x[1]).c_str(), ms(x[2]).c_str(),
                ms(x[3]).c_str(), ms(x[4]).c_str(), ms(x[5]).c_str());
  }
  std::printf("\n");
  t.say(format("Slowest rank (best of 3 rounds): overlapped %.1f ms, of which %.1f ms waiting; blocking",
               best_ring * 1e3, all_max(rt.wait_s) * 1e3));
  t.say(format("%.1f ms, of which %.1f ms passing blocks on.", best_blocking * 1e3, all_max(bt.transfer_s) * 1e3));
  if (w.size == 1) {
    t.say("With one rank no block travels: the two rings are the same computation.");
  } else {
    t.say("The overlapped ring hardly waits: each block arrived while the previous one was computed.");
    t.say("Whether that makes it faster depends on who moves the bytes. On a CPU the same cores");
    t.say("compute and copy: Open MPI's shared-memory transport copies inside the MPI_Testall calls");
    t.say("made between tiles, so the copy lands in \"compute\" rather than vanishing. On GPUs, copy");
    t.say("engines and NICs move the bytes while the SMs compute: there overlap hides the whole");
    t.say("transfer, as long as c >= F/B (next stage).");
  }
  const unsigned cores = std::thread::hardware_concurrency();
  if (cores > 0 && static_cast<unsigned>(w.size) > cores) {
    t.say(format("%d ranks on %u cores: the ranks take turns, and a rank's times include the others' turns.",
                 w.size, cores));
  }
  t.say("Timings on a possibly busy machine: printed, never checked.");
  check_all(t, same, "both rings give the same bits, every round: same steps, same order");
  check_all(t, accounted, "on every rank and round, RingTiming's compute + waiting <= total",
            format("rank 0: %.2f + %.2f <= %.2f ms", rt.compute_s * 1e3, rt.wait_s * 1e3, rt.total_s * 1e3));

  // -------------------------------------------------------------------------------------------
  stage(t, "c >= F/B: when does a transfer hide?");
  const auto elems = static_cast<double>(k.size() + v.size());
  bool bytes_match = true;  // the cost model counts what MPI moves: K and V after every step but the last
  double flops = 0;
  for (int s = 0; s < w.size; ++s) {
    const ringattn::StepCost cost = schedule.cost(s, w.rank, shape, 4, 4);
    bytes_match = bytes_match && cost.kv_bytes == (s + 1 < w.size ? 4 * elems : 0.0);
    flops += cost.flops_forward;
  }
  const double step_flops = flops / w.size;
  const double step_bytes = 4 * elems;
  t.say(format("Per step a rank computes 4 D H c^2 = %.0f MFLOP and sends K and V: 2 c H D x 4 bytes =",
               step_flops / 1e6));
  t.say(format("%.2f MB (RingSchedule::cost). Compute hides the transfer when 4 D H c^2 / F >= 2 c H D e / B,",
               step_bytes / 1e6));
  t.say("that is c >= e F / (2 B): F/B for bf16 (e = 2, the paper's form), 2 F/B for float32.");
  check_all(t, bytes_match, "RingSchedule::cost counts the bytes MPI moves: K and V after every step but the last",
            format("%.0f bytes per step", step_bytes));
  const double f = all_min(flops / bt.compute_s);  // the slowest rank's FLOP/s
  t.say(format("F, measured (the slowest rank's FLOP/s in the blocking ring): %.1f GFLOP/s", f / 1e9));
  if (w.size == 1) {
    t.say("With one rank nothing travels, so there is no B to measure: run me under mpirun -np 4.");
    return;
  }
  const double x = all_max(transfer_alone(w, k, v));
  const double b = step_bytes / x;
  const double c_min = ringattn::min_overlap_block(f, b, 4);
  t.say(format("B, measured (the transfer alone, every rank sending at once): %.2f GB/s", b / 1e9));
  t.say(format("Per step: compute %.2f ms, transfer %.3f ms. c >= 2 F/B = %.1f tokens; here c = %lld, %s.",
               step_flops / f * 1e3, x * 1e3, c_min, static_cast<long long>(kBlock),
               static_cast<double>(kBlock) >= c_min ? "above: the transfer can hide" : "below: it cannot hide"));
  t.say("On one machine F/B is small: a CPU's FLOP/s against copies through memory. GPUs are the");
  t.say(format("other way round: an H100 in bf16 has F/B = %.0f tokens over NVLink (450 GB/s) and %.0f",
               ringattn::min_overlap_block(989e12, 450e9), ringattn::min_overlap_block(989e12, 50e9)));
  t.say("over InfiniBand (50 GB/s): tutorial 11 asks the simulator what that means for a cluster.");
  // At c = c_min the step's compute and its transfer take the same time: the threshold is where
  // the two lines cross, which is what min_overlap_block must return.
  const double at_compute = 4 * kTimeDim * kTimeHeads * c_min * c_min / f;
  const double at_transfer = 2 * c_min * kTimeHeads * kTimeDim * 4 / b;
  check_all(t, std::abs(at_compute - at_transfer) <= 1e-9 * at_transfer,
            "at c = min_overlap_block(F, B, 4) a step's compute equals its transfer",
            format("%.4g s vs %.4g s", at_compute, at_transfer));
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  const World w = world();
  // Only rank 0 talks; the others run the same code, checks included, into /dev/null.
  if (w.rank != 0 && std::freopen("/dev/null", "w", stdout) == nullptr) {
    std::fprintf(stderr, "[rank %d] cannot silence stdout: its output repeats rank 0's\n", w.rank);
  }
  // The arguments are read here, before the Tutorial sees them: its --help and its error for an
  // unknown argument exit at once, which under mpirun would skip MPI_Finalize.
  bool step = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--step") {
      step = true;
      continue;
    }
    const bool help = a == "--help" || a == "-h";
    if (w.rank == 0 && help) {
      std::printf("usage: mpirun -np 4 %s [--step]\n  --step   pause for Enter between stages (rank 0 "
                  "reads stdin; the others wait for it)\n", argv[0]);
    } else if (w.rank == 0) {
      std::fprintf(stderr, "%s: error: unknown argument '%s' (try --help)\n", argv[0], a.c_str());
    }
    MPI_Finalize();
    return help ? 0 : 2;
  }
  // --step goes to rank 0's Tutorial only: rank 0 alone reads stdin.
  char step_flag[] = "--step";
  std::vector<char*> args{argv[0]};
  if (step && w.rank == 0) args.push_back(step_flag);

  bool finished = false;
  const int rc = ringattn::tutorial::run([&] {
    Tutorial t(static_cast<int>(args.size()), args.data(), "09_mpi_ring",
               "Ring attention over MPI, and what overlap buys");
    try {
      correctness(t, w);
      timing(t, w);
    } catch (const std::exception& e) {
      if (w.rank != 0) std::fprintf(stderr, "[rank %d] error: %s\n", w.rank, e.what());
      throw;
    }
    finished = true;
    return t.finish();
  });
  if (!finished) {
    // An exception: other ranks may be waiting for this one in a collective, and after an error
    // inside the ring the communicator is in an unknown state (mpi_ring.hpp). End the whole job,
    // as the command line does.
    std::fflush(stdout);
    MPI_Abort(MPI_COMM_WORLD, rc);
  }
  MPI_Finalize();
  return rc;
}
