"""GPTQ speed: the jit-compiled row loop (lax.fori_loop over blocks and rows, vmapped over a type's
layers) vs the same algorithm as a straightforward numpy loop, on SmolLM2-135M's linear weights with
the same calibration grams in the same run; and prefill throughput of int8/int4 models vs fp32.

    python -m benchmarks.quantize [--json] [--layers 30] [--bits 4 --group 64] [--batch 2 --seq-len 512]
                                  [--skip-prefill]  (keeps the prefill section of the last result)

Both paths include their float32 setup (H, its inverse's Cholesky factor) and return codes; the
jit time is reported with compilation (one per matrix shape) and warm (the same work again). Prefill: the median of 3 warm forward passes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from benchmarks.common import RESULTS, timeit, write_result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=30, help="first N layers' weights are quantized by both paths")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group", type=int, default=64)
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
    from jaxshare.quant.gptq import gptq_many, gptq_numpy
    from jaxshare.quant.leaf import to_2d
    from jaxshare.quant.model import QuantSpec, quantize_params, types_present

    m = load_model("smollm2-135m")
    grams, calib = calibrate(m, "wiki:train", 32, 512, 0)
    n = min(args.layers, m.cfg.n_layers)
    work = []  # (type, weights [n, d_in, d_out], grams [n, d_in, d_in])
    for t in types_present(m.cfg):
        w = np.asarray(to_2d(t, get_type(m.params.layers, t)), np.float32)[:n]
        work.append((t, w, np.asarray(grams[TYPES[t][1]][:n], np.float64)))
    matrices = sum(len(w) for _, w, _ in work)

    t0 = time.perf_counter()
    jit_codes = {}
    for t, w, g in work:
        q, _, _ = gptq_many(list(w), list(g), args.bits, args.group)
        jit_codes[t] = np.asarray(jax.block_until_ready(q))
    jit_s = time.perf_counter() - t0
    t0 = time.perf_counter()  # again, compiled: the steady-state cost of the same work
    for t, w, g in work:
        jax.block_until_ready(gptq_many(list(w), list(g), args.bits, args.group)[0])
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    agree = []
    for t, w, g in work:
        for i in range(len(w)):
            q, _, _ = gptq_numpy(w[i], g[i], args.bits, args.group)
            agree.append(float(np.mean(q == jit_codes[t][i])))
    np_s = time.perf_counter() - t0
    res = {"gptq": {"matrices": matrices, "layers": n, "bits": args.bits, "group": args.group,
                    "jit_seconds_incl_compile": jit_s, "jit_seconds_warm": warm_s, "numpy_seconds": np_s,
                    "speedup": np_s / jit_s, "speedup_warm": np_s / warm_s,
                    "codes_equal_fraction_min": min(agree), "codes_equal_fraction_mean": float(np.mean(agree)),
                    "calibration": calib}}
    print(f"GPTQ int{args.bits} g{args.group}, {matrices} matrices ({n} layers): jit {jit_s:.1f} s (with compile), "
          f"warm {warm_s:.1f} s, numpy {np_s:.1f} s, speedup {np_s / jit_s:.1f}x ({np_s / warm_s:.1f}x warm); codes equal {np.mean(agree):.4%}", file=sys.stderr)

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
