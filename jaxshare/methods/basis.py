"""Basis Sharing (and SVD-LLM, plain SVD) as a method: per-type ratios or exact ranks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from jaxshare.basis.compress import compress
from jaxshare.basis.factor import METHODS as BASIS_METHODS
from jaxshare.basis.factor import default_types, groups_of, type_rank
from jaxshare.core.matrices import TYPES, dims
from jaxshare.errors import MethodError
from jaxshare.io.load import Model
from jaxshare.methods import checks as C
from jaxshare.methods.base import MethodBase, compressed_types, plain, updated


@dataclass(frozen=True)
class BasisOptions:
    """Exactly one of `ratio` (with `types`, default: every type still dense), `ratios`
    ({type: ratio}) or `ranks` ({type: rank}, exact). A ratio of 0 leaves a type dense."""
    ratio: float | None = None
    types: tuple | None = None
    ratios: dict | None = None
    ranks: dict | None = None
    group_size: int = 2
    method: str = "basis"  # basis, svd-llm, svd
    shared: tuple | None = None  # types whose basis is shared across group_size layers (default: the family's)

    FIELDS: ClassVar[tuple] = ("ratio", "types", "ratios", "ranks", "group_size", "method", "shared")

    def __post_init__(self):
        given = [k for k in ("ratio", "ratios", "ranks") if getattr(self, k) is not None]
        if len(given) != 1:
            raise MethodError(f"give exactly one of ratio, ratios or ranks (got {', '.join(given) or 'none'})")
        C.integer("group_size", self.group_size, 1)
        C.choice("method", self.method, BASIS_METHODS)
        if self.types is not None and self.ratio is None:
            raise MethodError("types goes with ratio, not with ratios or ranks")
        if self.ratio is not None:
            C.number("ratio", self.ratio, 0.0, 1.0)
            if self.types is not None:
                if not isinstance(self.types, (list, tuple)) or not self.types:
                    raise MethodError("types must be a non-empty list of matrix types")
                object.__setattr__(self, "types", tuple(C.type_name(t) for t in self.types))
        elif self.ratios is not None:
            if not isinstance(self.ratios, dict) or not self.ratios:
                raise MethodError("ratios must be a non-empty mapping type -> ratio")
            object.__setattr__(self, "ratios", {C.type_name(t): C.number(f"ratios.{t}", r, 0.0, 1.0)
                                                for t, r in self.ratios.items()})
        else:
            if not isinstance(self.ranks, dict) or not self.ranks:
                raise MethodError("ranks must be a non-empty mapping type -> rank")
            object.__setattr__(self, "ranks", {C.type_name(t): C.integer(f"ranks.{t}", k, 1)
                                               for t, k in self.ranks.items()})
        if self.shared is not None:
            if not isinstance(self.shared, (list, tuple)):
                raise MethodError("shared must be a list of matrix types")
            object.__setattr__(self, "shared", tuple(C.type_name(t) for t in self.shared))

    @classmethod
    def from_dict(cls, o: dict) -> "BasisOptions":
        C.known_keys(o, cls.FIELDS)
        return cls(**o)

    def to_dict(self) -> dict:
        # the order a plan is written in: how, then which types
        keys = ("group_size", "method", "ratio", "types", "ratios", "ranks", "shared")
        return plain({k: getattr(self, k) for k in keys})

    def named_types(self) -> list[str] | None:
        """The types the options name themselves (None: `ratio` without `types`, decided by the model)."""
        if self.ratio is not None:
            return None if self.types is None else (list(self.types) if self.ratio > 0 else [])
        if self.ratios is not None:
            return [t for t, r in self.ratios.items() if r > 0]
        return list(self.ranks)


def present_types(cfg) -> list[str]:
    shared, private = default_types(cfg)
    return [t for t in TYPES if t in set(shared) | set(private)]


def basis_ranks(cfg, o, types: list[str]) -> tuple[dict, dict]:
    """(ranks, group sizes) of a basis step's types on a model of cfg.n_layers layers; o: BasisOptions
    or its dict form."""
    o = o.to_dict() if isinstance(o, BasisOptions) else o
    shared_default, _ = default_types(cfg)
    shared = set(o.get("shared", shared_default))
    L, ranks, sizes = cfg.n_layers, {}, {}
    for t in types:
        n = o["group_size"] if (t in shared and o["method"] == "basis") else 1
        sizes[t] = n
        if "ranks" in o:
            ranks[t] = o["ranks"][t]
        else:
            r = o["ratio"] if "ratio" in o else o["ratios"][t]
            d_in, d_out = dims(cfg, t)
            ranks[t] = max(1, type_rank(L, len(groups_of(L, n)), d_in, d_out, r))
    return ranks, sizes


class Basis(MethodBase):
    name: ClassVar[str] = "basis"
    Options: ClassVar[type] = BasisOptions
    last: ClassVar[bool] = False

    def claims(self, opts: BasisOptions, cfg=None, taken=frozenset()) -> frozenset[str]:
        named = opts.named_types()
        if named is not None:
            return frozenset(named)
        if opts.ratio == 0:
            return frozenset()
        everything = present_types(cfg) if cfg is not None else list(TYPES)
        return frozenset(t for t in everything if t not in taken)

    def needs_grams(self, opts: BasisOptions) -> bool:
        return opts.method != "svd" and opts.named_types() != []

    def check(self, opts: BasisOptions, cfg):
        present = present_types(cfg)
        for t in opts.named_types() or []:
            if t not in present:
                raise MethodError(f"{cfg.family} has no {t} weights; known: {', '.join(present)}")
        return cfg

    def apply(self, model: Model, opts: BasisOptions, grams=None) -> tuple[Model, dict]:
        params, cfg = model.params, model.cfg
        self.check(opts, cfg)
        taken = compressed_types(params)
        for t in opts.named_types() or []:
            if t in taken:
                raise MethodError(f"basis: {t} is already compressed in the input model")
        types = [t for t in TYPES if t in self.claims(opts, cfg, taken)]
        prev = (model.extra.get("basis") or {}).get("steps", [])
        details = {"method": opts.method, "steps": prev + [opts.to_dict()]}
        if not types:
            return updated(model, params, basis=details), {"types": [], "note": "every ratio is 0: nothing compressed"}
        if opts.method != "svd" and grams is None:
            raise MethodError(f"basis method {opts.method!r} needs calibration grams")
        ranks, sizes = basis_ranks(cfg, opts, types)
        shared = [t for t in types if sizes[t] > 1]
        private = [t for t in types if sizes[t] == 1]
        # compress() checks its ratio even when ranks decide; the manifest records the per-type ranks
        out, _, rep = compress(params, cfg, grams, 0.5, opts.group_size, opts.method, shared, private,
                               ranks=ranks, progress=False)
        rep.pop("requested_ratio", None)
        rep["ranks"] = ranks
        return updated(model, out, basis=details), rep
