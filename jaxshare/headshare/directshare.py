"""DirectShare (paper Algorithm 1, docs/methods.md §1) with the reference code's defects fixed.

Every unit of layer l >= 1 has one candidate partner: its most similar unit in layers < l.
The N = round(ratio * L * K) best-scoring candidates are selected. Selected units point to
their partners; pointers form a forest (partners are always earlier), and each unit reads
its tree's root, so exactly N units stop owning weights, whatever the chains and fan-in.
"""
from __future__ import annotations

import math

import numpy as np

from jaxshare.core.config import ModelConfig
from jaxshare.core.params import Params, count_params, param_bytes
from jaxshare.headshare.sharing import FIELDS, KEEP, MATRICES, SharingError, compact_params, index_of, share
from jaxshare.headshare.similarity import best_partners, check_match, scored_functions


def n_units(ratio: float, cfg: ModelConfig) -> int:
    """N = round(ratio * L * K), checked against the units that have a candidate."""
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and 0 <= ratio < 1):
        raise SharingError(f"ratio must be in [0, 1), got {ratio}")
    total = cfg.n_layers * cfg.n_kv_heads
    n = int(round(ratio * total))
    candidates = (cfg.n_layers - 1) * cfg.n_kv_heads  # layer 0 has no earlier layer to match
    if n > candidates:
        raise SharingError(f"ratio {ratio} asks for {n} of {total} units, but only {candidates} units "
                           f"(those outside layer 0) have an earlier partner")
    return n


def select(score_LK: np.ndarray, partner_LK: np.ndarray, n: int) -> np.ndarray:
    """Boolean [L, K]: the n candidates with the highest scores (ties broken by unit order)."""
    s = score_LK.ravel()
    order = np.lexsort((np.arange(s.size), -np.where(np.isfinite(s), s, -np.inf)))
    chosen = np.zeros(s.size, bool)
    chosen[order[:n]] = True
    if n and not np.all(np.isfinite(s[chosen])):
        raise SharingError("more units selected than have an earlier partner")
    return chosen.reshape(score_LK.shape) & (partner_LK >= 0)


def forest_roots(selected_LK: np.ndarray, partner_LK: np.ndarray) -> np.ndarray:
    """[L, K] flat unit id each unit reads: its own if unselected, else its partner's root."""
    sel, par = selected_LK.ravel(), partner_LK.ravel()
    roots = np.arange(sel.size, dtype=np.int32)
    for u in range(sel.size):  # (layer, unit) order: a partner's root is final before it is read
        if sel[u]:
            if par[u] >= u:
                raise SharingError(f"unit {u} points to unit {par[u]}, which is not in an earlier layer")
            roots[u] = roots[par[u]]
    return roots.reshape(selected_LK.shape)


def plan(params: Params, cfg: ModelConfig, ratio: float, match: str = "qk", mesh=None, found: dict | None = None,
         n: int | None = None) -> dict:
    """The DirectShare decision, per matrix type: roots [L, K], selected, score, partner.
    `found` (best_partners' result) and `n` (units to tie, instead of the ratio's) let a caller
    that tries several unit counts search the partners once."""
    check_match(match)
    n = n_units(ratio, cfg) if n is None else n
    found = best_partners(params, match, mesh=mesh) if found is None else found
    per_func = {}
    for f, r in found.items():
        sel = select(r["score"], r["partner"], n)
        per_func[f] = {"roots": forest_roots(sel, r["partner"]), "selected": sel, **r}
    funcs = scored_functions(match)
    # One shared assignment for q, k and v, except `separate`, which decides each on its own.
    by_matrix = {m: per_func[m if match == "separate" else funcs[0]] for m in MATRICES}
    return {"n": n, "ratio": ratio, "match": match, "by_matrix": by_matrix}


def accounting(dense: Params, shared: Params, cfg: ModelConfig) -> dict:
    """Units and parameters removed, as counts and fractions, and the pytree bytes."""
    def qkv(p):
        a = p.layers.attn
        return sum(count_params(getattr(a, n)) for m in MATRICES for n in FIELDS[m])

    total = cfg.n_layers * cfg.n_kv_heads
    freed = {m: total - (int(index_of(shared, m).max()) + 1) for m in MATRICES}
    out = {"units_total": total, "units_freed": max(freed.values()), "units_freed_by_matrix": freed,
           "params_before": count_params(dense), "params_after": count_params(shared),
           "qkv_params_before": qkv(dense), "qkv_params_after": qkv(shared),
           "attn_params_before": count_params(dense.layers.attn), "attn_params_after": count_params(shared.layers.attn),
           "bytes_before": param_bytes(dense), "bytes_after": param_bytes(shared)}
    for key in ("qkv", "attn"):
        b, f = out[f"{key}_params_before"], out[f"{key}_params_after"]
        out[f"{key}_fraction_removed"] = (b - f) / b
    out["model_fraction_removed"] = (out["params_before"] - out["params_after"]) / out["params_before"]
    out["bytes_fraction_removed"] = (out["bytes_before"] - out["bytes_after"]) / out["bytes_before"]
    return out


def direct_share(params: Params, cfg: ModelConfig, ratio: float, match: str = "qk", keep: str = "root",
                 share_o: bool = False, mesh=None) -> tuple[Params, dict]:
    """(shared params, report). The report holds the accounting and the decision."""
    if keep not in KEEP:
        raise SharingError(f"keep must be one of {', '.join(KEEP)}, got {keep!r}")
    decision = plan(params, cfg, ratio, match, mesh)
    roots = {m: d["roots"] for m, d in decision["by_matrix"].items()}
    shared = compact_params(share(params, cfg, roots, keep=keep, share_o=share_o))
    report = {"ratio": ratio, "match": match, "keep": keep, "share_o": share_o, "n": decision["n"],
              **accounting(params, shared, cfg)}
    return shared, {"report": report, "decision": decision}
