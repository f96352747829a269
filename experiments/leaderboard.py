"""One leaderboard of the compression methods at matched whole-model parameter budgets.

Arms (each at every --budgets fraction of the model's parameters removed; the dense row first):
  directshare  DirectShare (match qk, keep=mean), its ratio bisected to the budget
  basis        Basis Sharing, n=2 layers per basis, ratio scaled to the budget
  svd-llm      SVD-LLM (whitened SVD per layer), ratio scaled to the budget
  magnitude    plain magnitude pruning of the q/k/v weights, the same number of weights zeroed
  magnitude-linear  the same over every linear matrix (those Basis Sharing and SVD-LLM factorize)
Metrics: wiki test and canterbury PPL (METHODS.md protocol, the first --windows windows of
--seq-len tokens), acc / acc_norm on the local BIG-bench tasks (lm-eval's scoring, jaxshare's
backend, the first --limit items of each). Rows go to a JSONL as they finish, so a run resumes.

  python -m experiments.leaderboard [--budgets 0.03] [--limit 50] [--windows 8] [--arms ...]
  python -m experiments.leaderboard --report     # markdown table + PNG score vs parameters
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ARMS = ("dense", "directshare", "basis", "svd-llm", "magnitude", "magnitude-linear")
CORPORA = ("wiki:test", "canterbury")


def n_params(params) -> int:
    import jax
    import jax.numpy as jnp

    return int(sum(x.size for x in jax.tree_util.tree_leaves(params) if jnp.issubdtype(x.dtype, jnp.floating)))


def directshare_at(m, budget: float):
    """DirectShare (qk, keep=mean) with the ratio whose whole-model reduction is nearest the budget."""
    from jaxshare.headshare.directshare import direct_share

    lo, hi, best = 0.0, 0.95, None
    for _ in range(7):  # units are discrete: a few halvings settle on the nearest count
        mid = (lo + hi) / 2
        try:
            shared, info = direct_share(m.params, m.cfg, mid, "qk", "mean")
        except ValueError:
            hi = mid
            continue
        got = info["report"]["model_fraction_removed"]
        if best is None or abs(got - budget) < abs(best[2] - budget):
            best = (shared, mid, got)
        lo, hi = (mid, hi) if got < budget else (lo, mid)
    if best is None:
        raise ValueError(f"DirectShare cannot reach a {budget:.0%} budget")
    return best[0], {"ratio": best[1], "match": "qk", "keep": "mean"}


def basis_at(m, budget: float, method: str, grams):
    """Basis Sharing (n=2) or SVD-LLM, its linear-weight ratio scaled so the model loses `budget`."""
    from jaxshare.basis.compress import compress

    before = n_params(m.params)
    ratio, out = 0.2, None
    for _ in range(2):  # removal is ~linear in the ratio: one probe, one correction
        params, _, rep = compress(m.params, m.cfg, grams, ratio, 2 if method == "basis" else 1, method, None, None)
        got = 1 - n_params(params) / before
        out = (params, {"ratio": ratio, "group_size": 2 if method == "basis" else 1})
        ratio = min(0.95, ratio * budget / max(got, 1e-9))
    return out


def magnitude_at(m, budget: float):
    from experiments.directshare_sweep import magnitude_prune

    n = int(round(budget * n_params(m.params)))
    attn = m.params.layers.attn
    have = sum(int(np.size(getattr(attn, w))) for w in ("wq", "wk", "wv"))
    if n > have:
        raise ValueError(f"magnitude pruning of q/k/v cannot remove {n:,} weights: they hold {have:,}")
    return magnitude_prune(m.params, n), {"zeroed": n, "matrices": "q,k,v"}


LINEAR = {"attn": ("wq", "wk", "wv", "wo"), "mlp": ("w_gate", "w_up", "w_down")}


def magnitude_linear_at(m, budget: float):
    """Zero the smallest-magnitude weights globally over every linear matrix of the layers (the
    matrices Basis Sharing and SVD-LLM factorize), as many as the budget removes."""
    import jax.numpy as jnp

    n = int(round(budget * n_params(m.params)))
    lay = m.params.layers
    leaves = {(g, w): getattr(getattr(lay, g), w) for g, ws in LINEAR.items() for w in ws
              if getattr(getattr(lay, g), w, None) is not None}
    mags = np.concatenate([np.abs(np.asarray(x)).ravel() for x in leaves.values()])
    if n > mags.size:
        raise ValueError(f"the linear matrices hold {mags.size:,} weights, fewer than the {n:,} to remove")
    thresh = np.partition(mags, n - 1)[n - 1] if n else -1.0
    del mags
    new = {g: dataclasses.replace(getattr(lay, g), **{w: jnp.where(jnp.abs(x) <= thresh, 0.0, x)
                                                     for (gg, w), x in leaves.items() if gg == g})
           for g in LINEAR}
    params = dataclasses.replace(m.params, layers=dataclasses.replace(lay, **new))
    return params, {"zeroed": n, "matrices": ",".join(w for _, w in leaves)}


def evaluate_arm(m, params, args) -> dict:
    from jaxshare.data.corpora import load_corpus
    from jaxshare.eval.harness import JaxshareLM
    from jaxshare.eval.mc import evaluate
    from jaxshare.eval.perplexity import perplexity

    ppl = {c: perplexity(params, m.cfg, m.tokenizer, load_corpus(c), args.seq_len, args.windows)["ppl"] for c in CORPORA}
    lm = JaxshareLM.from_loaded(dataclasses.replace(m, params=params), batch_size=args.batch_size)
    mc = evaluate(lm, args.tasks, args.limit)["tasks"]
    return {"ppl": ppl, "mc": mc}


def run(args) -> None:
    from jaxshare.eval.mc import parse_tasks
    from jaxshare.io.load import load_model

    args.tasks = parse_tasks(args.tasks)
    out = RESULTS / "leaderboard.jsonl"
    done = set()
    if out.exists():
        done = {(r["arm"], r["budget"]) for r in map(json.loads, out.read_text().splitlines()) if r.get("limit") == args.limit}
    m = load_model(args.model, "fp32")
    dense_params = n_params(m.params)
    grams = None
    for arm in args.arms:
        for budget in ([0.0] if arm == "dense" else args.budgets):
            if (arm, budget) in done:
                continue
            t0 = time.time()
            if arm == "dense":
                params, how = m.params, {}
            elif arm == "directshare":
                params, how = directshare_at(m, budget)
            elif arm in ("basis", "svd-llm"):
                if grams is None:
                    from jaxshare.basis.calibrate import calibrate

                    grams, calib = calibrate(m, "wiki:train", args.calib_windows, args.seq_len)
                params, how = basis_at(m, budget, arm, grams)
                how["calibration"] = f"wiki:train {args.calib_windows} x {args.seq_len}"
            else:
                try:
                    params, how = (magnitude_at if arm == "magnitude" else magnitude_linear_at)(m, budget)
                except ValueError as e:  # a budget this arm cannot reach: say so, go on
                    print(f"{arm} {budget:.0%}: skipped: {e}", file=sys.stderr)
                    continue
            row = {"model": args.model, "arm": arm, "budget": budget, "how": how, "limit": args.limit,
                   "params": dense_params - how["zeroed"] if arm.startswith("magnitude") else n_params(params),
                   "dense_params": dense_params, "windows": args.windows, "seq_len": args.seq_len,
                   **evaluate_arm(m, params, args)}
            row["removed"] = 1 - row["params"] / dense_params
            row["seconds"] = time.time() - t0
            RESULTS.mkdir(parents=True, exist_ok=True)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{arm} {budget:.0%}: removed {row['removed']:.2%}, ppl {row['ppl']}, "
                  f"acc {np.mean([v['acc'] for v in row['mc'].values()]):.3f} ({row['seconds']:.0f} s)", file=sys.stderr)


def report() -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in (RESULTS / "leaderboard.jsonl").read_text().splitlines() if x.strip()]
    rows.sort(key=lambda r: (r["arm"] != "dense", r["budget"], ARMS.index(r["arm"])))
    tasks = list(rows[0]["mc"])
    head = ("| arm | budget | removed | params | wiki PPL | canterbury PPL | " + " | ".join(tasks)
            + " | mean acc | mean acc_norm |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        accs = [r["mc"][t]["acc"] for t in tasks]
        norms = [r["mc"][t]["acc_norm"] for t in tasks]
        lines.append(f"| {r['arm']} | {r['budget']:.0%} | {r['removed']:.2%} | {r['params'] / 1e6:.1f}M | "
                     f"{r['ppl']['wiki:test']:.2f} | {r['ppl']['canterbury']:.2f} | "
                     + " | ".join(f"{a:.3f}/{n:.3f}" for a, n in zip(accs, norms))
                     + f" | {np.mean(accs):.3f} | {np.mean(norms):.3f} |")
    r0 = rows[0]
    lines.append(f"\nacc/acc_norm per task, first {r0['limit']} items of each; PPL on the first {r0['windows']} "
                 f"windows of {r0['seq_len']} tokens.")
    (RESULTS / "leaderboard.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in ARMS:
        pts = [(r["params"] / 1e6, np.mean([r["mc"][t]["acc"] for t in tasks])) for r in rows if r["arm"] == arm]
        if pts:
            ax.plot(*zip(*sorted(pts)), "o-" if len(pts) > 1 else "o", label=arm)
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel(f"mean acc over {len(tasks)} tasks")
    ax.set_title(f"{r0['model']}: score vs parameters (limit {r0['limit']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "leaderboard.png", dpi=120)
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--arms", default=",".join(ARMS), type=lambda s: [a for a in s.split(",") if a])
    ap.add_argument("--budgets", default="0.03", type=lambda s: [float(x) for x in s.split(",")])
    ap.add_argument("--tasks", default="all")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--calib-windows", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    if args.report:
        report()
        return
    unknown = set(args.arms) - set(ARMS)
    if unknown:
        sys.exit(f"leaderboard: unknown arms {sorted(unknown)}; known: {', '.join(ARMS)}")
    run(args)


if __name__ == "__main__":
    main()
