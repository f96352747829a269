"""Flax NNX view (jaxshare.nnx) and logical axes (jaxshare.core.axes)."""
import functools
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxshare.basis.calibrate import collect_grams
from jaxshare.basis.compress import compress
from jaxshare.core import axes
from jaxshare.core.bank import Bank
from jaxshare.core.config import ModelConfig
from jaxshare.core.model import forward
from jaxshare.core.params import map_shapes, param_shapes
from jaxshare.headshare.directshare import direct_share
from jaxshare.io.hf import export_hf
from jaxshare.io.load import load_model
from jaxshare.nnx import BankIndex, Decoder, next_token_loss, to_params

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(**kw):
    base = dict(family="qwen2", vocab_size=128, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=8,
                d_ff=48, max_seq_len=64, norm_eps=1e-5, qkv_bias=True)
    base.update(kw)
    return ModelConfig(**base)


def random_params(cfg, seed: int):
    """init_params' distribution from numpy: compiling jax.random for every leaf takes ~20 s on CPU."""
    rng = np.random.default_rng(seed)

    def make(path, shape):
        x = rng.standard_normal(shape).astype(np.float32)
        return jnp.asarray(1.0 + 0.1 * x if path.endswith(".scale") else 0.02 * x)

    return map_shapes(make, param_shapes(cfg))


@functools.lru_cache(maxsize=None)  # arrays are immutable: tests may share a model
def tiny_model(kind: str, seed: int = 0):
    cfg = tiny_cfg()
    params = random_params(cfg, seed)
    if kind == "shared":
        params = direct_share(params, cfg, 0.3)[0]
    elif kind == "basis":
        calib = np.random.default_rng(seed).integers(0, cfg.vocab_size, (4, 32)).astype(np.int32)
        params = compress(params, cfg, collect_grams(params, cfg, calib, batch_size=2), 0.3, 2, progress=False)[0]
    return cfg, params


def tokens_of(cfg, B=2, T=24, seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab_size, (B, T)), jnp.int32)


def bank_leaves(params) -> dict:
    """{path: Bank} of every bank in a params tree."""
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, Bank))[0]
    return {jax.tree_util.keystr(p): b for p, b in flat if isinstance(b, Bank)}


@pytest.mark.parametrize("kind", ["dense", "shared", "basis"])
def test_nnx_logits_equal_functional_bit_for_bit(kind):
    cfg, params = tiny_model(kind)
    model = Decoder(cfg, params)
    tok = tokens_of(cfg)
    ref = np.asarray(forward(params, cfg, tok))
    assert np.array_equal(np.asarray(model(tok)), ref)
    assert np.array_equal(np.asarray(nnx.jit(lambda m, t: m(t))(model, tok)), ref)
    back_cfg, back = to_params(model)
    assert back_cfg == cfg
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)))


def test_bank_indices_are_bank_index_variables_not_params():
    cfg, params = tiny_model("shared")
    model = Decoder(cfg, params)
    idx = nnx.state(model, BankIndex)
    n_banks = len(bank_leaves(params))
    assert n_banks >= 3 and len(jax.tree_util.tree_leaves(idx)) == n_banks
    assert all(x.dtype == jnp.int32 for x in jax.tree_util.tree_leaves(idx))
    assert not any(x.dtype == jnp.int32 for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
    assert isinstance(model.layers.attn.wq.index, BankIndex) and isinstance(model.layers.attn.wq.rows, nnx.Param)


@pytest.mark.parametrize("cfg", [tiny_cfg(), tiny_cfg(family="gpt2", norm="layer", act="gelu_tanh", gated_mlp=False,
                                                      positions="learned", o_bias=True, mlp_bias=True, n_kv_heads=4),
                                 tiny_cfg(family="llama", qkv_bias=False, tie_embeddings=False)])
def test_param_axes_name_every_axis_of_every_leaf(cfg):
    ax, shapes = axes.param_axes(cfg), param_shapes(cfg)
    flat_ax = jax.tree_util.tree_leaves(ax, is_leaf=lambda x: isinstance(x, tuple))
    flat_sh = jax.tree_util.tree_leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))
    assert len(flat_ax) == len(flat_sh) > 8
    for a, s in zip(flat_ax, flat_sh):
        assert len(a) == len(s) and all(isinstance(n, str) for n in a)
    assert ax.layers.attn.wq == ("layers", "kv_heads", "heads", "embed", "head_dim")
    assert all(a[0] == "layers" for a in jax.tree_util.tree_leaves(ax.layers, is_leaf=lambda x: isinstance(x, tuple)))


def test_partition_specs_from_nnx_metadata():
    cfg, params = tiny_model("shared")
    specs = nnx.get_partition_spec(nnx.state(model := Decoder(cfg, params)))
    # wq/wk/wv are banks here; wo stays dense
    assert specs["layers"]["attn"]["wq"]["rows"].get_value() == P(None, None, "fsdp", None)
    assert specs["layers"]["attn"]["wk"]["rows"].get_value() == P(None, "fsdp", None)
    assert specs["layers"]["attn"]["bk"]["rows"].get_value() == P(None, None)
    assert specs["layers"]["attn"]["wq"]["index"].get_value() == P(None, None)
    assert specs["layers"]["attn"]["wo"].get_value() == P(None, "tensor", None, None, "fsdp")
    assert specs["layers"]["mlp"]["w_down"].get_value() == P(None, "tensor", "fsdp")
    assert specs["embed"].get_value() == P("tensor", "fsdp")
    assert specs["final_norm"]["scale"].get_value() == P(None)
    # the same specs as the functional table, leaf for leaf
    table = jax.tree_util.tree_leaves(axes.tree_specs(params), is_leaf=lambda x: isinstance(x, P))
    from_nnx = [v.get_value() for v in jax.tree_util.tree_leaves(specs, is_leaf=lambda x: isinstance(x, nnx.Variable))]
    flat_model = jax.tree_util.tree_leaves(nnx.state(model), is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert len(table) == len(from_nnx) == len(flat_model)
    assert sorted(map(str, table)) == sorted(map(str, from_nnx))


def test_factored_axes_and_custom_rules():
    cfg, params = tiny_model("basis")
    ax = axes.tree_axes(params)
    q = ax.layers.attn.wq
    assert q.basis.rows == ("units", "embed", "rank") and q.basis.index == (None,)
    assert q.coef == ("layers", "rank", "kv_heads")
    assert ax.layers.attn.wo.coef == ("layers", "rank", "embed")
    rules = (("embed", None), ("kv_heads", ("fsdp", "tensor"))) + axes.DEFAULT_RULES
    assert axes.spec(q.coef, rules) == P(None, None, ("fsdp", "tensor"))
    # a mesh axis is used once per leaf: the second dimension asking for it stays whole
    assert axes.spec(("embed", "mlp"), (("embed", "fsdp"), ("mlp", "fsdp"))) == P("fsdp", None)


@pytest.mark.parametrize("rules,msg", [
    ((("units", "fsdp"),), "never sharded"),
    ((("embed", "model"),), "unknown mesh axis 'model'"),
    ((("units", None), ("embed", "fsdp")), "no sharding rule for logical axis 'mlp'"),
    (("embed",), "pair"),
])
def test_bad_rules_are_clear_errors(rules, msg):
    with pytest.raises(axes.AxesError, match=msg):
        axes.spec(("units", "embed", "mlp"), rules)


def test_mesh_places_weights_by_their_specs():
    cfg, params = tiny_model("shared")
    with pytest.raises(ValueError, match="Auto axes"):
        Decoder(cfg, params, mesh=jax.make_mesh((1, 2, 4), axes.MESH_AXES))  # jax's default: Explicit
    mesh = jax.make_mesh((1, 2, 4), axes.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
    model = Decoder(cfg, params, mesh=mesh)
    # K = 2 does not split over tensor = 4, so wo [L, K, G, d, D] shards only D over fsdp;
    # F = 48 does split over tensor
    assert model.layers.attn.wo.get_value().sharding.spec == P(None, None, None, None, "fsdp")
    assert model.layers.mlp.w_up.get_value().sharding.spec == P(None, "fsdp", "tensor")
    assert model.layers.attn.wq.index.get_value().sharding.is_fully_replicated
    tok = tokens_of(cfg)
    np.testing.assert_allclose(np.asarray(model(tok)), np.asarray(forward(params, cfg, tok)), atol=1e-5, rtol=0)


@nnx.jit
def _train_step(model, optimizer, tokens_BT):
    loss, grads = nnx.value_and_grad(next_token_loss)(model, tokens_BT)
    optimizer.update(model, grads)
    return loss


def _finetune(model, batches, lr=1e-2):
    """Steps of adamw over the nnx.Param weights under nnx.jit; the losses."""
    optimizer = nnx.Optimizer(model, optax.adamw(lr), wrt=nnx.Param)
    return [float(_train_step(model, optimizer, b)) for b in batches]


def _check_training_kept_sharing(before, after):
    """Indices unchanged (int32), rows trained, tied units identical in the dense view."""
    banks_before, banks_after = bank_leaves(before), bank_leaves(after)
    assert banks_before.keys() == banks_after.keys() and banks_before
    for path, b in banks_after.items():
        assert b.index.dtype == jnp.int32
        assert np.array_equal(np.asarray(b.index), np.asarray(banks_before[path].index)), path
        assert not np.array_equal(np.asarray(b.rows), np.asarray(banks_before[path].rows)), path
        idx, dense = np.asarray(b.index).ravel(), np.asarray(b.dense()).reshape((-1,) + b.rows.shape[1:])
        tied = [u for u in range(idx.size) if (idx[:u] == idx[u]).any()]
        assert tied, path
        for u in tied:
            assert np.array_equal(dense[u], dense[int(np.flatnonzero(idx == idx[u])[0])])


def test_optimizer_steps_keep_index_and_tied_units():
    cfg, params = tiny_model("shared")
    model = Decoder(cfg, params)
    losses = _finetune(model, [tokens_of(cfg, T=32, seed=0)] * 6)  # random tokens: only memorizing lowers the loss
    assert losses[-1] < losses[0]
    trained = model.to_params()
    _check_training_kept_sharing(params, trained)
    tok = tokens_of(cfg)
    assert np.array_equal(np.asarray(model(tok)), np.asarray(forward(trained, cfg, tok)))


@pytest.mark.parametrize("kind", ["shared", "basis"])
def test_nnx_state_orbax_round_trip(kind, tmp_path):
    cfg, params = tiny_model(kind)
    model = Decoder(cfg, params)
    state = nnx.state(model)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save((tmp_path / "state").absolute(), state)
        ckptr.wait_until_finished()
    # restore into a model that holds no values at all
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, params)))
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore((tmp_path / "state").absolute(), abstract)
    back = nnx.merge(graphdef, restored)
    a = jax.tree_util.tree_leaves(nnx.state(back))
    b = jax.tree_util.tree_leaves(state)
    assert len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))
    assert isinstance(back.layers.attn.wq.index if kind == "shared" else back.layers.attn.wq.basis.index, BankIndex)
    tok = tokens_of(cfg)
    assert np.array_equal(np.asarray(back(tok)), np.asarray(model(tok)))


@pytest.mark.parametrize("kind", ["dense", "shared"])
def test_module_to_params_export_hf_reload_same_logits(kind, tmp_path):
    cfg, params = tiny_model(kind)
    model = Decoder(cfg, params)
    _finetune(model, [tokens_of(cfg, T=32, seed=5)])  # exported weights differ from the originals
    cfg_out, trained = to_params(model)
    export_hf(trained, cfg_out, tmp_path / "hf")  # writes sharing.json by itself
    back = load_model(str(tmp_path / "hf"))
    tok = tokens_of(cfg)
    assert np.array_equal(np.asarray(forward(back.params, back.cfg, tok)), np.asarray(model(tok)))
    assert {p: np.asarray(b.index).tolist() for p, b in bank_leaves(back.params).items()} == \
        {p: np.asarray(b.index).tolist() for p, b in bank_leaves(trained).items()}


def test_decoder_takes_a_params_tree():
    cfg, params = tiny_model("dense")
    with pytest.raises(TypeError, match="Params tree, got Layers"):
        Decoder(cfg, params.layers)


def test_import_jaxshare_does_not_import_flax():
    code = "import sys, jaxshare; assert not any(m.split('.')[0] == 'flax' for m in sys.modules), 'flax'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


@pytest.mark.slow
def test_flax_nnx_notebook_runs():
    """Every code cell of notebooks/flax_nnx.ipynb, in order, in one namespace."""
    nb = json.loads((ROOT / "notebooks" / "flax_nnx.ipynb").read_text())
    namespace: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"flax_nnx cell {cell['id']}", "exec"), namespace)
    assert namespace["logits_equal"] and namespace["index_unchanged"]
    assert namespace["export_equal"] and namespace["index_restored"]
    assert namespace["loss_after"] < namespace["loss_before"]
    # SmolLM2 checks on the notebook's own objects (they were a second SmolLM2 fine-tune of their
    # own): the dense NNX view equals the functional forward, and training kept the sharing
    m, tokens = namespace["m"], namespace["tokens"]
    assert np.array_equal(np.asarray(Decoder.from_loaded(m)(tokens)), np.asarray(forward(m.params, m.cfg, tokens)))
    _check_training_kept_sharing(namespace["shared"], namespace["model"].to_params())
