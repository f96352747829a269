"""Native jaxshare checkpoints: an orbax-checkpoint tree, a metadata JSON, the tokenizer files.

Layout of a checkpoint directory:
  jaxshare.json   {"format": "jaxshare", "version": 1, "config": {...}, "dtype": ..., "extra": {...}}
                  extra holds, under each compressed kind's key ("sharing", "basis"), its manifest
  params/         orbax StandardCheckpointer
  tokenizer*      whatever the tokenizer's save_pretrained writes
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jaxshare.core.compressed import abstract_tree, kinds, manifests
from jaxshare.core.config import ModelConfig
from jaxshare.core.dtypes import as_dtype
from jaxshare.core.params import Params, cast_params
from jaxshare.io.atomic import atomic_output
from jaxshare.io.hf import CheckpointError

META = "jaxshare.json"
FORMAT_VERSION = 1


def is_native(path) -> bool:
    return (Path(path) / META).is_file()


def _drop_closed_loop_noise(hook):
    def filtered(u):
        # After a failed save orbax closes its event loop while tensorstore still holds callbacks
        # into it; each reports "Event loop is closed" as an unraisable exception, possibly after
        # the one-line error has been printed. Nothing is lost by dropping them.
        if not (isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed"):
            hook(u)

    filtered.jaxshare = True
    return filtered


@contextmanager
def _quiet_orbax():
    """Orbax logs a traceback per background thread when a save fails (a full disk: three); the
    failure itself still raises, and atomic_output reports it in one line."""
    if not getattr(sys.unraisablehook, "jaxshare", False):  # stays: the noise may come after the error
        sys.unraisablehook = _drop_closed_loop_noise(sys.unraisablehook)
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def native_meta(cfg: ModelConfig, params: Params, extra: dict | None = None) -> dict:
    """The jaxshare.json of a checkpoint of `params` (for writers that run orbax themselves, such
    as a multi-host trainer whose processes each save their own shards)."""
    dtype = str(jax.tree_util.tree_leaves(params)[0].dtype)
    given = extra or {}
    extra = {k: v for k, v in given.items() if k not in {kind.key for kind in kinds()}}
    extra.update(manifests(params, cfg, given))  # a kind key in `given` but not in params is dropped
    return {"format": "jaxshare", "version": FORMAT_VERSION, "config": dataclasses.asdict(cfg),
            "dtype": dtype, "extra": extra}


def save_native(out_dir, cfg: ModelConfig, params: Params, tokenizer=None, extra: dict | None = None,
                overwrite: bool = False) -> Path:
    """Write a checkpoint atomically: into a temp dir beside out_dir, then rename. The manifest of
    every compressed kind in `params` is written by itself; extra[kind key] (method details such
    as the ratio) is merged into it, other extra keys are kept as given."""
    meta = native_meta(cfg, params, extra)
    with atomic_output(out_dir, overwrite) as tmp:
        with _quiet_orbax(), ocp.StandardCheckpointer() as ckptr:
            ckptr.save((tmp / "params").absolute(), params)
            ckptr.wait_until_finished()
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / META).write_text(json.dumps(meta, indent=2))
    return Path(out_dir)


def read_meta(path) -> dict:
    try:
        meta = json.loads((Path(path) / META).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable {META} ({e})") from None
    if meta.get("format") != "jaxshare" or meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a jaxshare v{FORMAT_VERSION} checkpoint")
    return meta


def load_native(path, dtype=None, target=None) -> tuple[ModelConfig, Params, dict]:
    """(config, params, metadata). `target`: an abstract pytree when the params are not a plain Params."""
    meta = read_meta(path)
    cfg = ModelConfig.from_dict(meta["config"])
    stored = as_dtype(meta["dtype"])
    # each compressed kind named in extra rebuilds its leaves (bank sizes, ranks) for orbax
    abstract = target if target is not None else abstract_tree(cfg, meta.get("extra", {}), stored)
    # Without a sharding orbax would place arrays on the saving run's devices (a multi-host
    # trainer's mesh, say), which this process may not have: restore onto our first local device.
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree_util.tree_map(
        lambda x: x if getattr(x, "sharding", None) is not None else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=local),
        abstract)
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore((Path(path) / "params").absolute(), abstract)
    if dtype is not None and as_dtype(dtype) != stored:
        params = cast_params(params, dtype)
    return cfg, params, meta
