// bench_attention_cuda: times every version of the CUDA attention kernels (forward and backward)
// with CUDA events, after checking each one's output on the very inputs it is timed on.
//
// What it shows: milliseconds (median of many repetitions) and TFLOP/s per (direction, head dim,
// sequence length, causal, kernel version), on the FlashAttention-2 paper's grid: bf16, D = 64
// (H = 32) and 128 (H = 16), S = 1k ... 32k with B * S = 16k tokens (B = 1 from 16k on), causal
// and not. What it leaves out: GQA, S_q != S_kv, the ring (bench of a single device call), the
// merge and decoding kernels.
//
// Checks, before anything is timed (a failed check marks the row FAILED and no time is taken):
//   - outputs are poisoned with NaN before the checked call: an element left unwritten fails;
//   - against a slower kernel on the same inputs (Simple < Tiled < TensorCore; Simple is used as
//     the reference up to --ref-simple-max-seq): relative L2 error ||out - ref|| / ||ref|| of O
//     (forward; LSE by max abs error) and of dQ, dK, dV (backward);
//   - against float64 on the CPU at sampled rows (forward: O and LSE of 8 query rows; backward:
//     dQ of 8 query rows, dK and dV of 8 key rows), given the same inputs. The slowest kernel
//     of a case has only this check.
// FLOPs (as in the FlashAttention papers): forward 4 * B * H * S_q * S_kv * D, halved when
// causal; backward 2.5x the forward. The backward's time includes its D = rowsum(dO * O) pre-pass.
//
// Build: part of the CMake build when RINGATTN_WITH_CUDA (target bench_attention_cuda);
// scripts/gpu-check.sh builds and runs it with scripts/sdpa_bench.py (PyTorch SDPA on the same
// cases) and prints the ratios. Needs an NVIDIA GPU; D = 64/128 bf16 is the TensorCore path.
//
//   bench_attention_cuda [--quick] [--json FILE] [--csv FILE] [--dims 64,128]
//                        [--seqs 1024,...,32768] [--kernels simple,tiled,tensor-core]
//                        [--dirs fwd,bwd] [--mask both|full|causal] [--tokens 16384]
//
// Output: one row per case, then a final line OK (every row checked and timed, or n/a: the
// kernel rejects the case) or FAILED; the exit status is 0 for OK.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <limits>
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
#include "ringattn/cuda/attention.hpp"

namespace {

using ringattn::AttentionShape;
namespace rc = ringattn::cuda;
namespace bc = ringattn::bench_cuda;
using Clock = std::chrono::steady_clock;

using bc::check_cuda;
using bc::elem_of;
using bc::Timing;
using DeviceBuffer = bc::DeviceBuffer<>;

std::size_t bytes_of(rc::DType d, std::int64_t n) { return rc::element_bytes(d) * static_cast<std::size_t>(n); }

/// Copies @p n elements of a device buffer of @p elem to the host as floats (via @p scratch, a
/// device float buffer of at least n elements).
std::vector<float> to_host(const void* src, bc::Elem elem, std::int64_t n, const DeviceBuffer& scratch,
                           cudaStream_t stream) {
  std::vector<float> host(static_cast<std::size_t>(n));
  const void* from = src;
  if (elem != bc::Elem::F32) {
    bc::convert(src, elem, scratch.get(), bc::Elem::F32, n, stream);
    from = scratch.get();
  }
  check_cuda(cudaMemcpyAsync(host.data(), from, sizeof(float) * host.size(), cudaMemcpyDeviceToHost, stream),
             "copy to host");
  check_cuda(cudaStreamSynchronize(stream), "copy to host");
  return host;
}

// ---- options ------------------------------------------------------------------------------------

struct Options {
  bool quick = false;
  std::string json_path;
  std::string csv_path;
  std::vector<int> dims{64, 128};
  std::vector<std::int64_t> seqs{1024, 2048, 4096, 8192, 16384, 32768};
  std::vector<std::string> kernel_names{"simple", "tiled", "tensor-core"};
  std::vector<std::string> dirs{"fwd", "bwd"};
  std::string mask = "both";
  std::string dtype_name = "bf16";
  bool out_f32 = false;
  std::int64_t tokens = 16384;
  std::int64_t head_dim_width = 2048;  // H * D, as in the FlashAttention-2 paper
  std::int64_t simple_max_seq = 4096;
  std::int64_t ref_simple_max_seq = 8192;
  int warmup = 2;
  int min_reps = 10;
  int max_reps = 100;
  double target_ms = 300;
  double tol_fwd = 1e-2;
  double tol_bwd = 3e-2;
  double tol_lse = 5e-3;
  std::uint64_t seed = 0;
  int device = 0;
};

// ---- float64 CPU oracle at sampled rows ----------------------------------------------------------

/// Host copies (as floats) of one case's tensors, BSHD, with the shape for indexing.
struct HostCase {
  AttentionShape s;
  bool causal = false;
  double scale = 0;
  std::vector<float> q, k, v, dout, o;  // o: the O the backward is given (rounded to dtype)
  std::vector<float> lse;               // (B, H, S_q): the LSE the backward is given
  std::vector<double> delta;            // (B, H, S_q): rowsum(dO * O) of those

  [[nodiscard]] std::size_t qi(std::int64_t b, std::int64_t i, std::int64_t h) const {
    return static_cast<std::size_t>(((b * s.seq_q + i) * s.heads_q + h) * s.head_dim);
  }
  [[nodiscard]] std::size_t ki(std::int64_t b, std::int64_t j, std::int64_t h) const {
    return static_cast<std::size_t>(((b * s.seq_kv + j) * s.heads_kv + h / s.group_size()) * s.head_dim);
  }
  [[nodiscard]] std::size_t li(std::int64_t b, std::int64_t h, std::int64_t i) const {
    return static_cast<std::size_t>((b * s.heads_q + h) * s.seq_q + i);
  }
  /// Default positions (attention.hpp): query i at S_kv - S_q + i, key j at j.
  [[nodiscard]] bool visible(std::int64_t i, std::int64_t j) const {
    return !causal || j <= s.seq_kv - s.seq_q + i;
  }
  [[nodiscard]] double score(std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t j) const {
    const float* qr = &q[qi(b, i, h)];
    const float* kr = &k[ki(b, j, h)];
    double acc = 0;
    for (std::int64_t d = 0; d < s.head_dim; ++d) acc += static_cast<double>(qr[d]) * static_cast<double>(kr[d]);
    return acc * scale;
  }
  [[nodiscard]] double dot_do_v(std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t j) const {
    const float* g = &dout[qi(b, i, h)];
    const float* vr = &v[ki(b, j, h)];
    double acc = 0;
    for (std::int64_t d = 0; d < s.head_dim; ++d) acc += static_cast<double>(g[d]) * static_cast<double>(vr[d]);
    return acc;
  }
};

struct Sample {
  std::int64_t b, h, row;
};

std::vector<Sample> pick_samples(const AttentionShape& s, std::int64_t len, std::mt19937_64& rng) {
  std::vector<std::int64_t> rows{0, 1, len / 2, len - 1};
  std::uniform_int_distribution<std::int64_t> r(0, len - 1), b(0, s.batch - 1), h(0, s.heads_q - 1);
  while (rows.size() < 8) rows.push_back(r(rng));
  std::vector<Sample> out;
  for (std::int64_t row : rows) out.push_back({b(rng), h(rng), std::min(row, len - 1)});
  return out;
}

/// Forward at sampled query rows: O (D values each) and LSE, in float64.
struct FwdOracle {
  std::vector<Sample> rows;
  std::vector<double> o;    // rows x D
  std::vector<double> lse;  // rows
};

FwdOracle forward_oracle(const HostCase& c, std::vector<Sample> rows) {
  FwdOracle r;
  r.rows = std::move(rows);
  const std::int64_t D = c.s.head_dim;
  for (const Sample& sm : r.rows) {
    std::vector<double> sc(static_cast<std::size_t>(c.s.seq_kv), -std::numeric_limits<double>::infinity());
    double m = -std::numeric_limits<double>::infinity();
    for (std::int64_t j = 0; j < c.s.seq_kv; ++j) {
      if (!c.visible(sm.row, j)) continue;
      sc[static_cast<std::size_t>(j)] = c.score(sm.b, sm.h, sm.row, j);
      m = std::max(m, sc[static_cast<std::size_t>(j)]);
    }
    std::vector<double> acc(static_cast<std::size_t>(D), 0.0);
    double l = 0;
    if (std::isfinite(m)) {
      for (std::int64_t j = 0; j < c.s.seq_kv; ++j) {
        if (!c.visible(sm.row, j)) continue;
        const double p = std::exp(sc[static_cast<std::size_t>(j)] - m);
        l += p;
        const float* vr = &c.v[c.ki(sm.b, j, sm.h)];
        for (std::int64_t d = 0; d < D; ++d) acc[static_cast<std::size_t>(d)] += p * static_cast<double>(vr[d]);
      }
    }
    for (std::int64_t d = 0; d < D; ++d) r.o.push_back(l > 0 ? acc[static_cast<std::size_t>(d)] / l : 0.0);
    r.lse.push_back(l > 0 ? m + std::log(l) : -std::numeric_limits<double>::infinity());
  }
  return r;
}

/// Backward at sampled rows: dQ of query rows, dK and dV of key rows, in float64, from the
/// O, LSE and D the kernels are given (P_ij = exp(s_ij - LSE_i), dS_ij = P_ij (dO_i.v_j - D_i)).
struct BwdOracle {
  std::vector<Sample> q_rows, k_rows;
  std::vector<double> dq, dk, dv;  // rows x D each
};

BwdOracle backward_oracle(const HostCase& c, std::vector<Sample> q_rows, std::vector<Sample> k_rows) {
  BwdOracle r;
  r.q_rows = std::move(q_rows);
  r.k_rows = std::move(k_rows);
  const std::int64_t D = c.s.head_dim;
  for (const Sample& sm : r.q_rows) {  // dQ_i = scale * sum_j dS_ij k_j
    std::vector<double> acc(static_cast<std::size_t>(D), 0.0);
    const double lse = c.lse[c.li(sm.b, sm.h, sm.row)];
    const double di = c.delta[c.li(sm.b, sm.h, sm.row)];
    for (std::int64_t j = 0; j < c.s.seq_kv; ++j) {
      if (!c.visible(sm.row, j)) continue;
      const double p = std::exp(c.score(sm.b, sm.h, sm.row, j) - lse);
      const double ds = p * (c.dot_do_v(sm.b, sm.h, sm.row, j) - di);
      const float* kr = &c.k[c.ki(sm.b, j, sm.h)];
      for (std::int64_t d = 0; d < D; ++d) acc[static_cast<std::size_t>(d)] += ds * static_cast<double>(kr[d]);
    }
    for (double x : acc) r.dq.push_back(x * c.scale);
  }
  // dV_j = sum_i P_ij dO_i ; dK_j = scale * sum_i dS_ij q_i, over the query heads of K/V head h.
  for (const Sample& sm : r.k_rows) {
    std::vector<double> dk(static_cast<std::size_t>(D), 0.0), dv(static_cast<std::size_t>(D), 0.0);
    const std::int64_t g = c.s.group_size();
    const std::int64_t hkv = sm.h / g;
    for (std::int64_t h = hkv * g; h < (hkv + 1) * g; ++h) {
      for (std::int64_t i = 0; i < c.s.seq_q; ++i) {
        if (!c.visible(i, sm.row)) continue;
        const double lse = c.lse[c.li(sm.b, h, i)];
        const double p = std::exp(c.score(sm.b, h, i, sm.row) - lse);
        const double ds = p * (c.dot_do_v(sm.b, h, i, sm.row) - c.delta[c.li(sm.b, h, i)]);
        const float* qr = &c.q[c.qi(sm.b, i, h)];
        const float* g_o = &c.dout[c.qi(sm.b, i, h)];
        for (std::int64_t d = 0; d < D; ++d) {
          dv[static_cast<std::size_t>(d)] += p * static_cast<double>(g_o[d]);
          dk[static_cast<std::size_t>(d)] += ds * static_cast<double>(qr[d]);
        }
      }
    }
    for (double x : dk) r.dk.push_back(x * c.scale);
    for (double x : dv) r.dv.push_back(x);
  }
  return r;
}

/// Copies the D values of BSHD row (b, row, h) of a device tensor (any Elem) into @p dst as double.
void fetch_rows(const void* dev, bc::Elem elem, const std::vector<Sample>& rows, std::int64_t seq, std::int64_t heads,
                std::int64_t D, bool kv_rows, std::int64_t group, std::vector<double>& dst, cudaStream_t stream) {
  dst.clear();
  const std::size_t eb = elem == bc::Elem::F32 ? 4 : 2;
  std::vector<unsigned char> buf(static_cast<std::size_t>(D) * eb);
  for (const Sample& sm : rows) {
    const std::int64_t h = kv_rows ? sm.h / group : sm.h;
    const std::int64_t off = ((sm.b * seq + sm.row) * heads + h) * D;
    check_cuda(cudaMemcpyAsync(buf.data(), static_cast<const unsigned char*>(dev) + static_cast<std::size_t>(off) * eb,
                               buf.size(), cudaMemcpyDeviceToHost, stream),
               "fetch rows");
    check_cuda(cudaStreamSynchronize(stream), "fetch rows");
    for (std::int64_t d = 0; d < D; ++d) {
      float x = 0;
      if (elem == bc::Elem::F32) {
        std::memcpy(&x, &buf[static_cast<std::size_t>(d) * 4], 4);
      } else if (elem == bc::Elem::BF16) {
        std::uint32_t bits = static_cast<std::uint32_t>(buf[static_cast<std::size_t>(d) * 2]) |
                             (static_cast<std::uint32_t>(buf[static_cast<std::size_t>(d) * 2 + 1]) << 8);
        bits <<= 16;
        std::memcpy(&x, &bits, 4);
      } else {  // IEEE half
        const std::uint32_t hbits = static_cast<std::uint32_t>(buf[static_cast<std::size_t>(d) * 2]) |
                                    (static_cast<std::uint32_t>(buf[static_cast<std::size_t>(d) * 2 + 1]) << 8);
        const std::uint32_t sign = (hbits & 0x8000u) << 16, exp = (hbits >> 10) & 0x1Fu, man = hbits & 0x3FFu;
        if (exp == 0x1F) {
          x = man != 0 ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
          if (sign != 0) x = -x;
        } else {
          x = std::ldexp(static_cast<float>(exp == 0 ? man : (man | 0x400u)), exp == 0 ? -24 : static_cast<int>(exp) - 25);
          if (sign != 0) x = -x;
        }
      }
      dst.push_back(static_cast<double>(x));
    }
  }
}

/// ||out - ref|| / ||ref|| over sampled values; NaN/inf in out gives +inf.
double rel_error(const std::vector<double>& out, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < out.size() && i < ref.size(); ++i) {
    if (!std::isfinite(out[i])) return std::numeric_limits<double>::infinity();
    num += (out[i] - ref[i]) * (out[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

double rel_error(const bc::Diff& d) {
  if (d.bad_out > 0) return std::numeric_limits<double>::infinity();
  return d.sum_sq_ref > 0 ? std::sqrt(d.sum_sq_diff / d.sum_sq_ref) : std::sqrt(d.sum_sq_diff);
}

// ---- timing ---------------------------------------------------------------------------------------

/// Times @p fn with CUDA events on @p stream: warm-up, then repetitions until about
/// opt.target_ms of work (at least min_reps, at most max_reps; 3 for calls over 100 ms), median.
/// A zero median is not data: the run is repeated with 4x the repetitions, twice at most.
Timing time_calls(const std::function<void()>& fn, cudaStream_t stream, const Options& opt) {
  for (int i = 0; i < opt.warmup; ++i) fn();
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  check_cuda(cudaEventCreate(&e0), "cudaEventCreate");
  check_cuda(cudaEventCreate(&e1), "cudaEventCreate");
  check_cuda(cudaEventRecord(e0, stream), "cudaEventRecord");
  fn();
  check_cuda(cudaEventRecord(e1, stream), "cudaEventRecord");
  check_cuda(cudaEventSynchronize(e1), "cudaEventSynchronize");
  float est = 0;
  check_cuda(cudaEventElapsedTime(&est, e0, e1), "cudaEventElapsedTime");
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);

  int reps = opt.min_reps;
  if (est > 100.0f) {
    reps = std::min(opt.min_reps, 3);
  } else if (est > 0.0f) {
    reps = bc::reps_for_target(static_cast<double>(est), opt.target_ms, opt.min_reps, opt.max_reps);
  }
  Timing t;
  for (int attempt = 0; attempt < 3; ++attempt, reps *= 4) {
    std::vector<cudaEvent_t> ev(static_cast<std::size_t>(2 * reps));
    for (auto& e : ev) check_cuda(cudaEventCreate(&e), "cudaEventCreate");
    for (int r = 0; r < reps; ++r) {
      check_cuda(cudaEventRecord(ev[static_cast<std::size_t>(2 * r)], stream), "cudaEventRecord");
      fn();
      check_cuda(cudaEventRecord(ev[static_cast<std::size_t>(2 * r + 1)], stream), "cudaEventRecord");
    }
    check_cuda(cudaEventSynchronize(ev.back()), "cudaEventSynchronize");
    std::vector<double> ms;
    for (int r = 0; r < reps; ++r) {
      float x = 0;
      check_cuda(cudaEventElapsedTime(&x, ev[static_cast<std::size_t>(2 * r)], ev[static_cast<std::size_t>(2 * r + 1)]),
                 "cudaEventElapsedTime");
      ms.push_back(static_cast<double>(x));
    }
    for (auto& e : ev) cudaEventDestroy(e);
    t = bc::timing_of(std::move(ms));
    if (t.median_ms > 0) break;
  }
  return t;
}

// ---- one row ---------------------------------------------------------------------------------------

struct Row {
  std::string dir;  // fwd | bwd
  std::string dtype;
  std::int64_t head_dim = 0, seq = 0, batch = 0, heads = 0;
  bool causal = false;
  std::string kernel;
  std::string status;  // OK | FAILED | n/a
  std::string reason;
  std::optional<Timing> timing;
  double flops = 0;
  std::string ref_kernel;  // the slower kernel compared against, or "" (CPU check only)
  double ref_rel = std::numeric_limits<double>::quiet_NaN();
  double ref_max_abs = std::numeric_limits<double>::quiet_NaN();
  double cpu_rel = std::numeric_limits<double>::quiet_NaN();
  double lse_max_abs = std::numeric_limits<double>::quiet_NaN();
  bool ref_only = false;  // ran only as the reference of faster kernels (not timed)
};

double tflops(const Row& r) {
  return r.timing && r.timing->median_ms > 0 ? r.flops / (r.timing->median_ms * 1e-3) / 1e12 : 0.0;
}

std::string fmt_err(double x) {
  if (std::isnan(x)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1e", x);
  return buf;
}

void print_header() {
  std::printf("%-4s %4s %6s %3s %3s %-6s %-12s %10s %9s %5s  %-28s %s\n", "dir", "D", "S", "B", "H", "causal",
              "kernel", "ms", "TFLOP/s", "reps", "check (rel err)", "status");
  std::fflush(stdout);
}

void print_row(const Row& r) {
  std::string check;
  if (!r.ref_kernel.empty()) check += r.ref_kernel + " " + fmt_err(r.ref_rel) + " ";
  check += "cpu " + fmt_err(r.cpu_rel);
  const bc::TimingCells cells = bc::timing_cells(r.timing, "%.4f", tflops(r));
  std::string status = r.status;
  if (r.ref_only) status += " (reference only)";
  if (!r.reason.empty()) status += ": " + r.reason;
  std::printf("%-4s %4lld %6lld %3lld %3lld %-6s %-12s %10s %9s %5s  %-28s %s\n", r.dir.c_str(),
              static_cast<long long>(r.head_dim), static_cast<long long>(r.seq), static_cast<long long>(r.batch),
              static_cast<long long>(r.heads), r.causal ? "yes" : "no", r.kernel.c_str(), cells.ms, cells.tf, cells.reps, check.c_str(),
              status.c_str());
  std::fflush(stdout);
}

nlohmann::json to_json(const Row& r) {
  const auto num = bc::json_num;
  nlohmann::json j{{"dir", r.dir},           {"dtype", r.dtype},       {"head_dim", r.head_dim},
                   {"seq", r.seq},           {"batch", r.batch},       {"heads", r.heads},
                   {"causal", r.causal},     {"kernel", r.kernel},     {"status", r.status},
                   {"reason", r.reason},     {"flops", r.flops},       {"ref_kernel", r.ref_kernel},
                   {"ref_rel_err", num(r.ref_rel)}, {"ref_max_abs", num(r.ref_max_abs)},
                   {"cpu_rel_err", num(r.cpu_rel)}, {"lse_max_abs", num(r.lse_max_abs)},
                   {"reference_only", r.ref_only}};
  bc::put_timing(j, r.timing, tflops(r));
  return j;
}

// ---- one case: every kernel on the same inputs -------------------------------------------------

class Bench {
 public:
  explicit Bench(Options opt) : opt_(std::move(opt)), stream_(opt_.device) {
    dtype_ = rc::parse_dtype(opt_.dtype_name);
    for (const auto& name : opt_.kernel_names) kernels_.push_back(rc::parse_kernel(name));
    // Slowest first: each kernel is checked against the slowest one before it.
    const auto rank = [](rc::Kernel k) {
      switch (k) {
        case rc::Kernel::Simple: return 0;
        case rc::Kernel::Tiled: return 1;
        case rc::Kernel::TensorCore: return 2;
        case rc::Kernel::Auto: return 3;
      }
      return 4;
    };
    std::stable_sort(kernels_.begin(), kernels_.end(), [&](rc::Kernel a, rc::Kernel b) { return rank(a) < rank(b); });
    rng_.seed(bc::seed_or_clock(opt_.seed));
  }
  Bench(const Bench&) = delete;
  Bench& operator=(const Bench&) = delete;

  [[nodiscard]] const std::vector<Row>& rows() const { return rows_; }
  [[nodiscard]] cudaStream_t stream() const { return stream_; }

  void run_case(std::int64_t D, std::int64_t S, bool causal) {
    const std::int64_t H = std::max<std::int64_t>(1, opt_.head_dim_width / D);
    const std::int64_t B = std::max<std::int64_t>(1, opt_.tokens / S);
    shape_ = AttentionShape{B, S, S, H, H, D};
    causal_ = causal;
    const std::int64_t nq = shape_.q_elements(), nkv = shape_.kv_elements(), nl = shape_.lse_elements();
    const bc::Elem el = elem_of(dtype_);
    q_ = DeviceBuffer(bytes_of(dtype_, nq));
    k_ = DeviceBuffer(bytes_of(dtype_, nkv));
    v_ = DeviceBuffer(bytes_of(dtype_, nkv));
    dout_ = DeviceBuffer(bytes_of(dtype_, nq));
    scratch_ = DeviceBuffer(sizeof(float) * static_cast<std::size_t>(std::max(nq, nkv)));
    const std::uint64_t seed = rng_();
    bc::fill_qkv(q_.get(), k_.get(), v_.get(), el, nq, nkv, seed, stream_);
    bc::fill_normal(dout_.get(), el, nq, seed + 4, stream_);

    host_ = HostCase{};
    host_.s = shape_;
    host_.causal = causal;
    host_.scale = 1.0 / std::sqrt(static_cast<double>(D));
    host_.q = to_host(q_.get(), el, nq, scratch_, stream_);
    host_.k = to_host(k_.get(), el, nkv, scratch_, stream_);
    host_.v = to_host(v_.get(), el, nkv, scratch_, stream_);

    ref_o_ = DeviceBuffer();
    ref_lse_ = DeviceBuffer();
    if (bc::has_dir(opt_.dirs, "fwd")) run_forward_rows(nl);
    if (bc::has_dir(opt_.dirs, "bwd")) run_backward_rows(nq, nkv, nl);
    check_cuda(cudaStreamSynchronize(stream_), "end of case");
  }

 private:
  Row base_row(const char* dir, rc::Kernel k) const {
    Row r;
    r.dir = dir;
    r.dtype = std::string(rc::to_string(dtype_));
    r.head_dim = shape_.head_dim;
    r.seq = shape_.seq_q;
    r.batch = shape_.batch;
    r.heads = shape_.heads_q;
    r.causal = causal_;
    r.kernel = std::string(rc::to_string(k));
    const double f = 4.0 * static_cast<double>(shape_.batch) * static_cast<double>(shape_.heads_q) *
                     static_cast<double>(shape_.seq_q) * static_cast<double>(shape_.seq_kv) *
                     static_cast<double>(shape_.head_dim) * (causal_ ? 0.5 : 1.0);
    r.flops = std::string(dir) == "bwd" ? 2.5 * f : f;
    return r;
  }

  [[nodiscard]] bool timed(rc::Kernel k) const { return k != rc::Kernel::Simple || shape_.seq_q <= opt_.simple_max_seq; }
  [[nodiscard]] bool may_be_ref(rc::Kernel k) const {
    return k != rc::Kernel::Simple || shape_.seq_q <= opt_.ref_simple_max_seq;
  }

  rc::ForwardArgs fwd_args(void* out, rc::DType out_dtype, float* lse) const {
    return bc::forward_args(shape_, dtype_, q_.get(), k_.get(), v_.get(), out, out_dtype, lse, causal_);
  }

  void emit(Row r) {
    if (r.status == "FAILED") ++failed_;
    print_row(r);
    rows_.push_back(std::move(r));
  }

  // Forward: for each kernel, slowest first: poison, run once, check against the reference
  // kernel (if any) and the CPU oracle; the first kernel that passes becomes the reference (its
  // float32 output); then time it.
  void run_forward_rows(std::int64_t nl) {
    const std::int64_t nq = shape_.q_elements();
    std::mt19937_64 srng(rng_());
    const FwdOracle oracle = forward_oracle(host_, pick_samples(shape_, shape_.seq_q, srng));
    std::string ref_name;
    DeviceBuffer out(sizeof(float) * static_cast<std::size_t>(nq));
    DeviceBuffer lse(sizeof(float) * static_cast<std::size_t>(nl));
    for (rc::Kernel k : kernels_) {
      if (!timed(k) && !(may_be_ref(k) && ref_name.empty())) continue;
      Row row = base_row("fwd", k);
      row.ref_only = !timed(k);
      try {
        rc::DType out_dtype = opt_.out_f32 ? rc::DType::F32 : dtype_;
        std::string why;
        if (!rc::supports(fwd_args(out.get(), out_dtype, lse.f32()), k, &why)) {
          out_dtype = rc::DType::F32;  // a kernel that writes float32 only
          if (!rc::supports(fwd_args(out.get(), out_dtype, lse.f32()), k, &why)) {
            row.status = "n/a";
            row.reason = why;
            if (!row.ref_only) emit(std::move(row));
            continue;
          }
        }
        const rc::ForwardArgs args = fwd_args(out.get(), out_dtype, lse.f32());
        bc::fill_nan(out.get(), elem_of(out_dtype), nq, stream_);
        bc::fill_nan(lse.get(), bc::Elem::F32, nl, stream_);
        rc::forward(args, k, stream_);
        check_cuda(cudaStreamSynchronize(stream_), "forward");
        bool ok = true;
        std::string reason;
        // Against the reference kernel, every element.
        const bc::Diff all = bc::compare(out.get(), elem_of(out_dtype), ref_name.empty() ? nullptr : ref_o_.get(),
                                         bc::Elem::F32, nq, stream_);
        const bc::Diff all_lse = bc::compare(lse.get(), bc::Elem::F32, ref_name.empty() ? nullptr : ref_lse_.get(),
                                             bc::Elem::F32, nl, stream_);
        if (all.bad_out > 0 || all_lse.bad_out > 0) {
          ok = false;
          reason = bc::unwritten_o_lse(all, all_lse) + " (first O index " + std::to_string(all.first_bad_out) + ")";
        }
        if (!ref_name.empty()) {
          row.ref_kernel = ref_name;
          row.ref_rel = rel_error(all);
          row.ref_max_abs = all.max_abs;
          row.lse_max_abs = all_lse.max_abs;
          if (ok && !(row.ref_rel <= opt_.tol_fwd)) {
            ok = false;
            reason = "O differs from " + ref_name + ": rel err " + fmt_err(row.ref_rel) + " > " + fmt_err(opt_.tol_fwd);
          }
          if (ok && !(all_lse.max_abs <= opt_.tol_lse)) {
            ok = false;
            reason = "LSE differs from " + ref_name + ": max abs err " + fmt_err(all_lse.max_abs);
          }
        }
        // Against float64 at the sampled rows.
        std::vector<double> got, got_lse;
        fetch_rows(out.get(), elem_of(out_dtype), oracle.rows, shape_.seq_q, shape_.heads_q, shape_.head_dim, false, 1,
                   got, stream_);
        for (const Sample& sm : oracle.rows) {
          float x = 0;
          check_cuda(cudaMemcpy(&x, lse.f32() + host_.li(sm.b, sm.h, sm.row), sizeof x, cudaMemcpyDeviceToHost),
                     "fetch lse");
          got_lse.push_back(static_cast<double>(x));
        }
        row.cpu_rel = rel_error(got, oracle.o);
        double lse_err = 0;
        for (std::size_t i = 0; i < got_lse.size(); ++i) {
          lse_err = std::max(lse_err, std::isfinite(got_lse[i]) ? std::fabs(got_lse[i] - oracle.lse[i])
                                                                : std::numeric_limits<double>::infinity());
        }
        if (ref_name.empty()) row.lse_max_abs = lse_err;
        if (ok && !(row.cpu_rel <= opt_.tol_fwd)) {
          ok = false;
          reason = "O differs from float64 at sampled rows: rel err " + fmt_err(row.cpu_rel);
        }
        if (ok && !(lse_err <= opt_.tol_lse)) {
          ok = false;
          reason = "LSE differs from float64 at sampled rows: max abs err " + fmt_err(lse_err);
        }
        if (!ok) {
          row.status = "FAILED";
          row.reason = reason;
          emit(std::move(row));
          continue;
        }
        if (ref_name.empty() && may_be_ref(k)) {  // the reference of every faster kernel: float32 O
          ref_o_ = DeviceBuffer(sizeof(float) * static_cast<std::size_t>(nq));
          ref_lse_ = DeviceBuffer(sizeof(float) * static_cast<std::size_t>(nl));
          rc::forward(fwd_args(ref_o_.get(), rc::DType::F32, ref_lse_.f32()), k, stream_);
          check_cuda(cudaStreamSynchronize(stream_), "reference forward");
          ref_name = std::string(rc::to_string(k));
        }
        if (row.ref_only) continue;  // checked; not timed (Simple above --simple-max-seq)
        row.timing = time_calls([&] { rc::forward(args, k, stream_); }, stream_, opt_);
        check_cuda(cudaStreamSynchronize(stream_), "forward timing");
        if (!(row.timing->median_ms > 0)) {
          row.status = "FAILED";
          row.reason = "zero median time after " + std::to_string(row.timing->reps) + " repetitions";
        } else {
          row.status = "OK";
        }
      } catch (const std::exception& e) {
        row.status = "FAILED";
        row.reason = e.what();
        row.timing.reset();
      }
      emit(std::move(row));
      bc::throw_if_context_lost();
    }
  }

  // Backward: every kernel gets the same O (rounded to the input dtype) and LSE, from the
  // forward's reference output (or an Auto forward); each is checked like the forward.
  void run_backward_rows(std::int64_t nq, std::int64_t nkv, std::int64_t nl) {
    const bc::Elem el = elem_of(dtype_);
    DeviceBuffer o_in(bytes_of(dtype_, nq));
    DeviceBuffer lse_in(sizeof(float) * static_cast<std::size_t>(nl));
    {
      DeviceBuffer o32(sizeof(float) * static_cast<std::size_t>(nq));
      if (ref_o_.get() != nullptr) {
        check_cuda(cudaMemcpyAsync(o32.get(), ref_o_.get(), o32.bytes(), cudaMemcpyDeviceToDevice, stream_), "copy O");
        check_cuda(cudaMemcpyAsync(lse_in.get(), ref_lse_.get(), lse_in.bytes(), cudaMemcpyDeviceToDevice, stream_),
                   "copy LSE");
      } else {
        rc::forward(fwd_args(o32.get(), rc::DType::F32, lse_in.f32()), rc::Kernel::Auto, stream_);
      }
      bc::convert(o32.get(), bc::Elem::F32, o_in.get(), el, nq, stream_);
      const bc::Diff d = bc::compare(o_in.get(), el, nullptr, el, nq, stream_);
      const bc::Diff dl = bc::compare(lse_in.get(), bc::Elem::F32, nullptr, bc::Elem::F32, nl, stream_);
      if (d.bad_out > 0 || dl.bad_out > 0) {
        for (rc::Kernel k : kernels_) {
          if (!timed(k)) continue;
          Row row = base_row("bwd", k);
          row.status = "FAILED";
          row.reason = "the forward that gives the backward its O and LSE wrote NaN/inf";
          emit(std::move(row));
        }
        return;
      }
    }
    host_.dout = to_host(dout_.get(), el, nq, scratch_, stream_);
    host_.o = to_host(o_in.get(), el, nq, scratch_, stream_);
    host_.lse = to_host(lse_in.get(), bc::Elem::F32, nl, scratch_, stream_);
    host_.delta.assign(static_cast<std::size_t>(nl), 0.0);
    for (std::int64_t b = 0; b < shape_.batch; ++b) {
      for (std::int64_t i = 0; i < shape_.seq_q; ++i) {
        for (std::int64_t h = 0; h < shape_.heads_q; ++h) {
          const std::size_t base = host_.qi(b, i, h);
          double acc = 0;
          for (std::int64_t d = 0; d < shape_.head_dim; ++d) {
            acc += static_cast<double>(host_.dout[base + static_cast<std::size_t>(d)]) *
                   static_cast<double>(host_.o[base + static_cast<std::size_t>(d)]);
          }
          host_.delta[host_.li(b, h, i)] = acc;
        }
      }
    }
    std::mt19937_64 srng(rng_());
    auto q_rows = pick_samples(shape_, shape_.seq_q, srng);
    auto k_rows = pick_samples(shape_, shape_.seq_kv, srng);
    const BwdOracle oracle = backward_oracle(host_, std::move(q_rows), std::move(k_rows));

    DeviceBuffer dq(sizeof(float) * static_cast<std::size_t>(nq));
    DeviceBuffer dk(sizeof(float) * static_cast<std::size_t>(nkv));
    DeviceBuffer dv(sizeof(float) * static_cast<std::size_t>(nkv));
    DeviceBuffer delta(sizeof(float) * static_cast<std::size_t>(nl));
    DeviceBuffer ref_dq, ref_dk, ref_dv;
    std::string ref_name;
    for (rc::Kernel k : kernels_) {
      if (!timed(k) && !(may_be_ref(k) && ref_name.empty())) continue;
      Row row = base_row("bwd", k);
      row.ref_only = !timed(k);
      const rc::BackwardArgs args =
          bc::backward_args(shape_, dtype_, q_.get(), k_.get(), v_.get(), o_in.get(), dout_.get(), lse_in.f32(),
                            delta.f32(), dq.f32(), dk.f32(), dv.f32(), causal_);
      try {
        bc::fill_nan(dq.get(), bc::Elem::F32, nq, stream_);
        bc::fill_nan(dk.get(), bc::Elem::F32, nkv, stream_);
        bc::fill_nan(dv.get(), bc::Elem::F32, nkv, stream_);
        bc::fill_nan(delta.get(), bc::Elem::F32, nl, stream_);
        check_cuda(cudaStreamSynchronize(stream_), "poison");
        try {
          rc::backward(args, k, stream_);
        } catch (const ringattn::Error& e) {
          // Rejected before launch (e.g. a head dim this version does not support): n/a, if the
          // device is still healthy; a CUDA failure is a failure.
          if (cudaStreamSynchronize(stream_) == cudaSuccess && cudaGetLastError() == cudaSuccess) {
            row.status = "n/a";
            row.reason = e.what();
            if (!row.ref_only) emit(std::move(row));
            continue;
          }
          throw;
        }
        check_cuda(cudaStreamSynchronize(stream_), "backward");
        bool ok = true;
        std::string reason;
        const bool have_ref = !ref_name.empty();
        const bc::Diff ddq = bc::compare(dq.get(), bc::Elem::F32, have_ref ? ref_dq.get() : nullptr, bc::Elem::F32, nq, stream_);
        const bc::Diff ddk = bc::compare(dk.get(), bc::Elem::F32, have_ref ? ref_dk.get() : nullptr, bc::Elem::F32, nkv, stream_);
        const bc::Diff ddv = bc::compare(dv.get(), bc::Elem::F32, have_ref ? ref_dv.get() : nullptr, bc::Elem::F32, nkv, stream_);
        if (ddq.bad_out + ddk.bad_out + ddv.bad_out > 0) {
          ok = false;
          reason = bc::unwritten_grads(ddq, ddk, ddv);
        }
        if (have_ref) {
          row.ref_kernel = ref_name;
          row.ref_rel = std::max({rel_error(ddq), rel_error(ddk), rel_error(ddv)});
          row.ref_max_abs = std::max({ddq.max_abs, ddk.max_abs, ddv.max_abs});
          if (ok && !(row.ref_rel <= opt_.tol_bwd)) {
            ok = false;
            reason = "dQ/dK/dV differ from " + ref_name + ": rel err dQ " + fmt_err(rel_error(ddq)) + " dK " +
                     fmt_err(rel_error(ddk)) + " dV " + fmt_err(rel_error(ddv)) + " > " + fmt_err(opt_.tol_bwd);
          }
        }
        std::vector<double> gq, gk, gv;
        fetch_rows(dq.get(), bc::Elem::F32, oracle.q_rows, shape_.seq_q, shape_.heads_q, shape_.head_dim, false, 1, gq,
                   stream_);
        fetch_rows(dk.get(), bc::Elem::F32, oracle.k_rows, shape_.seq_kv, shape_.heads_kv, shape_.head_dim, true,
                   shape_.group_size(), gk, stream_);
        fetch_rows(dv.get(), bc::Elem::F32, oracle.k_rows, shape_.seq_kv, shape_.heads_kv, shape_.head_dim, true,
                   shape_.group_size(), gv, stream_);
        const double eq = rel_error(gq, oracle.dq), ek = rel_error(gk, oracle.dk), ev = rel_error(gv, oracle.dv);
        row.cpu_rel = std::max({eq, ek, ev});
        if (ok && !(row.cpu_rel <= opt_.tol_bwd)) {
          ok = false;
          reason = "differs from float64 at sampled rows: rel err dQ " + fmt_err(eq) + " dK " + fmt_err(ek) + " dV " +
                   fmt_err(ev);
        }
        if (!ok) {
          row.status = "FAILED";
          row.reason = reason;
          emit(std::move(row));
          bc::throw_if_context_lost();
          continue;
        }
        if (!have_ref && may_be_ref(k)) {
          ref_dq = DeviceBuffer(dq.bytes());
          ref_dk = DeviceBuffer(dk.bytes());
          ref_dv = DeviceBuffer(dv.bytes());
          check_cuda(cudaMemcpyAsync(ref_dq.get(), dq.get(), dq.bytes(), cudaMemcpyDeviceToDevice, stream_), "copy");
          check_cuda(cudaMemcpyAsync(ref_dk.get(), dk.get(), dk.bytes(), cudaMemcpyDeviceToDevice, stream_), "copy");
          check_cuda(cudaMemcpyAsync(ref_dv.get(), dv.get(), dv.bytes(), cudaMemcpyDeviceToDevice, stream_), "copy");
          check_cuda(cudaStreamSynchronize(stream_), "copy reference");
          ref_name = std::string(rc::to_string(k));
        }
        if (row.ref_only) continue;
        row.timing = time_calls([&] { rc::backward(args, k, stream_); }, stream_, opt_);
        check_cuda(cudaStreamSynchronize(stream_), "backward timing");
        if (!(row.timing->median_ms > 0)) {
          row.status = "FAILED";
          row.reason = "zero median time after " + std::to_string(row.timing->reps) + " repetitions";
        } else {
          row.status = "OK";
        }
      } catch (const std::exception& e) {
        row.status = "FAILED";
        row.reason = e.what();
        row.timing.reset();
      }
      emit(std::move(row));
      bc::throw_if_context_lost();
    }
  }

 public:
  int failed() const { return failed_; }

 private:
  Options opt_;
  bc::DeviceStream stream_;
  rc::DType dtype_ = rc::DType::BF16;
  std::vector<rc::Kernel> kernels_;
  std::mt19937_64 rng_;
  AttentionShape shape_;
  bool causal_ = false;
  DeviceBuffer q_, k_, v_, dout_, scratch_, ref_o_, ref_lse_;
  HostCase host_;
  std::vector<Row> rows_;
  int failed_ = 0;
};

void write_csv(const std::string& path, const std::vector<Row>& rows) {
  std::ofstream f(path);
  if (!f) throw std::runtime_error("cannot write " + path);
  f << "dir,dtype,head_dim,seq,batch,heads,causal,kernel,status,ms,ms_min,ms_max,reps,tflops,ref_kernel,ref_rel_err,"
       "cpu_rel_err,reason\n";
  for (const Row& r : rows) {
    std::string reason = r.reason;
    std::replace(reason.begin(), reason.end(), '"', '\'');
    f << r.dir << ',' << r.dtype << ',' << r.head_dim << ',' << r.seq << ',' << r.batch << ',' << r.heads << ','
      << (r.causal ? 1 : 0) << ',' << r.kernel << ',' << r.status << ',';
    if (r.timing) {
      f << r.timing->median_ms << ',' << r.timing->min_ms << ',' << r.timing->max_ms << ',' << r.timing->reps << ','
        << tflops(r);
    } else {
      f << ",,,,";
    }
    f << ',' << r.ref_kernel << ',' << (std::isnan(r.ref_rel) ? std::string() : fmt_err(r.ref_rel)) << ','
      << (std::isnan(r.cpu_rel) ? std::string() : fmt_err(r.cpu_rel)) << ",\"" << reason << "\"\n";
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  CLI::App app{"bench_attention_cuda: CUDA-event timings of the CUDA attention kernels, each checked first"};
  app.add_flag("--quick", opt.quick, "D=128, S=2k and 8k, fewer repetitions (what gpu-check.sh --quick runs)");
  app.add_option("--json", opt.json_path, "write every row (and the device) as JSON to this file");
  app.add_option("--csv", opt.csv_path, "write every row as CSV to this file");
  app.add_option("--dims", opt.dims, "head dims (H = --width / D)")->delimiter(',');
  app.add_option("--seqs", opt.seqs, "sequence lengths S = S_q = S_kv")->delimiter(',');
  app.add_option("--kernels", opt.kernel_names, "kernel versions: simple, tiled, tensor-core, auto")->delimiter(',');
  app.add_option("--dirs", opt.dirs, "fwd, bwd")->delimiter(',');
  app.add_option("--mask", opt.mask, "both, full (non-causal) or causal")->check(CLI::IsMember({"both", "full", "causal"}));
  app.add_option("--dtype", opt.dtype_name, "input dtype: bf16 or fp16");
  app.add_flag("--out-f32", opt.out_f32, "forward writes float32 O (default: O in the input dtype, like flash-attention)");
  app.add_option("--tokens", opt.tokens, "B * S (B = max(1, tokens / S))");
  app.add_option("--width", opt.head_dim_width, "H * D");
  app.add_option("--simple-max-seq", opt.simple_max_seq, "time Simple only up to this S");
  app.add_option("--ref-simple-max-seq", opt.ref_simple_max_seq, "use Simple as the reference up to this S");
  app.add_option("--warmup", opt.warmup, "warm-up calls before timing");
  app.add_option("--min-reps", opt.min_reps, "fewest timed repetitions (3 for calls over 100 ms)");
  app.add_option("--max-reps", opt.max_reps, "most timed repetitions");
  app.add_option("--target-ms", opt.target_ms, "time to spend per row, which sets the repetitions");
  app.add_option("--tol-fwd", opt.tol_fwd, "largest relative L2 error of O");
  app.add_option("--tol-bwd", opt.tol_bwd, "largest relative L2 error of dQ, dK, dV");
  app.add_option("--tol-lse", opt.tol_lse, "largest absolute error of LSE");
  app.add_option("--seed", opt.seed, "input seed (0: a fresh one each run)");
  app.add_option("--device", opt.device, "CUDA device index");
  CLI11_PARSE(app, argc, argv);
  if (opt.quick) {
    if (app.count("--dims") == 0) opt.dims = {128};
    if (app.count("--seqs") == 0) opt.seqs = {2048, 8192};
    if (app.count("--min-reps") == 0) opt.min_reps = 5;
    if (app.count("--target-ms") == 0) opt.target_ms = 100;
    if (app.count("--warmup") == 0) opt.warmup = 1;
  }

  if (!bc::have_device("bench_attention_cuda")) return 1;
  const auto t0 = Clock::now();
  nlohmann::json out;
  std::vector<Row> rows;
  int failed = 0;
  std::string fatal;
  // Written after every case (with "complete": false), so a run cut short keeps its rows.
  const auto save = [&](bool complete, bool ok) {
    out["rows"] = nlohmann::json::array();
    for (const Row& r : rows) out["rows"].push_back(to_json(r));
    out["ok"] = ok;
    out["complete"] = complete;
    out["fatal"] = fatal;
    out["seconds"] = std::chrono::duration<double>(Clock::now() - t0).count();
    out["options"] = {{"quick", opt.quick}, {"tokens", opt.tokens}, {"width", opt.head_dim_width},
                      {"dtype", opt.dtype_name}, {"out_f32", opt.out_f32}, {"tol_fwd", opt.tol_fwd},
                      {"tol_bwd", opt.tol_bwd}, {"tol_lse", opt.tol_lse}, {"target_ms", opt.target_ms},
                      {"min_reps", opt.min_reps}, {"max_reps", opt.max_reps}, {"warmup", opt.warmup}};
    if (!opt.json_path.empty()) bc::write_atomically(opt.json_path, out.dump(2) + "\n");
    if (!opt.csv_path.empty()) write_csv(opt.csv_path, rows);
  };
  try {
    out["device"] = bc::device_json(opt.device, true);
    std::printf("device: %s (sm_%s, %d SMs); %s, B*S = %lld tokens, H*D = %lld; tolerances fwd %.0e bwd %.0e lse %.0e\n",
                out["device"]["name"].get<std::string>().c_str(),
                out["device"]["compute_capability"].get<std::string>().c_str(),
                out["device"]["multiprocessors"].get<int>(), opt.dtype_name.c_str(), static_cast<long long>(opt.tokens),
                static_cast<long long>(opt.head_dim_width), opt.tol_fwd, opt.tol_bwd, opt.tol_lse);
    print_header();
    Bench bench(opt);
    const std::vector<bool> masks = bc::masks_of(opt.mask);
    try {
      for (int D : opt.dims) {
        for (std::int64_t S : opt.seqs) {
          for (bool causal : masks) {
            bench.run_case(D, S, causal);
            rows = bench.rows();
            save(false, false);
          }
        }
      }
    } catch (const std::exception& e) {
      fatal = e.what();
    }
    rows = bench.rows();
    failed = bench.failed();
  } catch (const std::exception& e) {
    fatal = e.what();
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  int timed = 0;
  for (const Row& r : rows) timed += r.timing ? 1 : 0;
  const bool ok = fatal.empty() && failed == 0 && timed > 0;
  try {
    save(true, ok);
  } catch (const std::exception& e) {
    std::printf("bench_attention_cuda: %s\n", e.what());
    return 1;
  }
  return bc::print_end(fatal, rows.size(), timed, failed, secs, ok);
}
