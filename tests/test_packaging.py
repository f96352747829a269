"""Packaging: the core works with the core dependencies only, and the wheel holds what it should.

The core-only check runs a subprocess on a "venv" made of symlinks: the installed distributions
that pyproject's `dependencies` need (transitively), and nothing else. Hiding whole distributions
this way matches an environment where the extras were never installed: `import x` fails,
`importlib.util.find_spec(x)` is None and `importlib.metadata` does not know them (a finder that
raised would instead break the availability probes libraries run with find_spec).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# distributions the core must not need (the extras, and what pulls in the ones that are also
# transitive dependencies of core packages: rich comes with transformers' typer)
OPTIONAL = {"flax", "matplotlib", "rich", "tensorboardx", "grain", "wandb", "lm-eval", "gcsfs", "s3fs", "adlfs",
            "torch", "accelerate", "sentencepiece"}
OPTIONAL_MODULES = ["flax", "matplotlib", "rich", "tensorboardX", "grain", "wandb", "lm_eval", "gcsfs", "s3fs",
                    "adlfs", "torch", "accelerate"]
EXTRAS = {"plots", "nnx", "train", "wandb", "eval", "remote", "reference", "tpu", "cuda", "all", "test"}


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _core_distributions(requirements: list[str]) -> dict:
    """canonical name -> installed Distribution, for `requirements` and their requirements."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    out, seen, todo = {}, set(), [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name, extras = canonicalize_name(req.name), frozenset(req.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:  # a platform-specific requirement not installed here
            continue
        out[name] = dist
        for r in map(Requirement, dist.requires or []):
            if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append(r)
    return out


def _core_site(tmp_path: Path) -> Path:
    """A site dir of symlinks to the core distributions' files (modules and dist-info)."""
    from packaging.utils import canonicalize_name

    core = _core_distributions(_pyproject()["project"]["dependencies"])
    assert not OPTIONAL & set(core) - {"rich"}, "a core dependency pulls in an extra's package"
    site = tmp_path / "site"
    site.mkdir()
    for name, dist in core.items():
        if name in OPTIONAL:
            continue
        assert dist.files is not None, f"{name}: no RECORD, cannot tell its files"
        for f in dist.files:
            top = f.parts[0]
            if top == ".." or (site / top).exists():  # scripts in bin/; a namespace package seen already
                continue
            (site / top).symlink_to(dist.locate_file(top))
    assert canonicalize_name("jaxshare") not in core
    return site


CORE_SCRIPT = r'''
import contextlib, importlib, importlib.util, io, json, pkgutil, site, sys
sys.path.insert(0, SRC)
site.addsitedir(SITE)
out = {}
out["absent"] = [m for m in OPTIONAL_MODULES if importlib.util.find_spec(m) is not None]

import jaxshare
import jaxshare as js
out["version"] = jaxshare.__version__
assert callable(js.load) and callable(js.forward)

# every module imports, except those that are an optional package's adapter
failed = {}
for info in pkgutil.walk_packages(jaxshare.__path__, "jaxshare."):
    if info.name.endswith("__main__"):  # runs the CLI
        continue
    try:
        importlib.import_module(info.name)
    except ImportError as e:
        failed[info.name] = f"{type(e).__name__}: {e}"
out["failed_imports"] = failed

from jaxshare.cli.main import build_parser, main

def walk(parser, prefix):
    import argparse
    yield prefix
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield from walk(sp, [*prefix, name])

helped = []
for words in walk(build_parser(), []):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            main([*words, "--help"])
        except SystemExit as e:
            assert e.code == 0, (words, e.code)
    assert buf.getvalue().startswith("usage: jaxshare"), words
    helped.append(" ".join(words))
out["helped"] = helped

import jax
cfg = js.ModelConfig(family="llama", vocab_size=64, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=8,
                     d_ff=32, max_seq_len=16, norm_eps=1e-5)
logits = js.forward(js.init_params(cfg, jax.random.key(0)), cfg, jax.numpy.zeros((1, 8), jax.numpy.int32))
out["logits"] = list(logits.shape)

def run(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own refusals
            code = e.code
        except Exception as e:  # a traceback where one line was due: reported by the test that checks it
            code = f"raised {type(e).__name__}: {e}"
    return code, err.getvalue().strip().splitlines()

out["plot_run"] = run(["plot-run", RUN_DIR])
out["plot_dir"] = run(["similarity", RUN_DIR, "--plot-dir", RUN_DIR + "/plots"])
out["train"] = run(["train", "plain", "--config", "smollm2_plain", "--set", "run_dir=" + RUN_DIR + "/run"])
try:
    import jaxshare.nnx
except ImportError as e:
    out["nnx"] = [type(e).__name__, str(e)]
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def core_only(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("core_only")
    site = _core_site(tmp)
    src = tmp / "src"  # the package alone: a checkout's root may hold jaxshare.egg-info
    src.mkdir()
    (src / "jaxshare").symlink_to(ROOT / "jaxshare")
    run_dir = tmp / "run_dir"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0, "ce": 2.0}) + "\n")
    script = (f"SRC = {str(src)!r}\nSITE = {str(site)!r}\nRUN_DIR = {str(run_dir)!r}\n"
              f"OPTIONAL_MODULES = {OPTIONAL_MODULES!r}\n" + CORE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(JAX_PLATFORMS="cpu", JAXSHARE_CACHE=str(tmp / "cache"))
    # -I -S: no site-packages, no user site, no PYTHONPATH; the script adds the core site itself
    p = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, env=env,
                       cwd=tmp, timeout=600)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert p.returncode == 0 and line, f"rc {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    return json.loads(line.removeprefix("RESULT "))


def test_the_core_site_really_lacks_the_extras(core_only):
    assert core_only["absent"] == []
    assert core_only["version"] == "0+unknown"  # the source alone, no jaxshare metadata: the fallback


def test_every_module_but_the_adapters_imports_with_the_core_only(core_only):
    failed = core_only["failed_imports"]
    assert set(failed) == {"jaxshare.nnx", "jaxshare.eval.harness"}, failed
    assert all(v.startswith("MissingDependency: ") for v in failed.values()), failed


def test_help_of_every_command_and_a_forward_pass_with_the_core_only(core_only):
    import argparse

    from jaxshare.cli.main import build_parser

    def walk(parser, prefix):  # here, with every extra installed
        yield " ".join(prefix)
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    yield from walk(sp, [*prefix, name])

    assert sorted(core_only["helped"]) == sorted(walk(build_parser(), [])) and len(core_only["helped"]) > 20
    assert core_only["logits"] == [1, 8, 64]


@pytest.mark.parametrize("case, package, extra", [("plot_run", "matplotlib", "plots"),
                                                   ("train", "grain", "train"),
                                                   ("plot_dir", "matplotlib", "plots")])
def test_a_missing_extra_is_one_line_naming_package_and_extra(core_only, case, package, extra):
    code, lines = core_only[case]
    if case == "plot_dir":  # refused while parsing, as argparse refuses: the usage, then the line
        assert lines[0].startswith("usage: jaxshare similarity") and "argument --plot-dir: " in lines[-1]
        lines = lines[-1:]
    assert code == 2 and len(lines) == 1, lines
    assert f"needs the {package} package: pip install 'jaxshare[{extra}]'" in lines[0]
    assert lines[0].startswith("jaxshare ")


def test_the_nnx_view_names_its_extra(core_only):
    kind, msg = core_only["nnx"]
    assert kind == "MissingDependency" and "pip install 'jaxshare[nnx]'" in msg and "flax" in msg


def test_version_comes_from_the_installed_metadata():
    import jaxshare

    assert jaxshare.__version__ == metadata.version("jaxshare")


def test_require_names_package_and_extra(monkeypatch):
    from jaxshare.errors import JaxshareError, MissingDependency
    from jaxshare.optional import available, check, require

    # both names: another test in this worker may have imported pyplot already
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(MissingDependency, match=r"^plotting needs the matplotlib package: "
                                                 r"pip install 'jaxshare\[plots\]'") as e:
        require("matplotlib.pyplot", "plots", "plotting")
    assert isinstance(e.value, JaxshareError) and isinstance(e.value, ImportError)
    assert not available("matplotlib")
    with pytest.raises(MissingDependency, match="jaxshare\\[plots\\]"):
        check("matplotlib", "plots", "plotting")


def test_require_keeps_the_error_of_an_installed_package_whose_own_dependency_is_missing(tmp_path, monkeypatch):
    """That is a broken install, not a missing extra: its own ImportError (naming the dependency) stays."""
    from jaxshare.errors import MissingDependency
    from jaxshare.optional import require

    (tmp_path / "jaxshare_fake_pkg.py").write_text("import jaxshare_fake_dep\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError) as e:
        require("jaxshare_fake_pkg", "plots", "plotting")
    assert not isinstance(e.value, MissingDependency) and e.value.name == "jaxshare_fake_dep"


def test_pyproject_core_names_no_extra_and_test_brings_what_the_suite_needs():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = _pyproject()["project"]
    core = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    assert not core & OPTIONAL, core & OPTIONAL
    extras = project["optional-dependencies"]
    assert EXTRAS <= set(extras)
    test = {str(Requirement(r).name): Requirement(r).extras for r in extras["test"]}
    assert {"plots", "nnx", "train"} <= test["jaxshare"]
    everything = next(Requirement(r) for r in extras["all"])
    assert everything.extras == EXTRAS - {"tpu", "cuda", "all", "test"}


@pytest.mark.slow
def test_the_wheel_holds_jaxshare_its_configs_its_marker_and_two_entry_points(tmp_path):
    """Built from a copy of the source (a build writes build/ and *.egg-info beside the sources)."""
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(ROOT / "jaxshare", src / "jaxshare", ignore=shutil.ignore_patterns("__pycache__"))
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-q", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("jaxshare-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = z.read(f"{info}/entry_points.txt").decode()
        meta = z.read(f"{info}/METADATA").decode()
    assert {n.split("/")[0] for n in names} == {"jaxshare", info}
    shipped = {Path(n).name for n in names if n.startswith("jaxshare/training/configs/") and n.endswith(".yaml")}
    assert shipped == {p.name for p in (ROOT / "jaxshare/training/configs").glob("*.yaml")} and shipped
    assert "jaxshare/py.typed" in names
    scripts = dict(ln.replace(" ", "").split("=") for ln in entry_points.split("[console_scripts]")[1].splitlines()
                   if "=" in ln)
    assert scripts == {"jaxshare": "jaxshare.cli.main:run", "jaxshare-lm-eval": "jaxshare.eval.harness:cli"}
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    requires = [Requirement(ln.split(":", 1)[1]) for ln in meta.splitlines() if ln.startswith("Requires-Dist:")]
    core = {canonicalize_name(r.name) for r in requires if r.marker is None}
    assert core and not core & OPTIONAL, core & OPTIONAL
    assert EXTRAS <= {ln.split(":", 1)[1].strip() for ln in meta.splitlines() if ln.startswith("Provides-Extra:")}


def test_training_names_each_missing_package_and_its_extra(tmp_path, monkeypatch):
    from jaxshare.cli.train import _check_packages
    from jaxshare.errors import MissingDependency
    from jaxshare.training.config import load_config
    from jaxshare.training.writers import TensorBoardWriter, WandbWriter

    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    monkeypatch.setitem(sys.modules, "wandb", None)

    def config(*sets):
        return load_config("smollm2_plain", [f"run_dir={tmp_path}/run", *sets], mode="plain")

    with pytest.raises(MissingDependency, match=r"needs the tensorboardX package: pip install 'jaxshare\[train\]'"):
        _check_packages(config())
    _check_packages(config("tensorboard=false"))  # a run without event files needs no tensorboardX
    with pytest.raises(MissingDependency, match=r"needs the wandb package: pip install 'jaxshare\[wandb\]'"):
        _check_packages(config("tensorboard=false", "wandb=proj"))
    # the library's writers say the same when a caller builds them directly
    with pytest.raises(MissingDependency, match=r"jaxshare\[train\]"):
        TensorBoardWriter(tmp_path / "tb")
    with pytest.raises(MissingDependency, match=r"jaxshare\[wandb\]"):
        WandbWriter("proj", tmp_path, {})
    assert not (tmp_path / "run").exists()
