"""The codec of `LoRA` adapters (jaxshare.io.kinds): manifest `lora`, side file `lora.safetensors`.

An adapter wraps another kind, so its codec is a wrapping one (`wraps = True`): the other kinds
describe, rebuild and restore the base tree (adapters peeled off, io.kinds.peel), and the
adapters are put around the result. An HF export holds the merged weights W + s * A @ B (what
every runtime loads); restoring subtracts the adapters first, so the base kinds find their own
dense weights and check their side files against them as usual.
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxshare.core.compressed import dense_of
from jaxshare.core.params import get_leaf, replace_leaves
from jaxshare.errors import CheckpointError
from jaxshare.lora.leaf import LoRA, lora_paths

MANIFEST_VERSION = 1
ADAPTERS = "lora.safetensors"


class LoraCodec:
    key = "lora"
    kind = LoRA
    wraps = True  # io.kinds: the other codecs see the tree with the adapters peeled off

    def manifest(self, params, cfg) -> dict:
        leaves = {p: {"rank": x.rank, "scale": x.scale, "layout": x.layout, "leaf_shape": list(x.leaf_shape),
                      "lead": list(x.a.shape[:-2]), "d_in": int(x.a.shape[-2]), "d_out": int(x.b.shape[-1]),
                      "dtype": jnp.dtype(x.a.dtype).name}
                  for p, x in lora_paths(params).items()}
        return {"version": MANIFEST_VERSION, "leaves": leaves}

    @staticmethod
    def _leaves(manifest: dict) -> dict:
        if manifest.get("version") != MANIFEST_VERSION or not isinstance(manifest.get("leaves"), dict):
            raise CheckpointError(f"not a jaxshare LoRA manifest v{MANIFEST_VERSION}")
        return manifest["leaves"]

    def wrap(self, manifest: dict, base, arrays=None):
        """`base` with an adapter around each leaf the manifest names: abstract adapters
        (ShapeDtypeStructs) without `arrays`, else arrays[path] = (a, b)."""
        new = {}
        for path, r in self._leaves(manifest).items():
            lead = tuple(r["lead"])
            if arrays is None:
                dt = jnp.dtype(r["dtype"])
                a = jax.ShapeDtypeStruct(lead + (r["d_in"], r["rank"]), dt)
                b = jax.ShapeDtypeStruct(lead + (r["rank"], r["d_out"]), dt)
            else:
                a, b = arrays[path]
            new[path] = LoRA(get_leaf(base, path), a, b, r["layout"], tuple(r["leaf_shape"]), float(r["scale"]))
        return replace_leaves(base, new)

    def abstract(self, cfg, manifest: dict, base):
        return self.wrap(manifest, base)

    def export_files(self, params, manifest: dict) -> dict[str, bytes]:
        from safetensors.numpy import save  # deferred: only exports write side files

        tensors = {}
        for path, x in lora_paths(params).items():
            tensors[f"{path}.a"] = np.ascontiguousarray(np.asarray(x.a, np.float32))
            tensors[f"{path}.b"] = np.ascontiguousarray(np.asarray(x.b, np.float32))
        return {ADAPTERS: save(tensors, metadata={"format": "jaxshare-lora"})}

    def restore_hf(self, cfg, params, manifest: dict, source: Path):
        """Dense params holding merged weights -> the base's dense weights wrapped in adapters."""
        from safetensors.numpy import load_file  # deferred: only HF restores read side files

        leaves = self._leaves(manifest)
        path = Path(source) / ADAPTERS
        if not path.is_file():
            raise CheckpointError(f"{source}: lora.json without {ADAPTERS}; remove lora.json to load the merged weights")
        tensors, arrays, bases = load_file(str(path)), {}, {}
        for name, r in leaves.items():
            try:
                merged = get_leaf(params, name)
            except AttributeError:
                raise CheckpointError(f"{path}: lora.json names {name}, which this model does not have") from None
            a, b = tensors.get(f"{name}.a"), tensors.get(f"{name}.b")
            lead = tuple(r["lead"])
            if a is None or b is None or a.shape != lead + (r["d_in"], r["rank"]) or \
                    b.shape != lead + (r["rank"], r["d_out"]):
                raise CheckpointError(f"{path}: adapters of {name} missing or not the shape lora.json gives")
            dt = jnp.dtype(r["dtype"])
            arrays[name] = (jnp.asarray(a, dt), jnp.asarray(b, dt))
            delta = LoRA(None, *arrays[name], r["layout"], tuple(r["leaf_shape"]), float(r["scale"])).delta()
            bases[name] = (dense_of(merged).astype(jnp.float32) - delta).astype(merged.dtype)
        return self.wrap(manifest, replace_leaves(params, bases), arrays)


CODEC = LoraCodec()
