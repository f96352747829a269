"""Per-layer MLP widths (`jaxshare prune --per-layer`): the `Ragged` kind and its codec `ragged`.

The layer scan needs every layer's arrays to have one shape, so a model whose layers keep different
numbers of MLP channels cannot be an ordinary stacked dense model. It is a bank read through an
index, the same parameter gather head sharing uses (core/bank.py): each of gate, up, down (and
GPT-2's b_up) keeps the kept channels of every layer as rows of one bank [N + 1, *unit] (N: the
channels kept over all layers; the last row is zeros), and an int32 index [L, F] in which layer l
reads its own F_l rows, followed by F - F_l reads of the zero row (F: the widest layer, the model
config's d_ff). A zero channel adds exactly nothing: its gate and up outputs are 0, act(0) * 0 = 0
(GPT-2: gelu(0 + 0) = 0), and its down row is 0, so the model computes what the sliced layers
would, and its gradients are zero too, so training keeps the padding zero.

What this saves is parameters and bytes (the bank holds the kept channels only); the compute of
every layer is that of the widest one. An HF export writes the dense form, each layer padded with
zero channels to F (transformers and llama.cpp have one intermediate_size per model), which loads
everywhere with the same logits at the widest layer's size; `ragged.json` beside it records the
widths, so jaxshare restores the bank from it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxshare.core.bank import Bank
from jaxshare.core.compressed import FunctionCodec, axes_of, check_reproduces, frozen_of
from jaxshare.core.params import get_leaf, nodes_by_path, replace_leaves
from jaxshare.errors import CheckpointError
from jaxshare.core import host

Array = jax.Array
MANIFEST_VERSION = 1
# the MLP leaves that carry the channel axis, and where it is in one layer's array
CHANNEL_AXIS = {"layers.mlp.w_gate": 1, "layers.mlp.w_up": 1, "layers.mlp.w_down": 0,
                "layers.mlp.b_gate": 0, "layers.mlp.b_up": 0}


@jax.tree_util.register_dataclass
@dataclass
class Ragged(Bank):
    """An MLP leaf whose layers keep different numbers of channels: rows [N + 1, *unit] (last row
    zero), index int32 [L, F]; `axis` is the channel axis of one layer's dense array."""

    axis: int = field(default=0, metadata={"static": True})
    quantizable = False  # quant.model refuses it: its rows are channels, not matrices to pack
    quantizable_why = "per-layer MLP widths from prune --per-layer; prune uniformly to quantize"

    def dense(self) -> Array:
        return jnp.moveaxis(self.rows[self.index], 1, 1 + self.axis)  # [L, F, *unit] -> the leaf's layout

    def logical_axes(self, dense_axes: tuple) -> "Ragged":
        unit = tuple(dense_axes[1:1 + self.axis]) + tuple(dense_axes[2 + self.axis:])
        return dataclasses.replace(self, rows=axes_of(self.rows, ("units",) + unit),
                                   index=None if self.index is None else (None, None))

    def frozen(self) -> "Ragged":
        return dataclasses.replace(self, rows=frozen_of(self.rows), index=frozen_of(self.index, True))

    def scan_closed(self):
        return (self.rows, self.axis)

    @staticmethod
    def scan_gather(closed, xs_l):
        rows, axis = closed
        return jnp.moveaxis(rows[xs_l], 0, axis)

    @property
    def widths(self) -> np.ndarray:
        """[L] channels each layer keeps (reads of a row other than the zero one)."""
        return (np.asarray(self.index) != self.rows.shape[0] - 1).sum(axis=1)


def ragged_index(widths) -> np.ndarray:
    """int32 [L, max(widths)]: layer l reads rows offset_l .. offset_l + w_l - 1, then the zero row."""
    widths = np.asarray(widths, np.int64)
    F, N = int(widths.max()), int(widths.sum())
    index = np.full((len(widths), F), N, np.int32)
    start = np.concatenate([[0], np.cumsum(widths)[:-1]])
    for l, (s, w) in enumerate(zip(start, widths)):
        index[l, :w] = np.arange(s, s + w)
    return index


def to_ragged(w, keep: list, axis: int, dtype=None) -> Ragged:
    """A Ragged leaf of the dense per-layer leaf w [L, ...] keeping the channels keep[l] (on the
    layer's `axis`) of each layer, in their original order; built on the host a layer at a time."""
    w0 = np.asarray(w[0])
    unit = w0.shape[:axis] + w0.shape[axis + 1:]
    widths = [len(k) for k in keep]
    rows = host.zeros((sum(widths) + 1,) + unit, dtype or w0.dtype)
    at = 0
    for l, k in enumerate(keep):
        rows[at:at + len(k)] = np.moveaxis(np.take(np.asarray(w[l]), np.asarray(k), axis=axis), axis, 0)
        at += len(k)
    return Ragged(host.adopt(rows), jnp.asarray(ragged_index(widths)), axis)


def ragged_paths(params) -> dict[str, Ragged]:
    return {p: x for p, x in nodes_by_path(params, lambda n: isinstance(n, Ragged)).items() if isinstance(x, Ragged)}


def manifest(params, cfg) -> dict:
    found = ragged_paths(params)
    widths = {tuple(x.widths.tolist()) for x in found.values()}
    if len(widths) != 1:
        raise CheckpointError("per-layer pruned MLP leaves disagree on the layers' widths")
    return {"version": MANIFEST_VERSION, "widths": list(widths.pop()),
            "leaves": {p: {"axis": x.axis} for p, x in found.items()}}


def _check(cfg, man: dict) -> tuple[np.ndarray, dict]:
    if man.get("version") != MANIFEST_VERSION or not isinstance(man.get("leaves"), dict):
        raise CheckpointError(f"not a jaxshare ragged (per-layer width) manifest v{MANIFEST_VERSION}")
    widths = np.asarray(man.get("widths", []), np.int64)
    if widths.shape != (cfg.n_layers,) or widths.min() < 1 or widths.max() != cfg.d_ff:
        raise CheckpointError(f"ragged manifest: widths {man.get('widths')!r} do not fit {cfg.n_layers} layers of "
                              f"at most d_ff {cfg.d_ff}")
    bad = sorted(set(man["leaves"]) - set(CHANNEL_AXIS))
    if bad:
        raise CheckpointError(f"ragged manifest names {bad[0]!r}, which has no MLP channel axis")
    return widths, man["leaves"]


def abstract(cfg, man: dict, base):
    widths, leaves = _check(cfg, man)
    index = jax.ShapeDtypeStruct((cfg.n_layers, cfg.d_ff), jnp.int32)
    new = {}
    for p in leaves:
        leaf, axis = get_leaf(base, p), CHANNEL_AXIS[p]
        unit = leaf.shape[1:1 + axis] + leaf.shape[2 + axis:]
        new[p] = Ragged(jax.ShapeDtypeStruct((int(widths.sum()) + 1,) + unit, leaf.dtype), index, axis)
    return replace_leaves(base, new)


def restore_hf(cfg, params, man: dict, source: Path):
    """The dense export (each layer's channels first, zero padding after) -> Ragged leaves; the
    padding must be zero, or the directory was edited after export."""
    widths, leaves = _check(cfg, man)
    new = {}
    for p in leaves:
        w, axis = get_leaf(params, p), CHANNEL_AXIS[p]
        r = to_ragged(w, [np.arange(n) for n in widths], axis, np.asarray(w[0]).dtype)
        check_reproduces(r.dense(), w, "the kept channels and zero padding", f"{source} ({p})")
        new[p] = r
    return replace_leaves(params, new)


CODEC = FunctionCodec("ragged", Ragged, manifest, abstract, lambda params, man: {}, restore_hf)
