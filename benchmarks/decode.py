"""Greedy decode tokens/s of SmolLM2-135M: jaxshare `generate` vs transformers `generate`, same run,
and jaxshare decoding from compressed variants beside the dense model.

    python -m benchmarks.decode [--new-tokens 128] [--batches 1,8] [--reps 5] [--no-variants] [--json]

fp32, greedy, after a fixed real-text prompt (the same prompt in every row of a batch). Both sides
produce exactly --new-tokens: jaxshare's `generate` gets no EOS ids (it stops only at
max_new_tokens), transformers gets min_new_tokens = max_new_tokens (EOS suppressed until then).
Each side is warmed by one untimed call (compile, caches); then each rep times every side once, in
turn (interleaved). tokens/s = batch x new tokens / seconds of the whole decode call (prefill
included on both sides); median and [min, max] over --reps; ratio = jaxshare / transformers.
Token ids are compared: where they differ the first differing position and jaxshare's logit gap
there (top-1 minus the logit of transformers' token) are recorded.

Compressed variants (batch 1, jaxshare only, built in-process with the library's methods): head
sharing (share ratio 0.2, keep=mean), Basis Sharing (ratio 0.2, svd), int8 and int4 RTN
quantization, MLP pruning (20% of channels, ranked on cached calibration grams). A Quantized leaf
decodes from its packed codes: `Quantized.apply` (jaxshare/quant/leaf.py) dequantizes one layer's
weight inside the layer scan at every step; no dense copy of the model exists.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.common import write_result
from jaxshare.core.generate import generate
from jaxshare.core.model import forward
from jaxshare.core.params import count_params, param_bytes
from jaxshare.eval.parity import reference_model
from jaxshare.io.load import load_model

PROMPT = ("The Roman Empire was the post-Republican state of ancient Rome. It included large territorial "
          "holdings around the Mediterranean Sea in Europe, North Africa, and Western Asia, and was ruled "
          "by emperors. The fall of the Western Roman Empire")


def clock(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def variants(m) -> dict:
    """name -> compressed Model, each built by jaxshare.methods as the CLI builds it."""
    from jaxshare.basis.calibrate import calibrate
    from jaxshare.methods import METHODS, BasisOptions, PruneOptions, ShareOptions
    from jaxshare.quant.model import QuantSpec

    grams, _ = calibrate(m, "books:train", 32, 512, 0, 4)  # prune_speed's calibration (cached)
    steps = {"share-0.2": ("share", ShareOptions(ratio=0.2)),
             "basis-0.2-svd": ("basis", BasisOptions(ratio=0.2, method="svd")),
             "int8-rtn": ("quantize", QuantSpec(bits=8, group=None, method="rtn")),
             "int4-rtn-g64": ("quantize", QuantSpec(bits=4, group=64, method="rtn")),
             "prune-mlp-0.2": ("prune", PruneOptions(mlp=0.2))}
    out = {}
    for name, (method, opts) in steps.items():
        t0 = time.perf_counter()
        out[name] = METHODS[method].apply(m, opts, grams)[0]
        print(f"built {name} in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    return out


def compare(m, prompt_BT: np.ndarray, jax_new: np.ndarray, torch_new: np.ndarray) -> dict:
    """Identical ids, or the first differing position and jaxshare's logit gap there."""
    if np.array_equal(jax_new, torch_new):
        return {"identical": True}
    diff = np.argwhere(jax_new != torch_new)
    row, pos = (int(x) for x in diff[np.lexsort((diff[:, 0], diff[:, 1]))][0])
    seq = np.concatenate([prompt_BT[row], jax_new[row, :pos]])[None].astype(np.int32)
    logits = np.asarray(forward(m.params, m.cfg, jnp.asarray(seq)))[0, -1]
    return {"identical": False, "first_diff_row": row, "first_diff_pos": pos,
            "jax_token": int(jax_new[row, pos]), "torch_token": int(torch_new[row, pos]),
            "jax_logit_gap": float(logits[jax_new[row, pos]] - logits[torch_new[row, pos]]),
            "differing_positions": int((jax_new != torch_new).any(axis=0).sum())}


def summary(ts: list[float], tokens: int) -> dict:
    med = statistics.median(ts)
    return {"median_s": med, "min_s": min(ts), "max_s": max(ts), "tokens_per_s": tokens / med,
            "tokens_per_s_range": [tokens / max(ts), tokens / min(ts)], "times_s": ts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-variants", action="store_true", help="dense vs transformers only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    N = args.new_tokens
    batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(os.cpu_count())  # one thread per core, stated in the result

    m = load_model(args.model, "fp32")
    ref = reference_model(m).eval()
    ids = np.asarray(m.need_tokenizer("decode benchmark")(PROMPT)["input_ids"], np.int32)
    models = {"dense": m} if args.no_variants else {"dense": m, **variants(m)}

    sides = {}  # name -> (tokens per call, fn returning new ids [B, N])
    prompts = {}
    for B in batches:
        p = np.tile(ids, (B, 1))
        prompts[B] = p
        tp = torch.as_tensor(p.astype(np.int64))
        sides[f"dense/jax B={B}"] = (B * N, lambda p=p: generate(m.params, m.cfg, p, N))
        sides[f"dense/torch B={B}"] = (B * N, lambda tp=tp: ref.generate(
            tp, attention_mask=torch.ones_like(tp), do_sample=False, max_new_tokens=N, min_new_tokens=N,
            pad_token_id=m.cfg.eos_token_id if isinstance(m.cfg.eos_token_id, int) else 0)[:, tp.shape[1]:].numpy())
    for name, x in models.items():
        if name != "dense":
            sides[f"{name}/jax B=1"] = (N, lambda x=x: generate(x.params, x.cfg, prompts[1], N))

    times = {k: [] for k in sides}
    outs = {}
    with torch.inference_mode():
        for k, (_, fn) in sides.items():  # warm-up: compile, caches, allocator
            t, outs[k] = clock(fn)
            print(f"warm {k}: {t:.1f}s", file=sys.stderr, flush=True)
        for rep in range(args.reps):
            for k, (_, fn) in sides.items():
                times[k].append(clock(fn)[0])
            print(f"rep {rep + 1}/{args.reps}", file=sys.stderr, flush=True)

    rows = []
    for k, (n, _) in sides.items():
        name, rest = k.split("/")
        side, b = rest.split(" B=")
        rows.append({"model": name, "side": "jaxshare" if side == "jax" else "transformers", "batch": int(b),
                     "new_tokens": N, "params": count_params(models[name].params),
                     "param_bytes": param_bytes(models[name].params), **summary(times[k], n)})
    by = {(r["model"], r["side"], r["batch"]): r for r in rows}
    ratios = {}
    for B in batches:
        j, t = by[("dense", "jaxshare", B)], by[("dense", "transformers", B)]
        j["ids_vs_transformers"] = compare(m, prompts[B], outs[f"dense/jax B={B}"], outs[f"dense/torch B={B}"])
        j["ratio_vs_transformers"] = ratios[B] = j["tokens_per_s"] / t["tokens_per_s"]
    for r in rows:
        if r["side"] == "jaxshare" and r["batch"] == 1:
            r["ratio_vs_dense"] = r["tokens_per_s"] / by[("dense", "jaxshare", 1)]["tokens_per_s"]
    for r in rows:
        lo, hi = r["tokens_per_s_range"]
        extra = f"  x{r['ratio_vs_dense']:.2f} dense" if "ratio_vs_dense" in r else ""
        print(f"{r['model']:14s} {r['side']:12s} B={r['batch']}: {r['tokens_per_s']:7.1f} tok/s "
              f"[{lo:.1f}, {hi:.1f}]{extra}", file=sys.stderr)
    print("ratio jaxshare/transformers: " + ", ".join(
        f"B={B} {ratios[B]:.2f}x (ids {'identical' if by[('dense', 'jaxshare', B)]['ids_vs_transformers']['identical'] else 'DIFFER'})"
        for B in batches), file=sys.stderr)
    write_result("decode", {
        "model": args.model, "dtype": "fp32", "greedy": True, "new_tokens": N, "reps": args.reps,
        "prompt_tokens": int(ids.size), "prompt": PROMPT,
        "eos": "never stops early: jaxshare generate gets no eos_ids, transformers min_new_tokens = max_new_tokens",
        "timed": "whole generate call (prefill + decode), warm, interleaved; tokens/s = batch x new tokens / seconds",
        "quantized_decode": "from packed codes: Quantized.apply dequantizes one layer's weight inside the layer "
                            "scan at every step (jaxshare/quant/leaf.py); no dense copy",
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "jax_devices": str(jax.devices()),
        "ratios": {str(b): r for b, r in ratios.items()}, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
