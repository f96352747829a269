"""What `--overwrite` may replace: a directory jaxshare wrote, recognised by a manifest only jaxshare
writes, and holding nothing we did not write.

Generic names (config.yaml, checkpoints/, config.json) prove nothing: a user's project folder has
them too. So every output directory committed by `storage.atomic` carries `OUTPUT_MARKER`, a JSON file
{"format": "jaxshare-output", "version": 1, "kind": ..., "files": [top-level names at commit]}, and a
training run dir carries `jaxshare_run.json` {"format": "jaxshare-run", "version": 1} (what it may
hold is RUN_ENTRIES below, checked into its subdirectories; `training.rundir` decides when a run may start). Outputs of older jaxshare (no marker) are
recognised by their own manifest, checked by content (`jaxshare.json` format "jaxshare",
`jaxshare_export.json` format "jaxshare-hf-export", `basis_pairs.json` with its summary), and may
hold only the names those versions wrote.

`foreign_entries` lists what a recognised directory holds beyond that: --overwrite refuses such a
directory by name rather than delete a file the user put there.

A directory on an object store (no rename) is complete only once it holds `COMMIT_MARKER`, written
last; while `UPLOAD_MARKER` is there without it, the directory is an upload in progress (or killed)
that readers refuse. A directory copied up by other tools (gsutil cp -r) has neither and is read. Functions here take a `pathlib.Path` or an `etils.epath.Path` and
import nothing from jaxshare.
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
COMMIT_MARKER = ".jaxshare_complete"
UPLOAD_MARKER = ".jaxshare_uploading"  # an upload in progress (or killed): readers refuse the directory

# Plain names the trainer (and inheritune, plot-run, the W&B writer) create at the top of a run dir.
_RUN_NAMES = (RUN_MARKER, "config.yaml", "plan.npz", "metrics.jsonl", "tensorboard", "checkpoints", "final", "hf",
              "result.json", "inheritune.json", "heal_baseline.json", "wandb",
              "init")  # an inheritune stage's starting model (stage dirs are run dirs too)
# Each plain name's temporaries: `.config.yaml.XXXX` (paths.write_text), `.final.partial-PID-XXXX`,
# `.final.old-...`, `.final.trash-...` (storage.atomic), `.inheritune.json.partial` (inheritune).
RUN_ENTRIES = _RUN_NAMES + ("stage_*", "*.png") + tuple(f".{n}.*" for n in _RUN_NAMES)
_RUN_FILES = {RUN_MARKER, "config.yaml", "plan.npz", "metrics.jsonl", "result.json", "inheritune.json",
              "heal_baseline.json"}
_MODEL_MANIFEST = {"final": "jaxshare.json", "init": "jaxshare.json", "hf": "jaxshare_export.json"}

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


def _recognise(path) -> tuple[str, tuple[str, ...] | None] | None:
    """(kind, allowed top-level patterns; None = as the marker lists them) or None."""
    m = _json(path / OUTPUT_MARKER)
    if _is(m, OUTPUT_FORMAT, (OUTPUT_VERSION,)) and isinstance(m.get("files"), list):
        return str(m.get("kind") or "jaxshare output"), tuple(map(str, m["files"])) + (OUTPUT_MARKER, COMMIT_MARKER, UPLOAD_MARKER)
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
    found = _recognise(_as_path(path))
    return found[0] if found else None


def foreign_entries(path) -> list[str]:
    """Top-level names in a recognised output that jaxshare did not write there (all of them when
    the directory is not recognised)."""
    path = _as_path(path)
    names = sorted(c.name for c in path.iterdir())
    found = _recognise(path)
    if found is None:
        return names
    if found[0] == "training run":
        return foreign_run_entries(path)
    allowed = found[1]
    return [n for n in names if not any(n == p or fnmatch.fnmatchcase(n, p) for p in allowed)]


def _as_path(path):
    return path if hasattr(path, "iterdir") else Path(path)


def _is_link(p) -> bool:
    # os.path and not p.is_symlink(): etils' local GPath (what a run dir given as a string becomes)
    # has no is_symlink, and a link taken for our entry was deleted, or followed, by --overwrite.
    # An object-store path ("gs://...") is no local link: False.
    try:
        return os.path.islink(os.fspath(p))
    except (TypeError, ValueError, OSError):
        return False


def is_run_entry(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in RUN_ENTRIES)


def _foreign_in(d, rel: str) -> list[str]:
    out = []
    for child in sorted(d.iterdir(), key=lambda c: c.name):
        name, shown = child.name, f"{rel}{child.name}"
        if _is_link(child) or not is_run_entry(name):
            out.append(shown)
        elif name.startswith("."):
            continue  # our temporaries, files or directories
        elif name in _RUN_FILES or name.endswith(".png"):
            if child.is_dir():
                out.append(shown)
        elif not child.is_dir():
            out.append(shown)
        elif name == "checkpoints":  # orbax: step directories and their temporaries only
            out += [f"{shown}/{c.name}" for c in child.iterdir()
                    if _is_link(c) or not (c.name.isdigit() or ".orbax-checkpoint-tmp" in c.name)]
        elif name == "tensorboard":
            out += [f"{shown}/{c.name}" for c in child.iterdir()
                    if _is_link(c) or not c.name.startswith("events.out.tfevents.")]
        elif name in _MODEL_MANIFEST:
            if not (child / _MODEL_MANIFEST[name]).is_file():
                out.append(shown)
        elif name.startswith("stage_"):
            out += _foreign_in(child, f"{shown}/")
    return out


def foreign_run_entries(run_dir) -> list[str]:
    """Paths (relative to a training run dir) of what jaxshare did not write there; [] when all is ours."""
    return _foreign_in(_as_path(run_dir), "")
