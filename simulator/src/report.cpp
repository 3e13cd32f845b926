#include "ringattn/simulator/report.hpp"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unistd.h>

#include "ringattn/core/error.hpp"

namespace ringattn::sim {
namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string seconds(double s) {
  const double a = std::fabs(s);
  if (a == 0) return "0 s";
  if (a < 1e-3) return fmt("%.3f us", s * 1e6);
  if (a < 1) return fmt("%.3f ms", s * 1e3);
  return fmt("%.4g s", s);
}

std::string gib(double bytes) { return fmt("%.2f GiB", bytes / double(1ULL << 30)); }

std::string setup_lines(const RunInfo& info) {
  const ClusterSpec& c = *info.cluster;
  const Workload& w = info.workload;
  std::ostringstream o;
  const int n = info.devices;
  const int nodes = c.devices_per_node > 0 ? (n + c.devices_per_node - 1) / c.devices_per_node : 1;
  o << "cluster   " << c.name << ": " << n << " x " << c.device.name << " ("
    << fmt("%.4g", c.device.peak_flops(w.dtype) / 1e12) << " TFLOP/s " << to_string(w.dtype) << ", "
    << gib(c.device.memory_bytes) << ")";
  if (nodes > 1) o << " in " << nodes << " nodes of " << c.devices_per_node;
  const bool all_inter = c.devices_per_node == 1 && n > 1 && c.inter_node;  // one device per node
  if (!all_inter)
    o << "\n          ring hops: " << (c.intra_node.name.empty() ? "intra-node" : c.intra_node.name) << " "
      << fmt("%.4g", c.intra_node.bandwidth / 1e9) << " GB/s";
  else
    o << "\n          ring hops: every hop";
  if (nodes > 1 && c.inter_node)
    o << (all_inter ? " " : ", between nodes ") << (c.inter_node->name.empty() ? "inter-node" : c.inter_node->name) << " "
      << fmt("%.4g", c.inter_node->bandwidth / 1e9) << " GB/s";
  o << " per direction\n";
  o << "workload  B=" << w.batch << " S=" << w.seq_len << " (" << w.seq_len / n << (w.seq_len % n ? "+" : "")
    << " per device) H_q=" << w.heads_q << " H_kv=" << w.kv_heads() << " D=" << w.head_dim << " "
    << to_string(w.dtype) << (w.causal ? " causal " : " non-causal ") << to_string(w.layout) << " "
    << to_string(w.pass) << ", " << w.sub_blocks << " sub-block" << (w.sub_blocks > 1 ? "s" : "") << ", "
    << w.receive_buffers() << " receive buffers";
  if (w.layers > 0) o << ", model " << w.layers << " layers h=" << w.hidden;
  o << "\nmodel     " << (info.ideal ? "ideal (the paper's: no latency or overheads, kernels at peak)"
                                     : "full (latency, launch overhead, kernel efficiency, merges)")
    << "\n";
  return o.str();
}

nlohmann::json setup_json(const RunInfo& info) {
  const Workload& w = info.workload;
  return {{"cluster", info.cluster->name},
          {"devices", info.devices},
          {"batch", w.batch},
          {"seq_len", w.seq_len},
          {"heads", w.heads_q},
          {"kv_heads", w.kv_heads()},
          {"head_dim", w.head_dim},
          {"dtype", std::string(to_string(w.dtype))},
          {"causal", w.causal},
          {"layout", std::string(to_string(w.layout))},
          {"pass", std::string(to_string(w.pass))},
          {"sub_blocks", w.sub_blocks},
          {"buffers", w.receive_buffers()},
          {"layers", w.layers},
          {"hidden", w.hidden},
          {"ideal", info.ideal}};
}

nlohmann::json result_object(const SimResult& r, int max_device_rows) {
  nlohmann::json j = {{"devices", r.devices},
                      {"seq_len", r.seq_len},
                      {"block_size", r.block_size},
                      {"total_time_s", r.total_time_s},
                      {"forward_time_s", r.forward_time_s},
                      {"compute_time_s", r.compute_time_s},
                      {"mean_compute_time_s", r.mean_compute_time_s},
                      {"exposed_comm_s", r.exposed_comm_s},
                      {"overlap_efficiency", r.overlap_efficiency},
                      {"load_imbalance", r.load_imbalance},
                      {"link_busy_s", r.link_busy_s},
                      {"flops", r.flops},
                      {"achieved_flops_per_device", r.achieved_flops_per_device},
                      {"peak_memory_bytes", r.peak_memory_bytes},
                      {"fits_in_memory", r.fits_in_memory},
                      {"mfu", r.mfu ? nlohmann::json(*r.mfu) : nlohmann::json(nullptr)},
                      {"model_step_time_s",
                       r.model_step_time_s ? nlohmann::json(*r.model_step_time_s) : nlohmann::json(nullptr)},
                      {"events", r.events}};
  if (r.devices <= max_device_rows) j["device_busy_s"] = r.device_busy_s;
  return j;
}

}  // namespace

std::string format_text(const RunInfo& info, const SimResult& r) {
  std::ostringstream o;
  o << setup_lines(info) << "\n";
  const double peak = info.cluster->device.peak_flops(info.workload.dtype);
  auto row = [&](const std::string& k, const std::string& v) {
    o << "  " << k << std::string(k.size() < 32 ? 32 - k.size() : 1, ' ') << v << "\n";
  };
  row("layer time", seconds(r.total_time_s));
  if (info.workload.pass == Pass::ForwardBackward) row("  forward ends at", seconds(r.forward_time_s));
  row("compute, busiest device", seconds(r.compute_time_s));
  row("compute, mean over devices", seconds(r.mean_compute_time_s));
  row("exposed communication", seconds(r.exposed_comm_s) + fmt("  (%.1f %% of the layer)", 100 * r.exposed_fraction()));
  row("overlap efficiency", fmt("%.4f", r.overlap_efficiency) + "  (busiest compute / layer time)");
  row("load imbalance", fmt("%.4f", r.load_imbalance) + "  (busiest / mean compute)");
  row("busiest link busy", seconds(r.link_busy_s));
  row("attention FLOPs", fmt("%.4g", r.flops));
  row("achieved per device", fmt("%.1f TFLOP/s", r.achieved_flops_per_device / 1e12) +
                                 fmt("  (%.1f %% of peak)", 100 * r.achieved_flops_per_device / peak));
  row("peak memory per device", gib(r.peak_memory_bytes) + " of " + gib(info.cluster->device.memory_bytes) +
                                    (r.fits_in_memory ? "  (fits)" : "  (DOES NOT FIT)"));
  if (r.mfu) {
    row("MFU (model around attention)", fmt("%.1f %%", 100 * *r.mfu));
    row("model step, all layers", seconds(*r.model_step_time_s));
  }
  row("events simulated", std::to_string(r.events));
  return o.str();
}

std::string format_sweep_text(const RunInfo& info, const SweepResult& s) {
  std::ostringstream o;
  o << setup_lines(info) << "sweep     " << to_string(s.kind) << "\n\n";
  char line[256];
  std::snprintf(line, sizeof line, "  %-11s %5s %10s %9s %12s %12s %12s %8s %9s %11s %10s\n", to_string(s.kind).data(),
                "N", "S", "c", "layer", "compute", "exposed", "overlap", "imbalance", "TFLOP/s/dev", "memory");
  o << line;
  for (const SweepPoint& p : s.points) {
    const SimResult& r = p.result;
    std::snprintf(line, sizeof line, "  %-11s %5d %10lld %9lld %12s %12s %12s %8.4f %9.4f %11.1f %10s%s\n", p.label.c_str(),
                  r.devices, static_cast<long long>(r.seq_len), static_cast<long long>(r.block_size),
                  seconds(r.total_time_s).c_str(), seconds(r.compute_time_s).c_str(),
                  seconds(r.exposed_comm_s).c_str(), r.overlap_efficiency, r.load_imbalance,
                  r.achieved_flops_per_device / 1e12, gib(r.peak_memory_bytes).c_str(), r.fits_in_memory ? "" : " !");
    o << line;
  }
  if (s.kind == SweepKind::BlockSize) {
    o << "\n  recommended block (exposed communication <= 5% of the layer): "
      << (s.recommended_block_size ? std::to_string(*s.recommended_block_size) + " tokens per device"
                                   : std::string("none in the range"))
      << (s.recommended_block_size && !info.ideal && !s.points.empty() &&
                  *s.recommended_block_size == s.points.front().result.block_size
              ? " (the smallest block of the sweep; lower --sweep-min to look further)"
              : "")
      << "\n";
    if (info.ideal)
      o << "  smallest block with no exposed communication (ideal model): "
        << (s.min_overlapped_block ? std::to_string(*s.min_overlapped_block) + " tokens per device"
                                   : std::string("none in the range"))
        << "\n";
  }
  bool any_oom = false;
  for (const SweepPoint& p : s.points) any_oom |= !p.result.fits_in_memory;
  if (any_oom) o << "  ! does not fit in device memory\n";
  return o.str();
}

std::string result_json(const RunInfo& info, const SimResult& r, int max_device_rows) {
  nlohmann::json j = setup_json(info);
  j.update(result_object(r, max_device_rows));
  return j.dump(2);
}

std::string sweep_json(const RunInfo& info, const SweepResult& s) {
  nlohmann::json j = setup_json(info);
  j["sweep"] = std::string(to_string(s.kind));
  nlohmann::json pts = nlohmann::json::array();
  for (const SweepPoint& p : s.points) {
    nlohmann::json pj = result_object(p.result, 0);
    pj["value"] = p.label;
    pj["layout"] = std::string(to_string(p.workload.layout));
    pts.push_back(pj);
  }
  j["points"] = pts;
  if (s.kind == SweepKind::BlockSize) {
    j["recommended_block_size"] =
        s.recommended_block_size ? nlohmann::json(*s.recommended_block_size) : nlohmann::json(nullptr);
    if (info.ideal)
      j["min_overlapped_block"] =
          s.min_overlapped_block ? nlohmann::json(*s.min_overlapped_block) : nlohmann::json(nullptr);
  }
  return j.dump(2);
}

std::string results_csv(const std::vector<SweepPoint>& points) {
  std::ostringstream o;
  o << "value,layout,devices,seq_len,block_size,total_time_s,forward_time_s,compute_time_s,mean_compute_time_s,"
       "exposed_comm_s,overlap_efficiency,load_imbalance,link_busy_s,flops,achieved_flops_per_device,peak_memory_bytes,"
       "fits_in_memory,mfu,model_step_time_s,events\n";
  o.precision(17);
  for (const SweepPoint& p : points) {
    const SimResult& r = p.result;
    o << p.label << ',' << to_string(p.workload.layout) << ',' << r.devices << ',' << r.seq_len << ','
      << r.block_size << ',' << r.total_time_s << ',' << r.forward_time_s << ',' << r.compute_time_s << ','
      << r.mean_compute_time_s << ',' << r.exposed_comm_s << ',' << r.overlap_efficiency << ','
      << r.load_imbalance << ',' << r.link_busy_s << ',' << r.flops << ',' << r.achieved_flops_per_device << ','
      << r.peak_memory_bytes << ',' << (r.fits_in_memory ? "true" : "false") << ',';
    if (r.mfu) o << *r.mfu;
    o << ',';
    if (r.model_step_time_s) o << *r.model_step_time_s;
    o << ',' << r.events << '\n';
  }
  return o.str();
}

namespace {
std::string temp_name(const std::string& path) {
  return path + ".tmp." + std::to_string(::getpid());
}
}  // namespace

ChromeTraceWriter::ChromeTraceWriter(std::string path, const ClusterSpec& cluster, int devices)
    : path_(std::move(path)), tmp_(temp_name(path_)) {
  file_ = std::fopen(tmp_.c_str(), "wb");
  require(file_ != nullptr, "cannot write the trace ", path_, ": ", std::strerror(errno));
  std::fprintf(file_, "{\"displayTimeUnit\":\"ns\",\"otherData\":{\"generator\":\"ringattn simulate\"},\n"
                      "\"traceEvents\":[\n");
  for (int d = 0; d < devices; ++d) {
    const LinkSpec& l = cluster.hop(d, devices);
    std::fprintf(file_,
                 "{\"ph\":\"M\",\"pid\":%d,\"name\":\"process_name\",\"args\":{\"name\":\"device %d\"}},\n"
                 "{\"ph\":\"M\",\"pid\":%d,\"name\":\"process_sort_index\",\"args\":{\"sort_index\":%d}},\n"
                 "{\"ph\":\"M\",\"pid\":%d,\"tid\":0,\"name\":\"thread_name\",\"args\":{\"name\":\"compute\"}},\n"
                 "{\"ph\":\"M\",\"pid\":%d,\"tid\":1,\"name\":\"thread_name\",\"args\":{\"name\":\"link to %d (%s)\"}},\n",
                 d, d, d, d, d, d, (d + 1) % devices, l.name.empty() ? "link" : l.name.c_str());
  }
}

ChromeTraceWriter::~ChromeTraceWriter() {
  if (file_ != nullptr) {
    std::fclose(file_);
    std::remove(tmp_.c_str());
  }
}

void ChromeTraceWriter::add(const Span& s) {
  require(file_ != nullptr, "ChromeTraceWriter: add() after finish()");
  // Times in microseconds, the unit of the trace-event format.
  const int n = std::fprintf(
      file_,
      "{\"ph\":\"X\",\"pid\":%d,\"tid\":%d,\"name\":\"%s%s s%d.%d\",\"cat\":\"%s\",\"ts\":%.6f,\"dur\":%.6f,"
      "\"args\":{\"step\":%d,\"sub_block\":%d,\"kv_owner\":%d,\"%s\":%.17g}},\n",
      s.device, s.row == Row::Compute ? 0 : 1, s.backward && s.name[0] == 'k' ? "bwd " : "", s.name, s.step, s.sub_block, s.row == Row::Compute ? "compute" : "link",
      s.start_s * 1e6, s.duration_s * 1e6, s.step, s.sub_block, s.kv_owner, s.row == Row::Compute ? "flops" : "bytes",
      s.row == Row::Compute ? s.flops : s.bytes);
  if (n < 0) ok_ = false;
  ++spans_;
}

void ChromeTraceWriter::finish() {
  require(file_ != nullptr, "ChromeTraceWriter: finish() called twice");
  // A final metadata record closes the array without a dangling comma.
  std::fprintf(file_, "{\"ph\":\"M\",\"pid\":0,\"name\":\"process_labels\",\"args\":{\"labels\":\"ring\"}}\n]}\n");
  const bool flushed = std::fflush(file_) == 0 && ok_ && !std::ferror(file_);
  const bool closed = std::fclose(file_) == 0;
  file_ = nullptr;
  if (!flushed || !closed) {
    std::remove(tmp_.c_str());
    fail("cannot write the trace ", path_, " (disk full?)");
  }
  std::error_code ec;
  std::filesystem::rename(tmp_, path_, ec);
  if (ec) {
    std::remove(tmp_.c_str());
    fail("cannot write the trace ", path_, ": ", ec.message());
  }
}

}  // namespace ringattn::sim
