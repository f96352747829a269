"""Exact parameter accounting of a budgeted plan's allocations (compose/budget.py).

An allocation keeps k of the L layers, ties n q/k/v units (head sharing), factors some types at a
rank (Basis Sharing), removes f MLP channels and g KV groups in every kept layer (width pruning,
compose/candidates.py). `Budget.params` counts the model such an allocation builds, exactly: the
tests compare it with `count_params` of the model the plan builds.
"""
from __future__ import annotations

import dataclasses

from jaxshare.basis.factor import TYPES, default_types, dims, get_type, groups_of
from jaxshare.compose.candidates import channel_params, group_params
from jaxshare.core.params import count_params
from jaxshare.headshare.sharing import FIELDS, MATRICES  # the matrices head sharing ties, and their biases


@dataclasses.dataclass
class Budget:
    """The parameter count of any allocation (layers kept, units tied, per-type ranks, MLP channels
    and KV groups pruned), exactly."""
    cfg: object
    group_size: int
    nonlayer: int  # embeddings, final norm, LM head
    rest: int  # per layer: norms and the biases not carried by a q/k/v unit
    unit: dict  # q/k/v: weights + bias of one unit
    bias: dict  # q/k/v: bias params per layer (stay dense beside a factored weight)
    shared_types: tuple
    channel: int = 0  # one MLP channel of one layer (compose/candidates.py)
    group: int = 0  # one KV group of one layer with its query heads and o's input rows

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
                   channel_params(params, cfg), group_params(params, cfg))

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

    def params(self, k: int, n: int, ranks: dict, f: int = 0, g: int = 0) -> int:
        """k layers, n units tied, per-type ranks, f MLP channels and g KV groups pruned per layer
        (gate/up/down dense when f > 0; q/k/v/o dense when g > 0)."""
        return self.nonlayer + k * self.rest + sum(self.type_params(t, k, n, ranks.get(t)) for t in self.types()) \
            - k * f * self.channel - k * g * self.group

    def max_useful_rank(self, t: str, k: int) -> int:
        """The largest rank whose factors are smaller than the dense weights."""
        d_in, d_out = dims(self.cfg, t)
        per_rank = self.n_groups(t, k) * d_in + k * d_out
        return min((k * d_in * d_out - 1) // per_rank, d_in)

    def fraction(self, t: str, k: int, rank: int) -> float:
        d_in, d_out = dims(self.cfg, t)
        return 1 - (self.n_groups(t, k) * d_in * rank + k * rank * d_out) / (k * d_in * d_out)
