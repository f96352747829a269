"""A Flax NNX view of a jaxshare model: `nnx.Param` weights over the same pure decoder.

`Decoder(cfg, params)` holds every float leaf of the params pytree as an `nnx.Param` and every
bank index as a `BankIndex` (an `nnx.Variable` that is not a Param, so `nnx.Optimizer(...,
wrt=nnx.Param)` and `nnx.grad` leave it alone). The module tree mirrors the params tree
(`model.layers.attn.wq.rows`), so state paths read like params paths. `__call__` rebuilds the
Params pytree from the variables and runs `jaxshare.core.model.forward`: there is no second
model implementation, and `to_params()` gives back what save_native / export_hf take.

Every variable carries its logical axes (`jaxshare.core.axes`) as `out_sharding` and the rules
that resolve them as `sharding_rules`, so `nnx.get_partition_spec(nnx.state(model))` gives mesh
PartitionSpecs; with `mesh=` the weights are placed on the mesh as they are wrapped.

Importing this module imports flax (the `nnx` extra); `import jaxshare` does not.
"""
from __future__ import annotations

import dataclasses
import operator
from dataclasses import fields
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from jaxshare.core.axes import DEFAULT_RULES, leaf_rules, tree_axes
from jaxshare.core.bank import trainable_mask
from jaxshare.core.config import ModelConfig
from jaxshare.core.model import forward, token_nll
from jaxshare.core.params import Params
from jaxshare.optional import require

# flax is optional (the `nnx` extra): imported here, where the view is defined, so that a missing
# flax is one line naming the extra; nothing on the way to `import jaxshare` imports this module
if TYPE_CHECKING:
    from flax import nnx
else:
    nnx = require("flax.nnx", "nnx", "the Flax NNX view (jaxshare.nnx)", package="flax")


class BankIndex(nnx.Variable):
    """A field a compressed kind declares frozen (`Compressed.frozen`): a bank's int32 index,
    quantization codes. Model state that is never trained."""


def _variable(value, axes, is_index: bool, rules, mesh):
    kind = BankIndex if is_index else nnx.Param
    meta = dict(out_sharding=axes, sharding_rules=leaf_rules(axes, rules, value.shape, mesh))
    if mesh is None:  # nothing to place yet: flax would otherwise demand a mesh for the annotation
        return kind(value, eager_sharding=False, **meta)
    return kind(value, mesh=mesh, **meta)


class ParamsNode(nnx.Module):
    """One dataclass node of a params tree (Params, Layers, Attention, Norm, MLP, Bank, Factored):
    its array fields become variables, its dataclass fields child ParamsNodes, its static fields stay
    static. `rebuild()` gives the dataclass back with the variables' current values."""

    def __init__(self, node, axes, rules=DEFAULT_RULES, mesh=None, frozen=None):
        self._kind = type(node)
        self._static = tuple((f.name, getattr(node, f.name)) for f in fields(node) if f.metadata.get("static"))
        self._fields = tuple(f.name for f in fields(node) if not f.metadata.get("static"))
        for name in self._fields:
            value, ax, fz = getattr(node, name), getattr(axes, name), getattr(frozen, name, False)
            if value is None:
                child = None
            elif dataclasses.is_dataclass(value):
                child = ParamsNode(value, ax, rules, mesh, fz)
            else:
                child = _variable(value, ax, fz is True, rules, mesh)
            setattr(self, name, child)

    def rebuild(self):
        def value(child):
            if child is None:
                return None
            return child.rebuild() if isinstance(child, ParamsNode) else child.get_value()

        return self._kind(**{n: value(getattr(self, n)) for n in self._fields}, **dict(self._static))


class Decoder(ParamsNode):
    """An nnx.Module over a jaxshare model: `Decoder(cfg, params)(tokens_BT)` gives logits
    [B, T, V] equal to `forward(params, cfg, tokens_BT)`. `dtype` is the compute dtype; `rules`
    map logical axes to mesh axes (jaxshare.core.axes); `mesh` (Auto axes) places the weights."""

    def __init__(self, cfg: ModelConfig, params: Params, *, dtype=jnp.float32, rules=DEFAULT_RULES, mesh=None):
        if not isinstance(params, Params):
            raise TypeError(f"Decoder takes a jaxshare Params tree, got {type(params).__name__}")
        if mesh is not None and any(t != jax.sharding.AxisType.Auto for t in mesh.axis_types):
            # the decoder leaves activation layouts to the compiler; explicit axes would need
            # an out_sharding on every gather (jax.make_mesh makes Explicit axes by default)
            raise ValueError("Decoder needs a mesh with Auto axes: jax.make_mesh(shape, names, "
                             "axis_types=(jax.sharding.AxisType.Auto,) * len(names))")
        frozen = jax.tree_util.tree_map(operator.not_, trainable_mask(params))
        super().__init__(params, tree_axes(params), rules, mesh, frozen)
        self.cfg = cfg
        self.dtype = dtype

    @classmethod
    def from_loaded(cls, loaded, **kw) -> "Decoder":
        """From what `load_model` returns (anything with .cfg and .params)."""
        return cls(loaded.cfg, loaded.params, **kw)

    def to_params(self) -> Params:
        """The params pytree (banks and factored weights included) with the current weights."""
        return self.rebuild()

    def __call__(self, tokens_BT: jax.Array) -> jax.Array:
        return forward(self.to_params(), self.cfg, tokens_BT, self.dtype)


def to_params(model: Decoder) -> tuple[ModelConfig, Params]:
    """(cfg, params) of a Decoder, for save_native, export_hf and every functional API."""
    return model.cfg, model.to_params()


def next_token_loss(model: Decoder, tokens_BT: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy of a batch of windows (T tokens give T-1 predictions):
    the loss to hand `nnx.value_and_grad` for fine-tuning."""
    return jnp.mean(token_nll(model(tokens_BT[:, :-1]), tokens_BT[:, 1:]))
