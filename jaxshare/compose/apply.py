"""Carry out a plan on one model: every step in order, one calibration pass, one accounting.

Head sharing (Banks on q/k/v), Basis Sharing (Factored types), fewer layers (Inheritune) and
quantization live in one params tree. Each step is its method's `apply` (jaxshare.methods), which
rewrites only the weights it claims (plan.py refuses overlaps) and leaves every other leaf, dense or
compressed, as it found it; quantization comes last and packs whatever the earlier steps left.

Calibration grams are collected once, on the model the plan starts from, for the steps that need
them (basis, data-aware sharing, GPTQ). An inherit step keeps the first k layers, whose inputs are
exactly those of the full model's first k layers, so the grams are sliced, not recollected. After a
share step the later layers' inputs change slightly; the grams of the starting model are used
anyway (one pass, as the plan promises).
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from jaxshare.basis.factor import Factored
from jaxshare.compose.plan import Plan, PlanError, check_against
from jaxshare.core.bank import is_bank
from jaxshare.core.compressed import is_compressed
from jaxshare.core.matrices import TYPES, get_type
from jaxshare.core.params import count_params, param_bytes
from jaxshare.errors import JaxshareError
from jaxshare.io.load import Model


def type_accounting(params, cfg) -> dict:
    """{type: {form, params}} for every linear weight type: dense, shared (bank), factored, or another
    kind by its class name (quantized)."""
    out = {}
    for t in TYPES:
        leaf = get_type(params.layers, t)
        if leaf is None:
            continue
        form = ("factored" if isinstance(leaf, Factored) else "shared" if is_bank(leaf)
                else type(leaf).__name__.lower() if is_compressed(leaf) else "dense")
        out[t] = {"form": form, "params": count_params(leaf)}
    return out


def accounting(before, after, cfg_before, cfg_after) -> dict:
    pb, pa = count_params(before), count_params(after)
    return {"params_before": pb, "params_after": pa, "params_removed": pb - pa, "model_fraction_removed": 1 - pa / pb,
            "bytes_before": param_bytes(before), "bytes_after": param_bytes(after),
            "bytes_fraction_removed": 1 - param_bytes(after) / param_bytes(before),
            "layers_before": cfg_before.n_layers, "layers_after": cfg_after.n_layers,
            "per_type": type_accounting(after, cfg_after)}


def _slice_grams(grams, k: int):
    return None if grams is None else {name: g[:k] for name, g in grams.items()}


def run_plan(model: Model, plan: Plan, grams=None) -> tuple[Model, dict]:
    """(model, report): every step of the plan in order. grams: calibration grams of the starting
    model when plan.needs_grams(). The model's metadata extra keeps the source's entries and gets
    each method's details (sharing, basis, quant, inherited) and the plan."""
    check_against(plan, model.cfg)
    if plan.needs_grams() and grams is None:
        raise PlanError("this plan needs calibration grams (a basis step, data-aware sharing or GPTQ)")
    start = model
    steps = []
    for i, s in enumerate(plan.steps, 1):
        t0 = time.perf_counter()
        before = model
        try:
            if getattr(s.impl, "needs_teacher", False):  # healing distills from the plan's starting model
                model, rep = s.impl.apply(model, s.opts, grams, teacher=start)
            else:
                model, rep = s.impl.apply(model, s.opts, grams)
        except JaxshareError as e:  # what the method refused, named by its step
            raise PlanError(f"step {i} ({s.method}): {e}") from None
        if model.cfg.n_layers != before.cfg.n_layers:
            grams = _slice_grams(grams, model.cfg.n_layers)
        if hasattr(s.impl, "carry_grams"):  # a width change (prune): later steps read the kept channels' grams
            grams = s.impl.carry_grams(s.opts, before.cfg, grams)
        # the method's own "method" (gptq, svd-llm) is in the options; the step names the plan's method
        rep = {"step": i, "method": s.method, "options": s.to_dict()[s.method],
               **{k: v for k, v in rep.items() if k not in ("step", "method", "options")},
               "model": accounting(before.params, model.params, before.cfg, model.cfg),
               "seconds": time.perf_counter() - t0}
        steps.append(_jsonable(rep))
    extra = {**model.extra, "plan": plan.to_dict()}
    model = dataclasses.replace(model, meta={**model.meta, "extra": extra})
    return model, {"steps": steps, "model": accounting(start.params, model.params, start.cfg, model.cfg)}


def apply_plan(params, cfg, plan: Plan, grams=None, extra: dict | None = None):
    """(params, cfg, report, extra): run_plan on a bare params tree. extra: the source checkpoint's
    metadata extra (its method manifests are kept for the kinds still present)."""
    model, report = run_plan(Model(cfg, params, meta={"extra": dict(extra or {})}), plan, grams)
    return model.params, model.cfg, report, model.extra


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
