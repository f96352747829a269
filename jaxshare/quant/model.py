"""Quantize a whole model: every linear weight of the layers, whatever compression already holds it.

A dense leaf is quantized layer by layer; a head-sharing bank's rows unit by unit (GPTQ's gram for
a row is the sum of the grams of the layers whose units read it); a basis first in its shared
factor B (gram: the group's layers summed), then each layer's coefficients C_l with the gram of
their input x B̂ (B̂^T X^T X B̂, B̂ the quantized basis, so C_l also corrects B's rounding). Embeddings,
norms and biases stay as they are. The grams are calibrate()'s {input: [L, d_in, d_in]}.

Every stack is streamed (`quantize_stack`): one layer's (bank row's, basis row's) weights in float
at a time for RTN, one vmapped chunk for GPTQ (gptq's chunking, which bounds its setup by d_in^2),
each chunk's codes packed and its calibration error measured before the next chunk is read. With
consume (the CLI), a type's weights are freed as soon as it is quantized: the peak is the params
plus about one layer's float copies, not a float32 copy of the largest type's whole stack.
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
from jaxshare.quant.gptq import gptq_chunks
from jaxshare.quant.leaf import Quantized, make, to_2d
from jaxshare.quant.tree import quantized_paths
from jaxshare.core import host

METHODS = ("rtn", "gptq")


@dataclass(frozen=True)
class QuantSpec:
    bits: int = 4
    group: int | None = 64  # None: one group per output channel
    sym: bool = True
    method: str = "gptq"
    damp: float = 0.01
    act_order: bool = False
    types: tuple | None = None  # the weight types quantized (None: every linear type); others stay as they are

    def __post_init__(self):
        if self.types is not None:
            unknown = sorted(set(self.types) - set(TYPES))
            if unknown:
                raise P.QuantError(f"types: unknown {', '.join(map(str, unknown))}; known: {', '.join(TYPES)}")
            object.__setattr__(self, "types", tuple(t for t in TYPES if t in set(self.types)))
        self.check()  # a spec that exists is a valid one (plans, the CLI and js build it the same way)

    def check(self) -> None:
        P.check_spec(self.bits, self.group)
        if self.method not in METHODS:
            raise P.QuantError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not 0 < self.damp < 1:
            raise P.QuantError(f"--damp must be in (0, 1), got {self.damp}")
        if self.types is not None and not self.types:
            raise P.QuantError(f"types: expected some of {', '.join(TYPES)}")


def quantized_types(cfg: ModelConfig, spec: QuantSpec) -> list[str]:
    """The types `spec` quantizes on a model of `cfg`: its `types`, else every linear type present."""
    present = types_present(cfg)
    if spec.types is None:
        return present
    missing = [t for t in spec.types if t not in present]
    if missing:
        raise P.QuantError(f"types: {', '.join(missing)} not in this model (it has {', '.join(present)})")
    return list(spec.types)


def _rows(d_in: int, spec: QuantSpec, pad_ok: bool, what: str) -> int:
    """Rows the codes hold: d_in, or with pad_ok, d_in padded with zero rows (dead inputs for GPTQ)
    to whole groups (int4: to an even count)."""
    g = spec.group
    if g is not None and d_in % g:
        if not pad_ok:
            P.check_rows(d_in, g, what)
        return -(-d_in // g) * g
    if spec.bits == 4 and d_in % 2:
        if not pad_ok:
            raise P.QuantError(f"int4 packs row pairs; {what} has {d_in} input rows")
        return d_in + 1
    return d_in


def _padded(w_kIO: np.ndarray, rows: int) -> np.ndarray:
    """w with zero rows up to `rows`; w itself (no copy) when it already has them."""
    if w_kIO.shape[1] == rows:
        return w_kIO
    out = np.zeros((w_kIO.shape[0], rows, w_kIO.shape[2]), np.float32)
    out[:, :w_kIO.shape[1]] = w_kIO
    return out


def quantize_stack(n: int, get_w, get_gram, spec: QuantSpec, layout: str, leaf_shape: tuple, dtype,
                   pad_ok: bool = False, what: str = "weight", step=None) -> tuple[Quantized, float, float]:
    """(Quantized leaf, ||X (W - Ŵ)||^2, ||X W||^2) of n same-shaped items, streamed: get_w(i, j) gives
    items i..j-1 as float32 [j - i, d_in, d_out] and get_gram(i) item i's gram (None: plain norms),
    each read when its chunk runs (RTN: one item at a time; GPTQ: gptq's vmapped chunks). A chunk's
    codes are packed into the output and its error measured on its own dequantized weights before
    the next chunk is read, so no float copy of the whole stack is ever made. rows = d_in, or with
    pad_ok, d_in padded with zero rows to whole groups (the padded copy is made only then)."""
    d_in, d_out = jax.eval_shape(lambda x: to_2d(layout, x), jax.ShapeDtypeStruct(tuple(leaf_shape), dtype)).shape
    rows = _rows(d_in, spec, pad_ok, what)
    n_groups = 1 if spec.group is None else rows // spec.group
    packed = host.empty((n, rows // 2 if spec.bits == 4 else rows, d_out), np.uint8)
    scale = host.empty((n, n_groups, d_out), jnp.dtype(dtype))
    zero = None if spec.sym else host.empty((n, n_groups, d_out), np.uint8)
    e2 = r2 = 0.0

    def put(i0, i1, q, s, z, ws, gs):
        nonlocal e2, r2
        part = make(q, s, None if spec.sym else z, spec.bits, spec.group, layout, leaf_shape, d_in, dtype)
        packed[i0:i1], scale[i0:i1] = np.asarray(part.packed), np.asarray(part.scale)
        if zero is not None:
            zero[i0:i1] = np.asarray(part.zero)
        for j in range(i1 - i0):  # the error report: one item dequantized at a time
            e, r = _rel_error(ws[j], np.asarray(part[j].dense_2d()), gs[j])
            e2, r2 = e2 + e, r2 + r
        if step is not None:
            step(i1 - i0)

    if spec.method == "rtn" or get_gram is None:
        for i in range(n):
            w = np.asarray(get_w(i, i + 1), np.float32)
            q, s, z = P.rtn(jnp.asarray(_padded(w, rows)), spec.bits, spec.group, spec.sym)
            put(i, i + 1, q, s, z, w, [None if get_gram is None else get_gram(i)])
            del w, q, s, z
    else:
        held = {}  # the running chunk's weights and grams, for its error report

        def get(idx):
            i0, i1 = idx[0], max(idx) + 1  # a chunk is a range, the last one padded with repeats
            w = np.asarray(get_w(i0, i1), np.float32)
            held.clear()
            held.update({i: (w[i - i0], get_gram(i)) for i in range(i0, i1)})
            pad = ((0, rows - d_in), (0, rows - d_in))
            h = np.stack([np.pad(np.asarray(held[i][1], np.float32), pad) for i in idx])
            w = _padded(w, rows)
            if len(idx) > i1 - i0:
                w = np.concatenate([w, np.repeat(w[-1:], len(idx) - (i1 - i0), axis=0)])
            return w, h

        for i0, i1, q, s, z in gptq_chunks(n, (rows, d_out), get, spec.bits, spec.group, spec.sym, spec.damp,
                                           spec.act_order):
            put(i0, i1, q, s, z, [held[i][0] for i in range(i0, i1)], [held[i][1] for i in range(i0, i1)])
            held.clear()
            del q, s, z
    q = Quantized(host.adopt(packed), host.adopt(scale), None if zero is None else host.adopt(zero), spec.bits,
                  spec.group, layout,
                  tuple(leaf_shape), int(d_in))
    return q, e2, r2


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
    """Gram of a head-sharing unit's input, summed over the (layer, unit) pairs reading it (one
    layer's gram read at a time). q/k/v read the whole attention input; o reads the unit's own
    heads of the attention output."""
    if grams is None:
        return None
    g = grams[TYPES[t][1]]
    if t != "o":
        return sum(np.asarray(g[l], np.float64) for l, _ in pairs)
    w = cfg.groups * cfg.head_dim
    return sum(np.asarray(g[l], np.float64)[k * w:(k + 1) * w, k * w:(k + 1) * w] for l, k in pairs)


def _free(*arrays) -> None:
    """Delete the buffers of quantized weights (consume): their dense and quantized forms never coexist."""
    for x in arrays:
        if isinstance(x, jax.Array):
            x.delete()


def _quantize_leaf(leaf, t, cfg, grams, spec, acc, bar, consume: bool = False):
    L = cfg.n_layers
    dt = leaf.rows.dtype if isinstance(leaf, Bank) else leaf.coef.dtype if isinstance(leaf, Factored) else leaf.dtype
    if isinstance(leaf, Bank):  # head sharing: one quantized weight per bank row
        layout = {"q": "q_unit", "o": "o_unit"}.get(t, "2d")
        index = np.asarray(leaf.index)
        rows = leaf.rows
        q, e2, r2 = quantize_stack(
            rows.shape[0], lambda i, j: to_2d(layout, rows[i:j]),
            None if grams is None else lambda u: _unit_gram(grams, t, cfg, list(zip(*np.nonzero(index == u)))),
            spec, layout, tuple(rows.shape[1:]), dt, what=f"{t} bank rows", step=bar.update)
        acc.add(f"{t}.rows", rows, q, e2, r2)
        if consume:
            _free(rows)
        # replace, not Bank(...): a CorrectedBank (data-aware sharing) keeps its d x d corrections
        return dataclasses.replace(leaf, rows=q)
    if isinstance(leaf, Factored):  # the shared basis first, then each layer's coefficients against it
        index = np.asarray(leaf.basis.index)
        b_rows, coef = leaf.basis.rows, leaf.coef
        qb, e2, r2 = quantize_stack(
            b_rows.shape[0], lambda i, j: b_rows[i:j],
            None if grams is None else lambda gi: _gram(grams, t, np.flatnonzero(index == gi)),
            spec, "2d", tuple(b_rows.shape[1:]), dt, what=f"{t} basis", step=bar.update)
        acc.add(f"{t}.basis", b_rows, qb, e2, r2)
        b_hat = {}  # one dequantized basis row (float64) at a time: the layers of a group are consecutive

        def coef_gram(l):
            gi = int(index[l])
            if gi not in b_hat:
                b_hat.clear()
                b_hat[gi] = np.asarray(qb[gi].dense_2d(), np.float64)
            return b_hat[gi].T @ _gram(grams, t, [l]) @ b_hat[gi]

        qc, e2, r2 = quantize_stack(L, lambda i, j: coef[i:j], None if grams is None else coef_gram, spec, "2d",
                                    tuple(coef.shape[1:]), dt, pad_ok=True, what=f"{t} coefficients", step=bar.update)
        acc.add(f"{t}.coef", coef, qc, e2, r2)
        if consume:
            _free(b_rows, coef)
        return Factored(Bank(qb, leaf.basis.index), qc, leaf.layout, leaf.leaf_shape)
    # a dense leaf [L, ...], one layer at a time
    q, e2, r2 = quantize_stack(L, lambda i, j: to_2d(t, leaf[i:j]),
                               None if grams is None else lambda l: _gram(grams, t, [l]),
                               spec, t, tuple(leaf.shape[1:]), dt, what=f"{t} (d_in {dims(cfg, t)[0]})",
                               step=bar.update)
    acc.add(t, leaf, q, e2, r2)
    if consume:
        _free(leaf)
    return q


def types_present(cfg: ModelConfig) -> list[str]:
    return [t for t in TYPES if t != "gate" or cfg.gated_mlp]


def check_model(params, cfg: ModelConfig, spec: QuantSpec) -> None:
    """Refuse before any work: an already quantized model, a group that does not divide a dense row."""
    if quantized_paths(params):
        raise P.QuantError("the model is already quantized (quantize its unquantized source instead)")
    todo = quantized_types(cfg, spec)
    for t in todo:
        leaf = get_type(params.layers, t)
        if getattr(leaf, "quantizable", True) is False:  # a kind that says so (per-layer MLP widths)
            raise P.QuantError(f"{t} is {type(leaf).__name__} ({leaf.quantizable_why}), which quantization does "
                               "not pack yet")
    for t in todo:  # a basis' coefficients (rank rows) are padded to whole groups instead
        P.check_rows(dims(cfg, t)[0], spec.group, f"{t} (d_in {dims(cfg, t)[0]})")


def quantize_params(params, cfg: ModelConfig, spec: QuantSpec, grams: dict | None = None, progress: bool = True,
                    consume: bool = False):
    """(quantized params, report). grams: needed by GPTQ (calibrate()'s); RTN ignores them. A type is
    quantized one layer (bank row, basis row; GPTQ: one vmapped chunk) at a time. consume: delete each
    quantized weight's buffer once its type is done (the caller's `params` become unusable), so the
    dense and quantized weights of a type never coexist."""
    spec.check()
    if spec.method == "gptq" and grams is None:
        raise P.QuantError("GPTQ needs calibration grams")
    check_model(params, cfg, spec)
    t0 = time.perf_counter()
    bytes_before = param_bytes(params)
    todo = quantized_types(cfg, spec)
    total = 0
    for t in todo:
        leaf = get_type(params.layers, t)
        total += (leaf.rows.shape[0] if isinstance(leaf, Bank) else
                  leaf.basis.rows.shape[0] + cfg.n_layers if isinstance(leaf, Factored) else cfg.n_layers)
    acc, new = _Acc(), {}
    with tqdm(total=total, desc=f"{spec.method} int{spec.bits}", unit="matrix", leave=False,
              disable=not progress) as bar:
        for t in todo:
            new[t] = _quantize_leaf(get_type(params.layers, t), t, cfg, grams, spec, acc, bar, consume)
            jax.block_until_ready(jax.tree_util.tree_leaves(new[t]))
    out = set_types(params, new)
    return out, report(params, out, acc.parts, spec, time.perf_counter() - t0, bytes_before)


def kind_of(leaf) -> str:
    if isinstance(leaf, Bank):
        return "sharing"
    if isinstance(leaf, Factored):
        return "basis"
    return "dense"


def report(before, after, parts: dict, spec: QuantSpec, seconds: float, bytes_before: int | None = None) -> dict:
    """Bytes before/after per kind (dense, sharing, basis) and per part, and the whole model.
    bytes_before: the model's bytes taken before its weights were consumed."""
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
            "types": sorted({name.split(".")[0] for name in parts}, key=list(TYPES).index),
            "act_order": spec.act_order,
            "bytes_before": param_bytes(before) if bytes_before is None else bytes_before, "bytes_after": param_bytes(after),
            "linear_bytes_before": lin_b, "linear_bytes_after": lin_a, "per_kind": per_kind, "per_part": parts,
            "kinds_before": sorted({type(x).__name__ for x in compressed_leaves(before)}),
            "seconds": seconds}
