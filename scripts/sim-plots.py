#!/usr/bin/env python3
"""Runs `ringattn simulate --json` for the scenarios of docs/simulator.md and
docs/simulator-questions.md, and writes SVG charts and the numbers behind them.

    scripts/sim-plots.py [RINGATTN [OUTDIR]]    (defaults: build/bin/ringattn, docs/images)

Writes OUTDIR/sim-*.svg, OUTDIR/sim-numbers.json (every run: its command and the simulator's
JSON) and OUTDIR/sim-numbers.md (the tables of the two pages, ready to paste). Python 3 standard
library only; every file is written to a temporary name and renamed into place.
"""

import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time

LLAMA = ["--heads", "32", "--kv-heads", "8", "--head-dim", "128"]  # Llama-3-8B-like attention
SWEEP_MIN = "512"  # block-size sweeps start where the exposure curve is falling (see simulator.md)

# ---- running the simulator ---------------------------------------------------------------------

RUNS = []  # every run, in order: {"command": ..., "result": ...}


def sim(binary, *args):
    """Runs `ringattn simulate ARGS --json` and returns its parsed JSON."""
    args = [str(a) for a in args]
    proc = subprocess.run([binary, "simulate", *args, "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"sim-plots: `ringattn simulate {shlex.join(args)}` failed:\n{proc.stderr.strip()}")
    result = json.loads(proc.stdout)
    RUNS.append({"command": "ringattn simulate " + shlex.join(args), "result": result})
    return result


def command(*args):
    return "ringattn simulate " + shlex.join(str(a) for a in args)


def exposed(point):
    return point["exposed_comm_s"] / point["total_time_s"] if point["total_time_s"] > 0 else 0.0


# ---- files ---------------------------------------------------------------------------------------


def write_atomic(path, text):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---- a small SVG writer --------------------------------------------------------------------------

COLORS = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000"]  # Okabe-Ito
W, H = 780, 440
LEFT, RIGHT, TOP, BOTTOM = 72, 210, 48, 62  # margins; the legend sits in the right one


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def tokens(x):
    """4096 -> 4k, 1048576 -> 1M; other numbers as they are."""
    x = int(x)
    if x >= 1 << 20 and x % (1 << 20) == 0:
        return f"{x >> 20}M"
    if x >= 1024 and x % 1024 == 0:
        return f"{x >> 10}k"
    return str(x)


def nice_ticks(lo, hi, count=5):
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], first
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 10))
        t += step
    return ticks


def tick_label(v):
    return f"{v:g}" if abs(v) < 1e5 else f"{v:.3g}"


def frame(title, xlabel, ylabel, y_lo, y_hi, yticks, xticks, xpos):
    """The chart's skeleton: title, axes, grid, tick labels. Returns (parts, ypos)."""
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def ypos(v):
        return TOP + ph - (v - y_lo) / (y_hi - y_lo) * ph

    p = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         'font-family="Helvetica, Arial, sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{LEFT + pw / 2}" y="26" text-anchor="middle" font-size="15" font-weight="bold">{esc(title)}</text>']
    for v in yticks:
        y = ypos(v)
        p.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + pw}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        p.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(tick_label(v))}</text>')
    for v, label in xticks:
        x = xpos(v)
        p.append(f'<line x1="{x:.1f}" y1="{TOP + ph}" x2="{x:.1f}" y2="{TOP + ph + 5}" stroke="black"/>')
        p.append(f'<text x="{x:.1f}" y="{TOP + ph + 19}" text-anchor="middle">{esc(label)}</text>')
    p.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>')
    p.append(f'<text x="{LEFT + pw / 2}" y="{H - 16}" text-anchor="middle">{esc(xlabel)}</text>')
    p.append(f'<text transform="translate(18 {TOP + ph / 2}) rotate(-90)" text-anchor="middle">{esc(ylabel)}</text>')
    return p, ypos


def legend(p, entries):
    """entries: (label, color, dashed, kind) with kind 'line' or 'box'."""
    x0, y = W - RIGHT + 16, TOP + 10
    for label, color, dashed, kind in entries:
        if kind == "box":
            p.append(f'<rect x="{x0}" y="{y - 9}" width="22" height="12" fill="{color}"/>')
        else:
            dash = {"dotted": ' stroke-dasharray="2 3"', True: ' stroke-dasharray="6 4"'}.get(dashed, "")
            p.append(f'<line x1="{x0}" y1="{y - 3}" x2="{x0 + 22}" y2="{y - 3}" stroke="{color}" stroke-width="2.2"{dash}/>')
        p.append(f'<text x="{x0 + 30}" y="{y + 1}">{esc(label)}</text>')
        y += 20


def reference_lines(p, hlines, ypos, y_lo, y_hi):
    """Dotted grey lines across the plot; their labels go in the legend. Returns legend entries."""
    for value, _ in hlines:
        if y_lo <= value <= y_hi:
            y = ypos(value)
            p.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="#777" stroke-dasharray="2 3"/>')
    return [(label, "#777", "dotted", "line") for value, label in hlines if y_lo <= value <= y_hi]


def line_chart(path, title, xlabel, ylabel, series, logx=True, xfmt=tokens, ylim=None, hlines=()):
    """series: dicts with label, points [(x, y)], and optionally dashed. log2 x axis by default."""
    xs = [x for s in series for x, _ in s["points"]]
    ys = [y for s in series for _, y in s["points"]]
    y_lo, y_hi = ylim if ylim else (min(0.0, min(ys)), max(ys) * 1.08)
    yticks = nice_ticks(y_lo, y_hi)
    y_lo, y_hi = min(y_lo, yticks[0]), max(y_hi, yticks[-1])
    f = math.log2 if logx else float
    x_lo, x_hi = f(min(xs)), f(max(xs))
    if x_hi == x_lo:
        x_hi = x_lo + 1
    pw = W - LEFT - RIGHT

    def xpos(v):
        return LEFT + 12 + (f(v) - x_lo) / (x_hi - x_lo) * (pw - 24)

    if logx:
        powers = [2 ** k for k in range(int(math.ceil(x_lo)), int(math.floor(x_hi)) + 1)]
        stride = max(1, math.ceil(len(powers) / 10))
        xticks = [(v, xfmt(v)) for v in powers[::stride]]
    else:
        xticks = [(v, xfmt(v)) for v in nice_ticks(min(xs), max(xs))]
    p, ypos = frame(title, xlabel, ylabel, y_lo, y_hi, yticks, xticks, xpos)
    refs = reference_lines(p, hlines, ypos, y_lo, y_hi)
    entries = []
    for i, s in enumerate(series):
        color = s.get("color", COLORS[i % len(COLORS)])
        dash = ' stroke-dasharray="6 4"' if s.get("dashed") else ""
        pts = " ".join(f"{xpos(x):.1f},{ypos(y):.1f}" for x, y in s["points"])
        p.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2.2"{dash}/>')
        for x, y in s["points"]:
            p.append(f'<circle cx="{xpos(x):.1f}" cy="{ypos(y):.1f}" r="2.8" fill="{color}"/>')
        entries.append((s["label"], color, s.get("dashed", False), "line"))
    legend(p, entries + refs)
    p.append("</svg>\n")
    write_atomic(path, "\n".join(p))


def bar_chart(path, title, xlabel, ylabel, groups, series, ylim=None, hlines=()):
    """groups: labels along x; series: (label, [value per group]) drawn side by side in each group."""
    ys = [v for _, vals in series for v in vals if v is not None]
    y_lo, y_hi = ylim if ylim else (0.0, max(ys) * 1.08)
    yticks = nice_ticks(y_lo, y_hi)
    y_lo, y_hi = min(y_lo, yticks[0]), max(y_hi, yticks[-1])
    pw = W - LEFT - RIGHT
    slot = pw / len(groups)

    def xpos(i):
        return LEFT + slot * (i + 0.5)

    p, ypos = frame(title, xlabel, ylabel, y_lo, y_hi, yticks, [(i, g) for i, g in enumerate(groups)], xpos)
    bar = slot * 0.8 / len(series)
    for j, (label, vals) in enumerate(series):
        color = COLORS[j % len(COLORS)]
        for i, v in enumerate(vals):
            if v is None:
                continue
            x = xpos(i) - slot * 0.4 + j * bar
            y0, y1 = ypos(max(y_lo, 0.0)), ypos(v)
            p.append(f'<rect x="{x:.1f}" y="{min(y0, y1):.1f}" width="{bar * 0.92:.1f}" height="{abs(y0 - y1):.1f}" fill="{color}"/>')
    refs = reference_lines(p, hlines, ypos, y_lo, y_hi)
    legend(p, [(label, COLORS[j % len(COLORS)], False, "box") for j, (label, _) in enumerate(series)] + refs)
    p.append("</svg>\n")
    write_atomic(path, "\n".join(p))


# ---- Markdown tables -----------------------------------------------------------------------------


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def ms(s):
    return f"{s * 1e3:.3f}"


def pct(x):
    return f"{100 * x:.1f} %"


def opt(v):
    return "none" if v is None else str(v)


# ---- the scenarios -------------------------------------------------------------------------------


def q_scaling(b, out, md):
    """(a) weak scaling to 256 devices, causal zigzag fwd+bwd."""
    cases = [("dgx-h100-ib", 16384), ("dgx-h100-ib", 4096), ("h100-nvlink", 4096)]
    cmds, res = [], []
    for cluster, c in cases:
        args = ["--cluster", cluster, "--devices", 256, "--block-size", c, *LLAMA, "--causal", "--layout", "zigzag",
                "--pass", "fwd+bwd", "--sweep", "devices"]
        cmds.append(command(*args))
        res.append(sim(b, *args))
    labels = [f"{cl}, {tokens(c)}/device" for cl, c in cases]
    line_chart(os.path.join(out, "sim-scaling-tflops.svg"), "Weak scaling: attention TFLOP/s per device (fwd+bwd)",
               "devices in the ring (N)", "TFLOP/s per device",
               [{"label": lab, "points": [(p["devices"], p["achieved_flops_per_device"] / 1e12) for p in r["points"]],
                 "dashed": cl == "h100-nvlink"} for lab, r, (cl, _) in zip(labels, res, cases)],
               xfmt=str, ylim=(0, 600))
    line_chart(os.path.join(out, "sim-scaling-overlap.svg"), "Weak scaling: overlap efficiency (fwd+bwd)",
               "devices in the ring (N)", "busiest compute / layer time",
               [{"label": lab, "points": [(p["devices"], p["overlap_efficiency"]) for p in r["points"]],
                 "dashed": cl == "h100-nvlink"} for lab, r, (cl, _) in zip(labels, res, cases)],
               xfmt=str, ylim=(0, 1.05))
    rows = []
    for i, p in enumerate(res[0]["points"]):
        row = [p["devices"]]
        for r in res:
            q = r["points"][i]
            row += [f"{q['achieved_flops_per_device'] / 1e12:.1f}", f"{q['overlap_efficiency']:.3f}"]
        rows.append(row)
    header = ["N"]
    for cl, c in cases:
        header += [f"{cl}, {tokens(c)}: TFLOP/s per device", "overlap"]
    md.append("## (a) Scaling beyond 8 devices\n\n```sh\n" + "\n".join(cmds) + "\n```\n\n" + table(header, rows))


def q_fabric(b, out, md):
    """(b) NVLink vs InfiniBand: block-size sweeps at N = 16, fwd and fwd+bwd, full and ideal."""
    clusters = ["h100-nvlink", "dgx-h100-ib", "h100-ib"]
    rows, cmds = [], []
    for pas in ["fwd", "fwd+bwd"]:
        series = []
        for cluster in clusters:
            args = ["--cluster", cluster, "--devices", 16, "--block-size", 4096, *LLAMA, "--causal", "--layout",
                    "zigzag", "--pass", pas, "--sweep", "block-size", "--sweep-min", SWEEP_MIN, "--sweep-max", 65536]
            cmds.append(command(*args))
            full = sim(b, *args)
            ideal = sim(b, *args, "--ideal")
            series.append({"label": cluster, "points": [(p["block_size"], exposed(p)) for p in full["points"]]})
            at = {p["block_size"]: exposed(p) for p in full["points"]}
            rows.append([cluster, pas] + [pct(at[c]) for c in (1024, 2048, 4096, 8192, 16384)] +
                        [opt(full["recommended_block_size"]), opt(ideal["recommended_block_size"]),
                         opt(ideal.get("min_overlapped_block"))])
        name = "fwd" if pas == "fwd" else "fwdbwd"
        line_chart(os.path.join(out, f"sim-fabric-{name}.svg"),
                   f"Exposed communication, 16 H100, causal zigzag, {pas}", "tokens per device (c)",
                   "exposed communication / layer time", series, ylim=(0, 0.7), hlines=[(0.05, "5 % of the layer")])
    header = ["cluster", "pass", "c=1k", "2k", "4k", "8k", "16k", "recommended (full)", "recommended (ideal)",
              "no exposure (ideal)"]
    md.append("## (b) NVLink vs InfiniBand\n\n```sh\n" + "\n".join(cmds) +
              "\n# and each again with --ideal\n```\n\n" + table(header, rows))


def q_causal(b, out, md):
    """(c) causal masking per layout, N = 1..64, 8k tokens per device, fwd+bwd, h100-nvlink."""
    base = ["--cluster", "h100-nvlink", "--devices", 64, "--block-size", 8192, *LLAMA, "--pass", "fwd+bwd",
            "--sweep", "devices"]
    cmds = [command(*base)]
    dense = sim(b, *base)
    layouts = ["contiguous", "striped", "zigzag"]
    res = {}
    for layout in layouts:
        args = [*base, "--causal", "--layout", layout]
        cmds.append(command(*args))
        res[layout] = sim(b, *args)
    series = []
    for layout in layouts:
        pts = [(p["devices"], p["total_time_s"] / d["total_time_s"])
               for p, d in zip(res[layout]["points"], dense["points"]) if p["devices"] >= 2]
        series.append({"label": layout, "points": pts})
    line_chart(os.path.join(out, "sim-causal-layouts.svg"), "Causal layer time / non-causal layer time (fwd+bwd)",
               "devices in the ring (N)", "causal / non-causal", series, xfmt=str, ylim=(0, 1.1),
               hlines=[(0.5, "half the work")])
    rows = []
    for i, d in enumerate(dense["points"]):
        if d["devices"] < 2:
            continue
        row = [d["devices"], ms(d["total_time_s"])]
        for layout in layouts:
            p = res[layout]["points"][i]
            row += [ms(p["total_time_s"]), f"{p['total_time_s'] / d['total_time_s']:.3f}", f"{p['load_imbalance']:.3f}"]
        rows.append(row)
    header = ["N", "non-causal ms"]
    for layout in layouts:
        header += [f"{layout} ms", "/ non-causal", "imbalance"]
    md.append("## (c) Causal masking per layout\n\n```sh\n" + "\n".join(cmds) + "\n```\n\n" + table(header, rows))


def q_sweet_spot(b, out, md):
    """(d) N x tokens per device grid on dgx-h100-ib, causal zigzag fwd+bwd."""
    blocks = [2048, 4096, 8192, 16384, 32768]
    ns = [8, 16, 32, 64, 128]
    cmds, grid, mem = [], {}, {}
    for c in blocks:
        args = ["--cluster", "dgx-h100-ib", "--devices", 128, "--block-size", c, *LLAMA, "--causal", "--layout",
                "zigzag", "--pass", "fwd+bwd", "--sweep", "devices"]
        cmds.append(command(*args))
        for p in sim(b, *args)["points"]:
            grid[(p["devices"], c)] = p
            mem[c] = p["peak_memory_bytes"]
    bar_chart(os.path.join(out, "sim-sweet-spot.svg"), "Overlap efficiency on DGX H100 nodes (fwd+bwd)",
              "tokens per device (c)", "busiest compute / layer time", [tokens(c) for c in blocks],
              [(f"N={n}", [grid[(n, c)]["overlap_efficiency"] for c in blocks]) for n in ns],
              ylim=(0, 1.05), hlines=[(0.95, "0.95")])
    rows = []
    for c in blocks:
        cells = []
        for n in ns:
            p = grid[(n, c)]
            mark = "**" if p["overlap_efficiency"] >= 0.95 and p["fits_in_memory"] else ""
            cells.append(f"{mark}{p['overlap_efficiency']:.3f}{mark}" + ("" if p["fits_in_memory"] else " (no fit)"))
        rows.append([tokens(c), f"{mem[c] / 2**30:.2f}"] + cells)
    md.append("## (d) Sweet spot\n\n```sh\n" + "\n".join(cmds) + "\n```\n\n" +
              table(["c", "working set GiB"] + [f"N={n}" for n in ns], rows))


def q_rule(b, out, md):
    """(e) the paper's c >= F/B against the full model: N = 8, non-causal fwd, MHA and GQA."""
    clusters = [("a100-ib", 312e12 / 12.5e9), ("h100-ib", 989e12 / 50e9), ("a100-nvlink", 312e12 / 300e9),
                ("h100-nvlink", 989e12 / 450e9)]
    rows, cmds, series = [], [], []
    for cluster, fb in clusters:
        for kv in (32, 8):
            args = ["--cluster", cluster, "--devices", 8, "--block-size", 4096, "--heads", 32, "--kv-heads", kv,
                    "--head-dim", 128, "--sweep", "block-size", "--sweep-min", SWEEP_MIN, "--sweep-max", 65536]
            cmds.append(command(*args))
            full = sim(b, *args)
            ideal = sim(b, *args, "--ideal")
            at4k = {p["block_size"]: p for p in full["points"]}[4096]
            rows.append([cluster, kv, f"{fb * kv / 32:.0f}", opt(ideal.get("min_overlapped_block")),
                         opt(ideal["recommended_block_size"]), opt(full["recommended_block_size"]),
                         f"{max(exposed(p) for p in full['points']):.3f}",
                         f"{at4k['achieved_flops_per_device'] / 1e12:.1f}"])
            if kv == 32 and cluster.endswith("-ib"):
                color = COLORS[len(series) // 2]
                for r, dashed in ((ideal, True), (full, False)):
                    series.append({"label": f"{cluster} {'ideal' if dashed else 'full'}", "dashed": dashed,
                                   "color": color,
                                   "points": [(p["block_size"], exposed(p)) for p in r["points"]]})
    line_chart(os.path.join(out, "sim-rule-vs-model.svg"), "The paper's model (dashed) vs the full model, 8 devices",
               "tokens per device (c)", "exposed communication / layer time", series, ylim=(0, 1.0),
               hlines=[(0.05, "5 % of the layer")])
    header = ["cluster", "H_kv", "F/B x H_kv/H_q", "no exposure (ideal)", "recommended (ideal)",
              "recommended (full)", "max exposed (full)", "TFLOP/s per device at 4k (full)"]
    md.append("## (e) What c >= F/B misses\n\n```sh\n" + "\n".join(cmds) +
              "\n# and each again with --ideal\n```\n\n" + table(header, rows))


def validation(b, out, md):
    """The comparisons of docs/simulator.md: Table 2, 2 - 1/N, Striped Attention, ring-flash-attn."""
    paper = {"a100-nvlink": (312, 300, "1.0", "6.2"), "a100-ib": (312, 12.5, "24.5", "149.5"),
             "tpu-v3": (123, 112, "1.1", "6.6"), "tpu-v4": (275, 268, "1.0", "6.2"), "tpu-v5e": (196, 186, "1.1", "6.3")}
    rows, cmds = [], []
    for cluster, (f, bw, printed, seq) in paper.items():
        args = ["--cluster", cluster, "--devices", 8, "--block-size", 4096, "--heads", 8, "--head-dim", 128,
                "--ideal", "--sweep", "block-size"]
        cmds.append(command(*args))
        r = sim(b, *args)
        rows.append([cluster, f, bw, printed + "e3", f"{f * 1e12 / (bw * 1e9):.1f}", opt(r["min_overlapped_block"]),
                     opt(r["recommended_block_size"]), seq + "e3"])
    md.append("## Table 2 under --ideal\n\n```sh\n" + "\n".join(cmds) + "\n```\n\n" +
              table(["preset", "F (TFLOP/s)", "B (GB/s)", "paper's min block", "F/B",
                     "simulator `min_overlapped_block`", "recommended (5 %)", "paper's min sequence (6c)"], rows))

    # 2 - 1/N: ideal, compute-bound (8k per device on NVLink is above the causal threshold).
    base = ["--cluster", "h100-nvlink", "--devices", 64, "--block-size", 8192, *LLAMA, "--causal", "--ideal",
            "--sweep", "devices"]
    res = {layout: sim(b, *base, "--layout", layout) for layout in ("contiguous", "striped", "zigzag")}
    rows = []
    for i, p in enumerate(res["contiguous"]["points"]):
        n = p["devices"]
        rows.append([n, f"{2 - 1 / n:.4f}"] + [f"{p['total_time_s'] / res[l]['points'][i]['total_time_s']:.4f}"
                                               for l in ("striped", "zigzag")])
    md.append("## 2 - 1/N under --ideal\n\n```sh\n" + command(*base, "--layout", "contiguous|striped|zigzag") +
              "\n```\n\n" + table(["N", "2 - 1/N", "contiguous / striped", "contiguous / zigzag"], rows))

    # Striped Attention: 8 x A100, 256k tokens, causal, fwd+bwd; attention alone and a 7B-like model.
    rows, cmds = [], []
    for model in ([], ["--layers", 32, "--hidden", 4096]):
        res = {}
        for layout in ("contiguous", "striped", "zigzag"):
            args = ["--cluster", "a100-nvlink", "--devices", 8, "--seq-len", 262144, "--heads", 32, "--head-dim", 128,
                    "--causal", "--layout", layout, "--pass", "fwd+bwd", *model]
            cmds.append(command(*args))
            res[layout] = sim(b, *args)
        key = "model_step_time_s" if model else "total_time_s"
        for layout in ("striped", "zigzag"):
            r = res[layout]
            rows.append(["32 layers, h = 4096" if model else "attention layer", layout, ms(res["contiguous"][key]),
                         ms(r[key]), f"{res['contiguous'][key] / r[key]:.3f}",
                         pct(r["mfu"]) if r["mfu"] is not None else "-",
                         pct(res["contiguous"]["mfu"]) if model else "-"])
    md.append("## Striped Attention, 8 x A100, S = 262144\n\n```sh\n" + "\n".join(cmds) + "\n```\n\n" +
              table(["what", "layout", "contiguous (ms)", "this layout (ms)", "speedup", "MFU", "MFU contiguous"],
                    rows))

    # ring-flash-attn: 8 GPUs, 8k tokens per GPU, Llama-3-8B attention, causal; fraction of 1 GPU / 8.
    rows, cmds = [], []
    published = {("contiguous", "fwd"): "52-54 %", ("contiguous", "fwd+bwd"): "52-54 %",
                 ("zigzag", "fwd"): "85 %", ("zigzag", "fwd+bwd"): "90 %",
                 ("striped", "fwd"): "74 %", ("striped", "fwd+bwd"): "83 %"}
    for pas in ("fwd", "fwd+bwd"):
        one_args = ["--cluster", "h100-nvlink", "--devices", 1, "--seq-len", 65536, *LLAMA, "--causal", "--pass", pas]
        cmds.append(command(*one_args))
        one = sim(b, *one_args)
        for layout in ("contiguous", "zigzag", "striped"):
            args = ["--cluster", "h100-nvlink", "--devices", 8, "--seq-len", 65536, *LLAMA, "--causal", "--layout",
                    layout, "--pass", pas]
            cmds.append(command(*args))
            r = sim(b, *args)
            rows.append([pas, layout, ms(one["total_time_s"]), ms(r["total_time_s"]),
                         pct(one["total_time_s"] / (8 * r["total_time_s"])), published[(layout, pas)],
                         f"{r['overlap_efficiency']:.3f}", f"{r['load_imbalance']:.3f}"])
    md.append("## ring-flash-attn, 8 GPUs, 8k tokens per GPU\n\n```sh\n" + "\n".join(cmds) + "\n```\n\n" +
              table(["pass", "layout", "1 device, S = 64k (ms)", "8 devices (ms)", "1 device / (8 x ring)",
                     "published (8 x H800)", "overlap", "imbalance"], rows))

    # The same ring on slower NVLink (a cluster file derived from the preset), zigzag.
    preset = subprocess.run([b, "simulate", "--show-preset", "h100-nvlink"], capture_output=True, text=True,
                            check=True).stdout
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bw in (450, 200, 100, 50):
            spec = json.loads(preset)
            spec["name"] = f"h100-nvlink-{bw}"
            spec["intra_node_link"]["bandwidth_gbps"] = bw
            path = os.path.join(tmp, f"h100-nvlink-{bw}.json")
            write_atomic(path, json.dumps(spec, indent=2) + "\n")
            row = [bw]
            for pas in ("fwd", "fwd+bwd"):
                r = sim(b, "--cluster", path, "--devices", 8, "--seq-len", 65536, *LLAMA, "--causal", "--layout",
                        "zigzag", "--pass", pas)
                RUNS[-1]["command"] = RUNS[-1]["command"].replace(tmp + os.sep, "")  # same text every run
                row += [ms(r["total_time_s"]), f"{r['overlap_efficiency']:.3f}"]
            rows.append(row)
    md.append("## The same zigzag ring at lower NVLink bandwidth\n\n```sh\n"
              "ringattn simulate --show-preset h100-nvlink > nv.json   # then set intra_node_link.bandwidth_gbps\n" +
              command("--cluster", "nv.json", "--devices", 8, "--seq-len", 65536, *LLAMA, "--causal", "--layout",
                      "zigzag", "--pass", "fwd|fwd+bwd") + "\n```\n\n" +
              table(["NVLink GB/s per direction", "fwd (ms)", "overlap", "fwd+bwd (ms)", "overlap"], rows))


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "build/bin/ringattn"
    out = sys.argv[2] if len(sys.argv) > 2 else "docs/images"
    if len(sys.argv) > 3 or binary in ("-h", "--help"):
        sys.exit(__doc__)
    if not os.access(binary, os.X_OK):
        sys.exit(f"sim-plots: {binary} is not an executable (build ringattn first, or pass its path)")
    os.makedirs(out, exist_ok=True)
    start = time.monotonic()
    md = ["# Numbers behind docs/simulator.md and docs/simulator-questions.md",
          "Written by scripts/sim-plots.py; every figure was printed by `ringattn simulate --json`."]
    for scenario in (q_scaling, q_fabric, q_causal, q_sweet_spot, q_rule, validation):
        scenario(binary, out, md)
    write_atomic(os.path.join(out, "sim-numbers.md"), "\n\n".join(md) + "\n")
    # One run per line: small, and a rerun's diff shows which runs changed.
    write_atomic(os.path.join(out, "sim-numbers.json"),
                 "[\n" + ",\n".join(json.dumps(r, separators=(",", ":")) for r in RUNS) + "\n]\n")
    print(f"sim-plots: {len(RUNS)} runs in {time.monotonic() - start:.1f} s; charts and numbers in {out}")


if __name__ == "__main__":
    main()
