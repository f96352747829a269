"""Per-layer MLP widths (`prune --per-layer`, pruning/ragged.py): the model computes what its sliced
layers do (against a numpy-padded dense model and transformers on the HF export), it round-trips
natively and through HF, trains without touching its padding, and what cannot take it refuses."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import jaxshare as js
from jaxshare.core.bank import combine, partition, trainable_mask
from jaxshare.core.model import forward
from jaxshare.core.params import count_params, param_bytes, replace_leaves
from jaxshare.errors import JaxshareError
from jaxshare.pruning.importance import mlp_importance
from jaxshare.pruning.ragged import Ragged
from tests.cli_helpers import run
from tests.conftest import torch_logits
from tests.prune.test_prune import TOKENS, family
from tests.tiny_model import save_text, save_tiny_model


def _numpy_keep(m, grams, r):
    """The per-layer selection written out in numpy: residual-stream energy of each channel,
    model-wide ascending order, at most 1.5x the uniform count per layer."""
    L, F = m.cfg.n_layers, m.cfg.d_ff
    n = round(r * F)
    act = mlp_importance(grams, m.cfg)
    down = np.asarray(m.params.layers.mlp.w_down, np.float64)
    e = act * (down ** 2).sum(-1)
    removed, drop = np.zeros(L, int), np.zeros((L, F), bool)
    for flat in np.argsort(e.ravel(), kind="stable"):
        if drop.sum() == L * n:
            break
        l, j = divmod(int(flat), F)
        if removed[l] < min(F - 1, int(1.5 * n)):
            removed[l] += 1
            drop[l, j] = True
    return [np.flatnonzero(~drop[l]) for l in range(L)]


def _padded_dense(m, keep):
    """A dense params tree of the widest kept layer: each layer's kept channels first, zeros after."""
    mlp, F = m.params.layers.mlp, max(len(k) for k in keep)
    new = {}
    for name, axis in (("w_gate", 2), ("w_up", 2), ("w_down", 1), ("b_up", 1), ("b_gate", 1)):
        w = getattr(mlp, name)
        if w is None:
            continue
        w = np.asarray(w)
        shape = list(w.shape)
        shape[axis] = F
        out = np.zeros(shape, w.dtype)
        for l, k in enumerate(keep):
            sl = [l] + [slice(None)] * (w.ndim - 1)
            sl[axis] = slice(0, len(k))
            out[tuple(sl)] = np.take(w[l], k, axis=axis - 1)
        new[f"layers.mlp.{name}"] = jnp.asarray(out)
    return replace_leaves(m.params, new)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_per_layer_model_is_the_sliced_layers_and_transformers_agrees(name, tmp_path, tmp_path_factory):
    """GPT-2's b_up is a channel leaf too. The model removes as many channels as uniform pruning,
    layers differ, and it computes exactly what a numpy-padded dense model does; its HF export (padded
    to the widest layer) loads in transformers with the same logits and restores the banks."""
    _, m, grams = family(name, tmp_path_factory)
    out, rep = js.prune(m, mlp=0.25, per_layer=True, calib=grams)
    uni, _ = js.prune(m, mlp=0.25, calib=grams)
    keep = _numpy_keep(m, grams, 0.25)
    widths = [len(k) for k in keep]
    assert rep["widths"] == widths and len(set(widths)) > 1 and sum(widths) == uni.cfg.d_ff * m.cfg.n_layers
    assert out.cfg.d_ff == max(widths) == rep["d_ff"][1] and isinstance(out.params.layers.mlp.w_up, Ragged)
    # the bank holds the kept channels plus one zero row per leaf, nothing else
    ragged = [x for x in jax.tree_util.tree_leaves(out.params, is_leaf=lambda x: isinstance(x, Ragged))
              if isinstance(x, Ragged)]
    assert len(ragged) == 3  # Llama: gate, up, down; GPT-2: up, its bias and down
    extra = sum(int(np.prod(x.rows.shape[1:])) for x in ragged)
    assert count_params(out.params) == count_params(uni.params) + extra
    got = np.asarray(forward(out.params, out.cfg, TOKENS))
    want = np.asarray(forward(_padded_dense(m, keep), out.cfg, TOKENS))
    assert np.max(np.abs(got - want)) <= 1e-6 * max(1.0, np.max(np.abs(want)))
    path = js.export_hf(out, tmp_path / "hf")
    conf = json.loads((path / "config.json").read_text())
    assert conf.get("intermediate_size", conf.get("n_inner")) == max(widths)
    assert json.loads((path / "ragged.json").read_text())["widths"] == widths
    back_t = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert np.max(np.abs(torch_logits(back_t, TOKENS) - got)) <= 1e-4
    back = js.load(path)
    assert isinstance(back.params.layers.mlp.w_down, Ragged) and count_params(back.params) == count_params(out.params)
    assert np.max(np.abs(np.asarray(forward(back.params, back.cfg, TOKENS)) - got)) <= 1e-5


def test_native_round_trip_training_and_refusals(tmp_path, tmp_path_factory):
    _, m, grams = family("llama", tmp_path_factory)
    out, rep = js.prune(m, mlp=0.25, per_layer=True, compensate=True, calib=grams)
    r = rep["per_type"]["down"]
    assert r["rel_calib_error_compensated"] < r["rel_calib_error_sliced"]
    js.save(out, tmp_path / "native")
    back = js.load(tmp_path / "native")
    assert back.cfg == out.cfg and back.extra["prune"]["steps"][-1]["per_layer"] is True
    assert param_bytes(back.params) == param_bytes(out.params) < param_bytes(m.params)
    want = np.asarray(forward(out.params, out.cfg, TOKENS))
    np.testing.assert_array_equal(np.asarray(forward(back.params, back.cfg, TOKENS)), want)
    # the index never trains and the zero rows get no gradient, so training keeps the padding zero
    mask = trainable_mask(out.params.layers.mlp.w_up)
    assert mask.rows is True and mask.index is False

    train, frozen = partition(out.params)

    def loss(t):
        return jnp.mean(forward(combine(t, frozen), out.cfg, TOKENS) ** 2)

    g = jax.grad(loss)(train).layers.mlp
    for leaf in (g.w_gate, g.w_up, g.w_down):
        assert float(jnp.max(jnp.abs(leaf.rows[-1]))) == 0.0 and float(jnp.max(jnp.abs(leaf.rows))) > 0
    with pytest.raises(JaxshareError, match="per-layer MLP widths") as e:
        js.quantize(out, bits=8, method="rtn")
    assert "\n" not in str(e.value)


def test_cli_per_layer(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path / "cache"))
    model = save_tiny_model(tmp_path / "m", layers=2)
    text = save_text(tmp_path / "t.txt", 3000)
    out = tmp_path / "o"
    code, stdout, err = run(capsys, "prune", model, out, "--mlp", "0.25", "--per-layer", "--calib", text,
                            "--calib-windows", "4", "--calib-seq-len", "32")
    assert code == 0, err
    assert "MLP channels kept per layer" in stdout and "(widest layer)" in stdout
    got = js.load(out)
    assert isinstance(got.params.layers.mlp.w_gate, Ragged)
    assert forward(got.params, got.cfg, TOKENS[:, :16]).shape[:2] == (2, 16)
