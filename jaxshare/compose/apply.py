"""Carry out a plan on one params tree: every step in order, one calibration pass, one accounting.

Head sharing (Banks on q/k/v), Basis Sharing (Factored types) and fewer layers (Inheritune) live in
one params tree; each step only touches the weights it claims (plan.py refuses overlaps), and the
compressed leaves an earlier step made are carried through a later one unchanged.

Calibration grams are collected once, on the model the plan starts from, for the steps that need
them (basis, and data-aware sharing). An inherit step keeps the first k layers, whose inputs are
exactly those of the full model's first k layers, so the grams are sliced, not recollected. After a
share step the later layers' inputs change slightly; the grams of the starting model are used
anyway (one pass, as the plan promises).
"""
from __future__ import annotations

import time

import numpy as np

from jaxshare.basis.factor import TYPES, Factored, default_types, dims, get_type, set_types, type_rank
from jaxshare.compose.plan import Plan, PlanError, check_against
from jaxshare.core.bank import is_bank
from jaxshare.core.compressed import is_compressed
from jaxshare.core.params import count_params, param_bytes


def type_accounting(params, cfg) -> dict:
    """{type: {form, params}} for every linear weight type: dense, shared (bank) or factored."""
    out = {}
    for t in TYPES:
        leaf = get_type(params.layers, t)
        if leaf is None:
            continue
        form = "factored" if isinstance(leaf, Factored) else "shared" if is_bank(leaf) else "dense"
        out[t] = {"form": form, "params": count_params(leaf)}
    return out


def accounting(before, after, cfg_before, cfg_after) -> dict:
    pb, pa = count_params(before), count_params(after)
    return {"params_before": pb, "params_after": pa, "params_removed": pb - pa, "model_fraction_removed": 1 - pa / pb,
            "bytes_before": param_bytes(before), "bytes_after": param_bytes(after),
            "bytes_fraction_removed": 1 - param_bytes(after) / param_bytes(before),
            "layers_before": cfg_before.n_layers, "layers_after": cfg_after.n_layers,
            "per_type": type_accounting(after, cfg_after)}


def _carry(before, after, keep_types) -> object:
    """`after` with the compressed leaves of `before` (types a share step did not claim) put back:
    head sharing materializes its input, which must not undo an earlier basis step."""
    new = {t: get_type(before.layers, t) for t in keep_types
           if is_compressed(get_type(before.layers, t)) and not is_compressed(get_type(after.layers, t))}
    return set_types(after, new) if new else after


def _share_step(params, cfg, o: dict, grams):
    from jaxshare.headshare.datashare import data_share
    from jaxshare.headshare.directshare import direct_share

    if o["keep"] == "data" or o["correct"] != "none":  # data-aware: the plan's one calibration pass
        shared, info = data_share(params, cfg, o["ratio"], o["keep"], o["correct"], grams, o["match"], o["share_o"])
    else:
        shared, info = direct_share(params, cfg, o["ratio"], o["match"], o["keep"], o["share_o"])
    claimed = {"q", "k", "v"} | ({"o"} if o["share_o"] else set())
    shared = _carry(params, shared, [t for t in TYPES if t not in claimed])
    return shared, info["report"]


def basis_ranks(cfg, o: dict, types: list[str]) -> tuple[dict, dict]:
    """(ranks, group sizes) of a basis step's types on a model of cfg.n_layers layers."""
    from jaxshare.basis.factor import groups_of

    shared_default, _ = default_types(cfg)
    shared = set(o.get("shared", shared_default))
    L, ranks, sizes = cfg.n_layers, {}, {}
    for t in types:
        n = o["group_size"] if (t in shared and o["method"] == "basis") else 1
        sizes[t] = n
        if "ranks" in o:
            ranks[t] = o["ranks"][t]
        else:
            r = o["ratio"] if "ratio" in o else o["ratios"][t]
            d_in, d_out = dims(cfg, t)
            ranks[t] = max(1, type_rank(L, len(groups_of(L, n)), d_in, d_out, r))
    return ranks, sizes


def _basis_step(params, cfg, o: dict, types: list[str], grams):
    from jaxshare.basis.compress import compress

    if not types:
        return params, {"types": [], "note": "every ratio is 0: nothing compressed"}
    for t in types:
        if is_compressed(get_type(params.layers, t)):
            raise PlanError(f"basis: {t} is already compressed in the input model")
    ranks, sizes = basis_ranks(cfg, o, types)
    shared = [t for t in types if sizes[t] > 1]
    private = [t for t in types if sizes[t] == 1]
    # compress() checks its ratio even when ranks decide; the manifest records the per-type ranks
    out, manifest, rep = compress(params, cfg, grams, 0.5, o["group_size"], o["method"], shared, private,
                                  ranks=ranks, progress=False)
    rep.pop("requested_ratio", None)
    rep["ranks"] = ranks
    return out, rep


def _slice_grams(grams, k: int):
    return None if grams is None else {name: g[:k] for name, g in grams.items()}


def apply_plan(params, cfg, plan: Plan, grams=None, extra: dict | None = None):
    """(params, cfg, report, extra): every step of the plan in order. grams: calibration grams of
    the starting model when plan.needs_grams(); extra: the source checkpoint's metadata extra
    (its method manifests are kept for the kinds still present)."""
    from jaxshare.inheritune.inherit import inherit

    check_against(plan, cfg)
    if plan.needs_grams() and grams is None:
        raise PlanError("this plan needs calibration grams (a basis step, or data-aware sharing)")
    start, start_cfg = params, cfg
    extra = dict(extra or {})
    info = {}
    steps = []
    for i, s in enumerate(plan.steps, 1):
        t0 = time.perf_counter()
        before, cfg_before = params, cfg
        if s.method == "inherit":
            params, cfg, extra = inherit(params, cfg, s.options["layers"], extra)
            grams = _slice_grams(grams, cfg.n_layers)
            rep = {"layers": cfg.n_layers, "from_layers": cfg_before.n_layers}
        elif s.method == "share":
            params, rep = _share_step(params, cfg, s.options, grams)
            info["sharing"] = {k: s.options[k] for k in ("ratio", "match", "keep", "correct", "share_o")}
        else:
            params, rep = _basis_step(params, cfg, s.options, s.types, grams)
            prev = info.get("basis", {}).get("steps", [])
            info["basis"] = {"method": s.options["method"], "steps": prev + [dict(s.options)]}
        rep = {"step": i, "method": s.method, "options": s.to_dict()[s.method], **rep,
               "model": accounting(before, params, cfg_before, cfg), "seconds": time.perf_counter() - t0}
        steps.append(_jsonable(rep))
    extra = {k: v for k, v in extra.items() if k not in ("sharing", "basis")}
    extra.update(info)
    extra["plan"] = plan.to_dict()
    report = {"steps": steps, "model": accounting(start, params, start_cfg, cfg)}
    return params, cfg, report, extra


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x
