#!/usr/bin/env python3
"""PyTorch SDPA on bench_attention_cuda's cases: the baseline that ringattn's kernels are judged by.

Times torch.nn.functional.scaled_dot_product_attention forward and backward with one backend
forced at a time (torch.nn.attention.sdpa_kernel): FLASH_ATTENTION (PyTorch's FlashAttention-2)
and CUDNN_ATTENTION (cuDNN's fused attention). A backend that is missing or refuses a case is
reported as "n/a" with the reason, not as a failure.

Cases and numbers are bench_attention_cuda's (bench/cuda/bench_attention_cuda.cpp):
  bf16, D = 64 (H = 32) and 128 (H = 16), S = 1k ... 32k, B = max(1, 16384 / S), causal and not;
  tensors laid out BSHD (ringattn's layout) and handed to SDPA as (B, H, S, D) views;
  FLOPs 4 * B * H * S * S * D forward, halved when causal, backward 2.5x the forward;
  CUDA-event timing, warm-up, the median of many repetitions (a zero median is re-measured with
  more repetitions and never reported as data). The backward is torch.autograd.grad of the
  forward's output (dQ, dK, dV; no accumulation into .grad).
Before timing, each backend's output and gradients are compared with the math backend in float32
at the smallest S of the run if it is <= 4096 (relative L2 error, printed; a failed check marks
the row FAILED and it is not timed).

  python3 scripts/sdpa_bench.py [--quick] [--json FILE] [--dims 64,128] [--seqs 1024,...]
                                [--backends flash,cudnn] [--dirs fwd,bwd] [--mask both|full|causal]

Needs a CUDA GPU and PyTorch >= 2.3 (torch.nn.attention). Exit status 0 unless something
crashed or a check failed; "n/a" backends do not fail the run.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
import warnings


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="D=128, S=2k and 8k, fewer repetitions")
    p.add_argument("--json", help="write every row (and the device) as JSON to this file")
    p.add_argument("--dims", default="64,128")
    p.add_argument("--seqs", default="1024,2048,4096,8192,16384,32768")
    p.add_argument("--backends", default="flash,cudnn")
    p.add_argument("--dirs", default="fwd,bwd")
    p.add_argument("--mask", default="both", choices=["both", "full", "causal"])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    p.add_argument("--tokens", type=int, default=16384, help="B * S (B = max(1, tokens / S))")
    p.add_argument("--width", type=int, default=2048, help="H * D")
    p.add_argument("--layout", default="bshd", choices=["bshd", "bhsd"],
                   help="memory layout of Q, K, V, dO (SDPA always sees (B, H, S, D) views)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--min-reps", type=int, default=10)
    p.add_argument("--max-reps", type=int, default=100)
    p.add_argument("--target-ms", type=float, default=300.0)
    p.add_argument("--tol", type=float, default=3e-2, help="largest rel. L2 error vs math (fp32)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    given = {x.split("=")[0] for x in argv if x.startswith("--")}
    if a.quick:
        if "--dims" not in given:
            a.dims = "128"
        if "--seqs" not in given:
            a.seqs = "2048,8192"
        if "--min-reps" not in given:
            a.min_reps = 5
        if "--target-ms" not in given:
            a.target_ms = 100.0
        if "--warmup" not in given:
            a.warmup = 1
    a.dims = [int(x) for x in a.dims.split(",") if x]
    a.seqs = [int(x) for x in a.seqs.split(",") if x]
    a.backends = [x for x in a.backends.split(",") if x]
    a.dirs = [x for x in a.dirs.split(",") if x]
    return a


def flops(b, h, s, d, causal, direction):
    f = 4.0 * b * h * s * s * d * (0.5 if causal else 1.0)
    return 2.5 * f if direction == "bwd" else f


def time_calls(torch, fn, args):
    """Median milliseconds of fn() by CUDA events; warm-up first; a zero median is re-measured."""
    for _ in range(args.warmup):
        fn()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    fn()
    e1.record()
    e1.synchronize()
    est = e0.elapsed_time(e1)
    if est > 100.0:
        reps = min(args.min_reps, 3)
    elif est > 0:
        reps = max(args.min_reps, min(max(args.min_reps, args.max_reps), math.ceil(args.target_ms / est)))
    else:
        reps = args.min_reps
    for _ in range(3):
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for a, b in ev:
            a.record()
            fn()
            b.record()
        ev[-1][1].synchronize()
        ms = sorted(a.elapsed_time(b) for a, b in ev)
        med = statistics.median(ms)
        if med > 0:
            return {"ms": med, "ms_min": ms[0], "ms_max": ms[-1], "reps": reps}
        reps *= 4
    return {"ms": 0.0, "ms_min": 0.0, "ms_max": 0.0, "reps": reps}


def rel_err(torch, x, ref):
    x, ref = x.float(), ref.float()
    if not torch.isfinite(x).all():
        return float("inf")
    return (torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30)).item()


def main(argv):
    args = parse_args(argv)
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(f"sdpa_bench: PyTorch is not importable ({e})\nFAILED")
        return 1
    if not torch.cuda.is_available():
        print("sdpa_bench: no CUDA device visible to PyTorch\nFAILED")
        return 1
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError as e:
        print(f"sdpa_bench: torch.nn.attention is missing (PyTorch {torch.__version__} < 2.3?): {e}\nFAILED")
        return 1

    dev = torch.device("cuda")
    prop = torch.cuda.get_device_properties(dev)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    backends = {}
    for name in args.backends:
        attr = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                "math": "MATH"}.get(name)
        if attr is None or not hasattr(SDPBackend, attr):
            backends[name] = None  # reported n/a below
        else:
            backends[name] = getattr(SDPBackend, attr)
    info = {
        "name": prop.name,
        "compute_capability": f"{prop.major}.{prop.minor}",
        "multiprocessors": prop.multi_processor_count,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "flash_sdp_enabled": torch.backends.cuda.flash_sdp_enabled(),
        "cudnn_sdp_enabled": torch.backends.cuda.cudnn_sdp_enabled(),
    }
    print(f"device: {info['name']} (sm_{prop.major}{prop.minor}, {info['multiprocessors']} SMs); torch "
          f"{info['torch']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}; {args.dtype}, layout {args.layout}")
    print(f"{'dir':4} {'D':>4} {'S':>6} {'B':>3} {'H':>3} {'causal':6} {'backend':8} {'ms':>10} "
          f"{'TFLOP/s':>9} {'reps':>5}  status")
    sys.stdout.flush()

    gen = torch.Generator(device=dev)
    gen.manual_seed(args.seed if args.seed else int(time.time_ns() % (2**63)))
    rows, failed, checked = [], 0, {}
    masks = [c for c in (False, True) if not (c and args.mask == "full") and not (not c and args.mask == "causal")]
    min_seq = min(args.seqs)

    def make(b, s, h, d):
        if args.layout == "bshd":  # ringattn's layout; (B, H, S, D) view for SDPA
            return torch.randn(b, s, h, d, device=dev, dtype=dtype, generator=gen).transpose(1, 2)
        return torch.randn(b, h, s, d, device=dev, dtype=dtype, generator=gen)

    def save(complete, ok):
        if args.json:
            result = {"device": info, "rows": rows, "ok": ok, "complete": complete,
                      "options": {k: v for k, v in vars(args).items() if k != "json"}}
            with open(args.json + ".tmp", "w") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
            os.replace(args.json + ".tmp", args.json)

    def emit(row):
        nonlocal failed
        if row["status"] == "FAILED":
            failed += 1
        ms = f"{row['ms']:.4f}" if row.get("ms") else "-"
        tf = f"{row['tflops']:.1f}" if row.get("tflops") else "-"
        reps = str(row.get("reps", "-"))
        st = row["status"] + (f": {row['reason']}" if row.get("reason") else "")
        if row.get("check_rel_err") is not None:
            st += f" (vs math fp32 rel err {row['check_rel_err']:.1e})"
        print(f"{row['dir']:4} {row['head_dim']:>4} {row['seq']:>6} {row['batch']:>3} {row['heads']:>3} "
              f"{'yes' if row['causal'] else 'no':6} {row['backend']:8} {ms:>10} {tf:>9} {reps:>5}  {st}")
        sys.stdout.flush()
        rows.append(row)

    for d in args.dims:
        h = max(1, args.width // d)
        for s in args.seqs:
            b = max(1, args.tokens // s)
            for causal in masks:
                q, k, v, do = (make(b, s, h, d) for _ in range(4))
                for t in (q, k, v):
                    t.requires_grad_(True)
                for name, be in backends.items():
                    base = {"dtype": args.dtype, "head_dim": d, "seq": s, "batch": b, "heads": h,
                            "causal": causal, "backend": name}
                    if be is None:
                        for direction in args.dirs:
                            emit(dict(base, dir=direction, status="n/a",
                                      reason=f"no SDPBackend for '{name}' in PyTorch {torch.__version__}"))
                        continue

                    def fwd():
                        with sdpa_kernel([be]):
                            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

                    # Does the backend take this case at all? (It raises "No available kernel" and
                    # warns why when it does not.)
                    try:
                        with warnings.catch_warnings(record=True) as caught:
                            warnings.simplefilter("always")
                            out = fwd()
                            torch.cuda.synchronize()
                    except Exception as e:  # noqa: BLE001 - any refusal is reported as n/a
                        why = " | ".join(str(w.message).splitlines()[0] for w in caught[-3:]) if caught else ""
                        reason = (str(e).splitlines()[0] + (f" ({why})" if why else ""))[:300]
                        for direction in args.dirs:
                            emit(dict(base, dir=direction, status="n/a", reason=reason))
                        continue
                    # Check once per (backend, D, causal) at the smallest S: against the math backend
                    # on float32 copies of the same inputs.
                    check = None
                    key = (name, d, causal)
                    if s == min_seq and s <= 4096 and key not in checked:  # math's S x S fp32 fits
                        try:
                            qf, kf, vf = (t.detach().float().requires_grad_(True) for t in (q, k, v))
                            with sdpa_kernel([SDPBackend.MATH]):
                                ref = F.scaled_dot_product_attention(qf, kf, vf, is_causal=causal)
                            gref = torch.autograd.grad(ref, (qf, kf, vf), do.float())
                            g = torch.autograd.grad(out, (q, k, v), do, retain_graph=True) if "bwd" in args.dirs \
                                else None
                            check = {"fwd": rel_err(torch, out, ref)}
                            if g is not None:
                                check["bwd"] = max(rel_err(torch, x, y) for x, y in zip(g, gref))
                            qf = kf = vf = ref = gref = g = None
                        except Exception as e:  # noqa: BLE001
                            check = {"error": str(e).splitlines()[0]}
                        checked[key] = check
                    for direction in args.dirs:
                        row = dict(base, dir=direction, flops=flops(b, h, s, d, causal, direction))
                        if check is not None:
                            if "error" in check:
                                row.update(status="FAILED", reason="check vs math: " + check["error"])
                                emit(row)
                                continue
                            row["check_rel_err"] = check.get(direction)
                            if row["check_rel_err"] is not None and not row["check_rel_err"] <= args.tol:
                                row.update(status="FAILED", reason=f"differs from math fp32 by more than {args.tol}")
                                emit(row)
                                continue
                        try:
                            if direction == "fwd":
                                with torch.no_grad():
                                    t = time_calls(torch, fwd, args)
                            else:
                                o = fwd()
                                # autograd.grad picks the backward kernel of the forward's backend.
                                t = time_calls(torch, lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True),
                                               args)
                                del o
                            torch.cuda.synchronize()
                        except Exception as e:  # noqa: BLE001
                            msg = str(e).splitlines()[0][:300]
                            # A backend that has no backward for this case is n/a, not a failure.
                            status = "n/a" if "No available kernel" in msg or "not supported" in msg else "FAILED"
                            row.update(status=status, reason=msg)
                            emit(row)
                            continue
                        row.update(t)
                        if t["ms"] > 0:
                            row.update(status="OK", tflops=row["flops"] / (t["ms"] * 1e-3) / 1e12)
                        else:
                            row.update(status="FAILED", reason=f"zero median time after {t['reps']} repetitions")
                        emit(row)
                    out = None
                q = k = v = do = None  # free the case's tensors before the next one
                torch.cuda.empty_cache()
                save(False, False)  # after every case: a run cut short keeps its rows

    timed = sum(1 for r in rows if r.get("tflops"))
    ok = failed == 0 and timed > 0
    save(True, ok)
    print(f"{len(rows)} rows ({timed} timed, {failed} failed)")
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception:  # noqa: BLE001 - say what broke, then FAILED
        traceback.print_exc()
        print("FAILED")
        sys.exit(1)
