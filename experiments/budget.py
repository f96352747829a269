"""The budgeted plan against each method alone at equal whole-model parameters (issue 13, part 3).

SmolLM2-135M at -10% and -20% of the whole model's parameters:
  plan        `jaxshare compress --ratio` (methods share,basis): per-type sensitivity on
              calibration windows, greedy allocation, held-out check on DATA:validation
  share       DirectShare alone (qk, keep=mean), the unit count that meets the target; head sharing
              only reaches q/k/v (about 12% of the model), so at -20% it reports what it reaches
  basis       Basis Sharing alone (n=2, the family's shared/private types) at one uniform ratio
  magnitude   magnitude pruning of every linear weight (the same fraction of each matrix), as many
              weights zeroed as the plan removes (zeros are stored: params = non-zeros)
DATA is --data: books by default (wiki needs the BIG-bench sdist, see docs/models.md).
Metrics: PPL on DATA:test (wiki adds canterbury; books holds the Canterbury texts) (METHODS.md
protocol, the first --windows windows of --seq-len tokens). Calibration: --calib-windows x --seq-len
tokens of DATA:train (seed 0), shared by every arm. Rows go to benchmarks/results/NAME.jsonl as
they finish (a rerun resumes), NAME budget_DATA (wiki: budget); --report writes NAME.md, NAME.json
and NAME.png, the sensitivities NAME_sensitivity.json (wiki: budget_sensitivity.json).

  python -m experiments.budget [--data books] [--budgets 0.1,0.2] [--windows 8] [--calib-windows 16]
  python -m experiments.budget --report [--data books]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import append_row

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ARMS = ("plan", "share", "basis", "magnitude")


def corpora(data: str) -> tuple[str, ...]:
    return ("wiki:test", "canterbury") if data == "wiki" else (f"{data}:test",)


def name(data: str) -> str:
    """wiki, the first corpus, keeps the original names; each other corpus has its own."""
    return "budget" if data == "wiki" else f"budget_{data}"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def share_alone(m, target: int):
    """DirectShare (qk, mean) with the fewest units that meet the target, or the most units there are."""
    from jaxshare.compose.budget import Budget
    from jaxshare.headshare.directshare import direct_share

    cfg = m.cfg
    b = Budget.of(m.params, cfg)
    L, K = cfg.n_layers, cfg.n_kv_heads
    n = next((n for n in range(L * K) if n <= (L - 1) * K and b.params(L, n, {}) <= target), (L - 1) * K)
    ratio = n / (L * K)
    params, _ = direct_share(m.params, cfg, ratio, "qk", "mean")
    return params, {"ratio": ratio, "units": n, "met_target": b.params(L, n, {}) <= target}


def basis_alone(m, target: int, grams, group_size: int = 2):
    """Basis Sharing of every default type at the smallest uniform ratio that meets the target."""
    from jaxshare.basis.compress import compress
    from jaxshare.methods.basis import basis_ranks
    from jaxshare.compose.budget import Budget

    b = Budget.of(m.params, m.cfg, group_size)
    types = b.types()
    o = {"group_size": group_size, "method": "basis"}
    lo, hi = 0.0, 0.99
    for _ in range(40):  # the params fall monotonically in the ratio (ranks are floors)
        mid = (lo + hi) / 2
        ranks, _ = basis_ranks(m.cfg, {**o, "ratio": mid}, types)
        lo, hi = (lo, mid) if b.params(m.cfg.n_layers, 0, ranks) <= target else (mid, hi)
    ranks, sizes = basis_ranks(m.cfg, {**o, "ratio": hi}, types)
    params, _, _ = compress(m.params, m.cfg, grams, hi, group_size, "basis", [t for t in types if sizes[t] > 1],
                            [t for t in types if sizes[t] == 1], progress=False)
    return params, {"ratio": hi, "ranks": ranks, "group_size": group_size}


def magnitude(m, n_remove: int):
    """Zero the smallest-magnitude fraction f of every linear weight matrix (per layer and type)."""
    import jax.numpy as jnp

    from jaxshare.basis.factor import TYPES, get_type, set_types

    leaves = {t: get_type(m.params.layers, t) for t in TYPES if get_type(m.params.layers, t) is not None}
    total = sum(int(w.size) for w in leaves.values())
    f = n_remove / total
    new, zeroed = {}, 0
    for t, w in leaves.items():
        flat = np.asarray(w).reshape(w.shape[0], -1)  # per layer
        k = int(round(f * flat.shape[1]))
        if k:
            thresh = np.partition(np.abs(flat), k - 1, axis=1)[:, k - 1:k]
            flat = np.where(np.abs(flat) <= thresh, 0.0, flat).astype(flat.dtype)
        zeroed += int(np.sum(flat == 0))
        new[t] = jnp.asarray(flat.reshape(w.shape))
    return set_types(m.params, new), {"fraction_of_each_matrix": f, "zeroed": zeroed}


def ppl(m, params, args) -> dict:
    from jaxshare.data.tokens import token_ids, token_windows
    from jaxshare.eval.perplexity import perplexity_of_windows

    out = {}
    for c in corpora(args.data):
        w = token_windows(token_ids(c, m.tokenizer), args.seq_len, args.windows)
        out[c] = perplexity_of_windows(params, m.cfg, w, args.batch_size, desc=c)["ppl"]
    return out


def run(args) -> None:
    from jaxshare.basis.calibrate import calibrate, calibration_windows
    from jaxshare.compose.apply import apply_plan
    from jaxshare.compose.budget import format_table, refined_plan, sensitivity, verify
    from jaxshare.core.params import count_params
    from jaxshare.data.corpora import load_corpus
    from jaxshare.data.tokens import token_ids, token_windows
    from jaxshare.io.load import load_model

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name(args.data)}.jsonl"
    rows = [json.loads(x) for x in out.read_text().splitlines() if x.strip()] if out.exists() else []
    done = {(r["arm"], r["budget"]) for r in rows}

    def write(row):
        append_row(out, row, "experiments.budget")
        say(f"{row['arm']} {row['budget']:.0%}: removed {row.get('removed', 0):.2%}, ppl {row['ppl']}")

    m = load_model(args.model, "fp32")
    dense = count_params(m.params)
    calib = {"data": f"{args.data}:train", "windows": args.calib_windows, "seq_len": args.seq_len, "seed": 0}
    common = {"model": args.model, "windows": args.windows, "seq_len": args.seq_len, "dense_params": dense,
              "calibration": calib}
    if ("dense", 0.0) not in done:
        write({**common, "arm": "dense", "budget": 0.0, "params": dense, "removed": 0.0, "ppl": ppl(m, m.params, args)})
    say("calibration")
    grams, _ = calibrate(m, calib["data"], calib["windows"], calib["seq_len"], calib["seed"])
    sens_path = RESULTS / f"{name(args.data)}_sensitivity.json"
    windows = calibration_windows(m.tokenizer, load_corpus(calib["data"]), calib["windows"], calib["seq_len"],
                                  calib["seed"])[:args.sens_windows]
    if sens_path.exists():
        sens = json.loads(sens_path.read_text())
    else:
        t0 = time.time()
        sens = sensitivity(m.params, m.cfg, windows, grams, ["share", "basis"], log=say)
        sens["seconds"] = time.time() - t0
        sens_path.write_text(json.dumps(sens, indent=1))
    held = token_windows(token_ids(f"{args.data}:validation", m.tokenizer), args.seq_len, args.heldout_windows)
    for budget in args.budgets:
        target = int(math.floor((1 - budget) * dense))
        plan_params = None
        for arm in args.arms:
            prev = next((r for r in rows if r["arm"] == "plan" and r["budget"] == budget), None)
            if prev is not None:
                plan_params = prev["params"]
            if (arm, budget) in done:
                continue
            t0 = time.time()
            extra = {}
            if arm == "plan":
                plan, details = refined_plan(m.params, m.cfg, 1 - budget, ["share", "basis"], sens, windows, grams,
                                             calibration=calib, log=say)
                sens_path.write_text(json.dumps(sens, indent=1))  # with the points the refinement measured
                say("\n" + format_table(details))
                params, cfg, rep, _ = apply_plan(m.params, m.cfg, plan, grams)
                extra = {"plan": plan.to_dict(), "table": details["rows"], "variants": details["variants"],
                         "refinements": details.get("refinements", 0),
                         "predicted_loss_increase": details["chosen"]["predicted"],
                         "heldout": {"data": f"{args.data}:validation", **verify(m.params, m.cfg, params, cfg, held)}}
                n = count_params(params)
                plan_params = n
            elif arm == "share":
                params, extra = share_alone(m, target)
                n = count_params(params)
            elif arm == "basis":
                params, extra = basis_alone(m, target, grams)
                n = count_params(params)
            else:
                if plan_params is None:
                    raise SystemExit("budget: the magnitude arm matches the plan's parameters; run the plan arm first")
                params, extra = magnitude(m, dense - plan_params)
                n = dense - extra["zeroed"]
            row = {**common, "arm": arm, "budget": budget, "target_params": target, "params": n,
                   "removed": 1 - n / dense, "how": extra, "ppl": ppl(m, params, args), "seconds": time.time() - t0}
            rows.append(row)
            write(row)


def report(data: str) -> None:
    from jaxshare import plots

    stem = name(data)
    CORPORA = corpora(data)
    rows = [json.loads(x) for x in (RESULTS / f"{stem}.jsonl").read_text().splitlines() if x.strip()]
    dense = next(r for r in rows if r["arm"] == "dense")
    budgets = sorted({r["budget"] for r in rows if r["arm"] != "dense"})
    get = {(r["arm"], r["budget"]): r for r in rows}
    lines = [f"SmolLM2-135M ({dense['dense_params'] / 1e6:.1f}M params); PPL on the first {dense['windows']} windows x "
             f"{dense['seq_len']} tokens of each corpus (METHODS.md protocol); calibration "
             f"{dense['calibration']['windows']} x {dense['calibration']['seq_len']} tokens of "
             f"{dense['calibration']['data']}.\n",
             "| budget | arm | params | removed | " + " | ".join(f"{c} PPL" for c in CORPORA) + " | setting |",
             "|---|---|---|---|" + "---|" * len(CORPORA) + "---|",
             f"| 0% | dense | {dense['params'] / 1e6:.2f}M | 0% | "
             + " | ".join(f"{dense['ppl'][c]:.2f}" for c in CORPORA) + " | |"]
    verdict = []
    for b in budgets:
        for arm in ARMS:
            r = get.get((arm, b))
            if r is None:
                continue
            h = r["how"]
            setting = {"plan": lambda: "; ".join(f"{x['what']} {x['setting']}" for x in h.get("table", [])),
                       "share": lambda: f"ratio {h['ratio']:.3f} ({h['units']} units)"
                       + ("" if h["met_target"] else ": the most head sharing can tie, target not reachable"),
                       "basis": lambda: f"uniform ratio {h['ratio']:.3f}, n={h['group_size']}",
                       "magnitude": lambda: f"{h['fraction_of_each_matrix']:.1%} of each linear matrix zeroed"}[arm]()
            lines.append(f"| -{b:.0%} | {arm} | {r['params'] / 1e6:.2f}M | {r['removed']:.2%} | "
                         + " | ".join(f"{r['ppl'][c]:.2f}" for c in CORPORA) + f" | {setting} |")
        p = get.get(("plan", b))
        if p is not None:
            for c in CORPORA:
                others = {a: get[(a, b)]["ppl"][c] for a in ARMS[1:] if (a, b) in get}
                beaten = [a for a, v in others.items() if p["ppl"][c] < v]
                lost = [a for a, v in others.items() if p["ppl"][c] >= v]
                verdict.append(f"-{b:.0%}, {c}: the plan ({p['ppl'][c]:.2f}) beats {', '.join(beaten) or 'none'}"
                               + (f"; it does NOT beat {', '.join(lost)}" if lost else ""))
    text = "\n".join(lines + [""] + [f"- {v}" for v in verdict]) + "\n"
    (RESULTS / f"{stem}.md").write_text(text)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"rows": rows, "verdict": verdict}, indent=1))
    plt = plots._plt()
    fig, axes = plt.subplots(1, len(CORPORA), figsize=(5.5 * len(CORPORA) + 0.5, 4.5), squeeze=False)
    axes = axes[0]
    width = 0.8 / len(ARMS)
    for ax, c in zip(axes, CORPORA):
        for i, arm in enumerate(ARMS):
            xs = [j for j, b in enumerate(budgets) if (arm, b) in get]
            ys = [get[(arm, budgets[j])]["ppl"][c] for j in xs]
            bars = ax.bar(np.array(xs) + (i - (len(ARMS) - 1) / 2) * width, ys, width, label=arm)
            for bar, j in zip(bars, xs):
                r = get[(arm, budgets[j])]
                ax.annotate(f"{r['ppl'][c]:.0f}\n-{r['removed']:.1%}", (bar.get_x() + bar.get_width() / 2,
                            bar.get_height()), ha="center", va="bottom", fontsize=6)
        ax.axhline(dense["ppl"][c], color="black", linestyle="--", label=f"dense ({dense['ppl'][c]:.1f})")
        ax.set_yscale("log")
        ax.set_xticks(range(len(budgets)))
        ax.set_xticklabels([f"-{b:.0%} of the model" for b in budgets])
        ax.set_ylabel(f"{c} PPL (log)")
        ax.set_title(f"{c}: budgeted plan vs single methods")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.suptitle(f"SmolLM2-135M at equal whole-model parameters ({dense['windows']} x {dense['seq_len']} tokens; "
                 "bar labels: PPL and the share of parameters actually removed)", fontsize=9)
    fig.tight_layout()
    plots._save(fig, RESULTS / f"{stem}.png")
    print(text)


def main() -> None:
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--arms", default=",".join(ARMS), type=lambda s: [a for a in s.split(",") if a])
    ap.add_argument("--data", default="books", help="corpus: calibration on DATA:train, PPL on DATA:test")
    ap.add_argument("--budgets", default="0.1,0.2", type=lambda s: [float(x) for x in s.split(",")])
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--calib-windows", type=int, default=16)
    ap.add_argument("--sens-windows", type=int, default=4)
    ap.add_argument("--heldout-windows", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--results-dir", type=Path, default=None, help="where the JSONL, tables and plot go "
                                                                   "(default: benchmarks/results)")
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    RESULTS = args.results_dir or RESULTS
    if args.report:
        report(args.data)
        return
    unknown = set(args.arms) - set(ARMS)
    if unknown:
        sys.exit(f"budget: unknown arms {sorted(unknown)}; known: {', '.join(ARMS)}")
    run(args)
    report(args.data)


if __name__ == "__main__":
    main()

