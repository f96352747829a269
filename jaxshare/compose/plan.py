"""Compression plans: an ordered list of steps (inherit, share, basis) checked before any compute.

A plan is what `jaxshare compress --plan plan.yaml` reads and what `--ratio` writes:

    steps:
      - inherit: {layers: 28}                       # keep the first k layers (Inheritune)
      - share: {ratio: 0.2, match: qk, keep: mean}  # head sharing of the q/k/v units (DirectShare)
      - basis: {group_size: 2, ratios: {up: 0.3, down: 0.1}}   # Basis Sharing, per-type ratios
    calibration: {data: wiki:train, windows: 16, seq_len: 512, seed: 0}

A basis step names its types through exactly one of `ratio` + `types` (one ratio for the listed
types, default: every type not compressed by an earlier step), `ratios` ({type: ratio}) or
`ranks` ({type: rank}, exact; what the budgeted plan writes). A ratio of 0 leaves that type dense.
No weight matrix may be compressed by two steps (share claims q, k, v and with share_o o; basis
claims its types); inherit may appear once and must keep at least one layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from jaxshare.errors import JaxshareError
from jaxshare.basis.factor import TYPES

METHODS = ("share", "basis", "inherit")
MATCHES = ("qk", "q", "k", "v", "qkv", "separate")
KEEPS = ("root", "mean", "data")
CORRECTS = ("none", "qk", "qkv")
CALIB_DEFAULTS = {"data": "wiki:train", "windows": 16, "seq_len": 512, "seed": 0}


class PlanError(JaxshareError, ValueError):
    """A plan that cannot be carried out as written (one line, names the step and the field)."""


@dataclass
class Step:
    method: str
    options: dict = field(default_factory=dict)  # as written in the plan (normalized, defaults filled)
    types: list = field(default_factory=list)  # basis: the types it compresses (ratio > 0)
    types_defaulted: bool = False  # basis `ratio` without `types`: absent types of a family are skipped

    def claims(self) -> list[str]:
        """The weight types this step compresses."""
        if self.method == "share":
            return ["q", "k", "v"] + (["o"] if self.options.get("share_o") else [])
        return list(self.types)

    def to_dict(self) -> dict:
        return {self.method: dict(self.options)}


@dataclass
class Plan:
    steps: list[Step]
    calibration: dict | None = field(default_factory=lambda: dict(CALIB_DEFAULTS))

    def to_dict(self) -> dict:
        out = {"steps": [s.to_dict() for s in self.steps]}
        if self.calibration is not None:  # None: no step calibrates, and nothing is recorded
            out["calibration"] = dict(self.calibration)
        return out

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def needs_grams(self) -> bool:
        return any(s.method == "basis" and s.options["method"] != "svd" and s.types
                   or s.method == "share" and (s.options["keep"] == "data" or s.options["correct"] != "none")
                   for s in self.steps)


def _num(where: str, key: str, v, lo: float, hi: float, lo_open: bool = False, hi_open: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise PlanError(f"{where}: {key} must be a number, got {v!r}")
    ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        span = ("(" if lo_open else "[") + f"{lo:g}, {hi:g}" + (")" if hi_open else "]")
        raise PlanError(f"{where}: {key} must be in {span}, got {v}")
    return float(v)


def _int(where: str, key: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise PlanError(f"{where}: {key} must be an integer at least {lo}, got {v!r}")
    return v


def _unknown(where: str, opts: dict, known: tuple) -> None:
    extra = sorted(set(opts) - set(known))
    if extra:
        raise PlanError(f"{where}: unknown option {extra[0]!r}; known: {', '.join(known)}")


def _choice(where: str, key: str, v, choices: tuple) -> str:
    if v not in choices:
        raise PlanError(f"{where}: {key} must be one of {', '.join(choices)}, got {v!r}")
    return v


def _type_name(where: str, t) -> str:
    if t not in TYPES:
        raise PlanError(f"{where}: unknown matrix type {t!r}; known: {', '.join(TYPES)}")
    return t


def _share(where: str, o: dict) -> dict:
    _unknown(where, o, ("ratio", "match", "keep", "correct", "share_o"))
    if "ratio" not in o:
        raise PlanError(f"{where}: ratio is required")
    share_o = o.get("share_o", False)
    if not isinstance(share_o, bool):
        raise PlanError(f"{where}: share_o must be true or false, got {share_o!r}")
    return {"ratio": _num(where, "ratio", o["ratio"], 0.0, 1.0),
            "match": _choice(where, "match", o.get("match", "qk"), MATCHES),
            "keep": _choice(where, "keep", o.get("keep", "mean"), KEEPS),
            "correct": _choice(where, "correct", o.get("correct", "none"), CORRECTS),
            "share_o": share_o}


def _basis(where: str, o: dict, claimed: set) -> Step:
    from jaxshare.basis.factor import METHODS as BASIS_METHODS

    _unknown(where, o, ("ratio", "types", "ratios", "ranks", "group_size", "method", "shared"))
    given = [k for k in ("ratio", "ratios", "ranks") if k in o]
    if len(given) != 1:
        raise PlanError(f"{where}: give exactly one of ratio, ratios or ranks (got {', '.join(given) or 'none'})")
    out = {"group_size": _int(where, "group_size", o.get("group_size", 2), 1),
           "method": _choice(where, "method", o.get("method", "basis"), BASIS_METHODS)}
    if "types" in o and "ratio" not in o:
        raise PlanError(f"{where}: types goes with ratio, not with ratios or ranks")
    defaulted = False
    if "ratio" in o:
        out["ratio"] = r = _num(where, "ratio", o["ratio"], 0.0, 1.0)
        types = o.get("types")
        if types is None:  # every type not claimed earlier (a family's absent types are skipped later)
            types, defaulted = [t for t in TYPES if t not in claimed], True
        elif not isinstance(types, list) or not types:
            raise PlanError(f"{where}: types must be a non-empty list of matrix types")
        else:
            out["types"] = [_type_name(where, t) for t in types]
        chosen = list(types) if r > 0 else []
    elif "ratios" in o:
        if not isinstance(o["ratios"], dict) or not o["ratios"]:
            raise PlanError(f"{where}: ratios must be a non-empty mapping type -> ratio")
        out["ratios"] = {_type_name(where, t): _num(where, f"ratios.{t}", r, 0.0, 1.0) for t, r in o["ratios"].items()}
        chosen = [t for t, r in out["ratios"].items() if r > 0]
    else:
        if not isinstance(o["ranks"], dict) or not o["ranks"]:
            raise PlanError(f"{where}: ranks must be a non-empty mapping type -> rank")
        out["ranks"] = {_type_name(where, t): _int(where, f"ranks.{t}", k, 1) for t, k in o["ranks"].items()}
        chosen = list(out["ranks"])
    shared = o.get("shared")
    if shared is not None:
        if not isinstance(shared, list):
            raise PlanError(f"{where}: shared must be a list of matrix types")
        out["shared"] = [_type_name(where, t) for t in shared]
    return Step("basis", out, chosen, defaulted)


def _inherit(where: str, o: dict) -> dict:
    _unknown(where, o, ("layers",))
    if "layers" not in o:
        raise PlanError(f"{where}: layers is required")
    return {"layers": _int(where, "layers", o["layers"], 1)}


def parse_plan(raw) -> Plan:
    """A checked Plan from its dict form (what yaml.safe_load gives)."""
    if not isinstance(raw, dict) or "steps" not in raw:
        raise PlanError("a plan is a mapping with a 'steps' list")
    extra = sorted(set(raw) - {"steps", "calibration"})
    if extra:
        raise PlanError(f"unknown plan key {extra[0]!r}; known: steps, calibration")
    if not isinstance(raw["steps"], list) or not raw["steps"]:
        raise PlanError("steps must be a non-empty list")
    steps, owner = [], {}
    for i, s in enumerate(raw["steps"], 1):
        if not isinstance(s, dict) or len(s) != 1:
            raise PlanError(f"step {i}: expected one method name mapped to its options, e.g. 'share: {{ratio: 0.2}}'")
        (method, opts), = s.items()
        where = f"step {i} ({method})"
        if method not in METHODS:
            raise PlanError(f"step {i}: unknown method {method!r}; known: {', '.join(METHODS)}")
        opts = {} if opts is None else opts
        if not isinstance(opts, dict):
            raise PlanError(f"{where}: options must be a mapping")
        if method == "share":
            step = Step(method, _share(where, opts))
        elif method == "basis":
            step = _basis(where, opts, set(owner))
        else:
            if any(x.method == "inherit" for x in steps):
                raise PlanError(f"{where}: a plan may inherit layers only once")
            step = Step(method, _inherit(where, opts))
        for t in step.claims():
            if t in owner:
                raise PlanError(f"{where}: compresses {t} again (already compressed by step {owner[t]}); "
                                "a weight matrix can be compressed by one step only")
            owner[t] = i
        steps.append(step)
    calib = raw.get("calibration") or {}
    if not isinstance(calib, dict):
        raise PlanError("calibration must be a mapping (data, windows, seq_len, seed)")
    _unknown("calibration", calib, tuple(CALIB_DEFAULTS))
    calib = {**CALIB_DEFAULTS, **calib}
    calib["windows"] = _int("calibration", "windows", calib["windows"], 1)
    calib["seq_len"] = _int("calibration", "seq_len", calib["seq_len"], 2)
    calib["seed"] = _int("calibration", "seed", calib["seed"], 0)
    if not isinstance(calib["data"], str) or not calib["data"]:
        raise PlanError("calibration: data must be a corpus name or file")
    return Plan(steps, calib)


def read_plan(path) -> Plan:
    """parse_plan of a YAML file; unreadable or malformed files are PlanErrors naming the file."""
    from pathlib import Path

    import yaml

    from jaxshare.yamlio import safe_load

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise PlanError(f"cannot read plan {path}: {e.strerror or e}") from None
    try:
        raw = safe_load(text, path)
    except yaml.YAMLError as e:
        raise PlanError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    try:
        return parse_plan(raw)
    except PlanError as e:
        raise PlanError(f"{path}: {e}") from None


def check_against(plan: Plan, cfg) -> None:
    """What needs the model: types the family has, inherit within its layers, share's unit count."""
    from jaxshare.basis.factor import default_types

    shared, private = default_types(cfg)
    present = set(shared) | set(private)
    L = cfg.n_layers
    for i, s in enumerate(plan.steps, 1):
        where = f"step {i} ({s.method})"
        if s.method == "inherit":
            if s.options["layers"] > L:
                raise PlanError(f"{where}: layers {s.options['layers']} is more than the model's {L}")
            L = s.options["layers"]
        elif s.method == "basis":
            if s.types_defaulted:
                s.types = [t for t in s.types if t in present]
            for t in s.types:
                if t not in present:
                    raise PlanError(f"{where}: {cfg.family} has no {t} weights; known: "
                                    f"{', '.join(t for t in TYPES if t in present)}")
        elif s.method == "share":
            n = int(round(s.options["ratio"] * L * cfg.n_kv_heads))
            if n > (L - 1) * cfg.n_kv_heads:
                raise PlanError(f"{where}: ratio {s.options['ratio']} asks for {n} of {L * cfg.n_kv_heads} units, "
                                f"but only {(L - 1) * cfg.n_kv_heads} have an earlier partner")
