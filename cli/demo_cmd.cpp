// ringattn demo: the main job of the README's first command. Random inputs in float64; naive
// attention is the reference; every other path of the CPU reference (blockwise, the ring in each
// layout, flash-decoding; forward and backward) is compared with it and timed, and the causal
// ring schedule is drawn so the load balance of each layout can be seen.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <string>

#include "commands.hpp"
#include "ringattn/core/cost.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/reference/ring.hpp"

namespace ringattn::cli {
namespace {

struct DemoArgs {
  std::int64_t batch = 1, seq = 1024, heads_q = 8, heads_kv = 2, dim = 64;
  int ranks = 4;
  std::uint64_t seed = 2024;
  double tolerance = 1e-12;
};

Tensor<double> random_tensor(std::vector<std::int64_t> shape, std::mt19937_64& gen) {
  Tensor<double> t(std::move(shape));
  std::normal_distribution<double> normal(0.0, 1.0);
  for (double& x : t.values()) x = normal(gen);
  return t;
}

// max |a - b| (equal infinities count as 0) and ||a - b|| / ||b|| over finite entries.
std::pair<double, double> errors(const Tensor<double>& a, const Tensor<double>& b) {
  double max_abs = 0, num = 0, den = 0;
  for (std::int64_t i = 0; i < a.size(); ++i) {
    if (std::isinf(a[i]) || std::isinf(b[i])) {
      if (a[i] != b[i]) max_abs = INFINITY;
      continue;
    }
    const double d = a[i] - b[i];
    if (!(std::abs(d) <= max_abs)) max_abs = std::isnan(d) ? NAN : std::abs(d);
    num += d * d;
    den += b[i] * b[i];
  }
  return {max_abs, den > 0 ? std::sqrt(num / den) : std::sqrt(num)};
}

double seconds_of(const std::function<void()>& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Row {
  std::string path;
  double max_abs = 0, rel = 0, ms = 0;
};

void print_rows(const char* title, const std::vector<Row>& rows) {
  std::printf("\n%s\n  %-34s %12s %12s %10s\n", title, "path", "max|err|", "rel. err", "time ms");
  for (const Row& r : rows) {
    std::printf("  %-34s %12.2e %12.2e %10.1f\n", r.path.c_str(), r.max_abs, r.rel, r.ms);
  }
}

// Causal work per rank and step, as a grid of visible-pair percentages of a full block.
void print_schedule(const AttentionShape& shape, Layout layout, int ranks) {
  const RingSchedule s = RingSchedule::for_shape(shape, layout, ranks, true);
  const double full = static_cast<double>(s.q_layout().max_shard_length()) *
                      static_cast<double>(s.kv_layout().max_shard_length());
  std::printf("\n  %s: %% of a full block computed by each rank at each step (causal)\n          ",
              std::string(to_string(layout)).c_str());
  for (int r = 0; r < ranks; ++r) std::printf(" rank %-3d", r);
  std::printf("\n");
  double critical = 0, total = 0;
  for (int st = 0; st < s.steps(); ++st) {
    std::printf("    step %d", st);
    double worst = 0;
    for (int r = 0; r < ranks; ++r) {
      const double pct = 100.0 * static_cast<double>(s.work(st, r).visible) / full;
      worst = std::max(worst, pct);
      total += pct;
      std::printf(" %7.0f%%", pct);
    }
    critical += worst;
    std::printf("\n");
  }
  // Each step ends when its slowest rank does: the critical path is the sum of step maxima.
  // Perfect balance spreads the total work evenly over the N x N (rank, step) cells.
  std::printf("    critical path: %.1f%% of a full block per step on average (perfect balance: %.1f%%)\n",
              critical / ranks, total / (static_cast<double>(ranks) * ranks));
}

int run(const DemoArgs& a) {
  const AttentionShape shape{a.batch, a.seq, a.seq, a.heads_q, a.heads_kv, a.dim};
  shape.validate();
  std::mt19937_64 gen(a.seed);
  const auto q = random_tensor({a.batch, a.seq, a.heads_q, a.dim}, gen);
  const auto k = random_tensor({a.batch, a.seq, a.heads_kv, a.dim}, gen);
  const auto v = random_tensor({a.batch, a.seq, a.heads_kv, a.dim}, gen);
  const auto dout = random_tensor({a.batch, a.seq, a.heads_q, a.dim}, gen);
  std::printf("ringattn demo: the CPU reference against naive attention (float64, seed %llu)\n",
              static_cast<unsigned long long>(a.seed));
  std::printf("  shape %s (GQA %lldx), %d virtual ranks\n", shape.to_string().c_str(),
              static_cast<long long>(shape.group_size()), a.ranks);
  bool ok = true;
  for (bool causal : {false, true}) {
    ref::AttentionOptions o;
    o.causal = causal;
    ref::ForwardResult<double> want;
    ref::Gradients<double> want_g;
    const double naive_ms = 1e3 * seconds_of([&] {
      want = ref::naive_forward(q, k, v, o);
      want_g = ref::naive_backward(q, k, v, want.out, want.lse, dout, o);
    });
    std::vector<Row> rows;
    auto add = [&](const std::string& name, const ref::ForwardResult<double>& got,
                   const ref::Gradients<double>* g, double ms) {
      auto [e_o, r_o] = errors(got.out, want.out);
      auto [e_l, r_l] = errors(got.lse, want.lse);
      double e = std::max(e_o, e_l), r = std::max(r_o, r_l);
      if (g) {
        for (auto [x, y] : {std::pair{&g->dq, &want_g.dq}, {&g->dk, &want_g.dk}, {&g->dv, &want_g.dv}}) {
          auto [ee, rr] = errors(*x, *y);
          e = std::max(e, ee);
          r = std::max(r, rr);
        }
      }
      ok = ok && e <= a.tolerance;
      rows.push_back({name, e, r, ms});
    };
    rows.push_back({"naive (reference) fwd+bwd", 0, 0, naive_ms});
    {
      ref::ForwardResult<double> f;
      ref::Gradients<double> g;
      const double ms = 1e3 * seconds_of([&] {
        f = ref::blockwise_forward(q, k, v, o);
        g = ref::blockwise_backward(q, k, v, f.out, f.lse, dout, o);
      });
      add("blockwise fwd+bwd", f, &g, ms);
    }
    for (Layout layout : all_layouts()) {
      ref::RingOptions ro;
      static_cast<ref::AttentionOptions&>(ro) = o;
      ro.layout = layout;
      ro.ranks = a.ranks;
      ref::ForwardResult<double> f;
      ref::Gradients<double> g;
      const double ms = 1e3 * seconds_of([&] {
        f = ref::ring_forward(q, k, v, ro);
        g = ref::ring_backward(q, k, v, f.out, f.lse, dout, ro);
      });
      add("ring " + std::string(to_string(layout)) + " x" + std::to_string(a.ranks) + " fwd+bwd", f, &g, ms);
    }
    {
      ref::ForwardResult<double> f;
      const double ms = 1e3 * seconds_of([&] { f = ref::decode_forward(q, k, v, 8, o); });
      add("flash-decoding, 8 splits (fwd)", f, nullptr, ms);
    }
    print_rows(causal ? "causal:" : "non-causal:", rows);
  }
  std::printf("\nThe causal ring schedule (core's RingSchedule, %d ranks): who computes how much when\n", a.ranks);
  for (Layout layout : all_layouts()) print_schedule(shape, layout, a.ranks);
  std::printf("\nEvery path agrees with naive attention to %.0e (max abs, O, LSE, dQ, dK, dV): %s\n",
              a.tolerance, ok ? "yes" : "NO");
  std::printf("Next: `ringattn attention --help` runs any path on your own .npy files; docs/ explains the ideas.\n");
  std::printf("Disposition: %s\n", ok ? "Passed" : "Failed");
  return ok ? 0 : 1;
}

}  // namespace

Runner add_demo_command(CLI::App& app) {
  auto a = std::make_shared<DemoArgs>();
  CLI::App* cmd = app.add_subcommand("demo", "The reference's paths against naive attention, with errors and timings");
  cmd->add_option("--seq-len", a->seq, "tokens S")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--heads", a->heads_q, "query heads H_q")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--kv-heads", a->heads_kv, "key/value heads H_kv")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--head-dim", a->dim, "head dim D")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--batch", a->batch, "batch B")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--ranks", a->ranks, "virtual ranks of the ring")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--seed", a->seed, "random seed")->capture_default_str();
  return [cmd, a] { return cmd->parsed() ? run(*a) : -1; };
}

}  // namespace ringattn::cli
