"""Decoder behaviour beyond parity: the KV-cache path, sampling, native checkpoints."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import random_hf_model
from jaxshare.io.native import load_native, save_native
from jaxshare.core.config import ModelConfig
from jaxshare.core.generate import generate, sample_token
from jaxshare.io.hf import load_hf_dir
from jaxshare.core.model import KVCache, forward, forward_cached
from jaxshare.core.params import count_params, init_params


@pytest.mark.parametrize("family,kw", [("llama", {}), ("mistral", {"sliding_window": 24}), ("gpt2", {})])
def test_kv_cache_matches_full_forward(family, kw, tmp_path):
    random_hf_model(family, **kw).save_pretrained(tmp_path)
    cfg, params = load_hf_dir(tmp_path)
    toks = np.random.default_rng(1).integers(0, 256, size=(2, 72)).astype(np.int32)
    full = np.asarray(forward(params, cfg, toks))
    cache = KVCache.empty(cfg, 2, 80)
    # prefill 40, then one token at a time, then a chunk of 8
    logits, cache = forward_cached(params, cfg, jnp.asarray(toks[:, :40]), cache)
    pieces = [np.asarray(logits)]
    for t in range(40, 64):
        logits, cache = forward_cached(params, cfg, jnp.asarray(toks[:, t:t + 1]), cache)
        pieces.append(np.asarray(logits))
    logits, cache = forward_cached(params, cfg, jnp.asarray(toks[:, 64:72]), cache)
    pieces.append(np.asarray(logits))
    assert int(cache.length) == 72
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-4, rtol=0)


def test_greedy_generation_equals_argmax_of_full_forward(tmp_path):
    random_hf_model("llama").save_pretrained(tmp_path)
    cfg, params = load_hf_dir(tmp_path)
    prompt = np.random.default_rng(2).integers(0, 256, size=(1, 10)).astype(np.int32)
    new = generate(params, cfg, prompt, 12)
    seq = prompt
    for _ in range(12):  # the slow way: re-run the full forward each step
        nxt = np.asarray(forward(params, cfg, seq))[:, -1].argmax(-1)
        seq = np.concatenate([seq, nxt[:, None].astype(np.int32)], axis=1)
    np.testing.assert_array_equal(new, seq[:, 10:])


def test_top_p_sampling_keeps_only_the_nucleus():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    draws = jax.vmap(lambda k: sample_token(logits, k, 1.0, 0.7))(jax.random.split(jax.random.key(0), 2000))
    seen = set(np.asarray(draws).ravel().tolist())
    assert seen == {0, 1}  # 0.5 + 0.3 covers 0.7; tokens 2 and 3 are outside the nucleus
    frac0 = float(np.mean(np.asarray(draws) == 0))
    assert abs(frac0 - 0.5 / 0.8) < 0.05


def test_native_checkpoint_roundtrip(tmp_path):
    cfg = ModelConfig(family="llama", vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                      d_ff=48, max_seq_len=128, norm_eps=1e-6, windows=None)
    params = init_params(cfg, jax.random.key(0))
    save_native(tmp_path / "ck", cfg, params)
    cfg2, params2, meta = load_native(tmp_path / "ck")
    assert cfg2 == cfg and meta["format"] == "jaxshare"
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert count_params(params2) == count_params(params)
    _, bf16, _ = load_native(tmp_path / "ck", dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(bf16))


def test_attention_probs_reproduce_the_attention_output(tmp_path):
    """The maps that analyses read (attention_probs) are the ones the forward uses."""
    from jaxshare.core.model import apply_rope, attention, attention_probs, project_qkv, rope_tables
    from jaxshare.core.params import Layers

    random_hf_model("mistral", sliding_window=16).save_pretrained(tmp_path)
    cfg, params = load_hf_dir(tmp_path)
    layer0 = jax.tree_util.tree_map(lambda a: a[0], params.layers)
    assert isinstance(layer0, Layers)
    x = jax.random.normal(jax.random.key(0), (2, 40, cfg.d_model))
    pos = jnp.broadcast_to(jnp.arange(40, dtype=jnp.int32), (2, 40))
    rope = rope_tables(cfg, pos)
    window = jnp.int32(16)
    y, _ = attention(x, layer0.attn, cfg, rope, pos, window)
    q, k, v = project_qkv(x, layer0.attn)
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    probs = attention_probs(q, k, pos, pos, window)
    np.testing.assert_allclose(np.asarray(probs.sum(-1)), 1.0, atol=1e-5)
    assert float(probs[0, 0, 0, 30, :14].max()) == 0.0  # outside the window of 16
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    y2 = jnp.einsum("btkgd,kgdD->btD", out, layer0.attn.wo)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y2), atol=1e-5)
