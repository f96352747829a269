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
from jaxshare.core.model import attention_probs, attention_scale, decoder_layer, hidden_states, norm, qk_rope
from jaxshare.headshare.similarity import cosine


def maps_layer(x_BTD, layer, cfg: ModelConfig, rope, q_pos_BT, window, kv=None):
    """A `layer_fn` that also returns the layer's attention maps [B, H, T, T]."""
    q, k = qk_rope(norm(x_BTD, layer.attn_norm, cfg), layer.attn, cfg, rope)
    p = attention_probs(q, k, q_pos_BT, q_pos_BT, window, attention_scale(cfg))  # [B, K, G, T, T]
    x_BTD, _ = decoder_layer(x_BTD, layer, cfg, rope, q_pos_BT, window)
    B, K, G, T, S = p.shape
    return x_BTD, p.reshape(B, K * G, T, S)


@partial(jax.jit, static_argnames=("cfg",))
def attention_maps(params, cfg: ModelConfig, tokens_BT) -> jax.Array:
    """Post-softmax maps [L, B, H, T, T] (float32) of every layer and head."""
    return hidden_states(params, cfg, tokens_BT, layer_fn=maps_layer)[1]


def map_similarity(params, cfg: ModelConfig, tokens_BT) -> dict[str, np.ndarray]:
    """{"layer": [L, L], "head": [L*H, L*H]}: cosine of flattened maps, mean over the batch."""
    maps = attention_maps(params, cfg, jnp.asarray(tokens_BT))  # [L, B, H, T, T]
    L, B, H, T, _ = maps.shape
    per_b = jnp.moveaxis(maps, 1, 0)  # [B, L, H, T, T]
    layer = cosine(per_b.reshape(B, L, H * T * T)).mean(0)
    head = cosine(per_b.reshape(B, L * H, T * T)).mean(0)
    return {"layer": np.asarray(layer), "head": np.asarray(head)}
