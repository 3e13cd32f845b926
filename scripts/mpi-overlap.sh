#!/usr/bin/env bash
# Builds bench_mpi_overlap (Release) and measures how well the CPU ring over MPI hides its K/V
# transfers behind the compute: -np 1 and -np 2 (one rank per core, --bind-to core), over Open
# MPI's shared-memory transport (the default) and over TCP on loopback (--mca btl tcp,self).
# docs/results.md ("CPU ring over MPI: overlap") records what it printed.
#
#   scripts/mpi-overlap.sh                  the full sweep (c = 256..4096, both masks, H_kv = 8 and 2,
#                                           forward and backward; about 15 minutes on 2 cores)
#   scripts/mpi-overlap.sh -- ARGS...       extra arguments for bench_mpi_overlap, e.g.
#                                           -- --sizes=1024,4096 --heads-kv=8 --reps=3
#   scripts/mpi-overlap.sh --np=2 --transports=shm   only some of the runs
#
# Environment: RINGATTN_BUILD_DIR (default build/), RINGATTN_JOBS (default nproc). Timings need an
# optimized build: if that folder is a Debug or sanitizer build, build-release/ is used instead.
# Results: <build>/bench/mpi-overlap-np<N>-<transport>.txt. Run on a quiet machine (uptime): the
# ranks need a core each. The exit status is 1 when a run printed FAILED (N = 2 below the 0.9
# efficiency target for c >= 2048, or a ring result differing from the local computation).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${RINGATTN_BUILD_DIR:-$root/build}
jobs=${RINGATTN_JOBS:-$(nproc)}
nps="1 2"
transports="shm tcp"
bench_args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --np=*) nps=${1#--np=}; nps=${nps//,/ }; shift ;;
    --transports=*) transports=${1#--transports=}; transports=${transports//,/ }; shift ;;
    --) shift; bench_args=("$@"); break ;;
    -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "mpi-overlap.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

# shellcheck source=timing-build.sh
source "$root/scripts/timing-build.sh"
timing_build mpi-overlap.sh
cmake --build "$build" -j"$jobs" --target bench_mpi_overlap
bin=$build/bin/bench_mpi_overlap
[[ -x $bin ]] || { echo "mpi-overlap.sh: $bin was not built (needs the MPI back-end: RINGATTN_WITH_MPI)" >&2; exit 2; }

mpirun_args=(--bind-to core --map-by core)
[[ $(id -u) == 0 ]] && mpirun_args+=(--allow-run-as-root)
out=$build/bench
mkdir -p "$out"
status=0
for np in $nps; do
  for transport in $transports; do
    case $transport in
      shm) mca=() ;;                                  # Open MPI's default: vader (shared memory) + self
      tcp) mca=(--mca btl tcp,self) ;;                # TCP over loopback
      *) echo "mpi-overlap.sh: unknown transport '$transport' (shm or tcp)" >&2; exit 2 ;;
    esac
    [[ $np == 1 && $transport != shm ]] && continue   # one rank sends nothing: one run is enough
    echo "== np=$np transport=$transport; load before: $(uptime)"
    file=$out/mpi-overlap-np$np-$transport.txt
    mpirun -np "$np" "${mpirun_args[@]}" "${mca[@]}" "$bin" --label="$transport" "${bench_args[@]}" |
      tee "$file" || status=1
    grep -qx FAILED "$file" && status=1
  done
done
echo "== load after: $(uptime)"
echo "== results: $out/mpi-overlap-np*.txt"
exit "$status"
