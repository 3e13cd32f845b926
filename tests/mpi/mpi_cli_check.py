#!/usr/bin/env python3
"""The command line's ring over MPI against its in-process ring (and against NumPy).

  mpi_cli_check.py make DIR B SQ SKV HQ HKV D DTYPE SEED
      Writes DIR/{q,k,v,do}.npy with random normal values (DTYPE float32 | float64). Needs only
      the standard library, so the error and fault tests run without NumPy.

  mpi_cli_check.py compare RINGATTN MPIRUN NPFLAG [--seed N]
      For 2, 3 and 4 ranks and every layout (GQA, uneven shards, causal and not), then S_q != S_kv
      both ways and float32 (each layout and rank count once): writes the inputs with NumPy, runs
          RINGATTN attention --impl ring --ranks N --layout L ...          (one process)
          MPIRUN NPFLAG N RINGATTN attention --impl mpi-ring --layout L ... (N processes)
      forward and backward, and requires every output of the MPI run to match the in-process
      ring's to 1e-12 max abs (float64; 1e-5 relative for float32) and a textbook NumPy float64
      implementation to 1e-10 (float64; 1e-4 for float32). Prints one line per case and a final
      "N passed, M failed" line; exits 1 on any failure, 77 (and a "SKIPPED:" line) without NumPy.
"""
import os
import random
import struct
import subprocess
import sys
import tempfile
import time


def write_npy(path, shape, values, dtype):
    """A version 1.0 .npy file, C order, little-endian, as numpy.save writes it."""
    descr = {"float32": "<f4", "float64": "<f8"}[dtype]
    shape_txt = "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shape_txt)
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + " " * (pad % 64) + "\n"
    fmt = "<%d%s" % (len(values), "f" if dtype == "float32" else "d")
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1"))
        f.write(struct.pack(fmt, *values))


def make(argv):
    folder, b, sq, skv, hq, hkv, d, dtype, seed = argv
    b, sq, skv, hq, hkv, d, seed = map(int, (b, sq, skv, hq, hkv, d, seed))
    rng = random.Random(seed)
    shapes = {"q": (b, sq, hq, d), "k": (b, skv, hkv, d), "v": (b, skv, hkv, d), "do": (b, sq, hq, d)}
    for name, shape in shapes.items():
        n = 1
        for s in shape:
            n *= s
        write_npy(os.path.join(folder, name + ".npy"), shape, [rng.gauss(0.0, 1.0) for _ in range(n)], dtype)
    return 0


def compare(argv):
    try:
        import numpy as np
    except ImportError:
        print("SKIPPED: no numpy for this python (apt-get install python3-numpy)")
        return 77

    # Parsed by hand: NPFLAG ("-n", "-np") looks like an option to argparse.
    if len(argv) not in (3, 5) or (len(argv) == 5 and argv[3] != "--seed"):
        print("usage: mpi_cli_check.py compare RINGATTN MPIRUN NPFLAG [--seed N]", file=sys.stderr)
        return 2

    class Args:
        exe, mpirun, npflag = argv[:3]
        seed = int(argv[4]) if len(argv) == 5 else None

    args = Args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    rng = np.random.default_rng(seed)
    print(f"mpi-ring command line vs in-process ring and NumPy, seed {seed}")

    def attention_backward(q, k, v, dout, causal):
        """O, LSE, dQ, dK, dV in float64 with the textbook formulas (GQA, end-aligned causal)."""
        b, sq, hq, d = q.shape
        skv, hkv = k.shape[1], k.shape[2]
        scale = 1.0 / np.sqrt(d)
        kk = np.repeat(k, hq // hkv, axis=2)
        vv = np.repeat(v, hq // hkv, axis=2)
        s = np.einsum("bihd,bjhd->bhij", q, kk) * scale
        if causal:
            qpos = np.arange(sq)[:, None] + (skv - sq)
            s = np.where(np.arange(skv)[None, :] <= qpos, s, -np.inf)
        m = s.max(axis=-1, keepdims=True)
        seen = np.isfinite(m)
        p = np.where(seen, np.exp(s - np.where(seen, m, 0.0)), 0.0)
        l = p.sum(axis=-1, keepdims=True)
        p = np.where(seen, p / np.where(seen, l, 1.0), 0.0)
        lse = np.where(seen[..., 0], (m + np.log(np.where(seen, l, 1.0)))[..., 0], -np.inf)
        o = np.einsum("bhij,bjhd->bihd", p, vv)
        dp = np.einsum("bihd,bjhd->bhij", dout, vv)
        ds = p * (dp - (p * dp).sum(axis=-1, keepdims=True))
        dq = np.einsum("bhij,bjhd->bihd", ds, kk) * scale
        dk = np.einsum("bhij,bihd->bjhd", ds, q).reshape(b, skv, hkv, hq // hkv, d).sum(axis=3) * scale
        dv = np.einsum("bhij,bihd->bjhd", p, dout).reshape(b, skv, hkv, hq // hkv, d).sum(axis=3)
        return o, lse, dq, dk, dv

    def max_err(got, want):
        if got.shape != want.shape:
            return float("inf")
        got = got.astype(np.float64)
        want = want.astype(np.float64)
        both_inf = np.isinf(got) & np.isinf(want) & (got == want)
        with np.errstate(invalid="ignore"):
            diff = np.where(both_inf, 0.0, np.abs(got - want))
        return float(np.nan_to_num(diff, nan=np.inf).max()) if diff.size else 0.0

    outputs = ("o", "lse", "dq", "dk", "dv")
    passed = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        f = lambda name: os.path.join(tmp, name)

        def args_for(prefix, layout, causal):
            cmd = ["attention", "--q", f("q.npy"), "--k", f("k.npy"), "--v", f("v.npy"),
                   "--dout", f("do.npy"), "--layout", layout, "--block-q", "5", "--block-kv", "7"]
            for x in outputs:
                cmd += ["--" + ("out" if x == "o" else x), f(prefix + x + ".npy")]
            return cmd + (["--causal"] if causal else [])

        def run(cmd, timeout=120):
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                return 124, f"timed out after {timeout} s", timeout
            return r.returncode, (r.stderr + r.stdout).strip().replace("\n", " | "), 0

        def report(name, ok, detail):
            nonlocal passed, failed
            passed += ok
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)

        every = [(n, lay) for n in (2, 3, 4) for lay in ("contiguous", "striped", "zigzag")]
        # Each layout once, each rank count once: keeps the sanitizer build's run short.
        some = [(2, "zigzag"), (3, "contiguous"), (4, "striped")]
        # (B, Sq, Skv, Hq, Hkv, D, dtype, causal values, (ranks, layout) pairs)
        shapes = [(1, 37, 37, 4, 2, 8, "float64", (False, True), every),  # GQA, uneven shards
                  (2, 24, 40, 6, 3, 8, "float64", (True,), some),         # S_q < S_kv, end-aligned
                  (1, 21, 13, 4, 1, 8, "float64", (True,), some),         # S_q > S_kv: rows see no key
                  (1, 30, 30, 4, 2, 16, "float32", (True,), some)]        # float32 end to end
        for (b, sq, skv, hq, hkv, d, dtype, causals, pairs) in shapes:
            npt = np.float32 if dtype == "float32" else np.float64
            q = rng.standard_normal((b, sq, hq, d)).astype(npt)
            k = rng.standard_normal((b, skv, hkv, d)).astype(npt)
            v = rng.standard_normal((b, skv, hkv, d)).astype(npt)
            dout = rng.standard_normal((b, sq, hq, d)).astype(npt)
            for n, a in dict(q=q, k=k, v=v, do=dout).items():
                np.save(f(n + ".npy"), a)
            tol_ring = 1e-12 if dtype == "float64" else 1e-5
            tol_np = 1e-10 if dtype == "float64" else 1e-4
            for causal in causals:
                want = attention_backward(*(x.astype(np.float64) for x in (q, k, v, dout)), causal)
                for ranks, layout in pairs:
                    name = (f"np{ranks} {layout} B{b} Sq{sq} Skv{skv} H{hq}/{hkv} D{d} {dtype} "
                            f"{'causal' if causal else 'full'}")
                    if min(sq, skv) < (2 * ranks if layout == "zigzag" else ranks):
                        continue
                    for x in outputs:
                        for p in ("r_", "m_"):
                            if os.path.exists(f(p + x + ".npy")):
                                os.remove(f(p + x + ".npy"))
                    rc, err, _ = run([args.exe] + args_for("r_", layout, causal) +
                                     ["--impl", "ring", "--ranks", str(ranks)])
                    if rc != 0:
                        report(name, False, f"in-process ring exited {rc}: {err}")
                        continue
                    t0 = time.monotonic()
                    rc, err, _ = run([args.mpirun, args.npflag, str(ranks), args.exe] +
                                     args_for("m_", layout, causal) +
                                     ["--impl", "mpi-ring", "--timeout", "60"])
                    secs = time.monotonic() - t0
                    if rc != 0:
                        report(name, False, f"mpirun exited {rc} after {secs:.1f} s: {err}")
                        continue
                    errs, ok = [], True
                    for x, w in zip(outputs, want):
                        path = f("m_" + x + ".npy")
                        if not os.path.exists(path):
                            errs.append(f"{x}: missing")
                            ok = False
                            continue
                        got = np.load(path)
                        ref = np.load(f("r_" + x + ".npy"))
                        if got.dtype != q.dtype:
                            errs.append(f"{x}: dtype {got.dtype}, expected {q.dtype}")
                            ok = False
                            continue
                        e_ring = max_err(got, ref)
                        e_np = max_err(got, w)
                        # float32: relative to the size of the values
                        scale = 1.0 if dtype == "float64" else max(1.0, float(np.abs(w[np.isfinite(w)]).max(initial=0)))
                        ok = ok and e_ring <= tol_ring * scale and e_np <= tol_np * scale
                        errs.append(f"{x} {e_ring:.1e}/{e_np:.1e}")
                    report(name, ok, f"max|mpi-ring - ring| / max|mpi-ring - numpy|: {' '.join(errs)} "
                                     f"({secs:.1f} s)")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or passed == 0 else 0


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("make", "compare"):
        print(__doc__, file=sys.stderr)
        return 2
    return make(sys.argv[2:]) if sys.argv[1] == "make" else compare(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
