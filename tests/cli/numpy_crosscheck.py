#!/usr/bin/env python3
"""Cross-checks the ringattn command line against an independent NumPy float64 implementation.

NumPy writes the inputs (so the .npy files are NumPy's own), computes O, LSE, dQ, dK and dV with
the textbook formulas (nothing shared with the C++ code), and every --impl / --layout / --ranks
combination of `ringattn attention` (and `ringattn decode`) must agree to 1e-10 max abs, on
fresh random inputs: GQA, odd and even lengths, S_q != S_kv, causal and not, large logits.

usage: numpy_crosscheck.py RINGATTN_EXECUTABLE [--seed N] [--mpirun MPIRUN]
With --mpirun, `--impl mpi-ring` also runs under `MPIRUN -np 2|3|4` for every layout.
Prints one line per case and a final "N passed, N failed" line; exits 1 on any failure.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

TOL = 1e-10


def attention(q, k, v, causal, scale=None):
    """O (B,Sq,Hq,D), LSE (B,Hq,Sq) and the probabilities P (B,Hq,Sq,Skv), float64."""
    b, sq, hq, d = q.shape
    skv, hkv = k.shape[1], k.shape[2]
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    kk = np.repeat(k, hq // hkv, axis=2)  # GQA: query head h reads kv head h // (Hq/Hkv)
    vv = np.repeat(v, hq // hkv, axis=2)
    s = np.einsum("bihd,bjhd->bhij", q, kk) * scale
    if causal:  # query i sits at position Skv - Sq + i and sees keys j <= that position
        qpos = np.arange(sq)[:, None] + (skv - sq)
        s = np.where(np.arange(skv)[None, :] <= qpos, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    seen = np.isfinite(m)
    p = np.where(seen, np.exp(s - np.where(seen, m, 0.0)), 0.0)
    l = p.sum(axis=-1, keepdims=True)
    p = np.where(seen, p / np.where(seen, l, 1.0), 0.0)
    lse = np.where(seen[..., 0], (m + np.log(np.where(seen, l, 1.0)))[..., 0], -np.inf)
    o = np.einsum("bhij,bjhd->bihd", p, vv)
    return o, lse, p, kk, vv, scale


def attention_backward(q, k, v, dout, causal):
    o, lse, p, kk, vv, scale = attention(q, k, v, causal)
    dp = np.einsum("bihd,bjhd->bhij", dout, vv)
    dsum = (p * dp).sum(axis=-1, keepdims=True)
    ds = p * (dp - dsum)
    dq = np.einsum("bhij,bjhd->bihd", ds, kk) * scale
    dk_full = np.einsum("bhij,bihd->bjhd", ds, q) * scale
    dv_full = np.einsum("bhij,bihd->bjhd", p, dout)
    hkv, g = k.shape[2], q.shape[2] // k.shape[2]
    dk = dk_full.reshape(*dk_full.shape[:2], hkv, g, -1).sum(axis=3)
    dv = dv_full.reshape(*dv_full.shape[:2], hkv, g, -1).sum(axis=3)
    return o, lse, dq, dk, dv


def max_err(got, want):
    if got.shape != want.shape:
        return float("inf")
    both_inf = np.isinf(got) & np.isinf(want) & (got == want)
    with np.errstate(invalid="ignore"):  # -inf - -inf is masked out by both_inf
        diff = np.where(both_inf, 0.0, np.abs(got - want))
    return float(np.nan_to_num(diff, nan=np.inf).max()) if diff.size else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("exe")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--mpirun", default=None, help="mpirun executable: also check --impl mpi-ring")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    rng = np.random.default_rng(seed)
    print(f"numpy cross-check, seed {seed}")
    passed = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        f = lambda name: os.path.join(tmp, name)

        def run(cmd, mpi_ranks=0):
            prefix = [args.mpirun, "--oversubscribe", "-np", str(mpi_ranks)] if mpi_ranks else []
            env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
            r = subprocess.run(prefix + [args.exe] + cmd, capture_output=True, text=True, env=env, timeout=300)
            return r.returncode, r.stderr.strip().replace("\n", " | ")

        def report(name, errs):
            nonlocal passed, failed
            worst = max(errs.values())
            ok = worst <= TOL
            passed += ok
            failed += not ok
            detail = " ".join(f"{k}={v:.1e}" for k, v in errs.items())
            print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")

        # (B, Sq, Skv, Hq, Hkv, D, logit multiplier)
        shapes = [(2, 37, 37, 4, 2, 16, 1.0), (1, 64, 64, 8, 1, 32, 1.0), (1, 40, 40, 2, 2, 8, 100.0),
                  (1, 29, 45, 6, 3, 8, 1.0), (2, 45, 29, 4, 4, 16, 1.0)]
        for (b, sq, skv, hq, hkv, d, mul) in shapes:
            q = rng.standard_normal((b, sq, hq, d)) * mul
            k = rng.standard_normal((b, skv, hkv, d))
            v = rng.standard_normal((b, skv, hkv, d))
            dout = rng.standard_normal((b, sq, hq, d))
            for n, a in dict(q=q, k=k, v=v, do=dout).items():
                np.save(f(n + ".npy"), a)
            for causal in (False, True):
                want = attention_backward(q, k, v, dout, causal)
                combos = [("naive", None, None), ("blockwise", None, None)]
                if sq == skv:
                    for layout in ("contiguous", "striped", "zigzag"):
                        for ranks in range(1, 9):
                            if sq >= (2 * ranks if layout == "zigzag" else ranks):
                                combos.append(("ring", layout, ranks))
                                if args.mpirun and ranks in (2, 3, 4):
                                    combos.append(("mpi-ring", layout, ranks))
                for impl, layout, ranks in combos:
                    cmd = ["attention", "--q", f("q.npy"), "--k", f("k.npy"), "--v", f("v.npy"),
                           "--out", f("o.npy"), "--lse", f("lse.npy"), "--dout", f("do.npy"),
                           "--dq", f("dq.npy"), "--dk", f("dk.npy"), "--dv", f("dv.npy"), "--impl", impl]
                    if causal:
                        cmd.append("--causal")
                    if impl == "ring":
                        cmd += ["--layout", layout, "--ranks", str(ranks)]
                    elif impl == "mpi-ring":
                        cmd += ["--layout", layout, "--timeout", "120"]
                    name = f"B{b} Sq{sq} Skv{skv} H{hq}/{hkv} D{d} x{mul:g} {'causal' if causal else 'full'} {impl}"
                    name += f" {layout} x{ranks}" if layout else ""
                    rc, err = run(cmd, ranks if impl == "mpi-ring" else 0)
                    if rc != 0:
                        report(name + f" (exit {rc}: {err})", {"run": float("inf")})
                        continue
                    got = [np.load(f(x + ".npy")) for x in ("o", "lse", "dq", "dk", "dv")]
                    report(name, {n: max_err(g, w) for n, g, w in zip(("O", "LSE", "dQ", "dK", "dV"), got, want)})
                for splits in (1, 3, 7, 64):
                    cmd = ["decode", "--q", f("q.npy"), "--k", f("k.npy"), "--v", f("v.npy"), "--splits",
                           str(splits), "--out", f("o.npy"), "--lse", f("lse.npy")] + (["--causal"] if causal else [])
                    name = f"B{b} Sq{sq} Skv{skv} H{hq}/{hkv} D{d} x{mul:g} {'causal' if causal else 'full'} decode splits={splits}"
                    rc, err = run(cmd)
                    if rc != 0:
                        report(name + f" (exit {rc}: {err})", {"run": float("inf")})
                        continue
                    report(name, {"O": max_err(np.load(f("o.npy")), want[0]),
                                  "LSE": max_err(np.load(f("lse.npy")), want[1])})
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
