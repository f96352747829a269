"""Run paths through etils.epath: local directories, gs:// / s3:// (epath's own schemes) and any
other fsspec filesystem (`memory://`, ...; registered with epath on first use).

Committing our own outputs safely on every filesystem (storage.atomic):
- local: the output is built in a temporary sibling and renamed into place;
- elsewhere: built in a local temporary directory, copied to the destination, then a completion
  marker `COMMIT_MARKER` is written last. Readers (`is_complete`) trust only a marked directory, so
  a writer killed mid-copy leaves an unmarked directory that is ignored and replaced next time.
Orbax reaches arrays through tensorstore, which writes local paths and gs:// but not arbitrary
fsspec filesystems: `orbax_can_write` tells the trainer when to stage checkpoints locally and
commit copies of them (single process).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from etils import epath
from etils.epath import backend as _backend
from etils.epath import gpath as _gpath
from etils.epath import register as _register

from jaxshare.errors import InputError, JaxshareError, MissingDependency
from jaxshare.storage.markers import COMMIT_MARKER, OUTPUT_MARKER, UPLOAD_MARKER

_EPATH_SCHEMES = ("gs", "s3", "az", "hf")
_ORBAX_SCHEMES = ("gs",)
_COPY_BYTES = 64 << 20


class _AnyFsspecBackend(_backend._FileSystemSpecBackend):
    """epath's fsspec backend, for any protocol fsspec knows (not only gs/s3/az/hf)."""

    def fs(self, path):
        p = os.fspath(path)
        scheme = p.split("://", 1)[0] if "://" in p else None
        if scheme and scheme not in _EPATH_SCHEMES:
            return self._get_filesystem(scheme)
        return super().fs(path)


_ANY = _AnyFsspecBackend()


def _register_scheme(scheme: str) -> None:
    """Teach epath a URL scheme served by fsspec (idempotent)."""
    prefix = f"{scheme}://"
    if prefix in _register._URI_PREFIXES_TO_CLS:
        return
    import fsspec  # deferred: only URL paths need it, and the CLI's startup imports this module

    fsspec.get_filesystem_class(scheme)  # unknown protocol: ValueError, before epath is touched
    _gpath._URI_PREFIXES = _gpath._URI_PREFIXES + (prefix,)
    _gpath._URI_SCHEMES = _gpath._URI_SCHEMES | {scheme}
    _gpath._URI_MAP_ROOT[prefix] = f"/{scheme}/"
    _gpath._PREFIX_TO_BACKEND[scheme] = _ANY
    _register._URI_PREFIXES_TO_CLS[prefix] = _gpath.PosixGPath


def scheme(path) -> str | None:
    s = str(path)
    return s.split("://", 1)[0] if "://" in s else None


# The package each URL scheme needs (fsspec finds the filesystem class in it); all come with the
# `remote` extra (gcsfs and s3fs bring aiohttp, which http(s):// needs).
PACKAGES = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "s3a": "s3fs", "az": "adlfs", "abfs": "adlfs",
            "abfss": "adlfs", "http": "aiohttp", "https": "aiohttp", "hf": "huggingface_hub"}
_READY: set[str] = set()


class MissingInput(JaxshareError, FileNotFoundError):
    """A model or data URL with nothing there."""


def _need_filesystem(path: str, s: str) -> None:
    """Refuse a URL whose filesystem package is missing, naming the package and the extra (epath
    and fsspec would fail at the first read with an ImportError traceback)."""
    if s in _READY:
        return
    try:
        import fsspec  # deferred, as in _register_scheme

        fsspec.get_filesystem_class(s)
    except ImportError:
        pkg = PACKAGES.get(s, "fsspec")
        raise MissingDependency(f"{path}: {s}:// paths need the {pkg} package: pip install 'jaxshare[remote]' "
                                f"(or pip install {pkg})") from None
    except ValueError:
        raise InputError(f"{path}: no filesystem is known for {s}:// (use a local path, or gs://, s3://, az://, "
                         "https://, memory:// or another fsspec protocol)") from None
    _READY.add(s)


def as_path(path) -> epath.Path:
    """An epath for a local path or any URL an fsspec filesystem serves."""
    if isinstance(path, str) and "://" in path:
        s = scheme(path)
        if s == "file":
            return epath.Path(path.split("://", 1)[1])
        _need_filesystem(path, s)
        if s not in _EPATH_SCHEMES:
            _register_scheme(s)
    return epath.Path(path)


def is_local(path) -> bool:
    return scheme(as_path(path)) is None


def orbax_can_write(path) -> bool:
    s = scheme(as_path(path))
    return s is None or s in _ORBAX_SCHEMES


def local_str(path) -> str:
    """Absolute local path string (orbax and tensorstore want absolute paths)."""
    return os.path.abspath(os.fspath(as_path(path)))


def umask() -> int:
    """The process umask, read without setting it (os.umask would race with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _replace_local(p, blob: bytes) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.fspath(p.parent), prefix=f".{p.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; a plain write would follow the umask
        os.replace(tmp, os.fspath(p))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    """Replace a small file whole: local through a temporary + os.replace; an object store writes
    objects atomically by itself."""
    p = as_path(path)
    if is_local(p):
        _replace_local(p, text.encode())
    else:
        p.write_text(text)


def write_bytes(path, blob: bytes) -> None:
    p = as_path(path)
    if is_local(p):
        _replace_local(p, blob)
    else:
        p.write_bytes(blob)


def is_complete(path) -> bool:
    """A committed output: on a local disk any existing directory (renamed in whole), elsewhere
    one holding the completion marker."""
    p = as_path(path)
    if is_local(p):
        return p.is_dir()
    return (p / COMMIT_MARKER).exists()


def clear_remote(dest) -> None:
    """Remove a directory on an object store, its completion marker first (so that a kill midway
    leaves an unmarked directory, which readers ignore)."""
    dest = as_path(dest)
    if (dest / COMMIT_MARKER).exists():
        (dest / COMMIT_MARKER).unlink()
    if dest.exists():
        dest.rmtree()


def upload_file(src, target) -> None:
    """One local file to any epath, in pieces."""
    # bytes through epath: its cross-backend copy assumes one filesystem
    with open(src, "rb") as r, target.open("wb") as w:
        shutil.copyfileobj(r, w, _COPY_BYTES)


def upload_tree(local_dir, dest) -> None:
    """Copy a local directory to `dest` (any epath), then mark it complete. An earlier
    incomplete or complete copy at dest is replaced; its marker goes first. UPLOAD_MARKER and the
    output marker (when there is one) go up first, so that a kill midway leaves a directory that
    readers refuse and the next write recognises as ours and replaces."""
    dest = as_path(dest)
    clear_remote(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / UPLOAD_MARKER).write_text("")
    if os.path.isfile(os.path.join(local_dir, OUTPUT_MARKER)):
        upload_file(os.path.join(local_dir, OUTPUT_MARKER), dest / OUTPUT_MARKER)
    for top, _dirs, files in os.walk(local_dir):
        rel = os.path.relpath(top, local_dir)
        target = dest if rel == "." else dest / rel
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            if not (rel == "." and name == OUTPUT_MARKER):
                upload_file(os.path.join(top, name), target / name)
    (dest / COMMIT_MARKER).write_text("")
    (dest / UPLOAD_MARKER).unlink()  # a kill just before this leaves both: the completion marker rules


def copy_file(src, dest: str) -> None:
    """One file from any epath to a local path, in pieces (a model shard is GBs: never whole in memory)."""
    with as_path(src).open("rb") as r, open(dest, "wb") as w:
        shutil.copyfileobj(r, w, _COPY_BYTES)


def download_tree(src, local_dir) -> None:
    """Copy a directory (any epath) to a local directory, leaving out the completion marker."""
    os.makedirs(local_dir, exist_ok=True)
    for child in as_path(src).iterdir():
        target = os.path.join(local_dir, child.name)
        if child.is_dir():
            download_tree(child, target)
        elif child.name not in (COMMIT_MARKER, UPLOAD_MARKER):
            copy_file(child, target)


def listing(p) -> list:
    """(relative name, size) of every file under p (or of p itself): what a cached copy must match."""
    if not p.is_dir():
        return [[p.name, p.stat().length]]
    out = []
    for child in sorted(p.iterdir(), key=lambda c: c.name):
        if child.name in (COMMIT_MARKER, UPLOAD_MARKER):
            continue
        out += [[f"{child.name}/{n}", sz] for n, sz in listing(child)] if child.is_dir() else listing(child)
    return out


def exists(src, spec: str, what: str) -> bool:
    """Whether a remote path exists; a filesystem that cannot be reached is said so, not "missing"."""
    try:
        found = src.exists()
    except OSError as e:
        raise InputError(f"{what} {spec}: cannot be reached ({e.strerror or e}); check the network and the "
                         "credentials, or copy it to a local path") from None
    if not found and scheme(spec) in ("http", "https"):
        # fsspec's HTTP exists() answers False for an unreachable host as for a missing page
        try:
            src.stat()
        except FileNotFoundError:
            return False
        except Exception as e:  # aiohttp's connection errors are no OSError subclass
            raise InputError(f"{what} {spec}: cannot be reached ({type(e).__name__}: {str(e)[:200]}); no network? "
                             "Download it and pass the local path") from None
    return found
