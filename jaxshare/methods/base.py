"""The method protocol: one plug point for compose, the CLI and `import jaxshare as js`.

A method is a stateless object with a name, a frozen `Options` dataclass (validated in
`__post_init__`; `from_dict` reads a plan step's mapping, `to_dict` writes it back), and four
questions compose asks before any compute:

- `claims(opts, cfg, taken)`: the matrix types it rewrites (two steps may not claim one type);
- `last`: whether it must be the last compressing step (quantization packs whatever leaves exist
  when it runs, banks and bases included, so nothing may rewrite them afterwards; it claims no
  types against the other steps, it comes after them);
- `needs_grams(opts)`: whether it reads calibration grams;
- `check(opts, cfg) -> cfg`: what needs the model (types the family has, unit counts, layer
  counts), returning the config of the model after the step.

`apply(model, opts, grams) -> (model, report)` is the one return shape of every method: a new
frozen `Model` (params, cfg and metadata extra updated) and a JSON-able report.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Protocol

from jaxshare.core.compressed import is_compressed
from jaxshare.core.matrices import TYPES, get_type
from jaxshare.io.load import Model
from jaxshare.methods.checks import known_keys


class Method(Protocol):
    name: ClassVar[str]
    Options: ClassVar[type]
    last: ClassVar[bool]

    def claims(self, opts, cfg=None, taken=frozenset()) -> frozenset[str]:
        """Matrix types the step rewrites; `taken`: types compressed before it (cfg None: any family)."""
        ...

    def needs_grams(self, opts) -> bool: ...

    def check(self, opts, cfg):
        """Refuse what the model cannot take, before any compute; the config after the step."""
        ...

    def apply(self, model: Model, opts, grams=None) -> tuple[Model, dict]: ...

    def from_dict(self, o: dict):
        """Options from a plan step's mapping (unknown keys refused, defaults filled)."""
        ...

    def to_dict(self, opts) -> dict:
        """The mapping a plan writes for these options (reads back equal through from_dict)."""
        ...


class OptionsBase:
    """A method's frozen Options dataclass read from and written to a plan step's mapping: unknown
    keys refused by name, defaults filled; unset (None) options left out when written."""
    FIELDS: ClassVar[tuple] = ()

    @classmethod
    def from_dict(cls, o: dict):
        known_keys(o, cls.FIELDS)
        return cls(**o)

    def to_dict(self) -> dict:
        return plain(dataclasses.asdict(self))


class MethodBase:
    """from_dict / to_dict through the Options class (a method whose Options is not its own
    dataclass, like quantize's QuantSpec, overrides them)."""

    def from_dict(self, o: dict):
        return self.Options.from_dict(o)

    def to_dict(self, opts) -> dict:
        return opts.to_dict()


def compressed_types(params) -> frozenset[str]:
    """The linear weight types held by a compressed leaf (any kind)."""
    return frozenset(t for t in TYPES if is_compressed(get_type(params.layers, t)))


def updated(model: Model, params, cfg=None, **extra) -> Model:
    """`model` with new params (and cfg), its metadata extra updated with `extra`."""
    meta = dict(model.meta)
    meta["extra"] = {**model.extra, **extra}
    return dataclasses.replace(model, params=params, cfg=model.cfg if cfg is None else cfg, meta=meta)


def plain(d: dict) -> dict:
    """An Options dict as YAML writes it: tuples as lists, unset (None) options left out."""
    return {k: list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, dict) else v
            for k, v in d.items() if v is not None}
