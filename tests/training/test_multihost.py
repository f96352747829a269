"""Issue 16: two CPU processes (jax.distributed, gloo collectives, 4 simulated devices each) train
like one process with 8 devices, and write one metrics file, one checkpoint and one export."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxshare.core.params import init_params
from jaxshare.io.native import save_native
from jaxshare.training import trainer
from jaxshare.training.config import build_config
from tests.tiny_model import TRAIN_CFG, save_run_files

ROOT = Path(__file__).resolve().parents[2]
CFG = TRAIN_CFG
# The suite's XLA flags (tests/conftest.py), with 4 devices a process instead of 8.
FOUR_DEVICES = os.environ["XLA_FLAGS"].replace("device_count=8", "device_count=4")
RUN = dict(steps=4, seq_len=32, batch_size=8, grad_accum=2, lr=1e-3, warmup_steps=1, ratio=0.3, eval_every=0,
           eval_windows=4, checkpoint_every=2, keep_final_checkpoint=True, progress=False, tensorboard=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mh")
    return save_run_files(d)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _rows(run):
    return [json.loads(ln) for ln in (Path(run) / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def test_two_processes_train_like_one_process_with_eight_devices(files, tmp_path):
    base = dict(model=str(files / "model"), data=str(files / "train.npy"), eval_data=str(files / "eval.npy"), **RUN)
    ref_run = tmp_path / "one"
    ref = trainer.Trainer(build_config(dict(base, run_dir=str(ref_run), mesh="data=2,fsdp=4"))).run()

    run = tmp_path / "two"
    port = _free_port()
    sets = [f"{k}={v}" for k, v in dict(base, run_dir=str(run), mesh="fsdp=4", dcn_mesh="data=2", multihost=True,
                                         coordinator=f"localhost:{port}", num_processes=2).items()]
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS=FOUR_DEVICES,
               JAX_PLATFORMS="cpu")
    procs = []
    for pid in range(2):
        argv = [sys.executable, "-m", "jaxshare", "train", "postshare", "--json"]
        for s in sets + [f"process_id={pid}"]:
            argv += ["--set", s]
        procs.append(subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1]))  # gloo logs to stdout
    assert outs[0]["status"] == outs[1]["status"] == "completed"

    # The same losses as one process on the same (data=2, fsdp=4) layout.
    a, b = [r for r in _rows(ref_run) if "loss" in r], [r for r in _rows(run) if "loss" in r]
    assert [r["step"] for r in b] == [1, 2, 3, 4]  # one writer: no duplicated rows
    for x, y in zip(a, b):
        for k in ("loss", "ce", "lw", "grad_norm"):
            assert y[k] == pytest.approx(x[k], rel=2e-6, abs=1e-6), (x["step"], k)
    assert outs[0]["eval_ppl"] == pytest.approx(ref["eval_ppl"], rel=2e-6)

    # One metrics file, one checkpoint (the kept final one, with both processes' data state), one export.
    names = sorted(p.name for p in run.iterdir())
    assert names == ["checkpoints", "config.yaml", "final", "hf", "jaxshare_run.json", "metrics.jsonl", "plan.npz",
                     "result.json"]
    steps = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert steps == ["4"]
    data_state = sorted(p.name for p in (run / "checkpoints" / "4" / "data").iterdir() if p.name.startswith("process"))
    assert data_state == ["process_0-of-2.json", "process_1-of-2.json"]
    assert all(json.loads((run / "checkpoints" / "4" / "data" / n).read_text()) == {"next_index": 4} for n in data_state)
    from jaxshare.core.model import forward
    from jaxshare.io.load import load_model

    toks = np.load(files / "eval.npy")[:64].reshape(2, 32)
    for sub in ("final", "hf"):
        got, want = load_model(str(run / sub)), load_model(str(ref_run / sub))
        np.testing.assert_allclose(np.asarray(forward(got.params, CFG, toks)),
                                   np.asarray(forward(want.params, CFG, toks)), atol=1e-4)


def test_two_processes_heal_like_one_process(files, tmp_path):
    """`jaxshare heal` on two processes: the teacher is laid out beside the student on the same mesh,
    one writer, the same KD losses as one process with the same layout, one healed output."""
    import jax.numpy as jnp

    student = tmp_path / "student"
    save_native(student, CFG, jax.tree_util.tree_map(lambda x: x * jnp.float32(1.2), init_params(CFG, jax.random.key(0))),
                None)
    heal = dict(steps=3, seq_len=32, batch_size=8, lr=1e-3, warmup_steps=1, eval_every=0, eval_windows=4,
                checkpoint_every=0, progress=False, tensorboard=False, trains="lora", lora_rank=2, export_hf=False)
    argv0 = ["heal", str(student), None, "--teacher", str(files / "model"), "--data", str(files / "train.npy"),
             "--eval-data", str(files / "eval.npy"), "--json"]
    ref_out, ref_run = tmp_path / "one_out", tmp_path / "one"
    ref = trainer.Trainer(build_config(dict(mode="heal", model=str(student), teacher=str(files / "model"),
                                            data=str(files / "train.npy"), eval_data=str(files / "eval.npy"),
                                            run_dir=str(ref_run), mesh="data=2,fsdp=4", **heal))).run()
    port = _free_port()
    sets = {**heal, "mesh": "fsdp=4", "dcn_mesh": "data=2", "multihost": True, "coordinator": f"localhost:{port}",
            "num_processes": 2}
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS=FOUR_DEVICES,
               JAX_PLATFORMS="cpu")
    procs = []
    for pid in range(2):
        argv = [sys.executable, "-m", "jaxshare"] + [a if a is not None else str(tmp_path / "two_out") for a in argv0]
        argv += ["--run-dir", str(tmp_path / "two")]
        for k, v in {**sets, "process_id": pid}.items():
            argv += ["--set", f"{k}={v}"]
        procs.append(subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    for p in procs:
        try:
            _, err = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-3000:]
    a, b = [r for r in _rows(ref_run) if "loss" in r], [r for r in _rows(tmp_path / "two") if "loss" in r]
    assert [r["step"] for r in b] == [1, 2, 3]
    for x, y in zip(a, b):
        for k in ("loss", "kd", "grad_norm"):
            assert y[k] == pytest.approx(x[k], rel=2e-6, abs=1e-6), (x["step"], k)
    from jaxshare.core.model import forward
    from jaxshare.io.load import load_model

    toks = np.load(files / "eval.npy")[:64].reshape(2, 32)
    got, want = load_model(str(tmp_path / "two_out")), load_model(ref["final"])
    np.testing.assert_allclose(np.asarray(forward(got.params, CFG, toks)), np.asarray(forward(want.params, CFG, toks)),
                               atol=1e-4)
    del ref_out
