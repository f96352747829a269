"""How corrected banks are described, saved, exported and restored (`CorrectedBank`'s side of
jaxshare.core.compressed).

The manifest `corrections.json` (meta["extra"]["corrections"] natively) names, for q and k, the
bank index and row count and the correction index (-1: none) and count: enough to rebuild the
abstract tree orbax restores. An HF export holds dense weights W_j = W*[index_j] M_j (what
transformers loads) and, in `corrections.safetensors`, the bank rows and corrections themselves
("<m>.rows", "<m>.corr"): the dense weights fix only the products, so importing reads them back
and checks that they reproduce the dense weights before using them.
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save

from jaxshare.core.compressed import check_reproduces, dense_of
from jaxshare.core.config import ModelConfig
from jaxshare.core.matrices import field_name
from jaxshare.core.params import replace_leaves
from jaxshare.errors import CheckpointError
from jaxshare.headshare.corrected import CorrectedBank
from jaxshare.headshare.sharing import SharingError

MANIFEST_VERSION = 1
SIDE_FILE = "corrections.safetensors"
CORRECTED = {m: field_name(m) for m in ("q", "k")}  # matrices a correction can act on (before RoPE, so exactly)


def corrected_leaves(params) -> dict[str, CorrectedBank]:
    attn = params.layers.attn
    return {m: getattr(attn, name) for m, name in CORRECTED.items() if isinstance(getattr(attn, name), CorrectedBank)}


def manifest(params, cfg: ModelConfig) -> dict:
    out = {"version": MANIFEST_VERSION, "layers": cfg.n_layers, "units_per_layer": cfg.n_kv_heads, "matrices": {}}
    for m, cb in corrected_leaves(params).items():
        out["matrices"][m] = {"bank_index": np.asarray(cb.index).tolist(), "bank_rows": int(cb.rows.shape[0]),
                              "corr_index": np.asarray(cb.corr_index).tolist(), "corr_rows": int(cb.corr.shape[0])}
    return out


def _checked(cfg: ModelConfig, man: dict) -> dict[str, tuple[np.ndarray, int, np.ndarray, int]]:
    if man.get("version") != MANIFEST_VERSION or not isinstance(man.get("matrices"), dict):
        raise SharingError(f"not a jaxshare corrections manifest v{MANIFEST_VERSION}")
    shape, out = (cfg.n_layers, cfg.n_kv_heads), {}
    for m, r in man["matrices"].items():
        if m not in CORRECTED:
            raise SharingError(f"corrections manifest: unknown matrix {m!r} (q and k only)")
        bi, ci = np.asarray(r["bank_index"], np.int32), np.asarray(r["corr_index"], np.int32)
        br, cr = int(r["bank_rows"]), int(r["corr_rows"])
        if bi.shape != shape or ci.shape != shape:
            raise SharingError(f"corrections manifest: {m} indices have shapes {bi.shape}, {ci.shape}; the model "
                               f"has {shape} units")
        if bi.min() < 0 or bi.max() >= br or ci.min() < -1 or ci.max() >= cr or cr < 1:
            raise SharingError(f"corrections manifest: {m} indices point outside {br} rows / {cr} corrections")
        out[m] = (bi, br, ci, cr)
    return out


def _head(cfg: ModelConfig, m: str) -> tuple[int, ...]:
    return (cfg.groups,) if m == "q" else ()


def abstract_corrected(cfg: ModelConfig, man: dict, base):
    """`base` with the corrected banks a checkpoint holds (whole: the sharing kind leaves them alone)."""
    new, d = {}, cfg.head_dim
    for m, (bi, br, ci, cr) in _checked(cfg, man).items():
        name = CORRECTED[m]
        leaf = getattr(base.layers.attn, name)
        dt = leaf.dtype
        new[f"layers.attn.{name}"] = CorrectedBank(
            jax.ShapeDtypeStruct((br,) + tuple(leaf.shape[2:]), dt), jax.ShapeDtypeStruct(bi.shape, jnp.int32),
            jax.ShapeDtypeStruct((cr,) + _head(cfg, m) + (d, d), dt), jax.ShapeDtypeStruct(ci.shape, jnp.int32))
    return replace_leaves(base, new)


def export_files(params, man: dict) -> dict[str, bytes]:
    tensors = {}
    for m, cb in corrected_leaves(params).items():
        rows = dense_of(cb.rows)  # quantized rows: quant.safetensors has the codes
        tensors[f"{m}.rows"] = np.ascontiguousarray(np.asarray(rows, np.float32))
        tensors[f"{m}.corr"] = np.ascontiguousarray(np.asarray(cb.corr, np.float32))
    return {SIDE_FILE: save(tensors, metadata={"format": "jaxshare-corrections"})}


def restore_hf(cfg: ModelConfig, params, man: dict, source: Path):
    """Dense params of an export -> params whose q/k are the corrected banks, checked against the
    dense weights (a directory edited after export is refused)."""
    path = Path(source) / SIDE_FILE
    if not path.is_file():
        raise CheckpointError(f"{source}: corrections.json without {SIDE_FILE}; the shared rows and corrections "
                              "cannot be restored from dense weights alone")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    new = {}
    for m, (bi, br, ci, cr) in _checked(cfg, man).items():
        name = CORRECTED[m]
        dense = getattr(params.layers.attn, name)
        rows, corr = tensors.get(f"{m}.rows"), tensors.get(f"{m}.corr")
        want_rows = (br,) + tuple(dense.shape[2:])
        want_corr = (cr,) + _head(cfg, m) + (cfg.head_dim, cfg.head_dim)
        if rows is None or corr is None or rows.shape != want_rows or corr.shape != want_corr:
            raise CheckpointError(f"{path}: {m} rows/corrections missing or not of shapes {want_rows}, {want_corr}")
        cb = CorrectedBank(jnp.asarray(rows), jnp.asarray(bi), jnp.asarray(corr), jnp.asarray(ci))
        check_reproduces(cb.dense(), dense, f"{m} rows and corrections", path)
        dt = dense.dtype
        new[f"layers.attn.{name}"] = CorrectedBank(cb.rows.astype(dt), cb.index, cb.corr.astype(dt), cb.corr_index)
    return replace_leaves(params, new)
