"""Head sharing as a method: DirectShare, data-aware when the options fit on calibration data."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from jaxshare.errors import MethodError
from jaxshare.headshare.datashare import data_share
from jaxshare.headshare.directshare import n_units
from jaxshare.headshare.names import CORRECT, KEEP, MATCHES
from jaxshare.io.load import Model
from jaxshare.methods import checks as C
from jaxshare.methods.base import MethodBase, OptionsBase, updated


@dataclass(frozen=True)
class ShareOptions(OptionsBase):
    """Exactly one of `ratio` (the share of the L*K attention units tied to an earlier unit) or
    `net_ratio` (tie as many units as it takes to free, corrections counted, the parameters
    keep=mean frees at that ratio), both in [0, 1)."""
    ratio: float | None = None
    match: str = "qk"
    keep: str = "mean"  # root (the paper), mean, or data (a calibration least-squares merge)
    correct: str = "none"  # none, qk, qkv: per-unit corrections fitted on calibration data
    share_o: bool = False
    net_ratio: float | None = None  # last: positional ShareOptions(ratio, match, ...) keep their meaning

    FIELDS: ClassVar[tuple] = ("ratio", "match", "keep", "correct", "share_o", "net_ratio")

    def __post_init__(self):
        how = C.exactly_one(self, ("ratio", "net_ratio"))
        C.number(how, getattr(self, how), 0.0, 1.0)
        C.choice("match", self.match, MATCHES)
        C.choice("keep", self.keep, KEEP)
        C.choice("correct", self.correct, CORRECT)
        C.flag("share_o", self.share_o)
        if self.correct == "qkv" and self.share_o:
            raise MethodError("correct=qkv folds each unit's values into its own W_o, which share_o ties; "
                              "use correct=qk with share_o")

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
        # more units than have an earlier partner; a net_ratio ties at least its own ratio's units
        n_units(opts.ratio if opts.ratio is not None else opts.net_ratio, cfg)
        return cfg

    def apply(self, model: Model, opts: ShareOptions, grams=None) -> tuple[Model, dict]:
        """The report: units tied, parameters and bytes freed, corrections (data_share's)."""
        if opts.data_aware and grams is None:
            raise MethodError(f"keep={opts.keep}, correct={opts.correct} fits on calibration data: give grams")
        # data_share is DirectShare when nothing is fitted on data (the same partners, forest and rows)
        params, info = data_share(model.params, model.cfg, opts.ratio, opts.keep, opts.correct, grams, opts.match,
                                  opts.share_o, opts.net_ratio)
        return updated(model, params, sharing=opts.to_dict()), info["report"]
