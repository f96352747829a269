"""Grow an inherited model stage by stage (docs/methods.md §3): add layers, train each stage, stop when
held-out loss reaches the reference model's.

New layers are either copies of the student's last layers (`copy`) or the reference model's next
layers (`reference`: the student's layer i came from reference layer i, so a student of n layers
takes reference layers n, n+1, ...). Growth works on dense layers; banks and factored weights
are materialized first (the grown model is an ordinary model of the family).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxshare.core.bank import materialize
from jaxshare.core.config import ModelConfig
from jaxshare.inheritune.inherit import InheritError

GROW = ("copy", "reference")


def _dense_layers(params):
    return materialize(params).layers


def grow_params(params, cfg: ModelConfig, n_layers: int, how: str = "copy", reference=None):
    """(params, cfg) with n_layers > cfg.n_layers: the student's layers, then the added ones."""
    if how not in GROW:
        raise InheritError(f"growth must be one of {', '.join(GROW)}, got {how!r}")
    add = n_layers - cfg.n_layers
    if add <= 0:
        raise InheritError(f"a growth stage must add layers: {cfg.n_layers} -> {n_layers}")
    layers = _dense_layers(params)
    if how == "copy":
        if add > cfg.n_layers:
            raise InheritError(f"cannot copy {add} layers from a student of {cfg.n_layers}")
        src, start = layers, cfg.n_layers - add
        src_windows = cfg.layer_windows
    else:
        if reference is None:
            raise InheritError("growth from the reference needs the reference model")
        ref_params, ref_cfg = reference
        if n_layers > ref_cfg.n_layers:
            raise InheritError(f"the reference has {ref_cfg.n_layers} layers; cannot grow to {n_layers}")
        src, start = _dense_layers(ref_params), cfg.n_layers
        src_windows = ref_cfg.layer_windows
    new = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b[start:start + add].astype(a.dtype)]), layers, src)
    windows = None
    if cfg.windows is not None or any(src_windows):
        windows = tuple(cfg.layer_windows) + tuple(src_windows[start:start + add])
    return dataclasses.replace(materialize(params), layers=new), dataclasses.replace(cfg, n_layers=n_layers,
                                                                                    windows=windows)


def check_stages(stages: str, how: str) -> list[int]:
    """Layer counts of the growth stages ("15,17,19"): positive and strictly increasing."""
    if how not in GROW:
        raise InheritError(f"grow must be one of {', '.join(GROW)}, got {how!r}")
    if not str(stages).strip():
        return []
    try:
        counts = [int(s) for s in str(stages).split(",")]
    except ValueError:
        raise InheritError(f"stages must be comma-separated layer counts like 15,17,19, got {stages!r}") from None
    if min(counts) < 1:
        raise InheritError(f"stages must be layer counts >= 1, got {stages!r}")
    if any(b <= a for a, b in zip(counts, counts[1:])):
        raise InheritError(f"stages must grow from one stage to the next, got {stages!r}")
    return counts
