"""Head sharing as a method: DirectShare, or its data-aware variant when the options fit on data."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from jaxshare.errors import MethodError
from jaxshare.headshare.datashare import CORRECT, KEEP, data_share
from jaxshare.headshare.directshare import direct_share
from jaxshare.headshare.similarity import MATCHES
from jaxshare.io.load import Model
from jaxshare.methods import checks as C
from jaxshare.methods.base import MethodBase, plain, updated


@dataclass(frozen=True)
class ShareOptions:
    ratio: float  # share of the L*K attention units tied to an earlier unit, in [0, 1)
    match: str = "qk"
    keep: str = "mean"  # root (the paper), mean, or data (a calibration least-squares merge)
    correct: str = "none"  # none, qk, qkv: per-unit corrections fitted on calibration data
    share_o: bool = False

    FIELDS: ClassVar[tuple] = ("ratio", "match", "keep", "correct", "share_o")

    def __post_init__(self):
        C.number("ratio", self.ratio, 0.0, 1.0)
        C.choice("match", self.match, MATCHES)
        C.choice("keep", self.keep, KEEP)
        C.choice("correct", self.correct, CORRECT)
        C.flag("share_o", self.share_o)
        if self.correct == "qkv" and self.share_o:
            raise MethodError("correct=qkv folds each unit's values into its own W_o, which share_o ties; "
                              "use correct=qk with share_o")

    @classmethod
    def from_dict(cls, o: dict) -> "ShareOptions":
        C.known_keys(o, cls.FIELDS)
        C.required(o, "ratio")
        return cls(**o)

    def to_dict(self) -> dict:
        return plain(dataclasses.asdict(self))

    @property
    def data_aware(self) -> bool:
        return self.keep == "data" or self.correct != "none"


class Share(MethodBase):
    name: ClassVar[str] = "share"
    Options: ClassVar[type] = ShareOptions
    last: ClassVar[bool] = False

    def claims(self, opts: ShareOptions, cfg=None, taken=frozenset()) -> frozenset[str]:
        return frozenset({"q", "k", "v"} | ({"o"} if opts.share_o else set()))

    def needs_grams(self, opts: ShareOptions) -> bool:
        return opts.data_aware

    def check(self, opts: ShareOptions, cfg):
        L, K = cfg.n_layers, cfg.n_kv_heads
        n = int(round(opts.ratio * L * K))
        if n > (L - 1) * K:
            raise MethodError(f"ratio {opts.ratio} asks for {n} of {L * K} units, but only {(L - 1) * K} have an "
                              "earlier partner")
        return cfg

    def apply(self, model: Model, opts: ShareOptions, grams=None) -> tuple[Model, dict]:
        if opts.data_aware:
            if grams is None:
                raise MethodError(f"keep={opts.keep}, correct={opts.correct} fits on calibration data: give grams")
            params, info = data_share(model.params, model.cfg, opts.ratio, opts.keep, opts.correct, grams,
                                      opts.match, opts.share_o)
        else:
            params, info = direct_share(model.params, model.cfg, opts.ratio, opts.match, opts.keep, opts.share_o)
        return updated(model, params, sharing=opts.to_dict()), info["report"]
