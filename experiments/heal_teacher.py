"""KD from a corrected teacher: does distillation heal the pruned student better when its teacher has
first trained on the healing text?

`experiments.heal --data books` found pure KD far behind cross-entropy on books (the −20% pruned
student: 60.77 against 52.98 after 50k tokens). KD's target there is the untrained dense model,
which has never seen these books, where CE's target is the books themselves. Pruning-and-distillation
recipes (Minitron's "teacher correction") first fine-tune the teacher on the distillation text. This
runs that recipe with the commands a user runs, at heal_books' settings (the same windows in the same
order, lr, warm-up, schedule and seed):

  teacher   jaxshare train plain: the dense model trained with CE on the same 50k tokens of
            books:train (the configuration of heal_books' control arm, so its PPL should match it)
  kd        jaxshare heal STUDENT OUT --teacher <the corrected teacher> --ce-weight 0
  kd+ce     the same with --ce-weight 0.5

STUDENT is heal_books' −20% width-pruned student (runs/heal_books/students/prune_0.2, built by
experiments.heal if missing). Each arm is scored on heal_books' held-out windows (the first 32 x 512
of books:test), paired against heal_books' rows for the same student (ce, kd, kd+ce from the
untrained teacher), and on botchan (32 x 512, a novel none of them trained on), paired against the
untrained dense model.

  python -m experiments.heal_teacher [--tokens 50000]
  python -m experiments.heal_teacher --report

Rows: experiments/results/heal_teacher_books.jsonl (one per arm, stamped at its start; done arms are
skipped); the report: heal_teacher_books.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common
from experiments.heal import ROOT, TEACHER, held_out, runs_dir, score, stamp, student
from experiments.prune import paired

RESULTS = ROOT / "experiments" / "results"
ROWS = RESULTS / "heal_teacher_books.jsonl"
HEAL_ROWS = RESULTS / "heal_books.jsonl"
RUNS = runs_dir("books") / "teacher"
ARMS = ("teacher", "kd", "kd+ce")
# heal_books' settings (experiments.heal defaults, --eval-tokens 16384): config keys for --set
SEQ_LEN, BATCH, WINDOWS, LR = 512, 2, 32, 2e-4
SETTINGS = {"batch_size": BATCH, "warmup_steps": 5, "end_lr_ratio": 0.1, "dtype": "fp32", "eval_windows": WINDOWS,
            "eval_every": 16384 // (BATCH * SEQ_LEN), "eval_batch_size": 4, "checkpoint_every": 0, "export_hf": "false",
            "progress": "false", "tensorboard": "false", "mesh": "data=1,fsdp=1", "seed": 0, "ratio": 0.0}


def sets(extra: dict) -> list[str]:
    return [a for k, v in {**SETTINGS, **extra}.items() for a in ("--set", f"{k}={v}")]


def command(arm: str, tokens: int) -> tuple[list[str], Path]:
    """The CLI command of one arm and the checkpoint it leaves."""
    js = [sys.executable, "-m", "jaxshare"]
    data = {"data": "books:train", "eval_data": "books:test", "tokens": tokens, "seq_len": SEQ_LEN, "lr": LR}
    corrected = RUNS / f"dense_ce_{tokens}"
    if arm == "teacher":
        return js + ["train", "plain", *sets({**data, "model": TEACHER, "run_dir": corrected}), "--overwrite",
                     "--json"], corrected / "final"
    out = RUNS / f"prune_0.2_{arm.replace('+', '_')}_{tokens}"
    return js + ["heal", str(student("prune", 0.2, "books", ROWS)), str(out / "model"), "--teacher",
                 str(corrected / "final"), "--data", "books:train", "--eval-data", "books:test", "--tokens",
                 str(tokens), "--seq-len", str(SEQ_LEN), "--lr", str(LR), "--trains", "all", "--ce-weight",
                 "0.5" if arm == "kd+ce" else "0", "--run-dir", str(out / "run"), *sets({}), "--overwrite",
                 "--json"], out / "model"


def load(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []


def run(args) -> None:
    from jaxshare.io.load import load_model

    tok = load_model(TEACHER, "fp32").tokenizer
    windows = {"books:test": held_out(tok, SEQ_LEN, WINDOWS, "books:test"),
               "botchan": held_out(tok, SEQ_LEN, WINDOWS, "botchan")}
    have = {(r["arm"], r["tokens_asked"]) for r in load(ROWS)}
    todo = [a for a in ARMS if (a, args.tokens) not in have]
    for i, arm in enumerate(todo, 1):
        cmd, ckpt = command(arm, args.tokens)
        print(f"[{i}/{len(todo)}] {arm}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        st = stamp("experiments.heal_teacher")  # the code the arm starts with
        common.mark_made(ckpt.parent)  # what the students' study checks before it heals from the teacher
        t0 = time.time()
        out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        wall = time.time() - t0
        if out.returncode:
            raise SystemExit(f"heal_teacher: {arm} exited {out.returncode}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        # student, budget, heal and tokens_asked as heal_books' rows have them (the docs' provenance table)
        dense = arm == "teacher"
        row = {"arm": arm, "student": "dense" if dense else "prune", "budget": None if dense else 0.2,
               "heal": "ce" if dense else arm, "teacher": TEACHER if dense else "the corrected teacher",
               "tokens_asked": args.tokens, "tokens": res["tokens"], "cli": cmd[3:], "wall_s": wall,
               "final": score(ckpt, windows["books:test"]), "botchan": score(ckpt, windows["botchan"])}
        if dense:  # the untrained model on botchan: what every arm's botchan score is paired with
            row["dense_botchan"] = score(TEACHER, windows["botchan"])
        print(f"    books:test {row['final']['ppl']:.2f}, botchan {row['botchan']['ppl']:.2f}, {wall:.0f} s",
              file=sys.stderr, flush=True)
        with ROWS.open("a") as f:
            f.write(json.dumps({**row, **st}) + "\n")


def diff(a: dict, b: dict) -> str:
    m, lo, hi, n = paired(a, b)
    return f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}] ({n} of {len(a['window_nll'])} lower)"


def report() -> str:
    rows = load(ROWS)
    heal = {(r["student"], r["heal"], r["tokens"]): r["final"] for r in load(HEAL_ROWS) if "final" in r}
    teacher = next(r for r in rows if r["arm"] == "teacher")
    dense_b = teacher["dense_botchan"]
    tokens = teacher["tokens"]
    lines = ["KD from a corrected teacher (the dense model trained with CE on the same books:train tokens) into "
             f"the -20% width-pruned student, {tokens} tokens. books:test: heal_books' 32 x 512 windows; "
             "botchan: 32 x 512 windows none of them trained on. Differences are mean per-window NLL, nats per "
             "token, with a paired bootstrap 95% interval.", "",
             "| arm | books:test PPL [95% CI] | botchan PPL [95% CI] | botchan minus untrained dense | wall s |",
             "| --- | --- | --- | --- | --- |",
             f"| dense, untrained | {heal[('dense', 'none', 0)]['ppl']:.2f} | {dense_b['ppl']:.2f} | - | - |"]
    for r in rows:
        f, b = r["final"], r["botchan"]
        name = "corrected teacher (dense + CE)" if r["arm"] == "teacher" else f"prune -20% {r['arm']} from it"
        lines.append(f"| {name} | {f['ppl']:.2f} [{f['ci95'][0]:.2f}, {f['ci95'][1]:.2f}] | {b['ppl']:.2f} "
                     f"[{b['ci95'][0]:.2f}, {b['ci95'][1]:.2f}] | {diff(b, dense_b)} | {r['wall_s']:.0f} |")
    lines += ["", "Against heal_books (the same windows):", ""]
    control = heal.get(("dense", "ce", tokens))
    if control:
        lines.append(f"- corrected teacher - heal_books' control (the same training through experiments.heal): "
                     f"{teacher['final']['ppl']:.2f} against {control['ppl']:.2f}, {diff(teacher['final'], control)}")
    for r in rows:
        if r["arm"] == "teacher":
            continue
        for h in ("ce", "kd", "kd+ce"):
            other = heal.get(("prune", h, tokens))
            if other:
                lines.append(f"- {r['arm']} from the corrected teacher - {h} (untrained teacher): "
                             f"{r['final']['ppl']:.2f} against {other['ppl']:.2f}, {diff(r['final'], other)}")
    s = rows[-1]
    lines += ["", f"commit {s['commit'][:10]}, {s['machine']}; command: `{s['command']}`"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=50000)
    ap.add_argument("--report", action="store_true", help="only rewrite the table from the rows")
    args = ap.parse_args(argv)
    if not args.report:
        RESULTS.mkdir(parents=True, exist_ok=True)
        run(args)
    text = report()
    ROWS.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
