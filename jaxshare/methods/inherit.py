"""Inheritune's layer selection as a method: keep the first k layers."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from jaxshare.errors import MethodError
from jaxshare.inheritune.inherit import inherit
from jaxshare.io.load import Model
from jaxshare.methods import checks as C
from jaxshare.methods.base import MethodBase, plain


@dataclass(frozen=True)
class InheritOptions:
    layers: int  # k, the number of leading layers kept

    def __post_init__(self):
        C.integer("layers", self.layers, 1)

    @classmethod
    def from_dict(cls, o: dict) -> "InheritOptions":
        C.known_keys(o, ("layers",))
        C.required(o, "layers")
        return cls(**o)

    def to_dict(self) -> dict:
        return plain(dataclasses.asdict(self))


class Inherit(MethodBase):
    name: ClassVar[str] = "inherit"
    Options: ClassVar[type] = InheritOptions
    last: ClassVar[bool] = False

    def claims(self, opts, cfg=None, taken=frozenset()) -> frozenset[str]:
        return frozenset()  # it drops layers whatever form their weights take

    def needs_grams(self, opts) -> bool:
        return False

    def check(self, opts: InheritOptions, cfg):
        if opts.layers > cfg.n_layers:
            raise MethodError(f"layers {opts.layers} is more than the model's {cfg.n_layers}")
        windows = None if cfg.windows is None else tuple(cfg.windows[:opts.layers])
        return dataclasses.replace(cfg, n_layers=opts.layers, windows=windows)

    def apply(self, model: Model, opts: InheritOptions, grams=None) -> tuple[Model, dict]:
        self.check(opts, model.cfg)
        params, cfg, extra = inherit(model.params, model.cfg, opts.layers, model.extra)
        meta = {**model.meta, "extra": extra}
        return (dataclasses.replace(model, params=params, cfg=cfg, meta=meta),
                {"layers": cfg.n_layers, "from_layers": model.cfg.n_layers})
