"""KD + CE from the corrected teacher into the other −20% students: does teacher correction pay
for the budgeted plan's and the Basis Sharing student as it did for the width-pruned one?

`experiments.heal_teacher` trained the dense model with CE on 50k tokens of books:train (the
corrected teacher) and distilled the −20% width-pruned student from it: KD + CE then beat CE by
0.0075 nats per token. This heals the two other −20% students heal_books healed, the budgeted
plan's (its best −20% model) and Basis Sharing's, with the same command from the same corrected
teacher, at the same settings:

  jaxshare heal STUDENT OUT --teacher <heal_teacher's corrected teacher> --ce-weight 0.5 --trains all

Each is scored on heal_books' held-out windows (the first 32 x 512 of books:test), paired against
heal_books' rows for the same student (ce and kd + ce from the untrained teacher), and on botchan
(32 x 512, a novel none of them trained on), paired against the untrained dense model.

  python -m experiments.heal_teacher_students [--students plan basis] [--tokens 50000]
  python -m experiments.heal_teacher_students --report

It needs heal_teacher's corrected teacher (`python -m experiments.heal_teacher` trains it first).
Rows: experiments/results/heal_teacher_students_books.jsonl (one per student, stamped at its start;
done students are skipped); the report: heal_teacher_students_books.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.common import check_reuse
from benchmarks.train_memory import child_env, run_measured
from experiments.heal import TEACHER, held_out, rel, score, stamp, student
from experiments.heal_teacher import HEAL_ROWS, LR, RESULTS, RUNS, SEQ_LEN, WINDOWS, diff, load, sets
from experiments.heal_teacher import ROWS as TEACHER_ROWS

ROWS = RESULTS / "heal_teacher_students_books.jsonl"
STUDENTS = ("plan", "basis")
NAMES = {"plan": "budgeted plan", "basis": "Basis Sharing", "prune": "width-pruned"}


def corrected(tokens: int) -> Path:
    return RUNS / f"dense_ce_{tokens}" / "final"


def command(name: str, tokens: int) -> tuple[list[str], Path]:
    """The CLI command that heals one student from the corrected teacher, and the model it writes."""
    out = RUNS / f"{name}_0.2_kd_ce_{tokens}"
    return [sys.executable, "-m", "jaxshare", "heal", str(student(name, 0.2, "books", ROWS)), str(out / "model"),
            "--teacher", str(corrected(tokens)), "--data", "books:train", "--eval-data", "books:test", "--tokens",
            str(tokens), "--seq-len", str(SEQ_LEN), "--lr", str(LR), "--trains", "all", "--ce-weight", "0.5",
            "--run-dir", str(out / "run"), *sets({}), "--overwrite", "--json"], out / "model"


def run(args) -> None:
    import json

    from jaxshare.io.load import load_model

    if not corrected(args.tokens).is_dir():
        raise SystemExit(f"heal_teacher_students: no corrected teacher at {corrected(args.tokens)}; "
                         f"run `python -m experiments.heal_teacher --tokens {args.tokens}` first")
    check_reuse(corrected(args.tokens), rel(ROWS))  # heal_teacher's run, made by code this study measures
    tok = load_model(TEACHER, "fp32").tokenizer
    windows = {"books:test": held_out(tok, SEQ_LEN, WINDOWS, "books:test"),
               "botchan": held_out(tok, SEQ_LEN, WINDOWS, "botchan")}
    have = {(r["student"], r["tokens_asked"]) for r in load(ROWS)}
    todo = [s for s in args.students if (s, args.tokens) not in have]
    for i, name in enumerate(todo, 1):
        cmd, ckpt = command(name, args.tokens)
        print(f"[{i}/{len(todo)}] {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        st = stamp("experiments.heal_teacher_students")  # the code the heal starts with
        out = run_measured(cmd, child_env())  # its exact peak RSS, from wait4
        if out["rc"]:
            raise SystemExit(f"heal_teacher_students: {name} exited {out['rc']}: "
                             f"{out['stderr'].strip().splitlines()[-1:]}")
        res, wall = json.loads(out["stdout"].strip().splitlines()[-1]), out["wall_s"]
        row = {"arm": "kd+ce", "student": name, "budget": 0.2, "heal": "kd+ce", "teacher": "the corrected teacher",
               "tokens_asked": args.tokens, "tokens": res["tokens"], "cli": cmd[3:], "wall_s": wall,
               "peak_rss_gib": out["peak_rss_bytes"] / 2**30, "final": score(ckpt, windows["books:test"]), "botchan": score(ckpt, windows["botchan"])}
        print(f"    books:test {row['final']['ppl']:.2f}, botchan {row['botchan']['ppl']:.2f}, {wall:.0f} s, "
              f"peak RSS {row['peak_rss_gib']:.2f} GiB",
              file=sys.stderr, flush=True)
        with ROWS.open("a") as f:
            f.write(json.dumps({**row, **st}) + "\n")


def report() -> str:
    rows = load(ROWS)
    heal = {(r["student"], r["heal"], r["tokens"]): r["final"] for r in load(HEAL_ROWS) if "final" in r}
    teacher = next(r for r in load(TEACHER_ROWS) if r["arm"] == "teacher")
    dense_b = teacher["dense_botchan"]
    lines = ["KD + CE (`--ce-weight 0.5`) from the corrected teacher (heal_teacher's dense model trained with CE "
             "on the same books:train tokens) into the -20% students. books:test: heal_books' 32 x 512 windows; "
             "botchan: 32 x 512 windows none of them trained on. Differences are mean per-window NLL, nats per "
             "token, with a paired bootstrap 95% interval.", "",
             "| student | tokens | books:test PPL [95% CI] | botchan PPL [95% CI] | botchan minus untrained dense "
             "| wall s | peak RSS GiB |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        f, b = r["final"], r["botchan"]
        lines.append(f"| {NAMES.get(r['student'], r['student'])} | {r['tokens']} | {f['ppl']:.2f} [{f['ci95'][0]:.2f}, "
                     f"{f['ci95'][1]:.2f}] | {b['ppl']:.2f} [{b['ci95'][0]:.2f}, {b['ci95'][1]:.2f}] | "
                     f"{diff(b, dense_b)} | {r['wall_s']:.0f} | {r['peak_rss_gib']:.2f} |")
    lines += ["", "Against heal_books (the same windows, the untrained teacher):", ""]
    for r in rows:
        for h in ("ce", "kd+ce"):
            other = heal.get((r["student"], h, r["tokens"]))
            if other:
                lines.append(f"- {NAMES.get(r['student'], r['student'])}: kd+ce from the corrected teacher - {h} "
                             f"(untrained teacher): {r['final']['ppl']:.2f} against {other['ppl']:.2f}, "
                             f"{diff(r['final'], other)}")
    if rows:
        s = rows[-1]
        lines += ["", f"commit {s['commit'][:10]}, {s['machine']}; command: `{s['command']}`"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--students", nargs="+", choices=STUDENTS, default=list(STUDENTS))
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
