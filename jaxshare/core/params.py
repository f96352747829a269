"""Parameter pytrees: registered dataclasses, head-major, with a leading layer axis.

Shapes (L layers, K KV heads, G query heads per KV head, D width, d head dim, F MLP width):
  attn.wq [L, K, G, D, d]   attn.wk / attn.wv [L, K, D, d]   attn.wo [L, K, G, d, D]
The (L, K) prefix is the sharing unit of docs/methods.md §1: a later bank + index gather replaces
the leading L axis of wq/wk/wv without touching anything else.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

import jax
import jax.numpy as jnp

from jaxshare.core.config import ModelConfig
from jaxshare.core.dtypes import as_dtype

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclass
class Norm:
    scale: Array  # [..., D]
    bias: Array | None = None


@jax.tree_util.register_dataclass
@dataclass
class Attention:
    wq: Array  # [L, K, G, D, d]
    wk: Array  # [L, K, D, d]
    wv: Array  # [L, K, D, d]
    wo: Array  # [L, K, G, d, D]
    bq: Array | None = None  # [L, K, G, d]
    bk: Array | None = None  # [L, K, d]
    bv: Array | None = None  # [L, K, d]
    bo: Array | None = None  # [L, D]
    q_norm: Array | None = None  # [L, d], qk_norm families: one RMSNorm weight shared by a layer's heads
    k_norm: Array | None = None  # [L, d]


@jax.tree_util.register_dataclass
@dataclass
class MLP:
    w_up: Array  # [L, D, F]
    w_down: Array  # [L, F, D]
    w_gate: Array | None = None  # [L, D, F], gated (SwiGLU) families only
    b_up: Array | None = None
    b_down: Array | None = None
    b_gate: Array | None = None


@jax.tree_util.register_dataclass
@dataclass
class Layers:
    attn_norm: Norm
    attn: Attention
    mlp_norm: Norm
    mlp: MLP
    attn_post_norm: Norm | None = None  # post_norms families: on the attention output
    mlp_post_norm: Norm | None = None  # and on the MLP output, before the residual adds


@jax.tree_util.register_dataclass
@dataclass
class Params:
    embed: Array  # [V, D]
    layers: Layers
    final_norm: Norm
    lm_head: Array | None = None  # [D, V]; None when tied to embed
    pos_embed: Array | None = None  # [P, D], learned positions (GPT-2)


def param_shapes(cfg: ModelConfig) -> Params:
    """The params pytree of `cfg` with shape tuples as leaves (None for absent leaves)."""
    L, K, G, D, d, F, V = cfg.n_layers, cfg.n_kv_heads, cfg.groups, cfg.d_model, cfg.head_dim, cfg.d_ff, cfg.vocab_size
    layer_norm = cfg.norm == "layer"

    def norm(*lead):
        return Norm(scale=(*lead, D), bias=(*lead, D) if layer_norm else None)

    attn = Attention(
        wq=(L, K, G, D, d), wk=(L, K, D, d), wv=(L, K, D, d), wo=(L, K, G, d, D),
        bq=(L, K, G, d) if cfg.qkv_bias else None,
        bk=(L, K, d) if cfg.qkv_bias else None,
        bv=(L, K, d) if cfg.qkv_bias else None,
        bo=(L, D) if cfg.o_bias else None,
        q_norm=(L, d) if cfg.qk_norm else None,
        k_norm=(L, d) if cfg.qk_norm else None,
    )
    mlp = MLP(
        w_up=(L, D, F), w_down=(L, F, D),
        w_gate=(L, D, F) if cfg.gated_mlp else None,
        b_up=(L, F) if cfg.mlp_bias else None,
        b_down=(L, D) if cfg.mlp_bias else None,
        b_gate=(L, F) if cfg.mlp_bias and cfg.gated_mlp else None,
    )
    return Params(
        embed=(V, D),
        layers=Layers(attn_norm=norm(L), attn=attn, mlp_norm=norm(L), mlp=mlp,
                      attn_post_norm=norm(L) if cfg.post_norms else None,
                      mlp_post_norm=norm(L) if cfg.post_norms else None),
        final_norm=norm(),
        lm_head=None if cfg.tie_embeddings else (D, V),
        pos_embed=(cfg.max_seq_len, D) if cfg.positions == "learned" else None,
    )


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def map_shapes(fn, shapes: Params) -> Params:
    """Apply fn(path, shape) to every shape leaf; path is a dotted name like 'layers.attn.wq'."""

    def walk(node, prefix):
        if node is None or _is_shape(node):
            return None if node is None else fn(prefix, node)
        kw = {f.name: walk(getattr(node, f.name), f"{prefix}.{f.name}" if prefix else f.name) for f in fields(node)}
        return type(node)(**kw)

    return walk(shapes, "")


def abstract_params(cfg: ModelConfig, dtype=jnp.float32) -> Params:
    return map_shapes(lambda _, s: jax.ShapeDtypeStruct(s, dtype), param_shapes(cfg))


def init_params(cfg: ModelConfig, key: Array, dtype=jnp.float32, std: float = 0.02) -> Params:
    """Random params (tests, benchmarks). Norm scales start at 1, biases small and non-zero."""
    shapes = param_shapes(cfg)
    names = []
    map_shapes(lambda p, s: names.append(p), shapes)
    keys = dict(zip(names, jax.random.split(key, len(names))))

    def make(path, shape):
        if path.endswith((".scale", "_norm")):  # around 1 as an effective norm weight
            offset = 0.0 if cfg.norm_plus_one else 1.0
            return (offset + 0.1 * jax.random.normal(keys[path], shape)).astype(dtype)
        return (std * jax.random.normal(keys[path], shape)).astype(dtype)

    return map_shapes(make, shapes)


def get_leaf(params: Params, path: str):
    node = params
    for part in path.split("."):
        node = getattr(node, part)
    return node


def replace_leaves(params, new: dict[str, object]):
    """params with the leaf at each dotted path of `new` ('layers.attn.wq') replaced by its value."""
    done = set()

    def walk(node, prefix):
        changes = {}
        for f in fields(node):
            path = f"{prefix}.{f.name}" if prefix else f.name
            if path in new:
                changes[f.name] = new[path]
                done.add(path)
            elif any(p.startswith(path + ".") for p in new):
                changes[f.name] = walk(getattr(node, f.name), path)
        return dataclasses.replace(node, **changes)

    out = walk(params, "")
    if done != set(new):
        raise KeyError(f"no such params leaves: {sorted(set(new) - done)}")
    return out


def nodes_by_path(tree, stop=lambda node: False) -> dict[str, object]:
    """{dotted path: node} through a tree of dataclasses (params, compressed kinds within them),
    in field order: the non-dataclass nodes, and the dataclass nodes `stop` accepts (a kind's
    leaf taken whole). None fields are absent. The one walker of dotted params paths."""
    out = {}

    def walk(node, prefix):
        if node is None:
            return
        if stop(node) or not dataclasses.is_dataclass(node):
            out[prefix] = node
            return
        for f in fields(node):
            walk(getattr(node, f.name), f"{prefix}.{f.name}" if prefix else f.name)

    walk(tree, "")
    return out


def leaf_paths(params) -> list[str]:
    """Dotted paths of the array leaves present in a params tree."""
    return list(nodes_by_path(params))


def count_params(tree) -> int:
    """Parameters, not bookkeeping: floating leaves only (a bank's int32 index counts in bytes, not here)."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)))


def param_bytes(tree) -> int:
    """Bytes of every array leaf of any pytree: a model's params, one compressed leaf (a quantized
    weight's codes, scales and zeros), a training state. The one byte counter of jaxshare."""
    return int(sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree)))


def cast_params(params, dtype):
    """Floating leaves cast to dtype (any name `as_dtype` takes); integer leaves (bank indices) kept."""
    dt = as_dtype(dtype)
    return jax.tree_util.tree_map(lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
