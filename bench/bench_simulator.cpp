/// @file bench_simulator.cpp
/// @brief Speed and memory of the simulator, with a final OK / FAILED line:
///
///   1. events/s    events processed per second of wall time, 256 devices, fwd+bwd, causal
///                  zigzag, full model (target >= 10 million);
///   2. 1M tokens   a 1024-device, 1,048,576-token forward+backward layer, for each layout
///                  (target < 2 s);
///   3. memory      peak heap of a run does not grow with the events: 1024 devices process 64x
///                  the events of 128 devices; the peak heap may grow with the devices (8x), not
///                  with the events (target: heap ratio <= 16 while the event ratio is 64).
///
/// Each time is the median of --reps runs (default 5). Usage: bench_simulator [--reps=N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "heap_tracker.hpp"
#include "ringattn/simulator/simulate.hpp"

namespace {

using namespace ringattn;
using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

sim::Workload layer(int devices, std::int64_t block, Layout layout) {
  sim::Workload w;
  w.seq_len = block * devices;
  w.heads_q = 32;
  w.heads_kv = 8;
  w.head_dim = 128;
  w.causal = true;
  w.layout = layout;
  w.pass = sim::Pass::ForwardBackward;
  return w;
}

struct Timed {
  double seconds;
  sim::SimResult result;
};

Timed time_run(const sim::ClusterSpec& c, int n, const sim::Workload& w, int reps) {
  std::vector<double> t;
  sim::SimResult r;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    r = sim::simulate(c, n, w);
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return {median(t), r};
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 5;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--reps=", 7) == 0) reps = std::max(1, std::atoi(argv[i] + 7));
    else {
      std::fprintf(stderr, "usage: bench_simulator [--reps=N]\n");
      return 2;
    }
  }
  const sim::ClusterSpec cluster = sim::load_cluster("dgx-h100-ib");
  bool ok = true;

  const Timed ev = time_run(cluster, 256, layer(256, 4096, Layout::Zigzag), reps);
  const double rate = static_cast<double>(ev.result.events) / ev.seconds;
  std::printf("events/s   256 devices, fwd+bwd zigzag causal: %llu events in %.3f s (median of %d) = %.1f M/s "
              "(target >= 10 M/s)\n",
              static_cast<unsigned long long>(ev.result.events), ev.seconds, reps, rate / 1e6);
  ok &= rate >= 10e6;

  double worst = 0;
  for (Layout l : all_layouts()) {
    const Timed big = time_run(cluster, 1024, layer(1024, 1024, l), std::max(1, reps / 2));
    std::printf("1M tokens  1024 devices, fwd+bwd, %-10s: %.3f s for %llu events (%.1f M/s); predicted layer %.3f ms\n",
                std::string(to_string(l)).c_str(), big.seconds, static_cast<unsigned long long>(big.result.events),
                static_cast<double>(big.result.events) / big.seconds / 1e6, big.result.total_time_s * 1e3);
    worst = std::max(worst, big.seconds);
  }
  std::printf("1M tokens  slowest layout %.3f s (target < 2 s)\n", worst);
  ok &= worst < 2.0;

  auto peak_heap = [&](int n) {
    const auto before = bench::heap::current_bytes();
    bench::heap::reset_peak();
    const sim::SimResult r = sim::simulate(cluster, n, layer(n, 1024, Layout::Striped));
    return std::make_pair(static_cast<double>(bench::heap::peak_bytes() - before), r.events);
  };
  const auto [h_small, e_small] = peak_heap(128);
  const auto [h_big, e_big] = peak_heap(1024);
  const double heap_ratio = h_big / h_small, event_ratio = double(e_big) / double(e_small);
  std::printf("memory     peak heap %.1f KiB for %llu events (128 devices), %.1f KiB for %llu events (1024 devices): "
              "heap x%.1f for events x%.0f (target: heap ratio <= 16)\n",
              h_small / 1024, static_cast<unsigned long long>(e_small), h_big / 1024,
              static_cast<unsigned long long>(e_big), heap_ratio, event_ratio);
  ok &= heap_ratio <= 16;
  std::printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
