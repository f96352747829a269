"""Native jaxshare checkpoints: the params as safetensors, a metadata JSON, the tokenizer files.

Layout of a checkpoint directory:
  jaxshare.json   {"format": "jaxshare", "version": 2, "config": {...}, "dtype": ..., "extra": {...}}
                  extra holds, under each compressed kind's key ("sharing", "basis"), its manifest
  params.safetensors  every array leaf of the params pytree under its dotted path
                  ("layers.attn.wq", "layers.attn.wq.rows" for a bank), written and read one leaf
                  (or one layer) at a time: no second copy of the model on either side
  tokenizer*      whatever the tokenizer's save_pretrained writes

Version 1 checkpoints (an orbax tree in params/) still load. Orbax was replaced because its save
held a host copy of every leaf (2.0x the params in peak RSS, measured) and its restore 1.76x.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxshare.core.config import ModelConfig
from jaxshare.core.dtypes import as_dtype
from jaxshare.core.params import Params, cast_params
from jaxshare.errors import CheckpointError
from jaxshare.io.kinds import abstract_tree, keys, manifests
from jaxshare.io.tensorfile import CHUNK_BYTES, TensorReader, TensorWriter, check_finite
from jaxshare.storage.atomic import atomic_output, output_path
from jaxshare.core import host

META = "jaxshare.json"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
PARAMS_FILE = "params.safetensors"


def is_native(path) -> bool:
    return (Path(path) / META).is_file()


def leaf_items(tree) -> list[tuple[str, object]]:
    """(dotted path, leaf) of every array leaf of a params pytree (compressed kinds included)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(".".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))) for k in path), leaf)
            for path, leaf in flat]


def write_leaves(path, items: list[tuple[str, object]]) -> None:
    """params.safetensors from (name, array) leaves, one layer (leading row) at a time so that
    neither a jax array nor its numpy copy is ever duplicated whole."""
    with TensorWriter(path, [(n, tuple(x.shape), x.dtype) for n, x in items], metadata={"format": "jaxshare"}) as w:
        for name, x in items:
            if x.ndim == 0:
                w.write(name, np.asarray(x))
                continue
            row_bytes = max(1, x.size // x.shape[0] * x.dtype.itemsize)
            step = max(1, CHUNK_BYTES // row_bytes)
            for i in range(0, x.shape[0], step):
                w.write(name, np.asarray(x[i:i + step]), row=i)


def native_meta(cfg: ModelConfig, params: Params, extra: dict | None = None, version: int = FORMAT_VERSION) -> dict:
    """The jaxshare.json of a checkpoint of `params`. Writers that run orbax themselves (a multi-host
    trainer whose processes each save their own shards under params/) pass version=1, the orbax layout."""
    dtype = str(jax.tree_util.tree_leaves(params)[0].dtype)
    given = extra or {}
    extra = {k: v for k, v in given.items() if k not in keys()}
    extra.update(manifests(params, cfg, given))  # a kind key in `given` but not in params is dropped
    return {"format": "jaxshare", "version": version, "config": dataclasses.asdict(cfg),
            "dtype": dtype, "extra": extra}


def save_native(out_dir, cfg: ModelConfig, params: Params, tokenizer=None, extra: dict | None = None,
                overwrite: bool = False, files: dict[str, bytes] | None = None) -> Path:
    """Write a checkpoint atomically: into a temp dir beside out_dir, then rename. The manifest of
    every compressed kind in `params` is written by itself; extra[kind key] (method details such
    as the ratio) is merged into it, other extra keys are kept as given. files: {name: bytes}
    written beside them inside the same swap (e.g. the plan.yaml of `jaxshare compress`)."""
    items = leaf_items(params)
    dtype = str(items[0][1].dtype)
    with atomic_output(out_dir, overwrite) as tmp:
        write_leaves(tmp / PARAMS_FILE, items)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, blob in (files or {}).items():
            (tmp / name).write_bytes(blob)
        write_meta(tmp, cfg, dtype, params, extra)
    return output_path(out_dir)


def write_meta(directory, cfg: ModelConfig, dtype: str, params, extra: dict | None) -> None:
    """jaxshare.json; params: the tree (or an abstract tree) whose compressed kinds give the manifests."""
    meta = native_meta(cfg, params, extra)
    meta["dtype"] = dtype
    (Path(directory) / META).write_text(json.dumps(meta, indent=2))


def read_meta(path) -> dict:
    try:
        meta = json.loads((Path(path) / META).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable {META} ({e})") from None
    if meta.get("format") != "jaxshare" or meta.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path}: not a jaxshare checkpoint of version "
                              f"{' or '.join(map(str, READABLE_VERSIONS))}")
    return meta


def read_leaves(path, abstract, dtype=None):
    """The pytree `abstract` (ShapeDtypeStruct leaves) filled from params.safetensors; floating
    leaves are cast to dtype on the way in (a piece at a time)."""
    items = leaf_items(abstract)
    _, treedef = jax.tree_util.tree_flatten(abstract)
    leaves = []
    with TensorReader(path) as f:
        for name, spec in items:
            if name not in f.entries:
                raise CheckpointError(f"{path}: no tensor {name}")
            if f.shape(name) != tuple(spec.shape):
                raise CheckpointError(f"{path}: tensor {name} has shape {f.shape(name)}, expected {tuple(spec.shape)}")
            want = spec.dtype
            if dtype is not None and jnp.issubdtype(want, jnp.floating):
                want = as_dtype(dtype)
            arr = f.read(name, want)
            check_finite(arr, path, name)
            leaves.append(host.adopt(arr))  # read into an aligned buffer: the model is held once
    return jax.tree_util.tree_unflatten(treedef, leaves)


def load_native(path, dtype=None, target=None) -> tuple[ModelConfig, Params, dict]:
    """(config, params, metadata). `target`: an abstract pytree when the params are not a plain Params."""
    meta = read_meta(path)
    cfg = ModelConfig.from_dict(meta["config"])
    stored = as_dtype(meta["dtype"])
    # each compressed kind named in extra rebuilds its leaves (bank sizes, ranks)
    abstract = target if target is not None else abstract_tree(cfg, meta.get("extra", {}), stored)
    if meta["version"] >= 2:
        return cfg, read_leaves(Path(path) / PARAMS_FILE, abstract, dtype), meta
    # deferred: orbax costs ~0.2 s to import; only version 1 (and a multi-host trainer's final/, whose
    # processes save shards) needs it
    import orbax.checkpoint as ocp

    # Without a sharding orbax would place arrays on the saving run's devices (a multi-host
    # trainer's mesh, say), which this process may not have: restore onto our first local device.
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree_util.tree_map(
        lambda x: x if getattr(x, "sharding", None) is not None else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=local),
        abstract)
    with ocp.StandardCheckpointer() as ckptr:
        params = _restore_v1(ckptr, (Path(path) / "params").absolute(), abstract)
    if dtype is not None and as_dtype(dtype) != stored:
        params = cast_params(params, dtype)
    return cfg, params, meta


def _restore_v1(ckptr, directory, abstract):
    """Restore an orbax (version 1) params tree into `abstract`, following the tree on disk:
    leaves added to Params since it was written (Gemma3's q/k norms, say) are absent there and
    must be None here, or orbax refuses the structure."""
    disk = ckptr.metadata(directory).item_metadata.tree
    wanted = dict(leaf_items(abstract))

    def target(node, prefix):
        if isinstance(node, dict):
            return {k: target(v, f"{prefix}.{k}" if prefix else str(k)) for k, v in node.items()}
        if node is None:
            return None
        if prefix not in wanted:
            raise CheckpointError(f"{directory}: unexpected tensor {prefix} (written by another version?)")
        return wanted.pop(prefix)

    item = target(disk, "")
    if wanted:
        raise CheckpointError(f"{directory}: no tensor {sorted(wanted)[0]}")
    restored = dict(leaf_items(ckptr.restore(directory, item)))
    treedef = jax.tree_util.tree_structure(abstract)
    return jax.tree_util.tree_unflatten(treedef, [restored[name] for name, _ in leaf_items(abstract)])
