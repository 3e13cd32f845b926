// Tests of the cluster spec: presets and their published figures, JSON parsing and writing,
// the ring's hops, link times, the kernel-efficiency model and the one-line errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "ringattn/core/error.hpp"
#include "ringattn/simulator/cluster.hpp"

namespace {

namespace sim = ringattn::sim;
using sim::ClusterSpec;
using sim::DType;
using sim::KernelModel;
using sim::LinkSpec;

constexpr double kGiB = 1073741824.0;
constexpr double kInf = std::numeric_limits<double>::infinity();

// The schema's example: every field present.
const std::string kExample = R"json({
  "name": "h100-nvlink",
  "description": "8x H100 SXM in one node, NVLink 4 (450 GB/s per direction)",
  "source": "NVIDIA H100 datasheet",
  "device": {
    "name": "H100 SXM",
    "peak_tflops": {"bf16": 989, "fp16": 989, "fp32": 67},
    "memory_gib": 80,
    "memory_bandwidth_gbps": 3350,
    "launch_overhead_us": 4,
    "comm_slowdown": 0.05,
    "gemm_efficiency": 0.7,
    "kernel": {"max_efficiency": 0.65, "half_tokens": 128, "half_head_dim": 32, "sm_count": 132, "tile_rows": 128,
               "table": [{"head_dim": 128, "tokens": 1024, "efficiency": 0.5}]}
  },
  "devices_per_node": 8,
  "intra_node_link": {"name": "NVLink 4", "bandwidth_gbps": 450, "latency_us": 3},
  "inter_node_link": {"name": "InfiniBand NDR", "bandwidth_gbps": 50, "latency_us": 5},
  "straggler": {"device": 3, "slowdown": 1.2},
  "jitter": {"sigma": 0.05, "seed": 7}
})json";

// Only the required fields.
const std::string kMinimal = R"json({
  "name": "tiny",
  "device": {"name": "Dev", "peak_tflops": {"bf16": 100, "fp16": 50}, "memory_gib": 16,
             "memory_bandwidth_gbps": 1000},
  "intra_node_link": {"bandwidth_gbps": 100}
})json";

// @p text with its one occurrence of @p from replaced by @p to.
std::string with(std::string text, const std::string& from, const std::string& to) {
  const auto at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  EXPECT_EQ(text.find(from, at + 1), std::string::npos) << from << " occurs twice";
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}

// The message of the ringattn::Error @p f throws ("" and a failure if none).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ringattn::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a ringattn::Error: " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error thrown";
  return "";
}

// Asserts that @p f throws a one-line ringattn::Error containing every one of @p parts.
void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  const std::string msg = error_of(f);
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\r'), std::string::npos) << msg;
  for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
}

void expect_parse_error(const std::string& text, const std::vector<std::string>& parts) {
  auto all = parts;
  all.emplace_back("spec.json: ");
  expect_error([&] { (void)sim::parse_cluster_json(text, "spec.json"); }, all);
}

void expect_same_link(const LinkSpec& a, const LinkSpec& b) {
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.bandwidth, b.bandwidth);
  EXPECT_EQ(a.latency_s, b.latency_s);
}

// Field by field and bit for bit.
void expect_same(const ClusterSpec& a, const ClusterSpec& b) {
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.description, b.description);
  EXPECT_EQ(a.source, b.source);
  EXPECT_EQ(a.device.name, b.device.name);
  EXPECT_EQ(a.device.peak_flops_bf16, b.device.peak_flops_bf16);
  EXPECT_EQ(a.device.peak_flops_fp16, b.device.peak_flops_fp16);
  EXPECT_EQ(a.device.peak_flops_fp32, b.device.peak_flops_fp32);
  EXPECT_EQ(a.device.memory_bytes, b.device.memory_bytes);
  EXPECT_EQ(a.device.memory_bandwidth, b.device.memory_bandwidth);
  EXPECT_EQ(a.device.launch_overhead_s, b.device.launch_overhead_s);
  EXPECT_EQ(a.device.comm_slowdown, b.device.comm_slowdown);
  EXPECT_EQ(a.device.gemm_efficiency, b.device.gemm_efficiency);
  const KernelModel &ka = a.device.kernel, &kb = b.device.kernel;
  EXPECT_EQ(ka.max_efficiency, kb.max_efficiency);
  EXPECT_EQ(ka.half_tokens, kb.half_tokens);
  EXPECT_EQ(ka.half_head_dim, kb.half_head_dim);
  EXPECT_EQ(ka.sm_count, kb.sm_count);
  EXPECT_EQ(ka.tile_rows, kb.tile_rows);
  EXPECT_EQ(ka.table, kb.table);
  EXPECT_EQ(a.devices_per_node, b.devices_per_node);
  expect_same_link(a.intra_node, b.intra_node);
  ASSERT_EQ(a.inter_node.has_value(), b.inter_node.has_value());
  if (a.inter_node) expect_same_link(*a.inter_node, *b.inter_node);
  EXPECT_EQ(a.straggler, b.straggler);
  EXPECT_EQ(a.jitter, b.jitter);
}

// ---- dtypes ---------------------------------------------------------------------------------

TEST(Dtype, NamesAndSizes) {
  for (const DType t : {DType::BF16, DType::FP16, DType::FP32}) EXPECT_EQ(sim::parse_dtype(sim::to_string(t)), t);
  EXPECT_EQ(sim::to_string(DType::BF16), "bf16");
  EXPECT_EQ(sim::dtype_bytes(DType::BF16), 2);
  EXPECT_EQ(sim::dtype_bytes(DType::FP16), 2);
  EXPECT_EQ(sim::dtype_bytes(DType::FP32), 4);
  expect_error([] { (void)sim::parse_dtype("fp8"); }, {"fp8", "bf16"});
}

// ---- presets --------------------------------------------------------------------------------

TEST(Presets, AllShippedAndSorted) {
  const auto names = sim::preset_names();
  const std::vector<std::string> expected = {"a100-ib", "a100-nvlink", "dgx-h100-ib", "h100-ib", "h100-nvlink",
                                             "h200-nvlink", "tpu-v3", "tpu-v4", "tpu-v5e"};
  EXPECT_EQ(names, expected);
}

TEST(Presets, ParseValidateAndRoundTrip) {
  for (const auto& name : sim::preset_names()) {
    SCOPED_TRACE(name);
    const ClusterSpec spec = sim::load_cluster(name);
    EXPECT_EQ(spec.name, name);  // the file's "name" is its file name
    EXPECT_FALSE(spec.description.empty());
    EXPECT_FALSE(spec.source.empty());
    EXPECT_NO_THROW(spec.validate());
    EXPECT_NO_THROW(spec.validate_for(1));
    EXPECT_NO_THROW(spec.validate_for(64));
    expect_same(spec, sim::parse_cluster_json(sim::preset_json(name), "again"));
    const std::string text = sim::to_json(spec);
    const ClusterSpec back = sim::parse_cluster_json(text, "round trip");
    expect_same(spec, back);
    EXPECT_EQ(sim::to_json(back), text);
  }
}

TEST(Presets, RingAttentionTable2FiguresExactly) {
  // Liu, Zaharia, Abbeel, arXiv 2310.01889, Table 2: peak TFLOP/s and per-device GB/s.
  const ClusterSpec nvlink = sim::load_cluster("a100-nvlink");
  EXPECT_EQ(nvlink.device.peak_flops(DType::BF16), 312e12);
  EXPECT_EQ(nvlink.device.peak_flops(DType::FP16), 312e12);
  EXPECT_EQ(nvlink.device.peak_flops(DType::FP32), 19.5e12);
  EXPECT_EQ(nvlink.intra_node.bandwidth, 300e9);
  EXPECT_EQ(nvlink.intra_node.latency_s, 3e-6);
  EXPECT_EQ(nvlink.devices_per_node, 0);
  EXPECT_EQ(nvlink.device.memory_bytes, 80 * kGiB);
  EXPECT_EQ(nvlink.device.memory_bandwidth, 2039e9);
  EXPECT_EQ(nvlink.device.kernel.sm_count, 108);
  EXPECT_EQ(nvlink.device.comm_slowdown, 0);

  const ClusterSpec ib = sim::load_cluster("a100-ib");
  EXPECT_EQ(ib.device.peak_flops(DType::BF16), 312e12);
  EXPECT_EQ(ib.devices_per_node, 1);
  ASSERT_TRUE(ib.inter_node.has_value());
  EXPECT_EQ(ib.inter_node->bandwidth, 12.5e9);
  EXPECT_EQ(ib.inter_node->latency_s, 5e-6);
  EXPECT_EQ(&ib.hop(0, 4), &*ib.inter_node);

  struct Tpu {
    const char* name;
    double tflops, gbps, gib, hbm_gbps;
  };
  for (const Tpu& t : {Tpu{"tpu-v3", 123, 112, 32, 900}, Tpu{"tpu-v4", 275, 268, 32, 1200},
                       Tpu{"tpu-v5e", 196, 186, 16, 819}}) {
    SCOPED_TRACE(t.name);
    const ClusterSpec spec = sim::load_cluster(t.name);
    EXPECT_EQ(spec.device.peak_flops(DType::BF16), t.tflops * 1e12);
    EXPECT_EQ(spec.device.peak_flops(DType::FP16), t.tflops * 1e12);
    EXPECT_EQ(spec.intra_node.bandwidth, t.gbps * 1e9);
    EXPECT_EQ(spec.device.memory_bytes, t.gib * kGiB);
    EXPECT_EQ(spec.device.memory_bandwidth, t.hbm_gbps * 1e9);
    EXPECT_EQ(spec.devices_per_node, 0);
    EXPECT_EQ(spec.device.kernel.sm_count, 0);
    expect_error([&] { (void)spec.device.peak_flops(DType::FP32); }, {"has no fp32 rate"});
  }
}

TEST(Presets, HopperFigures) {
  const ClusterSpec h100 = sim::load_cluster("h100-nvlink");
  EXPECT_EQ(h100.device.peak_flops(DType::BF16), 989e12);
  EXPECT_EQ(h100.device.peak_flops(DType::FP32), 67e12);
  EXPECT_EQ(h100.device.memory_bandwidth, 3350e9);
  EXPECT_EQ(h100.device.kernel.sm_count, 132);
  EXPECT_EQ(h100.device.kernel.max_efficiency, 0.55);
  EXPECT_EQ(h100.device.comm_slowdown, 0.05);
  EXPECT_EQ(h100.devices_per_node, 0);  // one NVLink domain: every hop NVLink
  EXPECT_EQ(h100.intra_node.bandwidth, 450e9);
  EXPECT_EQ(h100.hop(15, 16).bandwidth, 450e9);
  EXPECT_FALSE(h100.inter_node.has_value());

  const ClusterSpec h100_ib = sim::load_cluster("h100-ib");
  EXPECT_EQ(h100_ib.devices_per_node, 1);
  EXPECT_EQ(h100_ib.hop(3, 8).bandwidth, 50e9);

  const ClusterSpec h200 = sim::load_cluster("h200-nvlink");
  EXPECT_EQ(h200.device.memory_bytes, 131.3 * kGiB);
  EXPECT_EQ(h200.device.memory_bandwidth, 4800e9);
  EXPECT_EQ(h200.device.peak_flops(DType::FP16), 989e12);

  const ClusterSpec dgx = sim::load_cluster("dgx-h100-ib");
  EXPECT_EQ(dgx.devices_per_node, 8);
  EXPECT_EQ(dgx.hop(7, 16).bandwidth, 50e9);
  EXPECT_EQ(dgx.hop(6, 16).bandwidth, 450e9);
}

// ---- parsing and writing --------------------------------------------------------------------

TEST(ClusterJson, ParsesTheSchemaExampleInSiUnits) {
  const ClusterSpec s = sim::parse_cluster_json(kExample, "example.json");
  EXPECT_EQ(s.name, "h100-nvlink");
  EXPECT_EQ(s.source, "NVIDIA H100 datasheet");
  EXPECT_EQ(s.device.name, "H100 SXM");
  EXPECT_EQ(s.device.peak_flops_bf16, 989e12);
  EXPECT_EQ(s.device.peak_flops_fp16, 989e12);
  EXPECT_EQ(s.device.peak_flops_fp32, 67e12);
  EXPECT_EQ(s.device.memory_bytes, 80 * kGiB);
  EXPECT_EQ(s.device.memory_bandwidth, 3350e9);
  EXPECT_EQ(s.device.launch_overhead_s, 4e-6);
  EXPECT_EQ(s.device.comm_slowdown, 0.05);
  EXPECT_EQ(s.device.gemm_efficiency, 0.7);
  EXPECT_EQ(s.device.kernel.max_efficiency, 0.65);
  EXPECT_EQ(s.device.kernel.sm_count, 132);
  ASSERT_EQ(s.device.kernel.table.size(), 1u);
  EXPECT_EQ(s.device.kernel.table[0], (sim::EfficiencyPoint{128, 1024, 0.5}));
  EXPECT_EQ(s.devices_per_node, 8);
  EXPECT_EQ(s.intra_node.name, "NVLink 4");
  EXPECT_EQ(s.intra_node.bandwidth, 450e9);
  EXPECT_EQ(s.intra_node.latency_s, 3e-6);
  ASSERT_TRUE(s.inter_node.has_value());
  EXPECT_EQ(s.inter_node->name, "InfiniBand NDR");
  EXPECT_EQ(s.inter_node->latency_s, 5e-6);
  ASSERT_TRUE(s.straggler.has_value());
  EXPECT_EQ(*s.straggler, (sim::Straggler{3, 1.2}));
  EXPECT_EQ(s.jitter, (sim::Jitter{0.05, 7}));
  expect_same(s, sim::parse_cluster_json(sim::to_json(s), "again"));
}

TEST(ClusterJson, OptionalFieldsTakeTheHeaderDefaults) {
  const ClusterSpec s = sim::parse_cluster_json(kMinimal, "tiny.json");
  const KernelModel k;
  EXPECT_EQ(s.description, "");
  EXPECT_EQ(s.source, "");
  EXPECT_EQ(s.device.peak_flops_fp32, 0);
  EXPECT_EQ(s.device.launch_overhead_s, 0);
  EXPECT_EQ(s.device.comm_slowdown, 0);
  EXPECT_EQ(s.device.gemm_efficiency, 0.7);
  EXPECT_EQ(s.device.kernel.max_efficiency, k.max_efficiency);
  EXPECT_EQ(s.device.kernel.half_tokens, k.half_tokens);
  EXPECT_EQ(s.device.kernel.half_head_dim, k.half_head_dim);
  EXPECT_EQ(s.device.kernel.sm_count, k.sm_count);
  EXPECT_EQ(s.device.kernel.tile_rows, k.tile_rows);
  EXPECT_TRUE(s.device.kernel.table.empty());
  EXPECT_EQ(s.devices_per_node, 0);
  EXPECT_EQ(s.intra_node.name, "");
  EXPECT_EQ(s.intra_node.latency_s, 0);
  EXPECT_FALSE(s.inter_node.has_value());
  EXPECT_FALSE(s.straggler.has_value());
  EXPECT_EQ(s.jitter, sim::Jitter{});
  expect_error([&] { (void)s.device.peak_flops(DType::FP32); }, {"Dev has no fp32 rate in this cluster spec"});
  expect_same(s, sim::parse_cluster_json(sim::to_json(s), "again"));
}

TEST(ClusterJson, AwkwardDecimalsRoundTripAndStayShort) {
  std::string text = with(kExample, R"("latency_us": 3})", R"("latency_us": 0.1})");
  text = with(text, R"("bandwidth_gbps": 50)", R"("bandwidth_gbps": 0.3)");
  text = with(text, R"("memory_gib": 80)", R"("memory_gib": 0.7)");
  text = with(text, R"("launch_overhead_us": 4)", R"("launch_overhead_us": 3.3)");
  text = with(text, R"("fp32": 67)", R"("fp32": 0.1)");
  const ClusterSpec s = sim::parse_cluster_json(text, "odd.json");
  const std::string out = sim::to_json(s);
  for (const char* v : {"\"latency_us\": 0.1", "\"bandwidth_gbps\": 0.3", "\"memory_gib\": 0.7",
                        "\"launch_overhead_us\": 3.3", "\"fp32\": 0.1", "\"bf16\": 989"}) {
    EXPECT_NE(out.find(v), std::string::npos) << v << " not in\n" << out;
  }
  expect_same(s, sim::parse_cluster_json(out, "again"));
}

TEST(ClusterJson, WritesTwoSpaceIndentedJson) {
  const std::string out = sim::to_json(sim::load_cluster("h100-nvlink"));
  EXPECT_EQ(out.rfind("{\n  \"name\": \"h100-nvlink\",\n", 0), 0u) << out;
  EXPECT_NE(out.find("\n    \"peak_tflops\": {\n      \"bf16\": 989,"), std::string::npos) << out;
}

TEST(ClusterJson, InfiniteBandwidthCannotBeWritten) {
  ClusterSpec s = sim::parse_cluster_json(kMinimal, "tiny.json");
  s.intra_node.bandwidth = kInf;
  EXPECT_NO_THROW(s.validate());  // an ideal link is fine in code
  expect_error([&] { (void)sim::to_json(s); }, {"intra_node_link.bandwidth_gbps", "inf"});
}

TEST(ClusterJson, LoadsFilesByPath) {
  const auto dir = std::filesystem::temp_directory_path();
  const auto path = dir / ("ringattn_cluster_test_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
                           ".json");
  {
    std::ofstream f(path);
    f << kMinimal;
  }
  const ClusterSpec s = sim::load_cluster(path.string());
  EXPECT_EQ(s.name, "tiny");
  {
    std::ofstream f(path);
    f << with(kMinimal, R"("memory_gib": 16)", R"("memory_gib": 0)");
  }
  expect_error([&] { (void)sim::load_cluster(path.string()); }, {path.string() + ": device.memory_gib"});
  std::filesystem::remove(path);
}

// ---- errors ---------------------------------------------------------------------------------

TEST(ClusterErrors, TheDocumentedMessage) {
  const std::string text = with(kExample, R"("bf16": 989)", R"("bf16": -3)");
  EXPECT_EQ(error_of([&] { (void)sim::parse_cluster_json(text, "h100.json"); }),
            "h100.json: device.peak_tflops.bf16 must be a positive number, got -3");
}

TEST(ClusterErrors, MalformedJsonGivesThePosition) {
  expect_parse_error(with(kExample, R"("memory_gib": 80,)", R"("memory_gib": 80,,)"), {"line 8, column 22"});
  expect_parse_error(kMinimal.substr(0, kMinimal.size() - 1), {"invalid JSON", "line"});
  expect_parse_error("", {"invalid JSON"});
  expect_parse_error("[1, 2]", {"must be a JSON object", "array"});
  expect_parse_error(with(kMinimal, R"("bf16": 100)", R"("bf16": NaN)"), {"invalid JSON"});
  expect_parse_error(kMinimal + "x", {"invalid JSON"});
}

TEST(ClusterErrors, MissingRequiredField) {
  expect_parse_error(with(kMinimal, R"("memory_gib": 16,)", ""), {"missing required field device.memory_gib"});
  expect_parse_error(with(kMinimal, R"("name": "tiny",)", ""), {"missing required field name"});
  expect_parse_error(with(kMinimal, R"("fp16": 50)", R"("fp32": 50)"), {"device.peak_tflops.fp16"});
  expect_parse_error(with(kMinimal, R"({"bandwidth_gbps": 100})", "{}"), {"intra_node_link.bandwidth_gbps"});
  expect_parse_error(with(kMinimal, R"("name": "tiny")", R"("name": "")"), {"name must not be empty"});
}

TEST(ClusterErrors, UnknownFieldsAreTypos) {
  expect_parse_error(with(kExample, "bandwidth_gbps\": 450", "bandwith_gbps\": 450"),
                     {"unknown field intra_node_link.bandwith_gbps", "bandwidth_gbps"});
  expect_parse_error(with(kExample, "\"max_efficiency\"", "\"max_eficiency\""),
                     {"unknown field device.kernel.max_eficiency"});
  expect_parse_error(with(kExample, "\"jitter\"", "\"jiter\""), {"unknown field jiter"});
  expect_parse_error(with(kExample, R"("efficiency": 0.5})", R"("efficiency": 0.5, "tokns": 3})"),
                     {"unknown field device.kernel.table[0].tokns"});
  expect_parse_error(with(kExample, "\"bf16\": 989,", "\"bf16\": 989, \"fp8\": 1979,"),
                     {"unknown field device.peak_tflops.fp8"});
}

TEST(ClusterErrors, DuplicateFields) {
  expect_parse_error(with(kExample, R"("latency_us": 3})", R"("latency_us": 3, "latency_us": 4})"),
                     {"duplicate field intra_node_link.latency_us"});
  expect_parse_error(
      with(kExample, R"("efficiency": 0.5})", R"("efficiency": 0.5}, {"head_dim": 64, "head_dim": 64})"),
      {"duplicate field device.kernel.table[1].head_dim"});
}

TEST(ClusterErrors, WrongTypes) {
  expect_parse_error(with(kExample, R"("bf16": 989)", R"("bf16": "989")"),
                     {"device.peak_tflops.bf16 must be a number", "\"989\""});
  expect_parse_error(with(kExample, R"("sm_count": 132)", R"("sm_count": 132.5)"),
                     {"device.kernel.sm_count must be an integer"});
  expect_parse_error(with(kExample, R"("devices_per_node": 8)", R"("devices_per_node": 1e10)"),
                     {"devices_per_node"});
  expect_parse_error(with(kExample, R"("devices_per_node": 8)", R"("devices_per_node": 10000000000)"),
                     {"devices_per_node is out of range"});
  expect_parse_error(with(kExample, R"("seed": 7)", R"("seed": -7)"), {"jitter.seed must be a non-negative integer"});
  expect_parse_error(with(kExample, R"("name": "H100 SXM")", R"("name": 100)"), {"device.name must be a string"});
  expect_parse_error(with(kExample, R"([{"head_dim": 128, "tokens": 1024, "efficiency": 0.5}])", "5"),
                     {"device.kernel.table must be an array"});
  expect_parse_error(with(kExample, R"("straggler": {"device": 3, "slowdown": 1.2})", R"("straggler": 3)"),
                     {"straggler must be a JSON object"});
  expect_parse_error(with(kExample, R"("description": "8x)", R"("description": "two\nlines 8x)"),
                     {"description must be one line"});
}

TEST(ClusterErrors, ImpossibleValues) {
  const auto bad = [](const std::string& from, const std::string& to, const std::vector<std::string>& parts) {
    SCOPED_TRACE(to);
    expect_parse_error(with(kExample, from, to), parts);
  };
  bad(R"("bandwidth_gbps": 450)", R"("bandwidth_gbps": 0)", {"intra_node_link.bandwidth_gbps", "got 0"});
  bad(R"("bandwidth_gbps": 50)", R"("bandwidth_gbps": -50)", {"inter_node_link.bandwidth_gbps", "got -50"});
  bad(R"("latency_us": 3)", R"("latency_us": -1)", {"intra_node_link.latency_us", "got -1"});
  bad(R"("memory_gib": 80)", R"("memory_gib": -80)", {"device.memory_gib", "got -80"});
  bad(R"("memory_bandwidth_gbps": 3350)", R"("memory_bandwidth_gbps": 0)", {"device.memory_bandwidth_gbps"});
  bad(R"("fp16": 989)", R"("fp16": 0)", {"device.peak_tflops.fp16"});
  bad(R"("fp32": 67)", R"("fp32": -1)", {"device.peak_tflops.fp32"});
  bad(R"("bf16": 989)", R"("bf16": 1e300)", {"device.peak_tflops.bf16"});  // overflows to inf in FLOP/s
  bad(R"("launch_overhead_us": 4)", R"("launch_overhead_us": -4)", {"device.launch_overhead_us"});
  bad(R"("comm_slowdown": 0.05)", R"("comm_slowdown": 1.0)", {"device.comm_slowdown", "[0, 1)", "got 1"});
  bad(R"("comm_slowdown": 0.05)", R"("comm_slowdown": -0.1)", {"device.comm_slowdown"});
  bad(R"("gemm_efficiency": 0.7)", R"("gemm_efficiency": 0)", {"device.gemm_efficiency", "(0, 1]"});
  bad(R"("max_efficiency": 0.65)", R"("max_efficiency": 1.5)", {"device.kernel.max_efficiency"});
  bad(R"("half_tokens": 128)", R"("half_tokens": -1)", {"device.kernel.half_tokens"});
  bad(R"("half_head_dim": 32)", R"("half_head_dim": -1)", {"device.kernel.half_head_dim"});
  bad(R"("sm_count": 132)", R"("sm_count": -1)", {"device.kernel.sm_count"});
  bad(R"("tile_rows": 128)", R"("tile_rows": 0)", {"device.kernel.tile_rows"});
  bad(R"("head_dim": 128)", R"("head_dim": 0)", {"device.kernel.table[0].head_dim"});
  bad(R"("tokens": 1024)", R"("tokens": 0)", {"device.kernel.table[0].tokens"});
  bad(R"("efficiency": 0.5)", R"("efficiency": 1.5)", {"device.kernel.table[0].efficiency"});
  bad(R"("efficiency": 0.5})", R"("efficiency": 0.5}, {"head_dim": 128, "tokens": 1024, "efficiency": 0.6})",
      {"device.kernel.table[1] repeats"});
  bad(R"("slowdown": 1.2)", R"("slowdown": 0.5)", {"straggler.slowdown"});
  bad(R"("device": 3,)", R"("device": -3,)", {"straggler.device"});
  bad(R"("sigma": 0.05)", R"("sigma": -0.05)", {"jitter.sigma"});
  bad(R"("devices_per_node": 8)", R"("devices_per_node": -1)", {"devices_per_node"});
  bad(R"(,
  "inter_node_link": {"name": "InfiniBand NDR", "bandwidth_gbps": 50, "latency_us": 5})",
      "", {"inter_node_link is required"});
}

TEST(ClusterErrors, ValidateForTheRing) {
  const ClusterSpec s = sim::parse_cluster_json(kExample, "example.json");  // straggler on device 3
  EXPECT_NO_THROW(s.validate_for(4));
  expect_error([&] { s.validate_for(3); }, {"straggler.device 3", "3 devices"});
  expect_error([&] { s.validate_for(0); }, {"at least 1 device"});

  ClusterSpec no_inter = sim::load_cluster("dgx-h100-ib");
  no_inter.inter_node.reset();
  expect_error([&] { no_inter.validate_for(16); }, {"inter_node_link"});
  expect_error([&] { (void)no_inter.hop(7, 16); }, {"inter_node_link"});
  EXPECT_EQ(&no_inter.hop(7, 8), &no_inter.intra_node);
}

TEST(ClusterErrors, UnknownPresetListsThePresets) {
  const auto names = sim::preset_names();
  auto parts = names;
  parts.emplace_back("\"h100-nvlnk\" is not a preset");
  expect_error([] { (void)sim::load_cluster("h100-nvlnk"); }, parts);
  parts.back() = "h100-nvlnk";
  expect_error([] { (void)sim::preset_json("h100-nvlnk"); }, parts);
}

TEST(ClusterErrors, MissingFile) {
  expect_error([] { (void)sim::load_cluster("/nonexistent-dir/cluster.json"); },
               {"/nonexistent-dir/cluster.json", "No such file or directory"});
  expect_error([] { (void)sim::load_cluster("no-such-cluster.json"); }, {"no-such-cluster.json", "No such file"});
  expect_error([] { (void)sim::load_cluster("/"); }, {"cannot read cluster file /"});
}

// ---- ring hops and links --------------------------------------------------------------------

TEST(Hops, TwoNodesOfEight) {
  const ClusterSpec s = sim::load_cluster("dgx-h100-ib");
  const LinkSpec* intra = &s.intra_node;
  const LinkSpec* inter = &*s.inter_node;
  for (int d = 0; d < 16; ++d) {
    SCOPED_TRACE(d);
    EXPECT_EQ(&s.hop(d, 16), (d == 7 || d == 15) ? inter : intra);
  }
  for (int d = 0; d < 8; ++d) EXPECT_EQ(&s.hop(d, 8), intra);  // 7 -> 0 stays in node 0
  EXPECT_EQ(&s.hop(11, 12), inter);                            // a half-full second node
  EXPECT_EQ(&s.hop(0, 1), intra);                              // a ring of one device
  expect_error([&] { (void)s.hop(16, 16); }, {"out of range"});
  expect_error([&] { (void)s.hop(-1, 16); }, {"out of range"});
  expect_error([&] { (void)s.hop(0, 0); }, {"out of range"});
}

TEST(Hops, SingleNodeRing) {
  const ClusterSpec s = sim::load_cluster("a100-nvlink");
  for (int d = 0; d < 64; ++d) EXPECT_EQ(&s.hop(d, 64), &s.intra_node);
}

TEST(Hops, OneDevicePerNode) {
  const ClusterSpec s = sim::load_cluster("a100-ib");
  for (int d = 0; d < 4; ++d) EXPECT_EQ(&s.hop(d, 4), &*s.inter_node);
  EXPECT_EQ(&s.hop(0, 1), &s.intra_node);
}

TEST(Links, TransferTime) {
  const LinkSpec latency_only{"ideal", kInf, 5e-6};
  EXPECT_EQ(latency_only.transfer_time(1e12), 5e-6);
  EXPECT_EQ(latency_only.transfer_time(0), 5e-6);
  const LinkSpec bandwidth_only{"wire", 50e9, 0};
  EXPECT_EQ(bandwidth_only.transfer_time(1e9), 1e9 / 50e9);
  EXPECT_DOUBLE_EQ(bandwidth_only.transfer_time(1e9), 0.02);
  EXPECT_EQ(bandwidth_only.transfer_time(0), 0);
  const LinkSpec both{"nvlink", 450e9, 3e-6};
  EXPECT_DOUBLE_EQ(both.transfer_time(450e6), 3e-6 + 1e-3);
}

TEST(Links, Validate) {
  EXPECT_NO_THROW((LinkSpec{"ideal", kInf, 0}.validate("l")));
  expect_error([] { LinkSpec{"x", 0, 0}.validate("my_link"); }, {"my_link.bandwidth_gbps"});
  expect_error([] { LinkSpec{"x", std::nan(""), 0}.validate("my_link"); }, {"my_link.bandwidth_gbps", "nan"});
  expect_error([] { LinkSpec{"x", 1e9, -1e-6}.validate("my_link"); }, {"my_link.latency_us", "got -1"});
  expect_error([] { LinkSpec{"x", 1e9, kInf}.validate("my_link"); }, {"my_link.latency_us"});
}

// ---- kernel efficiency ----------------------------------------------------------------------

TEST(KernelEfficiency, CurveByHand) {
  const KernelModel k;  // 0.7, half at 128 kv rows, half_head_dim 32, no waves
  EXPECT_DOUBLE_EQ(k.efficiency(1, 4096, 128, 128), 0.7 * 0.5);
  EXPECT_DOUBLE_EQ(k.efficiency(1, 4096, 384, 128), 0.7 * 0.75);
  // D = 64: raw = 64/96 = 2/3 against raw(128) = 128/160 = 4/5, so g = 5/6.
  EXPECT_DOUBLE_EQ(k.efficiency(1, 4096, 384, 64), 0.7 * 0.75 * 5.0 / 6.0);
  // D = 256: g = (8/9) / (4/5) = 10/9.
  EXPECT_DOUBLE_EQ(k.efficiency(1, 4096, 128, 256), 0.7 * 0.5 * 10.0 / 9.0);

  KernelModel flat;
  flat.half_tokens = 0;
  flat.half_head_dim = 0;
  flat.max_efficiency = 0.6;
  EXPECT_EQ(flat.efficiency(1, 1, 1, 8), 0.6);
  EXPECT_EQ(flat.efficiency(7, 100000, 1 << 20, 256), 0.6);

  KernelModel high;
  high.max_efficiency = 0.95;
  EXPECT_EQ(high.efficiency(1, 4096, std::int64_t{1} << 30, 256), 1.0);  // 0.95 * 10/9 capped at 1
}

TEST(KernelEfficiency, MonotoneInKvRows) {
  KernelModel k;
  k.sm_count = 132;
  double prev = 0;
  for (std::int64_t kv = 1; kv <= (std::int64_t{1} << 24); kv = kv * 3 / 2 + 1) {
    const double e = k.efficiency(32, 4096, kv, 128);
    EXPECT_GT(e, prev) << kv;
    EXPECT_LE(e, 1.0);
    prev = e;
  }
  EXPECT_GT(k.efficiency(1, 1, 1, 1), 0.0);
}

TEST(KernelEfficiency, WaveQuantization) {
  KernelModel k;
  k.sm_count = 132;
  k.half_tokens = 0;
  k.half_head_dim = 0;
  k.max_efficiency = 0.5;
  // 133 blocks over 132 SMs: two waves, the second with one block.
  EXPECT_DOUBLE_EQ(k.efficiency(1, 128 * 133, 4096, 128), 0.5 * 133.0 / 264.0);
  EXPECT_EQ(k.efficiency(132, 128, 4096, 128), 0.5);        // exactly one full wave
  EXPECT_EQ(k.efficiency(1, 128 * 264, 4096, 128), 0.5);    // exactly two
  EXPECT_DOUBLE_EQ(k.efficiency(1, 129, 4096, 128), 0.5 * 2.0 / 132.0 * 129.0 / 256.0);  // 2 tiles, the 2nd nearly empty
  EXPECT_DOUBLE_EQ(k.efficiency(3, 100, 4096, 128), 0.5 * 3.0 / 132.0 * 100.0 / 128.0);
  k.tile_rows = 64;
  EXPECT_DOUBLE_EQ(k.efficiency(1, 128 * 133, 4096, 128), 0.5 * 266.0 / 396.0);
  // Astronomically many blocks: no overflow, no partial wave to speak of.
  EXPECT_NEAR(k.efficiency(std::int64_t{1} << 40, std::int64_t{1} << 40, 4096, 128), 0.5, 1e-9);
}

TEST(KernelEfficiency, TableInterpolatesInLog2AndClamps) {
  KernelModel k;
  k.sm_count = 132;  // ignored in table mode: the measurements include it
  k.table = {{128, 4096, 0.6}, {64, 1024, 0.3}, {128, 1024, 0.4}, {128, 16384, 0.7}, {64, 4096, 0.5}};
  EXPECT_EQ(k.efficiency(1, 1024, 1024, 128), 0.4);
  EXPECT_EQ(k.efficiency(1, 4096, 4096, 128), 0.6);
  EXPECT_DOUBLE_EQ(k.efficiency(1, 2048, 2048, 128), 0.5);    // halfway in log2
  EXPECT_DOUBLE_EQ(k.efficiency(1, 8192, 8192, 128), 0.65);
  // Off the powers of two: linear in log2(kv) (t ~ 0.25 at 1448 ~ 1024 * sqrt 2), not in kv.
  const double t = (std::log2(1448.0) - 10.0) / 2.0;
  EXPECT_DOUBLE_EQ(k.efficiency(1, 128 * 133, 1448, 128), 0.4 + 0.2 * t);
  EXPECT_NEAR(k.efficiency(1, 128 * 133, 1448, 128), 0.45, 1e-4);
  EXPECT_EQ(k.efficiency(1, 4096, 512, 128), 0.4);             // clamped below
  EXPECT_EQ(k.efficiency(1, 4096, 1, 128), 0.4);
  EXPECT_EQ(k.efficiency(1, 4096, std::int64_t{1} << 30, 128), 0.7);  // clamped above
  EXPECT_DOUBLE_EQ(k.efficiency(1, 2048, 2048, 64), 0.4);     // the D = 64 points
  EXPECT_DOUBLE_EQ(k.efficiency(1, 2048, 2048, 96), 0.4);     // tie 64/128: the smaller
  EXPECT_DOUBLE_EQ(k.efficiency(1, 2048, 2048, 97), 0.5);     // nearer 128
  EXPECT_DOUBLE_EQ(k.efficiency(1, 2048, 2048, 256), 0.5);
  EXPECT_DOUBLE_EQ(k.efficiency(1, 2048, 2048, 16), 0.4);
  EXPECT_NO_THROW(k.validate());
}

TEST(KernelEfficiency, RejectsNonPositiveArguments) {
  const KernelModel k;
  expect_error([&] { (void)k.efficiency(0, 1, 1, 128); }, {"kernel efficiency"});
  expect_error([&] { (void)k.efficiency(1, 0, 1, 128); }, {"kernel efficiency"});
  expect_error([&] { (void)k.efficiency(1, 1, -1, 128); }, {"kernel efficiency"});
  expect_error([&] { (void)k.efficiency(1, 1, 1, 0); }, {"kernel efficiency"});
}

TEST(KernelEfficiency, ValidateNamesTheField) {
  KernelModel k;
  k.max_efficiency = 0;
  expect_error([&] { k.validate(); }, {"kernel.max_efficiency"});
  k = KernelModel{};
  k.table = {{128, 1024, 0.0}};
  expect_error([&] { k.validate(); }, {"kernel.table[0].efficiency"});
  k = KernelModel{};
  k.half_tokens = std::nan("");
  expect_error([&] { k.validate(); }, {"kernel.half_tokens", "nan"});
}

}  // namespace
