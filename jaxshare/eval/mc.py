"""Zero-shot multiple-choice accuracy through lm-eval's `simple_evaluate` (its scoring, its stderr),
on the local BIG-bench tasks of jaxshare.eval.tasks. Backend: jaxshare's (default) or any lm-eval
model instance, e.g. lm-eval's own `hf` for parity checks."""
from __future__ import annotations

import os
import time

from jaxshare.eval.tasks import TASKS, TaskError, lm_eval_name, task_dir

METRICS = ("acc", "acc_norm")


def parse_tasks(spec: str | list[str]) -> list[str]:
    """`social_iqa,winowhy` (or `bb_social_iqa`, or `all`) -> our short names, validated, in order."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return list(TASKS)
    if not names:
        raise TaskError("no task given; known tasks: " + ", ".join(TASKS))
    out = []
    for n in names:
        short = lm_eval_name(n).removeprefix("bb_")
        if short not in out:
            out.append(short)
    return out


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise TaskError(f"--limit must be at least 1, got {limit}")


def task_manager():
    from lm_eval.tasks import TaskManager  # deferred: optional extra [eval]

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # our tasks read local JSONL; never ask a hub
    # only our YAMLs: indexing lm-eval's hundreds of built-in tasks costs ~20 s and reaches nothing here
    return TaskManager(include_path=str(task_dir()), include_defaults=False)


def evaluate(lm, tasks: list[str], limit: int | None = None, log_samples: bool = False) -> dict:
    """{"tasks": {name: {acc, acc_stderr, acc_norm, acc_norm_stderr, n}}, "seconds", "requests"}
    (plus "samples" with log_samples: lm-eval's per-item records, for parity checks)."""
    from lm_eval import simple_evaluate  # deferred: optional extra [eval]

    check_limit(limit)
    t0 = time.perf_counter()
    res = simple_evaluate(model=lm, tasks=[lm_eval_name(t) for t in tasks], limit=limit, num_fewshot=0,
                         task_manager=task_manager(), log_samples=log_samples)
    seconds = time.perf_counter() - t0
    rows = {}
    for t in tasks:
        r = res["results"][lm_eval_name(t)]
        rows[t] = {m: float(r[f"{m},none"]) for m in METRICS}
        rows[t].update({f"{m}_stderr": float(r[f"{m}_stderr,none"]) for m in METRICS})
        rows[t]["n"] = int(res["n-samples"][lm_eval_name(t)]["effective"])
    out = {"tasks": rows, "seconds": seconds, "limit": limit}
    if log_samples:
        out["samples"] = {t: res["samples"][lm_eval_name(t)] for t in tasks}
    return out


def table(rows: dict) -> str:
    lines = [f"{'task':<20} {'n':>6} {'acc':>8} {'±':>7} {'acc_norm':>9} {'±':>7}"]
    for t, r in rows.items():
        lines.append(f"{t:<20} {r['n']:>6} {r['acc']:>8.4f} {r['acc_stderr']:>7.4f} "
                     f"{r['acc_norm']:>9.4f} {r['acc_norm_stderr']:>7.4f}")
    return "\n".join(lines)
