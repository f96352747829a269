"""The budgeted plan's candidates beside the ones budget.py measures itself: width pruning of MLP
channels (jaxshare.pruning, METHODS["prune"]), and which allocations are tried when candidates
exclude each other.

Pruning removes the same number f of MLP channels in every layer, each layer its least active ones
(the diagonal of the `down_in` gram, jaxshare/pruning/importance.py), with the least-squares
compensation of down on the kept channels. One step of the allocation is one channel in every
layer; its fraction on the sensitivity curve is f / d_ff. A channel holds its column of gate and up,
its row of down and its entries of the up/gate biases (down's bias is over d_model and stays), so
pruning f channels of k layers frees exactly k * f * channel_params. Pruning claims gate/up/down,
so Basis Sharing of those types is excluded where it runs, as head sharing excludes Basis of q/k/v.

KV-group pruning is not a budget candidate yet: its steps are whole groups (coarse on models with
few KV groups), it changes the q/k/v/o shapes that head sharing and Basis Sharing of those types
are accounted on, and excludes both; a plan may still write a `prune: {kv_groups: ...}` step by hand.
"""
from __future__ import annotations

from jaxshare.compose.plan import Step
from jaxshare.core.config import ModelConfig
from jaxshare.core.matrices import TYPES
from jaxshare.headshare.sharing import MATRICES
from jaxshare.methods import METHODS as REGISTRY
from jaxshare.pruning.prune import prune

PRUNE_RATIOS = (0.1, 0.25, 0.4)  # of d_ff, measured with compensation on
MLP_TYPES = ("gate", "up", "down")  # what pruning MLP channels claims


def channel_params(params, cfg: ModelConfig) -> int:
    """Parameters one MLP channel holds in one layer (gate/up columns, down row, up/gate bias entries)."""
    mlp = params.layers.mlp
    n = sum(int(w.size) for w in (mlp.w_gate, mlp.w_up, mlp.w_down, mlp.b_up, mlp.b_gate) if w is not None)
    return n // (cfg.n_layers * cfg.d_ff)


def channel_counts(cfg: ModelConfig, ratios=PRUNE_RATIOS) -> list[int]:
    """Channels removed per layer at each measured ratio (distinct, at least one, at most d_ff - 1)."""
    return sorted({min(max(1, int(round(r * cfg.d_ff))), cfg.d_ff - 1) for r in ratios} - {0})


def pruned(params, cfg: ModelConfig, grams, f: int):
    """(params, cfg) with f MLP channels of every layer removed, compensated."""
    p, c, _ = prune(params, cfg, grams, mlp=f / cfg.d_ff, compensate=True)
    return p, c


def prune_step(cfg: ModelConfig, f: int) -> Step:
    """The plan step removing f channels of d_ff per layer (mlp = f / d_ff rounds back to f)."""
    impl = REGISTRY["prune"]
    opts = impl.from_dict({"mlp": f / cfg.d_ff, "compensate": True})
    return Step("prune", impl.to_dict(opts), [t for t in TYPES if t in impl.claims(opts, cfg)])


def variants(methods, types) -> list[dict]:
    """The allocations tried (budget_plan keeps the lowest predicted loss). Head sharing excludes
    Basis of q/k/v and MLP pruning Basis of gate/up/down, so with basis each runs with and without
    the other; with several methods each method alone runs too, so the plan chosen is never
    predicted worse than a single method's allocation."""
    basis = list(types) if "basis" in methods else []
    inherit = "inherit" in methods
    out = []
    for s in ([True, False] if "share" in methods and basis else ["share" in methods]):
        for p in ([True, False] if "prune" in methods and basis else ["prune" in methods]):
            bt = [t for t in basis if not (s and t in MATRICES) and not (p and t in MLP_TYPES)]
            out.append((s, p, tuple(bt), inherit))
    if len(methods) > 1:
        out += [(m == "share", m == "prune", tuple(basis) if m == "basis" else (), m == "inherit") for m in methods]
    seen, res = set(), []
    for s, p, bt, i in out:
        if (s, p, bt, i) in seen or not (s or p or bt or i):
            continue
        seen.add((s, p, bt, i))
        parts = (["share"] if s else []) + (["prune mlp"] if p else []) + \
                (["basis everywhere" if len(bt) == len(basis) else "basis elsewhere"] if bt else []) + \
                (["inherit"] if i else [])
        res.append({"name": " + ".join(parts), "share": s, "prune": p, "basis": list(bt), "inherit": i})
    return res
