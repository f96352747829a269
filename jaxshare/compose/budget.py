"""A budgeted plan: per-type compression chosen to meet a whole-model parameter target.

1. Sensitivity (compose/sensitivity.py): the loss increase of compressing each candidate alone at a
   few ratios (head sharing of the q/k/v units; Basis Sharing of each weight type; dropping the
   last layers; width pruning of MLP channels and of KV groups, compensated: compose/candidates.py),
   and its cost curve, the lower convex envelope of the measured points.
2. Allocation: greedy in the smallest steps the methods have (one unit, one rank, one layer, one
   MLP channel or one KV group in every layer): each step takes the move with the least predicted
   loss increase per parameter freed, until the exact parameter count (`Budget.params`,
   compose/accounting.py, equal to the built model's) is at or below the target. The target is
   therefore met within one step. Head sharing and Basis Sharing of q/k/v exclude each other, MLP
   pruning and Basis Sharing of gate/up/down, KV-group pruning and both head sharing and Basis
   Sharing of q/k/v/o; so allocations run with and without each (share + basis elsewhere; basis
   everywhere; ...; and each method alone) and the lowest predicted loss wins. The pruning step
   comes first after inherit: it changes d_ff and the head counts.
3. Verification: the plan is applied and its loss measured on held-out windows (sensitivity.verify).

Measuring, the cost model and the accounting are importable from here too, as before the split.
"""
from __future__ import annotations

import math

from jaxshare.basis.factor import TYPES
from jaxshare.compose.accounting import Budget
from jaxshare.compose.candidates import prune_step, variants
from jaxshare.compose.plan import CALIB_DEFAULTS, Plan, PlanError, Step, parse_plan
from jaxshare.compose.sensitivity import cost, envelope, measure_at
from jaxshare.compose.sensitivity import mean_nll, sensitivity, verify  # noqa: F401  (importable from here)
from jaxshare.compose.sensitivity import QUANT_BITS, QUANT_GROUP
from jaxshare.core.params import count_params, param_bytes
from jaxshare.methods.quantize import spec_to_dict
from jaxshare.quant.model import QuantSpec

BUDGET_METHODS = ("share", "basis", "inherit", "prune", "prune-kv", "quantize")


def parse_methods(text: str) -> list[str]:
    names = [x.strip() for x in str(text).split(",") if x.strip()]
    if not names:
        raise PlanError(f"--methods: expected a comma list of {', '.join(BUDGET_METHODS)}")
    for n in names:
        if n not in BUDGET_METHODS:
            raise PlanError(f"--methods: unknown method {n!r}; known: {', '.join(BUDGET_METHODS)}")
    return list(dict.fromkeys(names))


def check_target(target) -> float:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target) \
            or not 0 < target < 1:
        raise PlanError(f"target must be the fraction of the model's parameters kept, in (0, 1) (the CLI's "
                        f"--ratio is 1 - target), got {target}")
    return float(target)


# ---------------------------------------------------------------- allocation

def allocate(budget: Budget, curves: dict, target_params: int, use_share: bool, basis_types: list[str],
             use_inherit: bool, min_layers: int = 1, use_prune: bool = False, use_kv: bool = False,
             unit: str = "params", quant: dict | None = None) -> dict:
    """Greedy allocation; {"layers", "units", "ranks", "channels", "kv_groups", "quant", "params",
    "bytes", "last_step", "predicted"}. use_prune: prune MLP channels (basis_types must then leave
    out gate/up/down); use_kv: prune KV groups, one in every layer per move (use_share must then be
    off and basis_types leave out q/k/v/o). unit "bytes": target_params is a byte count
    (Budget.bytes); quant {"bits", "group", "costs": {type: loss increase}}: a move may also
    quantize one more type at that width (with unit "bytes" only: it removes no parameter)."""
    cfg = budget.cfg
    L, K = cfg.n_layers, cfg.n_kv_heads
    hulls = {c: envelope(p) for c, p in curves.items()}
    qcost = {} if quant is None else quant["costs"]
    k, n, ranks, f, g, qs, last = L, 0, {}, 0, 0, frozenset(), 0

    def size(k, n, ranks, f, g, qs):
        if unit == "params":
            return budget.params(k, n, ranks, f, g)
        return budget.bytes(k, n, ranks, f, g, sorted(qs), quant and quant["bits"], quant and quant["group"])

    def total_cost(k, n, ranks, f, g, qs):
        c = cost(hulls["prune"], f / cfg.d_ff) if f else 0.0
        if g:
            c += cost(hulls["prune-kv"], g / K)
        if n:
            c += cost(hulls["share"], n / (k * K))
        for t, r in ranks.items():
            c += cost(hulls[t], budget.fraction(t, L, r))
        if k < L:
            c += cost(hulls["inherit"], (L - k) / L)
        return c + sum(max(qcost[t], 0.0) for t in qs)  # a gain below zero is noise: never assumed

    # with int4 codes on down (o), its rows must stay whole groups: a pruning move then jumps to
    # the next count that keeps them (size() is None in between)
    span = 1 if quant is None else max(quant["group"] or 1, 2 if quant["bits"] == 4 else 1)

    def stepped(mv, i, limit):
        for j in range(1, span + 1):
            new = list(mv)
            new[i] += j
            if new[i] >= limit:
                return None
            if size(*new) is not None:
                return tuple(new)
        return None

    now_p, now_c = size(k, n, ranks, f, g, qs), 0.0
    while now_p > target_params:
        moves = []
        here = (k, n, ranks, f, g, qs)
        if use_share and "share" in hulls and n + 1 <= (k - 1) * K:
            moves.append((k, n + 1, ranks, f, g, qs))
        if use_prune and "prune" in hulls:
            moves.append(stepped(here, 3, cfg.d_ff))
        if use_kv and "prune-kv" in hulls:
            moves.append(stepped(here, 4, K))
        for t in basis_types:
            if t not in hulls:
                continue
            r = ranks.get(t)
            nr = budget.max_useful_rank(t, k) if r is None else r - 1
            if nr >= 1:
                moves.append((k, n, {**ranks, t: nr}, f, g, qs))
        if use_inherit and "inherit" in hulls and k - 1 >= min_layers and n <= (k - 2) * K:
            moves.append((k - 1, n, ranks, f, g, qs))
        moves += [(k, n, ranks, f, g, qs | {t}) for t in qcost if t not in qs]
        best = None
        for mv in moves:
            p = None if mv is None else size(*mv)
            if p is None or p >= now_p:
                continue
            c = total_cost(*mv)
            score = (c - now_c) / (now_p - p)
            if best is None or score < best[0]:
                best = (score, mv, p, c)
        if best is None:
            word = "parameters" if unit == "params" else "bytes"
            raise PlanError(f"the methods cannot remove that many {word}: the smallest reachable model "
                            f"has {now_p:,} {word}, the target is {target_params:,}")
        _, (k, n, ranks, f, g, qs), p, now_c = best
        last, now_p = now_p - p, p
    if quant is not None:  # a whole type quantized at once can overshoot: give back the costliest fine steps
        k, n, ranks, f, g, now_p, now_c = _refund(budget, size, total_cost, target_params, (k, n, ranks, f, g, qs),
                                                  now_p, now_c)
    return {"layers": k, "units": n, "ranks": dict(ranks), "channels": f, "kv_groups": g,
            "quant": [t for t in TYPES if t in qs], "bits": quant["bits"] if qs else None,
            "group": quant["group"] if qs else None, "params": budget.params(k, n, ranks, f, g),
            "bytes": budget.bytes(k, n, ranks, f, g, sorted(qs), quant and quant["bits"], quant and quant["group"]),
            "unit": unit, "size": now_p, "last_step": last, "predicted": now_c}


def _refund(budget, size, total_cost, target, state, now_p, now_c):
    """Undo the fine steps (a unit, a rank, a channel, a KV group) that save the most predicted loss
    per byte, while the model stays within the target."""
    k, n, ranks, f, g, qs = state
    while True:
        back = [(k, n - 1, ranks, f, g, qs)] if n else []
        back += [(k, n, ranks, f - 1, g, qs)] if f else []
        back += [(k, n, ranks, f, g - 1, qs)] if g else []
        back += [(k, n, {**ranks, t: r + 1}, f, g, qs) for t, r in ranks.items() if r < budget.max_useful_rank(t, k)]
        best = None
        for mv in back:
            p = size(*mv)
            if p is None or p > target or p <= now_p:
                continue
            c = total_cost(*mv)
            gain = (now_c - c) / (p - now_p)
            if c < now_c and (best is None or gain > best[0]):
                best = (gain, mv, p, c)
        if best is None:
            return k, n, ranks, f, g, now_p, now_c
        _, (k, n, ranks, f, g, qs), now_p, now_c = best


def to_plan(alloc: dict, cfg, group_size: int, match: str, keep: str, calibration: dict,
            quant_method: str = "gptq") -> Plan:
    steps = []
    if alloc["layers"] < cfg.n_layers:
        steps.append(Step("inherit", {"layers": alloc["layers"]}))
    if alloc.get("channels") or alloc.get("kv_groups"):
        # before share and basis: it changes d_ff and the head counts (and needs those weights dense)
        steps.append(prune_step(cfg, alloc.get("channels", 0), alloc.get("kv_groups", 0)))
    if alloc["units"]:
        ratio = alloc["units"] / (alloc["layers"] * cfg.n_kv_heads)
        steps.append(Step("share", {"ratio": ratio, "match": match, "keep": keep, "correct": "none",
                                    "share_o": False}))
    if alloc["ranks"]:
        ranks = {t: int(alloc["ranks"][t]) for t in TYPES if t in alloc["ranks"]}
        steps.append(Step("basis", {"group_size": group_size, "method": "basis", "ranks": ranks}, list(ranks)))
    if alloc.get("quant"):  # last: it packs what the steps before it left (bank rows, bases, coefficients)
        spec = QuantSpec(alloc["bits"], alloc["group"], True, quant_method, types=tuple(alloc["quant"]))
        steps.append(Step("quantize", spec_to_dict(spec)))
    if not steps:
        raise PlanError("the target needs no compression")

    plan = Plan(steps, {**CALIB_DEFAULTS, **(calibration or {})})
    parse_plan(plan.to_dict())  # order and overlap checked as a written plan is
    return plan


def check_reachable(params, cfg, target: float, methods, group_size: int = 2, unit: str = "params") -> int:
    """The target's parameter (unit "bytes": byte) count, refused before any measurement when the
    methods cannot reach it."""
    b = Budget.of(params, cfg, group_size)
    whole = count_params(params) if unit == "params" else param_bytes(params)
    goal = int(math.floor(check_target(target) * whole))
    best = math.inf
    widths = [None] + (list(QUANT_BITS) if "quantize" in methods else [])
    for v in variants(methods, b.types()):
        k = (2 if v["share"] and cfg.n_layers > 1 else 1) if v["inherit"] else cfg.n_layers
        n = (k - 1) * cfg.n_kv_heads if v["share"] else 0
        at = (k, n, {t: 1 for t in v["basis"]}, cfg.d_ff - 1 if v["prune"] else 0, cfg.n_kv_heads - 1 if v["kv"] else 0)
        if unit == "params":
            best = min(best, b.params(*at))
            continue
        for bits in widths:
            qs = [] if bits is None else [t for t in b.types()
                                          if b.quantized(t, *at[:2], at[2].get(t), *at[3:], bits, QUANT_GROUP[bits])
                                          is not None]
            best = min(best, b.bytes(*at, qs, bits, bits and QUANT_GROUP[bits]))
    word = "parameters" if unit == "params" else "bytes"
    if best > goal:
        raise PlanError(f"{', '.join(methods)} cannot remove that many {word}: the smallest reachable model "
                        f"has {best:,} {word}, the target is {goal:,} ({target:.3f} of {whole:,})")
    return goal


def budget_plan(params, cfg, target: float, methods, sens, group_size: int = 2, match: str = "qk",
                keep: str = "mean", calibration: dict | None = None, unit: str = "params") -> tuple[Plan, dict]:
    """(plan, details) meeting `target` (fraction of the params kept; unit "bytes": of the bytes)
    from sensitivity curves `sens` (and its "quant" losses when quantization may be used)."""
    target = check_target(target)
    budget = Budget.of(params, cfg, group_size)
    whole = count_params(params) if unit == "params" else param_bytes(params)
    goal = int(math.floor(target * whole))
    widths = [None]
    if "quantize" in methods:
        if unit != "bytes":
            raise PlanError("quantize removes no parameters: give the target in bytes (--byte-ratio)")
        widths += [b for b in QUANT_BITS if sens.get("quant", {}).get(b)]
    tried, errors = [], []
    base = variants([m for m in methods if m != "quantize"], budget.types())
    if "quantize" in methods:  # quantization alone, at each width, is a variant too
        base.append({"name": "", "share": False, "prune": False, "kv": False, "basis": [], "inherit": False})
    for v in base:
        for bits in widths:
            if bits is None and not v["name"]:
                continue
            quant = None if bits is None else {"bits": bits, "group": QUANT_GROUP[bits], "costs": sens["quant"][bits]}
            name = " + ".join(x for x in (v["name"], bits and f"int{bits}") if x)
            try:
                a = allocate(budget, sens["curves"], goal, v["share"], v["basis"], v["inherit"], use_prune=v["prune"],
                             use_kv=v["kv"], unit=unit, quant=quant)
            except PlanError as e:
                errors.append(str(e))
                continue
            tried.append({"variant": name, **a})
    if not tried:
        raise PlanError(errors[0])
    best = min(tried, key=lambda a: a["predicted"])
    plan = to_plan(best, cfg, group_size, match, keep, calibration, sens.get("quant_method", "gptq"))
    return plan, {"target": target, "unit": unit, "target_params" if unit == "params" else "target_bytes": goal,
                  "params_before": count_params(params), "bytes_before": param_bytes(params), "chosen": best,
                  "variants": tried, "rows": plan_rows(best, budget, sens, cfg)}


def refined_plan(params, cfg, target: float, methods, sens, windows, grams, group_size: int = 2, match: str = "qk",
                 keep: str = "mean", calibration: dict | None = None, rounds: int = 3, log=None, unit: str = "params"):
    """budget_plan, then measure where the plan went beyond the measured ratios and plan again,
    until it stays within measured points (at most `rounds` extra measurements per candidate)."""
    plan, details = budget_plan(params, cfg, target, methods, sens, group_size, match, keep, calibration, unit)
    for i in range(rounds):
        if not measure_at(params, cfg, windows, grams, sens, details["chosen"], group_size, match, keep, log):
            break
        plan, details = budget_plan(params, cfg, target, methods, sens, group_size, match, keep, calibration, unit)
        details["refinements"] = i + 1
    return plan, details


def plan_rows(alloc: dict, budget: Budget, sens: dict, cfg) -> list[dict]:
    """One row per compressed candidate: what it does, params freed, predicted loss increase."""
    curves = sens["curves"]
    L, K, k = cfg.n_layers, cfg.n_kv_heads, alloc["layers"]
    rows = []
    if k < L:
        freed = budget.params(L, 0, {}) - budget.params(k, 0, {})
        rows.append({"what": "inherit", "setting": f"first {k} of {L} layers", "params_freed": freed,
                     "predicted_loss": cost(envelope(curves["inherit"]), (L - k) / L)})
    if alloc.get("channels"):
        f, F = alloc["channels"], cfg.d_ff
        rows.append({"what": "prune mlp", "setting": f"{f} of {F} channels per layer (ratio {f / F:.3f})",
                     "params_freed": budget.params(k, 0, {}) - budget.params(k, 0, {}, f),
                     "predicted_loss": cost(envelope(curves["prune"]), f / F)})
    if alloc.get("kv_groups"):
        g, f = alloc["kv_groups"], alloc.get("channels", 0)
        rows.append({"what": "prune kv", "setting": f"{g} of {K} KV groups per layer (ratio {g / K:.3f})",
                     "params_freed": budget.params(k, 0, {}, f) - budget.params(k, 0, {}, f, g),
                     "predicted_loss": cost(envelope(curves["prune-kv"]), g / K)})
    if alloc["units"]:
        n = alloc["units"]
        freed = budget.params(k, 0, {}) - budget.params(k, n, {})
        rows.append({"what": "share q/k/v", "setting": f"{n} of {k * K} units (ratio {n / (k * K):.3f})",
                     "params_freed": freed, "predicted_loss": cost(envelope(curves["share"]), n / (k * K))})
    for t, r in alloc["ranks"].items():
        freed = budget.type_params(t, k, 0, None) - budget.type_params(t, k, 0, r)
        frac = budget.fraction(t, L, r)
        rows.append({"what": f"basis {t}", "setting": f"rank {r} (type ratio {budget.fraction(t, k, r):.3f})",
                     "params_freed": freed, "predicted_loss": cost(envelope(curves[t]), frac)})
    for t in alloc.get("quant") or ():
        b, gr = alloc["bits"], alloc["group"]
        freed = -budget.quantized(t, k, alloc["units"], alloc["ranks"].get(t), alloc.get("channels", 0),
                                  alloc.get("kv_groups", 0), b, gr)
        rows.append({"what": f"quantize {t}", "setting": f"int{b} {'per channel' if gr is None else f'group {gr}'}: "
                     f"{freed:,} bytes freed", "params_freed": 0,
                     "predicted_loss": max(sens["quant"][b][t], 0.0)})
    return rows


def format_table(details: dict) -> str:
    lines = [f"{'step':14s} {'setting':40s} {'params freed':>13s} {'pred. dloss':>11s}"]
    for r in details["rows"]:
        lines.append(f"{r['what']:14s} {r['setting']:40s} {r['params_freed']:13,d} {r['predicted_loss']:11.4f}")
    c = details["chosen"]
    if details.get("unit", "params") == "params":
        lines.append(f"model {details['params_before']:,} -> {c['params']:,} params (target {details['target_params']:,}, "
                     f"{details['target']:.3f} kept; last step {c['last_step']:,}); predicted loss increase "
                     f"{c['predicted']:.4f} ({c['variant']})")
    else:
        lines.append(f"model {details['bytes_before']:,} -> {c['bytes']:,} bytes (target {details['target_bytes']:,}, "
                     f"{details['target']:.3f} kept); {details['params_before']:,} -> {c['params']:,} floating "
                     f"params; predicted loss increase {c['predicted']:.4f} ({c['variant']})")
    return "\n".join(lines)
