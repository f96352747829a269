"""A budgeted plan: per-type compression chosen to meet a whole-model parameter target.

1. Sensitivity: the loss increase on calibration windows of compressing one candidate alone at a
   few ratios (head sharing of the q/k/v units; Basis Sharing of each weight type; dropping the
   last layers; width pruning of MLP channels, compensated: compose/candidates.py). Each candidate's cost curve is the lower convex envelope of its measured points
   and (0, 0), as a function of the fraction of that candidate's weights removed (slope beyond
   the last point kept).
2. Allocation: greedy in the smallest steps the methods have (one unit, one rank, one layer, one
   MLP channel in every layer): each
   step takes the move with the least predicted loss increase per parameter freed, until the
   exact parameter count (`Budget.params`, equal to the built model's) is at or below the target.
   The target is therefore met within one step. Head sharing and Basis Sharing of q/k/v exclude
   each other, and so do MLP pruning and Basis Sharing of gate/up/down, so allocations run with and
   without each (share + basis elsewhere; basis everywhere; ...; and each method alone) and the
   lowest predicted loss wins. A pruning step comes first after inherit: it changes d_ff.
3. Verification: the plan is applied and its loss measured on held-out windows.
"""
from __future__ import annotations

import dataclasses
import math
import time


from jaxshare.basis.compress import compress
from jaxshare.basis.factor import TYPES, Factored, default_types, dims, get_type, groups_of, set_types, type_rank
from jaxshare.compose.candidates import PRUNE_RATIOS, channel_counts, channel_params, prune_step, variants
from jaxshare.compose.candidates import pruned as _pruned
from jaxshare.compose.plan import CALIB_DEFAULTS, Plan, PlanError, Step, parse_plan
from jaxshare.core.bank import Bank
from jaxshare.core.compressed import materialize
from jaxshare.core.params import count_params
from jaxshare.eval.perplexity import perplexity_of_windows
from jaxshare.headshare.datashare import data_share
from jaxshare.headshare.directshare import direct_share
from jaxshare.headshare.sharing import FIELDS, MATRICES  # the matrices head sharing ties, and their biases
from jaxshare.inheritune.inherit import select_layers

BUDGET_METHODS = ("share", "basis", "inherit", "prune")
SHARE_RATIOS = (0.1, 0.2, 0.35)
BASIS_RATIOS = (0.1, 0.25, 0.45)
DROP_LAYERS = (1, 2, 4)


def parse_methods(text: str) -> list[str]:
    names = [x.strip() for x in str(text).split(",") if x.strip()]
    if not names:
        raise PlanError("--methods: expected a comma list of share, basis, inherit, prune")
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


# ---------------------------------------------------------------- exact parameter accounting

@dataclasses.dataclass
class Budget:
    """The parameter count of any allocation (layers kept, units tied, per-type ranks), exactly."""
    cfg: object
    group_size: int
    nonlayer: int  # embeddings, final norm, LM head
    rest: int  # per layer: norms and the biases not carried by a q/k/v unit
    unit: dict  # q/k/v: weights + bias of one unit
    bias: dict  # q/k/v: bias params per layer (stay dense beside a factored weight)
    shared_types: tuple
    channel: int = 0  # one MLP channel of one layer (compose/candidates.py)

    @classmethod
    def of(cls, params, cfg, group_size: int = 2) -> "Budget":
        L, K = cfg.n_layers, cfg.n_kv_heads
        attn = params.layers.attn
        bias = {t: 0 if getattr(attn, FIELDS[t][1]) is None else int(getattr(attn, FIELDS[t][1]).size) // L
                for t in MATRICES}
        types = [t for t in TYPES if get_type(params.layers, t) is not None]
        weights = sum(L * dims(cfg, t)[0] * dims(cfg, t)[1] for t in types)
        total_layers = count_params(params.layers)
        rest = (total_layers - weights - L * sum(bias.values())) // L
        unit = {t: (dims(cfg, t)[0] * dims(cfg, t)[1] + bias[t]) // K for t in MATRICES}
        shared, _ = default_types(cfg)
        return cls(cfg, group_size, count_params(params) - total_layers, rest, unit, bias, tuple(shared),
                   channel_params(params, cfg))

    def types(self) -> list[str]:
        shared, private = default_types(self.cfg)
        return [t for t in TYPES if t in set(shared) | set(private)]

    def n_groups(self, t: str, k: int) -> int:
        return len(groups_of(k, self.group_size if t in self.shared_types else 1))

    def type_params(self, t: str, k: int, n: int, rank) -> int:
        d_in, d_out = dims(self.cfg, t)
        if rank is not None:
            return self.n_groups(t, k) * d_in * rank + k * rank * d_out + k * self.bias.get(t, 0)
        if t in MATRICES:
            return (k * self.cfg.n_kv_heads - n) * self.unit[t]
        return k * d_in * d_out

    def params(self, k: int, n: int, ranks: dict, f: int = 0) -> int:
        """k layers, n units tied, per-type ranks, f MLP channels pruned per layer (gate/up/down dense)."""
        return self.nonlayer + k * self.rest + sum(self.type_params(t, k, n, ranks.get(t)) for t in self.types()) \
            - k * f * self.channel

    def max_useful_rank(self, t: str, k: int) -> int:
        """The largest rank whose factors are smaller than the dense weights."""
        d_in, d_out = dims(self.cfg, t)
        per_rank = self.n_groups(t, k) * d_in + k * d_out
        return min((k * d_in * d_out - 1) // per_rank, d_in)

    def fraction(self, t: str, k: int, rank: int) -> float:
        d_in, d_out = dims(self.cfg, t)
        return 1 - (self.n_groups(t, k) * d_in * rank + k * rank * d_out) / (k * d_in * d_out)


# ---------------------------------------------------------------- sensitivity

def mean_nll(params, cfg, windows, batch_size: int = 4, dense: bool = True) -> float:
    """dense: score a candidate (one method's types compressed) on its dense weights, which have the
    model's shapes: the forward compiles once per layer count, not per rank (31 of 37 s on a tiny model)."""
    p = materialize(params) if dense else params
    return perplexity_of_windows(p, cfg, windows, batch_size, desc="sensitivity")["nll"]


def truncate(f: Factored, k: int) -> Factored:
    """The same factorization at a lower rank (columns are in decreasing singular-value order)."""
    return dataclasses.replace(f, basis=Bank(f.basis.rows[..., :k], f.basis.index), coef=f.coef[:, :k, :])


def _tie(params, cfg, ratio: float, match: str, keep: str, grams):
    """Head sharing at `ratio` (keep=data merges on the calibration grams; no corrections, whose
    parameters the budget does not count)."""
    if keep == "data":
        return data_share(params, cfg, ratio, "data", "none", grams, match)[0]
    return direct_share(params, cfg, ratio, match, keep)[0]


def sensitivity(params, cfg, windows, grams, methods, group_size: int = 2, match: str = "qk", keep: str = "mean",
                share_ratios=SHARE_RATIOS, basis_ratios=BASIS_RATIOS, drop_layers=DROP_LAYERS,
                prune_ratios=PRUNE_RATIOS, log=None) -> dict:
    """{"base": loss, "curves": {candidate: [(fraction removed, loss increase), ...]}}."""
    say = log or (lambda s: None)
    base = mean_nll(params, cfg, windows)
    curves, L, K = {}, cfg.n_layers, cfg.n_kv_heads
    budget = Budget.of(params, cfg, group_size)
    if "share" in methods:
        pts = []
        for r in share_ratios:
            n = int(round(r * L * K))
            if n == 0 or n > (L - 1) * K:
                continue
            shared = _tie(params, cfg, r, match, keep, grams)
            pts.append((n / (L * K), mean_nll(shared, cfg, windows) - base))
            say(f"sensitivity share {n / (L * K):.2f}: +{pts[-1][1]:.4f}")
        curves["share"] = pts
    if "basis" in methods:
        for t in budget.types():
            n = group_size if t in budget.shared_types else 1
            d_in, d_out = dims(cfg, t)
            ranks = [max(1, type_rank(L, len(groups_of(L, n)), d_in, d_out, r)) for r in basis_ratios]
            full, _, _ = compress(params, cfg, grams, 0.5, group_size, "basis", [t] if n > 1 else [],
                                  [t] if n == 1 else [], ranks={t: max(ranks)}, progress=False)
            f = get_type(full.layers, t)
            pts = []
            for k in ranks:
                p = set_types(params, {t: truncate(f, k)})
                pts.append((budget.fraction(t, L, k), mean_nll(p, cfg, windows) - base))
                say(f"sensitivity basis {t} {pts[-1][0]:.2f}: +{pts[-1][1]:.4f}")
            curves[t] = pts
    if "inherit" in methods:
        pts = []
        for d in drop_layers:
            if d >= L:
                continue
            p, c = select_layers(params, cfg, range(L - d))
            pts.append((d / L, mean_nll(p, c, windows) - base))
            say(f"sensitivity inherit -{d} layers: +{pts[-1][1]:.4f}")
        curves["inherit"] = pts
    if "prune" in methods:
        pts = []
        for f in channel_counts(cfg, prune_ratios):
            p, c = _pruned(params, cfg, grams, f)
            pts.append((f / cfg.d_ff, mean_nll(p, c, windows) - base))
            say(f"sensitivity prune mlp {pts[-1][0]:.2f}: +{pts[-1][1]:.4f}")
        curves["prune"] = pts
    return {"base": base, "curves": curves, "windows": int(len(windows)), "seq_len": int(windows.shape[1])}


def envelope(points) -> list[tuple[float, float]]:
    """Lower convex envelope of (0, 0) and the points (loss increases below 0, measurement noise,
    count as 0: compressing is never assumed to help), sorted by x."""
    pts = sorted({(0.0, 0.0), *[(float(x), max(float(y), 0.0)) for x, y in points]})
    hull = []
    for p in pts:
        while len(hull) >= 2 and (hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0]) >= \
                (p[1] - hull[-2][1]) * (hull[-1][0] - hull[-2][0]):
            hull.pop()
        hull.append(p)
    return hull


EXTRAPOLATE = 2.0  # beyond the last measured point the slope doubles: unmeasured ratios are a risk
MIN_SLOPE = 1e-6  # and never free, so a flat (noise-level) curve is not driven to rank 1


def cost(hull, x: float) -> float:
    """The envelope at x; beyond its last point, linear with EXTRAPOLATE times the steeper of the
    last segment's slope and the average slope from the origin."""
    if x <= 0:
        return 0.0
    if len(hull) == 1:
        return math.inf  # nothing measured: never chosen
    for (x0, y0), (x1, y1) in zip(hull, hull[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    (x0, y0), (x1, y1) = hull[-2], hull[-1]
    slope = EXTRAPOLATE * max((y1 - y0) / (x1 - x0), y1 / x1, MIN_SLOPE)
    return y1 + slope * (x - x1)


# ---------------------------------------------------------------- allocation

def allocate(budget: Budget, curves: dict, target_params: int, use_share: bool, basis_types: list[str],
             use_inherit: bool, min_layers: int = 1, use_prune: bool = False) -> dict:
    """Greedy allocation; {"layers", "units", "ranks", "channels", "params", "last_step", "predicted"}.
    use_prune: prune MLP channels (basis_types must then leave out gate/up/down)."""
    cfg = budget.cfg
    L, K = cfg.n_layers, cfg.n_kv_heads
    hulls = {c: envelope(p) for c, p in curves.items()}
    k, n, ranks, f, last = L, 0, {}, 0, 0

    def total_cost(k, n, ranks, f):
        c = cost(hulls["prune"], f / cfg.d_ff) if f else 0.0
        if n:
            c += cost(hulls["share"], n / (k * K))
        for t, r in ranks.items():
            c += cost(hulls[t], budget.fraction(t, L, r))
        if k < L:
            c += cost(hulls["inherit"], (L - k) / L)
        return c

    now_p, now_c = budget.params(k, n, ranks, f), 0.0
    while now_p > target_params:
        moves = []
        if use_share and "share" in hulls and n + 1 <= (k - 1) * K:
            moves.append((k, n + 1, ranks, f))
        if use_prune and "prune" in hulls and f + 1 < cfg.d_ff:
            moves.append((k, n, ranks, f + 1))
        for t in basis_types:
            if t not in hulls:
                continue
            r = ranks.get(t)
            nr = budget.max_useful_rank(t, k) if r is None else r - 1
            if nr >= 1:
                moves.append((k, n, {**ranks, t: nr}, f))
        if use_inherit and "inherit" in hulls and k - 1 >= min_layers and n <= (k - 2) * K:
            moves.append((k - 1, n, ranks, f))
        best = None
        for mv in moves:
            p = budget.params(*mv)
            if p >= now_p:
                continue
            c = total_cost(*mv)
            score = (c - now_c) / (now_p - p)
            if best is None or score < best[0]:
                best = (score, mv, p, c)
        if best is None:
            raise PlanError(f"the methods cannot remove that many parameters: the smallest reachable model "
                            f"has {now_p:,} parameters, the target is {target_params:,}")
        _, (k, n, ranks, f), p, now_c = best
        last, now_p = now_p - p, p
    return {"layers": k, "units": n, "ranks": dict(ranks), "channels": f, "params": now_p, "last_step": last,
            "predicted": now_c}


def to_plan(alloc: dict, cfg, group_size: int, match: str, keep: str, calibration: dict) -> Plan:
    steps = []
    if alloc["layers"] < cfg.n_layers:
        steps.append(Step("inherit", {"layers": alloc["layers"]}))
    if alloc.get("channels"):  # before share and basis: it changes d_ff (and needs dense gate/up/down)
        steps.append(prune_step(cfg, alloc["channels"]))
    if alloc["units"]:
        ratio = alloc["units"] / (alloc["layers"] * cfg.n_kv_heads)
        steps.append(Step("share", {"ratio": ratio, "match": match, "keep": keep, "correct": "none",
                                    "share_o": False}))
    if alloc["ranks"]:
        ranks = {t: int(alloc["ranks"][t]) for t in TYPES if t in alloc["ranks"]}
        steps.append(Step("basis", {"group_size": group_size, "method": "basis", "ranks": ranks}, list(ranks)))
    if not steps:
        raise PlanError("the target needs no compression")

    plan = Plan(steps, {**CALIB_DEFAULTS, **(calibration or {})})
    parse_plan(plan.to_dict())  # order and overlap checked as a written plan is
    return plan


def check_reachable(params, cfg, target: float, methods, group_size: int = 2) -> int:
    """The target's parameter count, refused before any measurement when the methods cannot reach it."""
    b = Budget.of(params, cfg, group_size)
    goal = int(math.floor(check_target(target) * count_params(params)))
    best = math.inf
    for v in variants(methods, b.types()):
        k = (2 if v["share"] and cfg.n_layers > 1 else 1) if v["inherit"] else cfg.n_layers
        n = (k - 1) * cfg.n_kv_heads if v["share"] else 0
        best = min(best, b.params(k, n, {t: 1 for t in v["basis"]}, cfg.d_ff - 1 if v["prune"] else 0))
    if best > goal:
        raise PlanError(f"{', '.join(methods)} cannot remove that many parameters: the smallest reachable model "
                        f"has {best:,} parameters, the target is {goal:,} ({target:.3f} of {count_params(params):,})")
    return goal


def budget_plan(params, cfg, target: float, methods, sens, group_size: int = 2, match: str = "qk",
                keep: str = "mean", calibration: dict | None = None) -> tuple[Plan, dict]:
    """(plan, details) meeting `target` (fraction of the params kept) from sensitivity curves `sens`."""
    target = check_target(target)
    budget = Budget.of(params, cfg, group_size)
    goal = int(math.floor(target * count_params(params)))
    tried, errors = [], []
    for v in variants(methods, budget.types()):
        try:
            a = allocate(budget, sens["curves"], goal, v["share"], v["basis"], v["inherit"], use_prune=v["prune"])
        except PlanError as e:
            errors.append(str(e))
            continue
        tried.append({"variant": v["name"], **a})
    if not tried:
        raise PlanError(errors[0])
    best = min(tried, key=lambda a: a["predicted"])
    plan = to_plan(best, cfg, group_size, match, keep, calibration)
    return plan, {"target": target, "target_params": goal, "params_before": count_params(params), "chosen": best,
                  "variants": tried, "rows": plan_rows(best, budget, sens["curves"], cfg)}


def measure_at(params, cfg, windows, grams, sens: dict, alloc: dict, group_size: int = 2, match: str = "qk",
               keep: str = "mean", log=None) -> list[str]:
    """Measure each candidate the allocation takes beyond its last measured point, alone at the
    allocated setting, and add the point to its curve. Returns the candidates measured."""
    say = log or (lambda s: None)
    L, K = cfg.n_layers, cfg.n_kv_heads
    budget = Budget.of(params, cfg, group_size)
    curves, done = sens["curves"], []
    base = sens["base"]
    wanted = {t: budget.fraction(t, L, r) for t, r in alloc["ranks"].items()}
    if alloc["units"]:
        wanted["share"] = alloc["units"] / (alloc["layers"] * K)
    if alloc["layers"] < L:
        wanted["inherit"] = (L - alloc["layers"]) / L
    if alloc.get("channels"):
        wanted["prune"] = alloc["channels"] / cfg.d_ff
    for cand, x in wanted.items():
        if x <= max([0.0] + [p[0] for p in curves.get(cand, [])]) + 1e-9:
            continue
        if cand == "share":
            n = int(round(x * L * K))
            p, c = _tie(params, cfg, n / (L * K), match, keep, grams), cfg
        elif cand == "inherit":
            p, c = select_layers(params, cfg, range(alloc["layers"]))
        elif cand == "prune":
            p, c = _pruned(params, cfg, grams, alloc["channels"])
        else:
            n = group_size if cand in budget.shared_types else 1
            r = alloc["ranks"][cand]
            full, _, _ = compress(params, cfg, grams, 0.5, group_size, "basis", [cand] if n > 1 else [],
                                  [cand] if n == 1 else [], ranks={cand: r}, progress=False)
            p, c = full, cfg
        curves.setdefault(cand, []).append((x, mean_nll(p, c, windows) - base))
        done.append(cand)
        say(f"sensitivity {cand} {x:.2f} (where the plan went): +{curves[cand][-1][1]:.4f}")
    return done


def refined_plan(params, cfg, target: float, methods, sens, windows, grams, group_size: int = 2, match: str = "qk",
                 keep: str = "mean", calibration: dict | None = None, rounds: int = 3, log=None):
    """budget_plan, then measure where the plan went beyond the measured ratios and plan again,
    until it stays within measured points (at most `rounds` extra measurements per candidate)."""
    plan, details = budget_plan(params, cfg, target, methods, sens, group_size, match, keep, calibration)
    for i in range(rounds):
        if not measure_at(params, cfg, windows, grams, sens, details["chosen"], group_size, match, keep, log):
            break
        plan, details = budget_plan(params, cfg, target, methods, sens, group_size, match, keep, calibration)
        details["refinements"] = i + 1
    return plan, details


def plan_rows(alloc: dict, budget: Budget, curves: dict, cfg) -> list[dict]:
    """One row per compressed candidate: what it does, params freed, predicted loss increase."""
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
    return rows


def format_table(details: dict) -> str:
    lines = [f"{'step':14s} {'setting':40s} {'params freed':>13s} {'pred. dloss':>11s}"]
    for r in details["rows"]:
        lines.append(f"{r['what']:14s} {r['setting']:40s} {r['params_freed']:13,d} {r['predicted_loss']:11.4f}")
    c = details["chosen"]
    lines.append(f"model {details['params_before']:,} -> {c['params']:,} params (target {details['target_params']:,}, "
                 f"{details['target']:.3f} kept; last step {c['last_step']:,}); predicted loss increase "
                 f"{c['predicted']:.4f} ({c['variant']})")
    return "\n".join(lines)


def verify(params_before, cfg_before, params_after, cfg_after, windows) -> dict:
    t0 = time.perf_counter()
    base = mean_nll(params_before, cfg_before, windows)
    after = mean_nll(params_after, cfg_after, windows, dense=False)  # a dense copy of it all would double memory
    return {"windows": int(len(windows)), "seq_len": int(windows.shape[1]), "loss_before": base, "loss_after": after,
            "loss_increase": after - base, "ppl_before": math.exp(base), "ppl_after": math.exp(after),
            "seconds": time.perf_counter() - t0}
