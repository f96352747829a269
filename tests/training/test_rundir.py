"""Issue 22, training run dirs: nothing lost, nothing ignored, nothing left behind.

A new run needs an absent or empty run dir, or --overwrite on a run marked by jaxshare_run.json
that holds nothing else; resume takes only the keys a run under way can change and rewrites
config.yaml only after its checkpoint restored; a full disk, Ctrl-C, a blown-up update and an
in-memory run dir each end in one line, with the last good checkpoint intact."""
import errno
import json
import os
import signal
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxshare.cli.main import main as cli_main
from jaxshare.core.config import ModelConfig
from jaxshare.core.params import init_params
from jaxshare.io.native import save_native
from jaxshare.training import rundir, trainer
from jaxshare.training.config import build_config
from tests.tiny_model import TRAIN_CFG, save_run_files

CFG = TRAIN_CFG


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("safety")
    small = ModelConfig(**{**CFG.__dict__, "n_layers": 3})
    save_native(d / "model3", small, init_params(small, jax.random.key(1)), None)
    return save_run_files(d)


def sets(files, run_dir, **kw):
    base = dict(model=files / "model", data=files / "train.npy", eval_data=files / "eval.npy", run_dir=run_dir,
                seq_len=32, batch_size=8, lr=1e-3, warmup_steps=1, eval_windows=2, eval_every=0, steps=2,
                checkpoint_every=1, keep_final_checkpoint=True, mesh="data=1,fsdp=1", progress=False,
                export_hf=False, tensorboard=False)
    base.update(kw)
    return [x for k, v in base.items() for x in ("--set", f"{k}={v}")]


def config(files, run_dir, **kw):
    argv = sets(files, run_dir, **kw)
    return build_config({}, argv[1::2])


def tree(d: Path) -> dict:
    """Every path under d with its bytes (files) or None (directories)."""
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


def one_line_error(capfd, *words):
    out, err = capfd.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err and "Event loop" not in err, err[-3000:]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def steps_of(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def done(files, tmp_path_factory):
    """A finished 2-step run that kept its last checkpoint (module scope: tests copy it)."""
    run = tmp_path_factory.mktemp("done") / "run"
    assert cli_main(["train", "postshare", *sets(files, run)]) == 0
    return run


@pytest.fixture
def run(done, tmp_path):
    import shutil

    shutil.copytree(done, tmp_path / "run")
    return tmp_path / "run"


# -- item 1/3: the marker, and a new run needs an empty dir or --overwrite on one of our runs -----------

def test_run_dir_carries_the_marker_and_only_run_entries(done):
    assert json.loads((done / rundir.MARKER).read_text()) == {"format": "jaxshare-run", "version": 1}
    assert rundir.is_marked(done) and rundir.foreign_entries(done) == []
    assert all(rundir.is_run_entry(p.name) for p in done.iterdir())
    for name in ("stage_00_2L", "loss.png", ".final.partial-12-ab", ".config.yaml.x1y2"):
        assert rundir.is_run_entry(name)
    assert not any(rundir.is_run_entry(n) for n in ("NOTES.md", "data", "model.safetensors", ".git"))


@pytest.mark.parametrize("prior, flags, message", [
    ("finished", [], "is not empty; continue its run with `jaxshare train resume"),
    ("no-checkpoints", [], "is not empty"),  # a completed run (checkpoints dropped): once replaced silently
    ("notes", ["--overwrite"], "holds files jaxshare did not write (NOTES.md)"),
    ("ckpt-notes", ["--overwrite"], "checkpoints/notes.txt"),
    ("older", ["--overwrite"], "a run of an older jaxshare, without jaxshare_run.json"),
    ("foreign", ["--overwrite"], "is not a jaxshare run dir"),
])
def test_new_run_into_a_taken_dir_is_refused_and_nothing_changes(files, run, capfd, prior, flags, message):
    if prior == "no-checkpoints":
        import shutil

        shutil.rmtree(run / "checkpoints")
    elif prior == "notes":
        (run / "NOTES.md").write_text("mine")
    elif prior == "ckpt-notes":
        (run / "checkpoints" / "notes.txt").write_text("mine")
    elif prior == "older":
        (run / rundir.MARKER).unlink()
    elif prior == "foreign":
        for p in list(run.iterdir()):
            if p.is_file():
                p.unlink()
        (run / "mine.txt").write_text("mine")
    before = tree(run)
    capfd.readouterr()
    assert cli_main(["train", "plain", *sets(files, run), *flags]) == 2
    one_line_error(capfd, message)
    assert tree(run) == before


def test_inheritune_into_a_taken_dir_is_refused_before_the_model_loads(files, run, capfd):
    (run / "NOTES.md").write_text("mine")
    before = tree(run)
    capfd.readouterr()
    argv = ["train", "inheritune", *sets(files, run, ratio=0, stages="2,3"), "--overwrite"]
    assert cli_main(argv) == 2
    one_line_error(capfd, "holds files jaxshare did not write (NOTES.md)")
    (run / "NOTES.md").unlink()
    (run / rundir.MARKER).unlink()
    assert cli_main(argv) == 2
    one_line_error(capfd, "a run of an older jaxshare")
    assert tree(run) == {k: v for k, v in before.items() if k not in ("NOTES.md", rundir.MARKER)}


def test_overwrite_replaces_our_earlier_run_whole(files, run, capfd):
    assert steps_of(run) == ["2"]  # the earlier run kept a checkpoint
    assert cli_main(["train", "plain", *sets(files, run, keep_final_checkpoint=False), "--overwrite", "--json"]) == 0
    res = json.loads(capfd.readouterr().out)
    assert res["mode"] == "plain" and json.loads((run / "result.json").read_text())["mode"] == "plain"
    assert not (run / "checkpoints").exists()  # nothing of the earlier run is left beside the new one
    assert rundir.is_marked(run) and "mode: plain" in (run / "config.yaml").read_text()


# -- items 2 and 11: resume takes only what may change; config.yaml changes only after a restore -------

def test_resume_refuses_fixed_keys_by_name_and_keeps_config(files, run, capfd):
    before = tree(run)
    argv = ["train", "resume", str(run), "--set", "ratio=0.1", "--set", "match=v", "--set", "seq_len=32",
            "--set", "batch_size=4", "--set", "steps=4"]
    assert cli_main(argv) == 2
    one_line_error(capfd, "--set ratio, match, seq_len, batch_size cannot change")
    assert cli_main(["train", "resume", str(run), "--set", f"model={files / 'model3'}"]) == 2
    one_line_error(capfd, "--set model cannot change")
    assert tree(run) == before


def test_failed_restore_leaves_config_and_says_why(files, run, capfd):
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(
        f"model: {files / 'model'}", f"model: {files / 'model3'}"))  # as an earlier jaxshare left it
    before = tree(run)
    capfd.readouterr()
    assert cli_main(["train", "resume", str(run), "--set", "steps=4"]) == 2
    one_line_error(capfd, "checkpoint step 2", "does not match this run's model")
    assert tree(run) == before  # steps=4 was not recorded: the restore failed


def test_failed_restore_says_one_line_as_a_process_exits(files, run):
    """In its own process the reads orbax left pending are collected at exit: no traceback follows the line."""
    import subprocess
    import sys

    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(
        f"model: {files / 'model'}", f"model: {files / 'model3'}"))
    p = subprocess.run([sys.executable, "-m", "jaxshare", "train", "resume", str(run), "--set", "steps=4"],
                       capture_output=True, text=True, timeout=300)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-3000:]
    assert "does not match this run's model" in lines[0]


# -- item 7: a full disk while checkpointing -----------------------------------------------------------

def test_full_disk_during_save_is_one_line_and_leaves_no_partial_step(files, tmp_path, capfd, monkeypatch):
    """The orbax save path raises ENOSPC after writing part of the step (no root, no small mount)."""
    import orbax.checkpoint as ocp

    real = ocp.CheckpointManager.save

    def full(self, step, *a, **kw):
        if step < 2:
            return real(self, step, *a, **kw)
        partial = Path(str(self.directory)) / f"{step}.orbax-checkpoint-tmp-1234"
        (partial / "state").mkdir(parents=True)
        (partial / "state" / "blob").write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    run = tmp_path / "run"
    assert cli_main(["train", "postshare", *sets(files, run, steps=3)]) == 2
    one_line_error(capfd, "No space left on device", str(run / "checkpoints"), "jaxshare train resume")
    assert steps_of(run) == ["1"]  # the last complete step; no partial one


def test_save_that_cannot_fit_is_refused_before_orbax_writes(files, tmp_path, capfd, monkeypatch):
    from collections import namedtuple

    from jaxshare.training import checkpoints

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda p: usage(1 << 20, 1 << 20, 4096))
    run = tmp_path / "run"
    assert cli_main(["train", "postshare", *sets(files, run)]) == 2
    one_line_error(capfd, "No space left on device", "MiB needed")
    assert steps_of(run) == []


def test_resume_sweeps_partial_steps_of_a_dead_writer(run):
    partial = run / "checkpoints" / "3.orbax-checkpoint-tmp-1700000000"
    (partial / "state").mkdir(parents=True)
    res = trainer.Trainer.resume(run, ["steps=3"]).run()
    assert res["steps"] == 3 and steps_of(run) == ["3"]


# -- item 8: Ctrl-C during train ---------------------------------------------------------------------

def _interrupt_at(monkeypatch, step: int, times: int):
    """Ctrl-C `times` times from inside the step loop (when the metrics of `step` are written)."""
    from jaxshare.training import writers

    real = writers.open_writers

    def opening(*a, **kw):
        w = real(*a, **kw)
        write = w.write

        def hooked(s, scalars):
            write(s, scalars)
            if s == step and "loss" in scalars:
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGINT)

        w.write = hooked
        return w

    monkeypatch.setattr(writers, "open_writers", opening)


def test_first_ctrl_c_checkpoints_and_exits_preempted(files, tmp_path, capfd, monkeypatch):
    from jaxshare.errors import EXIT_PREEMPTED

    _interrupt_at(monkeypatch, 3, 1)
    run = tmp_path / "run"
    assert cli_main(["train", "plain", *sets(files, run, steps=50, checkpoint_every=0)]) == EXIT_PREEMPTED
    out, err = capfd.readouterr()
    assert "preempted at step 3" in out and "Traceback" not in err
    assert steps_of(run) == ["3"]


def test_second_ctrl_c_stops_at_once_keeping_the_last_checkpoint(files, tmp_path, capfd, monkeypatch):
    from jaxshare.errors import EXIT_INTERRUPTED

    _interrupt_at(monkeypatch, 3, 2)
    run = tmp_path / "run"
    assert cli_main(["train", "plain", *sets(files, run, steps=50, checkpoint_every=2)]) == EXIT_INTERRUPTED
    out, err = capfd.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and lines[-1].startswith("jaxshare train plain: interrupted;"), err
    assert steps_of(run) == ["2"]


# -- item 10: in-memory run dirs; temporary writer folders ---------------------------------------------

def test_memory_run_dir_is_refused_on_the_command_line(files, capfd):
    assert cli_main(["train", "plain", *sets(files, "memory://jaxshare-safety/r")]) == 2
    one_line_error(capfd, "memory:// keeps nothing")
    assert cli_main(["train", "resume", "memory://jaxshare-safety/r"]) == 2
    one_line_error(capfd, "memory:// keeps nothing")


def test_tensorboard_staging_folder_is_removed_on_every_exit(files, tmp_path, monkeypatch):
    from jaxshare.training import step as step_module

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    tc = config(files, "memory://jaxshare-safety/tb", tensorboard=True, checkpoint_every=0,
                keep_final_checkpoint=False)
    trainer.Trainer(tc).run()
    assert list((tmp_path / "tmp").iterdir()) == []
    import jax.numpy as jnp

    monkeypatch.setattr(step_module, "ce_loss", lambda *a, **k: jnp.float32(jnp.nan))
    with pytest.raises(trainer.TrainingDiverged):
        trainer.Trainer(config(files, "memory://jaxshare-safety/tb2", tensorboard=True)).run()
    assert list((tmp_path / "tmp").iterdir()) == []


# -- item 12: a checkpoint is saved only when its weights are sound ------------------------------------

def test_blown_up_update_is_never_checkpointed(files, run, capfd):
    """lr 1e9 blows the weights up; a state with non-finite values (or loss) is never saved, the
    message names the newest checkpoint, which is sound, and a resume at a normal lr from it completes."""
    import re

    import orbax.checkpoint as ocp

    assert cli_main(["train", "resume", str(run), "--set", "lr=1e9", "--set", "steps=8"]) == 2
    line = one_line_error(capfd, "stopped without saving it. Last good checkpoint: step ")
    good = int(re.search(r"Last good checkpoint: step (\d+)", line).group(1))
    bad = int(re.search(r" at step (\d+);", line).group(1))
    assert steps_of(run) == [str(good)] and good < bad
    state = ocp.StandardCheckpointer().restore((run / "checkpoints" / str(good) / "state").absolute())
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state) if np.issubdtype(x.dtype, np.floating))
    res = trainer.Trainer.resume(run, ["lr=1e-3", f"steps={good + 2}"]).run()
    assert res["steps"] == good + 2 and np.isfinite(res["eval_ppl"])


def test_blown_up_first_update_names_no_checkpoint(files, tmp_path, capfd):
    run = tmp_path / "run"
    assert cli_main(["train", "postshare", *sets(files, run, lr=1e9, warmup_steps=0, steps=4)]) == 2
    one_line_error(capfd, "at step 1", "No good checkpoint was saved", "--overwrite")
    assert steps_of(run) == []


# -- item 16: the subcommand and the config file must agree on the mode ---------------------------------

def test_config_file_mode_conflicting_with_the_subcommand_is_refused(files, tmp_path, capfd):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("mode: plain\nsteps: 2\n")
    run = tmp_path / "run"
    assert cli_main(["train", "postshare", "--config", str(cfg), *sets(files, run)]) == 2
    one_line_error(capfd, "says mode 'plain' but the subcommand is `train postshare`")
    assert cli_main(["train", "direct+post", *sets(files, run), "--set", "mode=plain"]) == 2
    one_line_error(capfd, "--set mode says mode 'plain'")
    assert not run.exists()


@pytest.mark.parametrize("as_str", [True, False])
def test_links_in_a_marked_run_dir_are_foreign_and_overwrite_keeps_them(tmp_path, as_str):
    """A run dir named by a string reaches the check as an etils path, which has no is_symlink: links
    named like our entries passed for ours, and --overwrite would have removed them, or followed
    a linked checkpoints/ into the user's folder (found by test_cli_fuzz's random prior content)."""
    run, mine = tmp_path / "run", tmp_path / "mine"
    (mine / "3").mkdir(parents=True)
    (mine / "3" / "weights").write_text("mine")
    (mine / "result.json").write_text("mine")
    (mine / "tb").mkdir()
    run.mkdir()
    rundir.write_marker(run)
    (run / "config.yaml").write_text("mode: plain\n")
    (run / "result.json").symlink_to(mine / "result.json")
    (run / "checkpoints").symlink_to(mine, target_is_directory=True)
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1").symlink_to(mine / "tb", target_is_directory=True)
    where = str(run) if as_str else run
    assert rundir.foreign_entries(where) == ["checkpoints", "result.json", "tensorboard/events.out.tfevents.1"]
    with pytest.raises(rundir.RunDirError, match="holds files jaxshare did not write"):
        rundir.check_new_run_dir(where, overwrite=True)
    with pytest.raises(rundir.RunDirError, match="now holds files jaxshare did not write"):
        rundir.clear_run_dir(where)
    assert (mine / "3" / "weights").read_text() == "mine" and (mine / "result.json").read_text() == "mine"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "jaxshare_run.json",
                                                      "result.json", "tensorboard"]
