"""Compression plans: an ordered list of steps (inherit, prune, share, basis, quantize) checked before any compute.

A plan is what `jaxshare compress --plan plan.yaml` reads and what `--ratio` writes:

    steps:
      - inherit: {layers: 28}                       # keep the first k layers (Inheritune)
      - prune: {mlp: 0.2, compensate: true}         # width pruning: MLP channels (and kv_groups), smaller dense
      - share: {ratio: 0.2, match: qk, keep: mean}  # head sharing of the q/k/v units (DirectShare)
      - basis: {group_size: 2, ratios: {up: 0.3, down: 0.1}}   # Basis Sharing, per-type ratios
      - quantize: {bits: 8, method: gptq}           # weight-only int8/int4 of every linear weight
      - heal: {tokens: 50000, trains: lora}         # distill from the starting model (optional, last)
    calibration: {data: books:train, windows: 16, seq_len: 512, seed: 0}

A basis step names its types through exactly one of `ratio` + `types` (one ratio for the listed
types, default: every type not compressed by an earlier step), `ratios` ({type: ratio}) or
`ranks` ({type: rank}, exact; what the budgeted plan writes). A ratio of 0 leaves that type dense.
No weight matrix may be compressed by two steps (share claims q, k, v and with share_o o; basis
claims its types); inherit may appear once and must keep at least one layer. Quantization claims
no type: it packs every linear weight in whatever form the earlier steps left it (dense, bank rows,
a basis and its coefficients), so it must be the last compressing step; a step after it is refused
by name, except `heal`, which compresses nothing and trains what the plan built, with the plan's
starting model as its teacher (it may appear once, at the very end).
Each step's options are its method's Options (jaxshare.methods), which check them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from jaxshare.core.matrices import TYPES
from jaxshare.errors import JaxshareError
from jaxshare.methods import METHODS as REGISTRY
from jaxshare.methods.base import Method
from jaxshare.methods.basis import present_types
from jaxshare.yamlio import safe_load

METHODS = tuple(REGISTRY)
CALIB_DEFAULTS = {"data": "books:train", "windows": 16, "seq_len": 512, "seed": 0}


class PlanError(JaxshareError, ValueError):
    """A plan that cannot be carried out as written (one line, names the step and the field)."""


@dataclass
class Step:
    method: str
    options: dict = field(default_factory=dict)  # as written in the plan (normalized, defaults filled)
    types: list = field(default_factory=list)  # basis: the types it compresses (ratio > 0)
    types_defaulted: bool = False  # basis `ratio` without `types`: absent types of a family are skipped

    @property
    def impl(self) -> Method:
        return REGISTRY[self.method]

    @property
    def opts(self):
        """The step's options as its method's validated Options."""
        return self.impl.from_dict(self.options)

    def claims(self) -> list[str]:
        """The weight types this step compresses."""
        if self.types_defaulted:  # decided by the plan: every type no earlier step claimed
            return list(self.types)
        return [t for t in TYPES if t in self.impl.claims(self.opts)]

    def needs_grams(self) -> bool:
        # a step whose types were left to the plan and came out empty compresses, and reads, nothing
        return self.impl.needs_grams(self.opts) and not (self.types_defaulted and not self.types)

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
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def needs_grams(self) -> bool:
        return any(s.needs_grams() for s in self.steps)


def _calib_int(key: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise PlanError(f"calibration: {key} must be an integer at least {lo}, got {v!r}")
    return v


def _step(i: int, method: str, opts: dict, taken: set) -> Step:
    """One checked step; `taken`: the types earlier steps compress."""
    where = f"step {i} ({method})"
    impl = REGISTRY[method]
    try:
        o = impl.from_dict(opts)
    except JaxshareError as e:  # the method's own one line, prefixed with the step
        raise PlanError(f"{where}: {e}") from None
    named = getattr(o, "named_types", lambda: ())()
    claims = impl.claims(o, None, frozenset(taken))
    return Step(method, impl.to_dict(o), [t for t in TYPES if t in claims], named is None)


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
        if method == "inherit" and any(x.method == "inherit" for x in steps):
            raise PlanError(f"{where}: a plan may inherit layers only once")
        if getattr(REGISTRY[method], "after_all", False) and any(x.method == method for x in steps):
            raise PlanError(f"{where}: a plan may {method} only once")
        for j, x in enumerate(steps, 1):
            if x.impl.last and not (getattr(REGISTRY[method], "after_all", False) and not getattr(x.impl, "after_all", False)):
                raise PlanError(f"{where}: comes after step {j} ({x.method}), which must be the last step (it "
                                f"packs the weights as they are when it runs, and nothing may rewrite them "
                                f"afterwards): move {x.method} to the end")
        step = _step(i, method, opts, set(owner))
        for t in step.claims():
            if t in owner:
                raise PlanError(f"{where}: compresses {t} again (already compressed by step {owner[t]}); "
                                "a weight matrix can be compressed by one step only")
            owner[t] = i
        steps.append(step)
    calib = raw.get("calibration") or {}
    if not isinstance(calib, dict):
        raise PlanError("calibration must be a mapping (data, windows, seq_len, seed)")
    unknown = sorted(set(calib) - set(CALIB_DEFAULTS))
    if unknown:
        raise PlanError(f"calibration: unknown option {unknown[0]!r}; known: {', '.join(CALIB_DEFAULTS)}")
    calib = {**CALIB_DEFAULTS, **calib}
    calib["windows"] = _calib_int("windows", calib["windows"], 1)
    calib["seq_len"] = _calib_int("seq_len", calib["seq_len"], 2)
    calib["seed"] = _calib_int("seed", calib["seed"], 0)
    if not isinstance(calib["data"], str) or not calib["data"]:
        raise PlanError("calibration: data must be a corpus name or file")
    return Plan(steps, calib)


def read_plan(path) -> Plan:
    """parse_plan of a YAML file; unreadable or malformed files are PlanErrors naming the file."""
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
    """What needs the model, step by step on the model each step receives: types the family has,
    inherit within its layers, share's unit count, quantization groups that divide the rows."""
    for i, s in enumerate(plan.steps, 1):
        if s.types_defaulted:
            present = present_types(cfg)
            s.types = [t for t in s.types if t in present]
        try:
            cfg = s.impl.check(s.opts, cfg)
        except JaxshareError as e:
            raise PlanError(f"step {i} ({s.method}): {e}") from None
