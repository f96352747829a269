"""How `prune --per-layer` ranks channels model-wide, chosen on DATA:validation (not the test windows).

SmolLM2-135M, compensated MLP pruning at the budgets of experiments/prune.py (-10% and -20% of the
model's parameters, its prune-mlp+comp ratios), the CLI's calibration (32 x 512 tokens of DATA:train). Uniform widths against
per-layer widths from three scores, each with a cap on how many channels one layer may lose
(1.5x or 2x the uniform count):
  energy     sum_t h_j^2 ||W_down[j]||^2: the channel's energy in the residual stream (what ships)
  shares     the same, as a share of its layer's total (each layer's channels sum to 1)
  act_share  sum_t h_j^2 as a share of its layer's total
Scored on the first --windows windows of 512 tokens of DATA:validation; experiments/prune.py then
measures the chosen score on DATA:test. DATA is --data: books by default (wiki needs the BIG-bench
sdist, which the package index no longer serves; its run is prune_select.json).

  python -m experiments.prune_select [--data books] [--windows 8]   # experiments/results/prune_select_books.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from experiments.heal import RESULTS, stamp, window_nlls


def shares(importance_LF, w_down):
    from jaxshare.pruning.importance import output_energy

    e = output_energy(importance_LF, w_down)
    return e / e.sum(1, keepdims=True)


def act_share(importance_LF, w_down):
    return importance_LF / importance_LF.sum(1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="books", choices=("books", "wiki"))
    ap.add_argument("--windows", type=int, default=8)
    args = ap.parse_args()
    import jaxshare.pruning.prune as pr
    from jaxshare.basis.calibrate import calibrate
    from jaxshare.data.corpora import load_corpus
    from jaxshare.data.tokens import token_windows, tokenize_corpus
    from jaxshare.io.load import load_model
    from jaxshare.methods import METHODS, PruneOptions
    from jaxshare.pruning.importance import output_energy

    m = load_model("smollm2-135m", "fp32")
    grams, info = calibrate(m, f"{args.data}:train", 32, 512, 0, 4)
    val = token_windows(tokenize_corpus(m.tokenizer, load_corpus(f"{args.data}:validation")), 512, args.windows)

    def ppl(opts) -> float:
        out, _ = METHODS["prune"].apply(m, opts, grams)
        return math.exp(float(np.mean(window_nlls(out.params, out.cfg, val))))

    from experiments.prune import arms
    from jaxshare.core.params import count_params

    rows = []
    keep_score, keep_cap = pr.output_energy, pr.LAYER_CAP
    try:
        for budget in (0.1, 0.2):
            r = arms(m.cfg, count_params(m.params), budget)["prune-mlp+comp"][1].mlp  # as experiments/prune.py
            row = {"budget": budget, "mlp": r, "compensate": True, "uniform": ppl(PruneOptions(mlp=r, compensate=True))}
            for name, fn in (("energy", output_energy), ("shares", shares), ("act_share", act_share)):
                for cap in (1.5, 2.0):
                    pr.output_energy, pr.LAYER_CAP = fn, cap  # the score and cap select_per_layer reads
                    row[f"{name} cap {cap:g}"] = ppl(PruneOptions(mlp=r, compensate=True, per_layer=True))
            pr.output_energy, pr.LAYER_CAP = keep_score, keep_cap
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        pr.output_energy, pr.LAYER_CAP = keep_score, keep_cap
    out = {**stamp(), "command": " ".join(["python", "-m", "experiments.prune_select", *sys.argv[1:]]),
           "data": f"{args.data}:validation, {args.windows} x 512 tokens", "calibration": info, "rows": rows,
           "chosen": {"score": "energy", "cap": keep_cap}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "prune_select.json" if args.data == "wiki" else f"prune_select_{args.data}.json"
    (RESULTS / name).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
