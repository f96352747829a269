"""Zero-shot multiple-choice tasks from the BIG-bench 1.0.0 sdist, as local lm-eval tasks.

No dataset hub is reachable, so :func:`task_dir` reads the tasks' ``task.json`` from the bigbench
sdist (the same cached archive the ``wiki``/``xsum`` corpora come from), writes one JSONL per task
and an lm-eval task YAML beside it (``dataset_path: json`` with the JSONL's absolute path, which is
why the YAML is written at fetch time and not shipped), all under ``cache_dir()/"lm_eval_tasks"``.
``lm_eval --include_path <that dir> --tasks bb_social_iqa`` then works offline.

Each JSONL row is ``{"idx", "inputs", "choices", "gold"}``. ``inputs`` is formatted as BIG-bench
formats a zero-shot query (its own task_prefix / example_input_prefix / example_output_prefix, the
choices appended when the task says ``append_choices_to_input``, which BIG-bench defaults to true);
``choices`` are the keys of ``target_scores`` in file order (stripped); ``gold`` is the index of
the highest score (the first one on ties, as BIG-bench's multiple_choice_grade counts argmax).
lm-eval scores each choice after ``target_delimiter`` " " and reports acc and acc_norm.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from jaxshare.data.corpora import _read_members, bigbench_sdist
from jaxshare.errors import JaxshareError
from jaxshare.storage.fetch import cache_dir

# our name -> member of the bigbench sdist (goal_inference is a subtask of goal_step_wikihow)
_ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks/"
TASKS: dict[str, str] = {
    "social_iqa": _ROOT + "social_iqa/task.json",
    "winowhy": _ROOT + "winowhy/task.json",
    "goal_inference": _ROOT + "goal_step_wikihow/goal_inference/task.json",
    "general_knowledge": _ROOT + "general_knowledge/task.json",
    "timedial": _ROOT + "timedial/task.json",
    "strategyqa": _ROOT + "strategyqa/task.json",
}
PREFIX = "bb_"  # lm-eval already has a `social_iqa` (SIQA from the hub); ours are bb_<name>
GROUP_TAG = "bb_mc"
_FORMAT = 1  # bump when the JSONL or YAML layout changes: the cache is rebuilt


class TaskError(JaxshareError, ValueError):
    """An unknown task name, or a task file that does not have the expected shape."""


def lm_eval_name(name: str) -> str:
    """The lm-eval task name of one of ours: `social_iqa` -> `bb_social_iqa` (already prefixed: kept)."""
    short = name.removeprefix(PREFIX)
    if short not in TASKS:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return PREFIX + short


def format_example(task: dict, example: dict) -> dict:
    """One BIG-bench example as {inputs, choices, gold} (zero-shot, BIG-bench's own prefixes)."""
    scores = example.get("target_scores")
    if not isinstance(scores, dict) or len(scores) < 2:
        raise TaskError(f"{task.get('name')}: an example without at least two target_scores")
    choices = [str(c).strip() for c in scores]
    values = list(scores.values())
    gold = values.index(max(values))
    text = task.get("task_prefix", "") + task.get("example_input_prefix", "\nQ: ") + example["input"]
    if task.get("append_choices_to_input", True):
        text += "".join(f"\n  choice: {c}" for c in choices)
    text += task.get("example_output_prefix", "\nA: ")
    return {"inputs": text.strip(), "choices": choices, "gold": gold}


def convert(raw: bytes, name: str) -> list[dict]:
    """All examples of one task.json as JSONL rows (every example kept, in file order)."""
    task = json.loads(raw)
    examples = task.get("examples")
    if not isinstance(examples, list) or not examples:
        raise TaskError(f"{name}: task.json has no examples")
    return [{"idx": i, **format_example(task, e)} for i, e in enumerate(examples)]


def task_yaml(task: str, jsonl: Path, source: str = "bigbench==1.0.0 sdist", tag: str | None = None) -> str:
    """The lm-eval task YAML of one converted JSONL (task: the full lm-eval name)."""
    data = json.dumps(str(jsonl))  # a JSON string is a valid YAML scalar, quoting any odd path
    return (f"task: {task}\n" + (f"tag: {tag}\n" if tag else "") + "dataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
            "test_split: test\noutput_type: multiple_choice\n"
            "doc_to_text: \"{{inputs}}\"\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: gold\n"
            "target_delimiter: \" \"\n"
            "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
            "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
            f"metadata:\n  version: {_FORMAT}.0\n  source: {json.dumps(source)}\n")


def write_text(path: Path, text: str) -> None:
    """Written aside and renamed into place: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _stamp(root: Path) -> Path:
    return root / "jaxshare_tasks.json"


def _fresh(root: Path) -> bool:
    try:
        stamp = json.loads(_stamp(root).read_text())
    except (OSError, ValueError):
        return False
    return (stamp.get("format") == _FORMAT and stamp.get("root") == str(root)
            and all((root / f"{n}.jsonl").is_file() and (root / f"{n}.yaml").is_file() for n in TASKS))


def task_dir() -> Path:
    """The directory of the task YAMLs (for lm-eval's --include_path), built once from the sdist."""
    root = cache_dir() / "lm_eval_tasks"
    if _fresh(root):
        return root
    root.mkdir(parents=True, exist_ok=True)
    raw = _read_members(bigbench_sdist(), TASKS, "bigbench tasks (reading tar)")
    counts = {}
    for name in TASKS:
        rows = convert(raw[name], name)
        counts[name] = len(rows)
        jsonl = root / f"{name}.jsonl"
        write_text(jsonl, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        write_text(root / f"{name}.yaml", task_yaml(PREFIX + name, jsonl, tag=GROUP_TAG))
    # written last: a killed build is rebuilt on the next call
    write_text(_stamp(root), json.dumps({"format": _FORMAT, "root": str(root), "items": counts}))
    return root


def load_rows(name: str) -> list[dict]:
    """The converted rows of one task (for tests and reports)."""
    short = lm_eval_name(name).removeprefix(PREFIX)
    path = task_dir() / f"{short}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


if __name__ == "__main__":  # `python -m jaxshare.eval.tasks` prints the --include_path directory
    print(task_dir())
