"""Is a width-pruned SmolLM2 faster? Prefill and decode tokens/s of pruned models against the dense
one, in jaxshare and in transformers (the pruned model exported to HF), interleaved in one run.

Pruned arms (the calibration of `jaxshare prune`'s defaults: 32 x 512 tokens of books:train):
  mlp      MLP channels only, -20% of the whole model's parameters
  mlp+kv   one of three KV groups per layer and MLP channels for the rest of -20%
Prefill: one forward of batch 1 x --seq-len (fp32). Decode: greedy, --new tokens after a 16-token
prompt with the KV cache (jaxshare only; compile excluded by a warm-up). Each rep times every side
once, in turn; median and [min, max] over --reps; ratio = pruned / dense tokens/s, and the paired
ratio of each rep (dense time / pruned time in the same rep, so a slow moment of the machine
slows both): a speed-up is outside the noise when every rep's paired ratio is above 1.

  python -m benchmarks.prune_speed [--reps 5] [--seq-len 512] [--new 64] [--json]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch
import transformers

from benchmarks.common import write_result
from experiments.prune import arms
from jaxshare.api import export_hf
from jaxshare.basis.calibrate import calibrate
from jaxshare.core.generate import generate
from jaxshare.core.model import forward
from jaxshare.core.params import count_params
from jaxshare.io.load import load_model
from jaxshare.methods import METHODS


def clock(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    m = load_model("smollm2-135m", "fp32")
    grams, _ = calibrate(m, "books:train", 32, 512, 0, 4)
    plan = arms(m.cfg, count_params(m.params), 0.2)
    models = {"dense": m}
    for name in ("mlp", "mlp+kv"):
        method, opts = plan[f"prune-{name}+comp"]
        models[name] = METHODS[method].apply(m, opts, grams)[0]
    tmp = Path(tempfile.mkdtemp(prefix="prune_speed_"))
    hf = {n: transformers.AutoModelForCausalLM.from_pretrained(export_hf(x, tmp / n.replace("+", "_")),
                                                               dtype=torch.float32).eval()
          for n, x in models.items()}
    rng = np.random.default_rng(0)
    toks = rng.integers(0, m.cfg.vocab_size, (1, args.seq_len)).astype(np.int32)
    prompt = toks[:, :16]
    jt, tt = jnp.asarray(toks), torch.as_tensor(toks.astype(np.int64))
    sides = {}
    for n, x in models.items():
        sides[f"{n}/jax prefill"] = lambda x=x: forward(x.params, x.cfg, jt).block_until_ready()
        sides[f"{n}/jax decode"] = lambda x=x: generate(x.params, x.cfg, prompt, args.new)
        sides[f"{n}/torch prefill"] = lambda h=hf[n]: h(tt).logits
    times = {k: [] for k in sides}
    with torch.inference_mode():
        for fn in sides.values():  # warm-up: compile, caches
            fn()
        for rep in range(args.reps):
            for k, fn in sides.items():
                times[k].append(clock(fn))
            print(f"rep {rep + 1}/{args.reps}", file=sys.stderr, flush=True)
    rows = []
    for k, ts in times.items():
        n = args.new if k.endswith("decode") else args.seq_len
        med = statistics.median(ts)
        rows.append({"side": k, "tokens": n, "median_s": med, "min_s": min(ts), "max_s": max(ts),
                     "tokens_per_s": n / med, "params": count_params(models[k.split("/")[0]].params),
                     "times_s": [round(t, 6) for t in ts]})
    by = {r["side"]: r for r in rows}
    for r in rows:
        name, what = r["side"].split("/")
        r["ratio_vs_dense"] = r["tokens_per_s"] / by[f"dense/{what}"]["tokens_per_s"]
        # outside the noise: the pruned side's slowest rep beats the dense side's fastest, or the reverse
        d = by[f"dense/{what}"]
        r["separated"] = r["max_s"] < d["min_s"] or r["min_s"] > d["max_s"]
        pr = [a / b for a, b in zip(d["times_s"], r["times_s"])]  # this rep's dense time / this side's
        r["paired_ratio"] = {"median": statistics.median(pr), "min": min(pr), "max": max(pr)}
        r["paired_separated"] = min(pr) > 1 or max(pr) < 1
        print(f"{r['side']:22s} {r['tokens_per_s']:9.1f} tok/s  [{r['tokens'] / r['max_s']:.1f}, "
              f"{r['tokens'] / r['min_s']:.1f}]  x{r['ratio_vs_dense']:.2f} dense", file=sys.stderr)
    write_result("prune_speed", {"model": "smollm2-135m", "budget": 0.2, "reps": args.reps, "seq_len": args.seq_len,
                                 "new_tokens": args.new, "torch": torch.__version__,
                                 "torch_threads": torch.get_num_threads(), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
