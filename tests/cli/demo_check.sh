#!/usr/bin/env bash
# The README's first command as a user meets it: `ringattn demo` must pass, and its report folder
# must hold report.md with the pictures it links, the pictures must be SVG documents and the
# trace must be JSON. Usage: demo_check.sh RINGATTN_BINARY
set -euo pipefail
bin="$1"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
"$bin" demo --report "$dir/report" >"$dir/out.txt" 2>&1 || { cat "$dir/out.txt"; echo "demo failed"; exit 1; }
cat "$dir/out.txt"
grep -q "^Disposition: Passed$" "$dir/out.txt" || { echo "FAILED: no 'Disposition: Passed'"; exit 1; }
r="$dir/report"
grep -q "^Disposition: Passed$" "$r/report.md" || { echo "FAILED: report.md has no disposition"; exit 1; }
for svg in timeline-nvlink.svg timeline-ib.svg sweep-ib.svg; do
  grep -q "]($svg)" "$r/report.md" || { echo "FAILED: report.md does not show $svg"; exit 1; }
  head -c 5 "$r/$svg" | grep -q "<svg " || { echo "FAILED: $svg is not an SVG document"; exit 1; }
  tail -n 1 "$r/$svg" | grep -q "</svg>" || { echo "FAILED: $svg is not complete"; exit 1; }
done
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert len(d['traceEvents']) > 100" "$r/trace-nvlink.json" \
  || { echo "FAILED: the trace is not a Chrome trace"; exit 1; }
# A report folder that is a file is refused up front, with one line and nothing written.
touch "$dir/file"
if "$bin" demo --report "$dir/file" >"$dir/bad.txt" 2>&1; then echo "FAILED: a file as --report was accepted"; exit 1; fi
[[ $(wc -l <"$dir/bad.txt") -eq 1 ]] || { cat "$dir/bad.txt"; echo "FAILED: not one line"; exit 1; }
echo "demo report checked: $(ls "$r" | tr '\n' ' ')"
