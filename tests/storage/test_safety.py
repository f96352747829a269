"""Outputs and I/O errors (issue 9): --overwrite never destroys what is not ours, outputs appear
whole or not at all, a kill leaves nothing the next run does not sweep, a full disk or a bad path is
one line and exit 2, exports honour the umask, a truncated GGUF names the tensor."""
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import random_hf_model
from jaxshare.cli.main import main
from jaxshare.storage import atomic
from jaxshare.storage.atomic import EXPORT_MARKER, OutputError, atomic_output, check_destination, sweep_stale

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny random Llama as an HF directory and as a native checkpoint."""
    from jaxshare.io.hf import load_hf_dir
    from jaxshare.io.native import save_native

    base = tmp_path_factory.mktemp("models")
    random_hf_model("llama", num_hidden_layers=3).save_pretrained(base / "hf")
    cfg, params = load_hf_dir(base / "hf")
    save_native(base / "native", cfg, params)
    return base / "hf", base / "native"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.stat().st_size for p in sorted(d.rglob("*"))}


def leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


@pytest.fixture
def no_rmtree_outside(tmp_path, monkeypatch):
    """Whatever goes wrong, nothing outside tmp_path is deleted by the code under test."""
    real = shutil.rmtree

    def guarded(path, *a, **kw):
        if not Path(path).resolve().is_relative_to(tmp_path.resolve()):
            raise AssertionError(f"rmtree({path}) outside the test directory")
        return real(path, *a, **kw)

    monkeypatch.setattr(shutil, "rmtree", guarded)


# -- --overwrite refuses what is not ours (the data-loss reproduction) ---------------------------------

@pytest.mark.parametrize("target", ["dot", "dotdot", "ancestor", "cwd-symlink", "home", "root", "foreign"])
def test_overwrite_refuses_and_deletes_nothing(models, tmp_path, monkeypatch, capsys, no_rmtree_outside, target):
    _, native = models
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    for d in (tmp_path / "a", cwd, home, tmp_path / "foreign"):
        d.mkdir(exist_ok=True)
        (d / "notes.txt").write_text("mine")
    (tmp_path / "link").symlink_to(cwd)
    dest = {"dot": ".", "dotdot": "..", "ancestor": str(tmp_path / "a"), "cwd-symlink": str(tmp_path / "link"),
            "home": str(home), "root": "/", "foreign": str(tmp_path / "foreign")}[target]
    before, root_before = snapshot(tmp_path), sorted(os.listdir("/"))
    code, _, err = run(capsys, "share", native, dest, "--ratio", "0.25", "--overwrite")
    assert code == 2 and "Traceback" not in err
    assert err.startswith("jaxshare share: error: ") and len(err.strip().splitlines()) == 1
    why = {"dot": "the current directory", "dotdot": "an ancestor of the current directory",
           "ancestor": "an ancestor of the current directory", "cwd-symlink": "the current directory",
           "home": "the home directory", "root": "the root directory", "foreign": "not a jaxshare output"}[target]
    assert why in err
    assert snapshot(tmp_path) == before and sorted(os.listdir("/")) == root_before


@pytest.mark.parametrize("command", ["convert", "export"])
def test_convert_and_export_refuse_foreign_dir_with_overwrite(models, tmp_path, capsys, no_rmtree_outside, command):
    hf, native = models
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "config.json").write_text("{}")  # looks like a model directory, but not one we wrote
    (dest / "model.safetensors").write_bytes(b"x")
    code, _, err = run(capsys, command, hf if command == "convert" else native, dest, "--overwrite")
    assert code == 2 and "not a jaxshare output" in err and sorted(os.listdir(dest)) == ["config.json",
                                                                                           "model.safetensors"]


def test_protected_paths_are_refused_even_without_overwrite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # empty: without the rule, `.` would be renamed over
    for path in (".", "/", str(tmp_path.parent)):
        with pytest.raises(OutputError, match="refusing"):
            check_destination(path, overwrite=False)
    assert check_destination("fresh", overwrite=False) == tmp_path.resolve() / "fresh"


def test_overwrite_replaces_our_outputs_old_removed_only_after_new_is_in_place(models, tmp_path, capsys,
                                                                              monkeypatch):
    from jaxshare.io.load import load_model
    from jaxshare.io.native import read_meta

    hf, native = models
    out, exp = tmp_path / "out", tmp_path / "exp"
    assert run(capsys, "share", native, out, "--ratio", "0.25")[0] == 0
    assert run(capsys, "export", native, exp)[0] == 0
    removed = []
    real_remove = atomic._remove

    def spy(old, dest):  # the new output must be complete when the old one goes
        assert (dest / "jaxshare.json").is_file() or (dest / EXPORT_MARKER).is_file()
        removed.append(old.name)
        real_remove(old, dest)

    monkeypatch.setattr(atomic, "_remove", spy)
    assert run(capsys, "share", native, out, "--ratio", "0.5", "--overwrite")[0] == 0
    assert run(capsys, "export", out, exp, "--overwrite")[0] == 0  # an export replaced by another
    assert [n.split("-")[0] for n in removed] == [".out.old", ".exp.old"]
    assert read_meta(out)["extra"]["sharing"]["ratio"] == 0.5
    assert "sharing.json" in os.listdir(exp) and load_model(str(exp)).cfg.n_layers == 3
    assert leftovers(tmp_path, "out") == [] and leftovers(tmp_path, "exp") == []


def test_failed_swap_puts_the_old_output_back(models, tmp_path, capsys, monkeypatch):
    _, native = models
    out = tmp_path / "out"
    assert run(capsys, "share", native, out, "--ratio", "0.25")[0] == 0
    before = snapshot(out)
    real_rename = os.rename

    def failing(src, dst):
        if Path(src).parent == tmp_path and ".partial-" in str(src):  # the swap, not orbax's own renames
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing)
    code, _, err = run(capsys, "share", native, out, "--ratio", "0.5", "--overwrite")
    assert code == 2 and "No space left on device" in err
    assert snapshot(out) == before and leftovers(tmp_path, "out") == []


# -- bad destinations: one line, exit 2, checked before the model is loaded ------------------------------

@pytest.mark.parametrize("command", ["convert", "export", "share", "basis", "basis-pairs"])
@pytest.mark.parametrize("where", ["file", "under-file"])
def test_output_path_that_is_a_file(tmp_path, capsys, command, where):
    f = tmp_path / "file"
    f.write_text("mine")
    dest = f if where == "file" else f / "sub"
    extra = {"share": ["--ratio", "0.25"]}.get(command, [])
    # The model does not exist: the destination must be refused first, without loading anything.
    code, _, err = run(capsys, command, tmp_path / "no-such-model", dest, *extra)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"jaxshare {command}: error: ") and "is not a directory" in err
    assert f.read_text() == "mine"


def test_errors_name_the_subcommand(tmp_path, capsys):
    code, _, err = run(capsys, "eval", "ppl", tmp_path / "no-such-model", "--data", "canterbury")
    assert code == 2 and err.startswith("jaxshare eval ppl: error: ")
    code, _, err = run(capsys, "train", "resume", tmp_path / "no-such-run")
    assert code == 2 and err.startswith("jaxshare train resume: error: ")


def test_any_oserror_is_one_line(models, tmp_path, capsys):
    _, native = models
    # A plot directory under a file is refused while parsing now (test_safety_paths); a plot whose name
    # is taken by a directory still fails in the writing: IsADirectoryError from the rename
    (tmp_path / "plots" / "similarity_qk.png").mkdir(parents=True)
    code, _, err = run(capsys, "similarity", native, "--plot-dir", tmp_path / "plots")
    assert code == 2 and err.startswith("jaxshare similarity: error: ") and "Is a directory" in err
    assert len(err.strip().splitlines()) == 1


# -- umask ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask, dmode, fmode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_outputs_honour_the_umask(models, tmp_path, capsys, mask, dmode, fmode):
    hf, native = models
    old = os.umask(mask)
    try:
        assert run(capsys, "export", native, tmp_path / "exp")[0] == 0
        assert run(capsys, "convert", hf, tmp_path / "nat")[0] == 0
    finally:
        os.umask(old)
    for out in (tmp_path / "exp", tmp_path / "nat"):
        for p in [out, *out.rglob("*")]:
            mode = p.stat().st_mode & 0o777
            assert mode == (dmode if p.is_dir() else fmode), f"{p}: {oct(mode)}"


# -- stale siblings -----------------------------------------------------------------------------------------

def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_stale_siblings_are_swept_live_ones_kept(models, tmp_path, capsys):
    _, native = models
    assert run(capsys, "export", native, tmp_path / "exp")[0] == 0  # present: an `.old-*` is removed, not put back
    dead, live = dead_pid(), os.getpid()
    names = {f".exp.partial-{dead}-aaaa": False, f".exp.old-{dead}-bbbb": False, f".exp.trash-{dead}-cccc": False,
             f".exp.partial-{live}-dddd": True, f".exp.partial-{live}-eeee": False,  # aged below
             ".exp.partial-x1y2z3": True,  # pre-pid name, young: kept
             f".other.partial-{dead}-ffff": True, f".exp.partial-{dead}-gggg.bak": True, "exp.partial": True}
    for n in names:
        (tmp_path / n).mkdir()
        (tmp_path / n / "shard").write_bytes(b"0" * 10)
    two_days = time.time() - 2 * 86400
    os.utime(tmp_path / f".exp.partial-{live}-eeee", (two_days, two_days))
    assert run(capsys, "export", native, tmp_path / "exp", "--overwrite")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["exp", *[n for n, keep in names.items() if keep]])


def test_old_output_of_a_writer_killed_mid_swap_is_put_back(tmp_path):
    dead = dead_pid()
    old = tmp_path / f".out.old-{dead}-abcd"
    old.mkdir()
    (old / "jaxshare.json").write_text("{}")
    assert sweep_stale(tmp_path / "out") == [old]
    assert (tmp_path / "out" / "jaxshare.json").is_file() and leftovers(tmp_path, "out") == []
    # the put-back output is an existing output again: no --overwrite, no replacement
    with pytest.raises(FileExistsError, match="--overwrite"), atomic_output(tmp_path / "out") as tmp:
        (tmp / "x").write_text("new")
    assert leftovers(tmp_path, "out") == []


def test_library_io_errors_become_output_errors(tmp_path):
    from safetensors import SafetensorError

    for exc in (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
                ValueError("RESOURCE_EXHAUSTED: Error writing local file \"x/_sharding\": Failed to write 1189 "
                           "bytes to file 14: No space left on device [os_error_code='28']"),
                PermissionError(13, "Permission denied", "/somewhere/else")):
        with pytest.raises(OutputError) as info, atomic_output(tmp_path / "out") as tmp:
            (tmp / "half").write_bytes(b"0" * 100)
            raise exc
        assert str(info.value).startswith(f"cannot write {tmp_path / 'out'}: ")
        assert "No space left on device" in str(info.value) or "Permission denied (/somewhere/else)" in str(info.value)
        assert not (tmp_path / "out").exists() and leftovers(tmp_path, "out") == []
    with pytest.raises(ZeroDivisionError), atomic_output(tmp_path / "out"):  # a bug stays a bug
        1 / 0


# -- full disk (a 128 KiB tmpfs) --------------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip() or 'mount failed'})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "JAX_PLATFORMS": "cpu"}


FULL_DISK = r"""
import sys
from jaxshare.cli.main import main
hf, native, mnt = sys.argv[1:]
for argv in (["convert", hf, f"{mnt}/convert"], ["export", native, f"{mnt}/export"]):
    print(main(argv), flush=True)
    print("--", file=sys.stderr, flush=True)
"""


def test_full_disk_is_one_line_exit_2_no_leftovers(models, small_fs):
    """convert (orbax) and export (safetensors) onto a full disk, as the user sees it: a fresh process."""
    hf, native = models
    res = subprocess.run([sys.executable, "-c", FULL_DISK, str(hf), str(native), str(small_fs)], capture_output=True,
                         text=True, env=cli_env(), timeout=600)
    assert res.stdout.split() == ["2", "2"], res.stderr
    errs = res.stderr.split("--\n")
    for command, err in zip(("convert", "export"), errs):
        lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]  # convert's no-tokenizer note
        assert lines == [f"jaxshare {command}: error: cannot write {small_fs / command}: "
                         "No space left on device"], res.stderr
    assert errs[2] == "", res.stderr  # nothing late either (orbax's threads report after the failure)
    assert os.listdir(small_fs) == []


# -- kills at random moments ------------------------------------------------------------------------------

CHILD = r"""
import os, sys, time
from jaxshare.cli.main import main
hf, base = sys.argv[1:]
cmds = [["convert", hf, f"{base}/nat", "--overwrite"], ["export", f"{base}/nat", f"{base}/exp", "--overwrite"],
        ["share", f"{base}/nat", f"{base}/sh", "--ratio", "0.25", "--overwrite"]]
while True:
    t = time.perf_counter()
    for c in cmds:
        if main(c):
            sys.exit(3)
    print("cycle", time.perf_counter() - t, file=sys.stderr, flush=True)  # the first includes compiling
"""


def test_kill_at_random_moments_leaves_absent_or_complete(models, tmp_path, capsys):
    """SIGKILL processes that keep rewriting a native checkpoint, an export and a shared model, each at
    a random moment; each destination is then absent or complete, and the next run succeeds and sweeps
    every leftover. The writers run side by side (their start-up is mostly imports)."""
    from jaxshare.io.load import load_model

    hf, _ = models
    bases = [tmp_path / f"s{seed}" for seed in range(3)]
    children = []
    for base in bases:
        base.mkdir()
        children.append(subprocess.Popen([sys.executable, "-c", CHILD, str(hf), str(base)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env()))
    try:
        for seed, child in enumerate(children):
            cycles, seen = [], []
            while len(cycles) < 2:  # two cycles done: every destination exists, and the writer is warm
                line = child.stderr.readline()
                assert line, f"the writer failed: {''.join(seen)}"
                (cycles if line.startswith("cycle ") else seen).append(line)
            time.sleep(random.Random(seed).uniform(0, 2 * float(cycles[1].split()[1])))
            child.send_signal(signal.SIGKILL)
    finally:
        for child in children:
            child.kill()
            child.wait()
    for base in bases:
        for name in ("nat", "exp", "sh"):
            dest = base / name
            if dest.exists():
                assert load_model(str(dest)).cfg.n_layers == 3  # complete: it loads
                assert (dest / ("jaxshare.json" if name != "exp" else EXPORT_MARKER)).is_file()
        for argv in (["convert", hf, base / "nat", "--overwrite"], ["export", base / "nat", base / "exp", "--overwrite"],
                     ["share", base / "nat", base / "sh", "--ratio", "0.25", "--overwrite"]):
            assert run(capsys, *argv)[0] == 0
        assert sorted(os.listdir(base)) == ["exp", "nat", "sh"]  # leftovers swept


# -- GGUF ---------------------------------------------------------------------------------------------------

def test_truncated_gguf_names_the_tensor(tmp_path, capsys):
    import gguf

    from jaxshare.io.gguf import iter_gguf_tensors
    from jaxshare.io.hf import CheckpointError
    from tests.io.test_gguf import write_gguf

    path = write_gguf(tmp_path / "model.gguf", random_hf_model("llama", num_hidden_layers=2))
    tensors = gguf.GGUFReader(str(path)).tensors
    victim = tensors[len(tensors) // 2]
    cut = victim.data_offset + victim.n_bytes // 2
    with open(path, "r+b") as f:
        f.truncate(cut)
    expected = (f"{path} is truncated: tensor {victim.name} needs bytes {victim.data_offset}.."
                f"{victim.data_offset + victim.n_bytes}, the file has {cut}")
    with pytest.raises(CheckpointError) as info:
        list(iter_gguf_tensors(path))
    assert str(info.value) == expected
    code, _, err = run(capsys, "convert", path, tmp_path / "out")
    assert code == 2 and err == f"jaxshare convert: error: {expected}\n" and not (tmp_path / "out").exists()
    with open(path, "r+b") as f:  # cut inside the header: still one clear line
        f.truncate(40)
    code, _, err = run(capsys, "convert", path, tmp_path / "out")
    assert code == 2 and "truncated or corrupt" in err and len(err.strip().splitlines()) == 1
    assert np.all([not p.name.startswith(".out") for p in tmp_path.iterdir()])
