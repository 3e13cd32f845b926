#!/usr/bin/env bash
# gpu-check.sh: build, test, sanitize and benchmark the CUDA kernels on a GPU machine that has
# CUDA, CMake and Python with PyTorch but no package manager and no network (the device machine:
# one H100/H200). The libraries the build needs travel with the tree, prepared here.
#
# 1. Here (a Debian machine with scripts/setup.sh's packages), once:
#      scripts/gpu-check.sh --prepare      copies Eigen, CLI11 and nlohmann-json (headers + CMake
#                                          files), Google Benchmark (headers, shared library, CMake
#                                          files) and GoogleTest's sources into .gpu-deps/ (about
#                                          10 MiB; git-ignored through .git/info/exclude, so a
#                                          copy of the tree to the GPU machine must name it)
# 2. On the GPU machine, from the repository root of a copy of the tree that includes .gpu-deps:
#      PYTHONUNBUFFERED=1 scripts/gpu-check.sh
#    (--quick for the short benchmark grid; the whole run is kept under --time-limit, 570 s, and
#    a phase that would outrun it is cut, the summary still printed). If one run is too short,
#    split it; the build folder (build-gpu, ignored) is reused only where it survives between
#    runs, so a later run on a fresh machine rebuilds what it needs:
#      scripts/gpu-check.sh --skip bench,sdpa,compare                  build, tests, sanitizers
#      scripts/gpu-check.sh --skip test-gpu,test-host,sanitize --targets bench_attention_cuda
#      scripts/gpu-check.sh --only build,ring --targets bench_ring_cuda   the ring benchmark alone
#    On a machine with the Debian packages installed, no folder is needed (the system's are used).
#
# Phases, each timed; a failing phase does not stop the ones that do not depend on it, and the
# exit status is non-zero if any failed:
#   env        GPU, driver, nvcc, CMake, compiler, PyTorch versions
#   deps       find the prepared libraries; build and install GoogleTest from its sources
#   configure  Release, RINGATTN_WITH_CUDA=ON, CMAKE_CUDA_ARCHITECTURES from the GPU (90 on
#              H100/H200), docs, fuzz and MPI off, warnings not errors (another compiler)
#   build      everything, all cores
#   test-gpu   ctest -L gpu (the kernel tests and any GPU tutorial)
#   test-host  cuda_host_test (the CPU-side CUDA host tests; --full-ctest: every non-GPU test)
#   sanitize   compute-sanitizer memcheck and racecheck over a few small kernel-test cases
#   bench      bench_attention_cuda (every kernel version, checked, then timed)
#   sdpa       scripts/sdpa_bench.py (PyTorch SDPA: flash and cuDNN backends, same cases)
#   compare    ringattn vs SDPA ratios and the three judged targets (PASS/MISS)
#   ring       bench_ring_cuda: the CUDA ring on this one GPU (virtual ranks N = 1, 2, 4, 8) against
#              the single kernel, checked first: overhead ring / single (target at N = 4, S >= 64k:
#              <= 1.10), comm/compute overlap, causal layout imbalance, longest sequence; at most
#              --ring-cap seconds (default 300, --quick 150; its own default grid takes about 3 min)
# The summary table comes last, with the judged targets and the ring's key lines under it.
# Performance targets that MISS are reported, not failures (--strict-perf makes them failures).
#
# Output (--out DIR, default $OUT when set, else <build>/gpu-check-out), at most 8 files, so that
# a runner that returns only a few files gets them all: summary.txt, console.log, logs.tar.gz
# (every phase's log, the CTest/GoogleTest XML, env.txt, the ring's Chrome trace
# ring_trace.json), ringattn_bench.json/.csv, sdpa_bench.json, bench_compare.csv,
# ring_bench.json.
#
# Options:
#   --prepare            (here) copy the dependencies into --deps DIR (default .gpu-deps)
#   --deps DIR           prepared folder (default: .gpu-deps, else shared/deps, else the system)
#   --eigen DIR --cli11 DIR --nlohmann DIR --benchmark DIR --gtest DIR
#                        one library from elsewhere: an installed prefix / CMake config folder,
#                        or plain headers (Eigen, CLI11, nlohmann), or GoogleTest's sources
#   --build DIR          build folder (default build-gpu)
#   --out DIR            where results go (default $OUT, else <build>/gpu-check-out)
#   --arch N             CMAKE_CUDA_ARCHITECTURES (default: the GPU's, e.g. 90; else 90)
#   --jobs N             build jobs (default nproc)
#   --targets LIST       build only these targets (comma-separated; default: everything), e.g.
#                        bench_attention_cuda for a benchmark-only run with --only
#   --only LIST / --skip LIST   comma-separated phases
#   --quick              the benchmarks' short grid (D=128, S=2k and 8k; the ring: S=64k)
#   --bench-args "..."   extra arguments for bench_attention_cuda (and --sdpa-args for the script,
#                        --ring-args for bench_ring_cuda)
#   --ring-cap S         most seconds the ring phase may take (default 300, with --quick 150)
#   --full-ctest         test-host runs every test that is not labelled gpu
#   --sanitize-filter F  gtest filter for compute-sanitizer (default: up to 3 small cases)
#   --time-limit S       seconds for the whole run (default 570); phases get what is left
#   --werror             keep -Werror    --mpi AUTO|ON|OFF (default OFF)
#   --strict-perf        a missed performance target fails the run
#   --dry-run            print the commands instead of running them
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
START=$SECONDS

mode=check
deps="" dep_eigen="" dep_cli11="" dep_json="" dep_benchmark="" dep_gtest=""
build=$root/build-gpu out=${OUT:-} arch="" jobs=$(nproc) only="" skip=""
targets="" quick=0 full_ctest=0 san_filter=${RINGATTN_SANITIZE_FILTER:-} time_limit=570 werror=OFF mpi=OFF
dry=0 strict_perf=0 bench_extra="" sdpa_extra="" ring_extra="" ring_cap=""
reserve=15  # seconds kept for the summary
cap=0       # when > 0: the most seconds one command of run/run_tee may take

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
need() { [[ $# -ge 2 && -n $2 ]] || { echo "gpu-check: $1 needs a value (see --help)" >&2; exit 2; }; }
while (($#)); do
  case $1 in
    --prepare) mode=prepare ;;
    --deps) need "$@"; deps=$2; shift ;;
    --eigen) need "$@"; dep_eigen=$2; shift ;;
    --cli11) need "$@"; dep_cli11=$2; shift ;;
    --nlohmann) need "$@"; dep_json=$2; shift ;;
    --benchmark) need "$@"; dep_benchmark=$2; shift ;;
    --gtest) need "$@"; dep_gtest=$2; shift ;;
    --build) need "$@"; build=$2; shift ;;
    --out) need "$@"; out=$2; shift ;;
    --arch) need "$@"; arch=$2; shift ;;
    --jobs) need "$@"; jobs=$2; shift ;;
    --targets) need "$@"; targets=$2; shift ;;
    --only) need "$@"; only=$2; shift ;;
    --skip) need "$@"; skip=$2; shift ;;
    --quick) quick=1 ;;
    --bench-args) need "$@"; bench_extra=$2; shift ;;
    --sdpa-args) need "$@"; sdpa_extra=$2; shift ;;
    --ring-args) need "$@"; ring_extra=$2; shift ;;
    --ring-cap) need "$@"; ring_cap=$2; shift ;;
    --full-ctest) full_ctest=1 ;;
    --sanitize-filter) need "$@"; san_filter=$2; shift ;;
    --time-limit) need "$@"; time_limit=$2; shift ;;
    --werror) werror=ON ;;
    --mpi) need "$@"; mpi=$2; shift ;;
    --strict-perf) strict_perf=1 ;;
    --dry-run) dry=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
# The CUDA toolkit where the image keeps it, if it is not on PATH already.
for d in /usr/local/cuda/bin /usr/local/cuda/compute-sanitizer; do
  [[ -d $d && ":$PATH:" != *":$d:"* ]] && PATH=$PATH:$d
done
export PATH
abspath() { [[ $1 == /* ]] && echo "$1" || echo "$root/$1"; }
[[ -n $deps ]] && deps=$(abspath "$deps")
build=$(abspath "$build")

# ---- --prepare: copy the Debian packages' files into a folder that travels -------------------
prepare() {
  local dst=${deps:-$root/.gpu-deps}
  local ma
  ma=$(gcc -print-multiarch 2>/dev/null || dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
  local libdir=/usr/lib/$ma
  local -a need_files=(
    "/usr/include/eigen3/Eigen/Core:libeigen3-dev"
    "/usr/share/eigen3/cmake/Eigen3Config.cmake:libeigen3-dev"
    "/usr/include/CLI/CLI.hpp:libcli11-dev"
    "/usr/share/cmake/CLI11/CLI11Config.cmake:libcli11-dev"
    "/usr/include/nlohmann/json.hpp:nlohmann-json3-dev"
    "/usr/share/cmake/nlohmann_json/nlohmann_jsonConfig.cmake:nlohmann-json3-dev"
    "/usr/src/googletest/CMakeLists.txt:googletest"
    "/usr/include/benchmark/benchmark.h:libbenchmark-dev"
    "$libdir/cmake/benchmark/benchmarkConfig.cmake:libbenchmark-dev")
  local missing=() f
  for f in "${need_files[@]}"; do [[ -e ${f%%:*} ]] || missing+=("${f##*:} (${f%%:*})"); done
  if ((${#missing[@]})); then
    echo "gpu-check --prepare: missing: ${missing[*]}; install them (scripts/setup.sh does)" >&2
    exit 1
  fi
  echo "== preparing $dst"
  rm -rf "$dst"
  mkdir -p "$dst/include/eigen3" "$dst/share/eigen3" "$dst/share/cmake" "$dst/src" "$dst/lib/$ma/cmake"
  # Eigen: the headers the project uses (not unsupported/) and its relocatable CMake package.
  cp -a /usr/include/eigen3/Eigen /usr/include/eigen3/signature_of_eigen3_matrix_library "$dst/include/eigen3/"
  cp -a /usr/share/eigen3/cmake "$dst/share/eigen3/"
  cp -a /usr/include/CLI "$dst/include/"
  cp -a /usr/share/cmake/CLI11 "$dst/share/cmake/"
  cp -a /usr/include/nlohmann "$dst/include/"
  cp -a /usr/share/cmake/nlohmann_json "$dst/share/cmake/"
  # NCCL's header (the GPU image carries the library as a Python package, maybe without it).
  local nccl_h
  for nccl_h in "${CUDA_HOME:-/usr/local/cuda}/include/nccl.h" /usr/include/nccl.h; do
    if [[ -e $nccl_h ]]; then
      mkdir -p "$dst/nccl/include"
      cp -L "$nccl_h" "$dst/nccl/include/"
      break
    fi
  done
  # GoogleTest: sources (built on the GPU machine with its compiler), without tests and docs.
  tar -C /usr/src -cf - --exclude=googletest/googletest/test --exclude=googletest/googlemock/test \
      --exclude=googletest/googletest/samples --exclude=googletest/googletest/docs \
      --exclude=googletest/googlemock/docs googletest | tar -C "$dst/src" -xf -
  # Google Benchmark: Debian's shared library (glibc 2.36, runs on newer ones) as plain files,
  # the symlinks resolved, so nothing points outside the folder.
  cp -a /usr/include/benchmark "$dst/include/"
  local real
  real=$(readlink -f "$libdir/libbenchmark.so")
  cp -L "$real" "$dst/lib/$ma/"
  local soname
  soname=$(objdump -p "$real" 2>/dev/null | awk '/SONAME/ {print $2}')
  [[ -n $soname && $soname != "$(basename "$real")" ]] && cp -L "$real" "$dst/lib/$ma/$soname"
  [[ -e $libdir/libbenchmark_main.a ]] && cp -L "$libdir/libbenchmark_main.a" "$dst/lib/$ma/"
  cp -a "$libdir/cmake/benchmark" "$dst/lib/$ma/cmake/"
  {
    echo "# Prepared by scripts/gpu-check.sh --prepare on $(hostname) at $(date -u +%FT%TZ)"
    echo "# a CMake prefix: include/, share/ and lib/$ma/ hold the packages' files; src/googletest the sources"
    dpkg-query -W -f='${Package} ${Version}\n' libeigen3-dev libcli11-dev nlohmann-json3-dev googletest \
      libbenchmark-dev 2>/dev/null || true
  } >"$dst/MANIFEST.txt"
  # Keep it out of git but travelling: ignored here, named in the device call's carry.
  if [[ $dst == "$root"/* ]] && git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
    local rel=${dst#"$root"/} exclude
    exclude=$(git -C "$root" rev-parse --git-path info/exclude)
    [[ $exclude == /* ]] || exclude=$root/$exclude
    if ! git -C "$root" check-ignore -q "$rel/MANIFEST.txt"; then
      mkdir -p "$(dirname "$exclude")"
      echo "/$rel/" >>"$exclude"
      echo "   added /$rel/ to $exclude"
    fi
  fi
  echo "== sizes"
  du -sh "$dst"/include/* "$dst"/share/eigen3 "$dst"/share/cmake/* "$dst"/src/googletest "$dst"/lib | sed 's/^/   /'
  echo "   total: $(du -sh "$dst" | cut -f1) ($(du -sb "$dst" | cut -f1) bytes)"
  local rel=${dst#"$root"/}
  echo "== next, on the GPU machine, in a copy of this tree that includes $rel/: PYTHONUNBUFFERED=1 scripts/gpu-check.sh"
}

if [[ $mode == prepare ]]; then
  prepare
  exit 0
fi

# ---- the check: output folder, logs, phase bookkeeping -----------------------------------------
out=$(abspath "${out:-$build/gpu-check-out}")
logs=$build/gpu-check-logs
if ((dry)); then
  echo "gpu-check: dry run: commands are printed, not run (build $build, out $out)"
else
  mkdir -p "$out" "$logs"
  rm -f "$logs"/*.log "$logs"/*.xml "$logs"/*.txt "$out/console.log" "$out/summary.txt" "$out/bench_compare.csv"
  # Everything on the console also goes to console.log (a remote runner may return only its tail).
  exec 3>&1 4>&2
  exec > >(tee -a "$out/console.log") 2>&1
  tee_pid=$!
fi
# Restores the console and lets tee finish, so that the summary is complete before the exit.
finish() {
  if ((!dry)); then
    exec 1>&3 2>&4
    wait "$tee_pid" 2>/dev/null || true
  fi
  exit "$1"
}

declare -A status=() took=() note=()
phase_names=(env deps configure build test-gpu test-host sanitize bench sdpa compare ring)
in_list() { [[ ",$2," == *",$1,"* ]]; }
wanted() {
  [[ $1 == env ]] && return 0                            # cheap, and the others need its GPU facts
  [[ $1 == deps ]] && wanted configure && return 0       # the configure step needs the folders
  if [[ -n $only ]] && ! in_list "$1" "$only"; then return 1; fi
  if [[ -n $skip ]] && in_list "$1" "$skip"; then return 1; fi
  return 0
}
for p in ${only//,/ } ${skip//,/ }; do
  in_list "$p" "$(IFS=,; echo "${phase_names[*]}")" || { echo "gpu-check: unknown phase '$p'" >&2; exit 2; }
done
left() { echo $((time_limit - (SECONDS - START))); }
# Keeps logs.tar.gz current, so that a run cut short still returns its logs.
pack_logs() {
  ((dry)) && return 0
  if tar -C "$build" -czf "$out/logs.tar.gz.tmp" gpu-check-logs 2>/dev/null; then
    mv "$out/logs.tar.gz.tmp" "$out/logs.tar.gz"
  fi
}

# run LOG CMD...: runs CMD with its output in LOG, under what is left of the time limit; prints the
# end of LOG when it fails. (A function's commands are not time-boxed: call executables.)
run() {
  local log=$1; shift
  if ((dry)); then printf '   +'; printf ' %q' "$@"; printf '   > %s\n' "${log#"$build"/}"; return 0; fi
  local budget=$(($(left) - reserve)) rc=0
  ((cap > 0 && cap < budget)) && budget=$cap
  { printf '+'; printf ' %q' "$@"; echo; } >>"$log"
  if ((budget < 5)); then
    echo "   out of time (--time-limit $time_limit): not run: $*" | tee -a "$log"
    return 124
  fi
  timeout -k 10 "$budget" "$@" >>"$log" 2>&1 || rc=$?
  if ((rc == 124 || rc == 137)); then
    echo "   TIMEOUT after ${budget} s: $*" | tee -a "$log"
  fi
  if ((rc != 0)); then
    echo "   FAILED (exit $rc): $1 ...; the end of ${log#"$build"/}:"
    tail -n 25 "$log" | sed 's/^/   | /'
  fi
  return "$rc"
}
# run_tee LOG CMD...: as run, with the output on the console too (benchmark rows).
run_tee() {
  local log=$1; shift
  if ((dry)); then printf '   +'; printf ' %q' "$@"; printf '   | tee %s\n' "${log#"$build"/}"; return 0; fi
  local budget=$(($(left) - reserve)) rc=0
  ((cap > 0 && cap < budget)) && budget=$cap
  if ((budget < 5)); then
    echo "   out of time (--time-limit $time_limit): not run: $*" | tee -a "$log"
    return 124
  fi
  timeout -k 10 "$budget" "$@" 2>&1 | tee -a "$log" || rc=${PIPESTATUS[0]}
  ((rc == 124 || rc == 137)) && echo "   TIMEOUT after ${budget} s: $*" | tee -a "$log"
  return "$rc"
}

# phase NAME FUNCTION: runs a phase unless --only/--skip leave it out, records PASS/FAIL/SKIP.
# A phase function returns 0 (PASS), 1 (FAIL) or 3 (SKIP, reason in note[NAME]).
phase() {
  local name=$1 fn=$2 t0=$SECONDS rc=0
  if ! wanted "$name"; then status[$name]=SKIP; note[$name]=${note[$name]:-"not asked for"}; took[$name]=0; return 0; fi
  echo "== $name ($((SECONDS - START)) s in, $(left) s left)"
  "$fn" || rc=$?
  took[$name]=$((SECONDS - t0))
  case $rc in
    0) status[$name]=PASS ;;
    3) status[$name]=SKIP ;;
    *) status[$name]=FAIL ;;
  esac
  echo "   $name: ${status[$name]} in ${took[$name]} s${note[$name]:+ (${note[$name]})}"
  pack_logs
  return 0
}
# A phase the later ones may rely on: it passed, or was not asked for (an earlier run's build).
ok() { [[ ${status[$1]:-} == PASS ]] || { [[ ${status[$1]:-} == SKIP ]] && ! wanted "$1"; }; }

# ---- phases ----------------------------------------------------------------------------------------
gpu_name="" gpu_cc="" torch_ver=""
p_env() {
  local f=$logs/env.txt
  if ((dry)); then echo "   + nvidia-smi; nvcc --version; cmake --version; c++ --version; python3 -c 'import torch'"; return 0; fi
  {
    echo "date: $(date -u +%FT%TZ)"; echo "host: $(hostname)"; uname -a
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    command -v nvcc >/dev/null && nvcc --version || echo "nvcc: not found"
    cmake --version | head -1; command -v ninja >/dev/null && echo "ninja $(ninja --version)"
    c++ --version | head -1
    command -v compute-sanitizer >/dev/null && compute-sanitizer --version | tail -1 || echo "compute-sanitizer: not found"
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())' 2>&1 || true
    nproc; free -g | head -2
  } >"$f" 2>&1
  gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
  gpu_cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 || true)
  torch_ver=$(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)
  echo "   GPU: ${gpu_name:-none} (compute capability ${gpu_cc:-?}); $(nvcc --version 2>/dev/null | tail -1 || echo 'no nvcc');" \
       "$(cmake --version | head -1); $(c++ --version | head -1); torch $torch_ver"
  if [[ -z $gpu_name ]]; then note[env]="no GPU visible (nvidia-smi)"; return 1; fi
  return 0
}

# Folder holding FILE somewhere under DIR (first found), or nothing.
config_dir() {
  [[ -n $1 && -d $1 ]] || return 0
  local f; f=$(find -L "$1" -name "$2" -print -quit 2>/dev/null || true)
  [[ -n $f ]] && dirname "$f"
  return 0
}
# A CMake package for plain headers: writes <gen>/<Name>Config.cmake (+ version file) defining
# TARGET with INCLUDE as its include folder. Args: NAME TARGET INCLUDE VERSION.
header_package() {
  local name=$1 target=$2 inc=$3 version=$4 dir=$build/_deps/$1-config
  mkdir -p "$dir"
  cat >"$dir/${name}Config.cmake" <<EOF
# Written by scripts/gpu-check.sh: $name from plain headers in $inc
if(NOT TARGET $target)
  add_library($target INTERFACE IMPORTED)
  set_target_properties($target PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "$inc")
endif()
set(${name}_FOUND TRUE)
EOF
  cat >"$dir/${name}ConfigVersion.cmake" <<EOF
set(PACKAGE_VERSION "$version")
if(PACKAGE_FIND_VERSION VERSION_GREATER PACKAGE_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
else()
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
  if(PACKAGE_FIND_VERSION STREQUAL PACKAGE_VERSION)
    set(PACKAGE_VERSION_EXACT TRUE)
  endif()
endif()
EOF
  echo "$dir"
}
hdr_version() { # FILE_OR_DIR MAJOR_MACRO MINOR_MACRO PATCH_MACRO -> x.y.z (macros found anywhere in it)
  local f=$1 a b c
  a=$(grep -rhs "^#define $2 " "$f" | sed -n "s/^#define $2 *\([0-9]*\).*/\1/p" | head -1)
  b=$(grep -rhs "^#define $3 " "$f" | sed -n "s/^#define $3 *\([0-9]*\).*/\1/p" | head -1)
  c=$(grep -rhs "^#define $4 " "$f" | sed -n "s/^#define $4 *\([0-9]*\).*/\1/p" | head -1)
  echo "${a:-0}.${b:-0}.${c:-0}"
}

cmake_dep_args=() have_benchmark=1 have_gtest=0  # have_benchmark: until deps finds otherwise
p_deps() {
  if [[ -z $deps ]]; then
    local d
    for d in "$root/.gpu-deps" "$root/shared/deps"; do [[ -d $d ]] && { deps=$d; break; }; done
  fi
  echo "   prepared folder: ${deps:-none (the system packages)}"
  local src dir inc
  # Eigen3, CLI11, nlohmann_json: a CMake package under the folder, else plain headers, else the system.
  src=${dep_eigen:-$deps}; dir=$(config_dir "$src" Eigen3Config.cmake)
  if [[ -z $dir && -n $src ]]; then
    inc=$(dirname "$(find -L "$src" -path '*/Eigen/Core' -print -quit 2>/dev/null || true)")
    if [[ -n $inc && $inc != . ]]; then
      inc=$(dirname "$inc")
      ((dry)) || dir=$(header_package Eigen3 Eigen3::Eigen "$inc" \
        "$(hdr_version "$inc/Eigen/src/Core/util/Macros.h" EIGEN_WORLD_VERSION EIGEN_MAJOR_VERSION EIGEN_MINOR_VERSION)")
    fi
  fi
  [[ -n $dir ]] && cmake_dep_args+=("-DEigen3_DIR=$dir")
  echo "   Eigen3: ${dir:-system}"
  src=${dep_cli11:-$deps}; dir=$(config_dir "$src" CLI11Config.cmake)
  if [[ -z $dir && -n $src ]]; then
    inc=$(find -L "$src" -path '*/CLI/CLI.hpp' -print -quit 2>/dev/null || true)
    if [[ -n $inc ]]; then
      inc=$(dirname "$(dirname "$inc")")
      ((dry)) || dir=$(header_package CLI11 CLI11::CLI11 "$inc" \
        "$(hdr_version "$inc/CLI" CLI11_VERSION_MAJOR CLI11_VERSION_MINOR CLI11_VERSION_PATCH)")
    fi
  fi
  [[ -n $dir ]] && cmake_dep_args+=("-DCLI11_DIR=$dir")
  echo "   CLI11: ${dir:-system}"
  src=${dep_json:-$deps}; dir=$(config_dir "$src" nlohmann_jsonConfig.cmake)
  if [[ -z $dir && -n $src ]]; then
    inc=$(find -L "$src" -path '*/nlohmann/json.hpp' -print -quit 2>/dev/null || true)
    if [[ -n $inc ]]; then
      inc=$(dirname "$(dirname "$inc")")
      ((dry)) || dir=$(header_package nlohmann_json nlohmann_json::nlohmann_json "$inc" \
        "$(hdr_version "$inc/nlohmann" NLOHMANN_JSON_VERSION_MAJOR NLOHMANN_JSON_VERSION_MINOR NLOHMANN_JSON_VERSION_PATCH)")
    fi
  fi
  [[ -n $dir ]] && cmake_dep_args+=("-Dnlohmann_json_DIR=$dir")
  echo "   nlohmann_json: ${dir:-system}"
  # Google Benchmark (the CPU benchmarks): the prepared copy, else the system's, else none: then
  # the main build leaves bench/ out and bench_attention_cuda is built standalone (bench/cuda).
  src=${dep_benchmark:-$deps}; dir=$(config_dir "$src" benchmarkConfig.cmake)
  if [[ -n $dir ]] && ((!dry)); then
    # The carried library was built on Debian 12 (glibc 2.36): check that it loads here.
    local so; so=$(find -L "$src" -name 'libbenchmark.so*' -type f -print -quit 2>/dev/null || true)
    if [[ -n $so ]] && ! python3 -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1])' "$so" 2>>"$logs/deps.log"; then
      echo "   benchmark: $so does not load here (see deps.log): left out"
      dir=""
    fi
  fi
  if [[ -n $dir ]]; then
    cmake_dep_args+=("-Dbenchmark_DIR=$dir"); have_benchmark=1
  elif [[ -n $(find /usr/lib /usr/local/lib /usr/lib64 /usr/local/lib64 -maxdepth 4 -name benchmarkConfig.cmake -print -quit 2>/dev/null || true) ]]; then
    have_benchmark=1; dir=system
  else
    cmake_dep_args+=("-DRINGATTN_BUILD_BENCH=OFF"); have_benchmark=0
  fi
  echo "   benchmark: ${dir:-none: the CPU benchmarks are left out, bench_attention_cuda is built standalone}"
  # GoogleTest: an installed package, else its sources built and installed into the build folder.
  src=${dep_gtest:-$deps}; dir=$(config_dir "$src" GTestConfig.cmake)
  if [[ -z $dir && -n $src ]]; then
    local gsrc=""
    for d in "$src" "$src/src/googletest" "$src/googletest"; do
      [[ -f $d/CMakeLists.txt && -d $d/googletest ]] && { gsrc=$d; break; }
    done
    if [[ -n $gsrc ]]; then
      local gb=$build/_deps/googletest gi=$build/_deps/googletest-install
      local -a gen=()
      command -v ninja >/dev/null && gen=(-G Ninja)
      if ((dry)) || [[ ! -d $gi ]]; then
        run "$logs/deps.log" cmake -S "$gsrc" -B "$gb" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
          -DCMAKE_INSTALL_PREFIX="$gi" -DBUILD_GMOCK=ON -DINSTALL_GTEST=ON -Dgtest_build_tests=OFF || return 1
        run "$logs/deps.log" cmake --build "$gb" -j "$jobs" || return 1
        run "$logs/deps.log" cmake --install "$gb" || return 1
      fi
      if ((dry)); then dir=$gi/lib/cmake/GTest; else dir=$(config_dir "$gi" GTestConfig.cmake); fi
      echo "   GoogleTest: built from $gsrc"
    fi
  fi
  if [[ -n $dir ]]; then
    cmake_dep_args+=("-DGTest_DIR=$dir"); have_gtest=1
  elif [[ -n $(find /usr/lib /usr/local/lib /usr/lib64 /usr/local/lib64 -maxdepth 4 -name GTestConfig.cmake -print -quit 2>/dev/null || true) ]]; then
    have_gtest=1; dir=system
  fi
  if ((!have_gtest)); then  # configure and build the rest; the test phases will say what is missing
    cmake_dep_args+=("-DRINGATTN_BUILD_TESTS=OFF")
    note[deps]="no GoogleTest: tests not built (run --prepare, or pass --gtest DIR)"
  fi
  echo "   GTest: ${dir:-none}"
  find_nccl
  return 0
}

# NCCL for the CUDA ring's NcclCommunicator: the system's (next to the CUDA toolkit) when there
# is one; else the library PyTorch's image carries as a Python package (nvidia-nccl-*), whose
# folder has lib/libnccl.so.2 but no unversioned name for the linker, with its own header or the
# one --prepare carried. A shim folder gives CMake both names; without any, NCCL stays off and
# the NCCL tests say why they are not there.
find_nccl() {
  local cuda_home=${CUDA_HOME:-/usr/local/cuda}
  if [[ -e $cuda_home/include/nccl.h ]] && compgen -G "$cuda_home/lib*/libnccl.so*" >/dev/null; then
    echo "   NCCL: $cuda_home"
    return 0
  fi
  local pkg="" hdr=""
  pkg=$(python3 -c 'import nvidia.nccl as m, os; print(list(m.__path__)[0])' 2>/dev/null || true)
  [[ -n $pkg && -e $pkg/lib/libnccl.so.2 ]] || pkg=""
  if [[ -z $pkg ]]; then
    echo "   NCCL: none found (no $cuda_home/include/nccl.h, no nvidia-nccl Python package): NcclCommunicator off"
    return 0
  fi
  if [[ -e $pkg/include/nccl.h ]]; then
    hdr=$pkg/include/nccl.h
  elif [[ -n $deps && -e $deps/nccl/include/nccl.h ]]; then
    hdr=$deps/nccl/include/nccl.h
  fi
  if [[ -z $hdr ]]; then
    echo "   NCCL: $pkg has the library but no nccl.h (run --prepare here to carry one): NcclCommunicator off"
    return 0
  fi
  local shim=$build/_deps/nccl
  if ((!dry)); then
    mkdir -p "$shim/include" "$shim/lib"
    ln -sf "$hdr" "$shim/include/nccl.h"
    ln -sf "$pkg/lib/libnccl.so.2" "$shim/lib/libnccl.so.2"
    ln -sf "$pkg/lib/libnccl.so.2" "$shim/lib/libnccl.so"
  fi
  cmake_dep_args+=("-DNCCL_INCLUDE_DIR=$shim/include" "-DNCCL_LIBRARY=$shim/lib/libnccl.so")
  export LD_LIBRARY_PATH=$shim/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  echo "   NCCL: $pkg/lib/libnccl.so.2 with $hdr"
}

p_configure() {
  if [[ -z $arch ]]; then
    if [[ -n $gpu_cc ]]; then arch=${gpu_cc//./}; else arch=90; fi
  fi
  local -a gen=()
  if [[ ! -f $build/CMakeCache.txt ]] && command -v ninja >/dev/null; then gen=(-G Ninja); fi
  run "$logs/configure.log" cmake -S "$root" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DRINGATTN_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" -DRINGATTN_WITH_MPI="$mpi" \
    -DRINGATTN_BUILD_DOCS=OFF -DRINGATTN_BUILD_FUZZ=OFF -DRINGATTN_WERROR="$werror" \
    "${cmake_dep_args[@]}" || return 1
  note[configure]="sm_$arch"
  ((dry)) || grep -E "ringattn: |CUDA compiler|Found CUDAToolkit" "$logs/configure.log" | sed 's/^/   /' || true
}

p_build() {
  ok configure || { note[build]="configure failed"; return 3; }
  if [[ -z $arch ]]; then
    arch=$(sed -n 's/^CMAKE_CUDA_ARCHITECTURES:[A-Z]*=//p' "$build/CMakeCache.txt" 2>/dev/null || true)
    arch=${arch:-90}
  fi
  local -a which=()
  # shellcheck disable=SC2206  # the comma-separated list becomes words
  [[ -n $targets ]] && which=(--target ${targets//,/ })
  run "$logs/build.log" cmake --build "$build" -j "$jobs" "${which[@]}" || return 1
  local -a cuda_bench=()
  local t
  for t in bench_attention_cuda bench_ring_cuda; do
    if [[ -z $targets ]] || in_list "$t" "$targets"; then cuda_bench+=("$t"); fi
  done
  if ((!have_benchmark)) && ((${#cuda_bench[@]})); then  # bench/ is out of the main build: the CUDA benchmarks on their own
    local -a gen=()
    [[ ! -f $build/bench-cuda/CMakeCache.txt ]] && command -v ninja >/dev/null && gen=(-G Ninja)
    run "$logs/build.log" cmake -S "$root/bench/cuda" -B "$build/bench-cuda" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_CUDA_ARCHITECTURES="$arch" -DRINGATTN_WITH_MPI=OFF -DRINGATTN_WERROR="$werror" \
      "${cmake_dep_args[@]}" || return 1
    run "$logs/build.log" cmake --build "$build/bench-cuda" -j "$jobs" --target "${cuda_bench[@]}" || return 1
  fi
  ((dry)) || echo "   $(grep -c -i 'warning' "$logs/build.log" || true) lines with 'warning' in build.log"
}

# Counts pass/fail/skip in JUnit (CTest) or GoogleTest XML files: prints "P F S".
count_xml() {
  python3 - "$@" <<'EOF'
import sys, xml.etree.ElementTree as ET
p = f = s = 0
for path in sys.argv[1:]:
    try:
        root = ET.parse(path).getroot()
    except Exception:
        continue
    for tc in root.iter("testcase"):
        tags = {c.tag for c in tc}
        if "failure" in tags or "error" in tags or tc.get("status") == "fail":
            f += 1
        elif "skipped" in tags or tc.get("result") in ("skipped", "suppressed") or tc.get("status") in ("notrun", "disabled"):
            s += 1
        else:
            p += 1
print(p, f, s)
EOF
}
find_bin() { find "$build" -path "$build/_deps" -prune -o -type f -name "$1" -perm -u+x -print -quit 2>/dev/null; }

p_test_gpu() {
  ok build || { note[test-gpu]="build failed"; return 3; }
  local rc=0 xml=$logs/ctest-gpu.xml
  run "$logs/test-gpu.log" ctest --test-dir "$build" -L gpu --no-tests=error --output-on-failure \
    --timeout 300 -j "${RINGATTN_GPU_TEST_JOBS:-4}" --output-junit "$xml" || rc=$?
  ((dry)) && return 0
  local c; c=$(count_xml "$xml")
  read -r tp tf ts <<<"$c"
  note[test-gpu]="$tp passed, $tf failed, $ts skipped"
  grep -E "tests passed|tests failed" "$logs/test-gpu.log" | tail -1 | sed 's/^/   /' || true
  [[ $rc -eq 0 && ${tf:-1} -eq 0 && ${tp:-0} -gt 0 ]] || return 1
}

p_test_host() {
  ok build || { note[test-host]="build failed"; return 3; }
  local rc=0
  if ((full_ctest)); then
    run "$logs/test-host.log" ctest --test-dir "$build" -LE gpu --no-tests=error --output-on-failure \
      --timeout 300 -j "$jobs" --output-junit "$logs/ctest-host.xml" || rc=$?
    ((dry)) && return 0
    read -r tp tf ts <<<"$(count_xml "$logs/ctest-host.xml")"
  else
    local bin; bin=$(find_bin cuda_host_test)
    if ((dry)); then bin=${bin:-$build/bin/cuda_host_test}; fi
    if [[ -z $bin ]]; then note[test-host]="no cuda_host_test in the build"; return 1; fi
    run "$logs/test-host.log" "$bin" --gtest_output="xml:$logs/cuda_host_test.xml" || rc=$?
    ((dry)) && return 0
    read -r tp tf ts <<<"$(count_xml "$logs/cuda_host_test.xml")"
  fi
  note[test-host]="$tp passed, $tf failed, $ts skipped"
  [[ $rc -eq 0 && ${tf:-1} -eq 0 && ${tp:-0} -gt 0 ]] || return 1
}

# The sanitizers run a few small cases: memcheck is 10-100x slower than the plain run.
p_sanitize() {
  ok build || { note[sanitize]="build failed"; return 3; }
  command -v compute-sanitizer >/dev/null || ((dry)) || { note[sanitize]="no compute-sanitizer"; return 1; }
  local bin; bin=$(find_bin cuda_kernel_test)
  if ((dry)); then bin=${bin:-$build/bin/cuda_kernel_test}; fi
  [[ -n $bin ]] || { note[sanitize]="no cuda_kernel_test in the build"; return 1; }
  local filter=$san_filter
  if [[ -z $filter ]] && ((!dry)); then
    # Up to 3 cases whose names say they are small, else the first 2 that don't say large.
    filter=$("$bin" --gtest_list_tests 2>/dev/null | python3 -c '
import re, sys
names, suite = [], ""
for line in sys.stdin:  # "Suite.  # TypeParam = ..." then "  Test  # GetParam() = ..." lines
    text = line.split("#")[0].rstrip()
    if not text.strip():
        continue
    if not line.startswith(" "):
        suite = text if text.endswith(".") else ""
    elif suite:
        names.append(suite + text.strip())
small = [n for n in names if re.search(r"small|tiny|basic|minimal", n, re.I)]
rest = [n for n in names if not re.search(r"large|long|big|huge|stress|32k|16k|perf", n, re.I)]
print(":".join((small or rest or names)[: 3 if small else 2]))
' || true)
  fi
  [[ -n $filter ]] || ((dry)) || { note[sanitize]="no test case found in cuda_kernel_test"; return 1; }
  echo "   filter: ${filter:-<auto>}"
  local tool fails=0 res=()
  for tool in memcheck racecheck; do
    local log=$logs/sanitize-$tool.log rc=0
    cap=${RINGATTN_SANITIZE_CAP:-150} run "$log" compute-sanitizer --tool "$tool" --error-exitcode 99 \
      --print-limit 20 "$bin" --gtest_filter="$filter" || rc=$?
    ((dry)) && continue
    local ran; ran=$(sed -n 's/.*\[==========\] \([0-9]*\) tests\{0,1\} from .* ran.*/\1/p' "$log" | tail -1)
    local summary; summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | tail -1 | sed 's/^=* *//')
    if ((rc == 0)) && [[ ${ran:-0} -gt 0 ]]; then
      res+=("$tool clean (${ran} tests)")
    else
      fails=$((fails + 1))
      if [[ ${ran:-0} -eq 0 && $rc -eq 0 ]]; then res+=("$tool ran no test"); else res+=("$tool NOT clean (exit $rc${summary:+, $summary})"); fi
    fi
  done
  # The ring: one small virtual-rank case under memcheck (every region the plan computes lands
  # inside its buffer; the copies between ranks stay in bounds).
  local ring_bin; ring_bin=$(find_bin cuda_ring_test)
  if ((dry)); then ring_bin=${ring_bin:-$build/bin/cuda_ring_test}; fi
  if [[ -n $ring_bin ]]; then
    local log=$logs/sanitize-ring.log rc=0 ring_filter=${RINGATTN_RING_SANITIZE_FILTER:-Rings/CudaRing.VirtualRanksMatchTheReference/zigzag_N3_causal_bf16}
    cap=${RINGATTN_SANITIZE_CAP:-150} run "$log" compute-sanitizer --tool memcheck --error-exitcode 99 \
      --print-limit 20 "$ring_bin" --gtest_filter="$ring_filter" || rc=$?
    if ((!dry)); then
      local ran; ran=$(sed -n 's/.*\[==========\] \([0-9]*\) tests\{0,1\} from .* ran.*/\1/p' "$log" | tail -1)
      if ((rc == 0)) && [[ ${ran:-0} -gt 0 ]] && ! grep -q "SKIPPED \]" "$log"; then
        res+=("ring memcheck clean (${ran} tests)")
      else
        fails=$((fails + 1))
        res+=("ring memcheck NOT clean or skipped (exit $rc)")
      fi
    fi
  fi
  note[sanitize]=$(IFS=';'; echo "${res[*]}")
  note[sanitize]=${note[sanitize]//;/; }
  ((fails == 0))
}

p_bench() {
  ok build || { note[bench]="build failed"; return 3; }
  local bin; bin=$(find_bin bench_attention_cuda)
  if ((dry)); then bin=${bin:-$build/bin/bench_attention_cuda}; fi
  [[ -n $bin ]] || { note[bench]="bench_attention_cuda was not built (no ringattn::cuda target?)"; return 1; }
  local -a extra=()
  ((quick)) && extra+=(--quick)
  # shellcheck disable=SC2206  # word splitting of --bench-args is intended
  [[ -n $bench_extra ]] && extra+=($bench_extra)
  local rc=0
  run_tee "$logs/bench.log" "$bin" --json "$out/ringattn_bench.json" --csv "$out/ringattn_bench.csv" "${extra[@]}" || rc=$?
  ((dry)) && return 0
  note[bench]=$(grep -E "^[0-9]+ rows" "$logs/bench.log" | tail -1 || true)
  note[bench]="$(tail -n 1 "$logs/bench.log")${note[bench]:+, ${note[bench]}}"
  return "$((rc != 0))"
}

p_sdpa() {
  local -a extra=()
  ((quick)) && extra+=(--quick)
  # shellcheck disable=SC2206
  [[ -n $sdpa_extra ]] && extra+=($sdpa_extra)
  local rc=0
  PYTHONUNBUFFERED=1 run_tee "$logs/sdpa.log" python3 "$root/scripts/sdpa_bench.py" --json "$out/sdpa_bench.json" "${extra[@]}" || rc=$?
  ((dry)) && return 0
  note[sdpa]="$(tail -n 1 "$logs/sdpa.log"), $(grep -cE ' n/a' "$logs/sdpa.log" || true) rows n/a"
  return "$((rc != 0))"
}

# Joins ringattn's rows with SDPA's and prints the ratios; the three judged targets go to
# targets.txt for the summary. Exit 0 = all three PASS, 2 = some MISS or n/a, 1 = no data.
p_compare() {
  if ((dry)); then echo "   + python3 (merge $out/ringattn_bench.json with $out/sdpa_bench.json -> $out/bench_compare.csv)"; return 0; fi
  if [[ ! -f $out/ringattn_bench.json && ! -f $out/sdpa_bench.json ]]; then note[compare]="no benchmark JSON"; return 3; fi
  local rc=0
  python3 - "$out/ringattn_bench.json" "$out/sdpa_bench.json" "$out/bench_compare.csv" "$logs/targets.txt" \
    2>&1 <<'EOF' | tee "$logs/compare.log" || rc=${PIPESTATUS[0]}
import csv, json, sys
ring_path, sdpa_path, csv_path, targets_path = sys.argv[1:5]

def load(path):
    try:
        with open(path) as f:
            return json.load(f).get("rows", [])
    except (OSError, ValueError):
        return []

ring, sdpa = load(ring_path), load(sdpa_path)
def key(r):
    return (r["dir"], r["head_dim"], r["seq"], bool(r["causal"]))
def ms(r):
    return r.get("ms") if r and r.get("status") == "OK" and r.get("ms") else None

tc = {key(r): r for r in ring if r.get("kernel") == "tensor-core"}
best = {}
for r in ring:  # fastest checked ringattn kernel per case
    if ms(r) and (key(r) not in best or ms(r) < ms(best[key(r)])):
        best[key(r)] = r
by_backend = {}
for r in sdpa:
    by_backend.setdefault(r.get("backend"), {})[key(r)] = r
flash, cudnn = by_backend.get("flash", {}), by_backend.get("cudnn", {})

def ratio(a, b):  # speed ratio = time(b) / time(a), > 1: a is faster
    return ms(b) / ms(a) if ms(a) and ms(b) else None
def f(x, fmt="{:.2f}x"):
    return fmt.format(x) if x is not None else "n/a"
def tf(r):
    return f"{r['tflops']:.0f}" if ms(r) and r.get("tflops") else "n/a"

keys = sorted(set(tc) | set(best) | set(flash) | set(cudnn), key=lambda k: (k[0] != "fwd", k[1], k[3], k[2]))
rows = []
print("TFLOP/s of ringattn's tensor-core kernel (TC), its fastest checked kernel (best), SDPA flash and cuDNN;")
print("TC/x = speed ratio (time of x / time of TC); causal/full = TC's causal time over its non-causal time")
print(f"{'dir':4} {'D':>4} {'S':>6} {'causal':6} {'TC':>6} {'best':>18} {'flash':>6} {'cuDNN':>6} {'TC/flash':>9} {'TC/cuDNN':>9} {'causal/full':>12}")
for k in keys:
    r, fl, cu = tc.get(k), flash.get(k), cudnn.get(k)
    cf = None
    if k[3]:
        full = tc.get((k[0], k[1], k[2], False))
        if ms(r) and ms(full):
            cf = ms(r) / ms(full)
    rows.append({"dir": k[0], "head_dim": k[1], "seq": k[2], "causal": int(k[3]),
                 "tc_ms": ms(r), "tc_tflops": r.get("tflops") if ms(r) else None,
                 "flash_ms": ms(fl), "flash_tflops": fl.get("tflops") if ms(fl) else None,
                 "cudnn_ms": ms(cu), "cudnn_tflops": cu.get("tflops") if ms(cu) else None,
                 "tc_vs_flash": ratio(r, fl), "tc_vs_cudnn": ratio(r, cu), "causal_over_full_time": cf,
                 "best_ringattn_kernel": best[k]["kernel"] if k in best else None})
    b = best.get(k)
    bs = f"{b['kernel']} {tf(b)}" if b else "n/a"
    print(f"{k[0]:4} {k[1]:>4} {k[2]:>6} {'yes' if k[3] else 'no':6} {tf(r):>6} {bs:>18} {tf(fl):>6} {tf(cu):>6} "
          f"{f(ratio(r, fl)):>9} {f(ratio(r, cu)):>9} {f(cf):>12}")
if rows:
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

# The judged targets: bf16, D = 128, S = 8k.
fwd, bwd = ("fwd", 128, 8192, False), ("bwd", 128, 8192, False)
t1 = ratio(tc.get(fwd), flash.get(fwd))
t2 = ratio(tc.get(bwd), flash.get(bwd))
t3 = None
c, n = tc.get(("fwd", 128, 8192, True)), tc.get(fwd)
if ms(c) and ms(n):
    t3 = ms(c) / ms(n)
targets = [
    ("fwd D=128 S=8k: tensor-core vs flash", t1, ">= 1.00x", t1 is not None and t1 >= 1.0),
    ("bwd D=128 S=8k: tensor-core vs flash", t2, ">= 0.80x", t2 is not None and t2 >= 0.8),
    ("fwd D=128 S=8k: causal / non-causal time", t3, "<= 0.60x", t3 is not None and t3 <= 0.6),
]
with open(targets_path, "w") as fh:
    for name, val, goal, passed in targets:
        fh.write(f"{name:42} {f(val):>8}  {goal:9} {'PASS' if passed else 'MISS'}\n")
if not rows:
    sys.exit(1)
sys.exit(0 if all(t[3] for t in targets) else 2)
EOF
  case $rc in
    0) note[compare]="3 targets PASS" ;;
    2) note[compare]="targets missed (see below)"; ((strict_perf)) && return 1; return 0 ;;
    *) note[compare]="no rows to compare"; return 1 ;;
  esac
}

# The CUDA ring on one GPU: bench_ring_cuda's rows on the console, its JSON in $out, its Chrome
# trace in the logs; the lines it starts with "key: " (overhead at N = 4, overlap, layout
# imbalance, longest sequence, the target's PASS/MISS) go under the summary table.
p_ring() {
  ok build || { note[ring]="build failed"; return 3; }
  local bin; bin=$(find_bin bench_ring_cuda)
  if ((dry)); then bin=${bin:-$build/bin/bench_ring_cuda}; fi
  [[ -n $bin ]] || { note[ring]="bench_ring_cuda was not built (no ringattn::cuda target?)"; return 1; }
  # A run cut after a few rows says little: with under a minute left it is not started.
  if ((!dry && $(left) - reserve < 60)); then
    note[ring]="not run: $(left) s left of --time-limit; alone: --only build,ring --targets bench_ring_cuda"
    return 3
  fi
  local -a extra=()
  ((quick)) && extra+=(--quick)
  ((strict_perf)) && extra+=(--strict-perf)
  # shellcheck disable=SC2206  # word splitting of --ring-args is intended
  [[ -n $ring_extra ]] && extra+=($ring_extra)
  local rc=0 limit=${ring_cap:-${RINGATTN_RING_CAP:-$((quick ? 150 : 300))}}
  cap=$limit run_tee "$logs/ring.log" "$bin" --json "$out/ring_bench.json" --trace "$logs/ring_trace.json" "${extra[@]}" || rc=$?
  ((dry)) && return 0
  grep '^key: ' "$logs/ring.log" | sed 's/^key: //' >"$logs/ring-keys.txt" || true
  note[ring]=$(grep -E "^[0-9]+ rows" "$logs/ring.log" | tail -1 || true)
  note[ring]="$(tail -n 1 "$logs/ring.log")${note[ring]:+, ${note[ring]}}"
  ((rc == 124 || rc == 137)) && note[ring]="TIMEOUT after ${limit} s (rows so far in ring_bench.json)"
  return "$((rc != 0))"
}

summary() {
  local f=$out/summary.txt
  ((dry)) && f=/dev/null
  {
    echo
    echo "==================== gpu-check summary ===================="
    echo "GPU: ${gpu_name:-?} (cc ${gpu_cc:-?}, sm_${arch:-?}); torch ${torch_ver:-?}; $((SECONDS - START)) s in all"
    printf '%-10s %-5s %5s  %s\n' phase state time details
    local p failed=0
    for p in "${phase_names[@]}"; do
      printf '%-10s %-5s %4ss  %s\n' "$p" "${status[$p]:-SKIP}" "${took[$p]:-0}" "${note[$p]:-}"
      [[ ${status[$p]:-} == FAIL ]] && failed=$((failed + 1))
    done
    if [[ -f $logs/targets.txt ]]; then
      echo "judged targets (bf16, ratio = speed of ringattn over flash; causal: time ratio):"
      sed 's/^/  /' "$logs/targets.txt"
    fi
    if [[ -s $logs/ring-keys.txt ]]; then
      echo "ring (bench_ring_cuda: virtual ranks on this one GPU; overhead = ring time / single-kernel time):"
      sed 's/^/  /' "$logs/ring-keys.txt"
    fi
    if ((failed)); then
      echo "RESULT: FAILED ($failed phase(s) failed; logs in $out/logs.tar.gz)"
    else
      echo "RESULT: OK"
    fi
  } | tee "$f"
}

# Results of an earlier run in a kept --out folder must not pass for this run's.
if ((!dry)); then
  wanted bench && rm -f "$out/ringattn_bench.json" "$out/ringattn_bench.csv"
  wanted sdpa && rm -f "$out/sdpa_bench.json"
  wanted ring && rm -f "$out/ring_bench.json" "$logs/ring_trace.json"
fi
phase env p_env
phase deps p_deps
phase configure p_configure
phase build p_build
phase test-gpu p_test_gpu
phase test-host p_test_host
phase sanitize p_sanitize
phase bench p_bench
phase sdpa p_sdpa
phase compare p_compare
phase ring p_ring
pack_logs
summary
for p in "${phase_names[@]}"; do
  [[ ${status[$p]:-} == FAIL ]] && finish 1
done
finish 0
