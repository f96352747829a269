"""Data-aware DirectShare (issue 13, docs/methods.md §4): merges and corrections fitted on calibration
inputs.

The units tied are DirectShare's (same partner search, same forest); what a tied group stores
changes. C_l = X_l^T X_l is the gram of layer l's attention input (Basis Sharing's calibration
`attn_in`; the same input feeds q, k and v), so a unit's output error under C is its
calibration-set error ||X (W' - W)||^2.

- keep="data": a group's row is W* = argmin sum_m ||X_m (W - W_m)||^2 = (sum C_m)^-1 sum C_m W_m,
  written W_0 + (sum C_m + lambda I)^-1 sum C_m (W_m - W_0) with W_0 the root: the same solution,
  a ridge that pulls toward the root rather than toward zero, and identical units give W_0 exactly.
- correct="qk": each tied unit j reading a row that is not its own gets a d x d map per query
  head and for its key, M_j = argmin ||X_j (W* M - W_j)||, applied before RoPE (exact).
- correct="qkv" also folds the value path into the unit's own W_o at no parameter cost: values
  enter attention linearly, so v_j ~ v* R_j gives W_o,j <- R_j W_o,j.

The corrections are counted: `--ratio` stays the share of units tied; `net_ratio` instead ties as
many units as it takes to free at least the parameters keep=mean frees at that ratio.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxshare.core.bank import Bank, is_bank
from jaxshare.core.compressed import is_compressed
from jaxshare.core.config import ModelConfig
from jaxshare.headshare.corrected import CorrectedBank
from jaxshare.core.params import Params, replace_leaves
from jaxshare.headshare.directshare import accounting, n_units, plan
from jaxshare.headshare.sharing import FIELDS, MATRICES, SharingError, compact_params, dense_fields, fields_of, share
from jaxshare.headshare.names import CORRECT, KEEP
from jaxshare.headshare.similarity import best_partners, check_match

RIDGE = 1e-6  # relative to the mean eigenvalue: conditions the solves, leaves fits at ~1e-6 relative


def check_options(keep: str, correct: str, grams, share_o: bool = False) -> None:
    if keep not in KEEP:
        raise SharingError(f"keep must be one of {', '.join(KEEP)}, got {keep!r}")
    if correct not in CORRECT:
        raise SharingError(f"correct must be one of {', '.join(CORRECT)}, got {correct!r}")
    if (keep == "data" or correct != "none") and grams is None:
        raise SharingError(f"keep={keep}, correct={correct} fits on calibration data: give calibration grams (--calib)")
    if correct == "qkv" and share_o:
        raise SharingError("correct=qkv folds each unit's values into its own W_o, which share_o ties; "
                           "use correct=qk with share_o")


def attn_grams(grams, cfg: ModelConfig) -> np.ndarray:
    """[L, D, D] float64 attention-input grams from calibrate()'s dict (or the array itself)."""
    c = grams["attn_in"] if isinstance(grams, dict) else grams
    c = np.asarray(c, np.float64)
    if c.shape != (cfg.n_layers, cfg.d_model, cfg.d_model):
        raise SharingError(f"attention-input grams have shape {c.shape}, expected "
                           f"{(cfg.n_layers, cfg.d_model, cfg.d_model)} for this model")
    return c


def _ridged(a: np.ndarray) -> np.ndarray:
    lam = RIDGE * max(float(np.trace(a)) / a.shape[0], np.finfo(np.float64).tiny)
    return a + lam * np.eye(a.shape[0])


def merge(ws: list[np.ndarray], cs: list[np.ndarray]) -> np.ndarray:
    """W* of a tied group: ws [D, n] per member (root first), cs their [D, D] grams."""
    s = sum(cs)
    rhs = sum(c @ (w - ws[0]) for w, c in zip(ws[1:], cs[1:]))
    if not np.any(rhs):
        return ws[0].copy()
    return ws[0] + np.linalg.solve(_ridged(s), rhs)


def fit_map(w_star: np.ndarray, w: np.ndarray, c: np.ndarray) -> np.ndarray:
    """M [d, d] minimizing ||X (W* M - W)|| under C = X^T X: I + (A + lambda)^-1 (B - A)."""
    a = w_star.T @ c @ w_star
    b = w_star.T @ c @ w
    d = w_star.shape[1]
    if np.array_equal(a, b):
        return np.eye(d)
    return np.eye(d) + np.linalg.solve(_ridged(a), b - a)


def _unit_2d(w_unit: np.ndarray) -> np.ndarray:
    """A unit's weight as [D, n]: q [G, D, d] -> [D, G*d]; k/v [D, d] as is."""
    return w_unit.transpose(1, 0, 2).reshape(w_unit.shape[1], -1) if w_unit.ndim == 3 else w_unit


def _from_2d(w2: np.ndarray, like: tuple) -> np.ndarray:
    return w2.reshape(like[1], like[0], like[2]).transpose(1, 0, 2) if len(like) == 3 else w2


def _groups(index_LK: np.ndarray) -> list[np.ndarray]:
    """Flat unit ids reading each bank row (ascending: the first is the root)."""
    flat = index_LK.ravel()
    return [np.flatnonzero(flat == r) for r in range(int(flat.max()) + 1)]


def corrected_units(index_LK: np.ndarray, keep: str) -> list[int]:
    """Units whose row is not their own weights: every member of a group of 2+, the root
    excepted under keep=root (it reads exactly its weights)."""
    out = []
    for g in _groups(index_LK):
        if len(g) > 1:
            out += [int(u) for u in (g[1:] if keep == "root" else g)]
    return sorted(out)


def _data_rows(bank: Bank, dense_LK_: np.ndarray, C: np.ndarray, K: int) -> np.ndarray:
    rows = np.asarray(bank.rows, np.float64).copy()
    flat = dense_LK_.reshape((-1,) + dense_LK_.shape[2:])
    for r, g in enumerate(_groups(np.asarray(bank.index))):
        if len(g) > 1:
            w = merge([_unit_2d(flat[u]) for u in g], [C[u // K] for u in g])
            rows[r] = _from_2d(w, flat.shape[1:])
    return rows


def _corrections(bank: Bank, dense_LK_: np.ndarray, C: np.ndarray, K: int, units: list[int]) -> np.ndarray:
    """[T, *head, d, d] maps of `units` from their bank row to their own weights."""
    index = np.asarray(bank.index).ravel()
    rows = np.asarray(bank.rows, np.float64)
    flat = dense_LK_.reshape((-1,) + dense_LK_.shape[2:])
    out = []
    for u in units:
        c, ws, w = C[u // K], rows[index[u]], flat[u]
        out.append(np.stack([fit_map(ws[g], w[g], c) for g in range(w.shape[0])]) if w.ndim == 3
                   else fit_map(ws, w, c))
    return np.stack(out)


def _rel_error(dense_LK_: np.ndarray, eff_LK_: np.ndarray, C: np.ndarray, K: int, units: list[int]) -> float | None:
    """sum ||X (W' - W)||^2 / sum ||X W||^2 over `units`: how much of their output the tie loses."""
    if not units:
        return None
    f, e = dense_LK_.reshape((-1,) + dense_LK_.shape[2:]), eff_LK_.reshape((-1,) + eff_LK_.shape[2:])
    num = den = 0.0
    for u in units:
        w, dw, c = _unit_2d(f[u]), _unit_2d(e[u] - f[u]), C[u // K]
        num += float(np.sum(dw * (c @ dw)))
        den += float(np.sum(w * (c @ w)))
    return num / den


def apply_share(params: Params, cfg: ModelConfig, roots: dict[str, np.ndarray], keep: str = "data",
                correct: str = "none", grams=None, share_o: bool = False) -> tuple[Params, dict]:
    """Tie units as `roots` says (per q/k/v, flat dense unit ids) with data-aware rows and
    corrections. Returns (compact shared params, {matrix: calibration error of the tied units})."""
    check_options(keep, correct, grams, share_o)
    wo = params.layers.attn.wo
    if correct == "qkv" and is_compressed(wo) and not is_bank(wo):  # a bank is re-tied from its dense form
        raise SharingError("correct=qkv folds each unit's values into its own W_o, which an earlier step compressed "
                           f"({type(wo).__name__}); use correct=qk, or compress o after sharing")
    # a shared input is tied again from its dense weights; other compressed leaves stay as they are
    params = dense_fields(params, fields_of(MATRICES + (("o",) if share_o or correct == "qkv" else ())))
    base = compact_params(share(params, cfg, roots, keep="mean" if keep == "data" else keep, share_o=share_o))
    if keep != "data" and correct == "none":
        return base, {}
    C, K = attn_grams(grams, cfg), cfg.n_kv_heads
    dense = {m: np.asarray(getattr(params.layers.attn, FIELDS[m][0]), np.float64) for m in MATRICES}
    attn, new, err = base.layers.attn, {}, {}
    for m in MATRICES:
        name = FIELDS[m][0]
        bank = getattr(attn, name)
        if keep == "data":
            bank = Bank(jnp.asarray(_data_rows(bank, dense[m], C, K), bank.rows.dtype), bank.index)
        units = corrected_units(np.asarray(bank.index), keep)
        if m in ("q", "k") and correct != "none" and units:
            ci = np.full(bank.index.shape, -1, np.int32)
            ci.ravel()[units] = np.arange(len(units), dtype=np.int32)
            corr = _corrections(bank, dense[m], C, K, units)
            bank = CorrectedBank(bank.rows, bank.index, jnp.asarray(corr, bank.rows.dtype), jnp.asarray(ci))
        if m == "v" and correct == "qkv" and units:
            R = _corrections(bank, dense[m], C, K, units)  # [T, d, d]: v_j ~ v* R_j
            wo = np.asarray(params.layers.attn.wo, np.float64)
            flat = wo.reshape((-1,) + wo.shape[2:])  # [L*K, G, d, D]
            for t, u in enumerate(units):
                flat[u] = np.einsum("de,geD->gdD", R[t], flat[u])
            new["layers.attn.wo"] = jnp.asarray(flat.reshape(wo.shape), params.layers.attn.wo.dtype)
        new[f"layers.attn.{name}"] = bank
        err[m] = _rel_error(dense[m], np.asarray(bank.dense(), np.float64), C, K, units)
    if correct == "qkv":  # the value path's error: what the folded W_o sees, W*_v R_j vs W_v,j
        v = new["layers.attn.wv"]
        units = corrected_units(np.asarray(v.index), keep)
        eff = np.asarray(v.dense(), np.float64)
        if units:
            R = _corrections(v, dense["v"], C, K, units)
            flat = eff.reshape((-1,) + eff.shape[2:])
            for t, u in enumerate(units):
                flat[u] = flat[u] @ R[t]
        err["v"] = _rel_error(dense["v"], eff, C, K, units)
    return replace_leaves(base, new), err


def _unit_params(params: Params, cfg: ModelConfig) -> dict[str, int]:
    """Parameters one unit owns per matrix (weights and biases)."""
    attn, U = params.layers.attn, cfg.n_layers * cfg.n_kv_heads
    out = {}
    for m in MATRICES:
        out[m] = sum(int(np.prod(getattr(attn, f).shape)) for f in FIELDS[m] if getattr(attn, f) is not None) // U
    return out


def correction_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameters of one unit's correction: G query-head maps, one key map."""
    return {"q": cfg.groups * cfg.head_dim ** 2, "k": cfg.head_dim ** 2, "v": 0}


def net_freed(roots: dict[str, np.ndarray], unit_p: dict, corr_p: dict, keep: str, correct: str) -> int:
    """Parameters a tie frees, its corrections subtracted (share_o's W_o not included)."""
    total = 0
    for m in MATRICES:
        r = np.asarray(roots[m])
        _, index = np.unique(r.ravel(), return_inverse=True)
        total += (r.size - len(np.unique(r))) * unit_p[m]
        if correct != "none":
            total -= len(corrected_units(index.reshape(r.shape), keep)) * corr_p[m]
    return total


def units_for_net(params: Params, cfg: ModelConfig, net_ratio: float, keep: str, correct: str, match: str,
                  found: dict) -> tuple[int, int, int]:
    """(units to tie, parameters keep=mean frees at net_ratio, net parameters freed): the fewest
    units whose net saving reaches keep=mean's at net_ratio."""
    n0 = n_units(net_ratio, cfg)
    unit_p, corr_p = _unit_params(params, cfg), correction_params(cfg)

    def roots(n):
        return {m: d["roots"] for m, d in plan(params, cfg, net_ratio, match, found=found, n=n)["by_matrix"].items()}

    target = net_freed(roots(n0), unit_p, corr_p, "mean", "none")
    candidates = (cfg.n_layers - 1) * cfg.n_kv_heads
    for n in range(n0, candidates + 1):
        got = net_freed(roots(n), unit_p, corr_p, keep, correct)
        if got >= target:
            return n, target, got
    raise SharingError(f"no unit count frees {target} net parameters (keep={keep}, correct={correct}); "
                       f"even all {candidates} tieable units free less")


def data_share(params: Params, cfg: ModelConfig, ratio: float | None, keep: str = "data", correct: str = "none",
               grams=None, match: str = "qk", share_o: bool = False, net_ratio: float | None = None,
               mesh=None) -> tuple[Params, dict]:
    """(shared params, {"report": ..., "decision": ...}). Give `ratio` (share of units tied) or
    `net_ratio` (tie enough units to free keep=mean's net parameters at that ratio)."""
    check_options(keep, correct, grams, share_o)
    check_match(match)
    if (ratio is None) == (net_ratio is None):
        raise SharingError("give exactly one of ratio and net_ratio")
    found = best_partners(params, match, mesh=mesh)
    target = None
    if net_ratio is not None:
        n, target, _ = units_for_net(params, cfg, net_ratio, keep, correct, match, found)
    else:
        n = n_units(ratio, cfg)
    decision = plan(params, cfg, ratio if ratio is not None else net_ratio, match, found=found, n=n)
    roots = {m: d["roots"] for m, d in decision["by_matrix"].items()}
    shared, err = apply_share(params, cfg, roots, keep, correct, grams, share_o)
    acc = accounting(params, shared, cfg)
    total = cfg.n_layers * cfg.n_kv_heads
    corr = sum(int(np.prod(getattr(shared.layers.attn, f).corr.shape)) for f in ("wq", "wk")
               if isinstance(getattr(shared.layers.attn, f), CorrectedBank))
    report = {"ratio": n / total, "net_ratio": net_ratio, "match": match, "keep": keep, "correct": correct,
              "share_o": share_o, "n": n, "units_tied": n, **acc, "correction_params": corr,
              "net_params_freed": acc["params_before"] - acc["params_after"],
              "calib_rel_error": err}
    if net_ratio is not None:
        report.update(net_target_params=target, extra_units=n - n_units(net_ratio, cfg))
    return shared, {"report": report, "decision": decision}
