// bench_ring_cuda: the CUDA ring (RingAttention over LocalCommunicator virtual ranks) on one GPU,
// against the single production kernel, each output checked before anything is timed.
//
// What it shows, bf16, D = 128, B = 1, H_q = H_kv = 16 by default:
//   1. overhead: the ring with N = 1, 2, 4, 8 virtual ranks against cuda::forward / cuda::backward
//      (Kernel::Auto) on the whole sequence, same inputs; causal with the zigzag layout, non-causal
//      with the contiguous one; forward at S = 16k, 64k, 128k (--quick: 64k); the backward only at
//      the S up to --bwd-max-seq (32k; so 16k by default, --quick: 8k, or --bwd-seqs), since the
//      backward kernel may be far slower than the forward.
//      overhead = ring time / single-kernel time; the target judged: N = 4, S >= 64k, <= 1.10.
//   2. overlap: one more run per ring configuration with RingConfig::timing: per rank the union
//      of its compute spans and of its comm spans, the share of comm time that overlaps compute
//      of the same rank and of any rank (one GPU: all ranks share the SMs), the exposed comm time.
//      --trace FILE: the timeline of N = 4, causal zigzag, largest S as a Chrome trace.
//   3. causal layouts: N = 4 and 8, contiguous vs striped vs zigzag: wall time, per-rank busy time
//      (sum of its compute spans) and its imbalance max/mean, next to the schedule's (visible
//      pairs per rank). On one GPU the ranks share the GPU, so wall time barely moves with the
//      layout; busy time shows the imbalance a run with one GPU per rank would suffer.
//   4. longest sequence: single kernel and ring (N = 8, zigzag), forward, causal: S doubled from
//      64k while a run fits the time cap (--max-seq-search seconds), each run checked; separately
//      S doubled then bisected to 1/8 until the buffers no longer allocate (allocation only); the
//      ring's per-rank memory from its plan's buffers (shards included) and the S that N GPUs of
//      this memory would hold.
// What it leaves out: NCCL (one GPU: LocalCommunicator copies), GQA by default (--heads-kv),
// fp16 (--dtype), several GPUs.
//
// Timing: wall clock (std::chrono::steady_clock) around each call including its synchronization,
// the same for both sides: RingAttention::forward/backward return after the ring has finished;
// the single kernel is followed by cudaStreamSynchronize. Warm-up calls, then repetitions until
// about --target-ms (at least --min-reps, at most --max-reps), median.
//
// Checks, before anything is timed (a failed check marks the row FAILED, no time is taken, and
// the run ends FAILED):
//   - outputs are poisoned with NaN before the checked call: an element left unwritten fails;
//     NaN or infinity in any output fails;
//   - the single kernel's forward against float64 at 4 sampled query rows (O relative L2 error,
//     LSE absolute error), computed on the device in float64 over every visible key;
//   - the ring against the single kernel on the same inputs, every element: O (relative L2) and
//     LSE (max abs) forward; dQ, dK, dV (relative L2) backward, given the single forward's O and
//     LSE;
//   - the longest-sequence runs: every element finite, and O / LSE of 4 sampled rows against
//     float64 (as above; the ring's keys read from every rank's shard).
// FLOPs: forward 4 * B * H_q * D * visible pairs (S^2, causal S(S+1)/2), backward 2.5x.
//
// Build: target bench_ring_cuda next to bench_attention_cuda (bench/cuda/CMakeLists.txt);
// scripts/gpu-check.sh runs it as phase "ring". Needs an NVIDIA GPU with about 20 GiB free for the
// default grid (128k tokens, every rank's shards and ring buffers on the one GPU).
//
//   bench_ring_cuda [--quick] [--json FILE] [--csv FILE] [--trace FILE] [--seqs 16384,65536,131072]
//                   [--ranks 1,2,4,8] [--dims 128] [--heads 16] [--heads-kv 16]
//                   [--max-seq-search 60] [--strict-perf]
//
// Output: one row per case, a summary block (lines starting "key: " carry the key ratios), then
// OK or FAILED; the exit status is 0 for OK.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <cuda_runtime.h>
#include <nlohmann/json.hpp>

#include "bench_cuda_util.hpp"
#include "bench_harness.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/core/layout.hpp"
#include "ringattn/core/schedule.hpp"
#include "ringattn/cuda/attention.hpp"
#include "ringattn/cuda/communicator.hpp"
#include "ringattn/cuda/device.hpp"
#include "ringattn/cuda/ring.hpp"
#include "ringattn/cuda/ring_plan.hpp"

namespace {

using ringattn::AttentionShape;
using ringattn::Layout;
namespace rc = ringattn::cuda;
namespace bc = ringattn::bench_cuda;
using Clock = std::chrono::steady_clock;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

bool is_oom_message(const std::string& what) {
  return what.find("out of memory") != std::string::npos || what.find("cudaErrorMemoryAllocation") != std::string::npos;
}

// Every CUDA check here reports lack of memory as OutOfMemory (the longest-sequence search stops
// there), device allocations included.
using bc::OutOfMemory;
void check_cuda(cudaError_t err, const char* what) { bc::check_cuda_oom(err, what); }
using DeviceBuffer = bc::DeviceBuffer<bc::check_cuda_oom>;
using bc::elem_of;
using bc::Timing;

std::size_t sz(std::int64_t n) { return static_cast<std::size_t>(n); }

std::string fmt(double x, const char* f = "%.3g") {
  if (!std::isfinite(x)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, f, x);
  return buf;
}
std::string fmt_err(double x) { return std::isnan(x) ? "-" : fmt(x, "%.1e"); }
std::string fmt_tokens(std::int64_t s) {
  if (s >= 1024 && s % 1024 == 0) return std::to_string(s / 1024) + "k";
  return std::to_string(s);
}

// ---- options ------------------------------------------------------------------------------------

struct Options {
  bool quick = false;
  std::string json_path, csv_path, trace_path;
  std::vector<std::int64_t> seqs{16384, 65536, 131072};
  std::vector<std::int64_t> bwd_seqs;  // empty: the --seqs entries <= bwd_max_seq, else 16384
  std::int64_t bwd_max_seq = 32768;
  std::vector<int> ranks{1, 2, 4, 8};
  std::vector<int> layout_ranks{4, 8};
  std::vector<int> dims{128};
  std::int64_t heads = 16;
  std::int64_t heads_kv = 0;  // 0: = heads
  std::int64_t batch = 1;
  std::vector<std::string> dirs{"fwd", "bwd"};
  std::string mask = "both";
  std::string dtype_name = "bf16";
  bool out_f32 = false;
  int warmup = 1;
  int min_reps = 3;
  int max_reps = 20;
  double target_ms = 1500;
  double tol_fwd = 1e-2;
  double tol_bwd = 1e-2;
  double tol_lse = 5e-3;
  double overhead_target = 1.10;
  int target_ranks = 4;
  std::int64_t target_min_seq = 65536;
  double max_seq_search_s = 60;
  int search_ranks = 8;
  bool strict_perf = false;
  std::uint64_t seed = 0;
  int device = 0;
};

// ---- timing: wall clock around the call and its synchronization ---------------------------------

/// Warm-up calls (the first one also estimates the call's time), then repetitions for about
/// opt.target_ms (at least min_reps, at most max_reps; calls over 1 s get min_reps), median.
/// @p call must return only after its work has finished on the device.
Timing time_wall(const std::function<void()>& call, const Options& opt) {
  double est = 0;
  for (int i = 0; i < std::max(opt.warmup, 1); ++i) {
    const auto t0 = Clock::now();
    call();
    est = seconds_since(t0) * 1e3;
  }
  int reps = opt.min_reps;
  if (est > 0 && est <= 1000.0) {
    reps = bc::reps_for_target(est, opt.target_ms, opt.min_reps, opt.max_reps);
  }
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    call();
    ms.push_back(seconds_since(t0) * 1e3);
  }
  const Timing t = bc::timing_of(std::move(ms));
  // No zeros as data: a call that returns before its work is done would time as (almost) 0.
  if (!(t.median_ms > 0)) throw std::runtime_error("zero median time after " + std::to_string(reps) + " repetitions");
  return t;
}

// ---- intervals (timeline analysis) ---------------------------------------------------------------

using Interval = std::pair<double, double>;

std::vector<Interval> unite(std::vector<Interval> v) {
  std::sort(v.begin(), v.end());
  std::vector<Interval> out;
  for (const Interval& iv : v) {
    if (!(iv.second > iv.first)) continue;
    if (!out.empty() && iv.first <= out.back().second) {
      out.back().second = std::max(out.back().second, iv.second);
    } else {
      out.push_back(iv);
    }
  }
  return out;
}
double total(const std::vector<Interval>& v) {
  double s = 0;
  for (const Interval& iv : v) s += iv.second - iv.first;
  return s;
}
/// Length of the intersection of two united interval lists.
double overlap(const std::vector<Interval>& a, const std::vector<Interval>& b) {
  double s = 0;
  std::size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    const double lo = std::max(a[i].first, b[j].first), hi = std::min(a[i].second, b[j].second);
    if (hi > lo) s += hi - lo;
    if (a[i].second < b[j].second) {
      ++i;
    } else {
      ++j;
    }
  }
  return s;
}

struct Overlap {
  double span_ms = 0;           // last end - first begin over every rank
  double compute_ms = 0;        // mean over ranks of the union of its compute spans
  double comm_ms = 0;           // mean over ranks of the union of its comm spans
  double ovl_same = kNaN;       // share of comm time overlapping the same rank's compute
  double ovl_any = kNaN;        // share of comm time overlapping any rank's compute
  double exposed_ms = 0;        // time with comm running and no compute on any rank
  double exposed_rank_ms = 0;   // max over ranks of its comm time not under its own compute
  std::vector<double> busy_ms;  // per rank: sum of its compute spans
  double busy_imbalance = kNaN; // max / mean of busy_ms
};

Overlap analyze(const std::vector<rc::TimelineSpan>& spans, int ranks) {
  Overlap o;
  std::vector<std::vector<Interval>> comp(sz(ranks)), comm(sz(ranks));
  std::vector<Interval> comp_all, comm_all;
  o.busy_ms.assign(sz(ranks), 0.0);
  double first = std::numeric_limits<double>::infinity(), last = -first;
  for (const rc::TimelineSpan& s : spans) {
    if (s.rank < 0 || s.rank >= ranks) continue;
    first = std::min(first, s.begin_ms);
    last = std::max(last, s.end_ms);
    const Interval iv{s.begin_ms, s.end_ms};
    if (s.comm) {
      comm[sz(s.rank)].push_back(iv);
      comm_all.push_back(iv);
    } else {
      comp[sz(s.rank)].push_back(iv);
      comp_all.push_back(iv);
      o.busy_ms[sz(s.rank)] += std::max(0.0, s.end_ms - s.begin_ms);
    }
  }
  o.span_ms = last > first ? last - first : 0.0;
  comp_all = unite(std::move(comp_all));
  comm_all = unite(std::move(comm_all));
  double comm_sum = 0, same = 0, any = 0;
  for (int r = 0; r < ranks; ++r) {
    auto& c = comp[sz(r)];
    auto& m = comm[sz(r)];
    c = unite(std::move(c));
    m = unite(std::move(m));
    const double cm = total(m), s = overlap(m, c);
    o.compute_ms += total(c) / ranks;
    o.comm_ms += cm / ranks;
    comm_sum += cm;
    same += s;
    any += overlap(m, comp_all);
    o.exposed_rank_ms = std::max(o.exposed_rank_ms, cm - s);
  }
  if (comm_sum > 0) {
    o.ovl_same = same / comm_sum;
    o.ovl_any = any / comm_sum;
  }
  o.exposed_ms = total(comm_all) - overlap(comm_all, comp_all);
  double mx = 0, mean = 0;
  for (double b : o.busy_ms) {
    mx = std::max(mx, b);
    mean += b / ranks;
  }
  if (mean > 0) o.busy_imbalance = mx / mean;
  return o;
}

// ---- rows ----------------------------------------------------------------------------------------

struct Row {
  std::string section;  // overhead | layout | longest
  std::string dir;      // fwd | bwd
  std::string dtype;
  std::int64_t head_dim = 0, seq = 0, batch = 0, heads_q = 0, heads_kv = 0;
  bool causal = false;
  std::string impl;     // single | ring
  std::string layout;   // the ring's layout ("-" for the single kernel)
  int ranks = 0;        // 0: the single kernel
  std::string status;   // OK | FAILED | n/a
  std::string reason;
  std::optional<Timing> timing;
  double flops = 0;
  std::string check;    // what the output was compared with
  double rel_err = kNaN, lse_err = kNaN;
  double overhead = kNaN;  // ring median / single median
  std::optional<Overlap> ovl;
  double work_imbalance = kNaN;  // schedule: max / mean visible pairs per rank
  double plan_bytes_per_rank = kNaN;
};

double tflops(const Row& r) {
  return r.timing && r.timing->median_ms > 0 ? r.flops / (r.timing->median_ms * 1e-3) / 1e12 : kNaN;
}

void print_header() {
  std::printf("%-8s %-3s %4s %7s %-6s %-6s %-10s %2s %10s %7s %4s %8s %-16s %8s %8s %6s %6s %8s %6s  %s\n", "section",
              "dir", "D", "S", "causal", "impl", "layout", "N", "ms", "TFLOP/s", "reps", "overhead", "check (err)",
              "comp ms", "comm ms", "ovl", "ovlAny", "exposed", "imbal", "status");
  std::fflush(stdout);
}

void print_row(const Row& r) {
  std::string check = r.check.empty() ? "-" : r.check + " " + fmt_err(r.rel_err);
  const bc::TimingCells cells = bc::timing_cells(r.timing, "%.3f", tflops(r));
  std::string comp = "-", comm = "-", ovl = "-", ovl_any = "-", exposed = "-", imbal = "-";
  if (r.ovl) {
    comp = fmt(r.ovl->compute_ms, "%.2f");
    comm = fmt(r.ovl->comm_ms, "%.2f");
    ovl = std::isfinite(r.ovl->ovl_same) ? fmt(100 * r.ovl->ovl_same, "%.0f%%") : "-";
    ovl_any = std::isfinite(r.ovl->ovl_any) ? fmt(100 * r.ovl->ovl_any, "%.0f%%") : "-";
    exposed = fmt(r.ovl->exposed_ms, "%.2f");
    imbal = fmt(r.ovl->busy_imbalance, "%.2f");
  }
  std::string status = r.status;
  if (!r.reason.empty()) status += ": " + r.reason;
  std::printf("%-8s %-3s %4lld %7lld %-6s %-6s %-10s %2s %10s %7s %4s %8s %-16s %8s %8s %6s %6s %8s %6s  %s\n",
              r.section.c_str(), r.dir.c_str(), static_cast<long long>(r.head_dim), static_cast<long long>(r.seq),
              r.causal ? "yes" : "no", r.impl.c_str(), r.layout.c_str(),
              r.ranks > 0 ? std::to_string(r.ranks).c_str() : "-", cells.ms, cells.tf, cells.reps, fmt(r.overhead, "%.3f").c_str(),
              check.c_str(), comp.c_str(), comm.c_str(), ovl.c_str(), ovl_any.c_str(), exposed.c_str(), imbal.c_str(),
              status.c_str());
  std::fflush(stdout);
}

nlohmann::json to_json(const Row& r) {
  const auto num = bc::json_num;
  nlohmann::json j{{"section", r.section}, {"dir", r.dir},         {"dtype", r.dtype},         {"head_dim", r.head_dim},
                   {"seq", r.seq},         {"batch", r.batch},     {"heads_q", r.heads_q},     {"heads_kv", r.heads_kv},
                   {"causal", r.causal},   {"impl", r.impl},       {"layout", r.layout},       {"ranks", r.ranks},
                   {"status", r.status},   {"reason", r.reason},   {"flops", r.flops},         {"check", r.check},
                   {"rel_err", num(r.rel_err)}, {"lse_err", num(r.lse_err)}, {"overhead", num(r.overhead)},
                   {"work_imbalance", num(r.work_imbalance)}, {"plan_bytes_per_rank", num(r.plan_bytes_per_rank)}};
  bc::put_timing(j, r.timing, num(tflops(r)));
  if (r.ovl) {
    j["timeline"] = {{"span_ms", r.ovl->span_ms},          {"compute_ms_per_rank", r.ovl->compute_ms},
                     {"comm_ms_per_rank", r.ovl->comm_ms},  {"comm_overlap_same_rank", num(r.ovl->ovl_same)},
                     {"comm_overlap_any_rank", num(r.ovl->ovl_any)}, {"exposed_comm_ms", r.ovl->exposed_ms},
                     {"exposed_comm_ms_worst_rank", r.ovl->exposed_rank_ms}, {"busy_ms", r.ovl->busy_ms},
                     {"busy_imbalance", num(r.ovl->busy_imbalance)}};
  }
  return j;
}

/// The timeline as a Chrome trace (chrome://tracing, Perfetto): one process per rank, thread 0
/// compute and thread 1 comm, complete ("X") events in microseconds.
std::string chrome_trace(const std::vector<rc::TimelineSpan>& spans, int ranks, const std::string& title) {
  nlohmann::json ev = nlohmann::json::array();
  for (int r = 0; r < ranks; ++r) {
    ev.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", r}, {"args", {{"name", "rank " + std::to_string(r)}}}});
    ev.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", r}, {"tid", 0}, {"args", {{"name", "compute"}}}});
    ev.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", r}, {"tid", 1}, {"args", {{"name", "comm"}}}});
  }
  for (const rc::TimelineSpan& s : spans) {
    ev.push_back({{"name", s.label},
                  {"cat", s.comm ? "comm" : "compute"},
                  {"ph", "X"},
                  {"pid", s.rank},
                  {"tid", s.comm ? 1 : 0},
                  {"ts", s.begin_ms * 1e3},
                  {"dur", std::max(0.0, s.end_ms - s.begin_ms) * 1e3},
                  {"args", {{"step", s.step}}}});
  }
  nlohmann::json doc{{"traceEvents", ev}, {"displayTimeUnit", "ms"}, {"otherData", {{"title", title}}}};
  return doc.dump(1) + "\n";
}

// ---- sampled float64 check of a forward ----------------------------------------------------------

/// Where a tensor's rows live: global position -> (device pointer of the row's first element).
struct RowSource {
  // Every segment of every rank: (base pointer of the rank's shard, shard length, segment).
  struct Part {
    const void* base = nullptr;
    std::int64_t shard_len = 0;
    ringattn::Segment seg;
  };
  std::vector<Part> parts;
};

/// A whole (B, S, H, D) tensor as one segment.
RowSource whole(const void* base, std::int64_t seq) {
  RowSource s;
  s.parts.push_back({base, seq, ringattn::Segment{0, 1, seq, 0}});
  return s;
}

/// Every rank's shard of a layout.
RowSource sharded(const std::vector<const void*>& bases, const ringattn::SequenceLayout& layout) {
  RowSource s;
  for (int r = 0; r < layout.ranks(); ++r) {
    for (const ringattn::Segment& seg : layout.segments(r)) s.parts.push_back({bases[sz(r)], layout.shard_length(r), seg});
  }
  return s;
}

struct SampleCheck {
  double o_rel = kNaN;   // relative L2 error of O over the sampled rows
  double lse_abs = kNaN; // max abs error of LSE over the sampled rows
};

/// Compares O and LSE of 4 query rows (positions 0, S/2, S-1 and one drawn) with float64 computed
/// on the device over every visible key. q/k/v/o: where the rows live; lse: per part, (B, H, L).
SampleCheck sampled_check(const AttentionShape& s, bool causal, rc::DType dtype, rc::DType out_dtype, const RowSource& q,
                          const RowSource& k, const RowSource& v, const RowSource& o, const RowSource& lse,
                          std::mt19937_64& rng, void* workspace, cudaStream_t stream) {
  const std::int64_t D = s.head_dim, eb = static_cast<std::int64_t>(rc::element_bytes(dtype));
  const std::int64_t ob = static_cast<std::int64_t>(rc::element_bytes(out_dtype));
  const std::int64_t S = s.seq_q;
  std::uniform_int_distribution<std::int64_t> pick_pos(0, S - 1), pick_b(0, s.batch - 1), pick_h(0, s.heads_q - 1);
  const std::vector<std::int64_t> positions{0, S / 2, S - 1, pick_pos(rng)};
  double num = 0, den = 0, lse_err = 0;
  bool bad = false;
  // (part, local row) of a global position in a RowSource.
  auto locate_row = [](const RowSource& src, std::int64_t pos) -> std::pair<const RowSource::Part*, std::int64_t> {
    for (const auto& p : src.parts) {
      const std::int64_t d = pos - p.seg.start;
      if (d >= 0 && d % p.seg.stride == 0 && d / p.seg.stride < p.seg.length) {
        return {&p, p.seg.local_begin + d / p.seg.stride};
      }
    }
    throw std::runtime_error("sampled check: position " + std::to_string(pos) + " is in no shard");
  };
  for (std::int64_t pos : positions) {
    const std::int64_t b = pick_b(rng), h = pick_h(rng), hk = h / s.group_size();
    const auto [qp, qi] = locate_row(q, pos);
    const auto* qrow = static_cast<const unsigned char*>(qp->base) +
                       ((b * qp->shard_len + qi) * s.heads_q + h) * D * eb;
    std::vector<bc::KeyRun> runs;
    for (std::size_t i = 0; i < k.parts.size(); ++i) {
      const auto& kp = k.parts[i];
      const auto& vp = v.parts[i];
      const std::int64_t off = ((b * kp.shard_len + kp.seg.local_begin) * s.heads_kv + hk) * D * eb;
      runs.push_back({static_cast<const unsigned char*>(kp.base) + off, static_cast<const unsigned char*>(vp.base) + off,
                      s.heads_kv * D, kp.seg.start, kp.seg.stride, kp.seg.length});
    }
    std::vector<double> ref(sz(D));
    double ref_lse = 0;
    bc::oracle_row(qrow, elem_of(dtype), static_cast<int>(D), 1.0 / std::sqrt(static_cast<double>(D)), causal, pos,
                   runs, workspace, ref.data(), &ref_lse, stream);
    // The device's O row and LSE value.
    const auto [op, oi] = locate_row(o, pos);
    std::vector<unsigned char> raw(sz(D * ob));
    check_cuda(cudaMemcpy(raw.data(), static_cast<const unsigned char*>(op->base) + ((b * op->shard_len + oi) * s.heads_q + h) * D * ob,
                          raw.size(), cudaMemcpyDeviceToHost),
               "fetch O row");
    std::vector<float> got(sz(D));
    rc::decode_to_float(out_dtype, raw.data(), sz(D), got.data());
    const auto [lp, li] = locate_row(lse, pos);
    float got_lse = 0;
    check_cuda(cudaMemcpy(&got_lse, static_cast<const float*>(lp->base) + (b * s.heads_q + h) * lp->shard_len + li,
                          sizeof got_lse, cudaMemcpyDeviceToHost),
               "fetch LSE");
    for (std::int64_t d = 0; d < D; ++d) {
      const double x = static_cast<double>(got[sz(d)]);
      if (!std::isfinite(x)) bad = true;
      num += (x - ref[sz(d)]) * (x - ref[sz(d)]);
      den += ref[sz(d)] * ref[sz(d)];
    }
    // Every row of a self-attention sees at least its own key: the LSE is finite.
    const double gl = static_cast<double>(got_lse);
    lse_err = std::max(lse_err, std::isfinite(gl) && std::isfinite(ref_lse) ? std::fabs(gl - ref_lse)
                                                                            : std::numeric_limits<double>::infinity());
  }
  SampleCheck c;
  c.o_rel = bad ? std::numeric_limits<double>::infinity() : (den > 0 ? std::sqrt(num / den) : std::sqrt(num));
  c.lse_abs = lse_err;
  return c;
}

double rel_error(const bc::Diff& d) {
  if (d.bad_out > 0 || d.bad_ref > 0) return std::numeric_limits<double>::infinity();
  return d.sum_sq_ref > 0 ? std::sqrt(d.sum_sq_diff / d.sum_sq_ref) : std::sqrt(d.sum_sq_diff);
}

void accumulate(bc::Diff& into, const bc::Diff& d) {
  into.max_abs = std::max(into.max_abs, d.max_abs);
  into.sum_sq_diff += d.sum_sq_diff;
  into.sum_sq_ref += d.sum_sq_ref;
  into.bad_out += d.bad_out;
  into.bad_ref += d.bad_ref;
}

// ---- the benchmark -------------------------------------------------------------------------------

/// Visible (query, key) pairs per batch element and head of a self-attention of S tokens.
double visible_pairs(std::int64_t S, bool causal) {
  const double s = static_cast<double>(S);
  return causal ? s * (s + 1) / 2 : s * s;
}

/// Bytes of every buffer of rank r in a plan (its shards and the driver's own buffers).
std::vector<double> plan_bytes(const rc::RingPlan& p) {
  std::vector<double> b(sz(p.ranks), 0.0);
  for (const rc::PlanBuffer& buf : p.buffers) {
    if (buf.rank >= 0 && buf.rank < p.ranks) b[sz(buf.rank)] += static_cast<double>(buf.bytes);
  }
  return b;
}
double max_of(const std::vector<double>& v) { return v.empty() ? 0.0 : *std::max_element(v.begin(), v.end()); }

/// The schedule's imbalance: max / mean over ranks of the visible pairs a rank computes.
double work_imbalance(const ringattn::RingSchedule& sch) {
  std::vector<double> w(sz(sch.ranks()), 0.0);
  for (int r = 0; r < sch.ranks(); ++r) {
    for (int st = 0; st < sch.steps(); ++st) w[sz(r)] += static_cast<double>(sch.work(st, r).visible);
  }
  double mx = 0, mean = 0;
  for (double x : w) {
    mx = std::max(mx, x);
    mean += x / static_cast<double>(w.size());
  }
  return mean > 0 ? mx / mean : kNaN;
}

rc::PlanOptions plan_options(rc::DType dtype, rc::DType out_dtype, std::int64_t D) {
  rc::PlanOptions o;
  o.input_bytes = static_cast<int>(rc::element_bytes(dtype));
  o.output_bytes = static_cast<int>(rc::element_bytes(out_dtype));
  o.scale = 1.0f / std::sqrt(static_cast<float>(D));
  return o;
}

/// One rank's shards.
struct Shard {
  std::int64_t len = 0;
  DeviceBuffer q, k, v, o, lse, dout, o_in, lse_in, dq, dk, dv;
};

struct LongestResult {
  std::int64_t ran_seq = 0;          // largest S that ran and passed its check
  double ran_ms = kNaN;
  std::int64_t alloc_seq = 0;        // largest S whose buffers allocated
  std::int64_t alloc_fail_seq = 0;   // smallest S seen not to allocate (0: none)
  std::string stop;                  // why the run search stopped
  bool failed = false;
};

class Bench {
 public:
  explicit Bench(Options opt) : opt_(std::move(opt)), stream_(opt_.device) {
    dtype_ = rc::parse_dtype(opt_.dtype_name);
    out_dtype_ = opt_.out_f32 ? rc::DType::F32 : dtype_;
    rng_.seed(bc::seed_or_clock(opt_.seed));
  }
  Bench(const Bench&) = delete;
  Bench& operator=(const Bench&) = delete;

  [[nodiscard]] const std::vector<Row>& rows() const { return rows_; }
  [[nodiscard]] int failed() const { return failed_; }
  [[nodiscard]] const std::vector<LongestResult>& longest() const { return longest_; }
  [[nodiscard]] const nlohmann::json& memory() const { return memory_; }
  std::function<void()> on_row;  // called after every row (saves the JSON)

  // Sections 1-3 for one head dim and sequence length.
  void run_seq(std::int64_t D, std::int64_t S, bool do_fwd, bool do_bwd, bool layouts_here) {
    const std::int64_t H = opt_.heads, Hkv = opt_.heads_kv > 0 ? opt_.heads_kv : opt_.heads;
    shape_ = AttentionShape{opt_.batch, S, S, H, Hkv, D};
    shape_.validate();
    const std::int64_t nq = shape_.q_elements(), nkv = shape_.kv_elements(), nl = shape_.lse_elements();
    const bc::Elem el = elem_of(dtype_);
    const std::size_t eb = rc::element_bytes(dtype_);
    q_ = DeviceBuffer(eb * sz(nq));
    k_ = DeviceBuffer(eb * sz(nkv));
    v_ = DeviceBuffer(eb * sz(nkv));
    const std::uint64_t seed = rng_();
    bc::fill_qkv(q_.get(), k_.get(), v_.get(), el, nq, nkv, seed, stream_);
    if (do_bwd) {
      dout_ = DeviceBuffer(eb * sz(nq));
      bc::fill_normal(dout_.get(), el, nq, seed + 4, stream_);
    }
    o_ = DeviceBuffer(rc::element_bytes(out_dtype_) * sz(nq));
    lse_ = DeviceBuffer(sizeof(float) * sz(nl));
    workspace_ = DeviceBuffer(bc::oracle_workspace_bytes(static_cast<int>(D), 64));
    check_cuda(cudaStreamSynchronize(stream_), "inputs");
    for (bool causal : bc::masks_of(opt_.mask)) {
      causal_ = causal;
      const Layout main_layout = causal ? Layout::Zigzag : Layout::Contiguous;
      // Forward (also what the backward is given: the single kernel's O and LSE).
      Row single = single_forward(do_fwd);
      const bool fwd_ok = single.status == "OK" || single.status == "checked";
      if (do_fwd) {
        for (int N : opt_.ranks) ring_forward("overhead", N, main_layout, single);
        if (causal && layouts_here) {
          for (int N : opt_.layout_ranks) {
            for (Layout L : {Layout::Contiguous, Layout::Striped, Layout::Zigzag}) {
              if (L == main_layout && std::find(opt_.ranks.begin(), opt_.ranks.end(), N) != opt_.ranks.end()) continue;
              ring_forward("layout", N, L, single);
            }
          }
        }
      }
      if (do_bwd) {
        if (!fwd_ok) {
          Row r = base_row("overhead", "bwd", "single", "-", 0);
          fail_row(r, "the single forward that gives the backward its O and LSE failed");
        } else {
          backward_rows(main_layout);
        }
      }
      bc::throw_if_context_lost();
    }
    q_ = DeviceBuffer();
    k_ = DeviceBuffer();
    v_ = DeviceBuffer();
    dout_ = DeviceBuffer();
    o_ = DeviceBuffer();
    lse_ = DeviceBuffer();
    o_bwd_ = DeviceBuffer();
    single_fwd_ms_ = kNaN;
  }

  // Section 4: the longest sequence, single kernel then ring, within budget_s seconds.
  void search_longest(std::int64_t D, double budget_s) {
    const auto t0 = Clock::now();
    const std::int64_t H = opt_.heads, Hkv = opt_.heads_kv > 0 ? opt_.heads_kv : opt_.heads;
    std::size_t free_b = 0, total_b = 0;
    check_cuda(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
    memory_ = {{"free_bytes_at_search", free_b}, {"total_bytes", total_b}};
    for (int which = 0; which < 2; ++which) {
      const int N = which == 0 ? 0 : opt_.search_ranks;
      LongestResult res;
      // (a) allocation only: double from 64k, then bisect to 1/8 of the last size that fit.
      const std::int64_t grain = 1024;
      std::int64_t S = 65536, lo = 0, hi = 0;
      for (int tries = 0; tries < 40; ++tries) {
        const bool fits = allocates(D, H, Hkv, S, N);
        if (fits) {
          lo = S;
        } else {
          hi = S;
        }
        if (hi == 0) {
          S *= 2;
          continue;
        }
        if (lo == 0 || hi - lo <= std::max<std::int64_t>(grain, lo / 8)) break;
        S = std::max(grain, (lo + hi) / 2 / grain * grain);
      }
      res.alloc_seq = lo;
      res.alloc_fail_seq = hi;
      // (b) runs: double from 64k while the predicted time fits; the allocation bound caps it.
      const double share = which == 0 ? budget_s / 2 : budget_s - seconds_since(t0);
      const auto t1 = Clock::now();
      double last_s = 0;
      std::int64_t last_seq = 0;
      S = 65536;
      res.stop = "time cap";
      while (true) {
        if (lo > 0 && S > lo) {
          if (last_seq < lo) {
            S = lo;  // the largest size that allocated
          } else {
            res.stop = "memory (allocation bound reached)";
            break;
          }
        }
        if (lo == 0) {
          res.stop = "memory (64k does not allocate)";
          break;
        }
        const double ratio = last_seq > 0 ? static_cast<double>(S) / static_cast<double>(last_seq) : 1.0;
        const double predicted = last_seq > 0 ? 1.5 * last_s * ratio * ratio + 1.0 : 2.0;
        if (seconds_since(t1) + predicted > share) {
          res.stop = "time cap (next S = " + fmt_tokens(S) + " would take about " + fmt(predicted, "%.0f") + " s)";
          break;
        }
        const auto t2 = Clock::now();
        Row r = longest_run(D, H, Hkv, S, N);
        last_s = seconds_since(t2);
        if (r.status == "OOM") {
          res.stop = "memory (the run did not allocate at " + fmt_tokens(S) + ")";
          break;
        }
        emit(r);
        if (r.status != "OK") {
          res.failed = true;
          res.stop = "FAILED at " + fmt_tokens(S);
          break;
        }
        res.ran_seq = S;
        res.ran_ms = r.timing ? r.timing->median_ms : kNaN;
        last_seq = S;
        S *= 2;
      }
      longest_.push_back(res);
      bc::throw_if_context_lost();
    }
    // The ring's per-rank memory from its plan, and what N GPUs of this memory would hold.
    const int N = opt_.search_ranks;
    const std::int64_t S_ref = std::max<std::int64_t>(longest_.size() > 1 ? longest_[1].ran_seq : 0, 65536);
    const AttentionShape s_ref{opt_.batch, S_ref, S_ref, H, Hkv, D};
    const auto sch = ringattn::RingSchedule::for_shape(s_ref, Layout::Zigzag, N, true);
    const double fwd_rank = max_of(plan_bytes(rc::plan_forward(sch, s_ref, plan_options(dtype_, dtype_, D))));
    const double bwd_rank = max_of(plan_bytes(rc::plan_backward(sch, s_ref, plan_options(dtype_, dtype_, D))));
    // Per-rank bytes grow linearly with S: scale to the memory a GPU of this size has free.
    const double usable = static_cast<double>(free_b);
    const auto fit = [&](double per_rank_bytes) {
      const double s = static_cast<double>(S_ref) * usable / per_rank_bytes;
      const std::int64_t g = 2 * N * 64;
      return static_cast<std::int64_t>(s) / g * g;
    };
    memory_["ring_ranks"] = N;
    memory_["ring_seq"] = S_ref;
    memory_["ring_fwd_bytes_per_rank"] = fwd_rank;
    memory_["ring_bwd_bytes_per_rank"] = bwd_rank;
    memory_["ring_fwd_seq_on_n_gpus"] = fit(fwd_rank);
    memory_["ring_bwd_seq_on_n_gpus"] = fit(bwd_rank);
    memory_["usable_bytes_per_gpu"] = usable;
  }

 private:
  Row base_row(const char* section, const char* dir, const char* impl, const std::string& layout, int N) const {
    Row r;
    r.section = section;
    r.dir = dir;
    r.dtype = std::string(rc::to_string(dtype_));
    r.head_dim = shape_.head_dim;
    r.seq = shape_.seq_q;
    r.batch = shape_.batch;
    r.heads_q = shape_.heads_q;
    r.heads_kv = shape_.heads_kv;
    r.causal = causal_;
    r.impl = impl;
    r.layout = layout;
    r.ranks = N;
    const double f = 4.0 * static_cast<double>(shape_.batch * shape_.heads_q * shape_.head_dim) *
                     visible_pairs(shape_.seq_q, causal_);
    r.flops = std::string(dir) == "bwd" ? 2.5 * f : f;
    return r;
  }

  void emit(Row r) {
    if (r.status == "FAILED") ++failed_;
    print_row(r);
    rows_.push_back(std::move(r));
    if (on_row) on_row();
  }
  void fail_row(Row& r, const std::string& why) {
    r.status = "FAILED";
    r.reason = why;
    r.timing.reset();
    emit(std::move(r));
  }

  rc::ForwardArgs fwd_args() const {
    return bc::forward_args(shape_, dtype_, q_.get(), k_.get(), v_.get(), o_.get(), out_dtype_, lse_.f32(), causal_);
  }

  // time_wall() of a single-kernel call: @p launch, then the stream synchronized (@p what names
  // a failure).
  template <class Launch>
  Timing time_single(const Launch& launch, const char* what) {
    return time_wall(
        [&] {
          launch();
          check_cuda(cudaStreamSynchronize(stream_), what);
        },
        opt_);
  }

  // The single kernel's forward: poisoned, run, checked (finite everywhere, float64 at sampled
  // rows), then timed when @p timed. Its O and LSE stay in o_, lse_ as the ring's reference.
  Row single_forward(bool timed) {
    Row row = base_row("overhead", "fwd", "single", "-", 0);
    const std::int64_t nq = shape_.q_elements(), nl = shape_.lse_elements();
    single_fwd_ms_ = kNaN;
    try {
      const rc::ForwardArgs args = fwd_args();
      bc::fill_nan(o_.get(), elem_of(out_dtype_), nq, stream_);
      bc::fill_nan(lse_.get(), bc::Elem::F32, nl, stream_);
      check_cuda(cudaStreamSynchronize(stream_), "poison");
      rc::forward(args, rc::Kernel::Auto, stream_);
      check_cuda(cudaStreamSynchronize(stream_), "single forward");
      const bc::Diff d = bc::compare(o_.get(), elem_of(out_dtype_), nullptr, bc::Elem::F32, nq, stream_);
      const bc::Diff dl = bc::compare(lse_.get(), bc::Elem::F32, nullptr, bc::Elem::F32, nl, stream_);
      if (d.bad_out > 0 || dl.bad_out > 0) {
        fail_row(row, bc::unwritten_o_lse(d, dl) + " (first O index " + std::to_string(d.first_bad_out) + ")");
        return rows_.back();
      }
      const SampleCheck c = sampled_check(shape_, causal_, dtype_, out_dtype_, whole(q_.get(), shape_.seq_q),
                                          whole(k_.get(), shape_.seq_kv), whole(v_.get(), shape_.seq_kv),
                                          whole(o_.get(), shape_.seq_q), whole(lse_.get(), shape_.seq_q), rng_,
                                          workspace_.get(), stream_);
      row.check = "f64@4rows";
      row.rel_err = c.o_rel;
      row.lse_err = c.lse_abs;
      if (!(c.o_rel <= opt_.tol_fwd) || !(c.lse_abs <= opt_.tol_lse)) {
        fail_row(row, "differs from float64 at sampled rows: O rel err " + fmt_err(c.o_rel) + ", LSE abs err " +
                          fmt_err(c.lse_abs));
        return rows_.back();
      }
      if (!timed) {
        row.status = "checked";
        return row;
      }
      row.timing = time_single([&] { rc::forward(args, rc::Kernel::Auto, stream_); }, "single forward");
      single_fwd_ms_ = row.timing->median_ms;
      row.status = "OK";
      // The timed calls rewrote o_ and lse_ with the same values (the check above holds for them).
    } catch (const std::exception& e) {
      fail_row(row, e.what());
      return rows_.back();
    }
    emit(row);
    return row;
  }

  struct RingSetup {
    std::unique_ptr<rc::LocalCommunicator> comm;
    std::vector<Shard> shards;
  };

  // Per-rank shards of Q, K, V (and the forward's outputs) gathered from the global tensors.
  RingSetup make_shards(int N, Layout L, bool backward) {
    RingSetup s;
    s.comm = std::make_unique<rc::LocalCommunicator>(N, std::vector<int>{opt_.device});
    const ringattn::SequenceLayout lay(L, shape_.seq_q, N);
    const std::size_t eb = rc::element_bytes(dtype_);
    const std::int64_t rowq = shape_.heads_q * shape_.head_dim, rowkv = shape_.heads_kv * shape_.head_dim;
    const std::int64_t B = shape_.batch, S = shape_.seq_q;
    for (int r = 0; r < N; ++r) {
      Shard sh;
      sh.len = lay.shard_length(r);
      const std::int64_t L_r = sh.len;
      sh.q = DeviceBuffer(eb * sz(B * L_r * rowq));
      sh.k = DeviceBuffer(eb * sz(B * L_r * rowkv));
      sh.v = DeviceBuffer(eb * sz(B * L_r * rowkv));
      auto gather = [&](const DeviceBuffer& src, const DeviceBuffer& dst, std::int64_t outer, std::int64_t row_bytes) {
        for (const ringattn::Segment& g : lay.segments(r)) {
          bc::gather_rows(src.get(), dst.get(), outer, S, L_r, row_bytes, g.start, g.stride, g.length, g.local_begin,
                          stream_);
        }
      };
      gather(q_, sh.q, B, rowq * static_cast<std::int64_t>(eb));
      gather(k_, sh.k, B, rowkv * static_cast<std::int64_t>(eb));
      gather(v_, sh.v, B, rowkv * static_cast<std::int64_t>(eb));
      if (!backward) {
        sh.o = DeviceBuffer(rc::element_bytes(out_dtype_) * sz(B * L_r * rowq));
        sh.lse = DeviceBuffer(sizeof(float) * sz(B * shape_.heads_q * L_r));
      } else {
        sh.dout = DeviceBuffer(eb * sz(B * L_r * rowq));
        sh.o_in = DeviceBuffer(eb * sz(B * L_r * rowq));
        sh.lse_in = DeviceBuffer(sizeof(float) * sz(B * shape_.heads_q * L_r));
        sh.dq = DeviceBuffer(sizeof(float) * sz(B * L_r * rowq));
        sh.dk = DeviceBuffer(sizeof(float) * sz(B * L_r * rowkv));
        sh.dv = DeviceBuffer(sizeof(float) * sz(B * L_r * rowkv));
        gather(dout_, sh.dout, B, rowq * static_cast<std::int64_t>(eb));
        gather(o_bwd_, sh.o_in, B, rowq * static_cast<std::int64_t>(eb));
        gather(lse_, sh.lse_in, B * shape_.heads_q, 4);
      }
      s.shards.push_back(std::move(sh));
    }
    check_cuda(cudaStreamSynchronize(stream_), "gather shards");
    return s;
  }

  rc::RingConfig ring_config(Layout L, bool timing) const {
    rc::RingConfig c;
    c.shape = shape_;
    c.layout = L;
    c.causal = causal_;
    c.dtype = dtype_;
    c.out_dtype = out_dtype_;
    c.kernel = rc::Kernel::Auto;
    c.timing = timing;
    return c;
  }

  // Compares every rank's shard of @p out (elem) with the matching rows of the global @p ref.
  bc::Diff compare_shards(const std::vector<const void*>& out, bc::Elem elem, const DeviceBuffer& ref,
                          const ringattn::SequenceLayout& lay, std::int64_t outer, std::int64_t row_elems) {
    const std::int64_t eb = elem == bc::Elem::F32 ? 4 : 2;
    std::int64_t max_len = 0;
    for (int r = 0; r < lay.ranks(); ++r) max_len = std::max(max_len, lay.shard_length(r));
    DeviceBuffer scratch(sz(outer * max_len * row_elems * eb));
    bc::Diff all;
    for (int r = 0; r < lay.ranks(); ++r) {
      const std::int64_t L_r = lay.shard_length(r);
      for (const ringattn::Segment& g : lay.segments(r)) {
        bc::gather_rows(ref.get(), scratch.get(), outer, lay.seq_len(), L_r, row_elems * eb, g.start, g.stride, g.length,
                        g.local_begin, stream_);
      }
      accumulate(all, bc::compare(out[sz(r)], elem, scratch.get(), elem, outer * L_r * row_elems, stream_));
    }
    return all;
  }

  // The timeline run: a ring with config.timing, one call; its spans analyzed.
  template <class Shards, class Call>
  void timeline_run(Row& row, rc::Communicator& comm, Layout L, const Shards& shards, const Call& call) {
    rc::RingAttention ring(comm, ring_config(L, true));
    call(ring, shards);
    row.ovl = analyze(ring.timeline(), comm.world_size());
    if (row.section != "longest" && causal_ && L == Layout::Zigzag && row.dir == "fwd" &&
        shape_.seq_q == trace_seq_ && row.ranks == trace_ranks_) {
      trace_ = ring.timeline();
      trace_title_ = "ring forward, N = " + std::to_string(row.ranks) + ", zigzag, causal, S = " +
                     std::to_string(shape_.seq_q) + ", D = " + std::to_string(shape_.head_dim);
    }
  }

 public:
  std::int64_t trace_seq_ = 0;
  int trace_ranks_ = 4;
  std::vector<rc::TimelineSpan> trace_;
  std::string trace_title_;

 private:
  // One ring row of the overhead or layout section: the schedule's and plan's figures, then, if
  // the single kernel (the reference) passed (@p ref_ok), every rank's shards, its outputs
  // poisoned by @p poison, one call checked by @p check (why it failed, or ""), the timed calls,
  // the overhead against the single kernel's @p single_ms and the timeline run. @p shard_of gives
  // a rank's RingShard, @p call runs the ring on all of them.
  template <class RingShard, class ShardOf, class Poison, class Check, class Call>
  void ring_row(Row row, Layout L, bool backward, bool ref_ok, double single_ms, const ShardOf& shard_of,
                const Poison& poison, const Check& check, const Call& call) {
    const int N = row.ranks;
    try {
      const ringattn::SequenceLayout lay(L, shape_.seq_q, N);
      const auto sch = ringattn::RingSchedule::for_shape(shape_, L, N, causal_);
      row.work_imbalance = work_imbalance(sch);
      const rc::PlanOptions po = plan_options(dtype_, backward ? dtype_ : out_dtype_, shape_.head_dim);
      row.plan_bytes_per_rank =
          max_of(plan_bytes(backward ? rc::plan_backward(sch, shape_, po) : rc::plan_forward(sch, shape_, po)));
      if (!ref_ok) {
        fail_row(row, "the single kernel (the reference) failed");
        return;
      }
      RingSetup setup = make_shards(N, L, backward);
      std::vector<RingShard> shards;
      for (const Shard& sh : setup.shards) shards.push_back(shard_of(sh));
      {
        rc::RingAttention ring(*setup.comm, ring_config(L, false));
        for (const Shard& sh : setup.shards) poison(sh);
        check_cuda(cudaStreamSynchronize(stream_), "poison");
        call(ring, shards);
        if (const std::string why = check(row, lay, setup.shards); !why.empty()) {
          fail_row(row, why);
          return;
        }
        row.timing = time_wall([&] { call(ring, shards); }, opt_);
      }
      if (std::isfinite(single_ms) && single_ms > 0) row.overhead = row.timing->median_ms / single_ms;
      timeline_run(row, *setup.comm, L, shards, call);
      row.status = "OK";
    } catch (const std::exception& e) {
      fail_row(row, e.what());
      bc::throw_if_context_lost();
      return;
    }
    emit(std::move(row));
  }

  // Device pointers of one buffer of every rank's shard.
  static std::vector<const void*> pointers(const std::vector<Shard>& shards, DeviceBuffer Shard::*buffer) {
    std::vector<const void*> p;
    for (const Shard& sh : shards) p.push_back((sh.*buffer).get());
    return p;
  }

  void ring_forward(const char* section, int N, Layout L, const Row& single) {
    const std::int64_t nq_row = shape_.heads_q * shape_.head_dim;
    ring_row<rc::ForwardShard>(
        base_row(section, "fwd", "ring", std::string(ringattn::to_string(L)), N), L, false,
        single.status == "OK" || single.status == "checked", single_fwd_ms_,
        [](const Shard& sh) { return rc::ForwardShard{sh.q.get(), sh.k.get(), sh.v.get(), sh.o.get(), sh.lse.f32()}; },
        [&](const Shard& sh) {
          bc::fill_nan(sh.o.get(), elem_of(out_dtype_), shape_.batch * sh.len * nq_row, stream_);
          bc::fill_nan(sh.lse.get(), bc::Elem::F32, shape_.batch * shape_.heads_q * sh.len, stream_);
        },
        [&](Row& row, const ringattn::SequenceLayout& lay, const std::vector<Shard>& shards) -> std::string {
          const bc::Diff d = compare_shards(pointers(shards, &Shard::o), elem_of(out_dtype_), o_, lay, shape_.batch, nq_row);
          const bc::Diff dl =
              compare_shards(pointers(shards, &Shard::lse), bc::Elem::F32, lse_, lay, shape_.batch * shape_.heads_q, 1);
          row.check = "single";
          row.rel_err = rel_error(d);
          row.lse_err = dl.bad_out > 0 ? std::numeric_limits<double>::infinity() : dl.max_abs;
          if (d.bad_out > 0 || dl.bad_out > 0) return bc::unwritten_o_lse(d, dl);
          if (!(row.rel_err <= opt_.tol_fwd) || !(row.lse_err <= opt_.tol_lse)) {
            return "differs from the single kernel: O rel err " + fmt_err(row.rel_err) + " (tol " + fmt_err(opt_.tol_fwd) +
                   "), LSE max abs err " + fmt_err(row.lse_err) + " (tol " + fmt_err(opt_.tol_lse) + ")";
          }
          return {};
        },
        [](rc::RingAttention& r, const std::vector<rc::ForwardShard>& s) { r.forward(s); });
  }

  void backward_rows(Layout L) {
    const std::int64_t nq = shape_.q_elements(), nkv = shape_.kv_elements(), nl = shape_.lse_elements();
    // The backward's O in the input dtype (the forward may have written float32).
    o_bwd_ = DeviceBuffer(rc::element_bytes(dtype_) * sz(nq));
    bc::convert(o_.get(), elem_of(out_dtype_), o_bwd_.get(), elem_of(dtype_), nq, stream_);
    DeviceBuffer dq(sizeof(float) * sz(nq)), dk(sizeof(float) * sz(nkv)), dv(sizeof(float) * sz(nkv));
    DeviceBuffer delta(sizeof(float) * sz(nl));
    const rc::BackwardArgs a = bc::backward_args(shape_, dtype_, q_.get(), k_.get(), v_.get(), o_bwd_.get(), dout_.get(),
                                                 lse_.f32(), delta.f32(), dq.f32(), dk.f32(), dv.f32(), causal_);
    Row single = base_row("overhead", "bwd", "single", "-", 0);
    double single_ms = kNaN;
    try {
      bc::fill_nan(dq.get(), bc::Elem::F32, nq, stream_);
      bc::fill_nan(dk.get(), bc::Elem::F32, nkv, stream_);
      bc::fill_nan(dv.get(), bc::Elem::F32, nkv, stream_);
      check_cuda(cudaStreamSynchronize(stream_), "poison");
      rc::backward(a, rc::Kernel::Auto, stream_);
      check_cuda(cudaStreamSynchronize(stream_), "single backward");
      const std::int64_t bad = bc::compare(dq.get(), bc::Elem::F32, nullptr, bc::Elem::F32, nq, stream_).bad_out +
                               bc::compare(dk.get(), bc::Elem::F32, nullptr, bc::Elem::F32, nkv, stream_).bad_out +
                               bc::compare(dv.get(), bc::Elem::F32, nullptr, bc::Elem::F32, nkv, stream_).bad_out;
      single.check = "finite";
      if (bad > 0) {
        fail_row(single, std::to_string(bad) + " dQ/dK/dV elements NaN/inf or unwritten");
      } else {
        single.timing = time_single([&] { rc::backward(a, rc::Kernel::Auto, stream_); }, "single backward");
        single_ms = single.timing->median_ms;
        single.status = "OK";
        emit(single);
      }
    } catch (const std::exception& e) {
      fail_row(single, e.what());
      bc::throw_if_context_lost();
    }
    const std::int64_t nq_row = shape_.heads_q * shape_.head_dim, nkv_row = shape_.heads_kv * shape_.head_dim;
    for (int N : opt_.ranks) {
      ring_row<rc::BackwardShard>(
          base_row("overhead", "bwd", "ring", std::string(ringattn::to_string(L)), N), L, true, std::isfinite(single_ms),
          single_ms,
          [](const Shard& sh) {
            return rc::BackwardShard{sh.q.get(),  sh.k.get(),  sh.v.get(),  sh.o_in.get(), sh.dout.get(),
                                     sh.lse_in.f32(), sh.dq.f32(), sh.dk.f32(), sh.dv.f32()};
          },
          [&](const Shard& sh) {
            bc::fill_nan(sh.dq.get(), bc::Elem::F32, shape_.batch * sh.len * nq_row, stream_);
            bc::fill_nan(sh.dk.get(), bc::Elem::F32, shape_.batch * sh.len * nkv_row, stream_);
            bc::fill_nan(sh.dv.get(), bc::Elem::F32, shape_.batch * sh.len * nkv_row, stream_);
          },
          [&](Row& row, const ringattn::SequenceLayout& lay, const std::vector<Shard>& shards) -> std::string {
            const bc::Diff ddq = compare_shards(pointers(shards, &Shard::dq), bc::Elem::F32, dq, lay, shape_.batch, nq_row);
            const bc::Diff ddk = compare_shards(pointers(shards, &Shard::dk), bc::Elem::F32, dk, lay, shape_.batch, nkv_row);
            const bc::Diff ddv = compare_shards(pointers(shards, &Shard::dv), bc::Elem::F32, dv, lay, shape_.batch, nkv_row);
            row.check = "single";
            row.rel_err = std::max({rel_error(ddq), rel_error(ddk), rel_error(ddv)});
            if (ddq.bad_out + ddk.bad_out + ddv.bad_out > 0) return bc::unwritten_grads(ddq, ddk, ddv);
            if (!(row.rel_err <= opt_.tol_bwd)) {
              return "differs from the single kernel: rel err dQ " + fmt_err(rel_error(ddq)) + " dK " +
                     fmt_err(rel_error(ddk)) + " dV " + fmt_err(rel_error(ddv)) + " (tol " + fmt_err(opt_.tol_bwd) + ")";
            }
            return {};
          },
          [](rc::RingAttention& r, const std::vector<rc::BackwardShard>& s) { r.backward(s); });
    }
  }

  // Allocation only: would the buffers of a forward of S tokens fit? Single (N = 0): Q, K, V, O
  // in the input dtype and LSE. Ring: every buffer of every rank of the plan (shards included).
  bool allocates(std::int64_t D, std::int64_t H, std::int64_t Hkv, std::int64_t S, int N) {
    const AttentionShape s{opt_.batch, S, S, H, Hkv, D};
    std::vector<std::size_t> sizes;
    const std::size_t eb = rc::element_bytes(dtype_);
    if (N == 0) {
      sizes = {eb * sz(s.q_elements()), eb * sz(s.kv_elements()), eb * sz(s.kv_elements()), eb * sz(s.q_elements()),
               4 * sz(s.lse_elements())};
    } else {
      const auto sch = ringattn::RingSchedule::for_shape(s, Layout::Zigzag, N, true);
      for (const rc::PlanBuffer& b : rc::plan_forward(sch, s, plan_options(dtype_, dtype_, D)).buffers) sizes.push_back(b.bytes);
    }
    std::vector<DeviceBuffer> held;
    try {
      for (std::size_t b : sizes) held.emplace_back(b);
    } catch (const OutOfMemory&) {
      return false;
    }
    return true;
  }

  // One checked forward of S tokens, causal: the single kernel (N = 0) or the zigzag ring of N
  // ranks whose shards are filled directly (no global tensors, as N GPUs would hold them).
  // status "OOM" when it did not allocate.
  Row longest_run(std::int64_t D, std::int64_t H, std::int64_t Hkv, std::int64_t S, int N) {
    shape_ = AttentionShape{opt_.batch, S, S, H, Hkv, D};
    causal_ = true;
    Row row = base_row("longest", "fwd", N == 0 ? "single" : "ring", N == 0 ? "-" : "zigzag", N);
    const bc::Elem el = elem_of(dtype_);
    const std::size_t eb = rc::element_bytes(dtype_);
    try {
      DeviceBuffer ws(bc::oracle_workspace_bytes(static_cast<int>(D), 2 * std::max(N, 1)));
      const std::uint64_t seed = rng_();
      if (N == 0) {
        DeviceBuffer q(eb * sz(shape_.q_elements())), k(eb * sz(shape_.kv_elements())), v(eb * sz(shape_.kv_elements()));
        DeviceBuffer o(eb * sz(shape_.q_elements())), lse(4 * sz(shape_.lse_elements()));
        bc::fill_qkv(q.get(), k.get(), v.get(), el, shape_.q_elements(), shape_.kv_elements(), seed, stream_);
        bc::fill_nan(o.get(), el, shape_.q_elements(), stream_);
        bc::fill_nan(lse.get(), bc::Elem::F32, shape_.lse_elements(), stream_);
        check_cuda(cudaStreamSynchronize(stream_), "inputs");
        const rc::ForwardArgs a =
            bc::forward_args(shape_, dtype_, q.get(), k.get(), v.get(), o.get(), dtype_, lse.f32(), true);
        const auto t0 = Clock::now();
        rc::forward(a, rc::Kernel::Auto, stream_);
        check_cuda(cudaStreamSynchronize(stream_), "single forward");
        const double ms = seconds_since(t0) * 1e3;
        row.timing = Timing{ms, ms, ms, 1};
        const std::int64_t bad = bc::compare(o.get(), el, nullptr, el, shape_.q_elements(), stream_).bad_out +
                                 bc::compare(lse.get(), bc::Elem::F32, nullptr, bc::Elem::F32, shape_.lse_elements(), stream_).bad_out;
        const SampleCheck c = sampled_check(shape_, true, dtype_, dtype_, whole(q.get(), S), whole(k.get(), S),
                                            whole(v.get(), S), whole(o.get(), S), whole(lse.get(), S), rng_, ws.get(),
                                            stream_);
        finish_longest(row, bad, c);
      } else {
        const ringattn::SequenceLayout lay(Layout::Zigzag, S, N);
        rc::LocalCommunicator comm(N, std::vector<int>{opt_.device});
        std::vector<Shard> sh(sz(N));
        std::vector<rc::ForwardShard> shards;
        std::vector<const void*> qs, ks, vs, os, ls;
        const std::int64_t rowq = H * D, rowkv = Hkv * D, B = opt_.batch;
        for (int r = 0; r < N; ++r) {
          Shard& x = sh[sz(r)];
          x.len = lay.shard_length(r);
          x.q = DeviceBuffer(eb * sz(B * x.len * rowq));
          x.k = DeviceBuffer(eb * sz(B * x.len * rowkv));
          x.v = DeviceBuffer(eb * sz(B * x.len * rowkv));
          x.o = DeviceBuffer(eb * sz(B * x.len * rowq));
          x.lse = DeviceBuffer(4 * sz(B * H * x.len));
          const std::uint64_t rs = seed + 16 * static_cast<std::uint64_t>(r);
          bc::fill_qkv(x.q.get(), x.k.get(), x.v.get(), el, B * x.len * rowq, B * x.len * rowkv, rs, stream_);
          bc::fill_nan(x.o.get(), el, B * x.len * rowq, stream_);
          bc::fill_nan(x.lse.get(), bc::Elem::F32, B * H * x.len, stream_);
          shards.push_back({x.q.get(), x.k.get(), x.v.get(), x.o.get(), x.lse.f32()});
          qs.push_back(x.q.get());
          ks.push_back(x.k.get());
          vs.push_back(x.v.get());
          os.push_back(x.o.get());
          ls.push_back(x.lse.get());
        }
        check_cuda(cudaStreamSynchronize(stream_), "inputs");
        rc::RingConfig cfg = ring_config(Layout::Zigzag, false);  // causal_ is set above
        cfg.out_dtype = dtype_;
        rc::RingAttention ring(comm, cfg);
        row.plan_bytes_per_rank = max_of(plan_bytes(ring.plan(false)));
        const auto t0 = Clock::now();
        ring.forward(shards);
        const double ms = seconds_since(t0) * 1e3;  // includes the first call's buffer allocation
        row.timing = Timing{ms, ms, ms, 1};
        std::int64_t bad = 0;
        for (int r = 0; r < N; ++r) {
          bad += bc::compare(os[sz(r)], el, nullptr, el, B * sh[sz(r)].len * rowq, stream_).bad_out;
          bad += bc::compare(ls[sz(r)], bc::Elem::F32, nullptr, bc::Elem::F32, B * H * sh[sz(r)].len, stream_).bad_out;
        }
        const SampleCheck c = sampled_check(shape_, true, dtype_, dtype_, sharded(qs, lay), sharded(ks, lay),
                                            sharded(vs, lay), sharded(os, lay), sharded(ls, lay), rng_, ws.get(), stream_);
        finish_longest(row, bad, c);
      }
    } catch (const OutOfMemory&) {
      row.status = "OOM";
    } catch (const std::exception& e) {
      if (is_oom_message(e.what()) && cudaDeviceSynchronize() == cudaSuccess) {
        (void)cudaGetLastError();
        row.status = "OOM";
      } else {
        row.status = "FAILED";
        row.reason = e.what();
        row.timing.reset();
      }
    }
    return row;
  }

  void finish_longest(Row& row, std::int64_t bad, const SampleCheck& c) {
    row.check = "f64@4rows";
    row.rel_err = c.o_rel;
    row.lse_err = c.lse_abs;
    if (bad > 0) {
      row.status = "FAILED";
      row.reason = std::to_string(bad) + " O/LSE elements NaN/inf or unwritten";
    } else if (!(c.o_rel <= opt_.tol_fwd) || !(c.lse_abs <= opt_.tol_lse)) {
      row.status = "FAILED";
      row.reason = "differs from float64 at sampled rows: O rel err " + fmt_err(c.o_rel) + ", LSE abs err " +
                   fmt_err(c.lse_abs);
    } else {
      row.status = "OK";
    }
    if (row.status != "OK") row.timing.reset();
  }

  Options opt_;
  bc::DeviceStream stream_;
  rc::DType dtype_ = rc::DType::BF16, out_dtype_ = rc::DType::BF16;
  std::mt19937_64 rng_;
  AttentionShape shape_;
  bool causal_ = false;
  DeviceBuffer q_, k_, v_, dout_, o_, lse_, o_bwd_, workspace_;
  double single_fwd_ms_ = kNaN;
  std::vector<Row> rows_;
  std::vector<LongestResult> longest_;
  nlohmann::json memory_ = nlohmann::json::object();
  int failed_ = 0;
};

void write_csv(const std::string& path, const std::vector<Row>& rows) {
  std::string text =
      "section,dir,dtype,head_dim,seq,batch,heads_q,heads_kv,causal,impl,layout,ranks,status,ms,ms_min,ms_max,reps,"
      "tflops,overhead,check,rel_err,lse_err,compute_ms,comm_ms,overlap_same,overlap_any,exposed_ms,busy_imbalance,"
      "work_imbalance,plan_bytes_per_rank,reason\n";
  auto n = [](double x) { return std::isfinite(x) ? fmt(x, "%.6g") : std::string(); };
  for (const Row& r : rows) {
    std::string reason = r.reason;
    std::replace(reason.begin(), reason.end(), '"', '\'');
    text += r.section + ',' + r.dir + ',' + r.dtype + ',' + std::to_string(r.head_dim) + ',' + std::to_string(r.seq) +
            ',' + std::to_string(r.batch) + ',' + std::to_string(r.heads_q) + ',' + std::to_string(r.heads_kv) + ',' +
            (r.causal ? "1" : "0") + ',' + r.impl + ',' + r.layout + ',' + std::to_string(r.ranks) + ',' + r.status + ',';
    if (r.timing) {
      text += n(r.timing->median_ms) + ',' + n(r.timing->min_ms) + ',' + n(r.timing->max_ms) + ',' +
              std::to_string(r.timing->reps) + ',' + n(tflops(r));
    } else {
      text += ",,,,";
    }
    text += ',' + n(r.overhead) + ',' + r.check + ',' + n(r.rel_err) + ',' + n(r.lse_err) + ',';
    if (r.ovl) {
      text += n(r.ovl->compute_ms) + ',' + n(r.ovl->comm_ms) + ',' + n(r.ovl->ovl_same) + ',' + n(r.ovl->ovl_any) + ',' +
              n(r.ovl->exposed_ms) + ',' + n(r.ovl->busy_imbalance);
    } else {
      text += ",,,,,";
    }
    text += ',' + n(r.work_imbalance) + ',' + n(r.plan_bytes_per_rank) + ",\"" + reason + "\"\n";
  }
  bc::write_atomically(path, text);
}

/// The summary block: the key ratios, one "key: " line each, and whether the target was met.
struct Summary {
  std::vector<std::string> lines;
  bool target_met = true;
  int target_rows = 0;
};

Summary summarize(const Options& opt, const std::vector<Row>& rows, const std::vector<LongestResult>& longest,
                  const nlohmann::json& memory, std::int64_t largest_seq) {
  Summary s;
  auto key = [&](const std::string& line) { s.lines.push_back("key: " + line); };
  // Overhead at N = target_ranks for S >= target_min_seq.
  for (const Row& r : rows) {
    if (r.section != "overhead" || r.impl != "ring" || r.ranks != opt.target_ranks || r.seq < opt.target_min_seq) continue;
    ++s.target_rows;
    const bool pass = r.status == "OK" && std::isfinite(r.overhead) && r.overhead <= opt.overhead_target;
    if (!pass) s.target_met = false;
    key("ring overhead N=" + std::to_string(r.ranks) + " " + r.dir + " S=" + fmt_tokens(r.seq) + " " +
        (r.causal ? "causal " : "full ") + r.layout + ": " +
        (std::isfinite(r.overhead) ? fmt(r.overhead, "%.3f") + "x" : std::string("n/a (") + r.status + ")") +
        " (<= " + fmt(opt.overhead_target, "%.2f") + ") " + (pass ? "PASS" : "MISS"));
  }
  if (s.target_rows == 0) {
    s.target_met = false;
    key("ring overhead N=" + std::to_string(opt.target_ranks) + ", S >= " + fmt_tokens(opt.target_min_seq) +
        ": no such row in this run (n/a)");
  }
  // Overlap at N = target_ranks, largest S, forward.
  for (const Row& r : rows) {
    if (r.section != "overhead" || r.impl != "ring" || r.ranks != opt.target_ranks || r.seq != largest_seq ||
        r.dir != "fwd" || !r.ovl)
      continue;
    key("ring overlap N=" + std::to_string(r.ranks) + " fwd S=" + fmt_tokens(r.seq) + " " +
        (r.causal ? "causal " : "full ") + r.layout + ": comm " + fmt(r.ovl->comm_ms, "%.2f") + " ms/rank, " +
        (std::isfinite(r.ovl->ovl_same) ? fmt(100 * r.ovl->ovl_same, "%.0f") : std::string("-")) +
        "% under the same rank's compute, " +
        (std::isfinite(r.ovl->ovl_any) ? fmt(100 * r.ovl->ovl_any, "%.0f") : std::string("-")) +
        "% under any rank's, exposed " + fmt(r.ovl->exposed_ms, "%.2f") + " ms of " + fmt(r.ovl->span_ms, "%.1f"));
  }
  // Imbalance per layout.
  for (int N : opt.layout_ranks) {
    std::string line;
    for (Layout L : {Layout::Contiguous, Layout::Striped, Layout::Zigzag}) {
      for (const Row& r : rows) {
        if (r.impl != "ring" || r.dir != "fwd" || !r.causal || r.ranks != N || r.seq != largest_seq ||
            r.layout != ringattn::to_string(L) || r.status != "OK" || !r.ovl)
          continue;
        line += (line.empty() ? "" : "; ") + r.layout + " busy " + fmt(r.ovl->busy_imbalance, "%.2f") + " (schedule " +
                fmt(r.work_imbalance, "%.2f") + "), wall " + fmt(r.timing->median_ms, "%.1f") + " ms";
        break;
      }
    }
    if (!line.empty()) key("causal imbalance max/mean N=" + std::to_string(N) + " S=" + fmt_tokens(largest_seq) + ": " + line);
  }
  // Longest sequence.
  for (std::size_t i = 0; i < longest.size(); ++i) {
    const LongestResult& l = longest[i];
    const std::string who = i == 0 ? "single kernel" : "ring N=" + std::to_string(opt.search_ranks) + " zigzag";
    key("longest causal fwd S, " + who + ": " + (l.ran_seq > 0 ? fmt_tokens(l.ran_seq) : std::string("none")) +
        " ran and checked" + (std::isfinite(l.ran_ms) ? " (" + fmt(l.ran_ms / 1e3, "%.1f") + " s)" : std::string()) +
        "; stopped by " + l.stop + "; buffers allocate up to " + fmt_tokens(l.alloc_seq) +
        (l.alloc_fail_seq > 0 ? " (not " + fmt_tokens(l.alloc_fail_seq) + ")" : std::string()));
  }
  if (memory.contains("ring_fwd_bytes_per_rank")) {
    key("ring memory per rank (N=" + std::to_string(memory["ring_ranks"].get<int>()) + ", S=" +
        fmt_tokens(memory["ring_seq"].get<std::int64_t>()) + ", plan buffers incl. shards): fwd " +
        fmt(memory["ring_fwd_bytes_per_rank"].get<double>() / kGiB, "%.2f") + " GiB, bwd " +
        fmt(memory["ring_bwd_bytes_per_rank"].get<double>() / kGiB, "%.2f") + " GiB; " +
        std::to_string(memory["ring_ranks"].get<int>()) + " GPUs with " +
        fmt(memory["usable_bytes_per_gpu"].get<double>() / kGiB, "%.1f") + " GiB free each hold S = " +
        fmt_tokens(memory["ring_fwd_seq_on_n_gpus"].get<std::int64_t>()) + " (fwd), " +
        fmt_tokens(memory["ring_bwd_seq_on_n_gpus"].get<std::int64_t>()) + " (bwd)");
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  CLI::App app{"bench_ring_cuda: the CUDA ring on one GPU (virtual ranks) against the single kernel, checked first"};
  app.add_flag("--quick", opt.quick, "S = 64k forward (backward at 8k), fewer repetitions, a 20 s sequence search");
  app.add_option("--json", opt.json_path, "write every row, the summary and the device as JSON to this file");
  app.add_option("--csv", opt.csv_path, "write every row as CSV to this file");
  app.add_option("--trace", opt.trace_path, "write the timeline of N=4, causal zigzag, largest S as a Chrome trace");
  app.add_option("--seqs", opt.seqs, "forward sequence lengths S")->delimiter(',');
  app.add_option("--bwd-seqs", opt.bwd_seqs, "backward sequence lengths (default: the --seqs <= --bwd-max-seq, else 16384)")
      ->delimiter(',');
  app.add_option("--bwd-max-seq", opt.bwd_max_seq, "longest S the backward runs at by default");
  app.add_option("--ranks", opt.ranks, "virtual ranks N of the overhead rows")->delimiter(',');
  app.add_option("--layout-ranks", opt.layout_ranks, "N of the causal layout comparison")->delimiter(',');
  app.add_option("--dims", opt.dims, "head dims D")->delimiter(',');
  app.add_option("--heads", opt.heads, "query heads H_q");
  app.add_option("--heads-kv", opt.heads_kv, "key/value heads H_kv (default: H_q)");
  app.add_option("--batch", opt.batch, "batch B");
  app.add_option("--dirs", opt.dirs, "fwd, bwd")->delimiter(',');
  app.add_option("--mask", opt.mask, "both, full (non-causal) or causal")->check(CLI::IsMember({"both", "full", "causal"}));
  app.add_option("--dtype", opt.dtype_name, "input dtype: bf16 or fp16");
  app.add_flag("--out-f32", opt.out_f32, "forward writes float32 O (default: O in the input dtype)");
  app.add_option("--warmup", opt.warmup, "warm-up calls before timing (at least 1: it sizes the repetitions)");
  app.add_option("--min-reps", opt.min_reps, "fewest timed repetitions");
  app.add_option("--max-reps", opt.max_reps, "most timed repetitions");
  app.add_option("--target-ms", opt.target_ms, "time to spend per row, which sets the repetitions");
  app.add_option("--tol-fwd", opt.tol_fwd, "largest relative L2 error of O");
  app.add_option("--tol-bwd", opt.tol_bwd, "largest relative L2 error of dQ, dK, dV");
  app.add_option("--tol-lse", opt.tol_lse, "largest absolute error of LSE");
  app.add_option("--overhead-target", opt.overhead_target, "ring / single time judged at N = 4, S >= 64k");
  app.add_option("--max-seq-search", opt.max_seq_search_s, "seconds for the longest-sequence search (0: off)");
  app.add_option("--search-ranks", opt.search_ranks, "N of the ring in the longest-sequence search");
  app.add_flag("--strict-perf", opt.strict_perf, "a missed overhead target fails the run");
  app.add_option("--seed", opt.seed, "input seed (0: a fresh one each run)");
  app.add_option("--device", opt.device, "CUDA device index");
  CLI11_PARSE(app, argc, argv);
  if (opt.quick) {
    if (app.count("--seqs") == 0) opt.seqs = {65536};
    if (app.count("--target-ms") == 0) opt.target_ms = 500;
    if (app.count("--max-seq-search") == 0) opt.max_seq_search_s = 20;
    if (app.count("--bwd-seqs") == 0) opt.bwd_seqs = {8192};
  }
  if (opt.bwd_seqs.empty()) {
    for (std::int64_t S : opt.seqs) {
      if (S <= opt.bwd_max_seq) opt.bwd_seqs.push_back(S);
    }
    if (opt.bwd_seqs.empty()) opt.bwd_seqs.push_back(std::min<std::int64_t>(16384, opt.bwd_max_seq));
  }
  if (opt.min_reps < 1 || opt.max_reps < 1 || opt.warmup < 0) {
    std::printf("bench_ring_cuda: --min-reps and --max-reps must be >= 1, --warmup >= 0\nFAILED\n");
    return 2;
  }
  const bool want_fwd = bc::has_dir(opt.dirs, "fwd");
  const bool want_bwd = bc::has_dir(opt.dirs, "bwd");

  if (!bc::have_device("bench_ring_cuda")) return 1;
  const auto t0 = Clock::now();
  nlohmann::json out;
  std::string fatal;
  std::unique_ptr<Bench> bench;
  Summary summary;
  std::int64_t largest = 0;
  for (std::int64_t S : opt.seqs) largest = std::max(largest, S);
  const auto save = [&](bool complete, bool ok) {
    out["rows"] = nlohmann::json::array();
    if (bench) {
      for (const Row& r : bench->rows()) out["rows"].push_back(to_json(r));
      out["memory"] = bench->memory();
    }
    out["summary"] = summary.lines;
    out["overhead_target_met"] = summary.target_met;
    out["ok"] = ok;
    out["complete"] = complete;
    out["fatal"] = fatal;
    out["seconds"] = seconds_since(t0);
    out["timing_method"] = "wall clock around each call including its synchronization (steady_clock), median";
    out["options"] = {{"quick", opt.quick},         {"seqs", opt.seqs},           {"bwd_seqs", opt.bwd_seqs},
                      {"ranks", opt.ranks},         {"layout_ranks", opt.layout_ranks}, {"dims", opt.dims},
                      {"heads", opt.heads},         {"heads_kv", opt.heads_kv > 0 ? opt.heads_kv : opt.heads},
                      {"batch", opt.batch},         {"dtype", opt.dtype_name},    {"out_f32", opt.out_f32},
                      {"tol_fwd", opt.tol_fwd},     {"tol_bwd", opt.tol_bwd},     {"tol_lse", opt.tol_lse},
                      {"target_ms", opt.target_ms}, {"min_reps", opt.min_reps},   {"max_reps", opt.max_reps},
                      {"warmup", opt.warmup},       {"overhead_target", opt.overhead_target},
                      {"max_seq_search_s", opt.max_seq_search_s}};
    if (!opt.json_path.empty()) bc::write_atomically(opt.json_path, out.dump(2) + "\n");
    if (!opt.csv_path.empty() && bench) write_csv(opt.csv_path, bench->rows());
  };
  try {
    out["device"] = bc::device_json(opt.device, false);
    std::printf("device: %s (sm_%s, %d SMs, %.1f GiB); %s, B = %lld, H_q = %lld, H_kv = %lld; tolerances fwd %.0e bwd %.0e "
                "lse %.0e\n",
                out["device"]["name"].get<std::string>().c_str(),
                out["device"]["compute_capability"].get<std::string>().c_str(),
                out["device"]["multiprocessors"].get<int>(),
                static_cast<double>(out["device"]["memory_bytes"].get<std::size_t>()) / kGiB, opt.dtype_name.c_str(),
                static_cast<long long>(opt.batch), static_cast<long long>(opt.heads),
                static_cast<long long>(opt.heads_kv > 0 ? opt.heads_kv : opt.heads), opt.tol_fwd, opt.tol_bwd,
                opt.tol_lse);
    std::printf("timing: wall clock around each call including its synchronization, median of repetitions after a "
                "warm-up; virtual ranks share this one GPU (LocalCommunicator)\n");
    std::printf("causal rows use the zigzag layout, non-causal ones contiguous; backward at S = ");
    for (std::int64_t S : opt.bwd_seqs) std::printf("%lld ", static_cast<long long>(S));
    std::printf("only (--bwd-max-seq %lld: the backward kernel is slower)\n", static_cast<long long>(opt.bwd_max_seq));
    print_header();
    bench = std::make_unique<Bench>(opt);
    bench->on_row = [&] { save(false, false); };
    bench->trace_seq_ = largest;
    bench->trace_ranks_ = 4;
    std::vector<std::int64_t> all = opt.seqs;
    for (std::int64_t S : opt.bwd_seqs) {
      if (std::find(all.begin(), all.end(), S) == all.end()) all.push_back(S);
    }
    std::sort(all.begin(), all.end());
    try {
      for (int D : opt.dims) {
        for (std::int64_t S : all) {
          const bool f = want_fwd && std::find(opt.seqs.begin(), opt.seqs.end(), S) != opt.seqs.end();
          const bool b = want_bwd && std::find(opt.bwd_seqs.begin(), opt.bwd_seqs.end(), S) != opt.bwd_seqs.end();
          bench->run_seq(D, S, f, b, f && S == largest);
        }
      }
      if (opt.max_seq_search_s > 0 && want_fwd) {
        std::printf("longest sequence (causal forward, B = %lld): runs doubling from 64k within %.0f s, each checked; "
                    "allocation-only probe doubling then bisecting to 1/8\n",
                    static_cast<long long>(opt.batch), opt.max_seq_search_s);
        bench->search_longest(opt.dims.front(), opt.max_seq_search_s);
      }
    } catch (const std::exception& e) {
      fatal = e.what();
    }
  } catch (const std::exception& e) {
    fatal = e.what();
  }
  int failed = bench ? bench->failed() : 0;
  int timed = 0;
  if (bench) {
    for (const Row& r : bench->rows()) timed += r.timing ? 1 : 0;
    summary = summarize(opt, bench->rows(), bench->longest(), bench->memory(), largest);
  }
  if (bench && !opt.trace_path.empty()) {
    if (bench->trace_.empty()) {
      std::printf("trace: no timeline of N=4, causal zigzag, S=%lld was recorded; %s not written\n",
                  static_cast<long long>(largest), opt.trace_path.c_str());
    } else {
      try {
        bc::write_atomically(opt.trace_path, chrome_trace(bench->trace_, bench->trace_ranks_, bench->trace_title_));
        std::printf("trace: %s (%s)\n", opt.trace_path.c_str(), bench->trace_title_.c_str());
      } catch (const std::exception& e) {
        std::printf("trace: %s\n", e.what());
      }
    }
  }
  const double secs = seconds_since(t0);
  const bool perf_ok = summary.target_met || !opt.strict_perf;
  const bool ok = fatal.empty() && failed == 0 && timed > 0 && perf_ok;
  try {
    save(true, ok);
  } catch (const std::exception& e) {
    std::printf("bench_ring_cuda: %s\n", e.what());
    return 1;
  }
  std::printf("\n==================== bench_ring_cuda summary ====================\n");
  std::printf("overhead = ring time / single-kernel time (wall clock incl. synchronization); one GPU: the virtual ranks "
              "share its SMs, so overlap is measured on shared hardware and 'busy' imbalance is what one GPU per rank "
              "would suffer (wall time barely changes with the layout here)\n");
  for (const std::string& l : summary.lines) std::printf("%s\n", l.c_str());
  std::printf("key: overhead target (N=%d, S >= %s, <= %.2f): %s%s\n", opt.target_ranks,
              fmt_tokens(opt.target_min_seq).c_str(), opt.overhead_target, summary.target_met ? "PASS" : "MISS",
              summary.target_met ? "" : (opt.strict_perf ? " (fails the run: --strict-perf)" : " (reported, not a failure)"));
  return bc::print_end(fatal, bench ? bench->rows().size() : std::size_t{0}, timed, failed, secs, ok);
}
