"""Where a params tree holds `Quantized` leaves, and how they are described, saved and restored.

Leaves are named by dotted paths through the params dataclasses, compressed kinds included:
`layers.mlp.w_down` (a dense leaf), `layers.attn.wq.rows` (a head-sharing bank's rows),
`layers.mlp.w_up.basis.rows` / `layers.mlp.w_up.coef` (a basis' factors). The manifest `quant`
(meta["extra"]["quant"] natively, `quant.json` in an HF export) lists each path's bits, group,
layout and shapes; an HF export also writes the codes in `quant.safetensors`, because the dense
weights it holds fix the dequantized values, not the codes. Restoring runs after the other kinds
(sharing, basis) have rebuilt their structure, and checks the codes against the dense weights.
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save

from jaxshare.core.compressed import FunctionCodec, check_reproduces
from jaxshare.core.params import get_leaf, nodes_by_path, replace_leaves
from jaxshare.errors import CheckpointError
from jaxshare.quant.leaf import Quantized

MANIFEST_VERSION = 1
CODES = "quant.safetensors"


def quantized_paths(tree) -> dict[str, Quantized]:
    """{dotted path: Quantized} anywhere in a tree of dataclasses."""
    found = nodes_by_path(tree, lambda x: isinstance(x, Quantized)).items()
    return {p: x for p, x in found if isinstance(x, Quantized)}


def structure(params) -> dict:
    """The manifest's structural part, read from the params (Quantized.manifest)."""
    leaves = {}
    for path, q in quantized_paths(params).items():
        leaves[path] = {"bits": q.bits, "group": q.group, "sym": q.sym, "layout": q.layout,
                        "leaf_shape": list(q.leaf_shape), "lead": list(q.scale.shape[:-2]), "d_in": q.d_in,
                        "rows": int(q.packed.shape[-2]) * (2 if q.bits == 4 else 1), "d_out": int(q.scale.shape[-1])}
    return {"version": MANIFEST_VERSION, "leaves": leaves}


def _check(manifest: dict) -> dict:
    if manifest.get("version") != MANIFEST_VERSION or not isinstance(manifest.get("leaves"), dict):
        raise CheckpointError(f"not a jaxshare quantization manifest v{MANIFEST_VERSION}")
    return manifest["leaves"]


def abstract_leaf(r: dict, dtype) -> Quantized:
    lead, rows, d_out = tuple(r["lead"]), r["rows"], r["d_out"]
    groups = 1 if r["group"] is None else rows // r["group"]
    packed = jax.ShapeDtypeStruct(lead + (rows // 2 if r["bits"] == 4 else rows, d_out), jnp.uint8)
    scale = jax.ShapeDtypeStruct(lead + (groups, d_out), dtype)
    zero = None if r["sym"] else jax.ShapeDtypeStruct(lead + (groups, d_out), jnp.uint8)
    return Quantized(packed, scale, zero, r["bits"], r["group"], r["layout"], tuple(r["leaf_shape"]), r["d_in"])


def abstract_structure(manifest: dict, base):
    """`base` with the Quantized leaves the manifest names (orbax restore target)."""
    return replace_leaves(base, {path: abstract_leaf(r, get_leaf(base, path).dtype)
                                 for path, r in _check(manifest).items()})


def export_files(params, manifest: dict) -> dict[str, bytes]:
    tensors = {}
    for path, q in quantized_paths(params).items():
        tensors[f"{path}.packed"] = np.ascontiguousarray(np.asarray(q.packed))
        tensors[f"{path}.scale"] = np.ascontiguousarray(np.asarray(q.scale, np.float32))
        if q.zero is not None:
            tensors[f"{path}.zero"] = np.ascontiguousarray(np.asarray(q.zero))
    return {CODES: save(tensors, metadata={"format": "jaxshare-quant"})}


def restore_from_hf(params, manifest: dict, source: Path):
    """The quantized params of an exported directory: codes from quant.safetensors, checked against
    the dense (dequantized) weights the directory holds."""
    leaves = _check(manifest)
    path = Path(source) / CODES
    if not path.is_file():
        raise CheckpointError(f"{source}: quant.json without {CODES}; the codes cannot be restored from the "
                              "dense weights alone (remove quant.json to load the dense weights)")
    tensors, new = load_file(str(path)), {}
    for name, r in leaves.items():
        try:
            dense = get_leaf(params, name)
        except AttributeError:
            raise CheckpointError(f"{path}: quant.json names {name}, which this model does not have") from None
        want = abstract_leaf(r, jnp.float32)
        got = {k: tensors.get(f"{name}.{k}") for k in ("packed", "scale", "zero")}
        if got["packed"] is None or got["scale"] is None or (not r["sym"] and got["zero"] is None):
            raise CheckpointError(f"{path}: missing codes of {name}")
        for k in ("packed", "scale", "zero"):
            spec = getattr(want, k)
            if spec is not None and tuple(got[k].shape) != spec.shape:
                raise CheckpointError(f"{path}: {name}.{k} has shape {got[k].shape}, quant.json says {spec.shape}")
        q = Quantized(jnp.asarray(got["packed"]), jnp.asarray(got["scale"], dense.dtype),
                      None if r["sym"] else jnp.asarray(got["zero"]), r["bits"], r["group"], r["layout"],
                      tuple(r["leaf_shape"]), r["d_in"])
        check_reproduces(np.asarray(q.dense(), np.float32), dense, f"codes of {name}", path)
        new[name] = q
    return replace_leaves(params, new)


# The codec of `Quantized` (jaxshare.io.kinds): manifest `quant`, side file of the codes.
CODEC = FunctionCodec("quant", Quantized, lambda params, cfg: structure(params),
                      lambda cfg, manifest, base: abstract_structure(manifest, base), export_files,
                      lambda cfg, params, manifest, source: restore_from_hf(params, manifest, source))
