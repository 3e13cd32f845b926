#!/usr/bin/env bash
# The README's second command (and CI's): set up everything and run the whole test suite, twice:
# the Release build (every test; GPU tests skip with a reason when no GPU is present), then the
# AddressSanitizer + UndefinedBehaviorSanitizer build over the CPU tests.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jobs="${RINGATTN_JOBS:-$(nproc)}"
start=$SECONDS

echo "== release build and tests"
RINGATTN_BUILD_DIR="$root/build" "$root/scripts/setup.sh"
ctest --test-dir "$root/build" --output-on-failure -j "$jobs"

echo "== sanitizer build (ASan + UBSan) and CPU tests"
RINGATTN_BUILD_DIR="$root/build-asan" "$root/scripts/setup.sh" --sanitize
# Leaks inside Open MPI's own libraries are suppressed (tests/sanitizers/lsan.supp); to name
# them LeakSanitizer needs the slow unwinder (Open MPI has no frame pointers).
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:fast_unwind_on_malloc=0 \
LSAN_OPTIONS="suppressions=$root/tests/sanitizers/lsan.supp:print_suppressions=0" \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$root/build-asan" -L cpu --output-on-failure -j "$jobs"

echo "== all tests passed in $((SECONDS - start)) s"
