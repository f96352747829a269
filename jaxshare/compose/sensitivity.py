"""What the budgeted plan (compose/budget.py) measures, and the cost model it allocates on.

Sensitivity: the loss increase on windows outside the calibration of compressing one candidate
alone at a few ratios (head sharing of the q/k/v units; Basis Sharing of each weight type; dropping
the last layers; width pruning of MLP channels and of KV groups, compensated: compose/candidates.py).
Each candidate's cost curve is the lower convex envelope of its measured points and (0, 0), as a
function of the fraction of that candidate's weights removed (slope beyond the last point kept,
doubled). `measure_at` adds a point where an allocation went beyond the measured ones; `verify`
measures the plan built on held-out windows.
"""
from __future__ import annotations

import dataclasses
import math
import time

from jaxshare.basis.compress import compress
from jaxshare.basis.factor import Factored, dims, get_type, groups_of, set_types, type_rank
from jaxshare.compose.accounting import Budget
from jaxshare.compose.candidates import KV_RATIOS, PRUNE_RATIOS, channel_counts, group_counts
from jaxshare.compose.candidates import pruned as _pruned
from jaxshare.core.bank import Bank
from jaxshare.core.compressed import materialize
from jaxshare.eval.perplexity import perplexity_of_windows
from jaxshare.headshare.datashare import data_share
from jaxshare.headshare.directshare import direct_share
from jaxshare.inheritune.inherit import select_layers
from jaxshare.quant.model import QuantSpec, quantize_params, types_present

SHARE_RATIOS = (0.1, 0.2, 0.35)
BASIS_RATIOS = (0.1, 0.25, 0.45)
DROP_LAYERS = (1, 2, 4)


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
                prune_ratios=PRUNE_RATIOS, kv_ratios=KV_RATIOS, log=None) -> dict:
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
            del shared  # before the next candidate is built: two at once would double the peak
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
                del p
                say(f"sensitivity basis {t} {pts[-1][0]:.2f}: +{pts[-1][1]:.4f}")
            curves[t] = pts
            del full, f
    if "inherit" in methods:
        pts = []
        for d in drop_layers:
            if d >= L:
                continue
            p, c = select_layers(params, cfg, range(L - d))
            pts.append((d / L, mean_nll(p, c, windows) - base))
            del p
            say(f"sensitivity inherit -{d} layers: +{pts[-1][1]:.4f}")
        curves["inherit"] = pts
    if "prune" in methods:
        pts = []
        for f in channel_counts(cfg, prune_ratios):
            p, c = _pruned(params, cfg, grams, f)
            pts.append((f / cfg.d_ff, mean_nll(p, c, windows) - base))
            del p
            say(f"sensitivity prune mlp {pts[-1][0]:.2f}: +{pts[-1][1]:.4f}")
        curves["prune"] = pts
    if "prune-kv" in methods:
        pts = []
        for g in group_counts(cfg, kv_ratios):
            p, c = _pruned(params, cfg, grams, 0, g)
            pts.append((g / K, mean_nll(p, c, windows) - base))
            del p
            say(f"sensitivity prune kv {g} of {K} groups: +{pts[-1][1]:.4f}")
        curves["prune-kv"] = pts
    return {"base": base, "curves": curves, "windows": int(len(windows)), "seq_len": int(windows.shape[1])}



QUANT_BITS = (8, 4)
QUANT_GROUP = {8: None, 4: 64}  # the quantize CLI's defaults: int8 per output channel, int4 in groups of 64


def quant_sensitivity(params, cfg, windows, grams, method: str = "gptq", bits=QUANT_BITS, log=None) -> dict:
    """{bits: {type: loss increase}} of quantizing each linear type alone at each width (a type whose
    rows the group does not divide is left out at that width)."""
    say = log or (lambda s: None)
    base = mean_nll(params, cfg, windows)
    out = {}
    for b in bits:
        out[b] = {}
        for t in types_present(cfg):
            spec = QuantSpec(b, QUANT_GROUP[b], True, method, types=(t,))
            if QUANT_GROUP[b] is not None and dims(cfg, t)[0] % QUANT_GROUP[b]:
                continue
            q, _ = quantize_params(params, cfg, spec, grams if method == "gptq" else None, progress=False)
            out[b][t] = mean_nll(q, cfg, windows) - base
            del q
            say(f"sensitivity quantize {t} int{b}: +{out[b][t]:.4f}")
    return out


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
    if alloc.get("kv_groups"):
        wanted["prune-kv"] = alloc["kv_groups"] / K
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
        elif cand == "prune-kv":
            p, c = _pruned(params, cfg, grams, 0, alloc["kv_groups"])
        else:
            n = group_size if cand in budget.shared_types else 1
            r = alloc["ranks"][cand]
            p, c = compress(params, cfg, grams, 0.5, group_size, "basis", [cand] if n > 1 else [],
                            [cand] if n == 1 else [], ranks={cand: r}, progress=False)[0], cfg
        curves.setdefault(cand, []).append((x, mean_nll(p, c, windows) - base))
        del p
        done.append(cand)
        say(f"sensitivity {cand} {x:.2f} (where the plan went): +{curves[cand][-1][1]:.4f}")
    return done


def verify(params_before, cfg_before, params_after, cfg_after, windows) -> dict:
    t0 = time.perf_counter()
    base = mean_nll(params_before, cfg_before, windows)
    after = mean_nll(params_after, cfg_after, windows, dense=False)  # a dense copy of it all would double memory
    return {"windows": int(len(windows)), "seq_len": int(windows.shape[1]), "loss_before": base, "loss_after": after,
            "loss_increase": after - base, "ppl_before": math.exp(base), "ppl_after": math.exp(after),
            "seconds": time.perf_counter() - t0}
