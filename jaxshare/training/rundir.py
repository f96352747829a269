"""What a training run directory may hold, and when a new run may start in one.

A run dir is recognised by its marker `jaxshare_run.json` ({"format": "jaxshare-run", "version": 1}),
which the trainer writes before anything else, never by generic names such as config.yaml. A new
run starts only in an absent or empty directory; with `--overwrite` it may replace a marked run dir
whose every entry is one the trainer or inheritune writes (`RUN_ENTRIES`, checked one level into
the directories whose contents we know), and it removes exactly those entries. A directory holding
anything else, or a run of an older jaxshare (config.yaml without the marker), is left for the user
to move or delete.

The table of what a run dir holds (RUN_ENTRIES) is data at the storage floor (`storage.markers`),
where `--overwrite` of any output reads it too.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from jaxshare.errors import JaxshareError
from jaxshare.storage import paths
from jaxshare.storage.atomic import protected
from jaxshare.storage.markers import (  # noqa: F401 (RUN_ENTRIES: for callers)
    RUN_ENTRIES,
    RUN_FORMAT,
    RUN_MARKER,
    RUN_VERSION,
    foreign_run_entries,
    is_run_entry,
)

MARKER = RUN_MARKER
MARKER_FORMAT = {"format": RUN_FORMAT, "version": RUN_VERSION}


class RunDirError(JaxshareError, ValueError):
    """A run dir a new run may not start in (or a run dir that cannot be read)."""


def _path(run_dir):
    return paths.as_path(str(run_dir))


def is_marked(run_dir) -> bool:
    """The directory carries our marker (and it says what we write)."""
    p = _path(run_dir) / MARKER
    try:
        return p.is_file() and json.loads(p.read_text()).get("format") == MARKER_FORMAT["format"]
    except (OSError, ValueError, AttributeError):
        return False


def write_marker(run_dir) -> None:
    paths.write_text(_path(run_dir) / MARKER, json.dumps(MARKER_FORMAT) + "\n")


def foreign_entries(run_dir) -> list[str]:
    """Paths (relative to the run dir) of what jaxshare did not write there; [] when all is ours."""
    return foreign_run_entries(_path(run_dir))


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
    if paths.is_local(p):
        why = protected(Path(os.path.expanduser(str(p))).resolve())
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
