"""Structured width pruning (Minitron-style) as a method: MLP channels and whole KV groups removed
by their calibration activations, optionally with a least-squares refit of down and o."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from jaxshare.errors import MethodError
from jaxshare.io.load import Model
from jaxshare.methods import checks as C
from jaxshare.methods.base import MethodBase, OptionsBase, updated
from jaxshare.pruning.grams import carry
from jaxshare.pruning.prune import group_rows, pruned_config, prune, select


@dataclass(frozen=True)
class PruneOptions(OptionsBase):
    """mlp: share of each layer's MLP channels removed; kv_groups: share of its KV groups removed
    (with their query heads; must be a whole number of groups); both in [0, 1). compensate: refit
    down (and o) on the kept channels by least squares on the calibration grams. per_layer: remove
    the same number of MLP channels from the model as a whole, each layer its own share (held as
    per-layer widths, pruning/ragged.py)."""
    mlp: float = 0.0
    kv_groups: float = 0.0
    compensate: bool = False
    per_layer: bool = False

    FIELDS: ClassVar[tuple] = ("mlp", "kv_groups", "compensate", "per_layer")

    def __post_init__(self):
        C.number("mlp", self.mlp, 0.0, 1.0)
        C.number("kv_groups", self.kv_groups, 0.0, 1.0)
        C.flag("compensate", self.compensate)
        C.flag("per_layer", self.per_layer)

    @property
    def active(self) -> bool:
        return self.mlp > 0 or self.kv_groups > 0


class Prune(MethodBase):
    name: ClassVar[str] = "prune"
    Options: ClassVar[type] = PruneOptions
    last: ClassVar[bool] = False

    def claims(self, opts: PruneOptions, cfg=None, taken=frozenset()) -> frozenset[str]:
        mlp = ({"up", "down"} | ({"gate"} if cfg is None or cfg.gated_mlp else set())) if opts.mlp > 0 else set()
        return frozenset(mlp | ({"q", "k", "v", "o"} if opts.kv_groups > 0 else set()))

    def needs_grams(self, opts: PruneOptions) -> bool:
        return opts.active  # the ranking reads the grams' diagonals, compensated or not

    def check(self, opts: PruneOptions, cfg):
        return pruned_config(cfg, opts.mlp, opts.kv_groups)

    def apply(self, model: Model, opts: PruneOptions, grams=None, consume: bool = False) -> tuple[Model, dict]:
        """consume: free each dense leaf pruning replaces (`model` becomes unusable; the CLI's case)."""
        if opts.active and grams is None:
            raise MethodError("prune ranks channels by their calibration activations: give calibration grams")
        params, cfg, rep = prune(model.params, model.cfg, grams, opts.mlp, opts.kv_groups, opts.compensate,
                                 consume=consume, per_layer=opts.per_layer)
        prev = (model.extra.get("prune") or {}).get("steps", [])
        details = {"steps": prev + [opts.to_dict()], "from": {"d_ff": model.cfg.d_ff,
                                                              "n_kv_heads": model.cfg.n_kv_heads}}
        return updated(model, params, cfg, prune=details), rep

    def carry_grams(self, opts: PruneOptions, cfg, grams):
        """The grams of the model before this step, restricted to what the pruned model keeps (the
        selection is a pure function of the grams, so it is recomputed rather than stored)."""
        if grams is None or not opts.active:
            return grams
        keep_LF, keep_LK = select(grams, cfg, 0.0 if opts.per_layer else opts.mlp, opts.kv_groups)
        keep = {}
        if opts.per_layer and opts.mlp > 0:  # per-layer widths: no later step may read down's input (it
            grams = {k: v for k, v in dict(grams).items() if k != "down_in"}  # is claimed, quantize refuses)
        if keep_LF is not None:
            keep["down_in"] = keep_LF
        if keep_LK is not None:
            keep["o_in"] = group_rows(keep_LK, cfg)
        return carry(grams, keep)
