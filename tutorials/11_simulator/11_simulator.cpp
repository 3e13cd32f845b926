// 11_simulator: a 1M-token layer on 8 GPUs over NVLink vs 32 over InfiniBand, and the block size.
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
// What this one shows: the discrete-event simulator (ringattn::sim, docs/simulator.md) asked the
// question of someone planning long-context training: one causal attention layer of 1,048,576
// tokens, Llama-like (32 query heads sharing 8 K/V heads, D = 128, bf16, zigzag layout), forward
// and backward, on 8 H100s over NVLink (preset h100-nvlink) and on 32 H100s over InfiniBand
// (preset h100-ib). It prints the layer time, the busiest device's compute, the communication left
// exposed, the overlap efficiency and the memory per device. Then it chooses the block size c
// (tokens per device): first by the Ring Attention paper's rule c >= F/B (F the peak FLOP/s, B
// the link's bytes/s), checked against the simulator under --ideal (the paper's model) and
// corrected for GQA and the causal mask; then by the full model's block-size sweep.
//
// What it leaves out: how the simulator works inside (events, streams, buffers: docs/simulator.md),
// the layouts' load balance (06), the efficiency curve's origin (published FlashAttention figures,
// not measured on this project's kernels: docs/simulator.md, "Validation"), real hardware (09 runs
// a real ring over MPI, 10 a real kernel).
//
// Run: build/bin/tutorial_11_simulator [--step]   (--step pauses between stages)
// Needs: nothing beyond the build (CPU only; about 200 simulated layers, well under a second).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "ringattn/core/layout.hpp"
#include "ringattn/simulator/cluster.hpp"
#include "ringattn/simulator/simulate.hpp"
#include "tutorial.hpp"

namespace {

namespace sim = ringattn::sim;
using ringattn::tutorial::format;

constexpr std::int64_t kSeq = std::int64_t{1} << 20;  // 1,048,576 tokens
constexpr std::int64_t kHeadsQ = 32, kHeadsKv = 8, kDim = 128;
constexpr double kExposedLimit = 0.05;  // the sweep's recommended block: <= 5% of the layer exposed

// One of the two clusters of the question.
struct Setup {
  const char* label;  // short name for the tables
  sim::ClusterSpec cluster;
  int devices;
  [[nodiscard]] double flops() const { return cluster.device.peak_flops(sim::DType::BF16); }  // F
  [[nodiscard]] double bandwidth() const { return cluster.hop(0, devices).bandwidth; }       // B
  [[nodiscard]] std::int64_t block() const { return kSeq / devices; }                         // c
};

// The Llama-like layer: S tokens, 32 query heads over 8 K/V heads, D = 128, bf16, causal, zigzag.
sim::Workload llama_layer(std::int64_t seq, sim::Pass pass) {
  sim::Workload w;
  w.seq_len = seq;
  w.heads_q = kHeadsQ;
  w.heads_kv = kHeadsKv;
  w.head_dim = kDim;
  w.dtype = sim::DType::BF16;
  w.causal = true;
  w.layout = ringattn::Layout::Zigzag;
  w.pass = pass;
  return w;
}

// The paper's setting: every head has its own K/V (MHA), no mask, forward only.
sim::Workload paper_layer(std::int64_t seq) {
  sim::Workload w = llama_layer(seq, sim::Pass::Forward);
  w.heads_kv = kHeadsQ;
  w.causal = false;
  w.layout = ringattn::Layout::Contiguous;
  return w;
}

sim::SimOptions ideal() {
  sim::SimOptions o;
  o.ideal = true;
  return o;
}

std::string time_string(double s) {
  if (s >= 1) return format("%.3f s", s);
  if (s >= 1e-3) return format("%.3f ms", s * 1e3);
  return format("%.1f us", s * 1e6);
}

std::string gib(double bytes) { return format("%.2f GiB", bytes / static_cast<double>(1 << 30)); }

// One row of a two-column table.
void row(const std::string& what, const std::string& a, const std::string& b) {
  std::printf("  %-28s %22s %22s\n", what.c_str(), a.c_str(), b.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  return ringattn::tutorial::run([&] {
    ringattn::tutorial::Tutorial t(argc, argv, "11_simulator",
                                   "1M tokens on 8 NVLink GPUs vs 32 over InfiniBand; the block size");

    const std::vector<Setup> setups = {{"8 x NVLink", sim::load_cluster("h100-nvlink"), 8},
                                       {"32 x InfiniBand", sim::load_cluster("h100-ib"), 32}};
    const Setup& nv = setups[0];
    const Setup& ib = setups[1];

    // ---------------------------------------------------------------------------------------
    t.stage("The question: one 1M-token layer, two clusters");
    t.say(format("Layer: S = %lld tokens, causal, H_q = %lld query heads sharing H_kv = %lld K/V heads",
                 static_cast<long long>(kSeq), static_cast<long long>(kHeadsQ),
                 static_cast<long long>(kHeadsKv)));
    t.say("(GQA, as in Llama), D = 128, bf16, zigzag layout (06: every device gets half of each");
    t.say("causal block), forward + backward: the attention of one training step.");
    for (const Setup& s : setups) {
      const sim::LinkSpec& link = s.cluster.hop(0, s.devices);
      t.say(format("%-16s preset %-12s %s, %.0f TFLOP/s bf16, %.0f GiB; hops: %s %.0f GB/s, %.0f us",
                   s.label, s.cluster.name.c_str(), s.cluster.device.name.c_str(), s.flops() / 1e12,
                   s.cluster.device.memory_bytes / static_cast<double>(1 << 30), link.name.c_str(),
                   link.bandwidth / 1e9, link.latency_s * 1e6));
    }
    t.say("h100-ib puts every hop on InfiniBand (one GPU per host). Four DGX nodes (dgx-h100-ib)");
    t.say("would have 4 InfiniBand hops among 32, but every block crosses every hop, so the ring");
    t.say("still waits on InfiniBand: stage 4 checks they need the same block.");

    // ---------------------------------------------------------------------------------------
    t.stage("The prediction: layer time, exposed communication, memory");
    std::vector<sim::SimResult> res;
    for (const Setup& s : setups) {
      res.push_back(sim::simulate(s.cluster, s.devices, llama_layer(kSeq, sim::Pass::ForwardBackward)));
    }
    const sim::SimResult& rn = res[0];
    const sim::SimResult& ri = res[1];
    std::printf("\n");
    row("", nv.label, ib.label);
    row("tokens per device c", format("%lld", static_cast<long long>(rn.block_size)),
        format("%lld", static_cast<long long>(ri.block_size)));
    row("layer time (fwd+bwd)", time_string(rn.total_time_s), time_string(ri.total_time_s));
    row("  forward ends at", time_string(rn.forward_time_s), time_string(ri.forward_time_s));
    row("compute, busiest device", time_string(rn.compute_time_s), time_string(ri.compute_time_s));
    row("exposed communication", time_string(rn.exposed_comm_s), time_string(ri.exposed_comm_s));
    row("  share of the layer", format("%.2f %%", 100 * rn.exposed_fraction()),
        format("%.2f %%", 100 * ri.exposed_fraction()));
    row("overlap efficiency", format("%.4f", rn.overlap_efficiency), format("%.4f", ri.overlap_efficiency));
    row("load imbalance", format("%.4f", rn.load_imbalance), format("%.4f", ri.load_imbalance));
    row("busiest link busy", time_string(rn.link_busy_s), time_string(ri.link_busy_s));
    row("achieved TFLOP/s per device", format("%.1f (%.0f %%)", rn.achieved_flops_per_device / 1e12,
                                              100 * rn.achieved_flops_per_device / nv.flops()),
        format("%.1f (%.0f %%)", ri.achieved_flops_per_device / 1e12,
               100 * ri.achieved_flops_per_device / ib.flops()));
    row("memory per device", gib(rn.peak_memory_bytes), gib(ri.peak_memory_bytes));
    std::printf("\n");
    t.say("exposed = layer time - busiest compute: the time the busiest device waits on a transfer;");
    t.say("overlap efficiency = busiest compute / layer time. Both rings hide their K/V transfers;");
    t.say("what shows is the last dK/dV hop home, which has no compute left to hide behind (stage 3).");
    t.say("Kernels reach ~55% of peak here (the presets' efficiency curve, from FlashAttention 2/3).");
    for (std::size_t i = 0; i < setups.size(); ++i) {
      t.check(res[i].total_time_s >= res[i].compute_time_s && res[i].compute_time_s > 0,
              format("%s: the layer takes at least its busiest device's compute", setups[i].label),
              format("%s >= %s", time_string(res[i].total_time_s).c_str(),
                     time_string(res[i].compute_time_s).c_str()));
    }
    // Causal: query i sees keys 0..i, S(S+1)/2 pairs per head; 4 D FLOPs per pair forward
    // (QK^T and PV), 2.5x that backward (docs/simulator.md), whatever the number of devices.
    const double pairs = static_cast<double>(kSeq) * static_cast<double>(kSeq + 1) / 2;
    const double want_flops = 3.5 * 4.0 * kHeadsQ * kDim * pairs;
    t.say(format("FLOPs of the layer: 3.5 x 4 x H_q x D x S(S+1)/2 = %.4e (causal pairs only)", want_flops));
    t.check(std::abs(rn.flops - want_flops) <= 1e-12 * want_flops &&
                std::abs(ri.flops - want_flops) <= 1e-12 * want_flops,
            "both rings compute exactly the causal pairs, no more",
            format("%.6e and %.6e FLOPs", rn.flops, ri.flops));
    const double mem_ratio = rn.peak_memory_bytes / ri.peak_memory_bytes;
    t.check(std::abs(mem_ratio - 4) <= 1e-9 && rn.fits_in_memory && ri.fits_in_memory,
            "memory per device is linear in c: 4x the devices, 1/4 the memory (both fit in 80 GiB)",
            format("ratio %.6f", mem_ratio));
    const double speedup = rn.total_time_s / ri.total_time_s;
    const double ideal_speedup =
        sim::simulate(nv.cluster, nv.devices, llama_layer(kSeq, sim::Pass::ForwardBackward), ideal()).total_time_s /
        sim::simulate(ib.cluster, ib.devices, llama_layer(kSeq, sim::Pass::ForwardBackward), ideal()).total_time_s;
    t.say(format("32 InfiniBand GPUs over 8 NVLink GPUs: %.2fx faster (full model), %.3fx under --ideal:",
                 speedup, ideal_speedup));
    t.say("the full model's smaller kernel calls (32768 rows) run at a lower fraction of peak; under");
    t.say("--ideal only the last dK/dV hop (0.5% of the 32-GPU layer) keeps it from 4.");
    t.check(std::abs(ideal_speedup - 4) <= 0.01 * 4,
            "with the transfers hidden, 4x the devices is 4x faster (--ideal, to 1%)",
            format("%.4f", ideal_speedup));

    // ---------------------------------------------------------------------------------------
    t.stage("The block size by the paper's rule: c >= F/B");
    t.say("A ring step computes a device's c queries against a block of c keys: 4 D c^2 FLOPs per");
    t.say("head (QK^T and PV), in 4 D c^2 / F seconds. Meanwhile the next block's K and V move:");
    t.say("2 c D bf16 numbers = 4 c D bytes per head, in 4 c D / B seconds. The transfer hides when");
    t.say("4 D c^2 / F >= 4 c D / B, that is c >= F/B (Ring Attention, Liu et al. 2023, section 3).");
    std::vector<double> rule(setups.size());
    for (std::size_t i = 0; i < setups.size(); ++i) {
      const Setup& s = setups[i];
      rule[i] = s.flops() / s.bandwidth();
      t.say(format("%-16s F / B = %.0f TFLOP/s / %.0f GB/s = %.1f tokens", s.label, s.flops() / 1e12,
                   s.bandwidth() / 1e9, rule[i]));
    }
    t.say("The simulator under --ideal (the paper's model: peak FLOP/s, no latency, no overheads), on");
    t.say("the paper's setting (every head its own K/V, no mask, forward), sweeping c:");
    for (std::size_t i = 0; i < setups.size(); ++i) {
      const Setup& s = setups[i];
      const sim::SweepResult sw = sim::sweep(s.cluster, s.devices, paper_layer(kSeq), sim::SweepKind::BlockSize,
                                             ideal(), sim::SweepOptions{});
      const double got = sw.min_overlapped_block ? static_cast<double>(*sw.min_overlapped_block) : NAN;
      t.check(std::abs(got - rule[i]) <= 0.01 * rule[i] && got >= rule[i],
              format("%s: smallest block with nothing exposed = ceil(F/B) to 1%%", s.label),
              format("%.0f tokens vs F/B = %.1f", got, rule[i]));
    }
    t.say(format("Our layer moves less and computes less per step. GQA: K and V have H_kv/H_q = %lld/%lld",
                 static_cast<long long>(kHeadsKv), static_cast<long long>(kHeadsQ)));
    t.say("of the heads, so 1/4 of the bytes. Causal zigzag: after the first step a device sees half");
    t.say("of each block, so half the FLOPs. Both together: c >= F/B x (H_kv/H_q) x 2 = F/(2B).");
    std::vector<double> llama_rule(setups.size());
    for (std::size_t i = 0; i < setups.size(); ++i) {
      const Setup& s = setups[i];
      llama_rule[i] = rule[i] * static_cast<double>(kHeadsKv) / static_cast<double>(kHeadsQ) * 2;
      const sim::SweepResult sw = sim::sweep(s.cluster, s.devices, llama_layer(kSeq, sim::Pass::Forward),
                                             sim::SweepKind::BlockSize, ideal(), sim::SweepOptions{});
      const double got = sw.min_overlapped_block ? static_cast<double>(*sw.min_overlapped_block) : NAN;
      t.check(std::abs(got - llama_rule[i]) <= 0.01 * llama_rule[i],
              format("%s, our layer's forward: smallest hidden block = F/(2B) to 1%%", s.label),
              format("%.0f tokens vs %.1f", got, llama_rule[i]));
    }
    t.say("The backward moves K/V (bf16) and the block's dK/dV (fp32) every step: 3x the bytes for");
    t.say("2.5x the FLOPs, so it needs 1.2x the forward's block. And the last dK/dV hop, home to the");
    t.say("block's owner, comes after the last compute: it is exposed whatever c. Under --ideal it is");
    t.say("all that shows: one transfer of 2 c H_kv D x 4 bytes.");
    for (const Setup& s : setups) {
      const sim::SimResult r = sim::simulate(s.cluster, s.devices, llama_layer(kSeq, sim::Pass::ForwardBackward), ideal());
      const double hop = 2.0 * static_cast<double>(s.block()) * kHeadsKv * kDim * 4 / s.bandwidth();
      t.check(std::abs(r.exposed_comm_s - hop) <= 0.01 * hop,
              format("%s, --ideal fwd+bwd: exposed = the last dK/dV hop", s.label),
              format("%s vs %s", time_string(r.exposed_comm_s).c_str(), time_string(hop).c_str()));
    }

    // ---------------------------------------------------------------------------------------
    t.stage("The block size by the full simulation");
    t.say("The full model adds what --ideal leaves out: kernels at ~55% of peak (slower compute hides");
    t.say("longer transfers), 3-5 us link latency, 4 us per kernel launch, the merges, and 5% compute");
    t.say("lost while a transfer runs. Sweeping c (S = N c) for our layer, fwd+bwd:");
    std::vector<sim::SweepResult> sweeps;
    for (const Setup& s : setups) {
      sweeps.push_back(sim::sweep(s.cluster, s.devices, llama_layer(kSeq, sim::Pass::ForwardBackward),
                                  sim::SweepKind::BlockSize, sim::SimOptions{}, sim::SweepOptions{}));
    }
    std::printf("\n  %8s   %-27s  %-27s\n", "c", nv.label, ib.label);
    std::printf("  %8s   %13s %13s  %13s %13s\n", "", "layer", "exposed", "layer", "exposed");
    const std::size_t points = std::min(sweeps[0].points.size(), sweeps[1].points.size());
    for (std::size_t p = 0; p < points; ++p) {
      const sim::SimResult& a = sweeps[0].points[p].result;
      const sim::SimResult& b = sweeps[1].points[p].result;
      std::printf("  %8lld   %13s %11.1f %%  %13s %11.1f %%%s\n", static_cast<long long>(a.block_size),
                  time_string(a.total_time_s).c_str(), 100 * a.exposed_fraction(),
                  time_string(b.total_time_s).c_str(), 100 * b.exposed_fraction(),
                  a.block_size == nv.block() ? "   <- 1M on 8" : (b.block_size == ib.block() ? "   <- 1M on 32" : ""));
    }
    std::printf("\n");
    const auto rec = [](const sim::SweepResult& s) {
      return s.recommended_block_size ? static_cast<double>(*s.recommended_block_size) : NAN;
    };
    const double rec_nv = rec(sweeps[0]), rec_ib = rec(sweeps[1]);
    t.say(format("Recommended (smallest c from which on at most %.0f%% of the layer is exposed):",
                 100 * kExposedLimit));
    t.say(format("  %s: %.0f tokens, the smallest of the sweep: on NVLink every c hides its transfer:",
                 nv.label, rec_nv));
    t.say("  at small c a step's fixed costs (kernel launches, the merge) outlast the hop, at large c");
    t.say("  the c^2 compute does.");
    t.say(format("  %s: %.0f tokens. The rule said %.0f for the forward at peak (1.2x that for the", ib.label,
                 rec_ib, llama_rule[1]));
    t.say("  backward); at ~55% of peak the compute takes ~1.8x longer and hides a ~1.8x larger");
    t.say("  transfer, and 5% exposed is allowed.");
    t.check(rec_ib > rec_nv, "InfiniBand needs a larger block than NVLink",
            format("%.0f vs %.0f tokens", rec_ib, rec_nv));
    const sim::SweepResult dgx = sim::sweep(sim::load_cluster("dgx-h100-ib"), ib.devices,
                                            llama_layer(kSeq, sim::Pass::ForwardBackward),
                                            sim::SweepKind::BlockSize, sim::SimOptions{}, sim::SweepOptions{});
    const double rec_dgx = rec(dgx);
    t.check(std::abs(rec_dgx - rec_ib) <= 0.1 * rec_ib,
            "4 DGX nodes (4 of 32 hops InfiniBand) need the same block as all-InfiniBand, to 10%",
            format("%.0f vs %.0f tokens: a ring is as slow as its slowest hop", rec_dgx, rec_ib));
    for (std::size_t i = 0; i < setups.size(); ++i) {
      const bool above = static_cast<double>(setups[i].block()) >= rec(sweeps[i]);
      t.check(above && res[i].exposed_fraction() <= kExposedLimit,
              format("%s: the 1M layer's c is above the recommended block and hides its transfers", setups[i].label),
              format("c = %lld, %.2f %% exposed", static_cast<long long>(setups[i].block()),
                     100 * res[i].exposed_fraction()));
    }
    t.say(format("So: over InfiniBand keep c >= ~%.0f tokens: 1M tokens could spread over up to %lld GPUs",
                 rec_ib, static_cast<long long>(static_cast<double>(kSeq) / rec_ib)));
    t.say("before the transfers show. On 8 NVLink GPUs the link never decides c: choose it for memory");
    t.say(format("(%s per device at c = %lld) and kernel efficiency (large calls run nearer peak).",
                 gib(rn.peak_memory_bytes).c_str(), static_cast<long long>(nv.block())));
    return t.finish();
  });
}
