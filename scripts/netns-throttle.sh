#!/usr/bin/env bash
# The throttled-link experiment of docs/results.md ("CPU ring over MPI: overlap"): two ranks of
# bench_mpi_overlap, one in each of two network namespaces joined by a veth pair whose both ends
# are rate-limited with tc (tbf), talking over Open MPI's TCP transport, for a sweep of rates and
# block sizes. It shows where the K/V transfer stops hiding behind the compute and compares with
# the prediction bench_mpi_overlap prints (compute per step >= bytes per step / rate).
#
#   sudo scripts/netns-throttle.sh                         rates 100mbit 1gbit 10gbit (~10 minutes)
#   sudo scripts/netns-throttle.sh --rates="1gbit" -- --sizes=1024,4096 --reps=3
#   sudo scripts/netns-throttle.sh --setup-only            create the namespaces, print, remove them
#
# Network: namespaces ra0 and ra1 (created here, removed on exit), veth ra-veth0 (10.200.0.1/24,
# in ra0) <-> ra-veth1 (10.200.0.2/24, in ra1); traffic never leaves this machine.
# How one mpirun spans two namespaces: mpirun and its daemon stay in the root namespace and the
# launch is MPMD, each app context being this script's wrapper (--rank-wrapper) that starts the
# rank with `ip netns exec raX`. A rank's MPI traffic then goes over the veth (btl tcp,self with
# btl_tcp_if_include 10.200.0.0/24). Its PMIx connection to the local daemon (TCP to 127.0.0.1 in
# the root namespace, which the namespace's own loopback cannot reach) is carried by two small
# forwarders: 127.0.0.1:<port> inside the namespace -> a Unix socket (filesystem, shared by the
# namespaces) -> 127.0.0.1:<port> in the root namespace. The veth byte counters are printed
# before and after each run, to show that the ring's bytes went over the throttled link.
#
# Needs root, iproute2 (installed if missing), python3 (the forwarders) and Open MPI. Environment
# and build folder as in scripts/mpi-overlap.sh (RINGATTN_BUILD_DIR, default build/). Results:
# <build>/bench/netns-throttle-<rate>.txt.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
self=$root/scripts/$(basename "${BASH_SOURCE[0]}")

# ---- forwarder: one direction of the PMIx bridge ------------------------------------------------
forwarder() {  # forwarder unix-to-tcp PATH PORT | forwarder tcp-to-unix PORT PATH
  exec python3 -c '
import asyncio, sys
mode, a, b = sys.argv[1:4]
async def pipe(r, w):
    try:
        while data := await r.read(1 << 16):
            w.write(data)
            await w.drain()
    except Exception:
        pass
    finally:
        w.close()
async def handle(r, w):
    if mode == "unix-to-tcp":
        r2, w2 = await asyncio.open_connection("127.0.0.1", int(b))
    else:
        r2, w2 = await asyncio.open_unix_connection(b)
    await asyncio.gather(pipe(r, w2), pipe(r2, w))
async def main():
    if mode == "unix-to-tcp":
        server = await asyncio.start_unix_server(handle, path=a)
    else:
        server = await asyncio.start_server(handle, "127.0.0.1", int(a))
    print("ready", flush=True)
    async with server:
        await server.serve_forever()
asyncio.run(main())
' "$@"
}

# ---- rank wrapper: run by mpirun's daemon (root namespace) for each app context -----------------
if [[ ${1:-} == --rank-wrapper ]]; then
  ns=$2; shift 2
  uri=${PMIX_SERVER_URI41:-${PMIX_SERVER_URI4:-${PMIX_SERVER_URI3:-}}}
  port=${uri##*:}
  [[ $port =~ ^[0-9]+$ ]] || { echo "netns-throttle: no PMIx server port in the environment ($uri)" >&2; exit 3; }
  dir=$(mktemp -d /tmp/ringattn-pmix.XXXXXX)
  forwarder unix-to-tcp "$dir/sock" "$port" > "$dir/root.log" 2>&1 &
  root_fwd=$!
  ip netns exec "$ns" bash -c "$(declare -f forwarder); forwarder tcp-to-unix $port $dir/sock" > "$dir/ns.log" 2>&1 &
  ns_fwd=$!
  for _ in $(seq 200); do
    grep -q ready "$dir/root.log" 2>/dev/null && grep -q ready "$dir/ns.log" 2>/dev/null && break
    sleep 0.05
  done
  rc=0
  ip netns exec "$ns" "$@" || rc=$?
  kill "$root_fwd" "$ns_fwd" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
  exit "$rc"
fi

# ---- the experiment ------------------------------------------------------------------------------
build=${RINGATTN_BUILD_DIR:-$root/build}
jobs=${RINGATTN_JOBS:-$(nproc)}
rates="100mbit 1gbit 10gbit"
setup_only=0
bench_args=(--sizes=256,512,1024,2048,4096 --heads-kv=8 --masks=full --reps=3)
while [[ $# -gt 0 ]]; do
  case $1 in
    --rates=*) rates=${1#--rates=}; rates=${rates//,/ }; shift ;;
    --setup-only) setup_only=1; shift ;;
    --) shift; bench_args=("$@"); break ;;
    -h|--help) sed -n '2,25p' "$self"; exit 0 ;;
    *) echo "netns-throttle.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ $(id -u) == 0 ]] || { echo "netns-throttle.sh: needs root (network namespaces, tc)" >&2; exit 2; }
if ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
  apt-get update && apt-get install -y iproute2
fi
command -v python3 >/dev/null || { echo "netns-throttle.sh: needs python3 (the PMIx forwarders)" >&2; exit 2; }

cleanup() {
  ip netns del ra0 2>/dev/null || true  # deleting a namespace deletes its veth end and the pair
  ip netns del ra1 2>/dev/null || true
}
trap cleanup EXIT
cleanup  # leftovers of an interrupted run
ip netns add ra0
ip netns add ra1
ip link add ra-veth0 type veth peer name ra-veth1
ip link set ra-veth0 netns ra0
ip link set ra-veth1 netns ra1
ip -n ra0 addr add 10.200.0.1/24 dev ra-veth0
ip -n ra1 addr add 10.200.0.2/24 dev ra-veth1
for i in 0 1; do
  ip -n ra$i link set lo up
  ip -n ra$i link set ra-veth$i up
done
echo "== namespaces ra0 (10.200.0.1, ra-veth0) and ra1 (10.200.0.2, ra-veth1)"
[[ $setup_only == 1 ]] && { ip -n ra0 addr show ra-veth0; ip -n ra1 addr show ra-veth1; exit 0; }

# The benchmark (Release build, as scripts/mpi-overlap.sh).
cache_value() { sed -n "s/^$1:[A-Z]*=//p" "$build/CMakeCache.txt" 2>/dev/null; }
if [[ -f $build/CMakeCache.txt ]]; then
  type=$(cache_value CMAKE_BUILD_TYPE)
  if [[ $type != Release && $type != RelWithDebInfo ]] || [[ $(cache_value RINGATTN_SANITIZE) == ON ]] ||
     [[ $(cache_value RINGATTN_BUILD_BENCH) == OFF ]]; then
    build=$root/build-release
  fi
fi
[[ -f $build/CMakeCache.txt ]] || cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j"$jobs" --target bench_mpi_overlap
bin=$build/bin/bench_mpi_overlap
out=$build/bench
mkdir -p "$out"

tx_bytes() { ip -n "$1" -s -j link show "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["tx"]["bytes"])'; }
mbit_of() {  # 100mbit -> 100, 1gbit -> 1000, 10gbit -> 10000
  case $1 in
    *gbit) echo $(( ${1%gbit} * 1000 )) ;;
    *mbit) echo "${1%mbit}" ;;
    *) echo "netns-throttle.sh: give rates as <n>mbit or <n>gbit, not '$1'" >&2; exit 2 ;;
  esac
}

status=0
for rate in $rates; do
  mbit=$(mbit_of "$rate")
  for i in 0 1; do  # both directions: each end shapes what it sends
    tc -n ra$i qdisc replace dev ra-veth$i root tbf rate "$rate" burst 1mb latency 100ms
  done
  echo "== rate $rate per direction; load before: $(uptime)"
  tc -n ra0 qdisc show dev ra-veth0
  before0=$(tx_bytes ra0 ra-veth0) before1=$(tx_bytes ra1 ra-veth1)
  file=$out/netns-throttle-$rate.txt
  mpirun --allow-run-as-root --bind-to core --map-by core \
    --mca btl tcp,self --mca btl_tcp_if_include 10.200.0.0/24 \
    -np 1 "$self" --rank-wrapper ra0 "$bin" --label="tcp-veth-$rate" --link-mbit="$mbit" "${bench_args[@]}" : \
    -np 1 "$self" --rank-wrapper ra1 "$bin" --label="tcp-veth-$rate" --link-mbit="$mbit" "${bench_args[@]}" |
    tee "$file" || status=1
  after0=$(tx_bytes ra0 ra-veth0) after1=$(tx_bytes ra1 ra-veth1)
  echo "# veth bytes sent during the run: ra0 $(( (after0 - before0) >> 20 )) MiB," \
       "ra1 $(( (after1 - before1) >> 20 )) MiB" | tee -a "$file"
done
echo "== load after: $(uptime)"
echo "== results: $out/netns-throttle-*.txt"
exit "$status"
