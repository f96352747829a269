"""Basis Sharing (and SVD-LLM, plain SVD) as a method: per-type ratios or exact ranks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from jaxshare.basis.compress import compress
from jaxshare.basis.factor import default_types, groups_of, type_rank
from jaxshare.basis.names import METHODS as BASIS_METHODS
from jaxshare.basis.names import PATHS
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
    path: str = "auto"  # a group's basis from eigh of S(sum W W^T)S^T (eig) or svd of the concatenation; auto by shape

    FIELDS: ClassVar[tuple] = ("ratio", "types", "ratios", "ranks", "group_size", "method", "shared", "path")

    def __post_init__(self):
        C.exactly_one(self, ("ratio", "ratios", "ranks"))
        C.integer("group_size", self.group_size, 1)
        C.choice("method", self.method, BASIS_METHODS)
        C.choice("path", self.path, PATHS)
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
        out = plain({k: getattr(self, k) for k in keys})
        if self.path != "auto":  # the default is left out: plans and checkpoints written before read the same
            out["path"] = self.path
        return out

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


def shared_types(cfg, o: dict) -> set[str]:
    """The types a basis step's dict form shares across layers (SVD-LLM and plain SVD: none)."""
    return set(o.get("shared", default_types(cfg)[0])) if o["method"] == "basis" else set()


def basis_ranks(cfg, o, types: list[str]) -> tuple[dict, dict]:
    """(ranks, group sizes) of a basis step's types on a model of cfg.n_layers layers; o: BasisOptions
    or its dict form."""
    o = o.to_dict() if isinstance(o, BasisOptions) else o
    shared = shared_types(cfg, o)
    L, ranks, sizes = cfg.n_layers, {}, {}
    for t in types:
        n = o["group_size"] if t in shared else 1
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
        out, _, rep = self.compress(model, opts, grams)
        if "per_type" in rep:  # the ranks asked for (per_type holds those kept, within the shapes)
            rep.pop("requested_ratio", None)  # the options say what was asked (with ratios or ranks it is a stand-in)
            rep["ranks"] = basis_ranks(model.cfg, opts, list(rep["per_type"]))[0]
        return out, rep

    def compress(self, model: Model, opts: BasisOptions, grams=None, progress: bool = False,
                 consume: bool = False) -> tuple[Model, dict | None, dict]:
        """apply's work, with compress()'s manifest (None when nothing is compressed) and its whole
        report; the CLI writes both. progress: a bar on stderr; consume: free each dense type once
        factorized, which leaves `model`'s params unusable (the CLI's, never compose's or js')."""
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
            note = {"types": [], "note": "every ratio is 0: nothing compressed"}
            return updated(model, params, basis=details), None, note
        if opts.method != "svd" and grams is None:
            raise MethodError(f"basis method {opts.method!r} needs calibration grams")
        ranks, _ = basis_ranks(cfg, opts, types)
        # group_size 1 still names a type shared, as `jaxshare basis --shared` always has in its report
        shared = [t for t in types if t in shared_types(cfg, opts.to_dict())]
        private = [t for t in types if t not in shared]
        # compress() checks its ratio even when ratios or ranks decide (then 0.5 stands in: the ranks decide)
        ratio = 0.5 if opts.ratio is None else opts.ratio
        out, manifest, rep = compress(params, cfg, grams, ratio, opts.group_size, opts.method, shared, private,
                                      opts.path, ranks=ranks, progress=progress, consume=consume)
        return updated(model, out, basis=details), manifest, rep
