"""Healing compressed SmolLM2 at equal token budgets: cross-entropy vs KD vs KD + LoRA.

DATA is --data: books by default (wiki needs the BIG-bench sdist, see docs/models.md). Rows go to
experiments/results/heal_books.jsonl and runs under runs/heal_books/ (wiki: heal.jsonl, runs/heal/).
Students (each at every --budgets fraction of the model's parameters removed, built once with the
CLI a user runs, calibrated on DATA:train, and cached under RUNS/students/):
  basis      jaxshare basis --ratio R (n=2), R scaled to the budget
  datashare  jaxshare compress --ratio B --methods share --keep data (data-aware head sharing)
  inherit    jaxshare inherit --layers k: the first k layers, k nearest the budget
  plan       jaxshare compress --ratio B --methods share,basis,prune,prune-kv --calib-windows 32
             --calib-seq-len 512 (the budgeted plan; the model experiments/prune.py's plan arm scores)
  prune      jaxshare prune --mlp R --compensate: MLP channels, R scaled to the budget
  prunekv    jaxshare prune --mlp R --kv-groups 1/3 --compensate: one KV group per layer, MLP channels
             for the rest of the budget
Healing of each student (RUNS/<student>_<heal>_<tokens>/):
  ce         the plain recipe: next-token cross-entropy, every leaf the kind allows trains
  kd         the heal recipe: KL(teacher || student) at tau 1 over the full vocabulary, all leaves
  kd+lora    the heal recipe with only rank-16 LoRA adapters training (base weights frozen)
  kd+ce      the heal recipe with half label cross-entropy mixed in (kd_alpha 0.5), all leaves
The control (unless --no-control): the dense model itself trained with ce on the same tokens. Part
of what healing buys is the training text (its domain, its style), which the dense model would
take up too; the control says how much, and the healed students are compared with it as well.
All on DATA:train, the same windows in the same order, --tokens each, cosine lr with warm-up;
lr fixed before any run (ce and kd: --lr; LoRA: --lora-lr), never tuned on the held-out text.
Held-out: the first --windows windows of --seq-len tokens of DATA:test, evaluated every
--eval-tokens during training (the curve) and at the end per window, with a bootstrap 95%
interval of the PPL over windows. Recovered = (ln PPL_student - ln PPL_healed) /
(ln PPL_student - ln PPL_dense), in nats. Each run is its own process: its peak RSS is its own.

  python -m experiments.heal [--data books] [--budgets 0.2,0.1] [--students basis,plan,inherit,datashare]
                             [--heals ce,kd,kd+lora] [--tokens 50000]
  python -m experiments.heal --report [--data books]   # markdown table + PNG of held-out PPL against tokens
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import common

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
RUNS = ROOT / "runs" / "heal"
ROWS = RESULTS / "heal.jsonl"
DATA = ("books", "wiki")
TEACHER = "smollm2-135m"
LINEAR_SHARE = 106168320 / 134515008  # SmolLM2-135M: the linear weights' share of all parameters
LAYER_PARAMS = 3540096  # one SmolLM2-135M decoder layer


def sh(cmd: list[str]) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def rows_path(data: str) -> Path:
    """wiki's rows keep the name they were written under before books existed."""
    return ROWS if data == "wiki" else RESULTS / f"heal_{data}.jsonl"


def rel(path: Path) -> str:
    return Path(path).resolve().relative_to(ROOT).as_posix()


def runs_dir(data: str) -> Path:
    return RUNS if data == "wiki" else RUNS.with_name(f"heal_{data}")


def student(name: str, budget: float, data: str = "wiki", result: Path | None = None) -> Path:
    """The compressed student's native checkpoint, built once with the user's CLI, calibrated on
    DATA:train (wiki's prune and plan students were built with the CLI's default calibration);
    reused only while the code `result` (default this study's rows) measures is unchanged."""
    from jaxshare.io.native import is_native

    out = runs_dir(data) / "students" / f"{name}_{budget:g}"
    if is_native(out):
        common.check_reuse(out, rel(result or rows_path(data)))
        return out
    common.mark_made(out)
    js = [sys.executable, "-m", "jaxshare"]
    calib = ["--calib", data]
    if name == "basis":
        sh(js + ["basis", TEACHER, str(out), "--ratio", f"{budget / LINEAR_SHARE:.4f}", *calib, "--overwrite"])
    elif name == "datashare":
        sh(js + ["compress", TEACHER, str(out), "--ratio", str(budget), "--methods", "share", "--keep", "data",
                 *calib, "--overwrite"])
    elif name == "plan":
        sh(js + ["compress", TEACHER, str(out), "--ratio", str(budget), "--methods", "share,basis,prune,prune-kv",
                 "--calib-windows", "32", "--calib-seq-len", "512", *(calib if data != "wiki" else []), "--overwrite"])
    elif name == "prune":  # MLP channels only, compensated (experiments/prune.py's prune-mlp+comp arm)
        mlp = round(budget * 134515008 / (3 * 576 * 30)) / 1536
        sh(js + ["prune", TEACHER, str(out), "--mlp", f"{mlp:.6f}", "--compensate",
                 *(calib if data != "wiki" else []), "--overwrite"])
    elif name == "prunekv":  # one of the three KV groups per layer, MLP channels for the rest (prune-mlp+kv+comp)
        group = 30 * 2 * 576 * 64 * 4  # its 3 query heads, k, v and o's rows, in every layer
        mlp = round((budget * 134515008 - group) / (3 * 576 * 30)) / 1536
        sh(js + ["prune", TEACHER, str(out), "--mlp", f"{mlp:.6f}", "--kv-groups", f"{1 / 3:.6f}", "--compensate",
                 *(calib if data != "wiki" else []), "--overwrite"])
    elif name == "inherit":
        k = 30 - round(budget * 134515008 / LAYER_PARAMS)
        sh(js + ["inherit", TEACHER, str(out), "--layers", str(k), "--overwrite"])
    else:
        raise SystemExit(f"unknown student {name}")
    return out


def held_out(tokenizer, seq_len: int, n: int, corpus: str = "wiki:test") -> np.ndarray:
    from jaxshare.data.corpora import load_corpus
    from jaxshare.data.tokens import token_windows, tokenize_corpus

    return token_windows(tokenize_corpus(tokenizer, load_corpus(corpus)), seq_len, n)


def window_nlls(params, cfg, windows: np.ndarray) -> np.ndarray:
    """Mean next-token NLL of each window (fp32, the METHODS.md protocol)."""
    import jax.numpy as jnp

    from jaxshare.eval.perplexity import window_nll

    out = [np.asarray(window_nll(params, cfg, jnp.asarray(windows[i:i + 4]), jnp.float32, None))
           for i in range(0, len(windows), 4)]
    return np.concatenate(out).astype(np.float64) / (windows.shape[1] - 1)


def bootstrap(nll: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of PPL = exp(mean window NLL) over windows resampled with replacement."""
    rng = np.random.default_rng(seed)
    means = nll[rng.integers(0, len(nll), (reps, len(nll)))].mean(axis=1)
    return float(math.exp(np.percentile(means, 2.5))), float(math.exp(np.percentile(means, 97.5)))


def score(path, windows) -> dict:
    from jaxshare.core.params import count_params, param_bytes
    from jaxshare.io.load import load_model

    m = load_model(str(path), "fp32")
    nll = window_nlls(m.params, m.cfg, windows)
    lo, hi = bootstrap(nll)
    return {"ppl": math.exp(nll.mean()), "nll": float(nll.mean()), "ci95": [lo, hi], "params": count_params(m.params),
            "bytes": param_bytes(m.params), "window_nll": nll.round(6).tolist()}


def one(args) -> dict:
    """Train one (student, heal) arm in this process and score it; print one JSON row."""
    from jaxshare.training.config import build_config
    from jaxshare.training.trainer import Trainer

    if args.student == "dense" and args.heal != "ce":
        raise SystemExit("the dense control trains with ce only (kd against itself is zero)")
    budget = "" if args.budget is None else f"_{args.budget:g}"
    run = runs_dir(args.data) / f"{args.student}{budget}_{args.heal.replace('+', '_')}_{args.tokens}"
    if args.eval_data != f"{args.data}:test":  # a check on another split (experiments/heal_lr.py) keeps its own runs
        run = run.with_name(f"{run.name}_{args.eval_data.replace(':', '_')}_lr{args.lr:g}")
    src = TEACHER if args.student == "dense" else student(args.student, args.budget, args.data)
    per_step = args.batch * args.seq_len
    base = dict(model=str(src), data=f"{args.data}:train", eval_data=args.eval_data, run_dir=str(run), tokens=args.tokens,
                steps=0, seq_len=args.seq_len, batch_size=args.batch, warmup_steps=args.warmup, end_lr_ratio=0.1,
                dtype="fp32", eval_windows=args.windows, eval_every=max(1, args.eval_tokens // per_step),
                eval_batch_size=4, checkpoint_every=0, export_hf=False, progress=False, tensorboard=False,
                mesh="data=1,fsdp=1", seed=0, ratio=0.0)
    if args.heal == "ce":
        tc = build_config({**base, "mode": "plain", "lr": args.lr})
    else:
        tc = build_config({**base, "mode": "heal", "teacher": TEACHER, "lr": args.lora_lr if "lora" in args.heal
                           else args.lr, "trains": "lora" if "lora" in args.heal else "all",
                           "lora_rank": args.rank, "lora_alpha": 2.0 * args.rank,
                           "kd_alpha": 0.5 if args.heal == "kd+ce" else 0.0})
    common.mark_made(run)  # what experiments.leaderboard checks before it scores the checkpoint
    t0 = time.time()
    res = Trainer(tc, overwrite=True).run()
    wall = time.time() - t0
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    rates = [r["tok_per_s"] for r in rows if "tok_per_s" in r][2:]  # the first steps compile
    from jaxshare.io.load import load_model

    windows = held_out(load_model(TEACHER, "fp32").tokenizer, args.seq_len, args.windows, args.eval_data)
    return {"student": args.student, "budget": args.budget, "heal": args.heal, "tokens": res["tokens"],
            "lr": tc.lr, "recipe": res.get("recipe"), "trainable_params": res.get("trainable_params"),
            "adapter_params": res.get("adapter_params"), "final": score(run / "final", windows),
            "curve": [{"tokens": r["step"] * per_step, "ppl": r["eval_ppl"]} for r in rows if "eval_ppl" in r],
            "tok_per_s_median": float(np.median(rates)) if rates else None,
            "tok_per_s_iqr": [float(np.percentile(rates, 25)), float(np.percentile(rates, 75))] if rates else None,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "wall_s": wall}


def baseline(name: str, budget: float | None, args) -> dict:
    from jaxshare.io.load import load_model

    path = TEACHER if name == "dense" else student(name, budget, args.data)
    windows = held_out(load_model(TEACHER, "fp32").tokenizer, args.seq_len, args.windows, args.eval_data)
    return {"student": name, "budget": budget, "heal": "none", "tokens": 0, "final": score(path, windows)}


def stamp(module: str = "experiments.heal") -> dict:
    """benchmarks.common.stamp, with the flat keys the rows written before it carry."""
    st = common.stamp(module)
    v = st["versions"]
    return {"commit": st["commit"], "dirty": st["dirty"], "date": st["date"], "command": st["command"],
            "machine": f"{platform.machine()} {st['machine']['cpu']} {st['machine']['cores']} cpus",
            "accelerator": st["machine"]["accelerator"], "python": v["python"], "jax": v.get("jax"),
            "jaxshare": v.get("jaxshare"), "versions": v}


def done(path: Path) -> set:
    if not path.is_file():
        return set()
    return {(r["student"], r["budget"], r["heal"], r.get("tokens_asked", r["tokens"]))
            for r in map(json.loads, path.read_text().splitlines())}


def child(kind: str, args, **kw) -> dict:
    """Run one arm in a fresh process (its own peak RSS); its last stdout line is the row."""
    cmd = [sys.executable, "-m", "experiments.heal", "--one", kind, "--tokens", str(args.tokens),
           "--seq-len", str(args.seq_len), "--batch", str(args.batch), "--windows", str(args.windows),
           "--lr", str(args.lr), "--lora-lr", str(args.lora_lr), "--rank", str(args.rank),
           "--eval-tokens", str(args.eval_tokens), "--warmup", str(args.warmup), "--data", args.data]
    for k, v in kw.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    out = subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(args) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = rows_path(args.data)
    have = done(out)
    todo = [("dense", None, "none", 0)] + ([("dense", None, "ce", args.tokens)] if args.control else [])
    for b in args.budgets:
        for s in args.students:
            todo.append((s, b, "none", 0))
            todo += [(s, b, h, args.tokens) for h in args.heals]
    for s, b, h, tokens in todo:
        if (s, b, h, tokens) in have:
            continue
        print(f"== {s} {b} {h} {tokens}", file=sys.stderr, flush=True)
        st = stamp()  # the code the run starts with (the tree may move on while it trains)
        try:
            row = child("base", args, student=s, budget=b) if h == "none" else \
                child("arm", args, student=s, budget=b, heal=h)
        except subprocess.CalledProcessError as e:
            row = {"student": s, "budget": b, "heal": h, "tokens": tokens, "error": f"exit {e.returncode}"}
        row.update(tokens_asked=tokens, seq_len=args.seq_len, **st)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")


def paired_diff(a: dict, b: dict, reps: int = 10000) -> tuple[np.ndarray, float, float]:
    """(per-window NLL of a minus b, 95% paired-bootstrap interval of its mean): the windows are
    shared, so the pair is what to resample."""
    d = np.asarray(a["final"]["window_nll"]) - np.asarray(b["final"]["window_nll"])
    means = d[np.random.default_rng(0).integers(0, len(d), (reps, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return d, float(lo), float(hi)


def paired(rows: list[dict], reps: int = 10000) -> list[str]:
    """KD against CE on the same held-out windows, per student: the mean per-window NLL difference
    with a paired bootstrap 95% interval (the windows are shared, so the pair is what to resample)."""
    arm = {(r["student"], r["budget"], r["heal"], r["tokens"]): r for r in rows if "final" in r}
    out = []
    for (student, budget, heal, tokens), kd in arm.items():
        ce = arm.get((student, budget, "ce", tokens))
        if heal not in ("kd", "kd+ce") or ce is None:
            continue
        name = {"kd": "KD", "kd+ce": "KD+CE"}[heal]
        d, lo, hi = paired_diff(kd, ce, reps)
        verdict = f"{name} better" if hi < 0 else "CE better" if lo > 0 else "no difference outside the noise"
        out.append(f"- {student} -{budget:.0%}, {tokens} tokens: {name} - CE = {d.mean():+.4f} nats per token "
                   f"[{lo:+.4f}, {hi:+.4f}] (paired bootstrap over windows; {name} lower on {int((d < 0).sum())} of "
                   f"{len(d)}): {verdict}")
    return ["", "KD against CE on the same windows:", ""] + out if out else []


def control(rows: list[dict], reps: int = 10000) -> list[str]:
    """The dense model trained with ce on the same tokens, and each healed student against it (paired
    over the windows): how much of a heal is the training text, which the dense model takes up too."""
    ctl = {r["tokens"]: r for r in rows if r["student"] == "dense" and r["heal"] == "ce" and "final" in r}
    if not ctl:
        return []
    dense = next(r for r in rows if r["student"] == "dense" and r["heal"] == "none")
    base = {(r["student"], r["budget"]): r for r in rows if r["heal"] == "none" and r["student"] != "dense"}
    out = []
    for tokens, c in sorted(ctl.items()):
        d, lo, hi = paired_diff(c, dense, reps)
        f = c["final"]
        out.append(f"- dense + ce, {tokens} tokens (the control): {f['ppl']:.2f} [{f['ci95'][0]:.2f}, {f['ci95'][1]:.2f}], "
                   f"{d.mean():+.4f} nats per token [{lo:+.4f}, {hi:+.4f}] from the dense model (lower on "
                   f"{int((d < 0).sum())} of {len(d)})")
        for r in rows:
            b = base.get((r["student"], r["budget"]))
            if r["student"] == "dense" or r["heal"] == "none" or r["tokens"] != tokens or "final" not in r or b is None:
                continue
            d, lo, hi = paired_diff(r, c, reps)
            gap = b["final"]["nll"] - f["nll"]
            rec = f"{(b['final']['nll'] - r['final']['nll']) / gap:.1%}" if gap > 0 else "-"
            out.append(f"- {r['student']} -{r['budget']:.0%} {r['heal']} {r['final']['ppl']:.2f} - control = "
                       f"{d.mean():+.4f} nats per token [{lo:+.4f}, {hi:+.4f}] (lower on {int((d < 0).sum())} of "
                       f"{len(d)}); recovered against the control {rec}")
    return ["", "The control: the dense model trained with ce on the same tokens, and each healed arm against it:",
            ""] + out


def plan_vs_singles(rows: list[dict], reps: int = 10000) -> list[str]:
    """The budgeted plan against the lowest single-method student at the same budget, heal and
    tokens (paired bootstrap over the shared windows): does the plan stay ahead after healing?"""
    arm = {(r["student"], r["budget"], r["heal"], r["tokens"]): r for r in rows if "final" in r}
    out = []
    for (student, budget, heal, tokens), plan in arm.items():
        if student != "plan":
            continue
        singles = [r for (s, b, h, t), r in arm.items() if s not in ("plan", "dense") and b == budget and h == heal
                   and t == tokens]
        if not singles:
            continue
        best = min(singles, key=lambda r: r["final"]["nll"])
        d, lo, hi = paired_diff(plan, best, reps)
        verdict = "the plan is better" if hi < 0 else f"{best['student']} is better" if lo > 0 else \
            "no difference outside the noise"
        out.append(f"- -{budget:.0%}, {heal}, {tokens} tokens: plan {plan['final']['ppl']:.2f} vs {best['student']} "
                   f"{best['final']['ppl']:.2f}: plan - {best['student']} = {d.mean():+.4f} nats per token "
                   f"[{lo:+.4f}, {hi:+.4f}] (plan lower on {int((d < 0).sum())} of {len(d)}): {verdict}")
    return ["", "The budgeted plan against the lowest single-method student, same heal and tokens:", ""] + out \
        if out else []


def more_tokens(rows: list[dict], reps: int = 10000) -> list[str]:
    """Each arm run at more than one token budget against its shortest run, and the lowest two arms
    at each (budget, tokens) with a longer run: what the extra tokens buy, paired over the windows."""
    arm = {(r["student"], r["budget"], r["heal"], r["tokens"]): r for r in rows
           if "final" in r and r["heal"] != "none" and r["student"] != "dense"}
    out = []
    for (student, budget, heal, tokens), long in arm.items():
        short = [r for (s, b, h, t), r in arm.items() if (s, b, h) == (student, budget, heal) and t < tokens]
        if not short:
            continue
        s = min(short, key=lambda r: r["tokens"])
        d, lo, hi = paired_diff(long, s, reps)
        out.append(f"- {student} -{budget:.0%} {heal}: {tokens} tokens {long['final']['ppl']:.2f} vs {s['tokens']} "
                   f"{s['final']['ppl']:.2f}: {d.mean():+.4f} nats per token [{lo:+.4f}, {hi:+.4f}] (lower on "
                   f"{int((d < 0).sum())} of {len(d)})")
    for budget, tokens in sorted({(b, t) for (_, b, _, t) in arm if t > min(k[3] for k in arm)}):
        at = sorted((r for (_, b, _, t), r in arm.items() if (b, t) == (budget, tokens)), key=lambda r: r["final"]["nll"])
        if len(at) < 2:
            continue
        a, b = at[:2]
        d, lo, hi = paired_diff(a, b, reps)
        verdict = "outside the noise" if hi < 0 else "no difference outside the noise"
        out.append(f"- -{budget:.0%}, {tokens} tokens, the lowest two: {a['student']} {a['heal']} {a['final']['ppl']:.2f} vs "
                   f"{b['student']} {b['heal']} {b['final']['ppl']:.2f}: {d.mean():+.4f} nats per token [{lo:+.4f}, "
                   f"{hi:+.4f}] (lower on {int((d < 0).sum())} of {len(d)}): {verdict}")
    return ["", "More tokens (paired bootstrap over the shared windows):", ""] + out if out else []


def report(data: str = "wiki") -> None:
    from jaxshare import plots

    path = rows_path(data)
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    dense = next(r for r in rows if r["student"] == "dense" and r["heal"] == "none")
    d_nll = dense["final"]["nll"]
    base = {(r["student"], r["budget"]): r for r in rows if r["heal"] == "none" and r["student"] != "dense"}
    lines = [f"SmolLM2-135M-Instruct healed at equal tokens of {data}:train; held-out: {data}:test, "
             f"{len(dense['final']['window_nll'])} windows; dense PPL {dense['final']['ppl']:.2f} "
             f"[{dense['final']['ci95'][0]:.2f}, {dense['final']['ci95'][1]:.2f}]", "",
             "| student | removed | heal | tokens | params | PPL [95% CI] | recovered (nats) | tok/s (median) "
             "| peak RSS GiB |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["student"] == "dense" or "error" in r:
            if "error" in r:
                lines.append(f"| {r['student']} | {r['budget']:.0%} | {r['heal']} | {r['tokens']} | - | {r['error']} "
                             "| - | - | - |")
            continue
        f, b = r["final"], base.get((r["student"], r["budget"]))
        removed = 1 - f["params"] / dense["final"]["params"]
        rec = "-"
        if b is not None and r["heal"] != "none":
            gap = b["final"]["nll"] - d_nll
            rec = f"{(b['final']['nll'] - f['nll']) / gap:.1%}" if gap > 0 else "-"
        rate = f"{r['tok_per_s_median']:.0f}" if r.get("tok_per_s_median") else "-"
        rss = f"{r['peak_rss_gib']:.1f}" if r.get("peak_rss_gib") else "-"
        lines.append(f"| {r['student']} | {removed:.1%} | {r['heal']} | {r['tokens']} | {f['params'] / 1e6:.1f}M | "
                     f"{f['ppl']:.2f} [{f['ci95'][0]:.2f}, {f['ci95'][1]:.2f}] | {rec} | {rate} | {rss} |")
    lines += control(rows)
    lines += paired(rows)
    lines += plan_vs_singles(rows)
    lines += more_tokens(rows)
    s = rows[-1]
    lines += ["", f"commit {s['commit'][:10]}, {s['machine']}, python {s['python']}, jax {s['jax']}; "
                  f"command: `{s['command']}`"]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    panels: dict[str, dict] = {}
    for r in rows:
        if r.get("curve") and r["student"] != "dense":
            curve = r["curve"]
            b = base.get((r["student"], r["budget"]))
            if b is not None and curve[0]["tokens"] > 0:  # the ce runs do not evaluate the start: the student's row
                curve = [{"tokens": 0, "ppl": b["final"]["ppl"]}] + curve
            # one panel per student and budget on its own scale (Inheritune starts at 1e9, the pruned
            # student at 58); the token budget is in the label, so two budgets of one arm are two curves
            panel = panels.setdefault(f"{r['student']} -{r['budget']:.0%}", {})
            panel[f"{r['heal']} {r.get('tokens_asked', r['tokens']) // 1000}k"] = (
                [c["tokens"] / 1000 for c in curve], [c["ppl"] for c in curve])
    for r in rows:  # the control in every panel: what the same tokens do to the dense model
        if r["student"] == "dense" and r.get("curve"):
            for panel in panels.values():
                panel[f"dense ce {r.get('tokens_asked', r['tokens']) // 1000}k"] = (
                    [0] + [c["tokens"] / 1000 for c in r["curve"]], [dense["final"]["ppl"]] + [c["ppl"] for c in r["curve"]])
    if panels:
        colors = {"ce": "tab:blue", "kd": "tab:orange", "kd+ce": "tab:green", "kd+lora": "tab:red"}
        style = {label: {"color": colors.get(label.split()[0], "black"),
                         "linestyle": ":" if label.startswith("dense") else "-" if label.endswith(" 50k") else "--"}
                 for panel in panels.values() for label in panel}
        plots.curve_panels(panels, path.with_suffix(".png"), f"held-out PPL ({data}:test, "
                           f"{len(dense['final']['window_nll'])} x {dense.get('seq_len', 512)}) while healing; "
                           f"dense {dense['final']['ppl']:.2f}", "training tokens (thousands)", "PPL (log scale)", style=style,
                           hline=(dense["final"]["ppl"], "dense"))
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",")], default=[0.2, 0.1])
    ap.add_argument("--students", type=lambda s: s.split(","), default=["basis", "plan", "inherit", "datashare"])
    ap.add_argument("--heals", type=lambda s: s.split(","), default=["ce", "kd", "kd+lora"])
    ap.add_argument("--tokens", type=int, default=50000)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--eval-tokens", type=int, default=12288)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--data", default="books", choices=DATA, help="corpus: training on DATA:train, PPL on DATA:test")
    ap.add_argument("--no-control", dest="control", action="store_false",
                    help="skip the control (the dense model trained with ce on the same tokens)")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--one", choices=["arm", "base"], help=argparse.SUPPRESS)
    ap.add_argument("--student", help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--heal", help=argparse.SUPPRESS)
    ap.add_argument("--eval-data", help=argparse.SUPPRESS)  # default DATA:test
    args = ap.parse_args()
    args.eval_data = args.eval_data or f"{args.data}:test"
    if args.report:
        report(args.data)
    elif args.one == "arm":
        print(json.dumps(one(args)))
    elif args.one == "base":
        row = baseline(args.student, args.budget, args)
        row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(row))
    else:
        run(args)


if __name__ == "__main__":
    main()
