"""The one way an output directory is written: aside, then swapped in whole.

`atomic_output(path, overwrite)` yields a fresh temporary sibling `.<name>.partial-<pid>-<random>`
of the destination; when the block finishes, modes are set from the umask and the temporary is
renamed onto the destination. With `overwrite` the previous output is first renamed aside to
`.<name>.old-<pid>-<random>` and deleted only once the new one is in place (if the swap fails it is
put back). A killed process therefore leaves the destination either as it was or complete, plus at
most a hidden sibling that the next write to the same destination sweeps (`sweep_stale`).

`--overwrite` only ever replaces an empty directory or something recognisably ours that holds
nothing else (`storage.markers`: every directory committed here carries a marker listing its files),
never the working directory, one of its ancestors, the home directory or `/`, and never a path that
contains a command's input or lies inside it. Single files (a .gguf) go the same way through
`atomic_file`: a hidden sibling, renamed into place, swept when its writer died.

A URL destination (gs://, s3://, memory://, any fsspec filesystem; `storage.paths`) cannot be
renamed into place: the output is built in a local temporary directory, uploaded (the output
marker first), and `COMMIT_MARKER` is written last. Readers trust only a directory holding it; an
upload that was killed leaves an unmarked directory of ours, which the next write replaces
(--overwrite or not, as a local write sweeps a dead writer's temporary). Replacing a complete
remote output with --overwrite removes it before the upload: an object store has no rename.

Every I/O failure while writing (OSError, safetensors' SafetensorError, orbax/tensorstore
errors) becomes one `OutputError` naming the destination and the cause; the temporary is removed.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from jaxshare.storage import paths
from jaxshare.storage.failures import (  # noqa: F401
    OutputError,
    OutputExistsError,
    check_utf8,
    describe,
    is_io_error,
    shown_path,
    write_failures,
)
from jaxshare.storage.markers import (
    EXPORT_MARKER,
    OUTPUT_MARKER,
    foreign_entries,
    is_our_output,
    kind_of,
    marker,
)
from jaxshare.storage.remote import (  # noqa: F401
    check_remote,
    check_remote_file,
    is_remote,
    output_path,
    remote_file,
    remote_output,
)

__all__ = ["EXPORT_MARKER", "OUTPUT_MARKER", "OutputError", "OutputExistsError", "atomic_file", "atomic_output",
           "check_destination", "check_file_destination", "check_plot_dir", "is_our_output", "is_remote", "sweep_stale"]
STALE_AFTER_S = 24 * 3600  # a sibling older than this is stale even if its pid is alive (pid reuse)
_TAGS = ("partial", "old", "trash")


def protected(real: Path) -> str | None:
    """Why `real` (a resolved path) may never be an output destination, or None."""
    if real == Path(real.anchor):
        return "it is the root directory"
    cwd = Path.cwd().resolve()
    if real == cwd:
        return "it is the current directory"
    if real in cwd.parents:
        return "it is an ancestor of the current directory"
    home = Path.home().resolve()
    if real == home:
        return "it is the home directory"
    if real in home.parents:
        return "it is an ancestor of the home directory"
    return None


def _resolve(path, sources) -> tuple[str, Path]:
    """(shown, resolved destination) after the checks common to folders and files."""
    check_utf8(path, "output path")
    shown = os.fspath(path)
    real = Path(os.path.expanduser(shown)).resolve()
    why = protected(real)
    if why:
        raise OutputError(f"refusing to write to {shown}: {why}")
    for src in sources:
        if src is None or "://" in os.fspath(src):
            continue
        s = Path(os.path.expanduser(os.fspath(src)))
        if not os.path.lexists(s):
            continue  # a registered name or a corpus, not a path
        s = s.resolve()
        rel = ("is" if s == real else "contains" if s.is_relative_to(real) else
               "is inside" if real.is_relative_to(s) else None)
        if rel:
            raise OutputError(f"refusing to write to {shown}: it {rel} the input {src}, which writing it would "
                              "replace or change; choose an output outside the input")
    return shown, real


def _restored(real: Path) -> str:
    """Sweep dead writers' siblings of `real`; a note when that put an interrupted output back."""
    if not real.parent.is_dir():
        return ""
    swept = sweep_stale(real)
    if any(".old-" in p.name for p in swept) and os.path.lexists(real):
        return (" (it was put back from an earlier write that was interrupted while replacing it: "
                f"{swept[0].name} was its copy)")
    return ""


def check_destination(path, overwrite: bool, sources=()) -> Path:
    """Refuse a destination we must not write (cheap: call it before loading anything). `sources`:
    the command's input paths; a destination that contains one or lies inside one is refused.

    Returns the resolved destination (symlinks followed; an epath for a URL). Raises OutputError
    (OutputExistsError for a non-empty destination without --overwrite)."""
    if is_remote(path):
        return check_remote(path, overwrite, sources)
    shown, real = _resolve(path, sources)
    again = _restored(real)
    if real.exists():
        if not real.is_dir():
            raise OutputError(f"{shown} exists and is not a directory")
        try:
            empty = not any(real.iterdir())
        except OSError as e:
            raise OutputError(f"cannot read {shown}: {e.strerror or e}") from None
        if not empty:
            if not overwrite:
                raise OutputExistsError(f"{shown} exists and is not empty{again} (pass --overwrite to replace it)")
            kind = is_our_output(real)
            if kind is None:
                raise OutputError(f"{shown} is not a jaxshare output (it has no {OUTPUT_MARKER}, jaxshare.json, "
                                  f"{EXPORT_MARKER} or jaxshare_run.json); --overwrite only replaces jaxshare outputs: "
                                  "move or delete it yourself")
            foreign = foreign_entries(real)
            if foreign:
                more = f" and {len(foreign) - 8} more" if len(foreign) > 8 else ""
                raise OutputError(f"{shown} is a jaxshare {kind} but also holds {', '.join(map(shown_path, foreign[:8]))}"
                                  f"{more}, which jaxshare did not write there; --overwrite would delete them: "
                                  "move them out first")
    _check_parent(shown, real)
    return real


def _check_parent(shown: str, real: Path) -> None:
    parent = real.parent
    while not parent.exists():  # the first existing ancestor must be a writable directory
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {shown}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {shown}: {parent} is not writable")


def check_file_destination(path, overwrite: bool, ours: Callable[[Path], bool], what: str, sources=()) -> Path:
    """check_destination for a single-file output: absent, or (with overwrite) a file `ours` accepts;
    `what` names such a file in the message ("a GGUF file written by jaxshare")."""
    if is_remote(path):
        return check_remote_file(path, overwrite, ours, what, sources)
    shown, real = _resolve(path, sources)
    again = _restored(real)
    if os.path.lexists(real):
        if not real.is_file():
            raise OutputError(f"{shown} exists and is not a file")
        if not overwrite:
            raise OutputExistsError(f"{shown} exists{again} (pass --overwrite to replace it)")
        if not ours(real):
            raise OutputError(f"{shown} is not {what}; --overwrite only replaces those: move or delete it yourself")
    _check_parent(shown, real)
    return real


def check_plot_dir(path) -> Path:
    """Refuse a directory for plots that cannot be one (a file, under a file, not writable, not
    UTF-8), before any model is loaded. An existing directory is fine: plots replace their own names."""
    check_utf8(path, "plot directory")
    shown = os.fspath(path)
    real = Path(os.path.expanduser(shown)).resolve()
    if real.exists() and not real.is_dir():
        raise OutputError(f"plot directory {shown} exists and is not a directory: choose a directory")
    parent = real
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write plots to {shown}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write plots to {shown}: {parent} is not writable")
    return real


def _sibling_re(name: str) -> re.Pattern:
    # New names carry the writer's pid; `.name.partial-XXXXXXXX` (no pid) is the pre-pid layout.
    return re.compile(rf"\.{re.escape(name)}\.({'|'.join(_TAGS)})-(?:(\d+)-)?[A-Za-z0-9_]+")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_stale(dest: Path, now: float | None = None) -> list[Path]:
    """Remove the `.partial-*`/`.old-*` siblings (folders or files) of `dest` left by dead writers (pid
    gone, or older than a day); an `.old-*` whose destination is missing (killed mid-swap) is put back.
    Nothing but those exact sibling names is touched. Returns what was removed or restored."""
    now = time.time() if now is None else now
    pattern, done = _sibling_re(dest.name), []
    try:
        entries = list(dest.parent.iterdir())
    except OSError:
        return done
    for p in sorted(entries):
        m = pattern.fullmatch(p.name)
        if not m or p.is_symlink() or not (p.is_dir() or p.is_file()):
            continue
        tag, pid = m.group(1), m.group(2)
        try:
            old_enough = now - p.lstat().st_mtime > STALE_AFTER_S
        except OSError:
            continue
        if not (old_enough or (pid is not None and not _alive(int(pid)))):
            continue
        try:
            if tag == "old" and not os.path.lexists(dest):
                os.rename(p, dest)  # the writer died between moving the old output aside and swapping in
            elif p.is_dir():
                shutil.rmtree(p)
            else:  # a single-file output's temporary (a .gguf)
                p.unlink()
        except OSError:
            continue  # not ours to fight over; a later write tries again
        done.append(p)
    return done


def apply_umask(root: Path) -> None:
    """Directories 0777 & ~umask, files 0666 & ~umask (mkdtemp makes 0700, libraries vary)."""
    mask = paths.umask()
    dmode, fmode = 0o777 & ~mask, 0o666 & ~mask
    os.chmod(root, dmode)
    for top, dirs, files in os.walk(root):
        for d in dirs:
            if not os.path.islink(os.path.join(top, d)):
                os.chmod(os.path.join(top, d), dmode)
        for f in files:
            if not os.path.islink(os.path.join(top, f)):
                os.chmod(os.path.join(top, f), fmode)


def _aside(dest: Path, tag: str) -> Path:
    return dest.parent / f".{dest.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"


def _remove(old: Path, dest: Path) -> None:
    # Renamed first, so that a kill mid-delete leaves a `.trash-*` (swept) and never a half-deleted
    # `.old-*` that a later sweep could mistake for a whole previous output and put back.
    trash = _aside(dest, "trash")
    try:
        os.rename(old, trash)
    except OSError:
        trash = old
    shutil.rmtree(trash, ignore_errors=True)  # what remains is swept by the next write


def swap(tmp: Path, dest: Path) -> None:
    """Rename `tmp` onto `dest`; a previous `dest` is moved aside first and removed once `tmp` is in."""
    old = None
    if os.path.lexists(dest):
        old = _aside(dest, "old")
        os.rename(dest, old)
    try:
        os.rename(tmp, dest)
    except BaseException:
        if old is not None:
            os.rename(old, dest)
        raise
    if old is not None:
        _remove(old, dest)


@contextmanager
def atomic_output(path, overwrite: bool = False) -> Iterator[Path]:
    """Context: yields an empty temporary directory; on success it becomes `path` (see module doc),
    with OUTPUT_MARKER listing what the block wrote. On any exit but success, KeyboardInterrupt
    included, the temporary is removed."""
    if is_remote(path):
        with remote_output(path, overwrite) as tmp:
            yield tmp
        return
    shown, tmp, real = shown_path(path), None, None
    with write_failures(shown, lambda: tmp):
        try:
            real = check_destination(path, overwrite)  # sweeps dead writers' siblings first
            real.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=real.parent, prefix=f".{real.name}.partial-{os.getpid()}-"))
            yield tmp
            names = os.listdir(tmp)
            (tmp / OUTPUT_MARKER).write_text(marker(kind_of(names), names))
            apply_umask(tmp)
            check_destination(path, overwrite)  # again: the destination may have changed meanwhile
            swap(tmp, real)
        finally:
            if tmp is not None and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp is None and real is not None:
                # a Ctrl-C between mkdtemp creating the folder and `tmp` naming it: the folder carries
                # this process's pid, so this process's siblings of that prefix are that folder
                for left in real.parent.glob(f".{real.name}.partial-{os.getpid()}-*"):
                    shutil.rmtree(left, ignore_errors=True)


@contextmanager
def atomic_file(path, overwrite: bool, ours: Callable[[Path], bool], what: str) -> Iterator[Path]:
    """Context for a single-file output: yields the path of a hidden sibling to write; on success it
    is renamed onto `path`. On any other exit (KeyboardInterrupt included) it is removed; a kill
    leaves it for `sweep_stale`, which the next write to `path` runs. A URL: the file is built in a
    local temporary and copied up when complete (an object store shows an object only once it is
    closed, so a kill midway leaves the destination as it was)."""
    if is_remote(path):
        with remote_file(path, overwrite, ours, what) as tmp:
            yield tmp
        return
    shown, tmp = shown_path(path), None
    with write_failures(shown, lambda: tmp):
        try:
            real = check_file_destination(path, overwrite, ours, what)
            real.parent.mkdir(parents=True, exist_ok=True)
            tmp = _aside(real, "partial")
            yield tmp
            os.chmod(tmp, 0o666 & ~paths.umask())
            check_file_destination(path, overwrite, ours, what)  # the destination may have changed meanwhile
            os.replace(tmp, real)
        finally:
            if tmp is not None and os.path.lexists(tmp):
                os.unlink(tmp)
