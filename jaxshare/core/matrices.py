"""The linear weights of a decoder layer, in one table: for each type its params path, the
calibration input it reads, its 2-D view W [d_in, d_out] (y = x @ W), that view's sizes and the
logical axes (core.axes) that name them.

Basis Sharing factors these views, quantization packs them, head sharing's units are slices of
them; every method that treats a layer's weights as matrices reads this module, so a new family
or weight type is added here once.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxshare.core.config import ModelConfig
from jaxshare.core.params import replace_leaves

Array = jax.Array

# type -> (params path under layers, calibration input it reads, logical axes of (d_in, d_out)).
# A flattened head axis of the 2-D view is named by its outermost head axis, kv_heads, so that
# the view shards as the dense leaf does.
TYPES = {
    "q": ("attn.wq", "attn_in", ("embed", "kv_heads")), "k": ("attn.wk", "attn_in", ("embed", "kv_heads")),
    "v": ("attn.wv", "attn_in", ("embed", "kv_heads")), "o": ("attn.wo", "o_in", ("kv_heads", "embed")),
    "up": ("mlp.w_up", "mlp_in", ("embed", "mlp")), "gate": ("mlp.w_gate", "mlp_in", ("embed", "mlp")),
    "down": ("mlp.w_down", "down_in", ("mlp", "embed")),
}

def to_2d(layout: str, w: Array) -> Array:
    """A dense leaf [..., leaf_shape] -> [..., d_in, d_out] (y = x @ W, output heads flattened)."""
    if layout == "q":  # [.., K, G, D, d] -> [.., D, K*G*d]
        w = jnp.moveaxis(w, -2, -4)
        return w.reshape(w.shape[:-3] + (-1,))
    if layout in ("k", "v"):  # [.., K, D, d] -> [.., D, K*d]
        w = jnp.moveaxis(w, -2, -3)
        return w.reshape(w.shape[:-2] + (-1,))
    if layout == "o":  # [.., K, G, d, D] -> [.., K*G*d, D]
        return w.reshape(w.shape[:-4] + (-1, w.shape[-1]))
    return w


def from_2d(layout: str, w: Array, leaf_shape: tuple) -> Array:
    """Inverse of to_2d for a leaf whose per-layer shape is leaf_shape."""
    lead = w.shape[:-2]
    if layout == "q":
        K, G, D, d = leaf_shape
        return jnp.moveaxis(w.reshape(lead + (D, K, G, d)), -4, -2)
    if layout in ("k", "v"):
        K, D, d = leaf_shape
        return jnp.moveaxis(w.reshape(lead + (D, K, d)), -3, -2)
    return w.reshape(lead + tuple(leaf_shape))


def matmul_2d(layout: str, x: Array, product, leaf_shape: tuple) -> Array:
    """One layer's y = product(x2) through a weight's 2-D view: x's trailing axes after [B, T]
    (o's heads) are flattened to d_in, and q/k/v's d_out is unflattened back into heads, so a
    kind that computes in the 2-D view (a factorization, an adapter) meets the layer's shapes."""
    lead = x.shape[:2]
    y = product(x.reshape(lead + (-1,)))
    if layout == "q":
        return y.reshape(lead + tuple(leaf_shape[:2]) + (leaf_shape[3],))
    if layout in ("k", "v"):
        return y.reshape(lead + (leaf_shape[0], leaf_shape[2]))
    return y


def field_name(t: str) -> str:
    """A type's field in its module of the layer ('wq' for q, 'w_up' for up)."""
    return TYPES[t][0].split(".")[1]


def get_type(layers, t: str):
    return getattr(getattr(layers, TYPES[t][0].split(".")[0]), field_name(t))


def set_types(params, new: dict):
    """params with layers.<type> leaves replaced by new[type]."""
    return replace_leaves(params, {f"layers.{TYPES[t][0]}": v for t, v in new.items()})


def dims(cfg: ModelConfig, t: str) -> tuple[int, int]:
    """(d_in, d_out) of a type."""
    D, F, hd = cfg.d_model, cfg.d_ff, cfg.head_dim
    return {"q": (D, cfg.n_heads * hd), "k": (D, cfg.n_kv_heads * hd), "v": (D, cfg.n_kv_heads * hd),
            "o": (cfg.n_heads * hd, D), "up": (D, F), "gate": (D, F), "down": (F, D)}[t]
