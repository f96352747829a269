"""The one list of compressed-weight kinds: their codecs, at the floor that reads and writes
checkpoints. Core defines the `Compressed` and `Codec` protocols and names no kind; each method
package keeps its leaf type and, beside it, the codec that describes, restores and exports it.

A third-party kind plugs in without editing jaxshare: a distribution declares an entry point in
the group `jaxshare.codecs` whose object is a Codec class (or instance); it is appended after
the built-in codecs, in entry-point name order.

A kind's manifest is stored under its codec's `key`: meta["extra"][key] in a native checkpoint
and `<key>.json` in an HF export. Method details a caller knows (ratio, match, calibration) ride
along in the same manifest, but the structure is always read from the params themselves.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from importlib.metadata import entry_points
from pathlib import Path

import jax

from jaxshare.basis import io as basis_io
from jaxshare.core.compressed import Codec, compressed_leaves, is_compressed
from jaxshare.core.params import abstract_params
from jaxshare.errors import CheckpointError
from jaxshare.core.params import get_leaf, nodes_by_path, replace_leaves
from jaxshare.headshare.codec import CORRECTIONS, SHARING
from jaxshare.lora.codec import CODEC as LORA
from jaxshare.pruning.ragged import CODEC as RAGGED
from jaxshare.quant import tree as quant_tree

ENTRY_POINT_GROUP = "jaxshare.codecs"
# Restore order: whole corrected banks first (the sharing codec then leaves them alone), quantized
# codes last (they may sit inside the others). A wrapping kind (`wraps = True`: LoRA adapters, whose
# `base` field holds any other kind) is handled around the others: see `peel`.
BUILTIN: tuple[Codec, ...] = (CORRECTIONS, SHARING, RAGGED, basis_io.CODEC, quant_tree.CODEC, LORA)


@functools.lru_cache(maxsize=None)
def _plugins() -> tuple[Codec, ...]:
    found = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        obj = ep.load()
        found.append(obj() if isinstance(obj, type) else obj)
    return tuple(found)


def codecs() -> tuple[Codec, ...]:
    """Every codec, built-in first, then the entry points' (cached: call `refresh()` after
    installing a plugin in a running process)."""
    return BUILTIN + _plugins()


def refresh() -> None:
    _plugins.cache_clear()


def keys() -> set[str]:
    return {c.key for c in codecs()}


def codecs_in(tree) -> list[Codec]:
    """The codecs of every kind in the tree, also one nested in another (a bank whose rows are
    quantized), in restore order."""
    found, todo = set(), compressed_leaves(tree)
    while todo:
        x = todo.pop()
        found.add(type(x))
        todo += [y for y in jax.tree_util.tree_leaves(x, is_leaf=lambda y: y is not x and is_compressed(y))
                 if y is not x and is_compressed(y)]
    return [c for c in codecs() if c.kind in found]


def _wraps(c) -> bool:
    return bool(getattr(c, "wraps", False))


def peel(params):
    """(base params, rewrap): every wrapping leaf (an adapter) replaced by its `base`, and the
    function that puts the same wrappers back around a tree of the same paths. The other kinds
    describe, rebuild and restore the base tree; they never see a wrapper."""
    kinds = tuple(c.kind for c in codecs() if _wraps(c))
    found = {p: x for p, x in nodes_by_path(params, lambda n: isinstance(n, kinds)).items()
             if isinstance(x, kinds)} if kinds else {}
    if not found:
        return params, lambda tree: tree
    base = replace_leaves(params, {p: x.base for p, x in found.items()})

    def rewrap(tree):
        return replace_leaves(tree, {p: dataclasses.replace(x, base=get_leaf(tree, p)) for p, x in found.items()})

    return base, rewrap


def manifests(params, cfg, info: dict | None = None) -> dict[str, dict]:
    """{key: manifest} of every kind in `params`; info[key] (method details) is merged under the
    structure read from the params (the base kinds' from the params with adapters peeled off)."""
    info, base = info or {}, peel(params)[0]
    return {c.key: {**(info.get(c.key) or {}), **c.manifest(params if _wraps(c) else base, cfg)}
            for c in codecs_in(params)}


def abstract_tree(cfg, extra: dict, dtype):
    """The abstract params tree a checkpoint with metadata extra holds (dense where no kind is named)."""
    tree = abstract_params(cfg, dtype)
    for c in sorted(codecs(), key=_wraps):  # base kinds first, then the wrappers around them
        if c.key in extra:
            tree = c.abstract(cfg, extra[c.key], tree)
    return tree


def export_files(params, mans: dict[str, dict]) -> dict[str, bytes]:
    """{file name: bytes} an HF export writes beside the weights: each manifest and its side files."""
    by_key, base = {c.key: c for c in codecs()}, peel(params)[0]
    files = {}
    for key, man in mans.items():
        files[f"{key}.json"] = json.dumps(man, indent=2).encode()
        files.update(by_key[key].export_files(params if _wraps(by_key[key]) else base, man))
    return files


def restore_hf(cfg, params, source: Path) -> tuple[object, dict]:
    """(params, extra): the compressed form of an HF export, from the manifests found in source."""
    extra = {}
    ordered = [c for c in codecs() if _wraps(c)] + [c for c in codecs() if not _wraps(c)]
    rewrap = None
    for c in ordered:  # wrappers first: they turn merged weights back into the base's own
        if rewrap is None and not _wraps(c):
            params, rewrap = peel(params)
        path = Path(source) / f"{c.key}.json"
        if path.is_file():
            try:
                man = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{path}: invalid JSON ({e})") from None
            params = c.restore_hf(cfg, params, man, Path(source))
            extra[c.key] = man
    return (params if rewrap is None else rewrap(params)), extra
