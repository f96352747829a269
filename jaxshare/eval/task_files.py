"""Multiple-choice tasks from the user's own files: `jaxshare eval mc MODEL --tasks PATH`.

The built-in tasks come from the bigbench 1.0.0 sdist, which the package index no longer serves
(docs/models.md), and no dataset hub is reachable; whoever has a task file can still score it.
Two shapes are read:

- a BIG-bench ``task.json`` (a dict with ``examples``, each an ``input`` and ``target_scores``), e.g.
  from a checkout of github.com/google/BIG-bench, formatted exactly as the built-in tasks are
  (:func:`jaxshare.eval.tasks.convert`);
- a JSONL of ``{"inputs", "choices", "gold"}`` rows, the built-in tasks' own converted form (so a
  cached ``$JAXSHARE_CACHE/lm_eval_tasks/<name>.jsonl`` from another machine works as it is).

Each file becomes an lm-eval task named by the digest of its bytes, under
``cache_dir()/"lm_eval_task_files"/<digest>/``: an edited file is a new task, an unchanged one is
converted once, and two files of the same name in different folders do not collide.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from jaxshare.eval.tasks import TaskError, convert, task_yaml, write_text
from jaxshare.storage.fetch import cache_dir

SUFFIXES = (".json", ".jsonl")
PREFIX = "file_"


def is_task_file(spec: str) -> bool:
    """A --tasks entry that names a file rather than a built-in task (names have no / and no suffix)."""
    return "/" in spec or spec.lower().endswith(SUFFIXES)


def _check_row(row, where: str) -> dict:
    if not isinstance(row, dict):
        raise TaskError(f"{where}: a row must be a JSON object with inputs, choices and gold")
    inputs, choices, gold = row.get("inputs"), row.get("choices"), row.get("gold")
    if not isinstance(inputs, str):
        raise TaskError(f"{where}: 'inputs' must be a string")
    if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)):
        raise TaskError(f"{where}: 'choices' must be a list of at least two strings")
    if not (isinstance(gold, int) and not isinstance(gold, bool) and 0 <= gold < len(choices)):
        raise TaskError(f"{where}: 'gold' must be the index of the right choice (0 to {len(choices) - 1})")
    return {"inputs": inputs, "choices": choices, "gold": gold}


def read_rows(path: Path, raw: bytes) -> list[dict]:
    """The task's rows ({idx, inputs, choices, gold}) from a task.json or a JSONL file's bytes."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TaskError(f"{path}: not UTF-8 text") from None
    if path.suffix.lower() == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TaskError(f"{path}, line {i}: not JSON ({e.msg})") from None
                rows.append({"idx": len(rows), **_check_row(row, f"{path}, line {i}")})
        if not rows:
            raise TaskError(f"{path}: no rows")
        return rows
    try:
        task = json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(task, dict) or "examples" not in task:
        raise TaskError(f"{path}: not a BIG-bench task.json (a JSON object with 'examples'); "
                        "a file of {inputs, choices, gold} rows must end in .jsonl")
    examples = task["examples"]
    for i, e in enumerate(examples if isinstance(examples, list) else ()):
        scores = e.get("target_scores") if isinstance(e, dict) else None
        if not (isinstance(e, dict) and isinstance(e.get("input"), str) and isinstance(scores, dict)
                and len(scores) >= 2 and all(isinstance(v, (int, float)) for v in scores.values())):
            raise TaskError(f"{path}: example {i} needs an 'input' string and 'target_scores' mapping at least "
                            "two choices to numbers (a multiple-choice task)")
    return convert(text.encode("utf-8"), str(path))


def file_task(spec: str) -> tuple[str, Path]:
    """(lm-eval task name, the folder to include) for a task file, converted on first use."""
    path = Path(spec).expanduser()
    if "://" in spec:
        raise TaskError(f"{spec}: task files are read from local paths only")
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise TaskError(f"{spec}: is a folder; give its task.json") from None
    except OSError as e:
        raise TaskError(f"{spec}: cannot read the task file ({e.strerror or e})") from None
    digest = hashlib.sha256(raw).hexdigest()[:16]
    name = PREFIX + digest
    root = cache_dir() / "lm_eval_task_files" / digest
    yaml_path = root / f"{name}.yaml"
    if yaml_path.is_file() and (root / f"{name}.jsonl").is_file():
        return name, root
    rows = read_rows(path, raw)
    root.mkdir(parents=True, exist_ok=True)
    jsonl = root / f"{name}.jsonl"
    write_text(jsonl, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_text(yaml_path, task_yaml(name, jsonl, source=str(path.resolve())))  # last: marks it complete
    return name, root
