// The cluster spec: devices, links, the attention-kernel efficiency model, presets and JSON.
//
// Range checks live in the validate() functions and speak the JSON schema's names and units
// ("device.peak_tflops.bf16 must be a positive number, got -3"), so a spec built in code and a
// spec read from a file fail with the same message; the parser adds the file's name in front.
// The parser itself checks what only JSON can get wrong: syntax, types, missing, unknown and
// duplicate fields.
#include "ringattn/simulator/cluster.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <set>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "presets.hpp"
#include "ringattn/core/error.hpp"

namespace ringattn::sim {

namespace {

using Json = nlohmann::json;
// Written specs keep the schema's order (name first, device before links), not std::map's.
using OrderedJson = nlohmann::ordered_json;

// ---- one-line messages ----------------------------------------------------------------------

// Untrusted text (a path, a key, a value) for a one-line message: control bytes escaped,
// UTF-8 kept, cut at max_len characters.
std::string printable(std::string_view s, std::size_t max_len = 80) { return ringattn::printable(s, false, max_len); }

// Shortest text that reads back as @p x ("0.05", not "0.050000000000000003"; "nan", "inf").
std::string num(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  std::array<char, 32> buf{};
  const auto res = std::to_chars(buf.data(), buf.data() + buf.size(), x);
  return {buf.data(), res.ptr};
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& s : items) {
    if (!out.empty()) out += ", ";
    out += s;
  }
  return out;
}

// ---- units: JSON quotes rates as people do, the structs hold SI ----------------------------

enum class Unit { One, Tera, Giga, Gibi, Micro };

// SI value of @p u given in @p unit. Microseconds divide by the exact 1e6 rather than multiply
// by the inexact 1e-6, so "3" us becomes exactly the double nearest 3e-6.
double from_unit(double u, Unit unit) {
  switch (unit) {
    case Unit::One: return u;
    case Unit::Tera: return u * 1e12;
    case Unit::Giga: return u * 1e9;
    case Unit::Gibi: return u * 1073741824.0;
    case Unit::Micro: return u / 1e6;
  }
  return u;
}

// The value in @p unit that from_unit() maps back to exactly @p si, preferring the shortest
// decimal (so a parsed 3 us is written as 3, not 3.0000000000000004), else the nearest.
double to_unit(double si, Unit unit) {
  if (unit == Unit::One || !std::isfinite(si)) return si;
  const double naive = unit == Unit::Micro ? si * 1e6 : si / from_unit(1.0, unit);
  if (!std::isfinite(naive)) return naive;
  for (int digits = 15; digits <= 17; ++digits) {
    std::array<char, 40> buf{};
    std::snprintf(buf.data(), buf.size(), "%.*g", digits, naive);
    const double candidate = std::strtod(buf.data(), nullptr);
    if (from_unit(candidate, unit) == si) return candidate;
  }
  double down = naive, up = naive;
  for (int step = 0; step < 8; ++step) {
    down = std::nextafter(down, -std::numeric_limits<double>::infinity());
    up = std::nextafter(up, std::numeric_limits<double>::infinity());
    if (from_unit(down, unit) == si) return down;
    if (from_unit(up, unit) == si) return up;
  }
  return naive;  // no decimal maps exactly to si (a value built in code); the nearest is kept
}

// ---- range checks (names and units of the JSON schema) -------------------------------------

void check_positive(double si, Unit unit, const std::string& field) {
  require(std::isfinite(si) && si > 0, field, " must be a positive number, got ", num(to_unit(si, unit)));
}

void check_non_negative(double si, Unit unit, const std::string& field) {
  require(std::isfinite(si) && si >= 0, field, " must be a non-negative number, got ",
          num(to_unit(si, unit)));
}

// (0, 1]: a fraction of peak.
void check_fraction(double x, const std::string& field) {
  require(x > 0 && x <= 1, field, " must be in (0, 1], got ", num(x));
}

void validate_kernel(const KernelModel& k, const std::string& prefix) {
  check_fraction(k.max_efficiency, prefix + ".max_efficiency");
  check_non_negative(k.half_tokens, Unit::One, prefix + ".half_tokens");
  check_non_negative(k.half_head_dim, Unit::One, prefix + ".half_head_dim");
  require(k.sm_count >= 0, prefix, ".sm_count must be >= 0 (0: no wave quantization), got ", k.sm_count);
  require(k.tile_rows >= 1, prefix, ".tile_rows must be >= 1, got ", k.tile_rows);
  for (std::size_t i = 0; i < k.table.size(); ++i) {
    const EfficiencyPoint& p = k.table[i];
    const std::string at = prefix + ".table[" + std::to_string(i) + "]";
    require(p.head_dim >= 1, at, ".head_dim must be >= 1, got ", p.head_dim);
    require(p.tokens >= 1, at, ".tokens must be >= 1, got ", p.tokens);
    check_fraction(p.efficiency, at + ".efficiency");
    for (std::size_t j = 0; j < i; ++j) {
      // Two points at one abscissa would make the interpolation divide by zero.
      require(k.table[j].head_dim != p.head_dim || k.table[j].tokens != p.tokens, at,
              " repeats head_dim ", p.head_dim, ", tokens ", p.tokens, " of ", prefix, ".table[", j, "]");
    }
  }
}

void validate_link(const LinkSpec& link, const std::string& what) {
  // +infinity is allowed (an ideal link in a what-if study); JSON cannot express it anyway.
  require(link.bandwidth > 0, what, ".bandwidth_gbps must be a positive number, got ",
          num(to_unit(link.bandwidth, Unit::Giga)));
  check_non_negative(link.latency_s, Unit::Micro, what + ".latency_us");
}

// ---- reading JSON ---------------------------------------------------------------------------

std::string type_of(const Json& j) {
  if (j.is_number()) return "number";
  return j.type_name();
}

std::string show(const Json& j) {
  return printable(j.dump(-1, ' ', false, Json::error_handler_t::replace), 40);
}

std::string sub(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : path + "." + std::string(key);
}

// One JSON object being read, with the fields its schema allows. Unknown fields are rejected
// before any is read, so a typo ("bandwith_gbps") is reported as such rather than as a missing
// required field or, for an optional one, silently replaced by its default.
class Fields {
 public:
  Fields(const Json& j, std::string path, std::string_view origin, std::vector<std::string_view> allowed)
      : j_(j), path_(std::move(path)), origin_(origin) {
    if (!j_.is_object()) {
      bad(path_.empty() ? std::string("the cluster spec") : path_, " must be a JSON object, got ",
          type_of(j_), " ", show(j_));
    }
    for (const auto& item : j_.items()) {
      if (std::find(allowed.begin(), allowed.end(), item.key()) == allowed.end()) {
        std::string list;
        for (const auto a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
        bad("unknown field ", printable(at(item.key())), " (",
            path_.empty() ? std::string("top-level fields") : "fields of " + path_, ": ", list, ")");
      }
    }
  }

  template <class... Parts>
  [[noreturn]] void bad(Parts&&... parts) const {
    fail(origin_, ": ", std::forward<Parts>(parts)...);
  }

  std::string_view origin() const { return origin_; }
  std::string at(std::string_view key) const { return sub(path_, key); }

  const Json* find(std::string_view key, bool required = false) const {
    const auto it = j_.find(std::string(key));
    if (it != j_.end()) return &*it;
    if (required) bad("missing required field ", at(key));
    return nullptr;
  }

  std::optional<double> number(std::string_view key, bool required = false) const {
    const Json* v = find(key, required);
    if (v == nullptr) return std::nullopt;
    if (!v->is_number()) bad(at(key), " must be a number, got ", type_of(*v), " ", show(*v));
    return v->get<double>();
  }

  // Only whole numbers: 128.5 rows cannot be meant, and 128.0 is one keystroke from it.
  std::optional<std::int64_t> integer(std::string_view key, bool required = false) const {
    const Json* v = find(key, required);
    if (v == nullptr) return std::nullopt;
    if (!v->is_number_integer()) bad(at(key), " must be an integer, got ", type_of(*v), " ", show(*v));
    if (v->is_number_unsigned() && v->get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      bad(at(key), " is out of range, got ", show(*v));
    }
    return v->get<std::int64_t>();
  }

  std::optional<int> int32(std::string_view key, bool required = false) const {
    const auto v = integer(key, required);
    if (!v) return std::nullopt;
    if (*v < std::numeric_limits<int>::min() || *v > std::numeric_limits<int>::max()) {
      bad(at(key), " is out of range, got ", *v);
    }
    return static_cast<int>(*v);
  }

  std::optional<std::string> string(std::string_view key, bool required = false) const {
    const Json* v = find(key, required);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string()) bad(at(key), " must be a string, got ", type_of(*v), " ", show(*v));
    auto s = v->get<std::string>();
    // Names and descriptions end up in one-line reports and messages.
    if (s.find_first_of("\n\r") != std::string::npos) bad(at(key), " must be one line");
    if (required && s.empty()) bad(at(key), " must not be empty");
    return s;
  }

  std::optional<Fields> object(std::string_view key, std::vector<std::string_view> allowed,
                               bool required = false) const {
    const Json* v = find(key, required);
    if (v == nullptr) return std::nullopt;
    return Fields(*v, at(key), origin_, std::move(allowed));
  }

 private:
  const Json& j_;
  std::string path_;
  std::string_view origin_;
};

// nlohmann keeps the last of two equal keys; a spec saying "bandwidth_gbps" twice is a mistake
// worth an error, so the parser callback tracks the keys of every open object.
class DuplicateKeyCheck {
 public:
  explicit DuplicateKeyCheck(std::string_view origin) : origin_(origin) {}

  bool operator()(int /*depth*/, Json::parse_event_t event, Json& parsed) {
    using Event = Json::parse_event_t;
    switch (event) {
      case Event::object_start: frames_.push_back({}); break;
      case Event::array_start: frames_.push_back({true, {}, {}, 0}); break;
      case Event::key: {
        Frame& top = frames_.back();
        top.key = parsed.get<std::string>();
        if (!top.keys.insert(top.key).second) {
          fail(origin_, ": duplicate field ", printable(path()), " (each field may appear once)");
        }
        break;
      }
      case Event::object_end:
      case Event::array_end:
        frames_.pop_back();
        element_done();
        break;
      case Event::value: element_done(); break;
    }
    return true;
  }

 private:
  struct Frame {
    bool is_array = false;
    std::set<std::string> keys;
    std::string key;          // objects: the key being read
    std::size_t index = 0;    // arrays: the element being read
  };

  void element_done() {
    if (!frames_.empty() && frames_.back().is_array) ++frames_.back().index;
  }

  std::string path() const {
    std::string p;
    for (const Frame& f : frames_) {
      // Appended piecewise: GCC 12 gives a false -Wrestrict on "[" + std::to_string(i) + "]".
      if (f.is_array) {
        p.push_back('[');
        p.append(std::to_string(f.index));
        p.push_back(']');
      } else {
        if (!p.empty()) p.push_back('.');
        p.append(f.key);
      }
    }
    return p;
  }

  std::string_view origin_;
  std::vector<Frame> frames_;
};

Json parse_text(std::string_view text, std::string_view origin) {
  try {
    return Json::parse(text.begin(), text.end(), DuplicateKeyCheck(origin));
  } catch (const Json::exception& e) {
    // "[json.exception.parse_error.101] parse error at line 2, column 5: ..." -> from "parse".
    std::string what = e.what();
    if (const auto close = what.find("] "); what.rfind("[json.exception.", 0) == 0 && close != std::string::npos) {
      what.erase(0, close + 2);
    }
    std::replace(what.begin(), what.end(), '\n', ' ');
    std::replace(what.begin(), what.end(), '\r', ' ');
    fail(origin, ": invalid JSON: ", printable(what, 300));
  }
}

// A value in @p unit as the spec's SI double.
double si(const Fields& f, std::string_view key, Unit unit, bool required, double fallback) {
  const auto v = f.number(key, required);
  return v ? from_unit(*v, unit) : fallback;
}

const std::vector<std::string_view> kLinkFields = {"name", "bandwidth_gbps", "latency_us"};

LinkSpec read_link(const Fields& f) {
  LinkSpec link;
  link.name = f.string("name").value_or("");
  link.bandwidth = si(f, "bandwidth_gbps", Unit::Giga, true, 0);
  link.latency_s = si(f, "latency_us", Unit::Micro, false, 0);
  return link;
}

KernelModel read_kernel(const Fields& f) {
  KernelModel k;
  k.max_efficiency = f.number("max_efficiency").value_or(k.max_efficiency);
  k.half_tokens = f.number("half_tokens").value_or(k.half_tokens);
  k.half_head_dim = f.number("half_head_dim").value_or(k.half_head_dim);
  k.sm_count = f.int32("sm_count").value_or(k.sm_count);
  k.tile_rows = f.int32("tile_rows").value_or(k.tile_rows);
  if (const Json* table = f.find("table")) {
    if (!table->is_array()) f.bad(f.at("table"), " must be an array, got ", type_of(*table), " ", show(*table));
    for (std::size_t i = 0; i < table->size(); ++i) {
      const Fields p((*table)[i], f.at("table") + "[" + std::to_string(i) + "]", f.origin(),
                     {"head_dim", "tokens", "efficiency"});
      EfficiencyPoint point;
      point.head_dim = *p.int32("head_dim", true);
      point.tokens = *p.integer("tokens", true);
      point.efficiency = *p.number("efficiency", true);
      k.table.push_back(point);
    }
  }
  return k;
}

DeviceSpec read_device(const Fields& f) {
  DeviceSpec d;
  d.name = *f.string("name", true);
  const Fields peak = *f.object("peak_tflops", {"bf16", "fp16", "fp32"}, true);
  d.peak_flops_bf16 = si(peak, "bf16", Unit::Tera, true, 0);
  d.peak_flops_fp16 = si(peak, "fp16", Unit::Tera, true, 0);
  d.peak_flops_fp32 = si(peak, "fp32", Unit::Tera, false, 0);
  d.memory_bytes = si(f, "memory_gib", Unit::Gibi, true, 0);
  d.memory_bandwidth = si(f, "memory_bandwidth_gbps", Unit::Giga, true, 0);
  d.launch_overhead_s = si(f, "launch_overhead_us", Unit::Micro, false, 0);
  d.comm_slowdown = f.number("comm_slowdown").value_or(d.comm_slowdown);
  d.gemm_efficiency = f.number("gemm_efficiency").value_or(d.gemm_efficiency);
  if (const auto k = f.object("kernel", {"max_efficiency", "half_tokens", "half_head_dim", "sm_count",
                                         "tile_rows", "table"})) {
    d.kernel = read_kernel(*k);
  }
  return d;
}

// ---- writing JSON ---------------------------------------------------------------------------

// A number for to_json: whole values as integers ("989", not "989.0"), others as nlohmann's
// shortest round-trip text.
OrderedJson jnum(double si, Unit unit, std::string_view field) {
  const double v = to_unit(si, unit);
  require(std::isfinite(v), "cannot write ", field, " = ", num(v), " as JSON, which has no infinity or NaN");
  if (v == std::trunc(v) && std::fabs(v) < 9007199254740992.0) return static_cast<std::int64_t>(v);
  return v;
}

OrderedJson write_link(const LinkSpec& link, const std::string& what) {
  OrderedJson j;
  j["name"] = link.name;
  j["bandwidth_gbps"] = jnum(link.bandwidth, Unit::Giga, what + ".bandwidth_gbps");
  j["latency_us"] = jnum(link.latency_s, Unit::Micro, what + ".latency_us");
  return j;
}

OrderedJson write_kernel(const KernelModel& k) {
  OrderedJson j;
  j["max_efficiency"] = jnum(k.max_efficiency, Unit::One, "device.kernel.max_efficiency");
  j["half_tokens"] = jnum(k.half_tokens, Unit::One, "device.kernel.half_tokens");
  j["half_head_dim"] = jnum(k.half_head_dim, Unit::One, "device.kernel.half_head_dim");
  j["sm_count"] = k.sm_count;
  j["tile_rows"] = k.tile_rows;
  if (!k.table.empty()) {
    OrderedJson table = OrderedJson::array();
    for (const EfficiencyPoint& p : k.table) {
      OrderedJson point;
      point["head_dim"] = p.head_dim;
      point["tokens"] = p.tokens;
      point["efficiency"] = jnum(p.efficiency, Unit::One, "device.kernel.table.efficiency");
      table.push_back(std::move(point));
    }
    j["table"] = std::move(table);
  }
  return j;
}

std::vector<std::string> sorted_preset_names() {
  std::vector<std::string> names;
  for (const auto& [name, text] : detail::embedded_presets()) names.emplace_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

// "/path: No such file or directory" as one line, or the file's bytes.
std::string read_file(const std::string& path) {
  require(!path.empty(), "cannot read a cluster spec from an empty path");
  const std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) {
    fail("cannot read cluster file ", printable(path, 200), ": ", std::generic_category().message(errno));
  }
  std::string text;
  std::array<char, 1 << 16> buf{};
  for (;;) {
    const std::size_t n = std::fread(buf.data(), 1, buf.size(), file.get());
    text.append(buf.data(), n);
    if (n < buf.size()) break;
  }
  // A directory opens fine on Linux and fails with EISDIR on the first read.
  if (std::ferror(file.get())) {
    fail("cannot read cluster file ", printable(path, 200), ": ", std::generic_category().message(errno));
  }
  return text;
}

}  // namespace

// ---- dtype ----------------------------------------------------------------------------------

std::string_view to_string(DType dtype) {
  switch (dtype) {
    case DType::BF16: return "bf16";
    case DType::FP16: return "fp16";
    case DType::FP32: return "fp32";
  }
  return "?";
}

DType parse_dtype(std::string_view name) {
  if (name == "bf16") return DType::BF16;
  if (name == "fp16") return DType::FP16;
  if (name == "fp32") return DType::FP32;
  fail("unknown dtype \"", printable(name), "\" (expected bf16, fp16 or fp32)");
}

int dtype_bytes(DType dtype) { return dtype == DType::FP32 ? 4 : 2; }

// ---- kernel model ---------------------------------------------------------------------------

double KernelModel::efficiency(std::int64_t batch_heads, std::int64_t q_rows, std::int64_t kv_rows,
                               int head_dim) const {
  require(batch_heads > 0 && q_rows > 0 && kv_rows > 0 && head_dim > 0,
          "kernel efficiency needs positive batch*heads, query rows, key rows and head dim, got ",
          batch_heads, ", ", q_rows, ", ", kv_rows, ", ", head_dim);
  const auto kv = static_cast<double>(kv_rows);

  if (!table.empty()) {
    // Nearest measured head dim (ties: the smaller), then piecewise linear in log2(tokens).
    int best = table.front().head_dim;
    for (const EfficiencyPoint& p : table) {
      const int dp = std::abs(p.head_dim - head_dim), db = std::abs(best - head_dim);
      if (dp < db || (dp == db && p.head_dim < best)) best = p.head_dim;
    }
    std::vector<EfficiencyPoint> pts;
    for (const EfficiencyPoint& p : table) {
      if (p.head_dim == best) pts.push_back(p);
    }
    std::sort(pts.begin(), pts.end(), [](const auto& a, const auto& b) { return a.tokens < b.tokens; });
    if (kv_rows <= pts.front().tokens) return pts.front().efficiency;
    if (kv_rows >= pts.back().tokens) return pts.back().efficiency;
    const auto hi = std::upper_bound(pts.begin(), pts.end(), kv_rows,
                                     [](std::int64_t t, const EfficiencyPoint& p) { return t < p.tokens; });
    const auto lo = std::prev(hi);
    const double x0 = std::log2(static_cast<double>(lo->tokens));
    const double x1 = std::log2(static_cast<double>(hi->tokens));
    const double t = (std::log2(kv) - x0) / (x1 - x0);
    return std::max(1e-6, lo->efficiency + (hi->efficiency - lo->efficiency) * t);
  }

  require(tile_rows >= 1, "kernel.tile_rows must be >= 1, got ", tile_rows);
  const double kv_factor = half_tokens == 0 ? 1.0 : kv / (kv + half_tokens);
  double d_factor = 1.0;
  if (half_head_dim != 0) {
    const auto raw = [this](double d) { return d / (d + half_head_dim); };
    d_factor = raw(head_dim) / raw(128.0);
  }
  double waves_factor = 1.0, tile_factor = 1.0;
  if (sm_count > 0) {
    const std::int64_t tiles = q_rows / tile_rows + (q_rows % tile_rows != 0 ? 1 : 0);
    const auto sms = static_cast<double>(sm_count);
    // A partial last tile costs a whole thread block: only q_rows of tiles * tile_rows rows work.
    tile_factor = static_cast<double>(q_rows) / (static_cast<double>(tiles) * tile_rows);
    if (tiles <= std::numeric_limits<std::int64_t>::max() / batch_heads) {
      const std::int64_t blocks = batch_heads * tiles;
      const std::int64_t waves = blocks / sm_count + (blocks % sm_count != 0 ? 1 : 0);
      waves_factor = static_cast<double>(blocks) / (static_cast<double>(waves) * sms);
    } else {
      // Beyond 2^63 blocks the last partial wave is negligible; stay in doubles.
      const double blocks = static_cast<double>(batch_heads) * static_cast<double>(tiles);
      waves_factor = blocks / (std::ceil(blocks / sms) * sms);
    }
  }
  return std::max(1e-6, std::min(1.0, max_efficiency * kv_factor * d_factor) * waves_factor * tile_factor);
}

void KernelModel::validate() const { validate_kernel(*this, "kernel"); }

// ---- device, link, cluster ------------------------------------------------------------------

double DeviceSpec::peak_flops(DType dtype) const {
  switch (dtype) {
    case DType::BF16: return peak_flops_bf16;
    case DType::FP16: return peak_flops_fp16;
    case DType::FP32:
      require(peak_flops_fp32 > 0, name.empty() ? std::string("the device") : name,
              " has no fp32 rate in this cluster spec");
      return peak_flops_fp32;
  }
  fail("unknown dtype");
}

void DeviceSpec::validate() const {
  check_positive(peak_flops_bf16, Unit::Tera, "device.peak_tflops.bf16");
  check_positive(peak_flops_fp16, Unit::Tera, "device.peak_tflops.fp16");
  require(std::isfinite(peak_flops_fp32) && peak_flops_fp32 >= 0,
          "device.peak_tflops.fp32 must be a positive number (or omitted: no fp32), got ",
          num(to_unit(peak_flops_fp32, Unit::Tera)));
  check_positive(memory_bytes, Unit::Gibi, "device.memory_gib");
  check_positive(memory_bandwidth, Unit::Giga, "device.memory_bandwidth_gbps");
  check_non_negative(launch_overhead_s, Unit::Micro, "device.launch_overhead_us");
  require(comm_slowdown >= 0 && comm_slowdown < 1, "device.comm_slowdown must be in [0, 1), got ",
          num(comm_slowdown));
  check_fraction(gemm_efficiency, "device.gemm_efficiency");
  validate_kernel(kernel, "device.kernel");
}

double LinkSpec::transfer_time(double bytes) const { return latency_s + bytes / bandwidth; }

void LinkSpec::validate(std::string_view what) const { validate_link(*this, std::string(what)); }

const LinkSpec& ClusterSpec::hop(int from, int devices) const {
  require(devices >= 1 && from >= 0 && from < devices, "hop from device ", from, " in a ring of ", devices,
          " devices is out of range");
  const int to = (from + 1) % devices;
  const auto node = [this](int d) { return devices_per_node > 0 ? d / devices_per_node : 0; };
  if (node(from) == node(to)) return intra_node;
  require(inter_node.has_value(), "cluster ", printable(name), ": the hop from device ", from, " to ", to,
          " crosses nodes but the spec has no inter_node_link");
  return *inter_node;
}

void ClusterSpec::validate() const {
  device.validate();
  validate_link(intra_node, "intra_node_link");
  if (inter_node) validate_link(*inter_node, "inter_node_link");
  require(devices_per_node >= 0, "devices_per_node must be >= 0 (0: all devices in one node), got ",
          devices_per_node);
  require(devices_per_node == 0 || inter_node.has_value(), "inter_node_link is required when devices_per_node (",
          devices_per_node, ") is set");
  if (straggler) {
    require(straggler->device >= 0, "straggler.device must be >= 0, got ", straggler->device);
    require(std::isfinite(straggler->slowdown) && straggler->slowdown >= 1,
            "straggler.slowdown must be a number >= 1, got ", num(straggler->slowdown));
  }
  check_non_negative(jitter.sigma, Unit::One, "jitter.sigma");
}

void ClusterSpec::validate_for(int devices) const {
  require(devices >= 1, "a ring needs at least 1 device, got ", devices);
  if (straggler) {
    require(straggler->device < devices, "straggler.device ", straggler->device,
            " is out of range for a ring of ", devices, " devices (0..", devices - 1, ")");
  }
  if (devices_per_node > 0 && devices > devices_per_node) {
    require(inter_node.has_value(), "a ring of ", devices, " devices spans nodes of ", devices_per_node,
            " but cluster ", printable(name), " has no inter_node_link");
  }
  validate();
}

// ---- presets, files, JSON -------------------------------------------------------------------

std::vector<std::string> preset_names() { return sorted_preset_names(); }

std::string preset_json(std::string_view name) {
  for (const auto& [preset, text] : detail::embedded_presets()) {
    if (preset == name) return std::string(text);
  }
  fail("unknown cluster preset \"", printable(name), "\" (presets: ", join(sorted_preset_names()), ")");
}

ClusterSpec parse_cluster_json(std::string_view text, std::string_view origin) {
  const Json root = parse_text(text, origin);
  const Fields top(root, "", origin,
                   {"name", "description", "source", "device", "devices_per_node", "intra_node_link",
                    "inter_node_link", "straggler", "jitter"});
  ClusterSpec spec;
  spec.name = *top.string("name", true);
  spec.description = top.string("description").value_or("");
  spec.source = top.string("source").value_or("");
  spec.device = read_device(*top.object("device",
                                        {"name", "peak_tflops", "memory_gib", "memory_bandwidth_gbps",
                                         "launch_overhead_us", "comm_slowdown", "gemm_efficiency", "kernel"},
                                        true));
  spec.devices_per_node = top.int32("devices_per_node").value_or(0);
  spec.intra_node = read_link(*top.object("intra_node_link", kLinkFields, true));
  if (const auto f = top.object("inter_node_link", kLinkFields)) spec.inter_node = read_link(*f);
  if (const auto f = top.object("straggler", {"device", "slowdown"})) {
    Straggler s;
    s.device = f->int32("device").value_or(s.device);
    s.slowdown = f->number("slowdown").value_or(s.slowdown);
    spec.straggler = s;
  }
  if (const auto f = top.object("jitter", {"sigma", "seed"})) {
    spec.jitter.sigma = f->number("sigma").value_or(spec.jitter.sigma);
    if (const Json* seed = f->find("seed")) {
      if (!seed->is_number_unsigned()) {
        f->bad(f->at("seed"), " must be a non-negative integer, got ", type_of(*seed), " ", show(*seed));
      }
      spec.jitter.seed = seed->get<std::uint64_t>();
    }
  }
  try {
    spec.validate();
  } catch (const Error& e) {
    fail(origin, ": ", e.what());
  }
  return spec;
}

ClusterSpec load_cluster(std::string_view preset_or_path) {
  const bool is_path = preset_or_path.find('/') != std::string_view::npos || preset_or_path.ends_with(".json");
  if (is_path) {
    const std::string path(preset_or_path);
    return parse_cluster_json(read_file(path), printable(path, 200));
  }
  for (const auto& [preset, text] : detail::embedded_presets()) {
    if (preset == preset_or_path) return parse_cluster_json(text, "preset " + std::string(preset));
  }
  fail("cluster \"", printable(preset_or_path), "\" is not a preset (", join(sorted_preset_names()),
       ") and not a .json file");
}

std::string to_json(const ClusterSpec& spec) {
  OrderedJson j;
  j["name"] = spec.name;
  j["description"] = spec.description;
  j["source"] = spec.source;
  const DeviceSpec& d = spec.device;
  OrderedJson device;
  device["name"] = d.name;
  OrderedJson peak;
  peak["bf16"] = jnum(d.peak_flops_bf16, Unit::Tera, "device.peak_tflops.bf16");
  peak["fp16"] = jnum(d.peak_flops_fp16, Unit::Tera, "device.peak_tflops.fp16");
  // 0 means "no fp32 rate", which the schema spells by leaving the field out.
  if (d.peak_flops_fp32 != 0) peak["fp32"] = jnum(d.peak_flops_fp32, Unit::Tera, "device.peak_tflops.fp32");
  device["peak_tflops"] = std::move(peak);
  device["memory_gib"] = jnum(d.memory_bytes, Unit::Gibi, "device.memory_gib");
  device["memory_bandwidth_gbps"] = jnum(d.memory_bandwidth, Unit::Giga, "device.memory_bandwidth_gbps");
  device["launch_overhead_us"] = jnum(d.launch_overhead_s, Unit::Micro, "device.launch_overhead_us");
  device["comm_slowdown"] = jnum(d.comm_slowdown, Unit::One, "device.comm_slowdown");
  device["gemm_efficiency"] = jnum(d.gemm_efficiency, Unit::One, "device.gemm_efficiency");
  device["kernel"] = write_kernel(d.kernel);
  j["device"] = std::move(device);
  j["devices_per_node"] = spec.devices_per_node;
  j["intra_node_link"] = write_link(spec.intra_node, "intra_node_link");
  if (spec.inter_node) j["inter_node_link"] = write_link(*spec.inter_node, "inter_node_link");
  if (spec.straggler) {
    OrderedJson s;
    s["device"] = spec.straggler->device;
    s["slowdown"] = jnum(spec.straggler->slowdown, Unit::One, "straggler.slowdown");
    j["straggler"] = std::move(s);
  }
  OrderedJson jitter;
  jitter["sigma"] = jnum(spec.jitter.sigma, Unit::One, "jitter.sigma");
  jitter["seed"] = spec.jitter.seed;
  j["jitter"] = std::move(jitter);
  return j.dump(2, ' ', false, OrderedJson::error_handler_t::replace) + "\n";
}

}  // namespace ringattn::sim
