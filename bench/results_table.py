#!/usr/bin/env python3
"""Turns bench_attention's Google Benchmark JSON into the Markdown tables of docs/results.md.

Usage: bench/results_table.py build/bench/results.json > build/bench/results.md

Reads the "median" aggregates (bench_attention repeats every case; see its header) and prints
one table of naive vs blockwise per head dimension (time, GFLOP/s, peak heap, the two ratios)
and one of the Eigen GEMM ceiling. Standard library only.
"""
import json
import re
import sys


def mib(n):
    return n / (1024.0 * 1024.0)


def fmt_mem(n):
    return f"{mib(n):,.2f} MiB" if n >= 1024 * 1024 else f"{n / 1024.0:,.0f} KiB"


def to_ms(value, unit):
    return value * {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def main(path):
    with open(path) as f:
        data = json.load(f)
    ctx = data["context"]
    attn = {}  # (path, S, D) -> median run
    gemm = {}  # name -> median run
    reps = {}
    for b in data["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        name = b["run_name"]
        m = re.match(r"(naive|blockwise)_forward/S:(\d+)/D:(\d+)", name)
        if m:
            attn[(m.group(1), int(m.group(2)), int(m.group(3)))] = b
        elif name.startswith("eigen_gemm/"):
            gemm[name.split("/")[1]] = b
        reps[name] = b["repetitions"]

    print(f"Run: {ctx.get('date', '?')}, load average before the run "
          f"{', '.join(f'{x:.2f}' for x in ctx.get('load_avg', []))}; "
          f"{ctx.get('ringattn.eigen', '')}; blockwise {ctx.get('ringattn.blockwise_tile', '')}.")
    print(f"Medians over {min(reps.values())}-{max(reps.values())} repetitions (wall time).\n")
    for dim in sorted({d for (_, _, d) in attn}):
        print(f"D = {dim}:\n")
        print("| S | naive ms | naive GFLOP/s | naive peak | blockwise ms | blockwise GFLOP/s "
              "| blockwise peak | speed-up | naive/blockwise peak |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for seq in sorted({s for (_, s, d) in attn if d == dim}):
            n = attn.get(("naive", seq, dim))
            w = attn.get(("blockwise", seq, dim))
            if not n or not w:
                continue
            tn = to_ms(n["real_time"], n["time_unit"])
            tw = to_ms(w["real_time"], w["time_unit"])
            print(f"| {seq} | {tn:,.1f} | {n['FLOPS'] / 1e9:.1f} | {fmt_mem(n['peak_mem'])} "
                  f"| {tw:,.1f} | {w['FLOPS'] / 1e9:.1f} | {fmt_mem(w['peak_mem'])} "
                  f"| {tn / tw:.2f}x | {n['peak_mem'] / w['peak_mem']:,.0f}x |")
        print()
    if gemm:
        print("Eigen GEMM (float32, 1 thread):\n")
        print("| product | ms | GFLOP/s |")
        print("|---|---:|---:|")
        for name, b in gemm.items():
            print(f"| {name} | {to_ms(b['real_time'], b['time_unit']):.1f} | {b['FLOPS'] / 1e9:.1f} |")
        print()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
