// ringattn simulate: predicts step time, overlap, memory and scaling of a ring attention layer on
// a cluster (a preset or a JSON file), sweeps block size, device count or layout, and writes
// JSON, CSV, a Chrome trace of the timeline, and SVG pictures (the timeline or a block-size sweep).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>
#include <unistd.h>

#include "commands.hpp"
#include "ringattn/core/error.hpp"
#include "ringattn/core/npy.hpp"
#include "ringattn/simulator/report.hpp"
#include "ringattn/simulator/simulate.hpp"
#include "ringattn/simulator/svg.hpp"

namespace ringattn::cli {
namespace {

struct SimArgs {
  std::string cluster, dtype = "bf16", layout = "contiguous", pass = "fwd", sweep, trace, csv, svg, straggler, jitter,
                       show_preset;
  int devices = 0, sub_blocks = 1, buffers = 0, layers = 0;
  std::optional<std::int64_t> seq_len, block_size;
  std::int64_t heads = 0, kv_heads = 0, head_dim = 0, batch = 1, hidden = 0;
  std::int64_t sweep_min = 256, sweep_max = 262144;
  std::optional<double> comm_slowdown;
  bool causal = false, ideal = false, json = false, list_presets = false;
};

void write_text(const std::string& path, const std::string& text) {
  write_file_atomic(path, std::as_bytes(std::span(text.data(), text.size())));
}

// Writes every (path, text) whose path is set, all or none: if one write fails, the files
// already written by this call are removed and the error goes on.
void write_all(const std::vector<std::pair<std::string, std::string>>& files) {
  std::vector<std::string> done;
  try {
    for (const auto& [path, text] : files) {
      if (path.empty()) continue;
      write_text(path, text);
      done.push_back(path);
    }
  } catch (...) {
    for (const std::string& path : done) std::remove(path.c_str());
    throw;
  }
}

int run(const SimArgs& a) {
  if (a.list_presets) {
    for (const std::string& name : sim::preset_names()) {
      const sim::ClusterSpec c = sim::load_cluster(name);
      std::printf("%-14s %s\n", name.c_str(), c.description.c_str());
    }
    return 0;
  }
  if (!a.show_preset.empty()) {
    std::cout << sim::preset_json(a.show_preset);
    return 0;
  }
  require(!a.cluster.empty(), "--cluster is required (a preset: see --list-presets, or a .json file)");
  require(a.devices >= 1, "--devices is required and must be at least 1");
  require(a.heads >= 1, "--heads is required and must be at least 1");
  require(a.head_dim >= 1, "--head-dim is required and must be at least 1");
  require(a.seq_len || a.block_size, "give the sequence as --seq-len S or --block-size C (tokens per device)");
  sim::ClusterSpec cluster = sim::load_cluster(a.cluster);
  if (a.comm_slowdown) cluster.device.comm_slowdown = *a.comm_slowdown;
  if (!a.straggler.empty()) {
    const auto colon = a.straggler.find(':');
    require(colon != std::string::npos, "--straggler takes DEVICE:SLOWDOWN, e.g. 3:1.5, got '", printable(a.straggler), "'");
    try {
      std::size_t used1 = 0, used2 = 0;
      const int dev = std::stoi(a.straggler.substr(0, colon), &used1);
      const double slow = std::stod(a.straggler.substr(colon + 1), &used2);
      require(used1 == colon && used2 == a.straggler.size() - colon - 1, "bad number");
      cluster.straggler = sim::Straggler{dev, slow};
    } catch (const std::exception&) {
      fail("--straggler takes DEVICE:SLOWDOWN, e.g. 3:1.5, got '", printable(a.straggler), "'");
    }
  }
  if (!a.jitter.empty()) {
    try {
      std::size_t used = 0;
      const auto colon = a.jitter.find(':');
      cluster.jitter.sigma = std::stod(a.jitter.substr(0, colon), &used);
      require(used == std::min(colon, a.jitter.size()), "bad number");
      if (colon != std::string::npos) {
        const std::string seed = a.jitter.substr(colon + 1);
        cluster.jitter.seed = std::stoull(seed, &used);
        require(used == seed.size() && seed[0] != '-', "bad seed");
      }
    } catch (const std::exception&) {
      fail("--jitter takes SIGMA or SIGMA:SEED, e.g. 0.05:7, got '", printable(a.jitter), "'");
    }
  }
  cluster.validate();
  cluster.validate_for(a.devices);

  sim::Workload w;
  w.batch = a.batch;
  w.heads_q = a.heads;
  w.heads_kv = a.kv_heads;
  w.head_dim = a.head_dim;
  w.dtype = sim::parse_dtype(a.dtype);
  w.causal = a.causal;
  w.layout = parse_layout(a.layout);
  w.pass = sim::parse_pass(a.pass);
  w.sub_blocks = a.sub_blocks;
  w.buffers = a.buffers;
  w.layers = a.layers;
  w.hidden = a.hidden;
  if (a.block_size) {
    require(*a.block_size >= 1, "--block-size must be at least 1, got ", *a.block_size);
    require(*a.block_size <= (std::int64_t{1} << 40) / a.devices, "--block-size ", *a.block_size, " is too large");
    const std::int64_t s = *a.block_size * a.devices;
    require(!a.seq_len || *a.seq_len == s, "--seq-len ", a.seq_len.value_or(0), " and --block-size ", *a.block_size,
            " disagree: with ", a.devices, " devices the block size gives S = ", s);
    w.seq_len = s;
  } else {
    w.seq_len = *a.seq_len;
  }
  w.validate(a.devices);

  sim::RunInfo info{&cluster, a.devices, w, a.ideal};
  sim::SimOptions opt;
  opt.ideal = a.ideal;

  if (!a.sweep.empty()) {
    require(a.trace.empty(), "--trace records one run; it cannot be combined with --sweep");
    const sim::SweepKind kind = sim::parse_sweep(a.sweep);
    sim::SweepOptions so;
    so.min_block = a.sweep_min;
    so.max_block = a.sweep_max;
    const auto t0 = std::chrono::steady_clock::now();
    so.progress = [t0](int done, int total) {
      // Only long sweeps report, so quick ones keep stderr clean.
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (el > 1.0) std::fprintf(stderr, "simulate: %d/%d points (%.1f s)\n", done, total, el);
    };
    require(a.svg.empty() || kind == sim::SweepKind::BlockSize,
            "--svg draws a single run or a block-size sweep, not a ", a.sweep, " sweep");
    const sim::SweepResult s = sim::sweep(cluster, a.devices, w, kind, opt, so, a.seq_len.has_value());
    std::string picture;
    if (!a.svg.empty()) {
      sim::SweepSvgOptions po;
      po.title = cluster.name + ", " + std::to_string(a.devices) + " devices: overlap against block size";
      if (a.ideal) {
        // The paper's rule, c >= F/B scaled by H_kv/H_q for grouped K/V, next to the sweep.
        double slowest = INFINITY;  // the slowest hop of the ring sets the pace
        for (int d = 0; d < a.devices; ++d) slowest = std::min(slowest, cluster.hop(d, a.devices).bandwidth);
        po.rule_block = cluster.device.peak_flops(w.dtype) / slowest *
                        static_cast<double>(w.kv_heads()) / static_cast<double>(w.heads_q);
      }
      picture = sim::sweep_svg(s, po);
    }
    // Outputs all or none: every file's contents exist before the first is written.
    write_all({{a.csv, a.csv.empty() ? std::string() : sim::results_csv(s.points)}, {a.svg, picture}});
    std::cout << (a.json ? sim::sweep_json(info, s) + "\n" : sim::format_sweep_text(info, s));
    return 0;
  }

  std::unique_ptr<sim::ChromeTraceWriter> trace;
  if (!a.trace.empty()) {
    const std::uint64_t spans = sim::task_count(w, a.devices);
    require(spans <= 4'000'000, "--trace would hold ", spans,
            " spans (more than 4 million; about ", spans * 200 / 1'000'000,
            " MB): trace a smaller ring or fewer sub-blocks");
    trace = std::make_unique<sim::ChromeTraceWriter>(a.trace, cluster, a.devices);
  }
  std::vector<sim::Span> spans;
  if (!a.svg.empty()) {
    const std::uint64_t n = sim::task_count(w, a.devices);
    require(n <= 200'000, "--svg would draw ", n, " tasks (more than 200,000): draw a smaller ring or fewer sub-blocks");
    spans.reserve(static_cast<std::size_t>(n));
  }
  if (trace || !a.svg.empty()) {
    opt.on_span = [&trace, &spans, svg = !a.svg.empty()](const sim::Span& s) {
      if (trace) trace->add(s);
      if (svg) spans.push_back(s);
    };
  }
  const sim::SimResult r = sim::simulate(cluster, a.devices, w, opt);
  std::string picture;
  if (!a.svg.empty()) {
    sim::TimelineSvgOptions to;
    to.title = cluster.name + ": " + std::to_string(w.seq_len) + " tokens on " + std::to_string(a.devices) +
               " devices, " + std::string(to_string(w.layout)) + (w.causal ? ", causal, " : ", ") +
               std::string(sim::to_string(w.pass));
    picture = sim::timeline_svg(spans, a.devices, to);
  }
  // Outputs all or none: the CSV and picture are staged before the trace is renamed into place.
  write_all({{a.csv, a.csv.empty() ? std::string() : sim::results_csv({sim::SweepPoint{"run", w, r}})},
             {a.svg, picture}});
  if (trace) trace->finish();
  std::cout << (a.json ? sim::result_json(info, r) + "\n" : sim::format_text(info, r));
  if (trace && !a.json) std::cout << "\ntrace: " << a.trace << " (" << trace->spans() << " spans; open in Perfetto or chrome://tracing)\n";
  return 0;
}

}  // namespace

Runner add_simulate_command(CLI::App& app) {
  auto a = std::make_shared<SimArgs>();
  CLI::App* cmd = app.add_subcommand("simulate", "Predict a ring attention layer on a cluster (discrete-event simulation)");
  cmd->add_option("--cluster", a->cluster, "preset name (see --list-presets) or cluster JSON file");
  cmd->add_option("--devices", a->devices, "N: devices in the ring");
  cmd->add_option("--seq-len", a->seq_len, "S: tokens of the whole sequence");
  cmd->add_option("--block-size", a->block_size, "c: tokens per device (S = N*c); alternative to --seq-len");
  cmd->add_option("--heads", a->heads, "H_q: query heads");
  cmd->add_option("--kv-heads", a->kv_heads, "H_kv: key/value heads (default H_q; GQA when smaller)");
  cmd->add_option("--head-dim", a->head_dim, "D: head dimension");
  cmd->add_option("--batch", a->batch, "B: batch size")->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "bf16 | fp16 | fp32")->capture_default_str();
  cmd->add_flag("--causal", a->causal, "causal mask over global positions");
  cmd->add_option("--layout", a->layout, "contiguous | striped | zigzag")->capture_default_str();
  cmd->add_option("--pass", a->pass, "fwd | fwd+bwd")->capture_default_str();
  cmd->add_option("--sub-blocks", a->sub_blocks, "messages each device's K/V chunk is split into")
      ->capture_default_str();
  cmd->add_option("--buffers", a->buffers,
                  "receive buffers per device, in messages (default sub-blocks + 1: double buffering)");
  cmd->add_option("--layers", a->layers, "model layers around attention (for MFU; with --hidden)");
  cmd->add_option("--hidden", a->hidden, "model hidden size h (for MFU; with --layers)");
  cmd->add_flag("--ideal", a->ideal, "the paper's model: no latency, no overheads, kernels at peak");
  cmd->add_option("--comm-slowdown", a->comm_slowdown, "fraction of compute lost while a transfer runs");
  cmd->add_option("--straggler", a->straggler, "DEVICE:SLOWDOWN, one slow device");
  cmd->add_option("--jitter", a->jitter, "SIGMA[:SEED], log-normal noise on compute times");
  cmd->add_option("--sweep", a->sweep, "block-size | devices | layout");
  cmd->add_option("--sweep-min", a->sweep_min, "smallest block of a block-size sweep")->capture_default_str();
  cmd->add_option("--sweep-max", a->sweep_max, "largest block of a block-size sweep")->capture_default_str();
  cmd->add_flag("--json", a->json, "print one JSON object instead of the table");
  cmd->add_option("--trace", a->trace, "write the timeline as a Chrome trace (Perfetto, chrome://tracing)");
  cmd->add_option("--svg", a->svg, "draw the timeline (single run) or the block-size sweep as an SVG picture");
  cmd->add_option("--csv", a->csv, "write the results (one row per run or sweep point) as CSV");
  cmd->add_flag("--list-presets", a->list_presets, "list the shipped cluster presets and exit");
  cmd->add_option("--show-preset", a->show_preset, "print a preset's JSON (a starting point for your own)");
  return [cmd, a] { return cmd->parsed() ? run(*a) : -1; };
}

}  // namespace ringattn::cli
