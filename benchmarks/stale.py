"""Which committed results the code has moved past.

Each result file belongs to a study: the script that wrote it and the library code whose change can
change its numbers (STUDIES). A result is measured at the commit it records (benchmarks.common.stamp;
for files written before stamping, the commit that last changed the file stands in). It is **stale**
when a commit after that one changed any of the study's paths: its numbers may no longer be what
the code gives, until it is rerun. A Python file changed only in its comments does not count.

    python -m benchmarks.stale              # a table; exit 0
    python -m benchmarks.stale --markdown   # the table the docs' results page includes
    python -m benchmarks.stale --json
"""
from __future__ import annotations

import argparse
import fnmatch
import io
import json
import subprocess
import sys
import tokenize
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ("jaxshare/core", "jaxshare/io", "jaxshare/data")
TRAIN = ("jaxshare/training", "jaxshare/headshare/penalty.py")
# The library without its command-line entry (jaxshare/cli, __main__.py): what a study measures that
# calls library functions and never a `jaxshare` command (checked by importing what it runs).
LIBRARY = tuple(sorted(f"jaxshare/{p.name}" for p in (ROOT / "jaxshare").iterdir()
                       if p.name not in ("cli", "__main__.py", "__pycache__")))

# result-file pattern (relative to the repository) -> the paths whose change can change its numbers
STUDIES: dict[str, tuple[str, ...]] = {
    "benchmarks/results/basis.json": ("benchmarks/basis.py", "jaxshare/basis", *CORE),
    "benchmarks/results/basis_sweep*.json": ("benchmarks/basis_sweep.py", "jaxshare/basis", *CORE),
    # written by `jaxshare basis-pairs` (the command is in its file)
    "benchmarks/results/basis_pairs/*.json": ("jaxshare/cli/basis.py", "jaxshare/basis", *CORE),
    "benchmarks/results/svd_paths.json": ("benchmarks/svd_paths.py", "jaxshare/basis", *CORE),
    "benchmarks/results/budget*": ("experiments/budget.py", "jaxshare/compose", "jaxshare/basis", "jaxshare/headshare",
                                   "jaxshare/eval/perplexity.py", *CORE),
    "benchmarks/results/aot.json": ("benchmarks/aot.py", "train/configs", *TRAIN, *CORE),
    "benchmarks/results/dry_run.json": ("benchmarks/dry_run.py", "jaxshare/cli/train.py", *TRAIN, *CORE),
    "benchmarks/results/cli_startup.json": ("benchmarks/cli_startup.py", "jaxshare/cli", "jaxshare/core", "jaxshare/io"),
    "benchmarks/results/convert.json": ("benchmarks/convert.py", "jaxshare/io", "jaxshare/core"),
    "benchmarks/results/parity.json": ("benchmarks/parity.py", "jaxshare/eval/parity.py", *CORE),
    # run_demo, in-process: the demo's steps, not the command's entry
    "benchmarks/results/demo.json": ("benchmarks/demo.py", "jaxshare/cli/__init__.py", "jaxshare/cli/demo.py",
                                     *LIBRARY),
    "benchmarks/results/degeneration.json": ("benchmarks/degeneration.py", "jaxshare/inheritune",
                                             "jaxshare/eval/attention_maps.py", *CORE),
    "benchmarks/results/eval_mc*.json": ("benchmarks/eval_mc.py", "jaxshare/eval", *CORE),
    "benchmarks/results/suite*": ("benchmarks/suite.py", "tests/conftest.py", "pyproject.toml"),
    "benchmarks/results/forward.json": ("benchmarks/forward.py", *CORE),
    "benchmarks/results/shared_forward.json": ("benchmarks/shared_forward.py", "jaxshare/headshare", *CORE),
    "benchmarks/results/xla_cpu_flags.json": ("benchmarks/xla_cpu_flags.py", *CORE),
    "benchmarks/results/gemm_budget.json": ("benchmarks/gemm_budget.py", "jaxshare/eval/parity.py", *CORE),
    "benchmarks/results/decode_layers.json": ("benchmarks/decode_layers.py", *CORE),
    "benchmarks/results/heal_*.json": ("benchmarks/heal_step.py", "benchmarks/heal_memory_aot.py", "jaxshare/lora",
                                       *TRAIN, *CORE),
    "benchmarks/results/train_*.json": ("benchmarks/train_step.py", "benchmarks/train_memory.py", *TRAIN, *CORE),
    "benchmarks/results/memory.json": ("benchmarks/memory.py", "jaxshare"),
    "benchmarks/results/postshare*.json": ("experiments/postshare.py", "jaxshare/headshare", *TRAIN, *CORE),
    "benchmarks/results/prune_speed.json": ("benchmarks/prune_speed.py", "jaxshare/pruning", *CORE),
    "benchmarks/results/decode.json": ("benchmarks/decode.py", "jaxshare/headshare", "jaxshare/basis", "jaxshare/quant",
                                       "jaxshare/pruning", "jaxshare/methods", "jaxshare/eval/parity.py", *CORE),
    "benchmarks/results/quantize*.json": ("benchmarks/quantize.py", "jaxshare/quant", *CORE),
    "benchmarks/results/similarity.json": ("benchmarks/similarity.py", "jaxshare/headshare", *CORE),
    "benchmarks/results/datashare_sweep*.jsonl": ("experiments/datashare_sweep.py", "jaxshare/headshare",
                                                 "jaxshare/basis/calibrate.py", *CORE),
    "benchmarks/results/directshare_sweep*.jsonl": ("experiments/directshare_sweep.py", "jaxshare/headshare", *CORE),
    "benchmarks/results/leaderboard_row.json": ("benchmarks/leaderboard_row.py", "jaxshare/eval", *CORE),
    # it scores with experiments/heal.py's windows, builds the pruned arms with experiments/prune.py's and
    # trains Inheritune with experiments/inheritune.py's
    "benchmarks/results/leaderboard*.json*": ("experiments/leaderboard.py", "experiments/heal.py", "experiments/prune.py",
                                              "experiments/inheritune.py", *LIBRARY),
    "experiments/results/heal_lr.jsonl": ("experiments/heal_lr.py", "experiments/heal.py", "jaxshare/pruning",
                                          *TRAIN, *CORE),
    "experiments/results/heal.jsonl": ("experiments/heal.py", "jaxshare/lora", "jaxshare/basis", "jaxshare/pruning",
                                       *TRAIN, *CORE),
    "experiments/results/heal_books.jsonl": ("experiments/heal.py", "jaxshare/lora", "jaxshare/basis", "jaxshare/pruning",
                                             *TRAIN, *CORE),
    # scores experiments.heal's books checkpoints on another text
    "experiments/results/heal_transfer*.json": ("experiments/heal_transfer.py", "experiments/heal.py",
                                                "experiments/prune.py", "jaxshare/lora",
                                                "jaxshare/basis", "jaxshare/pruning", "jaxshare/eval/perplexity.py",
                                                *TRAIN, *CORE),
    # `jaxshare heal` from heal_teacher's corrected teacher into experiments.heal's plan and basis students
    "experiments/results/heal_teacher_students*.json*": ("experiments/heal_teacher_students.py",
                                                         "experiments/heal_teacher.py", "experiments/heal.py",
                                                         "experiments/prune.py", "benchmarks/train_memory.py",
                                                         "jaxshare/cli/heal.py", "jaxshare/cli/common.py",
                                                         "jaxshare/cli/main.py", "jaxshare/lora", "jaxshare/basis",
                                                         "jaxshare/headshare", "jaxshare/pruning", "jaxshare/compose",
                                                         "jaxshare/eval/perplexity.py", *TRAIN, *CORE),
    # `jaxshare train plain` and `jaxshare heal` on experiments.heal's pruned student and windows
    "experiments/results/heal_teacher*.json*": ("experiments/heal_teacher.py", "experiments/heal.py",
                                                "experiments/prune.py", "jaxshare/cli/heal.py", "jaxshare/cli/train.py",
                                                "jaxshare/cli/common.py", "jaxshare/cli/main.py", "jaxshare/lora",
                                                "jaxshare/pruning", "jaxshare/eval/perplexity.py", *TRAIN, *CORE),
    # its plan arm runs `jaxshare compress` (share, basis, prune, prune-kv)
    "experiments/results/prune.jsonl": ("experiments/prune.py", "jaxshare/pruning", "jaxshare/basis", "jaxshare/compose",
                                        "jaxshare/headshare", *CORE),
    "experiments/results/prune_books.jsonl": ("experiments/prune.py", "jaxshare/pruning", "jaxshare/basis",
                                              "jaxshare/compose", "jaxshare/headshare", *CORE),
    "experiments/results/plan_bytes*.jsonl": ("experiments/plan_bytes.py", "jaxshare/compose", "jaxshare/quant",
                                              "jaxshare/pruning", "jaxshare/basis", *CORE),
    "experiments/results/prune_select*.json": ("experiments/prune_select.py", "experiments/prune.py", "jaxshare/pruning",
                                              *CORE),
    "experiments/results/prune_per_layer_shares.jsonl": ("experiments/prune.py", "jaxshare/pruning", "jaxshare/basis",
                                                         *CORE),
    "experiments/results/inheritune*.jsonl": ("experiments/inheritune.py", "jaxshare/inheritune", *TRAIN, *CORE),
    "experiments/results/quantize*.json*": ("experiments/quantize.py", "jaxshare/quant", *CORE),
    "experiments/results/degeneration*/*.json": ("benchmarks/degeneration.py", "jaxshare/inheritune",
                                                 "jaxshare/eval/attention_maps.py", *CORE),
}
# Results kept on purpose as a record of code that has since been replaced (a "before" beside its
# "after", a criterion that lost): the current code cannot rerun them, so they are never stale.
HISTORICAL: dict[str, str] = {
    "benchmarks/results/train_memory_before.json": "training peak before the memory fixes; train_memory.json is the after",
    "benchmarks/results/quantize_openblas1.json": "GPTQ timings with one OpenBLAS thread, a setting since replaced",
    "experiments/results/prune_per_layer_shares.jsonl": "the first --per-layer criterion, replaced at 2047f3c",
    "experiments/results/prune.jsonl": "on wiki:test, which cannot be rerun here; prune_books.jsonl is the current run",
    "experiments/results/prune_select.json": "on wiki:validation, which cannot be rerun here; prune_select_books.json is the current run",
    "experiments/results/plan_bytes.jsonl": "on wiki:test, which cannot be rerun here; plan_bytes_books.jsonl is the current run",
    "benchmarks/results/basis_sweep.json": "on wiki:test, which cannot be rerun here; basis_sweep_books.json is the current run",
    "benchmarks/results/directshare_sweep.jsonl": "on wiki:test, which cannot be rerun here; directshare_sweep_books.jsonl is the current run",
    "benchmarks/results/datashare_sweep.jsonl": "on wiki:test, which cannot be rerun here; datashare_sweep_books.jsonl is the current run",
    "experiments/results/quantize.jsonl": "on wiki:test, which cannot be rerun here; quantize_books.jsonl is the current run",
    "experiments/results/quantize.json": "the summary of quantize.jsonl (wiki:test); quantize_books.json is the current one",
    "benchmarks/results/leaderboard.jsonl": "PPL on wiki:test and BIG-bench accuracy, which cannot be rerun here; "
                                            "leaderboard_books.jsonl is the current PPL run",
    "benchmarks/results/leaderboard_chance.json": "guessing on the BIG-bench items of leaderboard.jsonl, whose tasks "
                                                  "cannot be read here",
    "benchmarks/results/budget.jsonl": "on wiki:test, which cannot be rerun here; budget_books.jsonl is the current run",
    "benchmarks/results/budget.json": "the report of budget.jsonl (wiki:test); budget_books.json is the current one",
    "benchmarks/results/budget_sensitivity.json": "the sensitivities on wiki:train of budget.jsonl; "
                                                  "budget_books_sensitivity.json is the current one",
    "benchmarks/results/budget_unrefined.jsonl": "the plan before its re-measuring step, on wiki:test",
    "benchmarks/results/postshare.json": "on wiki, which cannot be rerun here; postshare_books.json is the current run",
    "benchmarks/results/postshare_40steps.json": "on wiki, which cannot be rerun here; postshare_books_40steps.json "
                                                 "is the current run",
    "experiments/results/heal.jsonl": "on wiki:test, which cannot be rerun here; heal_books.jsonl reruns the pruned "
                                      "and Basis Sharing -20% students on books",
    "benchmarks/results/eval_mc.json": "on BIG-bench's social_iqa, which cannot be rerun here (the package index no "
                                       "longer serves the bigbench sdist)",
    "benchmarks/results/eval_mc_in_process.json": "on BIG-bench's social_iqa, which cannot be rerun here",
    "benchmarks/results/leaderboard_row.json": "on the six BIG-bench tasks, which cannot be rerun here",
    "experiments/results/heal_lr.jsonl": "on wiki:test (experiments.heal_lr runs heal.py with --data wiki), which "
                                         "cannot be rerun here",
    "experiments/results/inheritune.jsonl": "on wiki, which cannot be rerun here; inheritune_books.jsonl is the current run",
    "experiments/results/inheritune_100k.jsonl": "on wiki, which cannot be rerun here; inheritune_books.jsonl "
                                                 "is the current run (at 16k tokens per arm)",
}
# Logs: one row per run, appended; the newest row is the current measurement, the older ones its history.
LOGS = ("benchmarks/results/suite.jsonl",)

RESULT_GLOBS = ("benchmarks/results/**/*.json", "benchmarks/results/**/*.jsonl",
                "experiments/results/**/*.json", "experiments/results/**/*.jsonl")


@dataclass
class Status:
    file: str
    rows: int
    measured_at: list[str]  # commits (short), oldest first
    stamped: bool  # every row records its commit
    status: str  # current | stale | unknown | historical
    changed: list[str]  # measured files changed since (up to 8 named)
    n_changed: int


def git(root: Path, *args) -> str:
    out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise RuntimeError(out.stderr.strip() or f"git {' '.join(args)} failed")
    return out.stdout.strip()


def _code_tokens(source: str) -> list[tuple[int, str]] | None:
    """A Python source's tokens less its comments and blank-line tokens (None if it does not tokenize)."""
    skip = {tokenize.COMMENT, tokenize.NL}
    try:
        return [(t.type, t.string) for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type not in skip]
    except (tokenize.TokenError, SyntaxError):
        return None


def comments_only(root: Path, commit: str, rel: str) -> bool:
    """Whether `rel` differs between `commit` and HEAD only in its comments: a Python file whose
    tokens are the same less its comments computes what it did, so it does not make a result stale.
    Docstrings count as code (a program may print its __doc__); any other file always counts."""
    if not rel.endswith(".py"):
        return False
    try:
        before, after = git(root, "show", f"{commit}:{rel}"), git(root, "show", f"HEAD:{rel}")
    except RuntimeError:  # added or removed since
        return False
    a, b = _code_tokens(before), _code_tokens(after)
    return a is not None and a == b


def study_of(rel: str) -> tuple[str, ...] | None:
    for pattern, paths in STUDIES.items():
        if fnmatch.fnmatch(rel, pattern):
            return paths
    return None


def _nested_commits(obj) -> list[str]:
    """Commits recorded below the top level (a memory.json case stamped when it ran)."""
    out = []
    for v in obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ():
        if isinstance(v, dict) and isinstance(v.get("commit"), str):
            out.append(v["commit"])
        out += _nested_commits(v)
    return out


def recorded_commits(path: Path, rel: str = "") -> tuple[list[str | None], int]:
    """The commit each row records (None where a row records none), and the row count. A JSON
    file whose parts record their own commits (cases rerun one by one) counts each of them; a log
    counts its newest row."""
    text = path.read_text()
    rows = [json.loads(ln) for ln in text.splitlines() if ln.strip()] if path.suffix == ".jsonl" else [json.loads(text)]
    rows = [r for r in rows if isinstance(r, dict)]
    n = len(rows)
    if rel in LOGS and rows:
        rows = rows[-1:]
    commits = [(r.get("provenance") or {}).get("commit") or r.get("commit") or None for r in rows]
    if path.suffix == ".json" and rows:
        commits += _nested_commits(rows[0])
    return commits, n


def changed_since(commit: str, paths, root: Path = ROOT) -> set[str] | None:
    """The files under `paths` whose code differs between `commit` and HEAD (None where this
    history does not hold the commit)."""
    if subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=root, capture_output=True).returncode:
        return None
    diff = git(root, "diff", "--name-only", commit, "HEAD", "--", *paths)
    return {f for f in diff.splitlines() if not comments_only(root, commit, f)}


def check(root: Path = ROOT) -> list[Status]:
    root = Path(root)
    files = sorted({p for g in RESULT_GLOBS for p in root.glob(g)})
    out = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        paths = study_of(rel)
        commits, n = recorded_commits(path, rel)
        stamped = bool(commits) and all(commits)
        fallback = git(root, "log", "-1", "--format=%H", "--", rel) or None  # the commit that last wrote it
        at = sorted({c or fallback for c in commits} - {None}) if commits else ([fallback] if fallback else [])
        if rel in HISTORICAL:
            out.append(Status(rel, n, [c[:10] for c in at], stamped, "historical", [], 0))
            continue
        if paths is None or not at:
            out.append(Status(rel, n, [c[:10] for c in at], stamped, "unknown", [], 0))
            continue
        changed: set[str] = set()
        known = True
        for c in at:
            since = changed_since(c, paths, root)
            if since is None:
                known = False  # a commit this history does not hold (a run from work that did not land)
                continue
            changed |= since
        status = "stale" if changed else ("current" if known else "unknown")
        out.append(Status(rel, n, [c[:10] for c in at], stamped, status, sorted(changed)[:8], len(changed)))
    return out


def markdown(rows: list[Status]) -> str:
    head = ["| result | rows | measured at | stamped | status | measured code changed since |",
            "| --- | --- | --- | --- | --- | --- |"]
    body = []
    for r in rows:
        names = ", ".join(f"`{c}`" for c in r.changed) + (f" and {r.n_changed - len(r.changed)} more"
                                                           if r.n_changed > len(r.changed) else "")
        status = {"stale": "**stale**", "current": "current", "unknown": "unknown",
                  "historical": f"historical: {HISTORICAL.get(r.file, '')}"}[r.status]
        body.append(f"| `{r.file}` | {r.rows} | {', '.join(r.measured_at) or '-'} | "
                    f"{'yes' if r.stamped else 'no'} | {status} | {names or '-'} |")
    n = {s: sum(r.status == s for r in rows) for s in ("current", "stale", "unknown", "historical")}
    summary = (f"{len(rows)} result files: {n['current']} current, {n['stale']} stale, {n['unknown']} unknown, "
               f"{n['historical']} historical (`python -m benchmarks.stale`). A log (`suite.jsonl`) is judged by "
               f"its newest row; a file whose parts record their own commits (`memory.json`'s cases) by all of them.")
    return "\n".join([summary, "", *head, *body, ""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    fmt = ap.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="the table as Markdown")
    fmt.add_argument("--json", action="store_true", help="one JSON object per result file")
    args = ap.parse_args(argv)
    try:
        rows = check()
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        print(f"benchmarks.stale: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=1))
    elif args.markdown:
        print(markdown(rows))
    else:
        w = max(len(r.file) for r in rows)
        for r in rows:
            print(f"{r.file:<{w}}  {r.status:<7}  {','.join(r.measured_at):<22}  "
                  f"{r.n_changed} measured files changed since")
    return 0


if __name__ == "__main__":
    sys.exit(main())
