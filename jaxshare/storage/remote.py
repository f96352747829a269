"""Outputs at a URL (gs://, s3://, memory://, any fsspec filesystem): no rename there, so an output
is built in a local temporary and uploaded, UPLOAD_MARKER and our output marker first, COMMIT_MARKER
last. A directory with UPLOAD_MARKER and no COMMIT_MARKER is an upload that was killed: readers
refuse it and the next write replaces it, --overwrite or not."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from jaxshare.storage import paths
from jaxshare.storage.failures import (
    OutputError,
    OutputExistsError,
    write_failures,
)
from jaxshare.storage.markers import (
    COMMIT_MARKER,
    OUTPUT_MARKER,
    UPLOAD_MARKER,
    foreign_entries,
    is_our_output,
    kind_of,
    marker,
)


def is_remote(path) -> bool:
    """A URL destination other than file:// (written by upload, not by rename)."""
    text = os.fspath(path) if not isinstance(path, str) else path
    return "://" in text and not text.startswith("file://")


def output_path(path):
    """What a writer returns for its destination: a local Path as given, or the URL as text."""
    return os.fspath(path) if is_remote(path) else Path(path)


def _remote(path, sources):
    """(shown, epath) of a URL destination; refuses one that is or holds or lies in a source."""
    shown = os.fspath(path)
    dest = paths.as_path(shown)  # a missing filesystem package: MissingDependency, naming it
    for src in sources:
        s = os.fspath(src) if src is not None else ""
        if "://" in s and (s.rstrip("/") == shown.rstrip("/") or s.startswith(shown.rstrip("/") + "/")
                           or shown.startswith(s.rstrip("/") + "/")):
            raise OutputError(f"refusing to write to {shown}: it is, holds or lies in the input {s}; choose an "
                              "output outside the input")
    return shown, dest


def _unfinished_upload(dest) -> bool:
    """An upload of ours that was killed: our output and upload markers, no completion marker, nothing foreign."""
    if not (dest / UPLOAD_MARKER).exists() or (dest / COMMIT_MARKER).exists():
        return False
    if [c.name for c in dest.iterdir()] == [UPLOAD_MARKER]:  # killed before our output marker went up
        return True
    return is_our_output(dest) is not None and not foreign_entries(dest)


def check_remote(path, overwrite: bool, sources=()):
    shown, dest = _remote(path, sources)
    try:
        if not dest.exists():
            return dest
        if not dest.is_dir():
            raise OutputError(f"{shown} exists and is not a directory")
        if not any(True for _ in dest.iterdir()) or _unfinished_upload(dest):
            return dest
    except OSError as e:
        raise OutputError(f"cannot read {shown}: {e.strerror or e}") from None
    if not overwrite:
        raise OutputExistsError(f"{shown} exists and is not empty (pass --overwrite to replace it)")
    kind = is_our_output(dest)
    if kind is None:
        raise OutputError(f"{shown} is not a jaxshare output (it has no {OUTPUT_MARKER}); --overwrite only replaces "
                          "jaxshare outputs: move or delete it yourself")
    foreign = foreign_entries(dest)
    if foreign:
        raise OutputError(f"{shown} is a jaxshare {kind} but also holds {', '.join(foreign[:8])}, which jaxshare did "
                          "not write there; --overwrite would delete them: move them out first")
    return dest


def check_remote_file(path, overwrite: bool, ours: Callable, what: str, sources=()):
    """check_file_destination for a URL: absent, or (with overwrite) a file `ours` accepts."""
    shown, dest = _remote(path, sources)
    if dest.exists():
        if dest.is_dir():
            raise OutputError(f"{shown} exists and is not a file")
        if not overwrite:
            raise OutputExistsError(f"{shown} exists (pass --overwrite to replace it)")
        if not ours(dest):
            raise OutputError(f"{shown} is not {what}; --overwrite only replaces those: move or delete it yourself")
    return dest


@contextmanager
def remote_output(path, overwrite: bool) -> Iterator[Path]:
    shown, tmp = os.fspath(path), None
    with write_failures(shown, lambda: tmp):
        try:
            check_remote(path, overwrite)
            tmp = Path(tempfile.mkdtemp(prefix="jaxshare-out-"))
            yield tmp
            names = os.listdir(tmp)
            (tmp / OUTPUT_MARKER).write_text(marker(kind_of(names), names))
            dest = check_remote(path, overwrite)  # again: the destination may have changed meanwhile
            paths.upload_tree(tmp, dest)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def remote_file(path, overwrite: bool, ours: Callable, what: str) -> Iterator[Path]:
    shown, tmp = os.fspath(path), None
    with write_failures(shown, lambda: tmp):
        try:
            check_remote_file(path, overwrite, ours, what)
            fd, name = tempfile.mkstemp(prefix="jaxshare-out-")
            os.close(fd)
            tmp = Path(name)
            yield tmp
            dest = check_remote_file(path, overwrite, ours, what)
            paths.upload_file(tmp, dest)
        finally:
            if tmp is not None and os.path.lexists(tmp):
                os.unlink(tmp)
