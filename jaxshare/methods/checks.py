"""Option checks shared by the methods' Options (one message shape: '<key> must be ...')."""
from __future__ import annotations

import math

from jaxshare.core.matrices import TYPES
from jaxshare.errors import MethodError


def number(key: str, v, lo: float, hi: float, lo_open: bool = False, hi_open: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise MethodError(f"{key} must be a number, got {v!r}")
    ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        span = ("(" if lo_open else "[") + f"{lo:g}, {hi:g}" + (")" if hi_open else "]")
        raise MethodError(f"{key} must be in {span}, got {v}")
    return float(v)


def integer(key: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise MethodError(f"{key} must be an integer at least {lo}, got {v!r}")
    return int(v)


def flag(key: str, v) -> bool:
    if not isinstance(v, bool):
        raise MethodError(f"{key} must be true or false, got {v!r}")
    return v


def choice(key: str, v, choices: tuple) -> str:
    if v not in choices:
        raise MethodError(f"{key} must be one of {', '.join(map(str, choices))}, got {v!r}")
    return v


def type_name(t) -> str:
    if t not in TYPES:
        raise MethodError(f"unknown matrix type {t!r}; known: {', '.join(TYPES)}")
    return t


def known_keys(opts: dict, known: tuple) -> None:
    extra = sorted(set(opts) - set(known))
    if extra:
        raise MethodError(f"unknown option {extra[0]!r}; known: {', '.join(known)}")


def required(opts: dict, key: str) -> None:
    if key not in opts:
        raise MethodError(f"{key} is required")


def exactly_one(opts, keys: tuple) -> str:
    """The one of `keys` that is set (not None) on `opts`, an Options dataclass."""
    given = [k for k in keys if getattr(opts, k) is not None]
    if len(given) != 1:
        names = ", ".join(keys[:-1]) + " or " + keys[-1]
        raise MethodError(f"give exactly one of {names} (got {', '.join(given) or 'none'})")
    return given[0]
