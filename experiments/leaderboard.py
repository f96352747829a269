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
               direct+post: the bank rows train, the index stays) on --train-tokens of DATA:train
  inherit      Inheritune's cut: the first k layers, k the depth whose removal is nearest the budget
  inheritune   the same k layers trained with the plain LM loss on --train-tokens of DATA:train
The trained arms see --train-tokens more text than the others; their runs are kept under
runs/leaderboard/ and reused while the code this study measures is unchanged (benchmarks/common.py's
check_reuse, which also holds each --checkpoints DIR to the mark the experiment that made it left). --checkpoints ARM=DIR adds a row for a native checkpoint trained
elsewhere (e.g. the Inheritune experiment's half-depth model) at whatever budget it removes; an
ARM may repeat (one row per checkpoint), its budget and "trained on" tokens are the checkpoint's.
Healed arms (experiments/heal.py's checkpoints, only through --checkpoints) are named STUDENT+HEAL:
STUDENT one of basis, datashare, inherit, plan, prune-mlp (heal.py's students; its `prune` is
prune-mlp), HEAL one of ce, kd, kd+ce, kd+lora; e.g. prune-mlp+ce=runs/heal/prune_0.2_ce_50000/final. The
heal is checked against the run's result.json beside the checkpoint, whose tokens are the row's
"trained on"; a STUDENT alone (plan=runs/heal/students/plan_0.2) is the unhealed student.
DATA is --data: books by default (wiki needs the BIG-bench sdist, see docs/models.md). Basis,
SVD-LLM and the pruned arms calibrate on --calib-windows x --seq-len tokens of DATA:train.
Metrics: PPL on DATA:test (wiki adds canterbury; books holds the Canterbury texts, so it is not a
second held-out text there) over the first --windows windows of --seq-len tokens (METHODS.md
protocol) with each window's NLL and a bootstrap 95% interval over windows; acc / acc_norm on the
local BIG-bench tasks (lm-eval's scoring, jaxshare's backend, the first --limit items of each;
--limit 0 skips them). Rows go to benchmarks/results/leaderboard_DATA.jsonl (wiki:
leaderboard.jsonl) as they finish, so a run resumes.

  python -m experiments.leaderboard [--data books] [--budgets 0.03] [--limit 0] [--windows 32] [--arms ...]
  python -m experiments.leaderboard --arms "" --checkpoints \
      prune-mlp+ce=runs/heal_books/prune_0.2_ce_50000/final,prune-mlp+kd=runs/heal_books/prune_0.2_kd_50000/final
  python -m experiments.leaderboard --report [--data books]  # markdown table + PNG score vs parameters
  python -m experiments.leaderboard --chance     # only leaderboard_chance.json (--report writes it too)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import append_row, check_reuse, claim

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


def checkpoint_how(arm: str, path: str, layers: int, data: str = "wiki") -> dict:
    """The row's `how` for a native checkpoint: its path, depth and, from the result.json of the run
    beside it, its training tokens; a healed arm's heal must be the one the run made."""
    check_reuse(path, study(data))  # made by the code this leaderboard measures, or refused
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
        how.update(student=h[0], heal=h[1], train_data=f"{data}:train", recipe=res.get("recipe", {}).get("loss"))
    return how


def rows_path(data: str) -> Path:
    """wiki, the first corpus, keeps the original name; each other corpus has its own file."""
    return RESULTS / ("leaderboard.jsonl" if data == "wiki" else f"leaderboard_{data}.jsonl")


def study(data: str) -> str:
    """The results file whose measured code (benchmarks/stale.py) a reused run or checkpoint must match."""
    return rows_path(data).relative_to(ROOT).as_posix()


def corpora(data: str) -> tuple[str, ...]:
    """The held-out texts a row is scored on: DATA:test, and canterbury beside wiki (books contains it)."""
    return ("wiki:test", "canterbury") if data == "wiki" else (f"{data}:test",)


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


def prune_at(cfg, total: int, budget: float, arm: str):
    """(method, options) of experiments/prune.py's compensated arm `arm` (prune-mlp or prune-mlp+kv) at
    `budget`, by its arithmetic, building this arm's options only: prune.arms builds every arm's, and
    below one KV group's share the +kv arm's MLP width is negative, which would stop prune-mlp too."""
    from jaxshare.methods import PruneOptions

    L, D, F = cfg.n_layers, cfg.d_model, cfg.d_ff
    per_channel = 3 * D * L  # gate, up and down of one channel in every layer
    if arm == "prune-mlp":
        return "prune", PruneOptions(mlp=round(budget * total / per_channel) / F, compensate=True)
    group = L * 2 * D * cfg.head_dim * (cfg.groups + 1)  # one KV group: its q heads, k, v and o
    return "prune", PruneOptions(mlp=round((budget * total - group) / per_channel) / F, kv_groups=1 / cfg.n_kv_heads,
                                 compensate=True)


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

    tag = "" if args.data == "wiki" else f"_{args.data}"  # the wiki runs keep their names
    run_dir = ROOT / "runs" / "leaderboard" / f"{arm.replace('+', '_')}_{budget:g}_{args.train_tokens}{tag}"
    claim(run_dir, study(args.data))
    lr = TRAINED[arm]
    setup = dict(tokens=args.train_tokens, seq_len=args.train_seq_len, batch_size=4, lr=lr, warmup=2, dtype="fp32",
                 windows=2, data=args.data)
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
                                   data=f"{args.data}:train", eval_data=f"{args.data}:validation", eval_windows=2,
                                   eval_every=0,
                                   checkpoint_every=0, export_hf=False, progress=False, mesh="data=1,fsdp=1"))
            Trainer(tc, overwrite=True).run()  # an attempt killed before it finished
    cfg, params, _ = load_native(final)
    how.update(trained_tokens=args.train_tokens, train_data=f"{args.data}:train", lr=lr,
               batch=f"4 x {args.train_seq_len}")
    return params, cfg, how


def evaluate_arm(m, params, args, cfg=None) -> dict:
    """PPL on each held-out text with its per-window NLLs and bootstrap 95% interval; accuracy unless --limit 0."""
    from experiments.heal import bootstrap, held_out, window_nlls

    cfg = cfg or m.cfg
    if not hasattr(args, "windows_of"):  # tokenized once per run
        args.windows_of = {c: held_out(m.tokenizer, args.seq_len, args.windows, c) for c in corpora(args.data)}
    out = {"ppl": {}, "ci95": {}, "window_nll": {}, "mc": {}}
    for c, windows in args.windows_of.items():
        nll = window_nlls(params, cfg, windows)
        out["ppl"][c], out["ci95"][c] = math.exp(nll.mean()), list(bootstrap(nll))
        out["window_nll"][c] = nll.round(6).tolist()
    if args.limit:
        from jaxshare.eval.harness import JaxshareLM
        from jaxshare.eval.mc import evaluate

        lm = JaxshareLM.from_loaded(dataclasses.replace(m, params=params, cfg=cfg), batch_size=args.batch_size)
        out["mc"] = evaluate(lm, args.tasks, args.limit)["tasks"]
    return out


def run(args) -> None:
    from jaxshare.core.params import count_params
    from jaxshare.eval.mc import parse_tasks
    from jaxshare.io.load import load_model

    args.tasks = parse_tasks(args.tasks)
    out = Path(args.out or rows_path(args.data))
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
            how = checkpoint_how(arm, path, cfg.n_layers, args.data)
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

                    grams, calib = calibrate(m, f"{args.data}:train", args.calib_windows, args.seq_len)
                params, how = basis_at(m, budget, arm, grams)
                how["calibration"] = f"{args.data}:train {args.calib_windows} x {args.seq_len}"
            elif arm.startswith("prune"):
                from jaxshare.methods import METHODS

                if grams is None:
                    from jaxshare.basis.calibrate import calibrate

                    grams, calib = calibrate(m, f"{args.data}:train", args.calib_windows, args.seq_len)
                method, opts = prune_at(m.cfg, dense_params, budget, arm)
                pruned = METHODS[method].apply(m, opts, grams)[0]
                params, cfg, how = pruned.params, pruned.cfg, opts.to_dict()
                how["calibration"] = f"{args.data}:train {args.calib_windows} x {args.seq_len}"
            elif arm in TRAINED:
                params, cfg, how = trained(m, arm, budget, args)
            elif arm == "inherit":
                params, cfg, _, how = inherit_at(m, budget)
            else:
                params, how = (magnitude_at if arm == "magnitude" else magnitude_linear_at)(m, budget)
        except ValueError as e:
            print(f"{arm} {budget:.0%}: skipped: {e}", file=sys.stderr)
            continue
        row = {"model": args.model, "arm": arm, "budget": budget, "how": how, "limit": args.limit, "data": args.data,
               "params": dense_params - how["zeroed"] if arm.startswith("magnitude") else count_params(params),
               "dense_params": dense_params, "windows": args.windows, "seq_len": args.seq_len,
               **evaluate_arm(m, params, args, cfg)}
        row["removed"] = 1 - row["params"] / dense_params
        row["seconds"] = time.time() - t0
        out.parent.mkdir(parents=True, exist_ok=True)
        append_row(out, row, "experiments.leaderboard")
        acc = f", acc {np.mean([v['acc'] for v in row['mc'].values()]):.3f}" if row["mc"] else ""
        print(f"{arm} {budget:.0%}: removed {row['removed']:.2%}, ppl {row['ppl']}{acc} ({row['seconds']:.0f} s)",
              file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--arms", default=",".join(ARMS), type=lambda s: [a for a in s.split(",") if a])
    ap.add_argument("--budgets", default="0.03", type=lambda s: [float(x) for x in s.split(",")])
    ap.add_argument("--tasks", default="all")
    ap.add_argument("--data", default="books", help="corpus: calibration and training on DATA:train, PPL on DATA:test")
    ap.add_argument("--limit", type=int, default=0, help="items per multiple-choice task (0: none; needs bigbench)")
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--calib-windows", type=int, default=32, help="the CLI's default calibration size")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--train-tokens", type=int, default=10240, help="DATA:train tokens of each trained arm")
    ap.add_argument("--train-seq-len", type=int, default=128)
    ap.add_argument("--checkpoints", default=[], type=parse_checkpoints,
                    help="ARM=DIR,...: rows for native checkpoints trained elsewhere; healed arms STUDENT+HEAL")
    ap.add_argument("--out", default=None, help="rows (default benchmarks/results/leaderboard_DATA.jsonl)")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--chance", action="store_true", help="write only leaderboard_chance.json (part of --report)")
    args = ap.parse_args()
    if args.report or args.chance:
        from experiments.leaderboard_report import report, report_data, write_chance
    if args.report:
        report() if args.data == "wiki" else report_data(args.data)
        return
    if args.chance:
        write_chance([json.loads(x) for x in Path(args.out or rows_path("wiki")).read_text().splitlines() if x.strip()])
        return
    unknown = (set(args.arms) - set(ARMS)) | {a for a, _ in args.checkpoints if a not in ARMS and healed(a) is None}
    if unknown:
        sys.exit(f"leaderboard: unknown arms {sorted(unknown)}; known: {', '.join(ARMS)}; checkpoints also "
                 f"STUDENT or STUDENT+HEAL, STUDENT in {', '.join(HEAL_STUDENTS)}, HEAL in {', '.join(HEALS)}")
    run(args)


if __name__ == "__main__":
    main()
