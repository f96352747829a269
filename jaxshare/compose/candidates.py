"""The budgeted plan's candidates beside the ones sensitivity.py measures itself: width pruning of
MLP channels and of KV groups (jaxshare.pruning, METHODS["prune"]), and which allocations are tried
when candidates exclude each other.

MLP pruning (`--methods prune`) removes the same number f of MLP channels in every layer, each layer
its least active ones (the diagonal of the `down_in` gram, jaxshare/pruning/importance.py), with the
least-squares compensation of down on the kept channels. One step of the allocation is one channel
in every layer; its fraction on the sensitivity curve is f / d_ff. A channel holds its column of
gate and up, its row of down and its entries of the up/gate biases (down's bias is over d_model and
stays), so pruning f channels of k layers frees exactly k * f * channel_params. It claims
gate/up/down, so Basis Sharing of those types is excluded where it runs.

KV-group pruning (`--methods prune-kv`) removes the same number g of the K KV groups in every layer,
each with its G query heads (the least active by the `o_in` gram), with the least-squares
compensation of o on the kept heads. One step is one group in every layer; its fraction is g / K.
A group holds its k/v rows, its query heads, o's input rows of those heads and the q/k/v bias
entries (o's bias and Gemma3's q/k norms are per layer and stay): k * g * group_params. It changes
the q/k/v/o shapes and claims those types (the plan's `prune` step does), so it excludes head
sharing (which ties q/k/v units of the unpruned layout) and Basis Sharing of q/k/v/o. Both prunings
go in the plan's one `prune` step, which comes first after inherit: it changes shapes.
"""
from __future__ import annotations

from itertools import product

from jaxshare.compose.plan import Step
from jaxshare.core.config import ModelConfig
from jaxshare.core.matrices import TYPES
from jaxshare.headshare.sharing import MATRICES
from jaxshare.methods import METHODS as REGISTRY
from jaxshare.pruning.prune import prune

PRUNE_RATIOS = (0.1, 0.25, 0.4)  # of d_ff, measured with compensation on
KV_RATIOS = (0.125, 0.25, 0.5)  # of the KV groups (rounded to whole groups), compensated
MLP_TYPES = ("gate", "up", "down")  # what pruning MLP channels claims
KV_TYPES = ("q", "k", "v", "o")  # what pruning KV groups claims


def channel_params(params, cfg: ModelConfig) -> int:
    """Parameters one MLP channel holds in one layer (gate/up columns, down row, up/gate bias entries)."""
    mlp = params.layers.mlp
    n = sum(int(w.size) for w in (mlp.w_gate, mlp.w_up, mlp.w_down, mlp.b_up, mlp.b_gate) if w is not None)
    return n // (cfg.n_layers * cfg.d_ff)


def group_params(params, cfg: ModelConfig) -> int:
    """Parameters one KV group holds in one layer: what pruning/shrink.py slices on the group axis
    (wq/wk/wv/wo and the q/k/v biases)."""
    attn = params.layers.attn
    n = sum(int(w.size) for w in (attn.wq, attn.wk, attn.wv, attn.wo, attn.bq, attn.bk, attn.bv) if w is not None)
    return n // (cfg.n_layers * cfg.n_kv_heads)


def channel_counts(cfg: ModelConfig, ratios=PRUNE_RATIOS) -> list[int]:
    """Channels removed per layer at each measured ratio (distinct, at least one, at most d_ff - 1)."""
    return sorted({min(max(1, int(round(r * cfg.d_ff))), cfg.d_ff - 1) for r in ratios} - {0})


def group_counts(cfg: ModelConfig, ratios=KV_RATIOS) -> list[int]:
    """KV groups removed per layer at each measured ratio (distinct, at least one, at most K - 1;
    none on a model with one group)."""
    return sorted({min(max(1, int(round(r * cfg.n_kv_heads))), cfg.n_kv_heads - 1) for r in ratios} - {0})


def pruned(params, cfg: ModelConfig, grams, f: int, g: int = 0):
    """(params, cfg) with f MLP channels and g KV groups of every layer removed, compensated."""
    p, c, _ = prune(params, cfg, grams, mlp=f / cfg.d_ff, kv_groups=g / cfg.n_kv_heads, compensate=True)
    return p, c


def prune_step(cfg: ModelConfig, f: int, g: int = 0) -> Step:
    """The plan step removing f channels of d_ff and g KV groups of K per layer (the ratios round
    back to f and g)."""
    impl = REGISTRY["prune"]
    opts = impl.from_dict({"mlp": f / cfg.d_ff, "kv_groups": g / cfg.n_kv_heads, "compensate": True})
    return Step("prune", impl.to_dict(opts), [t for t in TYPES if t in impl.claims(opts, cfg)])


def _both(on: bool, conflicts: bool) -> list[bool]:
    return [True, False] if on and conflicts else [on]


def variants(methods, types) -> list[dict]:
    """The allocations tried (budget_plan keeps the lowest predicted loss). Head sharing excludes
    Basis of q/k/v, MLP pruning Basis of gate/up/down, KV-group pruning head sharing and Basis of
    q/k/v/o; so each runs with and without what it conflicts with. With several methods each method
    alone runs too, so the plan chosen is never predicted worse than a single method's allocation."""
    basis = list(types) if "basis" in methods else []
    inherit, kv = "inherit" in methods, "prune-kv" in methods
    out = []
    for s, p, g in product(_both("share" in methods, bool(basis) or kv), _both("prune" in methods, bool(basis)),
                           _both(kv, bool(basis) or "share" in methods)):
        if s and g:
            continue
        bt = [t for t in basis if not (s and t in MATRICES) and not (p and t in MLP_TYPES)
              and not (g and t in KV_TYPES)]
        out.append((s, p, g, tuple(bt), inherit))
    if len(methods) > 1:
        out += [(m == "share", m == "prune", m == "prune-kv", tuple(basis) if m == "basis" else (), m == "inherit")
                for m in methods]
    seen, res = set(), []
    for s, p, g, bt, i in out:
        if (s, p, g, bt, i) in seen or not (s or p or g or bt or i):
            continue
        seen.add((s, p, g, bt, i))
        parts = (["share"] if s else []) + (["prune mlp"] if p else []) + (["prune kv"] if g else []) + \
                (["basis everywhere" if len(bt) == len(basis) else "basis elsewhere"] if bt else []) + \
                (["inherit"] if i else [])
        res.append({"name": " + ".join(parts), "share": s, "prune": p, "kv": g, "basis": list(bt), "inherit": i})
    return res
