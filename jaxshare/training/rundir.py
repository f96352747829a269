"""What a training run directory may hold, and when a new run may start in one.

A run dir is recognised by its marker `jaxshare_run.json` ({"format": "jaxshare-run", "version": 1}),
which the trainer writes before anything else, never by generic names such as config.yaml. A new
run starts only in an absent or empty directory; with `--overwrite` it may replace a marked run dir
whose every entry is one the trainer or inheritune writes (`RUN_ENTRIES`, checked one level into
the directories whose contents we know), and it removes exactly those entries. A directory holding
anything else, or a run of an older jaxshare (config.yaml without the marker), is left for the user
to move or delete.

Imports nothing heavy: `jaxshare.io.atomic` reads `RUN_ENTRIES` from here.
"""
from __future__ import annotations

import fnmatch
import json

from jaxshare.errors import JaxshareError

MARKER = "jaxshare_run.json"
MARKER_FORMAT = {"format": "jaxshare-run", "version": 1}

# Plain names the trainer (and inheritune, plot-run, the W&B writer) create at the top of a run dir.
_NAMES = (MARKER, "config.yaml", "plan.npz", "metrics.jsonl", "tensorboard", "checkpoints", "final", "hf",
          "result.json", "inheritune.json", "wandb",
          "init")  # an inheritune stage's starting model (stage dirs are run dirs too)
# Each plain name's temporaries: `.config.yaml.XXXX` (paths.write_text), `.final.partial-PID-XXXX`,
# `.final.old-...`, `.final.trash-...` (io.atomic), `.inheritune.json.partial` (inheritune).
RUN_ENTRIES = _NAMES + ("stage_*", "*.png") + tuple(f".{n}.*" for n in _NAMES)

_FILES = {MARKER, "config.yaml", "plan.npz", "metrics.jsonl", "result.json", "inheritune.json"}
_MODEL_MANIFEST = {"final": "jaxshare.json", "init": "jaxshare.json", "hf": "jaxshare_export.json"}


class RunDirError(JaxshareError, ValueError):
    """A run dir a new run may not start in (or a run dir that cannot be read)."""


def _path(run_dir):
    from jaxshare.training import paths

    return paths.as_path(str(run_dir))


def _is_link(p) -> bool:
    try:
        return p.is_symlink()
    except (AttributeError, NotImplementedError, OSError):  # object stores have no links
        return False


def is_run_entry(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in RUN_ENTRIES)


def is_marked(run_dir) -> bool:
    """The directory carries our marker (and it says what we write)."""
    p = _path(run_dir) / MARKER
    try:
        return p.is_file() and json.loads(p.read_text()).get("format") == MARKER_FORMAT["format"]
    except (OSError, ValueError, AttributeError):
        return False


def write_marker(run_dir) -> None:
    from jaxshare.training import paths

    paths.write_text(_path(run_dir) / MARKER, json.dumps(MARKER_FORMAT) + "\n")


def _foreign_in(d, rel: str) -> list[str]:
    out = []
    for child in sorted(d.iterdir(), key=lambda c: c.name):
        name, shown = child.name, f"{rel}{child.name}"
        if _is_link(child) or not is_run_entry(name):
            out.append(shown)
        elif name.startswith("."):
            continue  # our temporaries, files or directories
        elif name in _FILES or name.endswith(".png"):
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


def foreign_entries(run_dir) -> list[str]:
    """Paths (relative to the run dir) of what jaxshare did not write there; [] when all is ours."""
    return _foreign_in(_path(run_dir), "")


def check_new_run_dir(run_dir, overwrite: bool) -> bool:
    """Whether a new run may start in `run_dir`; True when an earlier run must first be cleared
    (`clear_run_dir`). Raises RunDirError naming the directory and what to do. Reads only."""
    p = _path(run_dir)
    try:
        if not p.exists():
            return False
        if not p.is_dir():
            raise RunDirError(f"run_dir {run_dir} exists and is not a directory; choose another run_dir")
        entries = sorted(c.name for c in p.iterdir())
    except OSError as e:
        raise RunDirError(f"cannot read run_dir {run_dir}: {e.strerror or e}") from None
    if not entries:
        return False
    if not overwrite:
        raise RunDirError(f"run_dir {run_dir} is not empty; continue its run with `jaxshare train resume {run_dir}`, "
                          "pass --overwrite to replace a jaxshare run, or choose another run_dir")
    from jaxshare.training import paths

    if paths.is_local(p):
        import os
        from pathlib import Path

        from jaxshare.io.atomic import _protected

        why = _protected(Path(os.path.expanduser(str(p))).resolve())
        if why:
            raise RunDirError(f"refusing to replace run_dir {run_dir}: {why}")
    if not is_marked(p):
        older = " (a run of an older jaxshare, without jaxshare_run.json)" if "config.yaml" in entries else ""
        raise RunDirError(f"run_dir {run_dir} is not a jaxshare run dir{older}; --overwrite only replaces "
                          f"runs marked by {MARKER}: move or delete it yourself, or choose another run_dir")
    foreign = foreign_entries(p)
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise RunDirError(f"run_dir {run_dir} holds files jaxshare did not write ({', '.join(foreign[:5])}{more}); "
                          "--overwrite will not delete them: move them away or choose another run_dir")
    return True


def clear_run_dir(run_dir) -> list[str]:
    """Remove an earlier run's entries (call after check_new_run_dir returned True). config.yaml
    goes first, so that a kill midway leaves no config beside another run's results; the marker
    stays, so the half-cleared directory is still recognised as ours."""
    p = _path(run_dir)
    foreign = foreign_entries(p)
    if foreign:  # changed since the check: touch nothing
        raise RunDirError(f"run_dir {run_dir} now holds files jaxshare did not write ({', '.join(foreign[:5])}); "
                          "move them away or choose another run_dir")
    children = sorted(p.iterdir(), key=lambda c: (c.name != "config.yaml", c.name))
    removed = []
    for child in children:
        if child.name == MARKER:
            continue
        if child.is_dir():
            child.rmtree()
        else:
            child.unlink()
        removed.append(child.name)
    return removed
