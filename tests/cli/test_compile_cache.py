"""Commands keep their compiled XLA programs in jaxshare's cache, so the next command skips them."""
import os
import subprocess
import sys
from pathlib import Path

from tests.tiny_model import save_tiny_model

ROOT = Path(__file__).resolve().parents[2]


def _generate(model, env):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT"))} | env
    proc = subprocess.run([sys.executable, "-m", "jaxshare", "generate", str(model), "--prompt", "w1 w2",
                           "--max-new-tokens", "4", "--json"], capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_command_fills_the_cache_under_jaxshare_cache(tmp_path):
    model = save_tiny_model(tmp_path / "m")
    _generate(model, {"JAXSHARE_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu",
                      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})  # a tiny model compiles fast
    assert any((tmp_path / "cache" / "xla").iterdir())


def test_jaxshare_xla_cache_0_turns_it_off(tmp_path, monkeypatch):
    """The switch, in this process as a command sees it before importing jax (a second command run
    took 12 s): with it, nothing is set for jax to read; without it, the cache folder is."""
    import sys

    from jaxshare.cli.main import enable_compilation_cache

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
