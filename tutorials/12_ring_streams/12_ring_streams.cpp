// Tutorial 12: the CUDA ring as a plan of stream operations, and why each wait is there.
//
// The series (tutorials/NN_topic, each a self-checking executable):
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
// What this one shows: on a GPU the ring is not a loop that waits for each transfer. Every rank
// queues work on two streams, compute (kernels) and comm (transfers), and events order the
// streams only where they must. The CUDA driver (cuda/ring.hpp) builds that work as data, a
// RingPlan (cuda/ring_plan.hpp), from core's RingSchedule. This tutorial:
//   - prints one rank's plan for 3 ranks, zigzag, causal;
//   - shows the double buffering: the next block lands in the buffer the kernels are NOT reading,
//     and its transfer is queued before this step's kernels, so it runs while they run;
//   - asks the race checker (check_hazards: CUDA's happens-before order) and drops each wait in
//     turn to see the race it prevents;
//   - runs the plan on the CPU (ring_plan_cpu.hpp) in random orders the events allow: always the
//     naive result. Then, with one wait dropped, some orders read a block before it arrived.
//   - runs the backward plan, whose dK/dV accumulators travel with their block and hop home.
//
// What it leaves out: the GPU itself (the same plan runs there, one CUDA or NCCL call per
// operation; docs/cuda-ring.md), timing and overlap measurements (bench/cuda/bench_ring_cuda),
// bf16 arithmetic.
//
// Run:   build/bin/tutorial_12_ring_streams [--step]   (--step pauses for Enter between stages)
// Needs: nothing beyond the build (CPU only: the plan library and the CPU reference).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "ringattn/core/schedule.hpp"
#include "ringattn/core/tensor.hpp"
#include "ringattn/cuda/ring_plan.hpp"
#include "ringattn/cuda/ring_plan_cpu.hpp"
#include "ringattn/reference/attention.hpp"
#include "ringattn/reference/ring.hpp"
#include "tutorial.hpp"

namespace {

namespace rc = ringattn::cuda;
namespace ref = ringattn::ref;
using ringattn::Tensor;
using ringattn::tutorial::format;
using ringattn::tutorial::Rng;

constexpr int N = 3;             // ranks
constexpr std::int64_t S = 24;   // tokens: zigzag cuts them into 2N = 6 chunks of 4
constexpr std::int64_t H = 2;    // heads
constexpr std::int64_t D = 8;    // head dimension

Tensor<double> random_tokens(Rng& rng, std::int64_t heads) {
  Tensor<double> t({1, S, heads, D});
  for (double& x : t.values()) x = static_cast<float>(rng.normal());  // float32 values: the plan runs in float
  return t;
}

std::string buffer_name(const rc::RingPlan& p, const rc::Region& r) {
  return r.buffer < 0 ? "-" : p.buffers[static_cast<std::size_t>(r.buffer)].name;
}

// What an operation reads or writes, briefly.
std::string operands(const rc::RingPlan& p, const rc::PlanOp& op) {
  switch (op.kind) {
    case rc::OpKind::Forward: return "reads " + buffer_name(p, op.k) + ", writes " + buffer_name(p, op.out);
    case rc::OpKind::Merge: return buffer_name(p, op.out) + " into " + buffer_name(p, op.acc_out);
    case rc::OpKind::Backward: return "reads " + buffer_name(p, op.k) + ", adds into " + buffer_name(p, op.dk);
    case rc::OpKind::Delta: return buffer_name(p, op.out) + ", " + buffer_name(p, op.dout) + " -> " + buffer_name(p, op.delta);
    case rc::OpKind::Copy2D:
    case rc::OpKind::Convert: return buffer_name(p, op.src) + " -> " + buffer_name(p, op.dst);
    case rc::OpKind::Fill:
    case rc::OpKind::Add: return buffer_name(p, op.dst);
    case rc::OpKind::Record:
    case rc::OpKind::Wait: return format("event e%d", op.event);
    case rc::OpKind::Shift: {
      const auto& part = op.shift.at(1).at(0);  // rank 1's send
      return buffer_name(p, part.src) + " -> rank 2's " + buffer_name(p, part.dst_next);
    }
  }
  return "";
}

// Relative L2 error of float buffers against a double tensor.
double rel_err(const Tensor<double>& got, const Tensor<double>& want) {
  double num = 0, den = 0;
  for (std::int64_t i = 0; i < want.size(); ++i) {
    const double e = got[i] - want[i];
    num += std::isnan(e) ? INFINITY : e * e;
    den += want[i] * want[i];
  }
  return std::sqrt(num / den);
}

Tensor<double> as_tensor(const std::vector<float>& v, std::vector<std::int64_t> shape) {
  Tensor<double> t(std::move(shape));
  for (std::int64_t i = 0; i < t.size(); ++i) t[i] = v[static_cast<std::size_t>(i)];
  return t;
}

void put(std::vector<float>& dst, const Tensor<double>& t) {
  for (std::int64_t i = 0; i < t.size(); ++i) dst[static_cast<std::size_t>(i)] = static_cast<float>(t[i]);
}

// Runs a forward plan on the CPU in the order drawn from @p seed; returns O gathered from the ranks.
Tensor<double> run_forward(const rc::RingPlan& plan, const ringattn::RingSchedule& schedule, const Tensor<double>& q,
                           const Tensor<double>& k, const Tensor<double>& v, std::uint32_t seed) {
  rc::PlanMemory mem(plan);
  const auto& l = schedule.q_layout();
  for (int r = 0; r < N; ++r) {
    put(mem.buffer(r, "q"), ref::shard_rows(q, l, r));
    put(mem.buffer(r, "k"), ref::shard_rows(k, l, r));
    put(mem.buffer(r, "v"), ref::shard_rows(v, l, r));
  }
  (void)rc::interpret_plan(plan, mem, seed);
  Tensor<double> out(q.shape());
  for (int r = 0; r < N; ++r) {
    ref::unshard_rows(as_tensor(mem.buffer(r, "out"), {1, l.shard_length(r), H, D}), l, r, out);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  return ringattn::tutorial::run([&] {
    ringattn::tutorial::Tutorial t(argc, argv, "12_ring_streams",
                                   "The CUDA ring as stream operations: double buffering and why each wait is there");
    Rng rng(12);
    const Tensor<double> q = random_tokens(rng, H), k = random_tokens(rng, H), v = random_tokens(rng, H);
    const Tensor<double> dout = random_tokens(rng, H);
    const ringattn::AttentionShape shape{1, S, S, H, H, D};
    const auto schedule = ringattn::RingSchedule::for_shape(shape, ringattn::Layout::Zigzag, N, /*causal=*/true);
    rc::PlanOptions po;
    po.input_bytes = 4;  // float32, so the CPU can run it
    po.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
    const rc::RingPlan fwd = rc::plan_forward(schedule, shape, po);

    // ---------------------------------------------------------------------------------------
    t.stage("One rank's plan: two streams, events between them");
    t.say(format("S = %lld tokens, zigzag over N = %d ranks (rank r holds chunks r and 5 - r), causal,",
                 static_cast<long long>(S), N));
    t.say(format("H = %lld heads, D = %lld. The whole forward plan has %zu operations for %d ranks.",
                 static_cast<long long>(H), static_cast<long long>(D), fwd.ops.size(), N));
    t.say("Rank 1's share, in the order the driver queues it (a shift is one call for all ranks):");
    std::printf("\n  %-4s %-8s %-5s %-9s %-44s %s\n", "op", "stream", "step", "kind", "what", "buffers");
    for (std::size_t i = 0; i < fwd.ops.size(); ++i) {
      const rc::PlanOp& op = fwd.ops[i];
      if (op.rank != 1 && op.kind != rc::OpKind::Shift) continue;
      std::printf("  %-4zu %-8s %-5s %-9s %-44s %s\n", i, op.stream == rc::PlanStream::Compute ? "compute" : "comm",
                  op.step < 0 ? "-" : std::to_string(op.step).c_str(), rc::to_string(op.kind), op.label.c_str(),
                  operands(fwd, op).c_str());
    }
    std::printf("\n");
    t.say("Nothing here blocks the host: a 'wait' makes one stream wait for an event another stream");
    t.say("recorded. The kernels of a step wait only for their block ('K/V block arrived'), and the");
    t.say("transfer waits only for the kernels that last read the buffer it overwrites.");

    // ---------------------------------------------------------------------------------------
    t.stage("Double buffering: the next block lands where the kernels are not reading");
    bool reads_current = true, writes_other = true, shift_first = true;
    std::map<int, std::size_t> first_forward;  // step -> index of its first forward
    for (std::size_t i = 0; i < fwd.ops.size(); ++i) {
      const rc::PlanOp& op = fwd.ops[i];
      if (op.kind == rc::OpKind::Forward) {
        first_forward.emplace(op.step, i);
        reads_current = reads_current && buffer_name(fwd, op.k) == (op.step % 2 == 0 ? "kv0" : "kv1");
      }
    }
    for (std::size_t i = 0; i < fwd.ops.size(); ++i) {
      const rc::PlanOp& op = fwd.ops[i];
      if (op.kind != rc::OpKind::Shift) continue;
      for (const auto& parts : op.shift) {
        writes_other = writes_other && buffer_name(fwd, parts.at(0).dst_next) == (op.step % 2 == 0 ? "kv1" : "kv0");
      }
      shift_first = shift_first && first_forward.count(op.step) && i < first_forward[op.step];
      t.say(format("step %d: the kernels read kv%d; the shift writes the next block into kv%d", op.step, op.step % 2,
                   (op.step + 1) % 2));
    }
    t.check(reads_current, "every forward at step s reads buffer kv[s mod 2]");
    t.check(writes_other, "every shift at step s writes kv[(s+1) mod 2] of the next rank");
    t.check(shift_first, "each step's shift is queued before that step's first kernel");

    // ---------------------------------------------------------------------------------------
    t.stage("The race checker: CUDA's happens-before order, and each wait dropped in turn");
    t.say("check_hazards() orders operations as CUDA does: stream order, record -> wait, and a");
    t.say("shift's transfer after the work before it on both ranks' comm streams. Then two");
    t.say("operations that touch the same bytes, one writing, must be ordered.");
    t.check(rc::check_hazards(fwd).empty(), "the forward plan has no race");
    int waits = 0, needed = 0;
    std::string example;
    for (std::size_t i = 0; i < fwd.ops.size(); ++i) {
      if (fwd.ops[i].kind != rc::OpKind::Wait) continue;
      ++waits;
      rc::RingPlan broken = fwd;
      broken.ops.erase(broken.ops.begin() + static_cast<std::ptrdiff_t>(i));
      const auto races = rc::check_hazards(broken);
      if (!races.empty()) ++needed;
      if (example.empty() && !races.empty() && fwd.ops[i].label == "K/V buffer free") {
        example = format("without op %zu (%s, rank %d): ", i, fwd.ops[i].label.c_str(), fwd.ops[i].rank) +
                  races.front().message;
      }
    }
    t.say(format("The plan has %d waits. Dropping one at a time:", waits));
    if (!example.empty()) t.say(example);
    t.check(needed == waits, format("each of the %d waits prevents a race (%d do)", waits, needed));

    // ---------------------------------------------------------------------------------------
    t.stage("Running the plan on the CPU, in orders the events allow");
    ref::AttentionOptions ao;
    ao.causal = true;
    const auto want = ref::naive_forward(q, k, v, ao);
    t.say("interpret_plan() runs each operation with the reference kernels on buffers that start as");
    t.say("NaN, in a random order consistent with the plan's happens-before graph: what a GPU may do.");
    double worst = 0;
    for (std::uint32_t seed = 1; seed <= 8; ++seed) worst = std::max(worst, rel_err(run_forward(fwd, schedule, q, k, v, seed), want.out));
    t.check(worst < 1e-5, format("8 random orders all give naive causal attention (worst relative error %.1e)", worst));

    // The same with rank 1's "K/V block arrived" wait of step 1 dropped.
    rc::RingPlan racy = fwd;
    for (std::size_t i = 0; i < racy.ops.size(); ++i) {
      const rc::PlanOp& op = racy.ops[i];
      if (op.kind == rc::OpKind::Wait && op.rank == 1 && op.step == 1 && op.label == "K/V block arrived") {
        racy.ops.erase(racy.ops.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
    }
    int wrong = 0;
    for (std::uint32_t seed = 1; seed <= 40; ++seed) {
      const double e = rel_err(run_forward(racy, schedule, q, k, v, seed), want.out);
      if (!(e < 1e-5)) ++wrong;
    }
    t.say(format("Without rank 1's 'K/V block arrived' wait at step 1, %d of 40 random orders computed on", wrong));
    t.say("a buffer the block had not reached yet (still NaN): wrong, and only sometimes. A GPU race");
    t.say("looks the same: right on most runs, wrong on some.");
    t.check(wrong > 0 && wrong < 40, "the dropped wait gives wrong results in some orders but not all");

    // ---------------------------------------------------------------------------------------
    t.stage("The backward: dK/dV travel with their block and hop home");
    const rc::RingPlan bwd = rc::plan_backward(schedule, shape, po);
    int dkv_shifts = 0;
    for (const auto& op : bwd.ops) dkv_shifts += op.kind == rc::OpKind::Shift && op.label.rfind("dK/dV", 0) == 0;
    t.say("After each step the float32 accumulator of the block a rank holds moves on to rank + 1;");
    t.say("from step 1 on, the kernels write into a scratch block while that accumulator is still on");
    t.say("its way, and add it in only when it has arrived. After the last step, one more hop home.");
    t.check(dkv_shifts == N, format("%d dK/dV shifts for %d steps: one per step, the last one home", dkv_shifts, N));
    t.check(rc::check_hazards(bwd).empty(), "the backward plan has no race");
    rc::PlanMemory mem(bwd);
    const auto& l = schedule.q_layout();
    for (int r = 0; r < N; ++r) {
      put(mem.buffer(r, "q"), ref::shard_rows(q, l, r));
      put(mem.buffer(r, "k"), ref::shard_rows(k, l, r));
      put(mem.buffer(r, "v"), ref::shard_rows(v, l, r));
      put(mem.buffer(r, "out"), ref::shard_rows(want.out, l, r));
      put(mem.buffer(r, "dout"), ref::shard_rows(dout, l, r));
      put(mem.buffer(r, "lse"), ref::shard_lse(want.lse, l, r));
    }
    (void)rc::interpret_plan(bwd, mem, 7);
    const auto want_g = ref::naive_backward(q, k, v, want.out, want.lse, dout, ao);
    Tensor<double> dk(k.shape()), dv(v.shape()), dq(q.shape());
    for (int r = 0; r < N; ++r) {
      ref::unshard_rows(as_tensor(mem.buffer(r, "dq"), {1, l.shard_length(r), H, D}), l, r, dq);
      ref::unshard_rows(as_tensor(mem.buffer(r, "dk"), {1, l.shard_length(r), H, D}), l, r, dk);
      ref::unshard_rows(as_tensor(mem.buffer(r, "dv"), {1, l.shard_length(r), H, D}), l, r, dv);
    }
    t.check(rel_err(dq, want_g.dq) < 1e-5, format("dQ = naive (relative error %.1e)", rel_err(dq, want_g.dq)));
    t.check(rel_err(dk, want_g.dk) < 1e-5, format("dK home = naive (relative error %.1e)", rel_err(dk, want_g.dk)));
    t.check(rel_err(dv, want_g.dv) < 1e-5, format("dV home = naive (relative error %.1e)", rel_err(dv, want_g.dv)));
    return t.finish();
  });
}
