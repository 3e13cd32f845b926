#!/usr/bin/env bash
# The README's first command: set up everything, then run the main job (ringattn demo).
# The report (Markdown, SVG pictures, a Chrome trace) goes to demo-report/ at the top of the
# checkout. Extra arguments go to `ringattn demo` (see `build/bin/ringattn demo --help`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
exec "${RINGATTN_BUILD_DIR:-$root/build}/bin/ringattn" demo --report "$root/demo-report" "$@"
