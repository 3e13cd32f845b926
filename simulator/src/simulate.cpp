#include "ringattn/simulator/simulate.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numbers>

#include "ringattn/core/cost.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/core/schedule.hpp"
#include "ringattn/simulator/engine.hpp"

namespace ringattn::sim {

std::string_view to_string(Pass pass) { return pass == Pass::Forward ? "fwd" : "fwd+bwd"; }

Pass parse_pass(std::string_view name) {
  if (name == "fwd") return Pass::Forward;
  if (name == "fwd+bwd") return Pass::ForwardBackward;
  fail("unknown pass '", name, "' (expected fwd or fwd+bwd)");
}

std::string_view to_string(SweepKind kind) {
  switch (kind) {
    case SweepKind::BlockSize: return "block-size";
    case SweepKind::Devices: return "devices";
    case SweepKind::Layout: return "layout";
  }
  return "unknown";
}

SweepKind parse_sweep(std::string_view name) {
  if (name == "block-size") return SweepKind::BlockSize;
  if (name == "devices") return SweepKind::Devices;
  if (name == "layout") return SweepKind::Layout;
  fail("unknown sweep '", name, "' (expected block-size, devices or layout)");
}

void Workload::validate(int devices) const {
  require(devices >= 1, "the ring needs at least 1 device, got ", devices);
  require(devices <= (1 << 20), "a ring of ", devices, " devices is beyond this simulator (at most 1048576)");
  require(batch >= 1, "batch must be at least 1, got ", batch);
  require(seq_len >= 1, "the sequence length must be at least 1, got ", seq_len);
  require(heads_q >= 1, "heads must be at least 1, got ", heads_q);
  require(heads_kv >= 0, "kv-heads must be positive, got ", heads_kv);
  require(heads_q % kv_heads() == 0, "the query heads (", heads_q, ") must be a multiple of the K/V heads (",
          kv_heads(), ")");
  require(head_dim >= 1, "head dim must be at least 1, got ", head_dim);
  const std::int64_t chunks = layout == Layout::Zigzag ? 2 * std::int64_t{devices} : devices;
  require(seq_len >= chunks, "a sequence of ", seq_len, " tokens cannot be split over ", devices,
          " devices with the ", to_string(layout), " layout (it needs at least ", chunks, " tokens)");
  require(sub_blocks >= 1, "sub-blocks must be at least 1, got ", sub_blocks);
  require(sub_blocks <= seq_len / devices, "sub-blocks (", sub_blocks, ") cannot exceed the tokens per device (",
          seq_len / devices, ")");
  require(buffers >= 0, "buffers must not be negative, got ", buffers);
  require(buffers == 0 || buffers >= sub_blocks + 1, "a ring with ", sub_blocks, " sub-block",
          sub_blocks > 1 ? "s" : "", " needs at least ", sub_blocks + 1,
          " receive buffers per device (a whole block being computed and forwarded, plus one to ",
          "receive the next into; with fewer the ring deadlocks); got ", buffers);
  require(layers >= 0, "layers must not be negative, got ", layers);
  require(hidden >= 0, "hidden must not be negative, got ", hidden);
  require((layers > 0) == (hidden > 0), "--layers and --hidden go together (the model around attention ",
          "needs both)");
}

double working_set_bytes(const Workload& w, int devices) {
  const double b = static_cast<double>(w.batch), hq = static_cast<double>(w.heads_q),
               hkv = static_cast<double>(w.kv_heads()), d = static_cast<double>(w.head_dim);
  const double e = dtype_bytes(w.dtype);
  const double c = std::ceil(static_cast<double>(w.seq_len) / devices);  // largest shard
  const double msg = std::ceil(c / w.sub_blocks);
  const double rows_q = b * c * hq, rows_kv = b * c * hkv;
  // Forward: Q and O in the element type; the local K and V; the fp32 running O, the fp32 O of
  // the block just computed, running and block LSE; the receive buffers.
  double fwd = 2 * rows_q * d * e + 2 * rows_kv * d * e + 2 * rows_q * d * 4 + 2 * rows_q * 4 +
               w.receive_buffers() * 2 * b * msg * hkv * d * e;
  if (w.pass == Pass::Forward) return fwd;
  // Backward keeps Q, K, V, O, LSE and the receive buffers, and adds dO, D = rowsum(dO*O),
  // fp32 dQ, the home dK/dV, the accumulators that travel and their receive buffers.
  const double bwd = 2 * rows_q * d * e + 2 * rows_kv * d * e + rows_q * 4 +  // Q, O, K, V, LSE
                     w.receive_buffers() * 2 * b * msg * hkv * d * e +                  // K/V receive buffers
                     rows_q * d * e + rows_q * 4 + rows_q * d * 4 +           // dO, D, dQ
                     2 * rows_kv * d * 4 +                                    // dK, dV at home
                     2 * w.receive_buffers() * 2 * b * msg * hkv * d * 4;               // accumulators + receives
  return std::max(fwd, bwd);
}

namespace {

// Counter-based normal deviate: the same (seed, device, task) always gives the same draw,
// whatever order the events happen in.
std::uint64_t splitmix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
double normal_draw(std::uint64_t seed, std::uint64_t device, std::uint64_t task) {
  const std::uint64_t a = splitmix(seed ^ splitmix(device * 0x100000001b3ULL ^ splitmix(task)));
  const std::uint64_t bb = splitmix(a);
  const double u1 = (static_cast<double>(a >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
  const double u2 = static_cast<double>(bb >> 11) * 0x1.0p-53;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

// Program lengths per device. Compute: a forward task per message (M = N*K of them), then for
// the backward a prepass, a backward task per message and an add per received message.
// Link: the forward sends every message but the last step's; the backward sends those again
// and the dK/dV of every message. One device sends nothing.
std::int64_t compute_tasks(const Workload& w, int n) {
  const std::int64_t m = std::int64_t{n} * w.sub_blocks, k = w.sub_blocks;
  return m + (w.pass == Pass::ForwardBackward ? 1 + m + (m - k) : 0);
}
std::int64_t link_tasks(const Workload& w, int n) {
  const std::int64_t m = std::int64_t{n} * w.sub_blocks, k = w.sub_blocks;
  return n > 1 ? (m - k) + (w.pass == Pass::ForwardBackward ? (m - k) + m : 0) : 0;
}

enum class CTask { Fwd, Prepass, Bwd, Add };
enum class LTask { Kv, KvBwd, Dkv };

// The ring as a state machine. Every resource runs a fixed program in order; the program index
// is decoded arithmetically, so nothing per task is stored and memory is O(devices).
class Ring {
 public:
  Ring(const ClusterSpec& cluster, int n, const Workload& w, const SimOptions& opt)
      : cl_(cluster),
        n_(n),
        w_(w),
        opt_(opt),
        sched_(RingSchedule::for_shape(AttentionShape{w.batch, w.seq_len, w.seq_len, w.heads_q, w.kv_heads(),
                                                      w.head_dim},
                                       w.layout, n, w.causal)),
        k_(w.sub_blocks),
        m_(std::int64_t{n} * w.sub_blocks),
        mf_(n > 1 ? std::int64_t{n - 1} * w.sub_blocks : 0),
        bwd_(w.pass == Pass::ForwardBackward),
        peak_(cluster.device.peak_flops(w.dtype)),
        elem_(dtype_bytes(w.dtype)),
        dev_(static_cast<std::size_t>(n), Dev(w.receive_buffers())),
        q_(2 * static_cast<std::uint32_t>(n)) {  // resource 2d: compute of d, 2d + 1: its link
    c_total_ = compute_tasks(w, n);
    shard_.reserve(static_cast<std::size_t>(n));
    for (int r = 0; r < n; ++r) shard_.push_back(sched_.kv_layout().shard_length(r));
    q_rows_.reserve(static_cast<std::size_t>(n));
    for (int r = 0; r < n; ++r) q_rows_.push_back(static_cast<double>(sched_.q_layout().shard_length(r)));
    for (int r = 0; r < n; ++r) hop_.push_back(&cluster.hop(r, n));
    l_total_ = link_tasks(w, n);
    launch_ = opt.ideal ? 0.0 : cluster.device.launch_overhead_s;
  }

  SimResult run() {
    for (int d = 0; d < n_; ++d) {
      try_compute(d);
      try_link(d);
    }
    while (!q_.empty()) {
      const Event e = q_.pop();
      const int d = static_cast<int>(e.resource / 2);
      if (e.resource % 2 == 0) on_compute_done(d);
      else on_link_done(d);
    }
    for (int d = 0; d < n_; ++d) {
      const Dev& x = dev_[static_cast<std::size_t>(d)];
      require(x.c_done == c_total_ && x.l_done == l_total_,
              "simulator: the ring stalled at ", q_.now(), " s with device ", d, " at compute task ", x.c_done,
              " of ", c_total_, " and transfer ", x.l_done, " of ", l_total_, " (internal error)");
    }
    return result();
  }

 private:
  struct Dev {
    explicit Dev(int buffers) : kv(buffers), dkv(buffers), acc(buffers) {}
    // compute stream
    bool c_busy = false;
    std::int64_t c_done = 0;
    Span c_span;
    double busy = 0;
    double fwd_end = 0;
    // outgoing link (the communication engine feeds it in program order)
    bool l_busy = false;
    std::int64_t l_done = 0;
    Span l_span;
    double l_end = 0;
    double link_busy = 0;
    // buffers of this device (taken by the sender or by this device's compute)
    SlotPool kv, dkv, acc;  // K/V receive buffers, dK/dV receive buffers, dK/dV accumulators
    std::int64_t kv_released = 0;  // received K/V messages released, in receive order
  };

  // These run several times per event: no integer division on the common paths (one message
  // per block, neighbours without a modulo).
  int prev(int d) const { return d == 0 ? n_ - 1 : d - 1; }
  int next(int d) const { return d + 1 == n_ ? 0 : d + 1; }
  int step_of(std::int64_t m) const { return static_cast<int>(k_ == 1 ? m : m / k_); }
  int sub_of(std::int64_t m) const { return static_cast<int>(k_ == 1 ? 0 : m % k_); }

  // Compute program: Fwd(m) for m < M; then Prepass; then Bwd(m) and, for s >= 1, Add(m).
  std::int64_t idx_bwd(std::int64_t m) const { return m_ + 1 + (m < k_ ? m : k_ + 2 * (m - k_)); }
  std::int64_t idx_add(std::int64_t m) const { return idx_bwd(m) + 1; }
  std::pair<CTask, std::int64_t> decode_c(std::int64_t i) const {
    if (i < m_) return {CTask::Fwd, i};
    if (i == m_) return {CTask::Prepass, 0};
    const std::int64_t r = i - m_ - 1;
    if (r < k_) return {CTask::Bwd, r};
    const std::int64_t q = r - k_;
    return {(q & 1) == 0 ? CTask::Bwd : CTask::Add, k_ + (q >> 1)};
  }
  // Link program: Kv(m) for m < M - K; then per step s: KvBwd(s, j) (s < N-1), Dkv(s, j).
  std::int64_t idx_kvb(std::int64_t m) const { return mf_ + 2 * k_ * step_of(m) + sub_of(m); }
  std::int64_t idx_dkv(std::int64_t m) const {
    return mf_ + 2 * k_ * step_of(m) + (step_of(m) < n_ - 1 ? k_ : 0) + sub_of(m);
  }
  std::pair<LTask, std::int64_t> decode_l(std::int64_t i) const {
    if (i < mf_) return {LTask::Kv, i};
    const std::int64_t r = i - mf_;
    const std::int64_t s = k_ == 1 ? r >> 1 : r / (2 * k_), wv = k_ == 1 ? r & 1 : r % (2 * k_);
    if (s < n_ - 1) return {wv < k_ ? LTask::KvBwd : LTask::Dkv, s * k_ + (wv < k_ ? wv : wv - k_)};
    return {LTask::Dkv, s * k_ + wv};
  }

  bool fwd_arrived(int d, std::int64_t m) const {
    return m < k_ || dev_[static_cast<std::size_t>(prev(d))].l_done > m - k_;
  }
  bool bwd_kv_arrived(int d, std::int64_t m) const {
    return m < k_ || dev_[static_cast<std::size_t>(prev(d))].l_done > idx_kvb(m - k_);
  }
  bool bwd_dkv_arrived(int d, std::int64_t m) const {
    return dev_[static_cast<std::size_t>(prev(d))].l_done > idx_dkv(m - k_);
  }

  int owner_of(int d, std::int64_t m) const {
    const int o = d - step_of(m);
    return o < 0 ? o + n_ : o;  // (d - s) mod N, as RingSchedule::kv_owner
  }
  // Local rows of sub-block j of the block held at message m (RingSchedule::sub_block's split).
  std::pair<std::int64_t, std::int64_t> rows_of(int d, std::int64_t m) const {
    const std::int64_t rows = shard_[static_cast<std::size_t>(owner_of(d, m))];
    if (k_ == 1) return {0, rows};  // the whole block, without two 64-bit divisions
    const std::int64_t j = sub_of(m);
    return {j * rows / k_, (j + 1) * rows / k_};
  }

  double compute_time(int d, std::int64_t task_index, double flops_time, double now) const {
    if (opt_.ideal || flops_time <= 0) return flops_time;
    double t = flops_time;
    if (cl_.straggler && cl_.straggler->device == d) t *= cl_.straggler->slowdown;
    if (cl_.jitter.sigma > 0)
      t *= std::exp(cl_.jitter.sigma * normal_draw(cl_.jitter.seed, static_cast<std::uint64_t>(d),
                                                   static_cast<std::uint64_t>(task_index)));
    const double slow = cl_.device.comm_slowdown;
    if (slow > 0) {
      // Transfers in flight on this device's links take a share of its SMs: the task runs at
      // (1 - slow) of its rate until they end (transfers that start later are not modelled).
      const Dev& me = dev_[static_cast<std::size_t>(d)];
      const Dev& pv = dev_[static_cast<std::size_t>(prev(d))];
      double until = 0;
      if (me.l_busy) until = std::max(until, me.l_end);
      if (pv.l_busy) until = std::max(until, pv.l_end);
      const double window = until - now;
      if (window > 0) {
        const double done_in_window = window * (1 - slow);
        t = done_in_window >= t ? t / (1 - slow) : window + (t - done_in_window);
      }
    }
    return t;
  }

  // Attention kernel calls of one sub-block: launch + FLOPs at the kernel's efficiency per pair.
  // The pairs are RingSchedule::work's, visited without building the list (this runs for every
  // compute task); the RandomRings test checks every task's FLOPs against work().
  double kernel_time(int d, std::int64_t m, bool backward, double& flops) {
    const auto [kb, ke] = rows_of(d, m);
    double t = 0;
    flops = 0;
    sched_.for_each_pair(step_of(m), d, kb, ke, [&](const PairWork& p) {
      const std::int64_t visible = visible_pairs(p.q, p.q_rows, p.k, p.k_rows, sched_.causal());
      if (visible == 0) return;
      const double f = backward ? attention_flops_backward(w_.batch, w_.heads_q, w_.head_dim, visible)
                                : attention_flops_forward(w_.batch, w_.heads_q, w_.head_dim, visible);
      const double eff = opt_.ideal ? 1.0 : efficiency(p.q_rows, p.k_rows);
      t += launch_ + f / (peak_ * eff);
      flops += f;
    });
    return t;
  }

  // KernelModel::efficiency, remembered for the few (query rows, key rows) shapes of a run: with
  // a measured table every call sorts the table's points.
  double efficiency(std::int64_t q_rows, std::int64_t k_rows) {
    const std::uint64_t h = (static_cast<std::uint64_t>(q_rows) * 0x9e3779b97f4a7c15ULL) ^
                            static_cast<std::uint64_t>(k_rows);
    EffMemo& e = eff_memo_[static_cast<std::size_t>((h ^ (h >> 29)) % eff_memo_.size())];
    if (e.q_rows != q_rows || e.k_rows != k_rows) {
      e = {q_rows, k_rows,
           cl_.device.kernel.efficiency(w_.batch * w_.heads_q, q_rows, k_rows, static_cast<int>(w_.head_dim))};
    }
    return e.eff;
  }

  double memory_time(double bytes) const {
    return opt_.ideal ? 0.0 : launch_ + bytes / cl_.device.memory_bandwidth;
  }

  void try_compute(int d) {
    Dev& x = dev_[static_cast<std::size_t>(d)];
    if (x.c_busy || x.c_done == c_total_) return;
    const auto [kind, m] = decode_c(x.c_done);
    const double now = q_.now();
    // Written in place: copying a span assembled field by field reloads it in wide words
    // before the narrow stores have landed, a stall on every task. The stream is idle, so its
    // last span has been emitted already.
    Span& sp = x.c_span;
    sp = Span{};
    sp.device = d;
    sp.row = Row::Compute;
    sp.step = step_of(m);
    sp.sub_block = sub_of(m);
    sp.kv_owner = owner_of(d, m);
    sp.backward = kind != CTask::Fwd;
    double t = 0;
    const double b = static_cast<double>(w_.batch);
    const double q_rows = q_rows_[static_cast<std::size_t>(d)];
    switch (kind) {
      case CTask::Fwd: {
        if (!fwd_arrived(d, m)) return;
        sp.name = "fwd";
        t = kernel_time(d, m, false, sp.flops);
        // The block's (O, LSE) is merged into the running fp32 (O, LSE): read both, write one.
        if (sp.flops > 0)
          t += memory_time(3 * b * q_rows * static_cast<double>(w_.heads_q) *
                           (static_cast<double>(w_.head_dim) + 1) * 4);
        break;
      }
      case CTask::Prepass:
        sp.name = "prepass";  // D = rowsum(dO * O)
        sp.step = 0;
        t = memory_time(b * q_rows * static_cast<double>(w_.heads_q) *
                        (2 * static_cast<double>(w_.head_dim) * elem_ + 4));
        break;
      case CTask::Bwd:
        if (!bwd_kv_arrived(d, m) || !x.acc.available()) return;
        x.acc.acquire();
        sp.name = "bwd";
        t = kernel_time(d, m, true, sp.flops);
        break;
      case CTask::Add: {
        if (!bwd_dkv_arrived(d, m)) return;
        sp.name = "dkv add";  // partial dK/dV from the previous device added to this one's
        const auto [kb, ke] = rows_of(d, m);
        t = memory_time(3 * 2 * b * static_cast<double>(ke - kb) * static_cast<double>(w_.kv_heads()) *
                        static_cast<double>(w_.head_dim) * 4);
        break;
      }
    }
    t = compute_time(d, x.c_done, t, now);
    sp.start_s = now;
    sp.duration_s = t;
    x.c_busy = true;
    x.busy += t;
    q_.schedule(now + t, static_cast<std::uint32_t>(2 * d));
  }

  void try_link(int d) {
    Dev& x = dev_[static_cast<std::size_t>(d)];
    if (x.l_busy || x.l_done == l_total_) return;
    const auto [kind, m] = decode_l(x.l_done);
    Dev& to = dev_[static_cast<std::size_t>(next(d))];
    // Readiness first: this is called several times per event and is usually not ready.
    int elem = elem_;
    switch (kind) {
      case LTask::Kv:
      case LTask::KvBwd:
        if (!(kind == LTask::Kv ? fwd_arrived(d, m) : bwd_kv_arrived(d, m))) return;
        // A device starts its backward once its own forward is done (it needs O and LSE).
        if (kind == LTask::KvBwd && x.c_done < m_) return;
        if (!to.kv.available()) return;
        to.kv.acquire();
        break;
      case LTask::Dkv: {
        const std::int64_t src = step_of(m) == 0 ? idx_bwd(m) : idx_add(m);
        if (x.c_done <= src) return;
        const bool home = step_of(m) == n_ - 1;  // the last hop lands in the owner's dK/dV
        if (!home) {
          if (!to.dkv.available()) return;
          to.dkv.acquire();
        }
        elem = 4;  // gradients travel in fp32
        break;
      }
    }
    Span& sp = x.l_span;  // in place, as in try_compute
    sp = Span{};
    sp.device = d;
    sp.row = Row::Link;
    sp.name = kind == LTask::Dkv ? "dkv" : "kv";
    sp.backward = kind != LTask::Kv;
    sp.step = step_of(m);
    sp.sub_block = sub_of(m);
    sp.kv_owner = owner_of(d, m);
    const auto [kb, ke] = rows_of(d, m);
    // K and V of the sub-block: 2 * B * rows * H_kv * D elements.
    sp.bytes = 2.0 * static_cast<double>(w_.batch) * static_cast<double>(ke - kb) *
               static_cast<double>(w_.kv_heads()) * static_cast<double>(w_.head_dim) * elem;
    const LinkSpec& link = *hop_[static_cast<std::size_t>(d)];
    const double now = q_.now();
    const double t = opt_.ideal ? sp.bytes / link.bandwidth : link.transfer_time(sp.bytes);
    sp.start_s = now;
    sp.duration_s = t;
    x.l_busy = true;
    x.l_end = now + t;
    x.link_busy += t;
    q_.schedule(now + t, static_cast<std::uint32_t>(2 * d + 1));
  }

  // Releases the K/V receive buffers of device d whose block is computed on and forwarded;
  // true if any was released.
  bool release_kv(int d) {
    Dev& x = dev_[static_cast<std::size_t>(d)];
    const std::int64_t per_pass = m_ - k_;  // messages received per pass
    bool any = false;
    while (true) {
      const std::int64_t r = x.kv_released;
      if (r >= (bwd_ ? 2 : 1) * per_pass) return any;
      const bool bwd_msg = r >= per_pass;
      const std::int64_t m = k_ + (bwd_msg ? r - per_pass : r);
      const bool last = step_of(m) == n_ - 1;
      const bool computed = x.c_done > (bwd_msg ? idx_bwd(m) : m);
      const bool forwarded = last || x.l_done > (bwd_msg ? idx_kvb(m) : m);
      if (!computed || !forwarded) return any;
      x.kv.release();
      ++x.kv_released;
      any = true;
    }
  }

  void emit(const Span& sp) {
    if (opt_.on_span) opt_.on_span(sp);
  }

  void on_compute_done(int d) {
    Dev& x = dev_[static_cast<std::size_t>(d)];
    x.c_busy = false;
    const auto [kind, m] = decode_c(x.c_done);
    ++x.c_done;
    if (kind == CTask::Add) x.dkv.release();
    if (kind == CTask::Fwd && m == m_ - 1) x.fwd_end = q_.now();
    flops_ += x.c_span.flops;
    emit(x.c_span);
    // Only what this completion can unblock: the next task here, this device's link (a dK/dV
    // send waits for its add), and the previous device's link when a buffer here was freed.
    const bool freed = release_kv(d) || kind == CTask::Add;
    try_compute(d);
    try_link(d);
    if (freed && n_ > 1) try_link(prev(d));
  }

  void on_link_done(int d) {
    Dev& x = dev_[static_cast<std::size_t>(d)];
    x.l_busy = false;
    const auto [kind, m] = decode_l(x.l_done);
    ++x.l_done;
    if (kind == LTask::Dkv) x.acc.release();
    emit(x.l_span);
    const bool freed = release_kv(d);
    const int nx = next(d);
    try_link(d);
    try_compute(nx);  // the message arrived
    try_link(nx);     // ... and can be forwarded
    if (freed) try_link(prev(d));
    if (kind == LTask::Dkv) try_compute(d);  // an accumulator was freed
  }

  SimResult result() const {
    SimResult r;
    r.devices = n_;
    r.seq_len = w_.seq_len;
    r.block_size = sched_.kv_layout().max_shard_length();
    r.total_time_s = q_.now();
    r.events = q_.processed();
    r.flops = flops_;
    double sum = 0;
    for (const Dev& x : dev_) {
      r.device_busy_s.push_back(x.busy);
      r.compute_time_s = std::max(r.compute_time_s, x.busy);
      r.link_busy_s = std::max(r.link_busy_s, x.link_busy);
      r.forward_time_s = std::max(r.forward_time_s, x.fwd_end);
      sum += x.busy;
    }
    r.mean_compute_time_s = sum / n_;
    r.exposed_comm_s = std::max(0.0, r.total_time_s - r.compute_time_s);
    r.overlap_efficiency = r.total_time_s > 0 ? r.compute_time_s / r.total_time_s : 1.0;
    r.load_imbalance = r.mean_compute_time_s > 0 ? r.compute_time_s / r.mean_compute_time_s : 1.0;
    r.achieved_flops_per_device = r.total_time_s > 0 ? flops_ / (n_ * r.total_time_s) : 0.0;
    r.peak_memory_bytes = working_set_bytes(w_, n_);
    r.fits_in_memory = r.peak_memory_bytes <= cl_.device.memory_bytes;
    if (w_.layers > 0) {
      // Model FLOPs per layer (Ring Attention, appendix D): 24*B*s*h^2 for the matmuls around
      // attention plus attention's own 4*B*s^2*h (visible pairs only when causal); training
      // counts the backward as twice the forward.
      const double h = static_cast<double>(w_.hidden), s = static_cast<double>(w_.seq_len);
      const double mult = bwd_ ? 3.0 : 1.0;
      const double attn_fwd = bwd_ ? flops_ / (1.0 + 2.5) : flops_;
      const double other = 24.0 * static_cast<double>(w_.batch) * s * h * h;
      const double model = mult * (other + attn_fwd);
      const double gemm = opt_.ideal ? 1.0 : cl_.device.gemm_efficiency;
      const double other_time = mult * other / n_ / (peak_ * gemm);
      const double layer_time = r.total_time_s + other_time;
      r.mfu = model / (n_ * peak_ * layer_time);
      r.model_step_time_s = w_.layers * layer_time;
    }
    return r;
  }

  const ClusterSpec& cl_;
  int n_;
  const Workload& w_;
  const SimOptions& opt_;
  RingSchedule sched_;
  std::int64_t k_, m_, mf_;
  bool bwd_;
  double peak_;
  int elem_;
  double launch_ = 0;
  std::int64_t c_total_ = 0, l_total_ = 0;
  double flops_ = 0;
  std::vector<Dev> dev_;
  std::vector<std::int64_t> shard_;    // K/V rows per rank
  std::vector<const LinkSpec*> hop_;   // link of the hop d -> d + 1
  struct EffMemo {
    std::int64_t q_rows = -1, k_rows = -1;  // -1: empty
    double eff = 0;
  };
  std::array<EffMemo, 64> eff_memo_{};  // efficiency() by (query rows, key rows), direct-mapped
  std::vector<double> q_rows_;          // query rows per rank
  EventQueue q_;
};

}  // namespace

std::uint64_t task_count(const Workload& w, int devices) {
  return static_cast<std::uint64_t>(devices) *
         static_cast<std::uint64_t>(compute_tasks(w, devices) + link_tasks(w, devices));
}

SimResult simulate(const ClusterSpec& cluster, int devices, const Workload& workload, const SimOptions& options) {
  workload.validate(devices);
  cluster.validate();
  cluster.validate_for(devices);
  (void)cluster.device.peak_flops(workload.dtype);  // a clear error if the device lacks the dtype
  Ring ring(cluster, devices, workload, options);
  return ring.run();
}

std::int64_t smallest_block(std::int64_t lo, std::int64_t hi, const std::function<bool(std::int64_t)>& ok) {
  require(lo >= 1 && lo <= hi, "smallest_block: empty range [", lo, ", ", hi, "]");
  while (lo < hi) {
    const std::int64_t mid = lo + (hi - lo) / 2;
    if (ok(mid)) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

namespace {

Workload with_block(Workload w, int devices, std::int64_t block) {
  w.seq_len = block * devices;
  return w;
}

std::int64_t min_valid_block(const Workload& w) {
  return std::max<std::int64_t>({1, w.sub_blocks, w.layout == Layout::Zigzag ? 2 : 1});
}

}  // namespace

SweepResult sweep(const ClusterSpec& cluster, int devices, const Workload& workload, SweepKind kind,
                  const SimOptions& options, const SweepOptions& so, bool keep_seq_len) {
  workload.validate(devices);
  SweepResult out;
  out.kind = kind;
  SimOptions quiet = options;
  quiet.on_span = nullptr;  // a sweep traces nothing
  struct Planned {
    std::string label;
    int devices;
    Workload workload;
  };
  std::vector<Planned> grid;
  switch (kind) {
    case SweepKind::BlockSize: {
      require(so.min_block >= 1 && so.min_block <= so.max_block, "the block-size sweep range ", so.min_block,
              "..", so.max_block, " is empty");
      std::vector<std::int64_t> blocks;
      for (std::int64_t c = 1; c <= so.max_block; c *= 2)
        if (c >= so.min_block && c >= min_valid_block(workload)) blocks.push_back(c);
      blocks.push_back(workload.seq_len / devices);
      std::sort(blocks.begin(), blocks.end());
      blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
      for (std::int64_t c : blocks) {
        grid.push_back({std::to_string(c), devices, with_block(workload, devices, c)});
      }
      break;
    }
    case SweepKind::Devices: {
      const int max_n = so.max_devices > 0 ? so.max_devices : devices;
      const std::int64_t block = workload.seq_len / devices;
      for (int n = 1; n <= max_n; n *= 2) {
        Workload w = keep_seq_len ? workload : with_block(workload, n, block);
        const std::int64_t chunks = w.layout == Layout::Zigzag ? 2 * std::int64_t{n} : n;
        if (w.seq_len < chunks || w.sub_blocks > w.seq_len / n) break;
        grid.push_back({std::to_string(n), n, w});
        if (n > max_n / 2) break;
      }
      break;
    }
    case SweepKind::Layout:
      for (Layout l : all_layouts()) {
        Workload w = workload;
        w.layout = l;
        grid.push_back({std::string(to_string(l)), devices, w});
      }
      break;
  }
  const int total = static_cast<int>(grid.size());
  for (int i = 0; i < total; ++i) {
    const auto ui = static_cast<std::size_t>(i);
    const Planned& p = grid[ui];
    out.points.push_back({p.label, p.workload, simulate(cluster, p.devices, p.workload, quiet)});
    if (so.progress) so.progress(i + 1, total);
  }
  if (kind != SweepKind::BlockSize) return out;

  auto exposed_ratio = [&](std::int64_t c) {
    return simulate(cluster, devices, with_block(workload, devices, c), quiet).exposed_fraction();
  };
  // The answer is the smallest block from which on every larger grid block passes: search up
  // from the largest failing grid block (small blocks can pass too, when launch overheads and
  // slow small kernels make the compute long, but those are not blocks anyone should pick).
  auto find = [&](double limit) -> std::optional<std::int64_t> {
    std::size_t first_ok = out.points.size();
    for (std::size_t i = out.points.size(); i-- > 0;) {
      if (out.points[i].result.exposed_fraction() > limit) break;
      first_ok = i;
    }
    if (first_ok == out.points.size()) return std::nullopt;  // the largest block fails
    const std::int64_t hi = out.points[first_ok].result.block_size;
    // Every grid block passes: under --ideal exposure falls monotonically with the block, so
    // bisect below the grid; in the full model say the smallest grid block (--sweep-min lower
    // to look further).
    if (first_ok == 0 && !options.ideal) return hi;
    const std::int64_t below = first_ok == 0 ? min_valid_block(workload) - 1 : out.points[first_ok - 1].result.block_size;
    if (below + 1 >= hi) return hi;
    return smallest_block(below + 1, hi, [&](std::int64_t c) { return exposed_ratio(c) <= limit; });
  };
  out.recommended_block_size = find(0.05);
  if (options.ideal) out.min_overlapped_block = find(1e-9);
  return out;
}

}  // namespace ringattn::sim
