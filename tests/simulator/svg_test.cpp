// The SVG pictures: well-formed documents, one box per task placed on the time axis, titles
// escaped, devices beyond the limit left out and said so, and bad requests refused.
#include <gtest/gtest.h>

#include <regex>
#include <string>
#include <vector>

#include "ringattn/core/error.hpp"
#include "ringattn/simulator/svg.hpp"

namespace ringattn::sim {
namespace {

// Tags balance: every <x ...> is closed by </x> or is self-closing, in nesting order.
bool well_formed(const std::string& svg) {
  std::vector<std::string> open;
  for (std::size_t i = svg.find('<'); i != std::string::npos; i = svg.find('<', i + 1)) {
    const std::size_t end = svg.find('>', i);
    if (end == std::string::npos) return false;
    const std::string tag = svg.substr(i + 1, end - i - 1);
    if (tag.empty()) return false;
    if (tag[0] == '/') {
      if (open.empty() || open.back() != tag.substr(1)) return false;
      open.pop_back();
    } else if (tag.back() != '/') {
      open.push_back(tag.substr(0, tag.find_first_of(" \n")));
    }
  }
  return open.empty();
}

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

ClusterSpec simple_cluster() {
  ClusterSpec c;
  c.name = "test";
  c.device.name = "dev";
  c.device.peak_flops_bf16 = c.device.peak_flops_fp16 = 1e14;
  c.device.memory_bytes = 1e11;
  c.device.memory_bandwidth = 1e12;
  c.intra_node.bandwidth = 1e9;
  c.intra_node.latency_s = 1e-6;
  return c;
}

Workload small_workload() {
  Workload w;
  w.seq_len = 4096;
  w.heads_q = 8;
  w.head_dim = 64;
  w.causal = true;
  w.layout = Layout::Zigzag;
  w.pass = Pass::ForwardBackward;
  return w;
}

TEST(TimelineSvg, OneBoxPerTaskOnTheTimeAxis) {
  std::vector<Span> spans;
  SimOptions o;
  o.on_span = [&](const Span& s) { spans.push_back(s); };
  const SimResult r = simulate(simple_cluster(), 4, small_workload(), o);
  TimelineSvgOptions to;
  to.title = "a <ring> & \"its\" timeline";
  const std::string svg = timeline_svg(spans, 4, to);
  EXPECT_TRUE(well_formed(svg));
  EXPECT_EQ(count(svg, "<title>"), spans.size());  // one tooltip box per task
  EXPECT_NE(svg.find("a &lt;ring&gt; &amp; &quot;its&quot; timeline"), std::string::npos);
  EXPECT_EQ(svg.find("<ring>"), std::string::npos);
  // Boxes span the plot: the last ends at the right edge (1000 - 16 px), none starts left of it.
  const std::regex box(R"re(<rect x="([0-9.]+)" y="[0-9.]+" width="([0-9.]+)" height="13" fill="#[0-9a-f]{6}" stroke="white")re");
  double first = 1e9, last = 0;
  std::size_t boxes = 0;
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), box); it != std::sregex_iterator(); ++it, ++boxes) {
    const double x = std::stod((*it)[1]), w = std::stod((*it)[2]);
    first = std::min(first, x);
    last = std::max(last, x + w);
  }
  EXPECT_EQ(boxes, spans.size());
  EXPECT_NEAR(first, 96.0, 0.01);
  EXPECT_NEAR(last, 984.0, 0.6);  // boxes are at least 0.5 px wide
  EXPECT_NE(svg.find("dev 3 compute"), std::string::npos);
  EXPECT_NE(svg.find("backward kernel"), std::string::npos);
  char end_label[64];
  std::snprintf(end_label, sizeof end_label, "%.4g", r.total_time_s * 1e3);
  EXPECT_NE(svg.find(std::string("layer ends at ") + end_label + " ms"), std::string::npos) << end_label;
}

TEST(TimelineSvg, LeavesOutDevicesBeyondTheLimitAndSaysSo) {
  std::vector<Span> spans;
  SimOptions o;
  o.on_span = [&](const Span& s) { spans.push_back(s); };
  (void)simulate(simple_cluster(), 4, small_workload(), o);
  TimelineSvgOptions to;
  to.max_devices = 2;
  const std::string svg = timeline_svg(spans, 4, to);
  EXPECT_TRUE(well_formed(svg));
  EXPECT_NE(svg.find("dev 1 compute"), std::string::npos);
  EXPECT_EQ(svg.find("dev 2 compute"), std::string::npos);
  EXPECT_NE(svg.find("(devices 2 to 3 not drawn)"), std::string::npos);
  std::size_t shown = 0;
  for (const Span& s : spans) shown += s.device < 2;
  EXPECT_EQ(count(svg, "<title>"), shown);
}

TEST(TimelineSvg, RefusesBadInput) {
  std::vector<Span> spans(1);
  spans[0].device = 5;
  EXPECT_THROW((void)timeline_svg(spans, 4), Error);
  EXPECT_THROW((void)timeline_svg({}, 0), Error);
  TimelineSvgOptions narrow;
  narrow.width_px = 10;
  EXPECT_THROW((void)timeline_svg({}, 2, narrow), Error);
  EXPECT_TRUE(well_formed(timeline_svg({}, 2)));  // an empty run still draws its rows
}

TEST(SweepSvg, DrawsEveryPointAndTheMarkedBlocks) {
  SweepOptions so;
  so.min_block = 256;
  so.max_block = 16384;
  Workload w = small_workload();
  w.seq_len = 4 * 1024;
  const SweepResult s = sweep(simple_cluster(), 4, w, SweepKind::BlockSize, {}, so);
  ASSERT_GE(s.points.size(), 7u);
  SweepSvgOptions po;
  po.rule_block = 1000;
  po.rule_label = "rule";
  const std::string svg = sweep_svg(s, po);
  EXPECT_TRUE(well_formed(svg));
  EXPECT_EQ(count(svg, "<circle"), 2 * s.points.size());  // two series
  EXPECT_NE(svg.find("rule = 1000"), std::string::npos);
  if (s.recommended_block_size) {
    EXPECT_NE(svg.find("recommended: " + std::to_string(*s.recommended_block_size)), std::string::npos);
  }
}

TEST(SweepSvg, RefusesOtherSweepsAndEmptyOnes) {
  SweepResult s;
  EXPECT_THROW((void)sweep_svg(s), Error);  // no points
  s.kind = SweepKind::Layout;
  s.points.resize(1);
  EXPECT_THROW((void)sweep_svg(s), Error);
}

}  // namespace
}  // namespace ringattn::sim
