"""One leaderboard of the compression methods at matched whole-model parameter budgets.

Arms (each at every --budgets fraction of the model's parameters removed; the dense row first):
  directshare  DirectShare (match qk, keep=mean), its ratio bisected to the budget
  basis        Basis Sharing, n=2 layers per basis, ratio scaled to the budget
  svd-llm      SVD-LLM (whitened SVD per layer), ratio scaled to the budget
  prune-mlp    structured width pruning of MLP channels (jaxshare prune --compensate), a smaller dense model
  prune-mlp+kv the same plus one of SmolLM2's three KV groups per layer (experiments/prune.py's arms)
  magnitude    plain magnitude pruning of the q/k/v weights, the same number of weights zeroed
  magnitude-linear  the same over every linear matrix (those Basis Sharing and SVD-LLM factorize)
  directshare+postshare  DirectShare as above, then the shared model post-trained (trainer mode
               direct+post: the bank rows train, the index stays) on --train-tokens of wiki:train
  inherit      Inheritune's cut: the first k layers, k the depth whose removal is nearest the budget
  inheritune   the same k layers trained with the plain LM loss on --train-tokens of wiki:train
The trained arms see --train-tokens more text than the others; their runs are kept under
runs/leaderboard/ and reused. --checkpoints ARM=DIR adds a row for a native checkpoint trained
elsewhere (e.g. the Inheritune experiment's half-depth model) at whatever budget it removes; an
ARM may repeat (one row per checkpoint), its budget and "trained on" tokens are the checkpoint's.
Healed arms (experiments/heal.py's checkpoints, only through --checkpoints) are named STUDENT+HEAL:
STUDENT one of basis, datashare, inherit, plan, prune-mlp (heal.py's students; its `prune` is
prune-mlp), HEAL one of ce, kd, kd+ce, kd+lora; e.g. prune-mlp+ce=runs/heal/prune_0.2_ce_50000/final. The
heal is checked against the run's result.json beside the checkpoint, whose tokens are the row's
"trained on"; a STUDENT alone (plan=runs/heal/students/plan_0.2) is the unhealed student.
Metrics: wiki test and canterbury PPL (METHODS.md protocol, the first --windows windows of
--seq-len tokens), acc / acc_norm on the local BIG-bench tasks (lm-eval's scoring, jaxshare's
backend, the first --limit items of each). Rows go to a JSONL as they finish, so a run resumes.

  python -m experiments.leaderboard [--budgets 0.03] [--limit 50] [--windows 8] [--arms ...]
  python -m experiments.leaderboard --arms "" --limit 20 --windows 4 \
      --checkpoints plan+ce=runs/heal/plan_0.2_ce_50000/final,prune-mlp+kd=runs/heal/prune_0.2_kd_50000/final
  python -m experiments.leaderboard --report     # markdown table + PNG score vs parameters
  python -m experiments.leaderboard --chance     # only leaderboard_chance.json (--report writes it too)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import append_row

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ARMS = ("dense", "directshare", "directshare+postshare", "basis", "svd-llm", "prune-mlp", "prune-mlp+kv", "magnitude",
        "magnitude-linear", "inherit", "inheritune")
TRAINED = {"directshare+postshare": 1e-3, "inheritune": 3e-4}  # lr of each method's own experiment
HEAL_STUDENTS = ("basis", "datashare", "inherit", "plan", "prune-mlp")  # experiments/heal.py's students
HEALS = ("ce", "kd", "kd+ce", "kd+lora")  # experiments/heal.py's heals


def healed(arm: str) -> tuple[str, str | None] | None:
    """(student, heal) of a healed arm name STUDENT+HEAL, (student, None) of a student alone, else None."""
    if arm in HEAL_STUDENTS:
        return arm, None
    for s in HEAL_STUDENTS:
        if arm.startswith(s + "+") and arm[len(s) + 1:] in HEALS:
            return s, arm[len(s) + 1:]
    return None


def arm_order(arm: str) -> tuple[int, int]:
    """Sort key: the ARMS order, each healed arm right after its student (students not in ARMS after them)."""
    student, heal = healed(arm) or (arm, None)
    base = ARMS.index(student) if student in ARMS else len(ARMS) + HEAL_STUDENTS.index(student)
    return base, 0 if heal is None else 1 + HEALS.index(heal)


def heal_of(result: dict) -> str:
    """The heal a heal.py run made, from its result.json: plain mode is ce; heal mode kd+lora with
    adapters, kd+ce where the recipe's loss mixes in label cross-entropy (kd_alpha > 0), else kd."""
    if result.get("mode") == "plain":
        return "ce"
    if result.get("adapter_params"):
        return "kd+lora"
    return "kd+ce" if "* CE" in (result.get("recipe") or {}).get("loss", "") else "kd"


def parse_checkpoints(s: str) -> list[tuple[str, str]]:
    """ARM=DIR,ARM=DIR,... as (arm, dir) pairs, in order; an arm may repeat."""
    out = []
    for kv in (x for x in s.split(",") if x):
        if "=" not in kv:
            raise argparse.ArgumentTypeError(f"--checkpoints wants ARM=DIR, got {kv!r}")
        arm, path = kv.split("=", 1)
        out.append((arm, path))
    return out


def checkpoint_how(arm: str, path: str, layers: int) -> dict:
    """The row's `how` for a native checkpoint: its path, depth and, from the result.json of the run
    beside it, its training tokens; a healed arm's heal must be the one the run made."""
    how = {"checkpoint": path, "layers": layers}
    result = Path(path).parent / "result.json"
    res = json.loads(result.read_text()) if result.is_file() else None
    if res is not None:
        how["trained_tokens"] = res.get("tokens")
    h = healed(arm)
    if h is not None and h[1] is not None:
        if res is None:
            raise SystemExit(f"leaderboard: {arm}={path}: no {result} to say how it was healed")
        if heal_of(res) != h[1]:
            raise SystemExit(f"leaderboard: {arm}={path} was healed with {heal_of(res)}, not {h[1]}")
        how.update(student=h[0], heal=h[1], train_data="wiki:train", recipe=res.get("recipe", {}).get("loss"))
    return how
CORPORA = ("wiki:test", "canterbury")


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
    if best is None or abs(best[2] - budget) > 0.1 * budget:
        most = f" (the nearest it gets is {best[2]:.1%})" if best else ""
        raise ValueError(f"DirectShare cannot reach a {budget:.0%} budget{most}")
    return best[0], {"ratio": best[1], "match": "qk", "keep": "mean"}


def basis_at(m, budget: float, method: str, grams):
    """Basis Sharing (n=2) or SVD-LLM, its linear-weight ratio scaled so the model loses `budget`."""
    from jaxshare.basis.compress import compress
    from jaxshare.core.params import count_params

    before = count_params(m.params)
    ratio, out = 0.2, None
    for _ in range(2):  # removal is ~linear in the ratio: one probe, one correction
        params, _, rep = compress(m.params, m.cfg, grams, ratio, 2 if method == "basis" else 1, method, None, None)
        got = 1 - count_params(params) / before
        out = (params, {"ratio": ratio, "group_size": 2 if method == "basis" else 1})
        ratio = min(0.95, ratio * budget / max(got, 1e-9))
    return out


def magnitude_at(m, budget: float):
    from experiments.directshare_sweep import magnitude_prune
    from jaxshare.core.params import count_params

    n = int(round(budget * count_params(m.params)))
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

    from jaxshare.core.params import count_params

    n = int(round(budget * count_params(m.params)))
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


def inherit_depth(m, budget: float) -> int:
    """Layers kept: the first k, k chosen so the removed layers' share of the model is nearest the budget."""
    from jaxshare.core.params import count_params

    L = m.cfg.n_layers
    per_layer = count_params(m.params.layers) / L
    drop = int(round(budget * count_params(m.params) / per_layer))
    if not 1 <= drop < L:
        raise ValueError(f"removing {budget:.0%} means dropping {drop} of {L} layers")
    return L - drop


def inherit_at(m, budget: float):
    from jaxshare.inheritune.inherit import inherit

    k = inherit_depth(m, budget)
    params, cfg, extra = inherit(m.params, m.cfg, k, dict(m.meta.get("extra", {})))
    return params, cfg, extra, {"layers": k}


def trained(m, arm: str, budget: float, args):
    """(params, cfg, how) of a trained arm, its run reused when it finished before."""
    from experiments.inheritune import train_arm
    from jaxshare.io.native import is_native, load_native, save_native
    from jaxshare.training.config import build_config
    from jaxshare.training.trainer import Trainer

    run_dir = ROOT / "runs" / "leaderboard" / f"{arm.replace('+', '_')}_{budget:g}_{args.train_tokens}"
    lr = TRAINED[arm]
    setup = dict(tokens=args.train_tokens, seq_len=args.train_seq_len, batch_size=4, lr=lr, warmup=2, dtype="fp32",
                 windows=2)
    if arm == "inheritune":
        params, cfg, extra, how = inherit_at(m, budget)
        if not is_native(run_dir / "init"):
            save_native(run_dir / "init", cfg, params, m.tokenizer, extra=extra, overwrite=True)
        del params
        train_arm(run_dir / "init", run_dir / "run", argparse.Namespace(**setup))
        final = run_dir / "run" / "final"
    else:
        _, how = directshare_at(m, budget)
        final = run_dir / "final"
        if not (run_dir / "result.json").is_file():
            tc = build_config(dict(mode="direct+post", model=args.model, run_dir=str(run_dir), ratio=how["ratio"],
                                   match="qk", keep="mean", tokens=args.train_tokens, steps=0,
                                   seq_len=args.train_seq_len, batch_size=4, lr=lr, warmup_steps=2, dtype="fp32",
                                   data="wiki:train", eval_data="wiki:validation", eval_windows=2, eval_every=0,
                                   checkpoint_every=0, export_hf=False, progress=False, mesh="data=1,fsdp=1"))
            Trainer(tc, overwrite=True).run()  # an attempt killed before it finished
    cfg, params, _ = load_native(final)
    how.update(trained_tokens=args.train_tokens, train_data="wiki:train", lr=lr,
               batch=f"4 x {args.train_seq_len}")
    return params, cfg, how


def evaluate_arm(m, params, args, cfg=None) -> dict:
    from jaxshare.data.corpora import load_corpus
    from jaxshare.eval.harness import JaxshareLM
    from jaxshare.eval.mc import evaluate
    from jaxshare.eval.perplexity import perplexity

    cfg = cfg or m.cfg
    ppl = {c: perplexity(params, cfg, m.tokenizer, load_corpus(c), args.seq_len, args.windows)["ppl"] for c in CORPORA}
    lm = JaxshareLM.from_loaded(dataclasses.replace(m, params=params, cfg=cfg), batch_size=args.batch_size)
    mc = evaluate(lm, args.tasks, args.limit)["tasks"]
    return {"ppl": ppl, "mc": mc}


def run(args) -> None:
    from jaxshare.core.params import count_params
    from jaxshare.eval.mc import parse_tasks
    from jaxshare.io.load import load_model

    args.tasks = parse_tasks(args.tasks)
    out = Path(args.out)
    done = set()  # (arm, budget, trained tokens) at this --limit: an arm's other token budgets are other rows
    if out.exists():
        done = {(r["arm"], r["budget"], r["how"].get("trained_tokens"))
                for r in map(json.loads, out.read_text().splitlines()) if r.get("limit") == args.limit}
    m = load_model(args.model, "fp32")
    dense_params = count_params(m.params)
    grams = None
    jobs = [(arm, b, None) for arm in args.arms for b in ([0.0] if arm == "dense" else args.budgets)]
    for arm, budget, path in jobs + [(arm, None, path) for arm, path in args.checkpoints]:
        t0, cfg = time.time(), None
        tokens = args.train_tokens if arm in TRAINED else None
        if path is not None:  # a checkpoint trained elsewhere: its budget is what it removes
            from jaxshare.io.native import load_native

            cfg, params, _ = load_native(path)
            budget = round(1 - count_params(params) / dense_params, 2)
            how = checkpoint_how(arm, path, cfg.n_layers)
            tokens = how.get("trained_tokens")
        if (arm, budget, tokens) in done:
            continue
        try:  # a budget an arm cannot reach: say so, go on
            if cfg is not None:  # the checkpoint loaded above
                pass
            elif arm == "dense":
                params, how = m.params, {}
            elif arm == "directshare":
                params, how = directshare_at(m, budget)
            elif arm in ("basis", "svd-llm"):
                if grams is None:
                    from jaxshare.basis.calibrate import calibrate

                    grams, calib = calibrate(m, "wiki:train", args.calib_windows, args.seq_len)
                params, how = basis_at(m, budget, arm, grams)
                how["calibration"] = f"wiki:train {args.calib_windows} x {args.seq_len}"
            elif arm.startswith("prune"):
                from experiments.prune import arms as prune_arms
                from jaxshare.methods import METHODS

                if grams is None:
                    from jaxshare.basis.calibrate import calibrate

                    grams, calib = calibrate(m, "wiki:train", args.calib_windows, args.seq_len)
                method, opts = prune_arms(m.cfg, dense_params, budget)[f"{arm}+comp"]
                pruned = METHODS[method].apply(m, opts, grams)[0]
                params, cfg, how = pruned.params, pruned.cfg, opts.to_dict()
                how["calibration"] = f"wiki:train {args.calib_windows} x {args.seq_len}"
            elif arm in TRAINED:
                params, cfg, how = trained(m, arm, budget, args)
            elif arm == "inherit":
                params, cfg, _, how = inherit_at(m, budget)
            else:
                params, how = (magnitude_at if arm == "magnitude" else magnitude_linear_at)(m, budget)
        except ValueError as e:
            print(f"{arm} {budget:.0%}: skipped: {e}", file=sys.stderr)
            continue
        row = {"model": args.model, "arm": arm, "budget": budget, "how": how, "limit": args.limit,
               "params": dense_params - how["zeroed"] if arm.startswith("magnitude") else count_params(params),
               "dense_params": dense_params, "windows": args.windows, "seq_len": args.seq_len,
               **evaluate_arm(m, params, args, cfg)}
        row["removed"] = 1 - row["params"] / dense_params
        row["seconds"] = time.time() - t0
        out.parent.mkdir(parents=True, exist_ok=True)
        append_row(out, row, "experiments.leaderboard")
        print(f"{arm} {budget:.0%}: removed {row['removed']:.2%}, ppl {row['ppl']}, "
              f"acc {np.mean([v['acc'] for v in row['mc'].values()]):.3f} ({row['seconds']:.0f} s)", file=sys.stderr)


def mean_acc(r: dict, key: str = "acc") -> tuple[float, float]:
    """Mean over the tasks and its standard error (the tasks' stderrs, independent items)."""
    v = list(r["mc"].values())
    return float(np.mean([t[key] for t in v])), float(np.sqrt(sum(t[f"{key}_stderr"] ** 2 for t in v)) / len(v))


def chance_acc(task: str, limit: int) -> float:
    """What guessing scores on the first `limit` items: the mean of 1 / (number of choices)."""
    from jaxshare.eval.tasks import load_rows

    return float(np.mean([1 / len(r["choices"]) for r in load_rows(task)[:limit]]))


def write_chance(rows: list) -> None:
    """leaderboard_chance.json: what guessing scores on the first `limit` items of each task, for every
    --limit the rows ran at (the chance row of the docs' table, benchmarks.tables)."""
    from benchmarks.common import stamp

    tasks = list(rows[0]["mc"])
    chance = {str(limit): {t: chance_acc(t, limit) for t in tasks} for limit in sorted({r["limit"] for r in rows})}
    out = {"what": "mean of 1 / (number of choices) over the first `limit` items of each task (jaxshare.eval.tasks)",
           "stamp": stamp("experiments.leaderboard"), "chance": chance}
    (RESULTS / "leaderboard_chance.json").write_text(json.dumps(out, indent=2) + "\n")


def fmt_ppl(x: float) -> str:
    return f"{x:.2f}" if x < 1000 else f"{x:,.0f}"


def table(rows: list) -> list[str]:
    tasks = list(rows[0]["mc"])
    head = ("| arm | budget | removed | params | trained on | wiki PPL | canterbury PPL | " + " | ".join(tasks)
            + " | mean acc | mean acc_norm |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        (acc, se), (norm, se_n) = mean_acc(r), mean_acc(r, "acc_norm")
        tok = r["how"].get("trained_tokens")
        lines.append(f"| {r['arm']} | {r['budget']:.0%} | {r['removed']:.2%} | {r['params'] / 1e6:.1f}M | "
                     f"{f'{tok:,} tokens' if tok else '-'} | {fmt_ppl(r['ppl']['wiki:test'])} | {fmt_ppl(r['ppl']['canterbury'])} | "
                     + " | ".join(f"{r['mc'][t]['acc']:.3f}/{r['mc'][t]['acc_norm']:.3f}" for t in tasks)
                     + f" | {acc:.3f} ± {se:.3f} | {norm:.3f} ± {se_n:.3f} |")
    r0 = rows[0]
    chance = [chance_acc(t, r0["limit"]) for t in tasks]
    lines.append(f"| chance (1 / choices) | | | | | | | " + " | ".join(f"{c:.3f}" for c in chance)
                 + f" | {np.mean(chance):.3f} | {np.mean(chance):.3f} |")
    lines.append(f"\nacc/acc_norm per task, first {r0['limit']} items of each (mean ± its standard error); PPL on "
                 f"the first {r0['windows']} windows of {r0['seq_len']} tokens.\n")
    return lines


def report() -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in (RESULTS / "leaderboard.jsonl").read_text().splitlines() if x.strip()]
    rows.sort(key=lambda r: (r["arm"] != "dense", r["budget"], arm_order(r["arm"]), r["how"].get("trained_tokens") or 0))
    by_limit = {}
    for r in rows:
        by_limit.setdefault(r["limit"], []).append(r)
    lines = []
    for limit in sorted(by_limit):
        lines += [f"### --limit {limit}", ""] + table(by_limit[limit])
    (RESULTS / "leaderboard.md").write_text("\n".join(lines))
    write_chance(rows)
    main_rows = max(by_limit.values(), key=len)  # the limit every arm ran at
    big = by_limit[max(by_limit)]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.4))

    def series(rs):  # one line per arm and training budget; a row trained elsewhere is its own point
        out = {}
        for r in rs:
            tok = r["how"].get("trained_tokens")
            out.setdefault(f"{r['arm']}{f' ({tok:,} tok)' if tok else ''}", []).append(r)
        return sorted(out.items(), key=lambda kv: arm_order(kv[1][0]["arm"]))

    for i, (label, rs) in enumerate(series(main_rows)):
        pts = sorted((r["params"] / 1e6, r["ppl"]["wiki:test"]) for r in rs)
        ax0.plot(*zip(*pts), "o-" if len(pts) > 1 else "o", label=label)
    for i, (label, rs) in enumerate(series(big)):
        x, y, e = zip(*sorted((r["params"] / 1e6 + 0.35 * i, *mean_acc(r)) for r in rs))  # offset: no overlap
        ax1.errorbar(x, y, yerr=e, fmt="o", capsize=3, label=label)
    tasks = list(big[0]["mc"])
    ax1.axhline(np.mean([chance_acc(t, max(by_limit)) for t in tasks]), color="gray", ls="--", lw=1, label="chance")
    ax0.set_yscale("log")
    ax0.set_xlabel("parameters (M)")
    ax0.set_ylabel("wiki test PPL (log)")
    ax0.set_title(f"{main_rows[0]['model']}: perplexity vs parameters")
    ax0.legend(fontsize=7)
    ax1.set_xlabel("parameters (M)")
    ax1.set_ylabel(f"mean acc over {len(big[0]['mc'])} tasks (± stderr)")
    ax1.set_title(f"accuracy vs parameters (first {max(by_limit)} items per task)")
    ax1.legend(fontsize=7)
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
    ap.add_argument("--train-tokens", type=int, default=10240, help="wiki:train tokens of each trained arm")
    ap.add_argument("--train-seq-len", type=int, default=128)
    ap.add_argument("--checkpoints", default=[], type=parse_checkpoints,
                    help="ARM=DIR,...: rows for native checkpoints trained elsewhere; healed arms STUDENT+HEAL")
    ap.add_argument("--out", default=str(RESULTS / "leaderboard.jsonl"))
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--chance", action="store_true", help="write only leaderboard_chance.json (part of --report)")
    args = ap.parse_args()
    if args.report:
        report()
        return
    if args.chance:
        write_chance([json.loads(x) for x in Path(args.out).read_text().splitlines() if x.strip()])
        return
    unknown = (set(args.arms) - set(ARMS)) | {a for a, _ in args.checkpoints if a not in ARMS and healed(a) is None}
    if unknown:
        sys.exit(f"leaderboard: unknown arms {sorted(unknown)}; known: {', '.join(ARMS)}; checkpoints also "
                 f"STUDENT or STUDENT+HEAL, STUDENT in {', '.join(HEAL_STUDENTS)}, HEAL in {', '.join(HEALS)}")
    run(args)


if __name__ == "__main__":
    main()
