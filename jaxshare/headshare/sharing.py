"""Head-wise sharing as a parameter index gather (docs/methods.md §1, Representation).

A unit is (layer l, KV group k). Each of q, k, v (and o with share_o) gets a `Bank` whose
rows are unit weights and whose int32 index [L, K] names the row each unit reads. Biases
travel with their weights (same index). Tying rewrites an index to point at a root unit;
`compact` then drops unread rows so the stored bytes really shrink.

`roots` maps are int32 [L, K] arrays of flat unit ids (l * K + k) into the dense model: the
unit whose weights each unit reads after tying. The identity map is the dense model.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxshare.errors import CheckpointError, JaxshareError
from jaxshare.core.bank import Bank, compact, is_bank
from jaxshare.core.compressed import check_reproduces, is_compressed
from jaxshare.core.config import ModelConfig
from jaxshare.core.matrices import field_name
from jaxshare.core.params import Params, replace_leaves

MATRICES = ("q", "k", "v")
# Attention fields of each matrix type (its weight's field from core.matrices, then its bias);
# biases share their weight's index.
FIELDS = {m: (field_name(m), *bias) for m, bias in (("q", ("bq",)), ("k", ("bk",)), ("v", ("bv",)), ("o", ()))}
KEEP = ("root", "mean")
MANIFEST_VERSION = 1


class SharingError(JaxshareError, ValueError):
    """A sharing request that cannot be carried out as asked."""


def identity_roots(cfg: ModelConfig) -> np.ndarray:
    return np.arange(cfg.n_layers * cfg.n_kv_heads, dtype=np.int32).reshape(cfg.n_layers, cfg.n_kv_heads)


def is_shared(params: Params) -> bool:
    return is_bank(params.layers.attn.wq)


def _with_attn(params: Params, new: dict) -> Params:
    return replace_leaves(params, {f"layers.attn.{name}": v for name, v in new.items()})


def dense_fields(params: Params, names) -> Params:
    """params with the attention fields `names` dense. Only the leaves a tie rewrites are
    materialized: every other compressed leaf (a basis, quantized codes) is left as it is."""
    attn = params.layers.attn
    new = {n: getattr(attn, n).dense() for n in names if is_compressed(getattr(attn, n))}
    return _with_attn(params, new) if new else params


def fields_of(matrices) -> list[str]:
    return [name for m in matrices for name in FIELDS[m]]


def _bank_of(w_LK_: jax.Array, roots_LK: np.ndarray, keep: str) -> Bank:
    """A compact bank over a dense leaf [L, K, ...] for one roots map."""
    L, K = roots_LK.shape
    flat = w_LK_.reshape((L * K,) + w_LK_.shape[2:])
    owners, index = np.unique(roots_LK.ravel(), return_inverse=True)
    if keep == "root":
        rows = flat[jnp.asarray(owners)]
    else:  # the mean of each tied group, accumulated in fp32
        seg = jnp.asarray(index.astype(np.int32))
        sums = jax.ops.segment_sum(flat.astype(jnp.float32), seg, num_segments=len(owners))
        counts = np.bincount(index, minlength=len(owners)).astype(np.float32)
        rows = (sums / counts.reshape((-1,) + (1,) * (flat.ndim - 1))).astype(flat.dtype)
    return Bank(rows, jnp.asarray(index.reshape(L, K).astype(np.int32)))


def share(params: Params, cfg: ModelConfig, roots: dict[str, np.ndarray], keep: str = "root",
          share_o: bool = False) -> Params:
    """Tie units: `roots[m]` [L, K] gives, per matrix type m in q/k/v, the dense unit each unit
    reads. Returns params whose q/k/v (and o) leaves are compact banks. Input may be dense or
    already shared (the leaves it ties are materialized first; every other leaf is kept)."""
    if keep not in KEEP:
        raise SharingError(f"keep must be one of {', '.join(KEEP)}, got {keep!r}")
    shape = (cfg.n_layers, cfg.n_kv_heads)
    for m in MATRICES:
        r = np.asarray(roots[m])
        if r.shape != shape:
            raise SharingError(f"roots[{m!r}] has shape {r.shape}, expected {shape}")
        if r.min() < 0 or r.max() >= r.size:
            raise SharingError(f"roots[{m!r}] points outside the {r.size} units")
    roots = dict(roots)
    if share_o:
        roots["o"] = roots["v"]  # W_o consumes the attention output, which carries the unit's values
    params = dense_fields(params, fields_of(roots))
    attn = params.layers.attn
    new = {}
    for m, r in roots.items():
        for name in FIELDS[m]:
            leaf = getattr(attn, name)
            if leaf is not None:
                new[name] = _bank_of(leaf, np.asarray(r), keep)
    return _with_attn(params, new)


def identity_share(params: Params, cfg: ModelConfig) -> Params:
    """The dense model as full banks with identity indices (bit-identical forward)."""
    r = identity_roots(cfg)
    return share(params, cfg, {m: r for m in MATRICES})


def index_of(params: Params, m: str) -> np.ndarray:
    return np.asarray(getattr(params.layers.attn, FIELDS[m][0]).index)


def manifest(params: Params, cfg: ModelConfig, **info) -> dict:
    """The JSON manifest of a shared model: which bank row each unit reads, per matrix type
    (Bank.manifest; `info`, method details such as the ratio, rides along)."""
    attn = params.layers.attn
    idx = {m: index_of(params, m).tolist() for m in ("q", "k", "v", "o") if is_bank(getattr(attn, FIELDS[m][0]))}
    return {"version": MANIFEST_VERSION, "unit": "kv_group", "layers": cfg.n_layers, "units_per_layer": cfg.n_kv_heads,
            "index": idx, "rows": {m: int(np.max(v)) + 1 for m, v in idx.items()}, **info}


def _check_manifest(cfg: ModelConfig, man: dict) -> dict[str, np.ndarray]:
    if man.get("version") != MANIFEST_VERSION or "index" not in man:
        raise SharingError(f"not a jaxshare sharing manifest v{MANIFEST_VERSION}")
    out = {}
    for m, idx in man["index"].items():
        a = np.asarray(idx, dtype=np.int32)
        if m not in FIELDS or a.shape != (cfg.n_layers, cfg.n_kv_heads):
            raise SharingError(f"sharing manifest: index {m!r} has shape {a.shape}, the model has "
                               f"{(cfg.n_layers, cfg.n_kv_heads)} units")
        rows = int(a.max()) + 1
        if set(np.unique(a).tolist()) != set(range(rows)):
            raise SharingError(f"sharing manifest: index {m!r} is not compact (rows 0..{rows - 1} must all be read)")
        out[m] = a
    return out


def _placed(leaf, index_LK: np.ndarray, name: str) -> bool:
    """True for a bank another kind restored whole (a corrected bank); its index must agree."""
    if not is_bank(leaf):
        return False
    if leaf.index.shape != index_LK.shape or (not isinstance(leaf.index, jax.ShapeDtypeStruct)
                                              and not np.array_equal(np.asarray(leaf.index), index_LK)):
        raise SharingError(f"sharing manifest and corrections manifest disagree on which rows {name} reads")
    return True


def abstract_shared(cfg: ModelConfig, man: dict, base) -> Params:
    """`base` (an abstract params tree) with the banks a shared checkpoint holds (orbax restore target)."""
    index = _check_manifest(cfg, man)
    attn = base.layers.attn
    new = {}
    for m, a in index.items():
        rows = int(a.max()) + 1
        for name in FIELDS[m]:
            leaf = getattr(attn, name)
            if _placed(leaf, a, name):
                continue
            if leaf is not None:
                new[name] = Bank(jax.ShapeDtypeStruct((rows,) + leaf.shape[2:], leaf.dtype),
                                 jax.ShapeDtypeStruct(a.shape, jnp.int32))
    return _with_attn(base, new)


def from_dense(cfg: ModelConfig, params: Params, man: dict) -> Params:
    """Restore the exact sharing of an exported model from its dense weights and manifest:
    bank row u is the weights of the first unit that reads it. Tied units must hold equal
    weights, or the directory was edited after export."""
    index = _check_manifest(cfg, man)
    attn = params.layers.attn
    new = {}
    for m, a in index.items():
        flat_idx = a.ravel()
        first = np.array([np.flatnonzero(flat_idx == u)[0] for u in range(int(a.max()) + 1)])
        for name in FIELDS[m]:
            leaf = getattr(attn, name)
            if leaf is None or _placed(leaf, a, name):
                continue
            flat = leaf.reshape((-1,) + leaf.shape[2:])
            bank = Bank(flat[jnp.asarray(first)], jnp.asarray(a))
            # Equal to float rounding, the rule of every kind: adapters subtracted from an HF export's
            # merged weights leave an ulp between tied units.
            try:
                check_reproduces(bank.dense(), leaf, f"tied units of {name}", "sharing.json")
            except CheckpointError:
                raise SharingError(f"sharing.json says units share {name}, but their exported weights differ") from None
            new[name] = bank
    return _with_attn(params, new)


def compact_params(params: Params) -> Params:
    attn = params.layers.attn
    new = {f.name: compact(getattr(attn, f.name)) for f in dataclasses.fields(attn) if is_bank(getattr(attn, f.name))}
    return _with_attn(params, new)
