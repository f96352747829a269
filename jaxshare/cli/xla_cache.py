"""The persistent XLA compilation cache of `jaxshare` commands, safe to kill.

Commands keep their compiled programs in <jaxshare cache>/xla, so a second `jaxshare generate` or
`eval` of a model skips its compiles. JAX's file cache writes an entry in place and then, in a
second file, its last-access time. A command killed between the two (Ctrl-C, a preempted pod, the
OOM killer) leaves either a truncated entry, which every later command fails to read (a warning on
stderr and a compile each time, and the entry is never replaced), or an entry without its access
time, after which the size cap's eviction raises on every write (jax-ml/jax#39880): the cache stops
growing, with a warning per compile. Here each file is written aside and renamed into place (the
access time first, so an entry never appears without it), an entry that does not decompress is a
miss and is removed, and eviction takes an entry without an access time first.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import time
import uuid
from contextlib import contextmanager

XLA_CACHE_MAX_BYTES = 2 << 30
CACHE_SUFFIX, ATIME_SUFFIX = "-cache", "-atime"  # jax._src.lru_cache's names for the two files
TMP = ".tmp-"  # infix of a file being written: ends in neither suffix, so JAX never reads one
STALE_TMP_S = 3600.0  # a temporary this old belongs to a killed write (a 2 GiB write takes seconds)
MODULE = "jax._src.compilation_cache"


def enable_compilation_cache() -> None:
    """Compiled XLA programs persist across commands in <jaxshare cache>/xla (LRU, 2 GiB; keyed by
    the program, flags, versions and device). JAX_COMPILATION_CACHE_DIR chooses another folder;
    JAXSHARE_XLA_CACHE=0 turns it off."""
    if os.environ.get("JAXSHARE_XLA_CACHE", "1") == "0":
        return
    try:
        from jaxshare.storage.fetch import cache_dir

        path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(cache_dir() / "xla")
    except OSError:  # an unwritable cache root: the command still runs, compiling as before
        return
    settings = {"jax_compilation_cache_dir": path, "jax_persistent_cache_min_compile_time_secs": 0.5,
                "jax_compilation_cache_max_size": XLA_CACHE_MAX_BYTES}
    harden_when_imported()
    if "jax" in sys.modules:  # called in-process after jax is up (tests, notebooks): its config
        import jax

        if jax.config.jax_compilation_cache_dir is None:
            for k, v in settings.items():
                jax.config.update(k, v)
        return
    for k, v in settings.items():  # read by jax when the command first imports it
        os.environ.setdefault(k.upper(), str(v))


def harden_when_imported() -> None:
    """Put the safe cache in place before JAX's first compile: now if jax is imported, else as it
    is (importing jax here would cost a command that never uses it a second)."""
    if MODULE in sys.modules:
        harden(sys.modules[MODULE])
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(MODULE, harden))


def harden(cc) -> bool:
    """Make the compilation cache module `cc` build (or turn its built cache into) a SafeFileCache.
    False where this JAX's cache is not the file cache this was written against: it stays as is."""
    base = getattr(cc, "LRUCache", None)
    if not isinstance(base, type) or not all(hasattr(base, m) for m in ("get", "put", "_evict_if_needed")):
        return False
    safe = base if getattr(base, "_jaxshare_safe", False) else _safe_class(base, cc)
    cc.LRUCache = safe
    built = getattr(cc, "_cache", None)
    if type(built) is base:  # already built in this process: same state, safer methods
        built.__class__ = safe
    return True


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `then(module)` right after `name` is first imported, before anything can use it."""

    def __init__(self, name, then):
        self.name, self.then = name, then

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenLoader(spec.loader, self.then)
        return spec


class _ThenLoader(importlib.abc.Loader):
    def __init__(self, loader, then):
        self.loader, self.then = loader, then

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        try:
            self.then(module)
        except Exception:  # a JAX this was not written against: its own cache, and jax still imports
            pass


def _size_and_mtime(p) -> tuple[int, float]:
    st = p.stat()  # pathlib's os.stat_result or etils.epath's StatResult (remote caches)
    return getattr(st, "st_size", None) or getattr(st, "length", 0), getattr(st, "st_mtime", None) or getattr(
        st, "mtime", time.time())


def _publish(path, data: bytes) -> None:
    """Write `path` whole or not at all: aside, then renamed over it."""
    tmp = path.parent / f"{path.name}{TMP}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def _safe_class(base, cc):
    class SafeFileCache(base):
        _jaxshare_safe = True

        @contextmanager
        def _locked(self):
            if not self.eviction_enabled:  # JAX locks only a capped cache; so do we
                yield
                return
            self.lock.acquire(timeout=self.lock_timeout_secs)
            try:
                yield
            finally:
                self.lock.release()

        def get(self, key):
            value = super().get(key)
            if value is None:
                return None
            try:
                cc.decompress_executable(value)
            except Exception:  # torn by a writer that was killed: a miss, and a place for a whole one
                with self._locked():
                    for suffix in (CACHE_SUFFIX, ATIME_SUFFIX):
                        (self.path / f"{key}{suffix}").unlink(missing_ok=True)
                return None
            return value

        def put(self, key, value):
            if not key or (self.eviction_enabled and len(value) > self.max_size):
                return super().put(key, value)  # JAX's own refusal and warning
            entry = self.path / f"{key}{CACHE_SUFFIX}"
            with self._locked():
                if entry.exists():
                    return
                self._evict_if_needed(additional_size=len(value))
                if self.eviction_enabled:
                    _publish(self.path / f"{key}{ATIME_SUFFIX}", time.time_ns().to_bytes(8, "little"))
                _publish(entry, value)

        def _evict_if_needed(self, *, additional_size: int = 0) -> None:
            if not self.eviction_enabled:
                return
            now = time.time()
            for tmp in self.path.glob(f"*{TMP}*"):
                try:
                    if now - _size_and_mtime(tmp)[1] > STALE_TMP_S:
                        tmp.unlink(missing_ok=True)
                except OSError:
                    pass
            entries, total = [], 0
            for entry in self.path.glob(f"*{CACHE_SUFFIX}"):
                key = entry.name[: -len(CACHE_SUFFIX)]
                try:
                    size = _size_and_mtime(entry)[0]
                except FileNotFoundError:
                    continue
                try:
                    atime = int.from_bytes((self.path / f"{key}{ATIME_SUFFIX}").read_bytes(), "little")
                except FileNotFoundError:  # left by JAX's own writer when killed: the oldest
                    atime = 0
                entries.append((atime, key, size))
                total += size
            entries.sort()
            target = self.max_size - additional_size
            for _, key, size in entries:
                if total <= target:
                    break
                for suffix in (CACHE_SUFFIX, ATIME_SUFFIX):
                    (self.path / f"{key}{suffix}").unlink(missing_ok=True)
                total -= size

    return SafeFileCache
