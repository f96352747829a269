"""Compressed weight kinds: one typed protocol for every leaf that stands in for a dense weight.

A params tree may hold, in place of a dense per-layer leaf, a compressed leaf: a `Bank` (head
sharing, docs/methods.md §1), a `Factored` basis (Basis Sharing, §2), `Quantized` codes (§5), or any
kind a plugin brings. Through `Compressed` each kind says how it computes inside the layer scan
(`apply`), what dense leaf it stands for (`dense`), its logical axes (`logical_axes`) and which
of its fields never train (`frozen`). How a kind is described, restored and exported is its
`Codec`, which lives beside the kind in its method package; the one list of codecs is
`jaxshare.io.kinds`. This module names no kind.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from jaxshare.errors import CheckpointError

Array = jax.Array
DenseFn = Callable[[Array, Array], Array]


@runtime_checkable
class SelfApplying(Protocol):
    """A weight that computes its own product with an input (model.linear defers to it)."""

    def apply(self, x: Array, dense_fn: DenseFn) -> Array:
        """The layer's output for input x; `dense_fn(x, w)` is the product a dense w would use."""
        ...


@runtime_checkable
class Compressed(SelfApplying, Protocol):
    """A pytree leaf standing in for a dense per-layer weight [L, ...]."""

    def dense(self) -> Array:
        """The dense per-layer leaf [L, ...] this weight stands for."""
        ...

    def logical_axes(self, dense_axes: tuple):
        """The same structure with a tuple of logical axis names (core.axes) in place of each
        array, given the axes of the dense leaf it stands for; None stays None (a field left out
        by `bank.partition`). Sharding, the NNX view and the decay mask all read this."""
        ...

    def frozen(self):
        """The same structure with True on the fields training must never update (integer
        indices and codes) and False elsewhere: `bank.trainable_mask` reads this."""
        ...


class Codec(Protocol):
    """How one kind is described, restored and exported (jaxshare.io.kinds lists them)."""
    key: ClassVar[str]   # manifest name: meta["extra"][key] natively, f"{key}.json" in an HF export
    kind: ClassVar[type]  # the leaf type it handles (exactly: a subclass has its own codec)

    def manifest(self, params, cfg) -> dict:
        """JSON-able structure of this kind's leaves in `params` (enough for `abstract`)."""
        ...

    def abstract(self, cfg, manifest: dict, base):
        """`base` (an abstract params tree) with this kind's leaves as abstract compressed leaves."""
        ...

    def export_files(self, params, manifest: dict) -> dict[str, bytes]:
        """Side files an HF export needs beyond `<key>.json` and the dense weights."""
        ...

    def restore_hf(self, cfg, params, manifest: dict, source: Path):
        """Dense params of an HF export in `source` -> params holding this kind's leaves."""
        ...


@dataclass(frozen=True)
class FunctionCodec:
    """A `Codec` whose members are a kind module's functions. The kinds differ in what their
    manifests, side files and restores do, not in how a codec hands those calls on, so that
    hand-off is written once here and each kind names its functions (basis.io, quant.tree, ...)."""
    key: str
    kind: type
    manifest: Callable      # (params, cfg) -> dict
    abstract: Callable      # (cfg, manifest, base) -> abstract params
    export_files: Callable  # (params, manifest) -> {file name: bytes}
    restore_hf: Callable    # (cfg, params, manifest, source) -> params


def is_compressed(x) -> bool:
    return isinstance(x, Compressed)


def dense_of(x):
    """The dense array a field stands for, whether it is compressed (a quantized bank's rows) or not."""
    return x.dense() if is_compressed(x) else x


def check_reproduces(got, dense, what: str, where) -> None:
    """Refuse side files (factors, codes, rows) whose product `got` does not reproduce the dense
    weights `dense` of the same export: the directory was edited after it was written.

    The rule, for every kind: max|got - dense| <= (1e-2 if dense is bf16 else 1e-5) * max|dense|,
    computed in float64. bf16 because the dense file is then rounded to 8 bits of mantissa; 1e-5
    is the strictest of the three checks this replaced (basis allowed 1e-4) and float32 round-trips
    of every kind pass it."""
    want = np.asarray(jnp.asarray(dense).astype(jnp.float32), np.float64)
    if want.size == 0:
        return
    err = float(np.max(np.abs(np.asarray(got, np.float64) - want)))
    tol = (1e-2 if jnp.asarray(dense).dtype == jnp.bfloat16 else 1e-5) * (float(np.max(np.abs(want))) or 1.0)
    if err > tol:
        raise CheckpointError(f"{where}: {what} do not reproduce the dense weights (max |got - dense| = {err:.3g} "
                              f"> {tol:.3g}); the directory was edited after export")


def axes_of(x, dense_axes: tuple):
    """Logical axes of a field that may itself be compressed (a bank's quantized rows)."""
    if x is None:
        return None
    return x.logical_axes(dense_axes) if is_compressed(x) else tuple(dense_axes)


def frozen_of(x, frozen: bool = False):
    """Frozen flags of a field that may itself be compressed; `frozen` for a plain array."""
    if x is None:
        return None
    return x.frozen() if is_compressed(x) else frozen


def rank_of(x) -> int:
    return len(x.shape)  # arrays, ShapeDtypeStructs and compressed leaves (their dense shape)


def compressed_leaves(tree) -> list:
    """The outermost compressed leaves of a tree (a Factored's inner Bank is part of it)."""
    return [x for x in jax.tree_util.tree_leaves(tree, is_leaf=is_compressed) if is_compressed(x)]


def materialize(tree):
    """The same tree with every compressed leaf replaced by its dense per-layer leaf."""
    return jax.tree_util.tree_map(dense_of, tree, is_leaf=is_compressed)
