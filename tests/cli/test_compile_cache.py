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


def test_a_command_fills_the_cache_under_jaxshare_cache_and_can_be_told_not_to(tmp_path):
    model = save_tiny_model(tmp_path / "m")
    _generate(model, {"JAXSHARE_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu",
                      "JAXSHARE_XLA_CACHE": "0"})
    assert not (tmp_path / "cache" / "xla").exists() or not any((tmp_path / "cache" / "xla").iterdir())
    _generate(model, {"JAXSHARE_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu",
                      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})  # a tiny model compiles fast
    assert any((tmp_path / "cache" / "xla").iterdir())
