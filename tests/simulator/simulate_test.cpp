// The simulator against cases worked out by hand, the Ring Attention paper's thresholds, the
// load-balance factor of the causal layouts, and invariants of every timeline.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <tuple>

#include "ringattn/core/cost.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/core/schedule.hpp"
#include "ringattn/simulator/engine.hpp"
#include "ringattn/simulator/report.hpp"
#include "ringattn/simulator/simulate.hpp"

namespace ringattn::sim {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// A device that reaches its peak exactly (no launch overhead, efficiency 1), so hand
// calculations are exact: F = 2^28 * 1000 FLOP/s makes a 1024-token, D = 64 block 1 ms.
ClusterSpec hand_cluster(double bandwidth, double latency_s) {
  ClusterSpec c;
  c.name = "hand";
  c.device.name = "hand";
  c.device.peak_flops_bf16 = c.device.peak_flops_fp16 = 268435456.0 * 1000;
  c.device.memory_bytes = 1e12;
  c.device.memory_bandwidth = 798720e3;  // a 1024-row, D = 64 merge (798720 bytes) takes 1 ms
  c.device.kernel.max_efficiency = 1;
  c.device.kernel.half_tokens = 0;
  c.device.kernel.half_head_dim = 0;
  c.intra_node.bandwidth = bandwidth;
  c.intra_node.latency_s = latency_s;
  return c;
}

// 2^18 bytes (a 1024-token, D = 64 bf16 K+V block) in 2 ms.
constexpr double kTwoMsBandwidth = 262144.0 * 500;

Workload hand_workload(int devices, bool causal = false) {
  Workload w;
  w.seq_len = 1024 * devices;
  w.heads_q = 1;
  w.head_dim = 64;
  w.causal = causal;
  return w;
}

SimOptions ideal() {
  SimOptions o;
  o.ideal = true;
  return o;
}

TEST(SimulateHand, TwoDevicesBandwidthOnly) {
  // Step 0 computes [0, 1] ms while the block crosses the link [0, 2]; step 1 waits for it:
  // [2, 3]. The device computes 2 ms of 3.
  const SimResult r = simulate(hand_cluster(kTwoMsBandwidth, 0), 2, hand_workload(2), ideal());
  EXPECT_DOUBLE_EQ(r.total_time_s, 3e-3);
  EXPECT_DOUBLE_EQ(r.compute_time_s, 2e-3);
  EXPECT_DOUBLE_EQ(r.exposed_comm_s, 1e-3);
  EXPECT_DOUBLE_EQ(r.overlap_efficiency, 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(r.load_imbalance, 1.0);
  EXPECT_DOUBLE_EQ(r.link_busy_s, 2e-3);
  EXPECT_EQ(r.events, 2u * 2 + 2u * 1);  // two computes and one transfer per device
}

TEST(SimulateHand, ThreeDevicesLatencyOnlyWithMerges) {
  // Full model: each step is a 1 ms kernel plus a 1 ms merge; a transfer is 2.5 ms of latency
  // (infinite bandwidth). Step 0 [0, 2]; block 1 arrives at 2.5: [2.5, 4.5]; block 2 leaves
  // at 2.5 (its buffer is free) and arrives at 5: [5, 7].
  const SimResult r = simulate(hand_cluster(kInf, 2.5e-3), 3, hand_workload(3));
  EXPECT_DOUBLE_EQ(r.total_time_s, 7e-3);
  EXPECT_DOUBLE_EQ(r.compute_time_s, 6e-3);
  EXPECT_DOUBLE_EQ(r.exposed_comm_s, 1e-3);
}

TEST(SimulateHand, ThreeDevicesCausalContiguous) {
  // Rank 2 does the diagonal (c(c+1)/2 pairs: 0.50048828125 ms), then two full blocks. Its
  // step-1 block arrives at 2 ms, the step-2 block leaves rank 1 at 2 and arrives at 4.
  const double diag = 1e-3 * (1024.0 * 1025 / 2) / (1024.0 * 1024);
  const SimResult r = simulate(hand_cluster(kTwoMsBandwidth, 0), 3, hand_workload(3, true), ideal());
  EXPECT_DOUBLE_EQ(r.total_time_s, 5e-3);
  EXPECT_DOUBLE_EQ(r.compute_time_s, diag + 2e-3);
  ASSERT_EQ(r.device_busy_s.size(), 3u);
  EXPECT_DOUBLE_EQ(r.device_busy_s[0], diag);
  EXPECT_DOUBLE_EQ(r.device_busy_s[1], diag + 1e-3);
  EXPECT_DOUBLE_EQ(r.device_busy_s[2], diag + 2e-3);
  EXPECT_DOUBLE_EQ(r.load_imbalance, (diag + 2e-3) / (diag + 1e-3));
  // With free transfers the ring is compute-bound: rank 2's work alone.
  const SimResult fast = simulate(hand_cluster(kInf, 0), 3, hand_workload(3, true), ideal());
  EXPECT_DOUBLE_EQ(fast.total_time_s, diag + 2e-3);
  EXPECT_DOUBLE_EQ(fast.exposed_comm_s, 0);
}

TEST(SimulateHand, TwoDevicesForwardBackward) {
  // Forward as in TwoDevicesBandwidthOnly: ends at 3 ms. Backward (2.5x the FLOPs):
  // bwd(0) [3, 5.5] while the K/V block crosses [3, 5]; dK/dV (fp32, 4 ms) leave at 5.5 and
  // arrive at 9.5; bwd(1) [5.5, 8]; the add waits for them (9.5); the last hop home [9.5, 13.5].
  Workload w = hand_workload(2);
  w.pass = Pass::ForwardBackward;
  const SimResult r = simulate(hand_cluster(kTwoMsBandwidth, 0), 2, w, ideal());
  EXPECT_DOUBLE_EQ(r.forward_time_s, 3e-3);
  EXPECT_DOUBLE_EQ(r.total_time_s, 13.5e-3);
  EXPECT_DOUBLE_EQ(r.compute_time_s, 7e-3);
}

TEST(SimulateHand, OneDeviceHasNoTransfers) {
  Workload w = hand_workload(1);
  w.pass = Pass::ForwardBackward;
  const SimResult r = simulate(hand_cluster(kTwoMsBandwidth, 0), 1, w, ideal());
  EXPECT_DOUBLE_EQ(r.total_time_s, 3.5e-3);
  EXPECT_DOUBLE_EQ(r.exposed_comm_s, 0);
  EXPECT_DOUBLE_EQ(r.link_busy_s, 0);
}

TEST(SimulateHand, SubBlocksPipelineTheFirstArrival) {
  // Two sub-blocks of 512 tokens: each is 0.5 ms of compute and 1 ms on the link. Device 1's
  // step 1 starts when the first half arrives (1 ms) instead of the whole block (2 ms).
  Workload w = hand_workload(2);
  w.sub_blocks = 2;
  const SimResult r = simulate(hand_cluster(kTwoMsBandwidth, 0), 2, w, ideal());
  // step 0: [0, 1]; halves arrive at 1 and 2; step 1: [1, 1.5], [2, 2.5].
  EXPECT_DOUBLE_EQ(r.total_time_s, 2.5e-3);
}

TEST(SimulatePaper, Table2ThresholdIsFOverB) {
  // Ring Attention, Table 2: the smallest block that hides the transfer is F/B (bf16, MHA).
  // The paper prints 24.5e3 for A100 InfiniBand; its F/B (and its 6c = 149.5e3) give 24.96e3.
  const std::map<std::string, double> expected = {{"a100-nvlink", 312.0 / 300 * 1e3},
                                                  {"a100-ib", 312.0 / 12.5 * 1e3},
                                                  {"tpu-v3", 123.0 / 112 * 1e3},
                                                  {"tpu-v4", 275.0 / 268 * 1e3},
                                                  {"tpu-v5e", 196.0 / 186 * 1e3}};
  for (const auto& [preset, fb] : expected) {
    const ClusterSpec c = load_cluster(preset);
    Workload w;
    w.seq_len = 8 * 4096;
    w.heads_q = 8;
    w.head_dim = 128;
    SweepOptions so;
    so.min_block = 256;
    so.max_block = 65536;
    const SweepResult s = sweep(c, 8, w, SweepKind::BlockSize, ideal(), so);
    ASSERT_TRUE(s.min_overlapped_block.has_value()) << preset;
    EXPECT_NEAR(static_cast<double>(*s.min_overlapped_block), fb, 0.01 * fb) << preset;
    EXPECT_GE(static_cast<double>(*s.min_overlapped_block), fb) << preset;  // integer ceiling
    // GQA: the block carries H_kv/H_q of the bytes, so the threshold moves by the same factor.
    Workload g = w;
    g.heads_kv = 2;
    const SweepResult sg = sweep(c, 8, g, SweepKind::BlockSize, ideal(), so);
    ASSERT_TRUE(sg.min_overlapped_block.has_value()) << preset;
    EXPECT_NEAR(static_cast<double>(*sg.min_overlapped_block), fb / 4, 0.01 * fb / 4) << preset;
  }
}

TEST(SimulatePaper, RecommendedBlockIsTheExactBoundary) {
  const ClusterSpec c = load_cluster("a100-ib");
  Workload w;
  w.seq_len = 8 * 4096;
  w.heads_q = 8;
  w.head_dim = 128;
  const SweepResult s = sweep(c, 8, w, SweepKind::BlockSize, SimOptions{}, SweepOptions{});
  ASSERT_TRUE(s.recommended_block_size.has_value());
  auto ratio = [&](std::int64_t block) {
    Workload x = w;
    x.seq_len = 8 * block;
    const SimResult r = simulate(c, 8, x);
    return r.exposed_comm_s / r.total_time_s;
  };
  EXPECT_LE(ratio(*s.recommended_block_size), 0.05);
  EXPECT_GT(ratio(*s.recommended_block_size - 1), 0.05);
  EXPECT_FALSE(s.min_overlapped_block.has_value());  // only under --ideal
}

TEST(SimulateBalance, CausalLayoutsApproachTwoMinusOneOverN) {
  // Attention only, perfect overlap: contiguous is bound by the last rank, (N - 1/2) blocks;
  // striped and zigzag give every rank about half a block per step: N/2. Ratio 2 - 1/N.
  for (int n : {2, 4, 8, 16}) {
    Workload w;
    w.seq_len = 2048 * n;
    w.heads_q = 1;
    w.head_dim = 64;
    w.causal = true;
    const ClusterSpec c = hand_cluster(kInf, 0);
    w.layout = Layout::Contiguous;
    const double contiguous = simulate(c, n, w, ideal()).total_time_s;
    for (Layout l : {Layout::Striped, Layout::Zigzag}) {
      w.layout = l;
      const SimResult r = simulate(c, n, w, ideal());
      const double predicted = 2.0 - 1.0 / n;
      EXPECT_NEAR(contiguous / r.total_time_s, predicted, 0.01 * predicted) << to_string(l) << " N=" << n;
      EXPECT_NEAR(r.load_imbalance, 1.0, 0.01) << to_string(l) << " N=" << n;
    }
  }
}

TEST(Simulate, JitterIsReproducibleAndStragglerSlows) {
  ClusterSpec c = load_cluster("h100-nvlink");
  c.device.comm_slowdown = 0;  // so the straggler's busy time scales exactly
  Workload w;
  w.seq_len = 8 * 8192;
  w.heads_q = 32;
  w.heads_kv = 8;
  w.head_dim = 128;
  w.causal = true;
  w.layout = Layout::Zigzag;
  const SimResult base = simulate(c, 8, w);
  c.jitter = Jitter{0.1, 42};
  const SimResult a = simulate(c, 8, w), b = simulate(c, 8, w);
  EXPECT_EQ(a.total_time_s, b.total_time_s);
  EXPECT_NE(a.total_time_s, base.total_time_s);
  c.jitter.seed = 43;
  EXPECT_NE(simulate(c, 8, w).total_time_s, a.total_time_s);
  c.jitter = Jitter{};
  c.straggler = Straggler{3, 1.5};
  const SimResult s = simulate(c, 8, w);
  EXPECT_GT(s.total_time_s, 1.3 * base.total_time_s);
  EXPECT_NEAR(s.device_busy_s[3], 1.5 * base.device_busy_s[3], 1e-9 * s.device_busy_s[3]);
}

TEST(Simulate, MemoryAndMfu) {
  const ClusterSpec c = load_cluster("a100-nvlink");
  Workload w;
  w.seq_len = 8 * 4096;
  w.heads_q = 32;
  w.head_dim = 128;
  w.layers = 32;
  w.hidden = 4096;
  const SimResult r = simulate(c, 8, w, ideal());
  ASSERT_TRUE(r.mfu.has_value());
  // Ideal and compute-bound: every FLOP at peak, so MFU is 1 up to rounding.
  EXPECT_NEAR(*r.mfu, 1.0, 1e-9);
  // Q, O, K, V (bf16), fp32 running and block O, two LSEs, two bf16 K/V receive buffers.
  const double rows = 4096.0 * 32;
  EXPECT_DOUBLE_EQ(r.peak_memory_bytes, 2 * rows * 128 * 2 + 2 * rows * 128 * 2 + 2 * rows * 128 * 4 +
                                            2 * rows * 4 + 2 * 2 * rows * 128 * 2);
  EXPECT_TRUE(r.fits_in_memory);
  w.seq_len = 8 * (std::int64_t{1} << 22);
  EXPECT_FALSE(simulate(c, 8, w, ideal()).fits_in_memory);
}

TEST(Simulate, BadWorkloadsAreClearErrors) {
  const ClusterSpec c = load_cluster("h100-nvlink");
  Workload w = hand_workload(4);
  auto expect_error = [&](const Workload& bad, int n, const std::string& needle) {
    try {
      (void)simulate(c, n, bad);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  Workload x = w;
  x.buffers = 1;
  expect_error(x, 4, "at least 2 receive buffers");
  x.sub_blocks = 4;
  x.buffers = 4;
  expect_error(x, 4, "at least 5 receive buffers");
  x = w;
  x.layout = Layout::Zigzag;
  x.seq_len = 7;
  expect_error(x, 4, "zigzag");
  x = w;
  x.sub_blocks = 2000;
  expect_error(x, 4, "sub-blocks");
  x = w;
  x.heads_q = 3;
  x.heads_kv = 2;
  expect_error(x, 4, "multiple");
  x = w;
  x.layers = 4;
  expect_error(x, 4, "--hidden");
  expect_error(w, 0, "at least 1 device");
  x = w;
  x.dtype = DType::FP32;
  try {
    (void)simulate(load_cluster("tpu-v4"), 4, x);
    ADD_FAILURE() << "tpu-v4 has no fp32 rate";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fp32"), std::string::npos) << e.what();
  }
}

// Every timeline: resources run one task at a time in order, a compute starts only after its
// block arrived, buffers are never over-committed (the engine throws if they are), and time
// never goes backwards. Random configurations over layouts, passes, sub-blocks and buffers.
TEST(SimulateInvariants, RandomRings) {
  std::mt19937 rng(7);
  const ClusterSpec base = load_cluster("dgx-h100-ib");
  for (int iter = 0; iter < 300; ++iter) {
    const int n = std::uniform_int_distribution<int>(1, 12)(rng);
    Workload w;
    w.heads_q = 4;
    w.heads_kv = std::uniform_int_distribution<int>(0, 1)(rng) ? 4 : 1;
    w.head_dim = 64;
    w.causal = rng() % 2;
    w.layout = all_layouts()[rng() % 3];
    w.pass = rng() % 2 ? Pass::Forward : Pass::ForwardBackward;
    w.sub_blocks = std::uniform_int_distribution<int>(1, 3)(rng);
    w.buffers = rng() % 2 ? 0 : w.sub_blocks + 1 + static_cast<int>(rng() % 3);
    w.seq_len = n * std::uniform_int_distribution<int>(8, 700)(rng) + (rng() % 3 == 0 ? n / 2 : 0);
    ClusterSpec c = base;
    if (rng() % 3 == 0) c.jitter = Jitter{0.2, rng()};
    if (rng() % 3 == 0) c.straggler = Straggler{static_cast<int>(rng() % n), 2.0};
    SimOptions o;
    o.ideal = rng() % 4 == 0;
    SCOPED_TRACE("N=" + std::to_string(n) + " S=" + std::to_string(w.seq_len) + " " + std::string(to_string(w.layout)) +
                 (w.causal ? " causal " : " ") + std::string(to_string(w.pass)) + " K=" + std::to_string(w.sub_blocks) +
                 " buffers=" + std::to_string(w.buffers) + " hkv=" + std::to_string(w.heads_kv));
    std::map<std::tuple<int, int>, double> last_end;                     // (device, row) -> end
    std::map<std::tuple<int, int, int, bool>, double> arrived;    // (dst, step, sub, backward)
    std::vector<Span> spans;
    o.on_span = [&](const Span& s) { spans.push_back(s); };
    const SimResult r = simulate(c, n, w, o);
    // Spans arrive in completion order, which on one resource is its program order.
    std::uint64_t count = 0;
    for (const Span& s : spans) {
      ++count;
      ASSERT_GE(s.duration_s, 0);
      double& end = last_end[{s.device, s.row == Row::Compute ? 0 : 1}];
      ASSERT_GE(s.start_s, end - 1e-15) << "overlapping tasks on one resource, iter " << iter;
      end = s.start_s + s.duration_s;
      ASSERT_LE(end, r.total_time_s * (1 + 1e-12));
    }
    // Arrival times, then every compute on a received block starts after it.
    for (const Span& s : spans)
      if (s.row == Row::Link && std::string(s.name) == "kv")
        arrived[{(s.device + 1) % n, s.step + 1, s.sub_block, s.backward}] = s.start_s + s.duration_s;
    for (const Span& s : spans) {
      if (s.row != Row::Compute || s.step == 0 || std::string(s.name) == "dkv add" ||
          std::string(s.name) == "prepass")
        continue;
      const auto it = arrived.find({s.device, s.step, s.sub_block, s.backward});
      ASSERT_NE(it, arrived.end());
      EXPECT_GE(s.start_s, it->second - 1e-15) << "compute before its block arrived, iter " << iter;
    }
    // Kernel FLOPs are core's schedule: the sum over RingSchedule::work's pairs, in its order.
    const RingSchedule sched = RingSchedule::for_shape(
        AttentionShape{w.batch, w.seq_len, w.seq_len, w.heads_q, w.kv_heads(), w.head_dim}, w.layout, n, w.causal);
    for (const Span& s : spans) {
      if (s.row != Row::Compute || (std::string(s.name) != "fwd" && std::string(s.name) != "bwd")) continue;
      const int owner = RingSchedule::kv_owner(s.device, s.step, n);
      const auto [kb, ke] = RingSchedule::sub_block(sched.kv_layout().shard_length(owner), w.sub_blocks, s.sub_block);
      double flops = 0;
      for (const PairWork& p : sched.work(s.step, s.device, kb, ke).pairs) {
        flops += s.backward ? attention_flops_backward(w.batch, w.heads_q, w.head_dim, p.visible)
                            : attention_flops_forward(w.batch, w.heads_q, w.head_dim, p.visible);
      }
      ASSERT_EQ(s.flops, flops) << s.name << " step " << s.step << " device " << s.device << ", iter " << iter;
    }
    EXPECT_EQ(count, r.events);
    EXPECT_GE(r.overlap_efficiency, 0);
    EXPECT_LE(r.overlap_efficiency, 1 + 1e-12);
  }
}

TEST(Report, JsonCsvAndTraceAreWellFormed) {
  const ClusterSpec c = load_cluster("dgx-h100-ib");
  Workload w;
  w.seq_len = 16 * 4096;
  w.heads_q = 8;
  w.head_dim = 128;
  w.causal = true;
  w.layout = Layout::Zigzag;
  w.pass = Pass::ForwardBackward;
  const std::string path = ::testing::TempDir() + "/ringattn_trace.json";
  ChromeTraceWriter trace(path, c, 16);
  SimOptions o;
  o.on_span = [&](const Span& s) { trace.add(s); };
  const SimResult r = simulate(c, 16, w, o);
  trace.finish();
  EXPECT_THROW(trace.finish(), Error);  // a finished trace is closed: no second finish, no add
  EXPECT_THROW(trace.add(Span{}), Error);
  std::ifstream f(path);
  const nlohmann::json t = nlohmann::json::parse(f);
  std::uint64_t x_events = 0;
  for (const auto& e : t.at("traceEvents")) {
    if (e.at("ph") != "X") continue;
    ++x_events;
    EXPECT_GE(e.at("dur").get<double>(), 0.0);
    EXPECT_LE(e.at("ts").get<double>() + e.at("dur").get<double>(), r.total_time_s * 1e6 * (1 + 1e-9));
  }
  EXPECT_EQ(x_events, r.events);
  const RunInfo info{&c, 16, w, false};
  const nlohmann::json j = nlohmann::json::parse(result_json(info, r));
  for (const char* key : {"total_time_s", "compute_time_s", "exposed_comm_s", "overlap_efficiency", "load_imbalance",
                          "peak_memory_bytes", "fits_in_memory", "mfu", "events"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_EQ(j.at("events").get<std::uint64_t>(), r.events);
  const std::string csv = results_csv({SweepPoint{"run", w, r}});
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 2);
  EXPECT_NE(format_text(info, r).find("overlap efficiency"), std::string::npos);
}

TEST(Report, UnfinishedTraceLeavesNoFile) {
  const ClusterSpec c = load_cluster("h100-nvlink");
  const std::string path = ::testing::TempDir() + "/ringattn_unfinished.json";
  std::remove(path.c_str());
  { ChromeTraceWriter trace(path, c, 4); }
  std::ifstream f(path);
  EXPECT_FALSE(f.good());
}

TEST(Engine, EqualTimesKeepSchedulingOrderAndTimeNeverGoesBack) {
  EventQueue q;
  q.schedule(1.0, 7);
  q.schedule(1.0, 3);
  q.schedule(0.5, 9);
  EXPECT_EQ(q.pop().resource, 9u);
  EXPECT_EQ(q.pop().resource, 7u);
  EXPECT_EQ(q.pop().resource, 3u);
  EXPECT_THROW(q.schedule(0.5, 1), Error);
  EXPECT_THROW(q.schedule(std::nan(""), 1), Error);
  EXPECT_EQ(q.processed(), 3u);
  EXPECT_TRUE(q.empty());
  EXPECT_THROW((void)q.pop(), Error);
  SlotPool p(2);
  p.acquire();
  p.acquire();
  EXPECT_FALSE(p.available());
  EXPECT_THROW(p.acquire(), Error);
  p.release();
  p.release();
  EXPECT_THROW(p.release(), Error);
  EXPECT_EQ(p.peak(), 2);
}

TEST(Engine, OnePendingEventPerResource) {
  EventQueue q(2);
  q.schedule(1.0, 0);
  EXPECT_THROW(q.schedule(2.0, 0), Error);  // resource 0 is busy until 1.0
  q.schedule(-0.0, 5);                      // beyond the initial resources: the queue grows
  EXPECT_EQ(q.pending(), 2u);
  EXPECT_EQ(q.pop().resource, 5u);
  EXPECT_EQ(q.pop().resource, 0u);
  q.schedule(1.0, 0);  // free again once popped
  EXPECT_EQ(q.pop().seq, 2u);
  EXPECT_THROW(q.schedule(1.0, EventQueue::kMaxResource + 1), Error);
}

// The tournament tree against a reference ordering by (time, seq), with many equal times, the
// pop-then-reschedule pattern of the simulator and resources that stay idle for a while.
TEST(Engine, OrderMatchesTimeThenSequence) {
  std::mt19937 rng(11);
  for (const std::uint32_t resources : {1u, 3u, 64u, 1000u}) {
    EventQueue q(resources / 2);
    std::set<std::tuple<double, std::uint64_t, std::uint32_t>> reference;
    std::vector<bool> busy(resources, false);
    std::uint64_t seq = 0;
    const auto schedule = [&](std::uint32_t r) {
      const double t = q.now() + static_cast<double>(rng() % 4) * 0.25;  // ties are common
      q.schedule(t, r);
      reference.insert({t, seq++, r});
      busy[r] = true;
    };
    for (std::uint32_t r = 0; r < resources; r += 2) schedule(r);
    for (int step = 0; step < 20000 && !reference.empty(); ++step) {
      const Event e = q.pop();
      const auto [t, s, r] = *reference.begin();
      reference.erase(reference.begin());
      ASSERT_EQ(e.time, t);
      ASSERT_EQ(e.seq, s);
      ASSERT_EQ(e.resource, r);
      busy[r] = false;
      if (rng() % 4 != 0) schedule(r);
      for (int k = 0; k < 2; ++k) {
        const std::uint32_t other = static_cast<std::uint32_t>(rng() % resources);
        if (!busy[other]) schedule(other);
      }
      ASSERT_EQ(q.pending(), reference.size());
    }
  }
}

}  // namespace
}  // namespace ringattn::sim
