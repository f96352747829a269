"""Quantize a whole model: every linear weight of the layers, whatever compression already holds it.

A dense leaf is quantized layer by layer; a head-sharing bank's rows unit by unit (GPTQ's gram for
a row is the sum of the grams of the layers whose units read it); a basis first in its shared
factor B (gram: the group's layers summed), then each layer's coefficients C_l with the gram of
their input x B̂ (B̂^T X^T X B̂, B̂ the quantized basis, so C_l also corrects B's rounding). Embeddings,
norms and biases stay as they are. The grams are calibrate()'s {input: [L, d_in, d_in]}.
"""
from __future__ import annotations

import dataclasses

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxshare.basis.factor import TYPES, Factored, dims, get_type, set_types
from jaxshare.core.bank import Bank
from jaxshare.core.compressed import compressed_leaves
from jaxshare.core.config import ModelConfig
from jaxshare.core.params import param_bytes
from jaxshare.quant import pack as P
from jaxshare.quant.gptq import gptq_many
from jaxshare.quant.leaf import Quantized, make, to_2d
from jaxshare.quant.tree import quantized_paths

METHODS = ("rtn", "gptq")


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 4
    group: int | None = 64  # None: one group per output channel
    sym: bool = True
    method: str = "gptq"
    damp: float = 0.01
    act_order: bool = False

    def __post_init__(self):
        self.check()  # a spec that exists is a valid one (plans, the CLI and js build it the same way)

    def check(self) -> None:
        P.check_spec(self.bits, self.group)
        if self.method not in METHODS:
            raise P.QuantError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not 0 < self.damp < 1:
            raise P.QuantError(f"--damp must be in (0, 1), got {self.damp}")


def quantize_matrices(ws_NIO, grams_NII, spec: QuantSpec, pad_ok: bool = False, what: str = "weight"):
    """(codes [N, rows, O], scale [N, G, O], zero [N, G, O] or None, d_in) of N same-shaped W [d_in, O];
    rows = d_in, or with pad_ok, d_in padded with zero rows (dead inputs for GPTQ) to whole groups."""
    ws = np.asarray(ws_NIO, np.float32)
    n, d_in, d_out = ws.shape
    g = spec.group
    rows = d_in
    if g is not None and d_in % g:
        if not pad_ok:
            P.check_rows(d_in, g, what)
        rows = -(-d_in // g) * g
    elif spec.bits == 4 and d_in % 2:
        if not pad_ok:
            raise P.QuantError(f"int4 packs row pairs; {what} has {d_in} input rows")
        rows = d_in + 1
    w = np.zeros((n, rows, d_out), np.float32)
    w[:, :d_in] = ws
    if spec.method == "rtn" or grams_NII is None:
        q, s, z = P.rtn(jnp.asarray(w), spec.bits, g, spec.sym)
    else:
        h = [np.pad(np.asarray(x, np.float32), ((0, rows - d_in), (0, rows - d_in))) for x in grams_NII]
        q, s, z = gptq_many(list(w), h, spec.bits, g, spec.sym, spec.damp, spec.act_order)
    return np.asarray(q), np.asarray(s), None if spec.sym else np.asarray(z), d_in


def _make(items, spec, layout, leaf_shape, dtype) -> Quantized:
    codes, scale, zero, d_in = items
    return make(codes, scale, zero, spec.bits, spec.group, layout, leaf_shape, d_in, dtype)


def _rel_error(w, what, gram) -> tuple[float, float]:
    """(||X (W - Ŵ)||^2, ||X W||^2) from the gram (or the plain Frobenius norms without one)."""
    d = np.asarray(w, np.float64) - np.asarray(what, np.float64)
    w = np.asarray(w, np.float64)
    if gram is None:
        return float(np.sum(d * d)), float(np.sum(w * w))
    g = np.asarray(gram, np.float64)
    return float(np.sum(d * (g @ d))), float(np.sum(w * (g @ w)))


class _Acc:
    """Per-part bytes and calibration error, for the report."""

    def __init__(self):
        self.parts = {}

    def add(self, name, before, after: Quantized, err2, ref2):
        self.parts[name] = {"bytes_before": param_bytes(before), "bytes_after": param_bytes(after),
                            "rel_error": float(np.sqrt(err2 / ref2)) if ref2 > 0 else None}


def _gram(grams, t, layers):
    if grams is None:
        return None
    return np.sum(np.asarray(grams[TYPES[t][1]][list(layers)], np.float32), axis=0)


def _unit_gram(grams, t, cfg, pairs):
    """Gram of a head-sharing unit's input, summed over the (layer, unit) pairs reading it. q/k/v read
    the whole attention input; o reads the unit's own heads of the attention output."""
    if grams is None:
        return None
    g = np.asarray(grams[TYPES[t][1]], np.float64)
    if t != "o":
        return sum(g[l] for l, _ in pairs)
    w = cfg.groups * cfg.head_dim
    return sum(g[l, k * w:(k + 1) * w, k * w:(k + 1) * w] for l, k in pairs)


def _errors(w_N, what_N, grams_N) -> tuple[float, float]:
    e2 = r2 = 0.0
    for i, (w, wh) in enumerate(zip(w_N, what_N)):
        e, r = _rel_error(w, wh, None if grams_N is None else grams_N[i])
        e2, r2 = e2 + e, r2 + r
    return e2, r2


def _quantize_leaf(leaf, t, cfg, grams, spec, acc, bar):
    L = cfg.n_layers
    dt = leaf.rows.dtype if isinstance(leaf, Bank) else leaf.coef.dtype if isinstance(leaf, Factored) else leaf.dtype
    if isinstance(leaf, Bank):  # head sharing: one quantized weight per bank row
        layout = {"q": "q_unit", "o": "o_unit"}.get(t, "2d")
        rows2 = np.asarray(to_2d(layout, leaf.rows), np.float32)
        index = np.asarray(leaf.index)
        gs = None if grams is None else [_unit_gram(grams, t, cfg, list(zip(*np.nonzero(index == u))))
                                         for u in range(rows2.shape[0])]
        q = _make(quantize_matrices(rows2, gs, spec, what=f"{t} bank rows"), spec, layout,
                  tuple(leaf.rows.shape[1:]), dt)
        bar.update(rows2.shape[0])
        acc.add(f"{t}.rows", leaf.rows, q, *_errors(rows2, np.asarray(q.dense_2d()), gs))
        # replace, not Bank(...): a CorrectedBank (data-aware sharing) keeps its d x d corrections
        return dataclasses.replace(leaf, rows=q)
    if isinstance(leaf, Factored):  # the shared basis first, then each layer's coefficients against it
        index = np.asarray(leaf.basis.index)
        b_rows = np.asarray(leaf.basis.rows, np.float32)
        gs = None if grams is None else [_gram(grams, t, np.flatnonzero(index == gi)) for gi in range(len(b_rows))]
        qb = _make(quantize_matrices(b_rows, gs, spec, what=f"{t} basis"), spec, "2d", tuple(b_rows.shape[1:]), dt)
        b_hat = np.asarray(qb.dense_2d(), np.float64)
        acc.add(f"{t}.basis", leaf.basis.rows, qb, *_errors(b_rows, b_hat, gs))
        coef = np.asarray(leaf.coef, np.float32)
        gs = None if grams is None else [b_hat[index[l]].T @ _gram(grams, t, [l]) @ b_hat[index[l]] for l in range(L)]
        qc = _make(quantize_matrices(coef, gs, spec, pad_ok=True, what=f"{t} coefficients"), spec, "2d",
                   tuple(coef.shape[1:]), dt)
        bar.update(len(b_rows) + L)
        acc.add(f"{t}.coef", leaf.coef, qc, *_errors(coef, np.asarray(qc.dense_2d()), gs))
        return Factored(Bank(qb, leaf.basis.index), qc, leaf.layout, leaf.leaf_shape)
    w2 = np.asarray(to_2d(t, leaf), np.float32)  # a dense leaf [L, ...]
    gs = None if grams is None else [_gram(grams, t, [l]) for l in range(L)]
    q = _make(quantize_matrices(w2, gs, spec, what=f"{t} (d_in {w2.shape[1]})"), spec, t, tuple(leaf.shape[1:]), dt)
    bar.update(L)
    acc.add(t, leaf, q, *_errors(w2, np.asarray(q.dense_2d()), gs))
    return q


def types_present(cfg: ModelConfig) -> list[str]:
    return [t for t in TYPES if t != "gate" or cfg.gated_mlp]


def check_model(params, cfg: ModelConfig, spec: QuantSpec) -> None:
    """Refuse before any work: an already quantized model, a group that does not divide a dense row."""
    if quantized_paths(params):
        raise P.QuantError("the model is already quantized (quantize its unquantized source instead)")
    for t in types_present(cfg):  # a basis' coefficients (rank rows) are padded to whole groups instead
        P.check_rows(dims(cfg, t)[0], spec.group, f"{t} (d_in {dims(cfg, t)[0]})")


def quantize_params(params, cfg: ModelConfig, spec: QuantSpec, grams: dict | None = None, progress: bool = True):
    """(quantized params, report). grams: needed by GPTQ (calibrate()'s); RTN ignores them."""
    spec.check()
    if spec.method == "gptq" and grams is None:
        raise P.QuantError("GPTQ needs calibration grams")
    check_model(params, cfg, spec)
    t0 = time.perf_counter()
    todo = types_present(cfg)
    total = 0
    for t in todo:
        leaf = get_type(params.layers, t)
        total += (leaf.rows.shape[0] if isinstance(leaf, Bank) else
                  leaf.basis.rows.shape[0] + cfg.n_layers if isinstance(leaf, Factored) else cfg.n_layers)
    acc, new = _Acc(), {}
    with tqdm(total=total, desc=f"{spec.method} int{spec.bits}", unit="matrix", leave=False,
              disable=not progress) as bar:
        for t in todo:
            new[t] = _quantize_leaf(get_type(params.layers, t), t, cfg, grams, spec, acc, bar)
            jax.block_until_ready(jax.tree_util.tree_leaves(new[t]))
    out = set_types(params, new)
    return out, report(params, out, acc.parts, spec, time.perf_counter() - t0)


def kind_of(leaf) -> str:
    if isinstance(leaf, Bank):
        return "sharing"
    if isinstance(leaf, Factored):
        return "basis"
    return "dense"


def report(before, after, parts: dict, spec: QuantSpec, seconds: float) -> dict:
    """Bytes before/after per kind (dense, sharing, basis) and per part, and the whole model."""
    per_kind: dict = {}
    for name, r in parts.items():
        t = name.split(".")[0]
        k = kind_of(get_type(before.layers, t))
        d = per_kind.setdefault(k, {"bytes_before": 0, "bytes_after": 0})
        d["bytes_before"] += r["bytes_before"]
        d["bytes_after"] += r["bytes_after"]
    lin_b = sum(r["bytes_before"] for r in parts.values())
    lin_a = sum(r["bytes_after"] for r in parts.values())
    return {"bits": spec.bits, "group": spec.group, "sym": spec.sym, "method": spec.method, "damp": spec.damp,
            "act_order": spec.act_order, "bytes_before": param_bytes(before), "bytes_after": param_bytes(after),
            "linear_bytes_before": lin_b, "linear_bytes_after": lin_a, "per_kind": per_kind, "per_part": parts,
            "kinds_before": sorted({type(x).__name__ for x in compressed_leaves(before)}),
            "seconds": seconds}
