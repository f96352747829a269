"""Cost of the PostShare penalty: the penalized train step (CE + gamma * L_w, ratio 0.3 pairs)
against the plain LM step, same model, same batch, same optimizer, timed interleaved (A B A B ...)
so machine load hits both alike. Reports median step time, the ratio and tokens/s.

  python -m benchmarks.train_step [--model smollm2-135m] [--seq-len 128] [--batch-size 4] [--reps 5] [--json]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from benchmarks.common import write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxshare.training import mesh as meshlib

    from jaxshare.training import trainer
    from jaxshare.headshare.directshare import plan
    from jaxshare.io.load import load_model
    from jaxshare.headshare.penalty import pairs_from_plan
    from jaxshare.training.config import build_config

    m = load_model(args.model, "fp32")
    decision = plan(m.params, m.cfg, args.ratio, "qk")
    pairs = {k: jnp.asarray(v) for k, v in pairs_from_plan(decision).items()}
    tc = build_config({"steps": 1000, "lr": 5e-5})
    tx, _ = trainer.make_optimizer(tc, tc.steps)
    mesh = meshlib.make_mesh("")
    batch = np.random.default_rng(0).integers(0, m.cfg.vocab_size, (1, args.batch_size, args.seq_len)).astype(np.int32)
    steps, states = {}, {}
    for name, kw in (("plain", dict(pairs=None, penalize=False, monitor=False)),
                     ("penalized", dict(pairs=pairs, penalize=True))):
        state, sh = trainer.place_state(m.params, tx, 0, mesh)
        fn, batch_sh = trainer.compile_step(trainer.make_step(m.cfg, tx, 0.5, args.dtype, **kw), mesh, sh)
        b = jax.device_put(batch, batch_sh)
        state, out = fn(state, b)  # compile + warm-up
        jax.block_until_ready(out)
        steps[name], states[name] = (fn, b), state
    times = {"plain": [], "penalized": []}
    for _ in range(args.reps):
        for name in ("plain", "penalized"):  # interleaved
            fn, b = steps[name]
            t0 = time.perf_counter()
            states[name], out = fn(states[name], b)
            jax.block_until_ready(out)
            times[name].append(time.perf_counter() - t0)
    tokens = args.batch_size * args.seq_len
    res = {"model": args.model, "seq_len": args.seq_len, "batch_size": args.batch_size, "dtype": args.dtype,
           "ratio": args.ratio, "pairs": int(decision["n"]), "devices": len(jax.devices()), "reps": args.reps}
    for name, ts in times.items():
        med = statistics.median(ts)
        res[name] = {"median_s": med, "min_s": min(ts), "times_s": ts, "tokens_per_s": tokens / med}
    res["penalized_over_plain"] = res["penalized"]["median_s"] / res["plain"]["median_s"]
    res["penalized_over_plain_min"] = res["penalized"]["min_s"] / res["plain"]["min_s"]
    write_result("train_step", res, args.json)
    print(f"plain {res['plain']['median_s']:.3f}s ({res['plain']['tokens_per_s']:.0f} tok/s), penalized "
          f"{res['penalized']['median_s']:.3f}s ({res['penalized']['tokens_per_s']:.0f} tok/s): "
          f"{res['penalized_over_plain']:.3f}x (min-based {res['penalized_over_plain_min']:.3f}x)", file=sys.stderr)


if __name__ == "__main__":
    main()
