"""Compressed weight kinds: one typed protocol for every leaf that stands in for a dense weight.

A params tree may hold, in place of a dense per-layer leaf, a compressed leaf: a `Bank` (head
sharing, METHODS.md §1), a `Factored` basis (Basis Sharing, §2), `Quantized` codes (§5). Each
kind says, through `Compressed`, how it computes inside the layer scan (`apply`), what dense
leaf it stands for (`dense`), and, for a whole params tree, what describes its structure
(`manifest`: bank sizes, ranks), how to rebuild the abstract tree orbax restores (`abstract`),
which side files an HF export needs (`export_files`) and how to restore it from one
(`restore_hf`). Saving, exporting and loading go through `KINDS` only, so any params tree
round-trips with its compression, whoever built it.

A kind's manifest is stored under its `key`: meta["extra"][key] in a native checkpoint and
`<key>.json` in an HF export. Method details a caller knows (ratio, match, calibration) ride
along in the same manifest, but the structure is always read from the params themselves.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, ClassVar, Protocol, runtime_checkable

import jax

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
    key: ClassVar[str]  # manifest name: meta["extra"][key] natively, f"{key}.json" in an HF export

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

    @classmethod
    def manifest(cls, params, cfg) -> dict:
        """JSON-able structure of this kind's leaves in `params` (enough for `abstract`)."""
        ...

    @classmethod
    def abstract(cls, cfg, manifest: dict, base):
        """`base` (an abstract params tree) with this kind's leaves as abstract compressed leaves."""
        ...

    @classmethod
    def export_files(cls, params, manifest: dict) -> dict[str, bytes]:
        """Side files an HF export needs beyond `<key>.json` and the dense weights."""
        ...

    @classmethod
    def restore_hf(cls, cfg, params, manifest: dict, source: Path):
        """Dense params of an HF export in `source` -> params holding this kind's leaves."""
        ...


def kinds() -> tuple[type, ...]:
    """Every compressed-weight kind jaxshare knows, in restore order (a new kind adds itself here)."""
    # Imported here, not at module level: basis/ builds on core/, and core must import alone.
    from jaxshare.basis.factor import Factored
    from jaxshare.core.bank import Bank
    from jaxshare.core.corrected import CorrectedBank
    from jaxshare.quant.leaf import Quantized

    # CorrectedBank first: it restores q/k banks whole, which the sharing kind then leaves alone.
    # Quantized last: its leaves may sit inside the others.
    return (CorrectedBank, Bank, Factored, Quantized)


def is_compressed(x) -> bool:
    return isinstance(x, Compressed)


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


def kinds_in(tree) -> list[type]:
    """Every kind in the tree, also one nested in another (a bank whose rows are quantized)."""
    found, todo = set(), compressed_leaves(tree)
    while todo:
        x = todo.pop()
        found.add(type(x))
        todo += [y for y in jax.tree_util.tree_leaves(x, is_leaf=lambda y: y is not x and is_compressed(y))
                 if y is not x and is_compressed(y)]
    return [k for k in kinds() if k in found]


def materialize(tree):
    """The same tree with every compressed leaf replaced by its dense per-layer leaf."""
    return jax.tree_util.tree_map(lambda x: x.dense() if is_compressed(x) else x, tree, is_leaf=is_compressed)


def manifests(params, cfg, info: dict | None = None) -> dict[str, dict]:
    """{kind key: manifest} of every kind in `params`; info[key] (method details) is merged under
    the structure read from the params."""
    info = info or {}
    return {k.key: {**(info.get(k.key) or {}), **k.manifest(params, cfg)} for k in kinds_in(params)}


def abstract_tree(cfg, extra: dict, dtype):
    """The abstract params tree a checkpoint with metadata extra holds (dense where no kind is named)."""
    from jaxshare.core.params import abstract_params

    tree = abstract_params(cfg, dtype)
    for k in kinds():
        if k.key in extra:
            tree = k.abstract(cfg, extra[k.key], tree)
    return tree


def export_files(params, mans: dict[str, dict]) -> dict[str, bytes]:
    """{file name: bytes} an HF export writes beside the weights: each manifest and its side files."""
    by_key = {k.key: k for k in kinds()}
    files = {}
    for key, man in mans.items():
        files[f"{key}.json"] = json.dumps(man, indent=2).encode()
        files.update(by_key[key].export_files(params, man))
    return files


def restore_hf(cfg, params, source: Path) -> tuple[object, dict]:
    """(params, extra): the compressed form of an HF export, from the manifests found in source."""
    from jaxshare.io.hf import CheckpointError

    extra = {}
    for k in kinds():
        path = Path(source) / f"{k.key}.json"
        if path.is_file():
            try:
                man = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{path}: invalid JSON ({e})") from None
            params = k.restore_hf(cfg, params, man, Path(source))
            extra[k.key] = man
    return params, extra
