"""LoRA adapters over every kind: outputs unchanged at attach, exact parameter count, the forward
equals the dense-of forward, native and HF round trips, merge where the structure allows it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxshare.core.compressed import materialize
from jaxshare.core.model import forward
from jaxshare.core.params import count_params
from jaxshare.lora.leaf import LoRA, adapter_params, attach, lora_paths, merge, strip
from tests.core.test_kinds import _build, base  # noqa: F401  (module fixture)

KINDS = ["dense", "shared", "corrected", "basis", "quant", "quant+basis", "ragged"]


@pytest.fixture(scope="module")
def tokens(base):  # noqa: F811
    cfg = base[0]
    return jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 12)), jnp.int32)


def _with_random_b(params):
    """Non-zero adapters, so the tests see them act."""
    new = {}
    for i, (p, x) in enumerate(lora_paths(params).items()):
        b = 0.05 * jax.random.normal(jax.random.key(i), x.b.shape, x.b.dtype)
        new[p] = LoRA(x.base, x.a, b, x.layout, x.leaf_shape, x.scale)
    from jaxshare.core.params import replace_leaves

    return replace_leaves(params, new)


@pytest.mark.parametrize("kind", KINDS)
def test_lora_counts_acts_and_round_trips(kind, base, tokens, tmp_path):  # noqa: F811
    from jaxshare.io.hf import export_hf
    from jaxshare.io.load import load_model
    from jaxshare.io.native import load_native, save_native

    cfg, params = _build(kind, base)
    r = 4
    lp = attach(params, cfg, r, alpha=8)
    want = sum(cfg.n_layers * r * sum(_dims(cfg, t)) for t in ("q", "k", "v", "o", "up", "gate", "down"))
    assert adapter_params(lp) == want == count_params(lp) - count_params(params)
    np.testing.assert_allclose(forward(lp, cfg, tokens), forward(params, cfg, tokens), atol=1e-5)
    lp = _with_random_b(lp)
    got = forward(lp, cfg, tokens)
    assert not np.allclose(got, forward(params, cfg, tokens), atol=1e-3)
    np.testing.assert_allclose(got, forward(materialize(lp), cfg, tokens), atol=1e-4)
    save_native(tmp_path / "n", cfg, lp)
    cfg2, back = load_native(tmp_path / "n")[:2]
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(lp)
    np.testing.assert_allclose(forward(back, cfg2, tokens), got, atol=1e-6)
    export_hf(lp, cfg, tmp_path / "hf")
    m = load_model(str(tmp_path / "hf"))
    cfg3, hf = m.cfg, m.params
    assert jax.tree_util.tree_structure(hf) == jax.tree_util.tree_structure(lp)
    np.testing.assert_allclose(forward(hf, cfg3, tokens), got, atol=1e-4)
    assert jax.tree_util.tree_structure(strip(lp)) == jax.tree_util.tree_structure(params)


def _dims(cfg, t):
    from jaxshare.core.matrices import dims

    return dims(cfg, t)


def test_merge_folds_dense_and_says_where_it_cannot(base, tokens):  # noqa: F811
    cfg, dense = _build("dense", base)
    lp = _with_random_b(attach(dense, cfg, 4))
    merged, report = merge(lp)
    assert not lora_paths(merged) and not report["kept"] and len(report["merged"]) == 7
    np.testing.assert_allclose(forward(merged, cfg, tokens), forward(lp, cfg, tokens), atol=1e-5)
    cfg, shared = _build("shared", base)
    lp = _with_random_b(attach(shared, cfg, 4))
    merged, report = merge(lp)
    assert set(report["kept"]) >= {"layers.attn.wq", "layers.attn.wk"}
    assert "bank" in " ".join(report["kept"].values()).lower() or "Bank" in " ".join(report["kept"].values())
    np.testing.assert_allclose(forward(merged, cfg, tokens), forward(lp, cfg, tokens), atol=1e-5)


def test_remat_keeps_one_product_per_adapted_weight(base, tokens, capsys):  # noqa: F811
    """Under training's "dots" remat the backward keeps each adapted projection's output once (the
    base's product plus the adapter's, as one array), not both products: the gate and up
    projections are the only [B, T, d_ff] residuals. The gradient is the unrematerialized one."""
    from jax.ad_checkpoint import print_saved_residuals

    from jaxshare.core.model import decoder_layer, rope_tables
    from jaxshare.training.memory import remat_layer

    cfg, params = base[0], base[1]
    if cfg.d_ff in (cfg.d_model, cfg.n_heads * cfg.head_dim):
        pytest.skip("the tiny model's d_ff must differ from its other widths")
    p = _with_random_b(attach(params, cfg, 4))
    layer = jax.tree_util.tree_map(lambda x: x[0], p.layers)
    B, T = tokens.shape
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    x = jax.random.normal(jax.random.key(0), (B, T, cfg.d_model))
    rope = rope_tables(cfg, pos)

    def loss(layer, fn):
        return jnp.sum(jnp.square(fn(x, layer, cfg, rope, pos, 0)[0]))

    capsys.readouterr()
    print_saved_residuals(lambda lay: loss(lay, remat_layer(decoder_layer, "dots")), layer)
    wide = [ln for ln in capsys.readouterr().out.splitlines()
            if f"[{B},{T},{cfg.d_ff}]" in ln and "from the argument" not in ln]
    assert len(wide) == 2, wide
    g_remat = jax.grad(lambda lay: loss(lay, remat_layer(decoder_layer, "dots")))(layer)
    g_plain = jax.grad(lambda lay: loss(lay, decoder_layer))(layer)
    for a, b in zip(jax.tree_util.tree_leaves(g_remat), jax.tree_util.tree_leaves(g_plain)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
