// SVG pictures of a simulation: the ring's timeline (a Gantt chart of compute and link rows) and
// a block-size sweep (overlap efficiency against tokens per device).
#include "ringattn/simulator/svg.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdarg>
#include <cstring>

#include "ringattn/core/error.hpp"

namespace ringattn::sim {
namespace {

std::string escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

[[gnu::format(printf, 2, 3)]] void add(std::string& out, const char* fmt, ...) {
  char buf[1024];
  va_list args;
  va_start(args, fmt);
  const int n = std::vsnprintf(buf, sizeof buf, fmt, args);
  va_end(args);
  if (n > 0) out.append(buf, std::min<std::size_t>(static_cast<std::size_t>(n), sizeof buf - 1));
}

// A "nice" tick step (1, 2 or 5 times a power of ten) giving about `target` ticks over `range`.
double nice_step(double range, int target) {
  const double raw = range / std::max(1, target);
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (raw <= m * p) return m * p;
  }
  return 10 * p;
}

// Time in the unit that suits the whole axis.
struct TimeUnit {
  double scale;
  const char* name;
};
TimeUnit unit_for(double seconds) {
  if (seconds >= 1.0) return {1.0, "s"};
  if (seconds >= 1e-3) return {1e3, "ms"};
  return {1e6, "us"};
}

struct Kind {
  const char* label;
  const char* color;
};
// One colour per kind of task; the link's two kinds are warm, the compute's cool/red.
Kind kind_of(const Span& s) {
  const std::string_view n = s.name;
  if (s.row == Row::Link) return n == "dkv" ? Kind{"dK/dV transfer", "#edc948"} : Kind{"K/V transfer", "#f28e2b"};
  if (n == "fwd") return {"forward kernel", "#4e79a7"};
  if (n == "merge") return {"LSE merge", "#76b7b2"};
  if (n == "prepass") return {"D = rowsum(dO*O)", "#b07aa1"};
  if (n == "bwd") return {"backward kernel", "#e15759"};
  if (n == "dkv add") return {"dK/dV add", "#ff9da7"};
  return {"other", "#9c9c9c"};
}

const char* kFont = "font-family=\"DejaVu Sans, Arial, sans-serif\"";

}  // namespace

std::string timeline_svg(const std::vector<Span>& spans, int devices, const TimelineSvgOptions& options) {
  require(devices >= 1, "timeline_svg: devices must be >= 1, got ", devices);
  require(options.max_devices >= 1, "timeline_svg: max_devices must be >= 1");
  require(options.width_px >= 300, "timeline_svg: width must be at least 300 px");
  const int shown = std::min(devices, options.max_devices);
  double end = 0;
  for (const Span& s : spans) {
    require(s.device >= 0 && s.device < devices, "timeline_svg: a span names device ", s.device,
            " outside the ring of ", devices);
    end = std::max(end, s.start_s + s.duration_s);
  }
  if (!(end > 0)) end = 1e-6;
  const TimeUnit u = unit_for(end);

  const double left = 96, right = 16, top = 58, row_h = 13, row_gap = 2, dev_gap = 8;
  const double plot_w = options.width_px - left - right;
  const double dev_h = 2 * row_h + row_gap + dev_gap;
  const double axis_y = top + shown * dev_h;
  const double height = axis_y + 44 + (shown < devices ? 16 : 0);
  const double px_per_s = plot_w / end;

  std::string out;
  add(out, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%.0f\" viewBox=\"0 0 %d %.0f\" %s font-size=\"11\">\n",
      options.width_px, height, options.width_px, height, kFont);
  add(out, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
  add(out, "<text x=\"%.0f\" y=\"18\" font-size=\"14\" font-weight=\"bold\">%s</text>\n", left,
      escape(options.title).c_str());
  // Legend: the kinds present, in a fixed order.
  {
    const Kind order[] = {{"forward kernel", "#4e79a7"}, {"LSE merge", "#76b7b2"},
                          {"D = rowsum(dO*O)", "#b07aa1"}, {"backward kernel", "#e15759"},
                          {"dK/dV add", "#ff9da7"}, {"K/V transfer", "#f28e2b"},
                          {"dK/dV transfer", "#edc948"}};
    double x = left;
    for (const Kind& k : order) {
      bool present = false;
      for (const Span& s : spans) {
        if (std::strcmp(kind_of(s).label, k.label) == 0) {
          present = true;
          break;
        }
      }
      if (!present) continue;
      add(out, "<rect x=\"%.1f\" y=\"28\" width=\"10\" height=\"10\" fill=\"%s\"/>", x, k.color);
      add(out, "<text x=\"%.1f\" y=\"37\">%s</text>\n", x + 14, k.label);
      x += 26 + 6.8 * static_cast<double>(std::strlen(k.label));
    }
  }
  // Row labels and backgrounds.
  for (int d = 0; d < shown; ++d) {
    const double y = top + d * dev_h;
    add(out, "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">dev %d compute</text>\n", left - 6, y + row_h - 3, d);
    add(out, "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\" fill=\"#555\">link &#8594; %d</text>\n", left - 6,
        y + 2 * row_h + row_gap - 3, (d + 1) % devices);
    add(out, "<rect x=\"%.0f\" y=\"%.1f\" width=\"%.1f\" height=\"%.0f\" fill=\"#f3f3f3\"/>\n", left, y, plot_w, row_h);
    add(out, "<rect x=\"%.0f\" y=\"%.1f\" width=\"%.1f\" height=\"%.0f\" fill=\"#f8f8f8\"/>\n", left,
        y + row_h + row_gap, plot_w, row_h);
  }
  // The spans: boxes at least 0.5 px wide so that short tasks stay visible.
  const bool tooltips = spans.size() <= options.max_tooltips;
  for (const Span& s : spans) {
    if (s.device >= shown) continue;
    const double y = top + s.device * dev_h + (s.row == Row::Link ? row_h + row_gap : 0);
    const double x = left + s.start_s * px_per_s;
    const double w = std::max(0.5, s.duration_s * px_per_s);
    const Kind k = kind_of(s);
    add(out, "<rect x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%.0f\" fill=\"%s\" stroke=\"white\" stroke-width=\"0.3\">",
        x, y, w, row_h, k.color);
    if (tooltips) {
      add(out, "<title>%s, step %d%s, block of device %d: %.4g %s</title>", k.label, s.step,
          s.sub_block > 0 ? (", sub-block " + std::to_string(s.sub_block)).c_str() : "", s.kv_owner,
          s.duration_s * u.scale, u.name);
    }
    out += "</rect>\n";
  }
  // Time axis with nice ticks, and the end of the layer.
  add(out, "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n", left, axis_y, left + plot_w, axis_y);
  const double step = nice_step(end * u.scale, 8);
  for (double t = 0; t <= end * u.scale * (1 + 1e-9); t += step) {
    const double x = left + t / u.scale * px_per_s;
    add(out, "<line x1=\"%.2f\" y1=\"%.1f\" x2=\"%.2f\" y2=\"%.1f\" stroke=\"black\"/>", x, axis_y, x, axis_y + 4);
    add(out, "<text x=\"%.2f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>\n", x, axis_y + 15, t);
  }
  add(out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">time (%s); the layer ends at %.4g %s</text>\n",
      left + plot_w / 2, axis_y + 32, u.name, end * u.scale, u.name);
  add(out, "<line x1=\"%.2f\" y1=\"%.0f\" x2=\"%.2f\" y2=\"%.1f\" stroke=\"black\" stroke-dasharray=\"3,2\"/>\n",
      left + plot_w, top - 4, left + plot_w, axis_y);
  if (shown < devices) {
    add(out, "<text x=\"%.0f\" y=\"%.1f\" fill=\"#555\">(devices %d to %d not drawn)</text>\n", left, axis_y + 48,
        shown, devices - 1);
  }
  out += "</svg>\n";
  return out;
}

std::string sweep_svg(const SweepResult& sweep, const SweepSvgOptions& options) {
  require(sweep.kind == SweepKind::BlockSize, "sweep_svg: only block-size sweeps can be drawn");
  require(!sweep.points.empty(), "sweep_svg: the sweep has no points");
  require(options.width_px >= 300 && options.height_px >= 200, "sweep_svg: the picture is too small");
  std::vector<const SweepPoint*> pts;
  for (const SweepPoint& p : sweep.points) pts.push_back(&p);
  std::sort(pts.begin(), pts.end(), [](const SweepPoint* a, const SweepPoint* b) {
    return a->result.block_size < b->result.block_size;
  });
  double lo = static_cast<double>(pts.front()->result.block_size);
  double hi = static_cast<double>(pts.back()->result.block_size);
  if (options.rule_block && *options.rule_block > 0) {
    lo = std::min(lo, *options.rule_block);
    hi = std::max(hi, *options.rule_block);
  }
  if (!(hi > lo)) hi = lo * 2;
  const double lx0 = std::log2(lo), lx1 = std::log2(hi);

  const double left = 62, right = 20, top = 56, bottom = 58;
  const double w = options.width_px - left - right, h = options.height_px - top - bottom;
  auto X = [&](double block) { return left + (std::log2(block) - lx0) / (lx1 - lx0) * w; };
  auto Y = [&](double frac) { return top + (1.0 - frac) * h; };

  std::string out;
  add(out, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" %s font-size=\"11\">\n",
      options.width_px, options.height_px, options.width_px, options.height_px, kFont);
  add(out, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
  add(out, "<text x=\"%.0f\" y=\"20\" font-size=\"14\" font-weight=\"bold\">%s</text>\n", left, escape(options.title).c_str());
  // Grid and axes: y in tenths, x at powers of two.
  for (int i = 0; i <= 10; ++i) {
    const double y = Y(i / 10.0);
    add(out, "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>", left, y, left + w, y,
        i == 0 ? "black" : "#e4e4e4");
    if (i % 2 == 0) add(out, "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%.1f</text>\n", left - 5, y + 4, i / 10.0);
  }
  add(out, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"black\"/>\n", left, top, left, top + h);
  const int e0 = static_cast<int>(std::ceil(lx0 - 1e-9)), e1 = static_cast<int>(std::floor(lx1 + 1e-9));
  const int every = std::max(1, (e1 - e0 + 1) / 10);
  for (int e = e0; e <= e1; ++e) {
    const double block = std::ldexp(1.0, e), x = X(block);
    add(out, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>", x, top + h, x, top + h + 4);
    if ((e - e0) % every == 0) {
      char label[32];
      if (block >= 1024) std::snprintf(label, sizeof label, "%gk", block / 1024);
      else std::snprintf(label, sizeof label, "%g", block);
      add(out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", x, top + h + 16, label);
    }
  }
  add(out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">tokens per device c (block size), log scale</text>\n",
      left + w / 2, top + h + 34);
  add(out, "<text x=\"14\" y=\"%.1f\" text-anchor=\"middle\" transform=\"rotate(-90 14 %.1f)\">fraction of the layer time</text>\n",
      top + h / 2, top + h / 2);
  // Marked blocks: the rule's and the recommended one.
  auto vline = [&](double block, const char* color, const std::string& label, double label_y) {
    const double x = X(block);
    add(out, "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-dasharray=\"5,3\" stroke-width=\"1.5\"/>\n",
        x, top, x, top + h, color);
    const bool flip = x > left + 0.7 * w;
    add(out, "<text x=\"%.1f\" y=\"%.1f\" fill=\"%s\" text-anchor=\"%s\">%s</text>\n", flip ? x - 4 : x + 4,
        label_y, color, flip ? "end" : "start", escape(label).c_str());
  };
  if (options.rule_block && *options.rule_block > 0) {
    vline(*options.rule_block, "#7a7a7a", options.rule_label + " = " + std::to_string(static_cast<long long>(std::ceil(*options.rule_block))), top + h - 44);
  }
  if (sweep.recommended_block_size) {
    vline(static_cast<double>(*sweep.recommended_block_size), "#2a7a2a",
          "recommended: " + std::to_string(*sweep.recommended_block_size), top + h - 26);
  }
  // The two series.
  auto series = [&](auto value, const char* color, const char* dash) {
    std::string path;
    for (const SweepPoint* p : pts) {
      add(path, "%s%.1f,%.1f", path.empty() ? "M" : " L", X(static_cast<double>(p->result.block_size)), Y(value(p->result)));
    }
    add(out, "<path d=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\" stroke-dasharray=\"%s\"/>\n", path.c_str(), color, dash);
    for (const SweepPoint* p : pts) {
      add(out, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"><title>c = %lld: %.3f</title></circle>\n",
          X(static_cast<double>(p->result.block_size)), Y(value(p->result)), color,
          static_cast<long long>(p->result.block_size), value(p->result));
    }
  };
  series([](const SimResult& r) { return std::clamp(r.overlap_efficiency, 0.0, 1.0); }, "#4e79a7", "none");
  series([](const SimResult& r) { return std::clamp(r.exposed_fraction(), 0.0, 1.0); }, "#f28e2b", "6,3");
  // Legend, in one row between the title and the plot.
  const double ly = 36;
  add(out, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"#4e79a7\" stroke-width=\"2\"/>", left, ly, left + 24, ly);
  add(out, "<text x=\"%.0f\" y=\"%.0f\">overlap efficiency (compute / layer time)</text>\n", left + 30, ly + 4);
  add(out, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"#f28e2b\" stroke-width=\"2\" stroke-dasharray=\"6,3\"/>", left + 300, ly, left + 324, ly);
  add(out, "<text x=\"%.0f\" y=\"%.0f\">exposed communication / layer time</text>\n", left + 330, ly + 4);
  out += "</svg>\n";
  return out;
}

}  // namespace ringattn::sim
