"""How a basis-compressed model is described, saved, exported and restored (`Factored`'s side of
jaxshare.core.compressed).

The manifest `basis.json` (also meta["extra"]["basis"] of a native checkpoint) names, per
factorized type, its layer groups, rank and shape: enough to rebuild the abstract tree orbax
restores (`abstract_structure`).

An exported directory holds dense weights W_l = B[g(l)] @ C_l (what transformers loads), the
manifest `basis.json` (ranks, groups, method) and the factors themselves in `basis.safetensors`
(tensors "<type>.basis" [groups, d_in, k], "<type>.coef" [L, k, d_out], "<type>.index" [L]):
dense weights alone fix only the products, not which basis the layers share, so importing reads
the factors back and checks that B @ C reproduces the dense weights before using them.
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save

from jaxshare.basis.factor import TYPES, Factored, to_2d, get_type, set_types
from jaxshare.core.bank import Bank
from jaxshare.core.compressed import FunctionCodec, check_reproduces, dense_of
from jaxshare.core.config import ModelConfig
from jaxshare.errors import CheckpointError

FACTORS = "basis.safetensors"


def structure(params) -> dict:
    """The structural part of basis.json, read from the Factored leaves of params (Factored.manifest)."""
    types = {}
    for t in TYPES:
        f = get_type(params.layers, t)
        if not isinstance(f, Factored):
            continue
        index = np.asarray(f.basis.index)
        G, d_in, k = f.basis.rows.shape
        groups = [np.flatnonzero(index == g).tolist() for g in range(G)]
        n = max(len(g) for g in groups)
        types[t] = {"shared": n > 1, "group_size": n, "groups": groups, "rank": int(k), "d_in": int(d_in),
                    "d_out": int(f.coef.shape[-1])}
    return {"types": types}


def abstract_structure(cfg: ModelConfig, manifest: dict, base):
    """`base` (an abstract params tree) with the Factored leaves a basis checkpoint holds (Factored.abstract)."""
    L, new = cfg.n_layers, {}
    for t, r in manifest["types"].items():
        leaf = get_type(base.layers, t)
        G, k, dt = len(r["groups"]), r["rank"], leaf.dtype
        new[t] = Factored(Bank(jax.ShapeDtypeStruct((G, r["d_in"], k), dt), jax.ShapeDtypeStruct((L,), jnp.int32)),
                          jax.ShapeDtypeStruct((L, k, r["d_out"]), dt), t, tuple(leaf.shape[1:]))
    return set_types(base, new)


def export_files(params, manifest: dict) -> dict[str, bytes]:
    """{basis.safetensors: bytes} with every factorized type's basis rows, index and coefficients."""
    tensors = {}
    for t in manifest["types"]:
        f = get_type(params.layers, t)
        if not isinstance(f, Factored):
            raise CheckpointError(f"manifest lists {t} as factorized but the params hold a dense {t}")
        rows, coef = dense_of(f.basis.rows), dense_of(f.coef)  # quantized: dequantized
        tensors[f"{t}.basis"] = np.ascontiguousarray(np.asarray(rows, np.float32))
        tensors[f"{t}.index"] = np.asarray(f.basis.index, np.int32)
        tensors[f"{t}.coef"] = np.ascontiguousarray(np.asarray(coef, np.float32))
    return {FACTORS: save(tensors, metadata={"format": "jaxshare-basis"})}


def restore_from_hf(cfg: ModelConfig, params, manifest: dict, source: Path | None = None):
    """The factorized params of an exported directory: factors from basis.safetensors, checked
    against the dense weights (Factored.restore_hf)."""
    path = Path(source) / FACTORS if source is not None else None
    if path is None or not path.is_file():
        raise CheckpointError(f"{source}: basis.json without {FACTORS}; the shared factorization cannot be "
                              "restored from dense weights alone (load the dense weights by removing basis.json)")
    tensors = load_file(str(path))
    new = {}
    for t, r in manifest["types"].items():
        dense = get_type(params.layers, t)
        rows, index, coef = (tensors.get(f"{t}.{x}") for x in ("basis", "index", "coef"))
        if rows is None or coef is None or index is None:
            raise CheckpointError(f"{path}: missing factors of {t}")
        L = cfg.n_layers
        if rows.shape != (len(r["groups"]), r["d_in"], r["rank"]) or coef.shape != (L, r["rank"], r["d_out"]):
            raise CheckpointError(f"{path}: {t} factors have shapes {rows.shape}, {coef.shape}, not what basis.json says")
        got = np.einsum("lik,lko->lio", rows[index].astype(np.float64), coef.astype(np.float64))
        check_reproduces(got, to_2d(t, dense), f"factors of {t}", path)  # to_2d only reshapes: dtype kept
        dt = dense.dtype
        new[t] = Factored(Bank(jnp.asarray(rows, dt), jnp.asarray(index, jnp.int32)), jnp.asarray(coef, dt),
                          t, tuple(dense.shape[1:]))
    return set_types(params, new)


# The codec of `Factored` (jaxshare.io.kinds): manifest `basis`, side file basis.safetensors.
CODEC = FunctionCodec("basis", Factored, lambda params, cfg: structure(params), abstract_structure, export_files,
                      restore_from_hf)
