"""Hugging Face export / import of a basis-compressed model.

An exported directory holds dense weights W_l = B[g(l)] @ C_l (what transformers loads), the
manifest `basis.json` (ranks, groups, method) and the factors themselves in `basis.safetensors`
(tensors "<type>.basis" [groups, d_in, k], "<type>.coef" [L, k, d_out], "<type>.index" [L]):
dense weights alone fix only the products, not which basis the layers share, so importing reads
the factors back and checks that B @ C reproduces the dense weights before using them.
"""
from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxshare.core.bank import Bank
from jaxshare.basis.factor import Factored, to_2d, get_type, set_types
from jaxshare.core.config import ModelConfig
from jaxshare.io.hf import CheckpointError

FACTORS = "basis.safetensors"


def export_files(params, manifest: dict) -> dict[str, bytes]:
    """{basis.safetensors: bytes} with every factorized type's basis rows, index and coefficients."""
    from safetensors.numpy import save

    tensors = {}
    for t in manifest["types"]:
        f = get_type(params.layers, t)
        if not isinstance(f, Factored):
            raise CheckpointError(f"manifest lists {t} as factorized but the params hold a dense {t}")
        tensors[f"{t}.basis"] = np.ascontiguousarray(np.asarray(f.basis.rows, np.float32))
        tensors[f"{t}.index"] = np.asarray(f.basis.index, np.int32)
        tensors[f"{t}.coef"] = np.ascontiguousarray(np.asarray(f.coef, np.float32))
    return {FACTORS: save(tensors, metadata={"format": "jaxshare-basis"})}


def restore_from_hf(cfg: ModelConfig, params, manifest: dict, source: Path | None = None):
    """The factorized params of an exported directory: factors from basis.safetensors, checked
    against the dense weights (loading.HF_MANIFESTS["basis.json"])."""
    from safetensors.numpy import load_file

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
        want = np.asarray(to_2d(t, dense.astype(jnp.float32)), np.float64)
        scale = float(np.max(np.abs(want))) or 1.0
        tol = (1e-2 if dense.dtype == jnp.bfloat16 else 1e-4) * scale  # the dense file may be bf16-rounded
        err = float(np.max(np.abs(got - want)))
        if err > tol:
            raise CheckpointError(f"{path}: factors of {t} do not reproduce the dense weights "
                                  f"(max |B C - W| = {err:.3g} > {tol:.3g}); the directory was edited after export")
        dt = dense.dtype
        new[t] = Factored(Bank(jnp.asarray(rows, dt), jnp.asarray(index, jnp.int32)), jnp.asarray(coef, dt),
                          t, tuple(dense.shape[1:]))
    return set_types(params, new)
