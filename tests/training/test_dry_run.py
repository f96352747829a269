"""Issue 27 §5: `jaxshare train MODE --dry-run` reads FLOPs, collective bytes and memory off the
compiled step. Each compile runs the CLI in a fresh process on 8 simulated CPU devices (the
device count is fixed when jax starts), on a tiny llama wide enough that matmuls dominate."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxshare.core.config import ModelConfig
from tests.conftest import FAST_COMPILE
from tests.tiny_model import save_run_files

ROOT = Path(__file__).resolve().parents[2]
CFG = ModelConfig(family="llama", vocab_size=1024, d_model=256, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=64,
                  d_ff=1024, max_seq_len=256, norm_eps=1e-5)
B, T = 8, 128


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_run_files(tmp_path_factory.mktemp("dry"), CFG) / "model"


def _cli(*args, devices=None):
    # the suite's fast LLVM codegen (tests/conftest.py) but not its 8 devices: --devices sets those.
    # The figures checked here are read off the optimized HLO, which the codegen flags do not change.
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS=FAST_COMPILE)
    return subprocess.run([sys.executable, "-m", "jaxshare", "train", "plain", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _dry_run(model, tmp_path, mesh, remat, grad_accum):
    sets = dict(model=model, data="unused", run_dir=tmp_path / "run", seq_len=T, batch_size=B, grad_accum=grad_accum,
                ratio=0, mesh=mesh, remat=remat, dtype="bf16")
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    out = _cli("--dry-run", "--devices", "8", "--accelerator", "tpu-v5e", "--json", *args)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


# Per-layer weight-matmul params (q, k, v, o, gate, up, down) and the LM head (D x V).
LAYER = CFG.d_model * CFG.n_heads * CFG.head_dim * 2 + CFG.d_model * CFG.n_kv_heads * CFG.head_dim * 2 \
    + 3 * CFG.d_model * CFG.d_ff
HEAD = CFG.d_model * CFG.vocab_size


@pytest.mark.parametrize("remat", ["none", "dots", "full"])
def test_flops_and_fsdp_collectives_follow_their_formulas(model, tmp_path, remat):
    """FLOPs: the HLO's dot ops give the model formula times the remat recompute exactly (within
    0.5%); XLA's cost analysis (loop bodies weighted by trip count) adds the elementwise work on
    top: measured 1.040 / 1.038 / 1.029 of the formula for none / dots / full at this size, so
    the 5% bound holds with ~1% to spare. (The raw cost_analysis() counts each scan body once:
    about half of the step here.)

    Collectives, fsdp=8, A=2 micro-batches, fp32 master weights, bytes per device of the full
    buffer each op exchanges:
      all-gather = 4 * (2A * L * LAYER + 2 * HEAD) + 4 * A*B*T
        each layer's weights are gathered in the forward and again in the backward of every
        micro-batch; the LM head is loop-invariant in the accumulation scan, so XLA hoists its
        two gathers out of it; the embedding is never gathered (its lookup moves activations
        with all-to-all); the token ids are gathered once per micro-batch. The gathers move
        fp32: XLA gathers the master weights and casts them to bf16 after, not before.
      all-reduce = 4 * A * (n_params - V * D)
        every gradient but the embedding's (scatter-added on its own shard) is reduced once per
        micro-batch; XLA CPU forms no reduce-scatter (an all-reduce, then a slice), a TPU
        compile would (the same bytes in this convention)."""
    A = 2
    res = _dry_run(model, tmp_path, "fsdp=8", remat, A)
    f = res["flops"]
    assert res["devices"] == 8 and res["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert f["expected_ratio"] == pytest.approx({"none": 1.0, "dots": 1.0185, "full": 1.2224}[remat], abs=1e-3)
    assert f["matmul_total"] == pytest.approx(f["model_with_recompute"], rel=0.005)
    assert f["total"] == pytest.approx(f["model_with_recompute"], rel=0.05)
    assert f["total"] == f["per_device"] * 8 and f["cost_analysis_raw"] < 0.6 * f["per_device"]
    c = res["collectives"]
    ag = 4 * (2 * A * CFG.n_layers * LAYER + 2 * HEAD) + 4 * A * B * T
    ar = 4 * A * (res["n_params"] - HEAD)
    assert c["all-gather"]["bytes"] == pytest.approx(ag, rel=0.10) and c["all-gather"]["group"] == 8
    assert c["all-reduce"]["bytes"] == pytest.approx(ar, rel=0.10)
    assert c["reduce-scatter"]["bytes"] == 0 and c["collective-permute"]["bytes"] == 0
    a = res["accelerator"]
    assert a["name"] == "tpu-v5e" and a["fits"] and a["step_s"] == max(a["compute_s"], a["memory_s"], a["collective_s"])
    assert a["mfu"] == pytest.approx(f["model"] / (a["step_s"] * 197e12 * 8))


def test_tensor_parallel_collectives_follow_their_formula(model, tmp_path):
    """data=4, tensor=2 (heads, MLP width and vocab split in two), A=1, no remat: no gathers;
    all-reduces only, fp32, per device:
      activations over tensor: b*T*D*4 bytes (b = B/4 windows per data shard) per reduce. Megatron
        needs 2 per layer forward (attention out, MLP out) and 2 backward (the input gradients of
        the q/k/v and gate/up products); XLA CPU reduces the q, k, v and gate, up partial sums
        separately, 5 in the backward: 7 per layer. Plus the LM head: its input gradient (b*T*D)
        and the vocab-split log-softmax's reductions (b*(T-1)*D and three of b*(T-1) floats).
      gradients over data: each device's shard of every param, once: 4 * (matmul params / 2 +
        the replicated norms) with the embedding and LM head split on vocab."""
    res = _dry_run(model, tmp_path, "data=4,tensor=2", "none", 1)
    c = res["collectives"]
    D, L, b = CFG.d_model, CFG.n_layers, B // 4
    act = 4 * b * T * D * (7 * L + 1) + 4 * b * (T - 1) * (D + 3)
    norms = res["n_params"] - L * LAYER - 2 * HEAD
    grads = 4 * ((L * LAYER + 2 * HEAD) / 2 + norms)
    assert c["all-reduce"]["bytes"] == pytest.approx(act + grads, rel=0.10)
    assert sum(v["bytes"] for k, v in c.items() if k != "all-reduce") == 0
    assert res["flops"]["matmul_total"] == pytest.approx(res["flops"]["model"], rel=0.005)


@pytest.mark.parametrize("args, message", [
    (["--dry-run", "--devices", "8", "--shape", "llama3-8b", "--accelerator", "tpu-v9"], "unknown accelerator 'tpu-v9'"),
    (["--dry-run", "--devices", "8", "--shape", "llama-9000"], "unknown model shape 'llama-9000'"),
    (["--dry-run", "--set", "mesh="], "give --devices N"),
    (["--devices", "8"], "belong to --dry-run"),
])
def test_bad_dry_run_inputs_are_one_line(args, message):
    out = _cli(*args)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr


def test_step_cost_steps_aside_where_jaxlib_lacks_the_module_analysis(monkeypatch):
    """The per-loop analysis uses jaxlib's private text parser; without it the dry run falls back
    to the dot ops' FLOPs (and says so) instead of failing."""
    from jaxlib import _hlo

    from jaxshare.training import hlo

    monkeypatch.delattr(_hlo, "hlo_module_from_text")
    assert hlo.step_cost("HloModule m", client=None) is None
