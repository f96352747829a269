"""GPTQ speed: the jit-compiled row loop (lax.fori_loop over blocks and rows, vmapped over a type's
layers) against a blocked numpy GPTQ written apart from it (benchmarks/gptq_blocked.py: lazy batch
updates in blocks of 128 rows, scipy's Cholesky), on SmolLM2-135M's linear weights with the same
calibration grams; and prefill throughput of int8/int4 models vs fp32.

    python -m benchmarks.quantize [--json] [--layers 30] [--bits 4 --group 64] [--reps 5]
                                  [--batch 2 --seq-len 512] [--skip-prefill]

Interleaved repetitions: jit with compilation (caches cleared first), jit warm, numpy, in turn;
median and min-max of each; a ratio is claimed only when the ranges do not overlap. Both sides
include their float32 setup (H, its inverse's Cholesky factor) and return codes. Prefill: the
median of 3 warm forward passes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from benchmarks.common import RESULTS, timeit, write_result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=30, help="first N layers' weights are quantized by both paths")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--skip-prefill", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxshare.basis.calibrate import calibrate
    from jaxshare.basis.factor import TYPES, get_type
    from jaxshare.io.load import load_model
    from jaxshare.quant.gptq import gptq_many
    from jaxshare.quant.leaf import to_2d
    from jaxshare.quant.model import QuantSpec, quantize_params, types_present

    m = load_model("smollm2-135m")
    grams, calib = calibrate(m, "books:train", 32, 512, 0)
    n = min(args.layers, m.cfg.n_layers)
    work = []  # (type, weights [n, d_in, d_out], grams [n, d_in, d_in])
    for t in types_present(m.cfg):
        w = np.asarray(to_2d(t, get_type(m.params.layers, t)), np.float32)[:n]
        work.append((t, w, np.asarray(grams[TYPES[t][1]][:n], np.float64)))
    matrices = sum(len(w) for _, w, _ in work)

    from benchmarks.gptq_blocked import gptq_blocked_many

    def run_jit():
        return {t: np.asarray(jax.block_until_ready(gptq_many(list(w), list(g), args.bits, args.group)[0]))
                for t, w, g in work}

    def run_numpy():
        return {t: gptq_blocked_many(w, g, args.bits, args.group)[0] for t, w, g in work}

    times = {"jit_cold": [], "jit_warm": [], "numpy_blocked": []}
    for rep in range(args.reps):
        for side in times:
            if side == "jit_cold":
                jax.clear_caches()
            t0 = time.perf_counter()
            codes = run_numpy() if side == "numpy_blocked" else run_jit()
            times[side].append(time.perf_counter() - t0)
            if rep == 0 and side == "jit_cold":
                jit_codes = codes
            if rep == 0 and side == "numpy_blocked":
                agree = [float(np.mean(codes[t][i] == jit_codes[t][i])) for t in codes for i in range(len(codes[t]))]
        print(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
              file=sys.stderr)

    def summary(v):
        return {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "reps": len(v), "all_s": v}

    def ratio(slow, fast):
        a, b = times[slow], times[fast]
        return {"median": statistics.median(a) / statistics.median(b),
                "outside_noise": min(a) > max(b) or max(a) < min(b)}

    res = {"gptq": {"matrices": matrices, "layers": n, "bits": args.bits, "group": args.group,
                    **{k: summary(v) for k, v in times.items()},
                    "numpy_over_jit_cold": ratio("numpy_blocked", "jit_cold"),
                    "numpy_over_jit_warm": ratio("numpy_blocked", "jit_warm"),
                    "codes_equal_fraction_min": min(agree), "codes_equal_fraction_mean": float(np.mean(agree)),
                    "calibration": calib}}
    r = res["gptq"]
    print(f"GPTQ int{args.bits} g{args.group}, {matrices} matrices ({n} layers), median of {args.reps}: "
          f"jit {r['jit_cold']['median_s']:.2f} s with compile, {r['jit_warm']['median_s']:.2f} s warm; blocked numpy "
          f"{r['numpy_blocked']['median_s']:.2f} s: numpy/jit {r['numpy_over_jit_cold']['median']:.2f}x "
          f"(cold{'' if r['numpy_over_jit_cold']['outside_noise'] else ', in the noise'}), "
          f"{r['numpy_over_jit_warm']['median']:.2f}x (warm{'' if r['numpy_over_jit_warm']['outside_noise'] else ', in the noise'}); "
          f"codes equal {np.mean(agree):.4%}", file=sys.stderr)

    if args.skip_prefill:  # keep the last run's prefill section rather than dropping it
        last = RESULTS / "quantize.json"
        prev = json.loads(last.read_text()).get("prefill") if last.exists() else None
        if prev:
            res["prefill"] = {**prev, "from_an_earlier_run": True}
    else:
        from jaxshare.core.model import forward

        toks = jnp.asarray(np.random.default_rng(0).integers(0, m.cfg.vocab_size, (args.batch, args.seq_len)),
                           jnp.int32)
        arms = {"fp32": m.params}
        for bits, group in ((8, None), (4, 64)):
            arms[f"int{bits}"] = quantize_params(m.params, m.cfg, QuantSpec(bits, group, True, "rtn"),
                                                 progress=False)[0]
        prefill = {}
        for name, params in arms.items():
            r = timeit(lambda: forward(params, m.cfg, toks).block_until_ready(), reps=3)
            prefill[name] = {**r, "tokens_per_s": args.batch * args.seq_len / r["median_s"]}
            print(f"prefill {name}: {prefill[name]['tokens_per_s']:.0f} tok/s", file=sys.stderr)
        for name in prefill:
            prefill[name]["vs_fp32"] = prefill[name]["tokens_per_s"] / prefill["fp32"]["tokens_per_s"]
        res["prefill"] = {"batch": args.batch, "seq_len": args.seq_len, "arms": prefill}
    write_result("quantize", res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
