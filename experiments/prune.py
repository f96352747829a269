"""Structured width pruning of SmolLM2 against Basis Sharing and SVD-LLM at equal whole-model budgets.

Each arm removes --budgets of SmolLM2-135M's parameters (embeddings included) and is scored, not
healed, on the first --windows windows of --seq-len tokens of DATA:test (bootstrap 95% interval of
the PPL over windows), DATA being --data (books by default; wiki needs the BIG-bench sdist, see
docs/models.md). All arms read one calibration: 32 x 512 tokens of DATA:train, seed 0, the CLI's
default size, so `jaxshare prune` / `jaxshare basis` with `--calib DATA:train` build the same models.

  prune-mlp      MLP channels only, the same count in every layer, ranked by their activations
  prune-mlp+kv   one of SmolLM2's three KV groups (with its three query heads) per layer, and MLP
                 channels for the rest of the budget
  prune-mlp-pl   as many MLP channels as prune-mlp, each layer its own count (--per-layer: the channels
                 of least residual-stream energy go first, at most 1.5x the uniform count per layer)
  (each with and without --compensate: a least-squares refit of down / o on the kept channels)
  basis          Basis Sharing, n = 2, every linear type, ratio scaled to the budget
  svd-llm        per-layer whitened SVD (n = 1), the same ratio
  plan           the budgeted plan as a user runs it: `jaxshare compress smollm2-135m OUT --ratio B
                 --methods share,basis,prune,prune-kv --calib DATA:train --heldout DATA:validation
                 --calib-windows 32 --calib-seq-len 512` (its own sensitivity and held-out checks, on
                 DATA:train / DATA:validation windows that are not these), then scored like the others

  python -m experiments.prune [--data books] [--budgets 0.1,0.2] [--windows 32] [--arms plan,basis,...]
  # rows: experiments/results/prune_books.jsonl (wiki: prune.jsonl); an arm run again replaces its
  # rows, the others stay; the report beside it (.md)
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments.heal import LINEAR_SHARE, RESULTS, bootstrap, held_out, stamp, window_nlls



def rows_path(data: str) -> Path:
    """wiki, the first corpus, keeps the original name; each other corpus has its own file."""
    return RESULTS / ("prune.jsonl" if data == "wiki" else f"prune_{data}.jsonl")
PLAN_METHODS = "share,basis,prune,prune-kv"
ROOT = Path(__file__).resolve().parents[1]


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
        out[f"prune-mlp-pl{tag}"] = ("prune", PruneOptions(mlp=mlp_only, compensate=comp, per_layer=True))
    out["basis"] = ("basis", BasisOptions(ratio=budget / LINEAR_SHARE, group_size=2))
    out["svd-llm"] = ("basis", BasisOptions(ratio=budget / LINEAR_SHARE, group_size=1, method="svd-llm"))
    return out


def plan_model(budget: float, data: str):
    """`jaxshare compress --ratio` in its own process, as a user runs it; (model, seconds, report)."""
    from jaxshare.io.load import load_model

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "plan"
        cmd = [sys.executable, "-m", "jaxshare", "compress", "smollm2-135m", str(out), "--ratio", str(budget),
               "--methods", PLAN_METHODS, "--calib", f"{data}:train", "--heldout", f"{data}:validation",
               "--calib-windows", "32", "--calib-seq-len", "512", "--json"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"prune: the plan at {budget} failed: {proc.stderr.strip().splitlines()[-1:]}")
        seconds = time.perf_counter() - t0
        report = json.loads(proc.stdout.splitlines()[-1])
        return load_model(str(out), "fp32"), seconds, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="books", help="corpus: DATA:train calibrates, DATA:test scores (books or wiki)")
    ap.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",")], default=[0.1, 0.2])
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--arms", type=lambda s: [a for a in s.split(",") if a], default=None,
                    help="arms to run (default: all); their rows replace the old ones, the other rows stay")
    args = ap.parse_args()

    from jaxshare.basis.calibrate import calibrate
    from jaxshare.core.params import count_params, param_bytes
    from jaxshare.io.load import load_model
    from jaxshare.methods import METHODS

    m = load_model("smollm2-135m", "fp32")
    total = count_params(m.params)
    known = [*arms(m.cfg, total, 0.1), "plan"]
    wanted = args.arms or known
    if set(wanted) - set(known):
        sys.exit(f"prune: unknown arms {sorted(set(wanted) - set(known))}; known: {', '.join(known)}")
    need_grams = set(wanted) - {"plan"}
    grams, info = calibrate(m, f"{args.data}:train", 32, 512, 0, 4) if need_grams else (None, None)
    windows = held_out(m.tokenizer, args.seq_len, args.windows, f"{args.data}:test")
    rows_file = rows_path(args.data)
    base = stamp()
    base["command"] = " ".join(["python", "-m", "experiments.prune", *sys.argv[1:]])
    old = [json.loads(x) for x in rows_file.read_text().splitlines() if x.strip()] if rows_file.exists() else []
    rows = []

    def record(name, budget, model, seconds, opts=None, extra=None):
        nll = window_nlls(model.params, model.cfg, windows)
        lo, hi = bootstrap(nll)
        n = count_params(model.params)
        row = {**base, "arm": name, "budget": budget, "options": None if opts is None else opts.to_dict(),
               "params": n, "removed": round(1 - n / total, 4), "bytes": param_bytes(model.params),
               "ppl": math.exp(nll.mean()), "ci95": [lo, hi], "windows": len(windows), "seq_len": args.seq_len,
               "data": f"{args.data}:test",
               "calibration": info, "seconds": round(seconds, 1), "window_nll": nll.round(6).tolist(), **(extra or {})}
        rows.append(row)
        print(f"{name:18s} budget {budget:.2f}  removed {row['removed']:.3f}  PPL {row['ppl']:8.2f} "
              f"[{lo:.2f}, {hi:.2f}]  {seconds:.0f} s", file=sys.stderr, flush=True)

    if args.arms is None or not any(r["arm"] == "dense" for r in old):
        record("dense", 0.0, m, 0.0)
    for budget in args.budgets:
        for name, (method, opts) in arms(m.cfg, total, budget).items():
            if name not in wanted:
                continue
            t0 = time.perf_counter()
            out, _ = METHODS[method].apply(m, opts, grams)
            record(name, budget, out, time.perf_counter() - t0, opts)
            del out
        if "plan" in wanted:
            out, seconds, report = plan_model(budget, args.data)
            chosen = report.get("budget", {}).get("rows") or report.get("plan")
            record("plan", budget, out, seconds, extra={"plan": chosen, "methods": PLAN_METHODS,
                                                         "calibration": {"data": f"{args.data}:train", "windows": 32,
                                                                         "seq_len": 512, "seed": 0}})
            del out
    ran = {(r["arm"], r["budget"]) for r in rows}
    merged = [r for r in old if (r["arm"], r["budget"]) not in ran] + rows
    order = {a: i for i, a in enumerate(["dense", *known])}
    merged.sort(key=lambda r: (r["budget"], order.get(r["arm"], len(order))))
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in merged))
    write_report(merged, rows_file.with_suffix(".md"))


def write_report(rows: list[dict], path: Path) -> None:
    dense = next(r for r in rows if r["arm"] == "dense")
    commits = sorted({r["commit"][:10] for r in rows})
    runs = sorted({r["command"] for r in rows})
    lines = ["# Width pruning vs Basis Sharing, SVD-LLM and the budgeted plan on SmolLM2-135M (not healed)", "",
             f"{', '.join(f'`{c}`' for c in runs)} at commit{'s' if len(commits) > 1 else ''} {', '.join(commits)}, "
             f"{dense['machine']}; {dense.get('data', 'wiki:test')}, {dense['windows']} x {dense['seq_len']} tokens, bootstrap 95% CI. "
             f"Dense: {dense['ppl']:.2f} [{dense['ci95'][0]:.2f}, {dense['ci95'][1]:.2f}].", "",
             "| budget | arm | params removed | PPL [95% CI] | x dense |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["arm"] == "dense":
            continue
        lines.append(f"| {r['budget']:.0%} | {r['arm']} | {r['removed']:.1%} | {r['ppl']:.2f} "
                     f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | {r['ppl'] / dense['ppl']:.2f} |")
    lines += plan_against_best(rows)
    lines += per_layer_against_uniform(rows)
    path.write_text("\n".join(lines) + "\n")


def paired(a: dict, b: dict, reps: int = 10000) -> tuple[float, float, float, int]:
    """(mean a - b per-window NLL, 95% paired-bootstrap interval, windows where a is lower)."""
    import numpy as np

    d = np.asarray(a["window_nll"]) - np.asarray(b["window_nll"])
    means = d[np.random.default_rng(0).integers(0, len(d), (reps, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi), int((d < 0).sum())


def per_layer_against_uniform(rows: list[dict]) -> list[str]:
    """Each per-layer arm against the uniform arm with the same channels removed, on the same windows."""
    out = []
    for r in rows:
        if not r["arm"].startswith("prune-mlp-pl"):
            continue
        u = next((x for x in rows if x["budget"] == r["budget"] and x["arm"] == r["arm"].replace("-pl", "")), None)
        if u is None:
            continue
        m, lo, hi, n = paired(r, u)
        verdict = "per-layer is better" if hi < 0 else "uniform is better" if lo > 0 else "no difference outside the noise"
        out.append(f"- −{r['budget']:.0%}: {r['arm']} {r['ppl']:.2f} against {u['arm']} {u['ppl']:.2f}: {m:+.4f} nats "
                   f"per token [{lo:+.4f}, {hi:+.4f}] (per-layer lower on {n} of {len(r['window_nll'])}): {verdict}")
    return ["", "Per-layer widths (`--per-layer`) against the same number of channels removed uniformly:", ""] + out \
        if out else []


def plan_against_best(rows: list[dict], reps: int = 10000) -> list[str]:
    """At each budget with a plan row: the plan against the lowest single method on the same windows,
    the mean per-window NLL difference with a paired bootstrap 95% interval."""
    import numpy as np

    out = []
    for b in sorted({r["budget"] for r in rows if r["arm"] == "plan"}):
        plan = next(r for r in rows if r["arm"] == "plan" and r["budget"] == b)
        single = [r for r in rows if r["budget"] == b and r["arm"] not in ("plan", "dense")]
        if not single:
            continue
        best = min(single, key=lambda r: r["ppl"])
        d = np.asarray(plan["window_nll"]) - np.asarray(best["window_nll"])
        means = d[np.random.default_rng(0).integers(0, len(d), (reps, len(d)))].mean(axis=1)
        lo, hi = np.percentile(means, [2.5, 97.5])
        verdict = ("the plan is better" if hi < 0 else f"{best['arm']} is better" if lo > 0
                   else "no difference outside the noise")
        out.append(f"- −{b:.0%}: plan {plan['ppl']:.2f} (removed {plan['removed']:.1%}) against the best single "
                   f"method, {best['arm']} {best['ppl']:.2f}: plan − {best['arm']} = {d.mean():+.4f} nats per token "
                   f"[{lo:+.4f}, {hi:+.4f}] (paired bootstrap over windows; plan lower on {int((d < 0).sum())} of "
                   f"{len(d)}): {verdict}")
    return ["", f"The budgeted plan (methods {PLAN_METHODS}) against the lowest single method:", ""] + out \
        if out else []


if __name__ == "__main__":
    main()
