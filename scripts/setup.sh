#!/usr/bin/env bash
# Sets up everything on a fresh Debian machine: installs the packages the build needs (only the
# missing ones, with apt-get), configures with CMake and builds.
#
#   scripts/setup.sh              Release build in build/ (warnings are errors)
#   scripts/setup.sh --sanitize   AddressSanitizer + UndefinedBehaviorSanitizer build in build-asan/
#
# Environment: RINGATTN_BUILD_DIR overrides the build folder; RINGATTN_JOBS the parallel jobs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mode=release
case "${1:-}" in
  "") ;;
  --sanitize) mode=sanitize ;;
  *) echo "usage: scripts/setup.sh [--sanitize]" >&2; exit 2 ;;
esac

packages=(cmake make g++ pkg-config libeigen3-dev libgtest-dev libgmock-dev libbenchmark-dev
          libcli11-dev nlohmann-json3-dev python3 python3-numpy libopenmpi-dev openmpi-bin
          doxygen)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  if [[ $(id -u) -eq 0 ]]; then sudo=(); elif command -v sudo >/dev/null; then sudo=(sudo); else
    echo "setup: error: need root (or sudo) to install: ${missing[*]}" >&2; exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

jobs="${RINGATTN_JOBS:-$(nproc)}"
if [[ $mode == release ]]; then
  build="${RINGATTN_BUILD_DIR:-$root/build}"
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release
else
  build="${RINGATTN_BUILD_DIR:-$root/build-asan}"
  # The sanitizer build checks the CPU code and its tests; benchmarks and fuzzers are not built.
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DRINGATTN_SANITIZE=ON \
        -DRINGATTN_BUILD_BENCH=OFF -DRINGATTN_BUILD_FUZZ=OFF
fi
cmake --build "$build" -j "$jobs"
