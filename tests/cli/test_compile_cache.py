"""Commands keep their compiled XLA programs in jaxshare's cache, so the next command skips them."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiny_model import save_tiny_model

ROOT = Path(__file__).resolve().parents[2]


def _generate(model, env):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT"))} | env
    proc = subprocess.run([sys.executable, "-m", "jaxshare", "generate", str(model), "--prompt", "w1 w2",
                           "--max-new-tokens", "4", "--json"], capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_a_command_fills_the_cache_under_jaxshare_cache(tmp_path):
    model = save_tiny_model(tmp_path / "m")
    _generate(model, {"JAXSHARE_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu",
                      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})  # a tiny model compiles fast
    assert any((tmp_path / "cache" / "xla").iterdir())


def test_jaxshare_xla_cache_0_turns_it_off(tmp_path, monkeypatch):
    """The switch, in this process as a command sees it before importing jax (a second command run
    took 12 s): with it, nothing is set for jax to read; without it, the cache folder is."""
    import sys

    from jaxshare.cli.xla_cache import enable_compilation_cache

    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path / "cache"))
    for k in [k for k in os.environ if k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT"))]:
        monkeypatch.delenv(k)
    monkeypatch.delitem(sys.modules, "jax")  # restored after the test
    monkeypatch.setenv("JAXSHARE_XLA_CACHE", "0")
    env = dict(os.environ)
    enable_compilation_cache()
    assert dict(os.environ) == env
    monkeypatch.setenv("JAXSHARE_XLA_CACHE", "1")
    enable_compilation_cache()
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "cache" / "xla")


def test_entries_torn_by_a_killed_command_are_replaced_without_a_word(tmp_path):
    """What a command killed mid-write leaves in JAX's own file cache: an entry cut short (here one
    halved, one empty) and an entry without its access time. With JAX's cache alone the next command
    warns on stderr for each torn entry and never replaces it, and the missing access time makes
    every write raise (jax-ml/jax#39880). The command's cache takes them as misses and rewrites them."""
    from jax._src.compilation_cache import decompress_executable

    model = save_tiny_model(tmp_path / "m")
    env = {"JAXSHARE_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu",
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    _generate(model, env)
    xla = tmp_path / "cache" / "xla"
    entries = sorted(xla.glob("*-cache"))
    assert len(entries) >= 3
    entries[0].write_bytes(entries[0].read_bytes()[: entries[0].stat().st_size // 2])
    entries[1].write_bytes(b"")
    Path(str(entries[2])[: -len("-cache")] + "-atime").unlink()
    proc = _generate(model, env)
    assert "compilation cache" not in proc.stderr, proc.stderr[-2000:]
    after = sorted(xla.glob("*-cache"))
    assert {p.name for p in entries} <= {p.name for p in after}
    for p in after:
        decompress_executable(p.read_bytes())  # whole
        assert Path(str(p)[: -len("-cache")] + "-atime").exists()
    assert not list(xla.glob("*.tmp-*"))


def _safe_cache(path, max_size):
    from jax._src import compilation_cache as cc

    from jaxshare.cli.xla_cache import harden

    assert harden(cc), "this JAX's file cache is not the one jaxshare.cli.xla_cache was written against"
    return cc.LRUCache(str(path), max_size=max_size), cc


def test_an_interrupted_write_leaves_no_entry_and_no_temporary(tmp_path, monkeypatch):
    cache, cc = _safe_cache(tmp_path, 1 << 20)
    value = cc.compress_executable(b"x" * 1000)
    kind = type(cache.path)  # etils.epath's where it is installed, as for jax
    real = kind.replace

    def interrupted(self, target):
        if str(target).endswith("-cache"):
            raise KeyboardInterrupt  # after the access time is in place, before the entry
        return real(self, target)

    monkeypatch.setattr(kind, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.put("k1", value)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".lockfile") == ["k1-atime"]
    assert cache.get("k1") is None
    monkeypatch.setattr(kind, "replace", real)
    cache.put("k1", value)
    assert cache.get("k1") == value


def test_eviction_takes_an_entry_without_access_time_first_and_sweeps_old_temporaries(tmp_path):
    cache, cc = _safe_cache(tmp_path, 2500)
    value = cc.compress_executable(os.urandom(1000))  # random bytes stay about 1 kB compressed
    (tmp_path / "orphan-cache").write_bytes(value)  # JAX's writer killed before the access time
    old = tmp_path / "k0-cache.tmp-1-deadbeef"
    old.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fresh = tmp_path / "k9-cache.tmp-2-feedbeef"  # a write in progress in another process
    fresh.write_bytes(b"partial")
    cache.put("k1", value)
    cache.put("k2", value)  # over the cap: the orphan goes, not k1
    names = sorted(p.name for p in tmp_path.iterdir() if p.name != ".lockfile")
    assert names == ["k1-atime", "k1-cache", "k2-atime", "k2-cache", fresh.name]


def test_the_command_builds_the_safe_cache_however_jax_is_imported():
    """A command's process sets the cache up before importing jax; the class must be in place by the
    time jax's cache module is (its first compile builds the cache)."""
    code = ("import sys; from jaxshare.cli.xla_cache import harden_when_imported; harden_when_imported(); "
            "assert 'jax' not in sys.modules; import jax; from jax._src import compilation_cache as cc; "
            "print(cc.LRUCache.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "SafeFileCache", out.stderr[-2000:]


def test_a_failing_hook_never_breaks_the_import(tmp_path, monkeypatch):
    from jaxshare.cli.xla_cache import _AfterImport

    (tmp_path / "jaxshare_hook_probe.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "jaxshare_hook_probe", raising=False)
    seen = []

    def then(module):
        seen.append(module.VALUE)
        raise AttributeError("a JAX with another cache")

    monkeypatch.setattr(sys, "meta_path", [_AfterImport("jaxshare_hook_probe", then), *sys.meta_path])
    import jaxshare_hook_probe

    assert jaxshare_hook_probe.VALUE == 1 and seen == [1]
    assert not any(isinstance(f, _AfterImport) for f in sys.meta_path)
