/// @file mpi_overlap.cpp
/// @brief How well the MPI ring hides its K/V transfers behind the compute (docs/results.md).
///
/// Run under mpirun (-np 1 or more; one rank per core). For every per-rank block size c, mask
/// (non-causal contiguous, causal zigzag) and K/V head count, every rank builds its shards of the
/// same random Q, K, V (B = 1, S = c * N, float32) and, interleaved over the repetitions with an
/// MPI_Barrier before each timed call:
///   compute  the same per-rank work without communication: ring_forward_step (ring_backward_step)
///            for every step of the real schedule, on local copies of every rank's K/V shard, so
///            each step's masks and block shapes are those of the ring;
///   ring     ringattn::ref::mpi::ring_forward (ring_backward) over MPI_COMM_WORLD.
/// Each time is the slowest rank's (MPI_Allreduce MAX); the table gives medians over the
/// repetitions and overlap efficiency = compute / ring wall time (1 = every transfer hidden).
/// It also gives the bytes each rank sends per step, the link bandwidth the transfer needs to
/// hide behind one step's compute (bytes per step / compute per step), the ring's RingTiming
/// (compute_s, wait_s) and, with --link-mbit, the efficiency predicted for that link from the
/// measured compute (see predict() in run()): a step's transfer hides when compute per step >=
/// bytes per step / bandwidth, i.e. c >= 2 F H_kv / (H_q B) for the forward (min_overlap_block of
/// core/cost.hpp at 4-byte elements, scaled by H_kv / H_q); the backward's last dK/dV hop never
/// hides. "best-of efficiency" is the fastest compute over the fastest ring call (noise check).
/// Before timing, the ring's results are checked against the compute-alone ones (O, LSE, dQ on
/// every rank; dK, dV after summing the compute-alone contributions on their owner).
///
/// Options (all --key=value): --sizes=256,512,1024,2048,4096 --heads=8 --heads-kv=8,2 --dim=128
/// --masks=full,causal --passes=fwd,bwd --reps=5 --link-mbit=0 (throttled link rate for the
/// prediction) --target=0.9 --target-block=2048 (the check: with >= 2 ranks and no --link-mbit,
/// every case with c >= target-block must reach efficiency >= target) --label=TEXT.
#include <mpi.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "ringattn/core/cost.hpp"
#include "ringattn/core/schedule.hpp"
#include "ringattn/reference/attention.hpp"
#include "ringattn/reference/mpi_ring.hpp"
#include "ringattn/reference/ring.hpp"

namespace {

using ringattn::Tensor;
namespace ref = ringattn::ref;

// ---- options ----------------------------------------------------------------------------------

struct Config {
  std::vector<std::int64_t> sizes{256, 512, 1024, 2048, 4096};
  std::int64_t heads = 8;
  std::vector<std::int64_t> heads_kv{8, 2};
  std::int64_t dim = 128;
  std::vector<std::string> masks{"full", "causal"};
  std::vector<std::string> passes{"fwd", "bwd"};
  int reps = 5;
  double link_mbit = 0;
  double target = 0.9;
  std::int64_t target_block = 2048;
  std::string label;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

std::vector<std::int64_t> split_ints(const std::string& s) {
  std::vector<std::int64_t> out;
  for (const std::string& item : split(s)) out.push_back(std::stoll(item));
  return out;
}

Config parse(int argc, char** argv) {
  Config c;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) {
      throw std::invalid_argument("expected --key=value, got '" + arg + "'");
    }
    const std::string key = arg.substr(2, eq - 2), value = arg.substr(eq + 1);
    if (key == "sizes") {
      c.sizes = split_ints(value);
    } else if (key == "heads") {
      c.heads = std::stoll(value);
    } else if (key == "heads-kv") {
      c.heads_kv = split_ints(value);
    } else if (key == "dim") {
      c.dim = std::stoll(value);
    } else if (key == "masks") {
      c.masks = split(value);
    } else if (key == "passes") {
      c.passes = split(value);
    } else if (key == "reps") {
      c.reps = std::stoi(value);
    } else if (key == "link-mbit") {
      c.link_mbit = std::stod(value);
    } else if (key == "target") {
      c.target = std::stod(value);
    } else if (key == "target-block") {
      c.target_block = std::stoll(value);
    } else if (key == "label") {
      c.label = value;
    } else {
      throw std::invalid_argument("unknown option --" + key);
    }
  }
  for (const std::string& m : c.masks) {
    if (m != "full" && m != "causal") throw std::invalid_argument("--masks takes full,causal");
  }
  for (const std::string& p : c.passes) {
    if (p != "fwd" && p != "bwd") throw std::invalid_argument("--passes takes fwd,bwd");
  }
  if (c.reps < 1) throw std::invalid_argument("--reps must be >= 1");
  return c;
}

// ---- helpers ----------------------------------------------------------------------------------

Tensor<float> random_tensor(std::vector<std::int64_t> shape, std::uint32_t seed) {
  Tensor<float> t(std::move(shape));
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0F, 1.0F);
  for (float& x : t.values()) x = normal(gen);
  return t;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double max_over_ranks(double x) {
  double m = 0;
  MPI_Allreduce(&x, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return m;
}

// Relative max error |a - b|_inf / max(|b|_inf, tiny) on this rank, then the max over ranks.
double rel_err(const Tensor<float>& a, const Tensor<float>& b) {
  double diff = 0, scale = 1e-30;
  for (std::int64_t i = 0; i < a.size(); ++i) {
    if (std::isinf(a[i]) && std::isinf(b[i]) && (a[i] > 0) == (b[i] > 0)) continue;
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    if (std::isfinite(b[i])) scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  if (a.size() != b.size()) diff = INFINITY;
  return max_over_ranks(diff / scale);
}

// Sums every rank's `mine` (a tensor per owner rank) onto its owner; returns this rank's sum.
Tensor<float> reduce_to_owners(const std::vector<Tensor<float>>& mine, int rank) {
  Tensor<float> sum;
  for (std::size_t owner = 0; owner < mine.size(); ++owner) {
    Tensor<float> out(mine[owner].shape());
    MPI_Reduce(mine[owner].data(), out.data(), static_cast<int>(out.size()), MPI_FLOAT, MPI_SUM,
               static_cast<int>(owner), MPI_COMM_WORLD);
    if (static_cast<int>(owner) == rank) sum = std::move(out);
  }
  return sum;
}

std::string cpus_of_this_process() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return "?";
  std::string out;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (!CPU_ISSET(c, &set)) continue;
    if (!out.empty()) out += ',';
    out += std::to_string(c);
  }
  return out;
}

// ---- one case ---------------------------------------------------------------------------------

struct Case {
  std::string mask;  // "full" (non-causal, contiguous) or "causal" (causal, zigzag)
  std::int64_t block = 0;
  std::int64_t heads_kv = 0;
};

struct Row {
  Case c;
  std::string pass;         // "fwd", "bwd", "f+b"
  double compute_s = 0;     // median over reps of the slowest rank's compute-alone time
  double wall_s = 0;        // median over reps of the slowest rank's ring wall time
  double ring_compute_s = 0;  // median of RingTiming::compute_s (max over ranks)
  double wait_s = 0;          // median of RingTiming::wait_s (max over ranks)
  double flops = 0;           // FLOPs of the busiest rank
  double bytes_per_step = 0;  // bytes one rank sends per step (K+V; + dK+dV in the backward)
  double check = 0;           // max relative error of the ring's results vs compute-alone
  double best_compute_s = 0;  // fastest repetition of each, for the best-of efficiency
  double best_wall_s = 0;
};

struct Data {
  ringattn::AttentionShape shape;
  ringattn::RingSchedule schedule;
  ref::mpi::MpiRingOptions options;
  Tensor<float> q, dout;
  std::vector<Tensor<float>> k, v;  // every rank's K/V shard (compute alone reads them all)
};

Data make_data(const Case& c, const Config& cfg, int ranks, int rank) {
  const std::int64_t seq = c.block * ranks;
  const ringattn::AttentionShape shape{1, seq, seq, cfg.heads, c.heads_kv, cfg.dim};
  const bool causal = c.mask == "causal";
  const ringattn::Layout layout = causal ? ringattn::Layout::Zigzag : ringattn::Layout::Contiguous;
  Data d{shape, ringattn::RingSchedule::for_shape(shape, layout, ranks, causal), {}, {}, {}, {}, {}};
  d.options.causal = causal;
  d.options.layout = layout;
  d.options.seq_q = seq;
  d.options.seq_kv = seq;
  const auto& ql = d.schedule.q_layout();
  const auto& kl = d.schedule.kv_layout();
  const Tensor<float> q = random_tensor({1, seq, cfg.heads, cfg.dim}, 1);
  const Tensor<float> dout = random_tensor({1, seq, cfg.heads, cfg.dim}, 4);
  d.q = ref::shard_rows(q, ql, rank);
  d.dout = ref::shard_rows(dout, ql, rank);
  const Tensor<float> k = random_tensor({1, seq, c.heads_kv, cfg.dim}, 2);
  const Tensor<float> v = random_tensor({1, seq, c.heads_kv, cfg.dim}, 3);
  for (int r = 0; r < ranks; ++r) {
    d.k.push_back(ref::shard_rows(k, kl, r));
    d.v.push_back(ref::shard_rows(v, kl, r));
  }
  return d;
}

// The forward work of this rank with no communication: every step on its local copy of the block.
ref::ForwardResult<float> compute_forward(const Data& d, int rank) {
  const int n = d.schedule.ranks();
  ref::ForwardResult<float> r{Tensor<float>(d.q.shape()),
                              Tensor<float>({d.shape.batch, d.shape.heads_q, d.q.dim(1)},
                                            -std::numeric_limits<float>::infinity())};
  for (int s = 0; s < n; ++s) {
    const auto owner = static_cast<std::size_t>(ringattn::RingSchedule::kv_owner(rank, s, n));
    ref::ring_forward_step(d.schedule, s, rank, d.q, d.k[owner], d.v[owner], d.options, r.out, r.lse);
  }
  return r;
}

// The backward work of this rank with no communication; dk/dv[owner] get its contributions.
Tensor<float> compute_backward(const Data& d, int rank, const ref::ForwardResult<float>& fwd,
                               std::vector<Tensor<float>>& dk, std::vector<Tensor<float>>& dv) {
  const int n = d.schedule.ranks();
  const Tensor<float> delta = ref::softmax_delta(fwd.out, d.dout);
  Tensor<float> dq(d.q.shape());
  dk.clear();
  dv.clear();
  for (int r = 0; r < n; ++r) {
    dk.emplace_back(d.k[static_cast<std::size_t>(r)].shape());
    dv.emplace_back(d.k[static_cast<std::size_t>(r)].shape());
  }
  for (int s = 0; s < n; ++s) {
    const auto owner = static_cast<std::size_t>(ringattn::RingSchedule::kv_owner(rank, s, n));
    ref::ring_backward_step(d.schedule, s, rank, d.q, d.k[owner], d.v[owner], d.dout, fwd.lse, delta,
                            d.options, dq, dk[owner], dv[owner]);
  }
  return dq;
}

template <class F>
double timed(F&& f) {
  MPI_Barrier(MPI_COMM_WORLD);
  const double t0 = MPI_Wtime();
  f();
  return max_over_ranks(MPI_Wtime() - t0);
}

std::vector<Row> run_case(const Case& c, const Config& cfg, int ranks, int rank) {
  const Data d = make_data(c, cfg, ranks, rank);
  const auto self = static_cast<std::size_t>(rank);
  const bool want_fwd = std::count(cfg.passes.begin(), cfg.passes.end(), "fwd") > 0;
  const bool want_bwd = std::count(cfg.passes.begin(), cfg.passes.end(), "bwd") > 0;

  // Warm-up and check: the ring must give what the local computation gives.
  const ref::ForwardResult<float> local = compute_forward(d, rank);
  const ref::ForwardResult<float> ring = ref::mpi::ring_forward(MPI_COMM_WORLD, d.q, d.k[self], d.v[self], d.options);
  const double check_fwd = std::max(rel_err(ring.out, local.out), rel_err(ring.lse, local.lse));
  double check_bwd = 0;
  if (want_bwd) {
    std::vector<Tensor<float>> dk, dv;
    const Tensor<float> dq = compute_backward(d, rank, local, dk, dv);
    const ref::Gradients<float> g = ref::mpi::ring_backward(MPI_COMM_WORLD, d.q, d.k[self], d.v[self], local.out,
                                                            local.lse, d.dout, d.options);
    check_bwd = std::max({rel_err(g.dq, dq), rel_err(g.dk, reduce_to_owners(dk, rank)),
                          rel_err(g.dv, reduce_to_owners(dv, rank))});
  }

  std::vector<double> cf, wf, rcf, waitf, cb, wb, rcb, waitb;
  for (int rep = 0; rep < cfg.reps; ++rep) {
    if (want_fwd) {
      cf.push_back(timed([&] { (void)compute_forward(d, rank); }));
      ref::mpi::RingTiming t;
      wf.push_back(timed([&] {
        (void)ref::mpi::ring_forward(MPI_COMM_WORLD, d.q, d.k[self], d.v[self], d.options, &t);
      }));
      rcf.push_back(max_over_ranks(t.compute_s));
      waitf.push_back(max_over_ranks(t.wait_s));
    }
    if (want_bwd) {
      std::vector<Tensor<float>> dk, dv;
      cb.push_back(timed([&] { (void)compute_backward(d, rank, local, dk, dv); }));
      ref::mpi::RingTiming t;
      wb.push_back(timed([&] {
        (void)ref::mpi::ring_backward(MPI_COMM_WORLD, d.q, d.k[self], d.v[self], local.out, local.lse,
                                      d.dout, d.options, &t);
      }));
      rcb.push_back(max_over_ranks(t.compute_s));
      waitb.push_back(max_over_ranks(t.wait_s));
    }
  }

  // FLOPs of the busiest rank and the bytes a rank sends per step (step 0 of rank 0).
  double flops_f = 0, flops_b = 0;
  for (int r = 0; r < ranks; ++r) {
    double f = 0, b = 0;
    for (int s = 0; s < ranks; ++s) {
      const ringattn::StepCost sc = d.schedule.cost(s, r, d.shape, 4, 4);
      f += sc.flops_forward;
      b += sc.flops_backward;
    }
    flops_f = std::max(flops_f, f);
    flops_b = std::max(flops_b, b);
  }
  const double kv = ranks > 1 ? ringattn::kv_block_bytes(1, c.block, c.heads_kv, cfg.dim, 4) : 0;
  std::vector<Row> rows;
  if (want_fwd) {
    rows.push_back({c, "fwd", median(cf), median(wf), median(rcf), median(waitf), flops_f, kv, check_fwd,
                    *std::min_element(cf.begin(), cf.end()), *std::min_element(wf.begin(), wf.end())});
  }
  if (want_bwd) {
    // Per step a rank sends the next K/V block and the partial dK/dV of the block it held: one
    // block's worth on the first and last steps, two on the others (N > 2).
    rows.push_back({c, "bwd", median(cb), median(wb), median(rcb), median(waitb), flops_b,
                    (ranks > 2 ? 2 : 1) * kv, check_bwd,
                    *std::min_element(cb.begin(), cb.end()), *std::min_element(wb.begin(), wb.end())});
  }
  if (want_fwd && want_bwd) {
    std::vector<double> cs, ws;
    for (std::size_t i = 0; i < cf.size(); ++i) {
      cs.push_back(cf[i] + cb[i]);
      ws.push_back(wf[i] + wb[i]);
    }
    rows.push_back({c, "f+b", median(cs), median(ws), rows[0].ring_compute_s + rows[1].ring_compute_s,
                    rows[0].wait_s + rows[1].wait_s, flops_f + flops_b, rows[0].bytes_per_step + rows[1].bytes_per_step,
                    std::max(check_fwd, check_bwd), *std::min_element(cs.begin(), cs.end()),
                    *std::min_element(ws.begin(), ws.end())});
  }
  return rows;
}

std::string load_average() {
  double load[3] = {0, 0, 0};
  if (getloadavg(load, 3) != 3) return "?";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f, %.2f, %.2f", load[0], load[1], load[2]);
  return buf;
}

int run(int argc, char** argv) {
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const Config cfg = parse(argc, argv);

  // Where each rank runs (its allowed CPUs), gathered on rank 0.
  char host[MPI_MAX_PROCESSOR_NAME] = {};
  int host_len = 0;
  MPI_Get_processor_name(host, &host_len);
  std::string me = std::string(host) + " cpus " + cpus_of_this_process();
  me.resize(96, ' ');
  std::vector<char> all(static_cast<std::size_t>(96 * ranks));
  MPI_Gather(me.data(), 96, MPI_CHAR, all.data(), 96, MPI_CHAR, 0, MPI_COMM_WORLD);
  if (rank == 0) {
    char version[MPI_MAX_LIBRARY_VERSION_STRING] = {};
    int version_len = 0;
    MPI_Get_library_version(version, &version_len);
    std::string v(version);
    v = v.substr(0, v.find_first_of(",\n"));
    const char* btl = std::getenv("OMPI_MCA_btl");
    std::printf("# ringattn bench_mpi_overlap%s%s: %d rank(s), %s, btl=%s, H_q=%lld D=%lld B=1 float32, "
                "medians of %d after a checked warm-up; load %s\n",
                cfg.label.empty() ? "" : " ", cfg.label.c_str(), ranks, v.c_str(), btl ? btl : "default",
                static_cast<long long>(cfg.heads), static_cast<long long>(cfg.dim), cfg.reps,
                load_average().c_str());
    for (int r = 0; r < ranks; ++r) {
      std::string s(all.data() + 96 * r, 96);
      s.erase(s.find_last_not_of(' ') + 1);
      std::printf("# rank %d: %s\n", r, s.c_str());
    }
    if (cfg.link_mbit > 0) std::printf("# link for the prediction: %.0f Mbit/s\n", cfg.link_mbit);
    std::fflush(stdout);
  }

  // The ring's link as the benchmark sees it: every rank sends 32 MiB to rank + 1 while it
  // receives 32 MiB from rank - 1 (both directions busy, as in the ring), three times.
  if (ranks >= 2) {
    const int count = 8 << 20;  // floats
    std::vector<float> send(static_cast<std::size_t>(count), 1.0F), recv(send.size());
    const int next = (rank + 1) % ranks, prev = (rank + ranks - 1) % ranks;
    std::vector<double> rates;
    for (int i = 0; i < 4; ++i) {
      const double s = timed([&] {
        MPI_Sendrecv(send.data(), count, MPI_FLOAT, next, 7, recv.data(), count, MPI_FLOAT, prev, 7,
                     MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      });
      if (i > 0) rates.push_back(8.0 * 4.0 * count / s / 1e9);
    }
    if (rank == 0) {
      std::printf("# measured link: %.2f Gbit/s per direction (MPI_Sendrecv of 32 MiB around the ring, "
                  "median of 3)\n\n", median(rates));
    }
  }
  if (rank == 0) {
    if (ranks < 2) std::printf("\n");
    std::printf("| N | mask | H_kv | c | pass | MiB/step | compute ms | ring ms | efficiency | ring compute ms "
                "| wait ms | best-of efficiency | GFLOP/s/rank | needed Gbit/s | check |%s\n",
                cfg.link_mbit > 0 ? " predicted efficiency |" : "");
    std::printf("|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|%s\n",
                cfg.link_mbit > 0 ? "---|" : "");
    std::fflush(stdout);
  }

  bool ok = true;
  double worst_checked = INFINITY;
  int agree = 0, predicted_total = 0;
  // Predicted wall time on a link of B bytes/s with cs = compute per step and x = one K/V block's
  // bytes: forward (N-1) max(cs, x/B) + cs (the last block is not passed on); backward
  // max(cs, x/B) + (N-2) max(cs, 2x/B) + max(cs, x/B) + x/B (K/V and partial dK/dV share the link;
  // the last dK/dV hop home follows the last compute and cannot hide). Transfers are assumed to
  // cost no CPU time and no latency.
  const auto predict = [&](const Row& r) {
    const double bw = cfg.link_mbit * 1e6 / 8, x = ringattn::kv_block_bytes(1, r.c.block, r.c.heads_kv, cfg.dim, 4);
    const auto wall = [&](const std::string& pass, double cs) {
      if (ranks < 2) return cs;
      if (pass == "fwd") return (ranks - 1) * std::max(cs, x / bw) + cs;
      return 2 * std::max(cs, x / bw) + (ranks - 2) * std::max(cs, 2 * x / bw) + x / bw;
    };
    return r.compute_s / wall(r.pass, r.compute_s / ranks);
  };
  for (const std::string& mask : cfg.masks) {
    for (std::int64_t hkv : cfg.heads_kv) {
      for (std::int64_t block : cfg.sizes) {
        const Case c{mask, block, hkv};
        for (const Row& r : run_case(c, cfg, ranks, rank)) {
          const double eff = r.compute_s / r.wall_s;
          const double step_s = r.compute_s / ranks;  // the compute one step's transfer hides behind
          const double needed_gbit = r.bytes_per_step > 0 ? 8 * r.bytes_per_step / step_s / 1e9 : 0;
          const bool checked = ranks >= 2 && cfg.link_mbit <= 0 && block >= cfg.target_block && r.pass != "f+b";
          if (checked) {
            worst_checked = std::min(worst_checked, eff);
            if (eff < cfg.target) ok = false;
          }
          if (r.check > 1e-3) ok = false;
          if (rank != 0) continue;
          std::string predicted;
          if (cfg.link_mbit > 0 && r.pass != "f+b") {
            const double pred = predict(r);
            char buf[32];
            std::snprintf(buf, sizeof buf, " %.3f |", pred);
            predicted = buf;
            ++predicted_total;
            if ((pred >= cfg.target) == (eff >= cfg.target)) ++agree;
          } else if (cfg.link_mbit > 0) {
            predicted = " |";
          }
          std::printf("| %d | %s | %lld | %lld | %s | %.1f | %.1f | %.1f | **%.3f** | %.1f | %.1f | %.3f | %.1f | %.2f | "
                      "%.0e |%s\n",
                      ranks, mask == "full" ? "full" : "causal zigzag", static_cast<long long>(hkv),
                      static_cast<long long>(block), r.pass.c_str(), r.bytes_per_step / (1 << 20),
                      1e3 * r.compute_s, 1e3 * r.wall_s, eff, 1e3 * r.ring_compute_s, 1e3 * r.wait_s,
                      r.best_compute_s / r.best_wall_s,
                      r.flops / r.compute_s / 1e9, needed_gbit, r.check, predicted.c_str());
          std::fflush(stdout);
        }
      }
    }
  }
  if (rank == 0) {
    std::printf("\n# load after the run: %s\n", load_average().c_str());
    if (cfg.link_mbit > 0) {
      std::printf("# measured and predicted efficiency on the same side of %.2f: %d of %d rows (fwd and bwd)\n",
                  cfg.target, agree, predicted_total);
    }
    if (std::isfinite(worst_checked)) {
      std::printf("%-72s %8.3f %8s  %s\n", ("overlap efficiency, N = " + std::to_string(ranks) +
                                            ", c >= " + std::to_string(cfg.target_block) + " (worst case)")
                                               .c_str(),
                  worst_checked, (">= " + std::to_string(cfg.target).substr(0, 4)).c_str(),
                  worst_checked >= cfg.target ? "PASS" : "FAIL");
    }
    std::printf("\n%s\n", ok ? "OK" : "FAILED");
  }
  return ok ? 0 : 1;
}

}  // namespace

constexpr const char* kUsage =
    "usage: mpirun -np N bench_mpi_overlap [--key=value ...]\n"
    "  --sizes=256,512,1024,2048,4096  per-rank block sizes c (S = N c)\n"
    "  --heads=8 --heads-kv=8,2 --dim=128\n"
    "  --masks=full,causal             non-causal contiguous, causal zigzag\n"
    "  --passes=fwd,bwd --reps=5\n"
    "  --link-mbit=0                   throttled link rate, for the predicted efficiency\n"
    "  --target=0.9 --target-block=2048  with >= 2 ranks, every case with c >= target-block\n"
    "                                  must reach efficiency >= target (else FAILED, exit 1)\n"
    "  --label=TEXT\n";

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      int rank = 0;
      MPI_Comm_rank(MPI_COMM_WORLD, &rank);
      if (rank == 0) std::fputs(kUsage, stdout);
      MPI_Finalize();
      return 0;
    }
  }
  int status = 0;
  try {
    status = run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_mpi_overlap: %s\n", e.what());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  MPI_Finalize();
  return status;
}
