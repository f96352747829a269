"""Weight-only quantization as a method: its Options are `QuantSpec`; it must be the last step."""
from __future__ import annotations

from typing import ClassVar

from jaxshare.errors import MethodError
from jaxshare.io.load import Model
from jaxshare.methods import checks as C
from jaxshare.methods.base import MethodBase, updated
from jaxshare.quant import pack as P
from jaxshare.quant.model import METHODS as QUANT_METHODS
from jaxshare.quant.model import QuantSpec, quantize_params, quantized_types
from jaxshare.core.matrices import dims

FIELDS = ("bits", "group", "sym", "method", "damp", "act_order", "types")


def spec_from_dict(o: dict) -> QuantSpec:
    """A plan step's quantize options: group an integer, or `channel` (one scale per output channel);
    its default is the CLI's (64 for int4, per channel for int8), as is GPTQ. `types` (a list; default
    every linear type) quantizes only those: what the byte-budgeted plan writes."""
    C.known_keys(o, FIELDS)
    bits = C.choice("bits", o.get("bits", 8), P.BITS)
    group = o.get("group", 64 if bits == 4 else "channel")
    group = None if group in (None, "channel") else C.choice("group", group, P.GROUPS)
    return QuantSpec(bits, group, C.flag("sym", o.get("sym", True)),
                     C.choice("method", o.get("method", "gptq"), QUANT_METHODS),
                     C.number("damp", o.get("damp", 0.01), 0.0, 1.0, lo_open=True),
                     C.flag("act_order", o.get("act_order", False)), _types(o.get("types")))


def _types(value):
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise MethodError(f"types: expected a non-empty list of weight types, got {value!r}")
    return tuple(value)


def spec_to_dict(spec: QuantSpec) -> dict:
    out = {"bits": spec.bits, "group": "channel" if spec.group is None else spec.group, "sym": spec.sym,
           "method": spec.method}
    if spec.method == "gptq":  # what RTN does not use is not recorded as if it had been
        out.update(damp=spec.damp, act_order=spec.act_order)
    if spec.types is not None:
        out["types"] = list(spec.types)
    return out


class Quantize(MethodBase):
    name: ClassVar[str] = "quantize"
    Options: ClassVar[type] = QuantSpec
    last: ClassVar[bool] = True  # it packs the leaves that exist when it runs: nothing may rewrite them after

    def from_dict(self, o: dict) -> QuantSpec:
        return spec_from_dict(o)

    def to_dict(self, spec: QuantSpec) -> dict:
        return spec_to_dict(spec)

    def claims(self, opts: QuantSpec, cfg=None, taken=frozenset()) -> frozenset[str]:
        return frozenset()  # it composes over every kind rather than replacing one; `last` orders it

    def needs_grams(self, opts: QuantSpec) -> bool:
        return opts.method == "gptq"

    def check(self, opts: QuantSpec, cfg):
        for t in quantized_types(cfg, opts):  # a basis' coefficients (rank rows) are padded to whole groups instead
            d_in = dims(cfg, t)[0]
            if opts.group is not None and d_in % opts.group:
                raise MethodError(f"group {opts.group} does not divide the {d_in} input rows of {t}")
        return cfg

    def apply(self, model: Model, opts: QuantSpec, grams=None, progress: bool = False,
              consume: bool = False) -> tuple[Model, dict]:
        """progress: a progress bar on stderr (the CLI's; compose and js run without one). consume:
        free each weight once its type is quantized (model.params become unusable; the CLI's)."""
        if self.needs_grams(opts) and grams is None:
            raise MethodError("GPTQ needs calibration grams (or use method rtn)")
        params, rep = quantize_params(model.params, model.cfg, opts, grams, progress=progress,
                                     consume=consume)
        return updated(model, params, quant=spec_to_dict(opts)), rep
