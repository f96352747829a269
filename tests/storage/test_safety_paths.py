"""Output destinations and paths (issue 22): --overwrite replaces only what carries jaxshare's marker
and holds nothing else; no output may contain its input or lie inside it; single-file outputs are
swept like folders; remote paths need their package (named) and read the same in eval as in train;
non-UTF-8 paths and plot directories are refused by name before any model loads; full disks (no root
needed) and Ctrl-C leave the old output whole and nothing half-written."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxshare.cli.main import main
from jaxshare.storage.markers import OUTPUT_MARKER
from tests.tiny_model import save_text, save_tiny_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny llama with a byte-level tokenizer (GGUF needs one) as an HF directory and a native
    checkpoint, a text file, and a cache of its own."""
    base = tmp_path_factory.mktemp("paths")
    hf = save_tiny_model(base / "hf", byte_level=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXSHARE_CACHE", str(base / "cache"))
        assert main(["convert", str(hf), str(base / "native")]) == 0
    return {"hf": hf, "native": base / "native", "text": save_text(base / "text.txt"), "base": base}


@pytest.fixture(autouse=True)
def own_cache(models, monkeypatch):
    monkeypatch.setenv("JAXSHARE_CACHE", str(models["base"] / "cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")  # progress bars on stderr would hide the one error line


def run(capsys, *argv):
    try:
        code = main([os.fspath(a) if isinstance(a, Path) else a for a in argv])
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def messages(err: str) -> list[str]:
    """stderr without progress bars, argparse's usage lines, warnings and the gguf package's logging."""
    return [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln
            and not ln.startswith(("usage:", " ", "warning:", "Adding merges"))]


def one_error(code, err, command):
    assert code == 2 and "Traceback" not in err, err
    lines = messages(err)
    assert len(lines) == 1 and lines[0].startswith(f"jaxshare {command}: error: "), err
    return lines[0]


def tree(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


def siblings(d: Path, name: str) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith(f".{name}."))


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


# -- 1. --overwrite: a marker only jaxshare writes, and nothing else in the folder ------------------------

def test_overwrite_refuses_a_folder_that_merely_looks_like_a_run(models, tmp_path, capsys):
    d = tmp_path / "d"
    (d / "checkpoints").mkdir(parents=True)
    (d / "config.yaml").write_text("lr: 1\n")
    (d / "metrics.jsonl").write_text("{}\n")
    (d / "NOTES.md").write_text("mine")
    before = tree(d)
    line = one_error(*run(capsys, "share", models["native"], d, "--ratio", "0.1", "--overwrite")[::2], "share")
    assert "not a jaxshare output" in line and tree(d) == before


@pytest.mark.parametrize("kind", ["native", "export", "run"])
def test_overwrite_refuses_our_output_holding_a_file_we_did_not_write(models, tmp_path, capsys, kind):
    out = tmp_path / "out"
    if kind == "run":
        (out / "checkpoints" / "1").mkdir(parents=True)
        (out / "jaxshare_run.json").write_text(json.dumps({"format": "jaxshare-run", "version": 1}))
        (out / "config.yaml").write_text("lr: 1\n")
    else:
        assert run(capsys, "share" if kind == "native" else "export", models["native"], out,
                   *(["--ratio", "0.1"] if kind == "native" else []))[0] == 0
    (out / "NOTES.md").write_text("mine")
    before = tree(out)
    line = one_error(*run(capsys, "share", models["native"], out, "--ratio", "0.1", "--overwrite")[::2], "share")
    assert "NOTES.md" in line and "did not write" in line and tree(out) == before


def test_every_output_kind_is_still_replaceable(models, tmp_path, capsys):
    """Native, HF export, basis pairs, GGUF and a marked run dir, as written now; and a native checkpoint
    and an export of an older jaxshare (no marker), recognised by their manifests."""
    native, hf = models["native"], models["hf"]
    cmds = {"nat": ["convert", hf], "sh": ["share", native, "--ratio", "0.25"], "exp": ["export", native],
            "pairs": ["basis-pairs", native, "--calib", models["text"], "--calib-windows", "2", "--calib-seq-len", "16"],
            "q": ["quantize", native, "--method", "rtn", "--bits", "8"]}
    for name, argv in cmds.items():
        out = tmp_path / name
        argv = [*argv[:2], out, *argv[2:]]
        assert run(capsys, *argv)[0] == 0
        assert json.loads((out / OUTPUT_MARKER).read_text())["files"] == sorted(
            n for n in os.listdir(out) if n != OUTPUT_MARKER)
        assert run(capsys, *argv, "--overwrite")[0] == 0, name
        assert siblings(tmp_path, name) == []
    for name in ("nat", "exp"):  # written by an older jaxshare: no marker
        (tmp_path / name / OUTPUT_MARKER).unlink()
        assert run(capsys, *cmds[name][:2], tmp_path / name, "--overwrite")[0] == 0
    gg = tmp_path / "m.gguf"
    assert run(capsys, "export", hf, gg)[0] == 0 and run(capsys, "export", hf, gg, "--overwrite")[0] == 0
    rd = tmp_path / "run"
    (rd / "checkpoints" / "3").mkdir(parents=True)
    (rd / "jaxshare_run.json").write_text(json.dumps({"format": "jaxshare-run", "version": 1}))
    (rd / "config.yaml").write_text("lr: 1\n")  # a run that has written no metrics yet
    assert run(capsys, "share", native, rd, "--ratio", "0.1", "--overwrite")[0] == 0
    assert (rd / "jaxshare.json").is_file() and not (rd / "config.yaml").exists()


# -- 4. an output may neither contain its input nor lie inside it ---------------------------------------------

@pytest.mark.parametrize("case", ["export-run-final-to-run", "export-into-source", "convert-into-source",
                                  "share-onto-source", "share-via-symlink", "gguf-onto-itself", "quantize-into-source"])
def test_destination_containing_or_inside_the_source_is_refused(models, tmp_path, capsys, case):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "jaxshare_run.json").write_text(json.dumps({"format": "jaxshare-run", "version": 1}))
    (run_dir / "config.yaml").write_text("lr: 1\n")
    (run_dir / "metrics.jsonl").write_text("{}\n")
    shutil.copytree(models["native"], run_dir / "final")
    src = tmp_path / "src"
    shutil.copytree(models["native"], src)
    (tmp_path / "link").symlink_to(src)
    gg = tmp_path / "m.gguf"
    if case == "gguf-onto-itself":
        assert run(capsys, "export", models["hf"], gg)[0] == 0
    argv = {"export-run-final-to-run": ["export", run_dir / "final", run_dir, "--overwrite"],
            "export-into-source": ["export", src, src / "hf"],
            "convert-into-source": ["convert", src, src / "sub" / "nat"],
            "share-onto-source": ["share", src, src, "--overwrite"],
            "share-via-symlink": ["share", tmp_path / "link", src, "--overwrite"],
            "gguf-onto-itself": ["export", gg, gg, "--overwrite"],
            "quantize-into-source": ["quantize", src, src / "q", "--method", "rtn"]}[case]
    before = tree(tmp_path)
    code, _, err = run(capsys, *argv)
    line = one_error(code, err, argv[0])
    assert "the input" in line and "choose an output outside the input" in line
    assert tree(tmp_path) == before


# -- 9. single-file outputs: a killed GGUF export's temporary is swept ----------------------------------------

KILL_GGUF = r"""
import os, signal, sys
import gguf
from jaxshare.cli.main import main

real = gguf.GGUFWriter.write_tensors_to_file
def die(self, *a, **kw):
    self.write_ti_data_to_file = lambda: None
    self.fout[0].write(b"\0" * 100000)
    self.fout[0].flush()
    os.kill(os.getpid(), signal.SIGKILL)
gguf.GGUFWriter.write_tensors_to_file = die
main(sys.argv[1:])
"""


def cli_env(tmp_path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1",
            "JAX_PLATFORMS": "cpu", "JAXSHARE_CACHE": str(tmp_path / "cache")}


def test_killed_gguf_export_leaves_a_temporary_the_next_export_removes(models, tmp_path, capsys):
    out = tmp_path / "x.gguf"
    res = subprocess.run([sys.executable, "-c", KILL_GGUF, "export", str(models["hf"]), str(out)],
                         env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    left = siblings(tmp_path, "x.gguf")
    assert len(left) == 1 and ".partial-" in left[0] and not out.exists()
    assert run(capsys, "export", models["hf"], out)[0] == 0
    assert siblings(tmp_path, "x.gguf") == [] and out.is_file()


def test_folder_put_back_after_a_killed_overwrite_is_explained(models, tmp_path, capsys):
    old = tmp_path / f".out.old-{dead_pid()}-abcd"
    shutil.copytree(models["native"], old)  # killed after moving the old output aside, before the swap
    line = one_error(*run(capsys, "export", models["native"], tmp_path / "out")[::2], "export")
    assert "put back from an earlier write that was interrupted" in line and "--overwrite" in line
    assert (tmp_path / "out" / "jaxshare.json").is_file() and siblings(tmp_path, "out") == []


# -- 5, 17. remote paths ----------------------------------------------------------------------------------

@pytest.fixture
def no_gcsfs(monkeypatch):
    """gcsfs and s3fs absent, whatever is installed here."""
    import importlib

    from jaxshare.storage import paths

    registry = importlib.import_module("fsspec.registry")._registry  # `fsspec.registry` is a mapping
    for mod in ("gcsfs", "s3fs"):
        monkeypatch.setitem(sys.modules, mod, None)  # `import gcsfs` raises ImportError
    for s in ("gs", "gcs", "s3"):
        monkeypatch.delitem(registry, s, raising=False)
    monkeypatch.setattr(paths, "_READY", set())


@pytest.mark.parametrize("argv", [
    ["eval", "ppl", "gs://b/m", "--data", "TEXT", "--seq-len", "16"],
    ["eval", "ppl", "NATIVE", "--data", "s3://b/t.txt", "--seq-len", "16"],
    ["export", "gs://b/m", "WORK/out"],
    ["train", "plain", "--set", "run_dir=gs://b/r", "--set", "model=NATIVE", "--set", "data=TEXT"],
    ["train", "plain", "--set", "run_dir=WORK/r", "--set", "model=gs://b/m", "--set", "data=TEXT"],
    ["train", "plain", "--set", "run_dir=WORK/r", "--set", "model=NATIVE", "--set", "data=s3://b/t.txt"],
    ["train", "resume", "gs://b/r"],
], ids=lambda a: " ".join(a[:2]) + ":" + next((x for x in a if "://" in x), ""))
def test_remote_path_without_its_package_names_package_and_extra(models, tmp_path, capsys, no_gcsfs, argv):
    names = {"TEXT": str(models["text"]), "NATIVE": str(models["native"])}
    argv = [names.get(a, a).replace("WORK", str(tmp_path)).replace("NATIVE", names["NATIVE"]).replace(
        "TEXT", names["TEXT"]) for a in argv]
    if argv[:2] == ["train", "plain"]:  # valid otherwise (conftest's 8 host devices), so the path decides
        argv += ["--set", "batch_size=8", "--set", "seq_len=16", "--set", "steps=1"]
    command = " ".join(argv[:2]) if argv[0] in ("eval", "train") else argv[0]
    line = one_error(*run(capsys, *argv)[::2], command)
    pkg = "gcsfs" if "gs://" in line else "s3fs"
    assert f"need the {pkg} package" in line and "pip install 'jaxshare[remote]'" in line


def test_eval_reads_remote_model_and_data_like_train(models, tmp_path, capsys):
    """memory:// stands for gs:// and s3://: the same fsspec route, no network."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.put(str(models["native"]), "/m22/model", recursive=True)
    fs.put(str(models["text"]), "/m22/text.txt")
    try:
        local = run(capsys, "eval", "ppl", models["native"], "--data", models["text"], "--seq-len", "16",
                    "--max-windows", "4", "--json")
        remote = run(capsys, "eval", "ppl", "memory://m22/model", "--data", "memory://m22/text.txt", "--seq-len", "16",
                     "--max-windows", "4", "--json")
        assert local[0] == 0 and remote[0] == 0, remote[2]
        assert json.loads(local[1])["ppl"] == json.loads(remote[1])["ppl"]
        missing = run(capsys, "eval", "ppl", "memory://m22/none", "--data", models["text"])
        assert "memory://m22/none: no such file or directory" in one_error(missing[0], missing[2], "eval ppl")
    finally:
        fs.rm("/m22", recursive=True)


def test_output_to_a_url_is_uploaded_and_marked_and_an_unknown_scheme_is_refused(models, tmp_path, capsys):
    from jaxshare.storage.markers import COMMIT_MARKER
    from jaxshare.storage.paths import as_path

    out = f"memory://m22-{os.getpid()}/out"
    assert run(capsys, "export", models["native"], out)[0] == 0
    assert (as_path(out) / COMMIT_MARKER).exists() and (as_path(out) / "config.json").exists()
    as_path(out).rmtree()
    line = one_error(*run(capsys, "export", models["native"], "nosuchscheme://m22/out")[::2], "export")
    assert "no filesystem is known for nosuchscheme://" in line


# -- 17. non-UTF-8 paths, plot directories -----------------------------------------------------------------

def test_non_utf8_model_and_output_paths_are_named(models, tmp_path, capsys):
    bad = os.fsdecode(os.fsencode(str(tmp_path)) + b"/nat\xfd")
    try:
        shutil.copytree(models["native"], bad)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this filesystem refuses non-UTF-8 names")
    line = one_error(*run(capsys, "eval", "ppl", bad, "--data", models["text"], "--seq-len", "16")[::2], "eval ppl")
    assert "nat\\xfd" in line and "not UTF-8 encodable" in line
    out = os.fsdecode(os.fsencode(str(tmp_path)) + b"/out\xfd")
    for argv in (["export", models["native"], out], ["convert", models["hf"], out], ["share", models["native"], out],
                 ["export", models["hf"], out + ".gguf"]):
        line = one_error(*run(capsys, *argv)[::2], argv[0])
        assert "out\\xfd" in line and "not UTF-8 encodable" in line
    assert sorted(os.listdir(os.fsencode(str(tmp_path)))) == [b"nat\xfd"]


@pytest.mark.parametrize("argv", [
    ["similarity", "MISSING", "--plot-dir", "PLOT"],
    ["attention-similarity", "MISSING", "--plot-dir", "PLOT"],
    ["share", "MISSING", "WORK/out", "--plot-dir", "PLOT"],
    ["degeneration", "MISSING", "--plot-dir", "PLOT"],
    ["plot-run", "MISSING", "--plot-dir", "PLOT"],
    ["demo", "--model", "MISSING", "--plot-dir", "PLOT"],
], ids=lambda a: a[0])
@pytest.mark.parametrize("where", ["file", "under-file"])
def test_plot_directory_is_checked_before_the_model_loads(tmp_path, capsys, argv, where):
    f = tmp_path / "file"
    f.write_text("mine")
    plot = f if where == "file" else f / "plots"
    argv = [str(plot) if a == "PLOT" else str(tmp_path / "no-such-model") if a == "MISSING" else
            a.replace("WORK", str(tmp_path)) for a in argv]
    line = one_error(*run(capsys, *argv)[::2], argv[0])
    assert "argument --plot-dir" in line and "not a directory" in line and "no-such-model" not in line
    assert f.read_text() == "mine"


# -- full disk without root: RLIMIT_FSIZE in a subprocess ------------------------------------------------

FSIZE = r"""
import resource, signal, sys
from jaxshare.cli.main import main
hf, native, base = sys.argv[1:]
cmds = {"exp": ["export", native], "m.gguf": ["export", hf, "--gguf-type", "f32"], "nat": ["convert", hf],
        "sh": ["share", native, "--ratio", "0.25"], "q": ["quantize", native, "--method", "rtn", "--bits", "8"]}
for name, argv in cmds.items():  # complete outputs first, at no limit
    assert main([*argv[:2], f"{base}/{name}", *argv[2:]]) == 0, name
print("--", flush=True)
print("--", file=sys.stderr, flush=True)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
for name, argv in cmds.items():
    print(main([*argv[:2], f"{base}/{name}", *argv[2:], "--overwrite"]), flush=True)
"""


def test_write_failure_mid_output_keeps_the_old_one_without_root(models, tmp_path):
    """Every writer (safetensors for native and HF, the GGUF writer) fails mid-file; each command is one
    line, exit 2, the earlier output untouched, no temporary left. Runs everywhere (no tmpfs mount)."""
    base = tmp_path / "out"
    base.mkdir()
    res = subprocess.run([sys.executable, "-c", FSIZE, str(models["hf"]), str(models["native"]), str(base)],
                         env=cli_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert res.stdout.split("--\n", 1)[1].split() == ["2"] * 5, res.stderr[-3000:]
    errs = messages(res.stderr.split("--\n", 1)[1])
    assert len(errs) == 5, res.stderr[-3000:]
    for name, line in zip(("exp", "m.gguf", "nat", "sh", "q"), errs):
        assert line.startswith("jaxshare ") and f"error: cannot write {base / name}: File too large" in line, line
    assert sorted(os.listdir(base)) == ["exp", "m.gguf", "nat", "q", "sh"]


def test_no_space_is_named_for_every_writer(models, tmp_path, capsys, monkeypatch):
    """ENOSPC injected into the tensor writer (native and HF outputs) and the GGUF file's writes."""
    import errno

    from jaxshare.io import tensorfile

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tensorfile.TensorWriter, "write", full)
    for argv in (["export", models["native"]], ["convert", models["hf"]], ["share", models["native"], "--ratio", "0.25"],
                 ["quantize", models["native"], "--method", "rtn", "--bits", "8"]):
        out = tmp_path / argv[0]
        line = one_error(*run(capsys, *argv[:2], out, *argv[2:])[::2], argv[0])
        assert line.endswith(f"cannot write {out}: No space left on device") and not out.exists()
        assert siblings(tmp_path, argv[0]) == []


# -- 8. Ctrl-C during export: exit 130, nothing half-written ------------------------------------------------

@pytest.mark.parametrize("fmt", ["hf", "gguf"])
def test_ctrl_c_during_export_leaves_the_old_output_and_no_temporary(models, tmp_path, capsys, monkeypatch, fmt):
    import gguf

    from jaxshare.io import tensorfile

    out = tmp_path / ("m.gguf" if fmt == "gguf" else "exp")
    src = models["hf"] if fmt == "gguf" else models["native"]
    assert run(capsys, "export", src, out)[0] == 0
    before = out.read_bytes() if fmt == "gguf" else tree(out)

    def interrupt(*a, **kw):
        raise KeyboardInterrupt

    if fmt == "gguf":
        monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", interrupt)
    else:
        monkeypatch.setattr(tensorfile.TensorWriter, "write", interrupt)
    code, _, err = run(capsys, "export", src, out, "--overwrite")
    assert code == 130 and messages(err) == ["jaxshare export: interrupted; nothing half-written was kept"]
    assert (out.read_bytes() if fmt == "gguf" else tree(out)) == before and siblings(tmp_path, out.name) == []


SIGINT_CHILD = r"""
import signal, sys, time
# As at a terminal: a suite started in the background (`cmd &`, as CI scripts may) hands its
# children SIGINT ignored, and Python then never raises KeyboardInterrupt (every CI moment gave 0)
signal.signal(signal.SIGINT, signal.default_int_handler)
import jax
from jaxshare.cli.main import build_parser, main
import jaxshare.io.gguf_export  # imported while parsing (--gguf-type); main() only guards the command itself
build_parser()  # its imports done: the moments drawn fall in the command's own work
if sys.argv[1] == "--sigint-at-write":  # a real SIGINT from the OS, sent while the 3rd tensor is written
    import os, signal
    from jaxshare.io import hf
    calls, write = [], hf.TensorWriter.write
    def writing(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return write(self, *a, **k)
    hf.TensorWriter.write = writing
    sys.argv = sys.argv[1:]
print("ready", file=sys.stderr, flush=True)
t = time.perf_counter()
code = main(sys.argv[1:])
import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)  # as the console entry (cli.main.run) does
print("took", time.perf_counter() - t, file=sys.stderr, flush=True)
sys.exit(code)
"""


def test_sigint_at_a_random_moment_of_export(models, tmp_path):
    """A real Ctrl-C (SIGINT to the process) at several moments of `jaxshare export ... --overwrite`:
    exit 130 with one line (or 0 if it had finished), the destination old or new but whole, no temporary."""
    import random

    out = tmp_path / "exp"
    env = cli_env(tmp_path)
    rng = random.Random(22)
    took, codes = 2.0, []
    # 4 moments drawn over the command's last duration; then one Ctrl-C the child sends itself while
    # it writes the export's 3rd tensor: on a loaded machine every drawn moment can fall after a
    # fast export finished (two CI runs), and a watcher polling for the temporary came too late
    for i in range(5):
        forced = ["--sigint-at-write"] if i == 4 else []
        child = subprocess.Popen([sys.executable, "-c", SIGINT_CHILD, *forced, "export", str(models["native"]),
                                  str(out), "--overwrite", "--max-shard-mb", "0.01"], env=env, stderr=subprocess.PIPE,
                                 text=True)
        assert child.stderr.readline() == "ready\n"
        if not forced:
            time.sleep(rng.uniform(0, took))
            child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=300)
        if "took " in err:
            took = float(err.split("took ")[-1].split()[0])
        err = err.split("took ")[0]
        # A SIGINT that lands in a gc callback (jax's _xla_gc_callback) is printed by Python as "Exception
        # ignored in ..." and swallowed: the command runs on. That is main()'s to handle, not the writers'.
        err = re.sub(r"Exception ignored in: .*?\nKeyboardInterrupt: ?\n", "", err, flags=re.S)
        assert "Traceback" not in err, err[-3000:]
        assert child.returncode in (0, 130), (child.returncode, err[-2000:])
        codes.append(child.returncode)
        if child.returncode == 130:
            # while the arguments are still being parsed nothing has started: a shorter line
            assert messages(err) in (["jaxshare export: interrupted; nothing half-written was kept"],
                                     ["jaxshare: interrupted"]), err
        assert siblings(tmp_path, "exp") == []
        if out.exists():
            assert json.loads((out / OUTPUT_MARKER).read_text())["files"] == sorted(
                n for n in os.listdir(out) if n != OUTPUT_MARKER)
    assert codes[-1] == 130, codes  # the Ctrl-C sent inside the export's writing stopped it


def test_unreachable_https_data_is_not_called_missing(models, capsys, monkeypatch):
    """fsspec's HTTP filesystem answers exists() False when the host cannot be reached; the message
    must say "cannot be reached", not "no such file" (a stand-in filesystem: no network, no aiohttp)."""
    import importlib

    from fsspec.spec import AbstractFileSystem

    from jaxshare.storage import paths

    class Offline(AbstractFileSystem):
        protocol = ("https",)

        def exists(self, path, **kw):
            return False

        def info(self, path, **kw):
            raise ConnectionError(f"Cannot connect to host {path.split('/')[2]}:443 [Temporary failure in name resolution]")

    registry = importlib.import_module("fsspec.registry")._registry
    monkeypatch.setitem(registry, "https", Offline)
    monkeypatch.setattr(paths, "_READY", set())
    line = one_error(*run(capsys, "eval", "ppl", models["native"], "--data", "https://example.org/t.txt",
                          "--seq-len", "16")[::2], "eval ppl")
    assert "https://example.org/t.txt: cannot be reached" in line and "no network" in line
