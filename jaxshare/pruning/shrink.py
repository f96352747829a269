"""Slicing a dense params tree down to the kept MLP channels and KV groups, per layer.

Each layer keeps its own channels but every layer keeps the same number of them, so the stacked
[L, ...] arrays stay rectangular and the result is an ordinary dense model of a smaller config
(d_ff, n_kv_heads and n_heads = n_kv_heads * G smaller; head_dim, d_model and the norms unchanged).
A KV group is a KV head with its G query heads: the leading (L, K) axes of wq/wk/wv/wo and of
Qwen2's q/k/v biases (params.py's head-major layout makes the group one index on axis 1).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxshare.core.config import ModelConfig
from jaxshare.core.params import Params, replace_leaves
from jaxshare.core import host


def take_per_layer(w, keep_LN: np.ndarray, axis: int):
    """w[l] restricted to the indices keep_LN[l] on `axis` (an axis of w counting the leading L).

    On the host, one layer at a time: jnp.take_along_axis lowers to a gather whose index array is
    broadcast to the whole output with one coordinate per axis (3.7 GB of int32 for Qwen2-1.5B's
    up projection), on top of the output."""
    keep_LN = np.asarray(keep_LN)
    shape = w.shape[:axis] + keep_LN.shape[1:] + w.shape[axis + 1:]
    out = host.empty(shape, w.dtype)
    for l in range(w.shape[0]):
        out[l] = np.take(np.asarray(w[l]), keep_LN[l], axis=axis - 1)
    return host.adopt(out)


def shrink_mlp(params: Params, cfg: ModelConfig, keep_LF: np.ndarray, down=None,
               consume: bool = False) -> tuple[Params, ModelConfig]:
    """Keep the channels keep_LF [L, F'] of each layer: columns of gate/up (and their biases), rows
    of down (down's bias is over d_model and stays). down: the new down projection [L, F', D]
    (compensation's refit) instead of down's kept rows. consume: delete each dense jax leaf as
    soon as its replacement exists, so a 1.5B model's dense and pruned MLPs (4.3 and 3.5 GB) are
    never held whole side by side (`params` becomes unusable)."""
    mlp = params.layers.mlp
    new = {}
    for name, axis in (("w_gate", 2), ("w_up", 2), ("w_down", 1), ("b_up", 1), ("b_gate", 1)):
        old = getattr(mlp, name)
        if old is None:
            continue
        new[f"layers.mlp.{name}"] = down if name == "w_down" and down is not None else take_per_layer(old, keep_LF, axis)
        if consume and hasattr(old, "delete"):
            old.delete()
    return replace_leaves(params, new), dataclasses.replace(cfg, d_ff=int(keep_LF.shape[1]))


def shrink_kv(params: Params, cfg: ModelConfig, keep_LK: np.ndarray) -> tuple[Params, ModelConfig]:
    """Keep the KV groups keep_LK [L, K'] of each layer with their query heads: wq [L, K, G, D, d],
    wk/wv [L, K, D, d], wo [L, K, G, d, D], bq [L, K, G, d], bk/bv [L, K, d] on axis 1. Gemma3's q/k
    norms are one weight per layer over head_dim, shared by the heads, and stay; so does o's bias."""
    attn = params.layers.attn
    new = {f"layers.attn.{name}": take_per_layer(getattr(attn, name), keep_LK, 1)
           for name in ("wq", "wk", "wv", "wo", "bq", "bk", "bv") if getattr(attn, name) is not None}
    k = int(keep_LK.shape[1])
    return replace_leaves(params, new), dataclasses.replace(cfg, n_kv_heads=k, n_heads=k * cfg.groups)
