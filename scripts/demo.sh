#!/usr/bin/env bash
# The README's first command: set up everything, then run the main job (ringattn demo).
# Extra arguments go to `ringattn demo` (see `build/bin/ringattn demo --help`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
exec "${RINGATTN_BUILD_DIR:-$root/build}/bin/ringattn" demo "$@"
