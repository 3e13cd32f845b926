#!/usr/bin/env bash
# Builds the CPU benchmarks (Release) and runs them; docs/results.md records what they printed.
#
#   scripts/bench.sh                  bench_summary, bench_simulator, then the full bench_attention
#   scripts/bench.sh --summary-only   bench_summary (the two acceptance ratios, OK/FAILED) and
#                                     bench_simulator (events/s, the 1M-token layer, heap)
#   scripts/bench.sh -- ARGS...       extra arguments for bench_attention, e.g.
#                                     -- --benchmark_filter=blockwise --block_q=128 --block_kv=256
#
# Environment (as in scripts/setup.sh): RINGATTN_BUILD_DIR (default build/), RINGATTN_JOBS
# (default nproc). Timings need an optimized build: if that folder is a Debug or sanitizer
# build, build-release/ is configured (Release) and used instead.
# Results: <build>/bench/summary.txt, <build>/bench/bench_attention.txt (console) and
# <build>/bench/results.json (Google Benchmark JSON, every repetition), and <build>/bench/results.md
# (its medians as the Markdown tables of docs/results.md, by bench/results_table.py; needs
# python3). The exit status is bench_summary's: 0 when both targets are met.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${RINGATTN_BUILD_DIR:-$root/build}
jobs=${RINGATTN_JOBS:-$(nproc)}
summary_only=0
bench_args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --summary-only) summary_only=1; shift ;;
    --) shift; bench_args=("$@"); break ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

# shellcheck source=timing-build.sh
source "$root/scripts/timing-build.sh"
timing_build bench.sh
cmake --build "$build" -j"$jobs" --target bench_attention bench_summary bench_simulator

bin=$build/bin
out=$build/bench
mkdir -p "$out"
echo "== load before the run: $(uptime)"
echo "== bench_summary"
status=0
"$bin/bench_summary" | tee "$out/summary.txt" || status=$?
echo "== bench_simulator"
"$bin/bench_simulator" | tee "$out/simulator.txt" || true
if [[ $summary_only == 0 ]]; then
  echo "== bench_attention"
  "$bin/bench_attention" --benchmark_format=console \
    --benchmark_out="$out/results.json" --benchmark_out_format=json \
    "${bench_args[@]}" | tee "$out/bench_attention.txt"
  if command -v python3 >/dev/null; then  # the Markdown tables of docs/results.md
    python3 "$root/bench/results_table.py" "$out/results.json" > "$out/results.md"
  fi
fi
echo "== load after the run: $(uptime)"
echo "== results:"
echo "   $out/summary.txt"
echo "   $out/simulator.txt"
if [[ $summary_only == 0 ]]; then
  echo "   $out/bench_attention.txt"
  echo "   $out/results.json"
  [[ -f $out/results.md ]] && echo "   $out/results.md (tables for docs/results.md)"
fi
exit "$status"
