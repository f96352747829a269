"""Zero-shot multiple-choice accuracy through lm-eval's `simple_evaluate` (its scoring, its stderr),
on the local BIG-bench tasks of jaxshare.eval.tasks or the user's task files (jaxshare.eval.task_files).
Backend: jaxshare's (default) or any lm-eval model instance, e.g. lm-eval's own `hf` for parity checks."""
from __future__ import annotations

import os
import time

from jaxshare.data.corpora import CorpusError
from jaxshare.eval.task_files import file_task, is_task_file
from jaxshare.eval.tasks import TASKS, TaskError, lm_eval_name, task_dir

METRICS = ("acc", "acc_norm")


def parse_tasks(spec: str | list[str]) -> list[str]:
    """`social_iqa,winowhy` (or `bb_social_iqa`, or `all`) -> our short names, validated, in order. A
    path (a task.json or a .jsonl of rows) is kept as given, its file read and checked now."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return list(TASKS)
    if not names:
        raise TaskError("no task given; known tasks: " + ", ".join(TASKS) + ", or a task file")
    out = []
    for n in names:
        if is_task_file(n):
            file_task(n)  # a bad file is refused before the (slow) model load
            short = n
        else:
            short = lm_eval_name(n).removeprefix("bb_")
        if short not in out:
            out.append(short)
    return out


def resolve(tasks: list[str]) -> tuple[dict[str, str], list[str]]:
    """({task as parse_tasks gives it: its lm-eval name}, the folders lm-eval must include)."""
    names, include = {}, []
    for t in tasks:
        if is_task_file(t):
            names[t], root = file_task(t)
            include.append(str(root))
        else:
            names[t] = lm_eval_name(t)
    if any(not is_task_file(t) for t in tasks):
        try:
            include.insert(0, str(task_dir()))
        except CorpusError as e:  # the sdist is gone from the index: say what still works
            raise TaskError(f"{e}; eval mc also scores task files: --tasks path/to/task.json (a BIG-bench "
                            "task.json, e.g. from a checkout of github.com/google/BIG-bench) or a .jsonl of "
                            "{inputs, choices, gold} rows") from None
    return names, include


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise TaskError(f"--limit must be at least 1, got {limit}")


def task_manager(include: list[str] | None = None):
    """lm-eval's task index over our folders only (default: the built-in tasks')."""
    from lm_eval.tasks import TaskManager  # deferred: optional extra [eval]

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # our tasks read local JSONL; never ask a hub
    # only our YAMLs: indexing lm-eval's hundreds of built-in tasks costs ~20 s and reaches nothing here
    return TaskManager(include_path=include if include is not None else str(task_dir()), include_defaults=False)


def evaluate(lm, tasks: list[str], limit: int | None = None, log_samples: bool = False) -> dict:
    """{"tasks": {name: {acc, acc_stderr, acc_norm, acc_norm_stderr, n}}, "seconds", "requests"}
    (plus "samples" with log_samples: lm-eval's per-item records, for parity checks)."""
    from lm_eval import simple_evaluate  # deferred: optional extra [eval]

    check_limit(limit)
    names, include = resolve(tasks)
    t0 = time.perf_counter()
    res = simple_evaluate(model=lm, tasks=list(names.values()), limit=limit, num_fewshot=0,
                         task_manager=task_manager(include), log_samples=log_samples)
    seconds = time.perf_counter() - t0
    rows = {}
    for t, name in names.items():
        r = res["results"][name]
        rows[t] = {m: float(r[f"{m},none"]) for m in METRICS}
        rows[t].update({f"{m}_stderr": float(r[f"{m}_stderr,none"]) for m in METRICS})
        rows[t]["n"] = int(res["n-samples"][name]["effective"])
    out = {"tasks": rows, "seconds": seconds, "limit": limit}
    if log_samples:
        out["samples"] = {t: res["samples"][name] for t, name in names.items()}
    return out


def table(rows: dict) -> str:
    w = max([20, *(len(t) for t in rows)])  # a task file's path can be long
    lines = [f"{'task':<{w}} {'n':>6} {'acc':>8} {'±':>7} {'acc_norm':>9} {'±':>7}"]
    for t, r in rows.items():
        lines.append(f"{t:<{w}} {r['n']:>6} {r['acc']:>8.4f} {r['acc_stderr']:>7.4f} "
                     f"{r['acc_norm']:>9.4f} {r['acc_norm_stderr']:>7.4f}")
    return "\n".join(lines)
