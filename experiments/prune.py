"""Structured width pruning of SmolLM2 against Basis Sharing and SVD-LLM at equal whole-model budgets.

Each arm removes --budgets of SmolLM2-135M's parameters (embeddings included) and is scored, not
healed, on the first --windows windows of --seq-len tokens of wiki:test (bootstrap 95% interval of
the PPL over windows). All arms read one calibration: 32 x 512 tokens of wiki:train, seed 0, the
CLI's default, so `jaxshare prune` / `jaxshare basis` with their defaults build the same models.

  prune-mlp      MLP channels only, the same count in every layer, ranked by their activations
  prune-mlp+kv   one of SmolLM2's three KV groups (with its three query heads) per layer, and MLP
                 channels for the rest of the budget
  (each with and without --compensate: a least-squares refit of down / o on the kept channels)
  basis          Basis Sharing, n = 2, every linear type, ratio scaled to the budget
  svd-llm        per-layer whitened SVD (n = 1), the same ratio

  python -m experiments.prune [--budgets 0.1,0.2] [--windows 32]   # rows: experiments/results/prune.jsonl
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

from experiments.heal import LINEAR_SHARE, RESULTS, bootstrap, held_out, stamp, window_nlls

ROWS = RESULTS / "prune.jsonl"


def arms(cfg, total: int, budget: float) -> dict:
    """name -> (method, options) removing `budget` of `total` params (to the nearest channel)."""
    from jaxshare.methods import BasisOptions, PruneOptions

    L, D, F = cfg.n_layers, cfg.d_model, cfg.d_ff
    per_channel = 3 * D * L  # gate, up and down of one channel in every layer
    group = L * 2 * D * cfg.head_dim * (cfg.groups + 1)  # one KV group: its q heads, k, v and o
    kv = 1 / cfg.n_kv_heads
    mlp_only = round(budget * total / per_channel) / F
    with_kv = round((budget * total - group) / per_channel) / F
    out = {}
    for comp in (False, True):
        tag = "+comp" if comp else ""
        out[f"prune-mlp{tag}"] = ("prune", PruneOptions(mlp=mlp_only, compensate=comp))
        out[f"prune-mlp+kv{tag}"] = ("prune", PruneOptions(mlp=with_kv, kv_groups=kv, compensate=comp))
    out["basis"] = ("basis", BasisOptions(ratio=budget / LINEAR_SHARE, group_size=2))
    out["svd-llm"] = ("basis", BasisOptions(ratio=budget / LINEAR_SHARE, group_size=1, method="svd-llm"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",")], default=[0.1, 0.2])
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    args = ap.parse_args()

    from jaxshare.basis.calibrate import calibrate
    from jaxshare.core.params import count_params, param_bytes
    from jaxshare.io.load import load_model
    from jaxshare.methods import METHODS

    m = load_model("smollm2-135m", "fp32")
    total = count_params(m.params)
    grams, info = calibrate(m, "wiki:train", 32, 512, 0, 4)
    windows = held_out(m.tokenizer, args.seq_len, args.windows)
    base = stamp()
    base["command"] = " ".join(["python", "-m", "experiments.prune", *sys.argv[1:]])
    rows = []

    def record(name, budget, model, seconds, opts=None):
        nll = window_nlls(model.params, model.cfg, windows)
        lo, hi = bootstrap(nll)
        n = count_params(model.params)
        row = {**base, "arm": name, "budget": budget, "options": None if opts is None else opts.to_dict(),
               "params": n, "removed": round(1 - n / total, 4), "bytes": param_bytes(model.params),
               "ppl": math.exp(nll.mean()), "ci95": [lo, hi], "windows": len(windows), "seq_len": args.seq_len,
               "calibration": info, "seconds": round(seconds, 1), "window_nll": nll.round(6).tolist()}
        rows.append(row)
        print(f"{name:18s} budget {budget:.2f}  removed {row['removed']:.3f}  PPL {row['ppl']:8.2f} "
              f"[{lo:.2f}, {hi:.2f}]  {seconds:.0f} s", file=sys.stderr, flush=True)

    record("dense", 0.0, m, 0.0)
    for budget in args.budgets:
        for name, (method, opts) in arms(m.cfg, total, budget).items():
            t0 = time.perf_counter()
            out, _ = METHODS[method].apply(m, opts, grams)
            record(name, budget, out, time.perf_counter() - t0, opts)
            del out
    RESULTS.mkdir(parents=True, exist_ok=True)
    ROWS.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_report(rows)


def write_report(rows: list[dict]) -> None:
    dense = next(r for r in rows if r["arm"] == "dense")
    lines = ["# Width pruning vs Basis Sharing and SVD-LLM on SmolLM2-135M (not healed)", "",
             f"`{dense['command']}` at commit {dense['commit'][:10]}, {dense['machine']}, {dense['date']}; "
             f"wiki:test, {dense['windows']} x {dense['seq_len']} tokens, bootstrap 95% CI. "
             f"Dense: {dense['ppl']:.2f} [{dense['ci95'][0]:.2f}, {dense['ci95'][1]:.2f}].", "",
             "| budget | arm | params removed | PPL [95% CI] | x dense |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["arm"] == "dense":
            continue
        lines.append(f"| {r['budget']:.0%} | {r['arm']} | {r['removed']:.1%} | {r['ppl']:.2f} "
                     f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | {r['ppl'] / dense['ppl']:.2f} |")
    (RESULTS / "prune.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
