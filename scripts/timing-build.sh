# Sourced by the benchmark scripts (bench.sh, mpi-overlap.sh). Timings only mean something from
# an optimized, unsanitized build with the benchmarks in it: `timing_build NAME` keeps $build if
# it is one, switches to $root/build-release otherwise, and configures it if needed.
timing_build() {
  local name=$1 type
  cache_value() { sed -n "s/^$1:[A-Z]*=//p" "$build/CMakeCache.txt" 2>/dev/null; }
  if [[ -f $build/CMakeCache.txt ]]; then
    type=$(cache_value CMAKE_BUILD_TYPE)
    if [[ $type != Release && $type != RelWithDebInfo ]] || [[ $(cache_value RINGATTN_SANITIZE) == ON ]] ||
       [[ $(cache_value RINGATTN_BUILD_BENCH) == OFF ]]; then
      echo "$name: $build is a '${type:-no type}' build (or sanitized, or without benchmarks);" \
           "using $root/build-release instead" >&2
      build=$root/build-release
    fi
  fi
  if [[ ! -f $build/CMakeCache.txt ]]; then
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release
  fi
}
