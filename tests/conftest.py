import os

# The suite's XLA CPU codegen: LLVM at -O0 and the classic (non-MLIR) fusion emitters. Compiling
# is most of what a tiny-model test does: `python -m benchmarks.suite flags` times test_heal.py -k
# every_kind from a cold cache both ways (benchmarks/results/suite_flags.json, docs/development.md);
# either flag alone kept most of the compile time. Neither flag changes what is computed (no fast-math; the same
# parity, PPL and bit-identity tests pass). A slow (real-model) test compiles under XLA's defaults
# (below), and tests/slow/test_real_model.py's parity runs the CLI in a subprocess without the flags.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in _flags and os.environ.get("JAXSHARE_TEST_XLA_DEFAULTS") != "1":
    _flags += " " + FAST_COMPILE
# One compute thread per worker: the two xdist workers already fill the two cores, and a second
# Eigen thread (XLA's dots) or OpenMP thread (torch) per worker only spins beside the other
# worker. On the real-model files (tests/slow/test_real_model.py, test_gemma3_real.py,
# tests/test_nnx.py, tests/basis/test_basis.py, two workers, cold XLA cache) 143.3 s of wall with
# the libraries' default threads, 129.3 s with one (user + sys 264.8 -> 236.8 s).
if "xla_cpu_multi_thread_eigen" not in _flags and os.environ.get("JAXSHARE_TEST_XLA_DEFAULTS") != "1":
    _flags += " --xla_cpu_multi_thread_eigen=false"
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# numpy's OpenBLAS threads spin-wait: on 2 cores shared with JAX's pool or other jobs, a float64 SVD of
# 576 x 1152 took 3.5 s with its default threads and 0.4 s with one (Basis Sharing's group SVDs).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# XLA's compile is over half of this suite's time (2,694 s of compiles in a 2,491 s run on 2 workers,
# 1,200 s of it train steps of the same tiny model); a persistent cache shared by both xdist workers
# and every subprocess CLI run compiles each program once: tests/training/test_rundir.py took 180 s
# without it, 101 s from a cold cache, 39 s warm. Keyed by the HLO, flags and versions, so a hit is
# the same executable; entries under 0.5 s of compile are not worth their write.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.environ.get("JAXSHARE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                                     "jaxshare"), "xla-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))


# Where tests write. A SmolLM2 checkpoint save is 1.6 GB: on this machine's disk (150 MB/s with fsync)
# the PostShare memory test spent 36 of its 60 s in two orbax saves, and 1.5 s each on tmpfs. The
# files are the same, only their medium differs (what the tests check is their content, the process's
# RSS and what is left behind), so a roomy /dev/shm takes the suite's temporary files, and
# pyproject's tmp_path_retention_policy = "failed" removes a passing test's tmp_path as it ends, which
# bounds what sits in RAM. A small /dev/shm (Docker's 64 MiB default) or a TMPDIR the user set keeps
# the usual place.
def _roomy_tmpfs(need: int = 12 << 30):
    import shutil

    try:
        return "/dev/shm" if os.access("/dev/shm", os.W_OK) and shutil.disk_usage("/dev/shm").free >= need else None
    except OSError:
        return None


if "TMPDIR" not in os.environ and os.environ.get("JAXSHARE_TEST_TMPFS") != "0" and (_shm := _roomy_tmpfs()):
    import tempfile

    os.environ["TMPDIR"] = _shm  # subprocesses (CLI runs, multihost workers) follow
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

# The suite's XLA cache is shared by both workers and every command a test runs, and tests kill
# commands at random moments: the commands' own safe file cache, in this process too, so an entry
# a killed command tore is a miss here rather than a warning a test reads as its command's output.
from jaxshare.cli.xla_cache import harden_when_imported  # noqa: E402

harden_when_imported()

# FAST_COMPILE pays on tiny models, where compiling is most of a test; a real model's (marked
# slow) programs then run slower for the rest of the test (-O0 code for the elementwise work). So
# the programs a slow test compiles in this process get XLA's own defaults back, per compile (the
# options are part of the persistent cache's key). `python -m benchmarks.suite real-model` times
# two real-model tests both ways (benchmarks/results/suite_real_model.json, docs/development.md).
# Subprocesses keep XLA_FLAGS. JAXSHARE_TEST_SLOW_XLA_DEFAULTS=0 turns it off. A slow test of tiny
# models (marked `tiny` too) keeps FAST_COMPILE: its programs run too briefly to repay the
# optimization (`python -m benchmarks.suite tiny`, benchmarks/results/suite_tiny.json);
# JAXSHARE_TEST_TINY_XLA_DEFAULTS=1 compiles them like the other slow tests.
XLA_DEFAULTS = {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False,
                "xla_cpu_use_fusion_emitters": True}
_compile_with_defaults = False


def _install_per_test_optimization() -> None:
    from jax._src import compiler

    get = compiler.get_compile_options

    def get_compile_options(*args, env_options_overrides=None, **kw):
        if _compile_with_defaults:  # a caller's own options win
            env_options_overrides = {**XLA_DEFAULTS, **(env_options_overrides or {})}
        return get(*args, env_options_overrides=env_options_overrides, **kw)

    compiler.get_compile_options = get_compile_options


if FAST_COMPILE in os.environ["XLA_FLAGS"] and os.environ.get("JAXSHARE_TEST_SLOW_XLA_DEFAULTS") != "0":
    _install_per_test_optimization()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before the test's fixtures: a module fixture a slow test sets up compiles for it too."""
    global _compile_with_defaults
    _compile_with_defaults = item.get_closest_marker("slow") is not None and (
        item.get_closest_marker("tiny") is None or os.environ.get("JAXSHARE_TEST_TINY_XLA_DEFAULTS") == "1")


def random_hf_model(model_type: str, seed: int = 0, **overrides):
    """A tiny transformers model with every parameter randomised (norms and biases included)."""
    import torch
    import transformers

    base = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    if model_type == "gpt2":
        base = dict(vocab_size=256, n_embd=64, n_layer=3, n_head=4, n_positions=512)
    base.update(overrides)
    cfg = transformers.AutoConfig.for_model(model_type, **base)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or ".ln_" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    return model


def torch_logits(model, tokens: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.float().numpy()


@pytest.fixture
def tokens():
    return np.random.default_rng(0).integers(0, 256, size=(2, 160)).astype(np.int32)


def _file_seconds() -> dict[str, float]:
    """Seconds per test file in the last recorded suite run (benchmarks/results/suite.jsonl)."""
    import json
    from pathlib import Path

    log = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "suite.jsonl"
    try:
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return {}
    return next((r["per_file_s"] for r in reversed(rows) if r.get("per_file_s")), {})


def pytest_collection_modifyitems(config, items):
    """Longest files first. xdist's loadfile hands each worker one file at a time in this order
    (pyproject's --no-loadscope-reorder, xdist 3.8, keeps it; by default xdist orders files by their test
    count, which left the slow one-test real-model files to the end and one worker idle while
    the other finished them: 918 s against 888 s simulated on the per-file times of the last
    run). Within a file the order is kept; a file the record does not know runs after those it
    does, as if it took a second."""
    seconds = _file_seconds()
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::")[0], 1.0))


# JAXSHARE_TEST_COMPILE_LOG=DIR: each pytest process (the xdist workers) appends one JSON line per
# test to DIR with the seconds its jit tracing, lowering and XLA compiles took, to see where the
# suite's compile time goes. Subprocesses a test starts (CLI runs) do not load this file and are not
# counted.
if os.environ.get("JAXSHARE_TEST_COMPILE_LOG"):
    import collections
    import json as _json

    _compile_s: dict = collections.defaultdict(lambda: collections.Counter())

    def _on_duration(event: str, secs: float, **_kw) -> None:
        if event.startswith("/jax/core/compile/"):
            test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
            _compile_s[test][event.rsplit("/", 1)[1]] += secs
            if event.endswith("backend_compile_duration"):
                _compile_s[test]["n_compiles"] += 1
                if secs < 0.5:
                    _compile_s[test]["under_0.5s"] += secs

    jax.monitoring.register_event_duration_secs_listener(_on_duration)

    def pytest_sessionfinish(session):
        out = os.path.join(os.environ["JAXSHARE_TEST_COMPILE_LOG"], f"compile-{os.getpid()}.jsonl")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "a") as f:
            for test, c in _compile_s.items():
                f.write(_json.dumps({"test": test, **c}) + "\n")


@pytest.fixture(scope="session")
def bigbench():
    """The bigbench 1.0.0 sdist (wiki, xsum, the multiple-choice tasks), or a skip when the package
    index answers that it has no such file: it stopped serving this release in December 2026. Any
    other failure to fetch it (an unreachable index) fails the test."""
    from jaxshare.data.corpora import CorpusError, bigbench_sdist

    try:
        return bigbench_sdist()
    except CorpusError as e:
        if "no sdist on the package index" not in str(e):
            raise
        pytest.skip("the package index no longer serves bigbench==1.0.0 and no copy is cached")
