"""Every compressed kind x (logical axes, NNX view, optax masks, mesh placement, a training step).

Each kind answers its own logical axes (`Compressed.logical_axes`) and frozen fields
(`Compressed.frozen`); sharding, the NNX view, `bank.partition` and the decay mask read them."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.conftest import random_hf_model
from jaxshare.basis.calibrate import collect_grams
from jaxshare.basis.factor import Factored
from jaxshare.core import axes
from jaxshare.core.bank import Bank, combine, partition, trainable_mask
from jaxshare.core.model import forward
from jaxshare.io.hf import load_hf_dir
from jaxshare.quant.leaf import Quantized
from jaxshare.quant.model import QuantSpec, quantize_params
from jaxshare.training.step import _decay_mask, ce_loss

KINDS = ["dense", "shared", "corrected", "basis", "quant", "quant+shared", "quant+basis", "ragged"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    src = tmp_path_factory.mktemp("kinds") / "src"
    random_hf_model("llama").save_pretrained(src)
    cfg, params = load_hf_dir(src)
    calib = np.random.default_rng(5).integers(0, cfg.vocab_size, size=(4, 64)).astype(np.int32)
    return cfg, params, collect_grams(params, cfg, calib, batch_size=2)


def _build(kind, base):
    from jaxshare.basis.compress import compress
    from jaxshare.headshare.datashare import data_share
    from jaxshare.headshare.directshare import direct_share

    cfg, params, grams = base
    p = params
    if kind == "ragged":  # per-layer MLP widths (prune --per-layer): the config's d_ff is the widest layer
        from jaxshare.pruning.prune import prune

        p, cfg, _ = prune(params, cfg, grams, mlp=0.25, per_layer=True)
    elif "shared" in kind:
        p = direct_share(params, cfg, 0.5, share_o=True)[0]
    elif kind == "corrected":
        p = data_share(params, cfg, 0.5, "data", "qkv", grams)[0]
    elif "basis" in kind:
        p = compress(params, cfg, grams, 0.3, 2, progress=False)[0]
    if kind.startswith("quant"):
        p = quantize_params(p, cfg, QuantSpec(bits=4, group=32, sym=False, method="rtn"), progress=False)[0]
    return cfg, p


@pytest.fixture(scope="module")
def models(base):
    return {k: _build(k, base) for k in KINDS}


def _leaves_with_paths(tree):
    return jax.tree_util.tree_flatten_with_path(tree)[0]


@pytest.mark.parametrize("kind", KINDS)
def test_axes_cover_every_leaf_with_its_rank(kind, models):
    cfg, params = models[kind]
    ax = axes.tree_axes(params)
    got = jax.tree_util.tree_map(lambda x, a: len(a) == len(x.shape), params, ax)
    assert all(jax.tree_util.tree_leaves(got))
    if kind == "quant":  # the codes are sharded like the weight's 2-D view: embed in, heads out
        assert ax.layers.attn.wq.packed == ("layers", "embed", "kv_heads")
        assert ax.layers.mlp.w_down.scale == ("layers", "mlp", "embed")


@pytest.mark.parametrize("kind", KINDS)
def test_integer_leaves_are_frozen_and_never_reach_the_optimizer(kind, models):
    cfg, params = models[kind]
    mask = trainable_mask(params)
    for (path, x), m in zip(_leaves_with_paths(params), jax.tree_util.tree_leaves(mask)):
        assert m == bool(jnp.issubdtype(x.dtype, jnp.floating)), jax.tree_util.keystr(path)
    trainable, frozen = partition(params)
    assert all(jnp.issubdtype(x.dtype, jnp.floating) for x in jax.tree_util.tree_leaves(trainable))
    if kind.startswith("quant"):
        q = [x for x in jax.tree_util.tree_leaves(params, is_leaf=lambda y: isinstance(y, Quantized))
             if isinstance(x, Quantized)]
        assert q and all(x.packed.dtype == jnp.uint8 for x in q)


@pytest.mark.parametrize("kind", KINDS)
def test_a_training_step_runs_and_moves_only_trainable_leaves(kind, models):
    cfg, params = models[kind]
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 16)), jnp.int32)
    trainable, frozen = partition(params)
    tx = optax.adamw(1e-2, weight_decay=0.1, mask=_decay_mask)
    state = tx.init(trainable)
    grads = jax.grad(lambda t: ce_loss(combine(t, frozen), cfg, tokens))(trainable)
    updates, _ = tx.update(grads, state, trainable)
    new = combine(optax.apply_updates(trainable, updates), frozen)
    before, after = jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(new)
    for x, y, m in zip(before, after, jax.tree_util.tree_leaves(trainable_mask(params))):
        if not m:
            assert np.array_equal(np.asarray(x), np.asarray(y))
    assert np.isfinite(np.asarray(forward(new, cfg, tokens))).all()


def test_decay_mask_reads_axes_not_names(models):
    """A Factored basis decays (its field name starts with "b", which once meant "bias")."""
    _, dense = models["dense"]
    m = _decay_mask(dense)
    assert m.layers.attn.wq and m.layers.mlp.w_up and m.embed
    assert not m.layers.attn_norm.scale and not m.final_norm.scale
    _, basis = models["basis"]
    m = _decay_mask(partition(basis)[0])
    up = m.layers.mlp.w_up
    assert isinstance(up, Factored) and up.basis.rows is True and up.coef is True
    _, shared = models["shared"]
    wq = _decay_mask(partition(shared)[0]).layers.attn.wq
    assert isinstance(wq, Bank) and wq.rows is True and wq.index is None


@pytest.mark.parametrize("kind", KINDS)
def test_nnx_view_and_mesh_placement(kind, models):
    from flax import nnx

    from jaxshare.nnx import BankIndex, Decoder

    cfg, params = models[kind]
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, cfg.vocab_size, (1, 12)), jnp.int32)
    mesh = jax.make_mesh((1, 1, 1), axes.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
    model = Decoder(cfg, params, mesh=mesh)
    np.testing.assert_allclose(np.asarray(model(tokens)), np.asarray(forward(params, cfg, tokens)), atol=1e-5)
    frozen = jax.tree_util.tree_leaves(nnx.state(model, BankIndex))
    assert all(not jnp.issubdtype(x.dtype, jnp.floating) for x in frozen)
    assert all(jnp.issubdtype(x.dtype, jnp.floating) for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
    placed = jax.device_put(params, axes.tree_shardings(params, mesh))
    np.testing.assert_allclose(np.asarray(forward(placed, cfg, tokens)), np.asarray(forward(params, cfg, tokens)),
                               atol=1e-6)
