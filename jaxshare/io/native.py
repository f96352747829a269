"""Native jaxshare checkpoints: an orbax-checkpoint tree, a metadata JSON, the tokenizer files.

Layout of a checkpoint directory:
  jaxshare.json   {"format": "jaxshare", "version": 1, "config": {...}, "dtype": ..., "extra": {...}}
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

from jaxshare.core.config import ModelConfig
from jaxshare.io.atomic import atomic_output
from jaxshare.io.hf import CheckpointError
from jaxshare.core.params import Params, abstract_params

META = "jaxshare.json"
FORMAT_VERSION = 1

# A compressed checkpoint names its method in meta["extra"]; the method rebuilds the abstract
# params tree (bank sizes, ranks) from its manifest there, so orbax restores the exact structure.
# key -> "module:function(cfg, manifest, dtype) -> abstract Params"
STRUCTURES = {
    "sharing": "jaxshare.headshare.sharing:abstract_shared",
    "basis": "jaxshare.basis.compress:abstract_structure",
}
MANIFEST_KEYS = tuple(STRUCTURES)
# Methods whose HF export needs more than the manifest (e.g. the factors that dense weights alone
# cannot give back exactly): key -> "module:function(params, manifest) -> {file name: bytes}"
EXPORT_FILES = {
    "basis": "jaxshare.basis.io:export_files",
}


def structure_target(cfg: ModelConfig, meta: dict, dtype):
    """The abstract params tree a checkpoint with this metadata holds."""
    import importlib

    for key, ref in STRUCTURES.items():
        if key in meta.get("extra", {}):
            module, fn = ref.split(":")
            return getattr(importlib.import_module(module), fn)(cfg, meta["extra"][key], dtype)
    return abstract_params(cfg, dtype)


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


def save_native(out_dir, cfg: ModelConfig, params: Params, tokenizer=None, extra: dict | None = None,
                overwrite: bool = False) -> Path:
    """Write a checkpoint atomically: into a temp dir beside out_dir, then rename."""
    dtype = str(jax.tree_util.tree_leaves(params)[0].dtype)
    meta = {"format": "jaxshare", "version": FORMAT_VERSION, "config": dataclasses.asdict(cfg),
            "dtype": dtype, "extra": extra or {}}
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
    import jax.numpy as jnp

    meta = read_meta(path)
    cfg = ModelConfig.from_dict(meta["config"])
    stored = jnp.dtype(meta["dtype"])
    abstract = target if target is not None else structure_target(cfg, meta, stored)
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore((Path(path) / "params").absolute(), abstract)
    if dtype is not None and jnp.dtype(dtype) != stored:
        params = jax.tree_util.tree_map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                                        params)
    return cfg, params, meta
