"""Logical axes of every parameter leaf, and the rules that map them onto a device mesh.

Each leaf of `Params` names its axes (`param_axes(cfg)` mirrors `param_shapes(cfg)`):
  embed [V, D]           (vocab, embed)          lm_head [D, V]   (embed, vocab)
  attn.wq [L, K, G, D, d] (layers, kv_heads, heads, embed, head_dim)
  attn.wk/wv [L, K, D, d] (layers, kv_heads, embed, head_dim)
  attn.wo [L, K, G, d, D] (layers, kv_heads, heads, head_dim, embed)
  mlp.w_up/w_gate [L, D, F] (layers, embed, mlp)  mlp.w_down [L, F, D] (layers, mlp, embed)
  norms [L, D] / [D]     (layers, norm) / (norm)  pos_embed [P, D] (positions, embed)
A `Bank` replaces the leading axes its index covers: rows get (units, <the rest>), the int32
index gets None on every axis (always replicated: the scan reads it whole on every device).
A `Factored` weight has basis rows (units, <in>, rank), coef (layers, rank, <out>), where a
flattened head axis K*G*d or K*d is named kv_heads: splitting it into n contiguous blocks is
splitting K when n divides K.

A rules table (pairs of logical name -> mesh axis, a tuple of mesh axes, or None) maps names
onto the mesh axes `data`, `fsdp`, `tensor`; `spec` resolves one leaf into a PartitionSpec.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from dataclasses import fields

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxshare.errors import JaxshareError
from jaxshare.core.compressed import is_compressed, rank_of
from jaxshare.core.config import ModelConfig
from jaxshare.core.matrices import TYPES
from jaxshare.core.params import map_shapes, param_shapes

MESH_AXES = ("data", "fsdp", "tensor")

# Weights shard over fsdp along D and over tensor along heads / MLP width / vocab (Megatron
# style); the batch splits over data x fsdp. The scanned layer axis and a bank's unit axis are
# never split: a layer's index may read any unit.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("layers", None),
    ("units", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("positions", None),
    ("norm", None),
    ("kv_heads", "tensor"),
    ("heads", None),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("rank", None),
    # Activations (`constrain` in the decoder): batch over data x fsdp; the residual stream's
    # width whole; attention heads and the MLP's hidden width over tensor.
    ("act_embed", None),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
)
NEVER_SHARDED = ("units",)

_ATTN = {
    "wq": ("layers", "kv_heads", "heads", "embed", "head_dim"),
    "wk": ("layers", "kv_heads", "embed", "head_dim"),
    "wv": ("layers", "kv_heads", "embed", "head_dim"),
    "wo": ("layers", "kv_heads", "heads", "head_dim", "embed"),
    "bq": ("layers", "kv_heads", "heads", "head_dim"),
    "bk": ("layers", "kv_heads", "head_dim"),
    "bv": ("layers", "kv_heads", "head_dim"),
    "bo": ("layers", "embed"),
}
_MLP = {
    "w_up": ("layers", "embed", "mlp"), "w_gate": ("layers", "embed", "mlp"), "w_down": ("layers", "mlp", "embed"),
    "b_up": ("layers", "mlp"), "b_gate": ("layers", "mlp"), "b_down": ("layers", "embed"),
}
LEAF_AXES = {
    "embed": ("vocab", "embed"),
    "lm_head": ("embed", "vocab"),
    "pos_embed": ("positions", "embed"),
    "final_norm.scale": ("norm",),
    "final_norm.bias": ("norm",),
    **{f"layers.{n}.{f}": ("layers", "norm") for n in ("attn_norm", "mlp_norm") for f in ("scale", "bias")},
    **{f"layers.{n}.{f}": ("layers", "norm") for n in ("attn_post_norm", "mlp_post_norm") for f in ("scale", "bias")},
    "layers.attn.q_norm": ("layers", "head_dim"), "layers.attn.k_norm": ("layers", "head_dim"),
    **{f"layers.attn.{k}": v for k, v in _ATTN.items()},
    **{f"layers.mlp.{k}": v for k, v in _MLP.items()},
}


class AxesError(JaxshareError, ValueError):
    """A params leaf or a rules table that the logical-axis scheme cannot place."""


def leaf_axes(path: str) -> tuple[str, ...]:
    """Logical axes of the dense leaf at a dotted params path, e.g. 'layers.attn.wq'."""
    if path not in LEAF_AXES:
        raise AxesError(f"no logical axes for params leaf {path!r}")
    return LEAF_AXES[path]


def param_axes(cfg: ModelConfig):
    """The Params tree of `cfg` with logical-axis tuples as leaves (mirrors param_shapes)."""
    def axes(path, shape):
        a = leaf_axes(path)
        if len(a) != len(shape):
            raise AxesError(f"{path}: {len(a)} logical axes for a rank-{len(shape)} leaf")
        return a

    return map_shapes(axes, param_shapes(cfg))


def layout_axes(layout: str, dense_axes: tuple) -> tuple:
    """(d_in, d_out) logical names of a weight's 2-D view [d_in, d_out] (y = x @ W) for a
    weight type (core.matrices.TYPES), a head-sharing unit (q_unit [G, D, d] -> [D, G*d], o_unit
    [G, d, D] -> [G*d, D]) or an already 2-D leaf ("2d": its own last two axes)."""
    if layout in TYPES:
        return TYPES[layout][2]
    if layout == "q_unit":
        return ("embed", "heads")
    if layout == "o_unit":
        return ("heads", "embed")
    if layout == "2d":
        return tuple(dense_axes[-2:])
    raise AxesError(f"unknown weight layout {layout!r}")


def tree_axes(params):
    """Logical axes for any params tree (dense or holding compressed kinds, concrete or abstract,
    whole or one side of `bank.partition`): the same structure with a tuple of names (or None
    for a never-sharded axis) in place of each array. A compressed leaf answers for itself."""
    def walk(node, path):
        if node is None:
            return None
        if is_compressed(node):
            try:
                return node.logical_axes(leaf_axes(path))
            except AxesError as e:
                raise AxesError(f"{path}: {e}") from None
        if dataclasses.is_dataclass(node):
            out = {f.name: walk(getattr(node, f.name), f"{path}.{f.name}" if path else f.name)
                   for f in fields(node) if not f.metadata.get("static")}
            return dataclasses.replace(node, **out)
        axes = leaf_axes(path)
        if len(axes) != rank_of(node):
            raise AxesError(f"{path}: {len(axes)} logical axes for a rank-{rank_of(node)} leaf")
        return axes

    return walk(params, "")


def _rules_dict(rules) -> dict:
    table = {}
    for pair in rules:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str)):
            raise AxesError(f"a sharding rule is a (logical name, mesh axes) pair, got {pair!r}")
        name, target = pair
        target = (target,) if isinstance(target, str) else tuple(target or ())
        bad = [t for t in target if t not in MESH_AXES]
        if bad:
            raise AxesError(f"rule {name!r} -> {pair[1]!r}: unknown mesh axis {bad[0]!r} (known: {', '.join(MESH_AXES)})")
        if name in NEVER_SHARDED and target:
            raise AxesError(f"rule {name!r} -> {pair[1]!r}: a bank's unit axis is never sharded")
        table.setdefault(name, target)  # first rule wins (as in flax.linen): prepend to override a default
    return table


def leaf_rules(axes, rules=DEFAULT_RULES, shape=None, mesh=None) -> tuple:
    """The rules one leaf uses, resolved: (name, mesh axes or None) for each named axis.

    A mesh axis goes to the first dimension that asks for it (a PartitionSpec may name it once);
    with `shape` and `mesh`, a dimension whose size the mesh axes do not divide stays whole.
    """
    table = _rules_dict(rules)
    used, out = set(), []
    for i, name in enumerate(axes):
        if name is None:
            continue
        if name not in table:
            raise AxesError(f"no sharding rule for logical axis {name!r}")
        target = tuple(t for t in table[name] if t not in used)
        if mesh is not None:
            target = tuple(t for t in target if t in mesh.shape)
            if shape is not None and shape[i] % int(np.prod([mesh.shape[t] for t in target])):
                target = ()
        used.update(target)
        out.append((name, None if not target else target[0] if len(target) == 1 else target))
    return tuple(out)


def spec(axes, rules=DEFAULT_RULES, shape=None, mesh=None):
    """PartitionSpec of one leaf with these logical axes (see leaf_rules for shape and mesh)."""
    resolved = dict(leaf_rules(axes, rules, shape, mesh))
    return PartitionSpec(*(None if name is None else resolved[name] for name in axes))


def tree_specs(params, rules=DEFAULT_RULES, mesh=None):
    """PartitionSpec per array leaf of a params tree (same structure; None leaves stay None)."""
    return jax.tree_util.tree_map(lambda x, a: spec(a, rules, tuple(x.shape), mesh), params, tree_axes(params))


def tree_shardings(params, mesh, rules=DEFAULT_RULES):
    """NamedSharding per array leaf, for device_put or jit out_shardings."""
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), tree_specs(params, rules, mesh),
                                  is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


# -- activation sharding ---------------------------------------------------------------------------
# The decoder calls `constrain(x, *names)` at a few points; it is the identity unless a trainer
# traces it under `activation_sharding(mesh, rules)`, so inference code is unaffected.
_ACTIVE = contextvars.ContextVar("jaxshare_activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh, rules=DEFAULT_RULES):
    """While tracing inside this context, `constrain` pins activations to `rules` on `mesh`."""
    token = _ACTIVE.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x, *names):
    """with_sharding_constraint of an activation by its logical axes (identity outside a context)."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec(names, rules, tuple(x.shape), mesh)))
