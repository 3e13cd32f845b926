#!/usr/bin/env bash
# `ringattn attention --impl mpi-ring` under mpirun, driven as a user would drive it.
#
# usage: mpi_cli_test.sh PART RINGATTN MPIRUN NPFLAG PYTHON CHECK_PY
#   PART is one of
#     compare     for 2, 3, 4 ranks, every layout, causal and not, GQA, forward + backward: the
#                 outputs equal `--impl ring --ranks N` (and NumPy); see mpi_cli_check.py
#     disagree    an MPMD launch where one rank has --causal and the other not: every rank
#                 stops within seconds, the job exits non-zero saying the ranks disagree, and no
#                 output file is written
#     bad-ranks   zigzag over 4 ranks on S = 7 (needs 8): non-zero exit, a clear message, no output
#     fault-exit  RINGATTN_FAULT=1:1:exit (rank 1 dies at the start of step 1): the job ends
#                 non-zero long before the outer 60 s limit, with no output
#     fault-stop  RINGATTN_FAULT=1:1:stop (rank 1 stops itself with SIGSTOP): the others give up
#                 after --timeout 5 naming the peer, the command line aborts the job, no output
# The environment (OMPI_ALLOW_RUN_AS_ROOT, oversubscription, ...) comes from CTest
# (tests/mpi/CMakeLists.txt). Every mpirun is wrapped in `timeout` so this script never hangs.
# Prints one line per check and "N passed, M failed"; exits 1 on any failure.
set -uo pipefail

if [[ $# -ne 6 ]]; then
  echo "usage: $0 compare|disagree|bad-ranks|fault-exit|fault-stop RINGATTN MPIRUN NPFLAG PYTHON CHECK_PY" >&2
  exit 2
fi
part=$1 exe=$2 mpirun=$3 npflag=$4 python=$5 check=$6

if [[ $part == compare ]]; then
  "$python" "$check" compare "$exe" "$mpirun" "$npflag"
  rc=$?
  [[ $rc == 77 ]] && exit 0  # printed "SKIPPED: ..." for CTest
  exit $rc
fi

if ! "$python" -c "import struct, random" 2>/dev/null; then
  echo "SKIPPED: no python3 to write the input files ($python)"
  exit 0
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ringattn-mpi-cli.XXXXXX")
cleanup() {
  # A rank left behind (stopped, or orphaned by a killed mpirun) is one of ours only if its
  # command line names our temporary folder; end those by pid.
  local pids
  pids=$(pgrep -f -- "$tmp" || true)
  for p in $pids; do
    [[ $p != "$$" ]] && kill -KILL "$p" 2>/dev/null
  done
  rm -rf "$tmp"
}
trap cleanup EXIT

passed=0 failed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }

# Inputs: B=1, S=S_q=S_kv given, H_q=4, H_kv=2, D=8, float64.
make_inputs() {  # folder S
  mkdir -p "$1"
  "$python" "$check" make "$1" 1 "$2" "$2" 4 2 8 float64 1234 || { echo "cannot write inputs"; exit 1; }
}

# The arguments of one rank: forward and backward, outputs in folder $1.
attention_args() {  # folder
  local d=$1
  echo attention --impl mpi-ring --q "$d/q.npy" --k "$d/k.npy" --v "$d/v.npy" --dout "$d/do.npy" \
    --out "$d/o.npy" --lse "$d/lse.npy" --dq "$d/dq.npy" --dk "$d/dk.npy" --dv "$d/dv.npy"
}

no_outputs() {  # folder: none of the output files exists (and no temporary file was left)
  local d=$1 f
  for f in o lse dq dk dv; do
    [[ -e $d/$f.npy ]] && { echo "$d/$f.npy was written"; return 1; }
  done
  if compgen -G "$d/*.tmp*" >/dev/null || compgen -G "$d/.*tmp*" >/dev/null; then
    echo "a temporary file was left in $d: $(ls -A "$d")"
    return 1
  fi
  return 0
}

# Runs "$@" under `timeout 60` (then SIGKILL 10 s later), output to $log; sets rc and secs.
run_limited() {  # log cmd...
  local log=$1
  shift
  local t0=$SECONDS
  timeout -k 10 60 "$@" >"$log" 2>&1
  rc=$?
  secs=$((SECONDS - t0))
}

show() {  # log: indented, so the CTest log shows what the user would have seen
  sed 's/^/    | /' "$1" | head -40
}

case $part in
  disagree)
    d=$tmp/disagree
    make_inputs "$d" 24
    # shellcheck disable=SC2046
    run_limited "$d/log" "$mpirun" "$npflag" 1 "$exe" $(attention_args "$d") --causal --timeout 20 \
      : "$npflag" 1 "$exe" $(attention_args "$d") --timeout 20
    show "$d/log"
    if [[ $rc -ne 0 && $rc -ne 124 && $rc -ne 137 ]]; then ok "exits non-zero ($rc)"; else bad "exit status $rc"; fi
    if [[ $secs -le 15 ]]; then ok "ends in ${secs} s (well before --timeout 20)"; else bad "took ${secs} s"; fi
    if grep -q "disagree" "$d/log"; then ok "says the ranks disagree"; else bad "no 'disagree' in the output"; fi
    if grep -q "causal" "$d/log"; then ok "names the option (causal)"; else bad "does not name 'causal'"; fi
    if why=$(no_outputs "$d"); then ok "no output file"; else bad "$why"; fi

    # The same launch with both ranks agreeing succeeds (so the check above can fail for the
    # right reason only).
    d=$tmp/agree
    make_inputs "$d" 24
    # shellcheck disable=SC2046
    run_limited "$d/log" "$mpirun" "$npflag" 1 "$exe" $(attention_args "$d") --causal --timeout 20 \
      : "$npflag" 1 "$exe" $(attention_args "$d") --causal --timeout 20
    if [[ $rc -eq 0 && -s $d/o.npy && -s $d/dv.npy ]]; then
      ok "the same MPMD launch with agreeing ranks succeeds"
    else
      show "$d/log"
      bad "agreeing MPMD launch: exit $rc, outputs: $(ls "$d")"
    fi
    ;;

  bad-ranks)
    d=$tmp/badranks
    make_inputs "$d" 7
    # shellcheck disable=SC2046
    run_limited "$d/log" "$mpirun" "$npflag" 4 "$exe" $(attention_args "$d") --layout zigzag --timeout 20
    show "$d/log"
    if [[ $rc -ne 0 && $rc -ne 124 && $rc -ne 137 ]]; then ok "exits non-zero ($rc)"; else bad "exit status $rc"; fi
    if [[ $secs -le 15 ]]; then ok "ends in ${secs} s"; else bad "took ${secs} s"; fi
    if grep -q "zigzag" "$d/log" && grep -Eq "needs at least 8|at least 8" "$d/log"; then
      ok "message names the layout and the 8 tokens it needs"
    else
      bad "message does not say zigzag over 4 ranks needs at least 8 tokens"
    fi
    if why=$(no_outputs "$d"); then ok "no output file"; else bad "$why"; fi
    # The same files with 3 ranks (6 <= 7) work.
    # shellcheck disable=SC2046
    run_limited "$d/log3" "$mpirun" "$npflag" 3 "$exe" $(attention_args "$d") --layout zigzag --timeout 20
    if [[ $rc -eq 0 && -s $d/o.npy ]]; then ok "zigzag over 3 ranks on S = 7 succeeds"; else show "$d/log3"; bad "3 ranks: exit $rc"; fi
    ;;

  fault-exit | fault-stop)
    action=${part#fault-}
    # (ranks, passes): forward + backward, and forward only (the step-1 fault then hits the
    # forward's last step, and for 2 ranks the survivors reach the gather of the outputs).
    for np in 2 3; do
      for passes in both forward; do
        d=$tmp/$action-np$np-$passes
        make_inputs "$d" 24
        if [[ $passes == both ]]; then
          args=$(attention_args "$d")
        else
          args="attention --impl mpi-ring --q $d/q.npy --k $d/k.npy --v $d/v.npy --out $d/o.npy --lse $d/lse.npy"
        fi
        limit=10
        [[ $action == stop ]] && limit=5
        # shellcheck disable=SC2086
        RINGATTN_FAULT=1:1:$action run_limited "$d/log" "$mpirun" -x RINGATTN_FAULT "$npflag" "$np" \
          "$exe" $args --timeout "$limit"
        what="$action np$np $passes:"
        show "$d/log"
        if [[ $rc -eq 124 || $rc -eq 137 ]]; then
          bad "$what the job did not end (killed by the 60 s limit after ${secs} s)"
        elif [[ $rc -eq 0 ]]; then
          bad "$what exit status 0 although rank 1 $( [[ $action == exit ]] && echo died || echo stopped)"
        else
          ok "$what exits non-zero ($rc)"
        fi
        # --timeout plus startup and abort; far below the 60 s limit.
        if [[ $secs -le $((limit + 20)) ]]; then ok "$what ends in ${secs} s"; else bad "$what took ${secs} s"; fi
        if [[ $action == stop ]]; then
          if grep -Eq "rank 1|peer" "$d/log" && grep -Eiq "after $limit(\.0+)? s|timeout|timed out" "$d/log"; then
            ok "$what the message names the peer and the timeout"
          else
            bad "$what no message naming rank 1 and the $limit s timeout"
          fi
        fi
        if why=$(no_outputs "$d"); then ok "$what no output file"; else bad "$what $why"; fi
        sleep 0.2
        if pgrep -f -- "$d/" >/dev/null; then
          bad "$what ranks still running after mpirun returned: $(pgrep -af -- "$d/" | head -3)"
        else
          ok "$what no rank left running"
        fi
      done
    done
    ;;

  *)
    echo "unknown part '$part'" >&2
    exit 2
    ;;
esac

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
