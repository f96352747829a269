"""What `--overwrite` may replace: a directory jaxshare wrote, recognised by a manifest only jaxshare
writes, and holding nothing we did not write.

Generic names (config.yaml, checkpoints/, config.json) prove nothing: a user's project folder has
them too. So every output directory committed by `io.atomic` carries `OUTPUT_MARKER`, a JSON file
{"format": "jaxshare-output", "version": 1, "kind": ..., "files": [top-level names at commit]}, and a
training run dir carries `jaxshare_run.json` {"format": "jaxshare-run", "version": 1} (what it may
hold is `training.rundir`'s to say: RUN_ENTRIES, checked into its subdirectories). Outputs of older jaxshare (no marker) are
recognised by their own manifest, checked by content (`jaxshare.json` format "jaxshare",
`jaxshare_export.json` format "jaxshare-hf-export", `basis_pairs.json` with its summary), and may
hold only the names those versions wrote.

`foreign_entries` lists what a recognised directory holds beyond that: --overwrite refuses such a
directory by name rather than delete a file the user put there.
"""
from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path

OUTPUT_MARKER = ".jaxshare-output.json"
OUTPUT_FORMAT, OUTPUT_VERSION = "jaxshare-output", 1
EXPORT_MARKER = "jaxshare_export.json"
RUN_MARKER = "jaxshare_run.json"
RUN_FORMAT, RUN_VERSION = "jaxshare-run", 1

_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
              "chat_template.json", "tokenizer.model", "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json")
# What jaxshare wrote into each kind of output before the marker existed (glob patterns).
_LEGACY = {
    "native checkpoint": ("jaxshare.json", "params", "params.safetensors", "plan.yaml", *_TOKENIZER),
    "Hugging Face export": (EXPORT_MARKER, "config.json", "generation_config.json", "model.safetensors",
                            "model-*-of-*.safetensors", "model.safetensors.index.json", "sharing.json", "basis.json",
                            "basis.safetensors", "quant.json", "plan.yaml", *_TOKENIZER),
    "basis-pairs output": ("basis_pairs.json", "basis_pairs.png"),
}


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON: not our manifest
        return None


def _is(obj, fmt: str, versions) -> bool:
    return isinstance(obj, dict) and obj.get("format") == fmt and obj.get("version") in versions


def marker(kind: str, names) -> str:
    """The content of OUTPUT_MARKER for a directory holding `names` at its top level."""
    files = sorted(n for n in names if n != OUTPUT_MARKER)
    return json.dumps({"format": OUTPUT_FORMAT, "version": OUTPUT_VERSION, "kind": kind, "files": files}) + "\n"


def kind_of(names) -> str:
    """A name for what a directory about to be committed is, from its files."""
    names = set(names)
    if "jaxshare.json" in names:
        return "native checkpoint"
    if EXPORT_MARKER in names:
        return "Hugging Face export"
    if "basis_pairs.json" in names:
        return "basis-pairs output"
    return "jaxshare output"


def _recognise(path: Path) -> tuple[str, tuple[str, ...] | None] | None:
    """(kind, allowed top-level patterns; None = as the marker lists them) or None."""
    m = _json(path / OUTPUT_MARKER)
    if _is(m, OUTPUT_FORMAT, (OUTPUT_VERSION,)) and isinstance(m.get("files"), list):
        return str(m.get("kind") or "jaxshare output"), tuple(map(str, m["files"])) + (OUTPUT_MARKER,)
    if _is(_json(path / RUN_MARKER), RUN_FORMAT, (RUN_VERSION,)):
        return "training run", ()  # training.rundir knows what a run holds, subdirectories included
    meta = _json(path / "jaxshare.json")
    if isinstance(meta, dict) and meta.get("format") == "jaxshare" and isinstance(meta.get("config"), dict):
        return "native checkpoint", _LEGACY["native checkpoint"]
    if _is(_json(path / EXPORT_MARKER), "jaxshare-hf-export", (1,)):
        return "Hugging Face export", _LEGACY["Hugging Face export"]
    pairs = _json(path / "basis_pairs.json")
    if isinstance(pairs, dict) and {"summary", "types"} <= set(pairs):
        return "basis-pairs output", _LEGACY["basis-pairs output"]
    return None


def is_our_output(path) -> str | None:
    """What kind of jaxshare output the directory is, or None."""
    found = _recognise(Path(path))
    return found[0] if found else None


def foreign_entries(path) -> list[str]:
    """Top-level names in a recognised output that jaxshare did not write there (all of them when
    the directory is not recognised)."""
    path = Path(path)
    names = sorted(os.listdir(path))
    found = _recognise(path)
    if found is None:
        return names
    if found[0] == "training run":
        from jaxshare.training import rundir

        return rundir.foreign_entries(path)
    allowed = found[1]
    return [n for n in names if not any(n == p or fnmatch.fnmatchcase(n, p) for p in allowed)]
