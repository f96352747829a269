"""Attention-map similarity (paper Eq. 1, Fig. 1): how alike the post-softmax attention maps of
layers and heads are on real text, as cosine similarity averaged over a batch.

The maps come out of a scan over the same decoder layers, as the scan's per-layer output, so
no hooks are needed.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxshare.core.config import ModelConfig
from jaxshare.core.bank import split_banks
from jaxshare.core.model import apply_rope, attention_probs, decoder_layer, embed, norm, project_qkv, rope_tables


def _maps_layer(x_BTD, layer, cfg: ModelConfig, rope, q_pos_BT, window, kv=None):
    """A decoder layer that also returns its attention maps [B, H, T, T]."""
    q, k, _ = project_qkv(norm(x_BTD, layer.attn_norm, cfg), layer.attn)
    if cfg.positions == "rope":
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    p = attention_probs(q, k, q_pos_BT, q_pos_BT, window)  # [B, K, G, T, T]
    x_BTD, _ = decoder_layer(x_BTD, layer, cfg, rope, q_pos_BT, window)
    B, K, G, T, S = p.shape
    return x_BTD, p.reshape(B, K * G, T, S)


@partial(jax.jit, static_argnames=("cfg",))
def attention_maps(params, cfg: ModelConfig, tokens_BT) -> jax.Array:
    """Post-softmax maps [L, B, H, T, T] (float32) of every layer and head."""
    B, T = tokens_BT.shape
    q_pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    x = embed(params, cfg, tokens_BT, q_pos, jnp.float32)
    rope = rope_tables(cfg, q_pos) if cfg.positions == "rope" else None
    xs, rebuild = split_banks(params.layers)

    def body(x, xs_l):
        layer, window = xs_l
        return _maps_layer(x, rebuild(layer), cfg, rope, q_pos, window)

    _, maps = jax.lax.scan(body, x, (xs, jnp.asarray(cfg.layer_windows, jnp.int32)))
    return maps


@jax.jit
def _cosine_BNN(m_BNF):
    m = m_BNF / jnp.maximum(jnp.linalg.norm(m_BNF, axis=-1, keepdims=True), 1e-30)
    return jnp.einsum("bnf,bmf->bnm", m, m, precision="highest")


def map_similarity(params, cfg: ModelConfig, tokens_BT) -> dict[str, np.ndarray]:
    """{"layer": [L, L], "head": [L*H, L*H]}: cosine of flattened maps, mean over the batch."""
    maps = attention_maps(params, cfg, jnp.asarray(tokens_BT))  # [L, B, H, T, T]
    L, B, H, T, _ = maps.shape
    per_b = jnp.moveaxis(maps, 1, 0)  # [B, L, H, T, T]
    layer = _cosine_BNN(per_b.reshape(B, L, H * T * T)).mean(0)
    head = _cosine_BNN(per_b.reshape(B, L * H, T * T)).mean(0)
    return {"layer": np.asarray(layer), "head": np.asarray(head)}
