"""Compression methods behind one protocol (`methods.base.Method`), used by compose, the CLI and `js`.

    from jaxshare.methods import METHODS
    m2, report = METHODS["share"].apply(model, METHODS["share"].Options(ratio=0.2))
"""
from __future__ import annotations

from jaxshare.methods.base import Method, compressed_types
from jaxshare.methods.basis import Basis, BasisOptions
from jaxshare.methods.heal import Heal, HealOptions
from jaxshare.methods.inherit import Inherit, InheritOptions
from jaxshare.methods.prune import Prune, PruneOptions
from jaxshare.methods.quantize import Quantize
from jaxshare.methods.share import Share, ShareOptions

# plan order of the docs; a plan may list them in any order the claims and `last` allow
METHODS: dict[str, Method] = {m.name: m for m in (Inherit(), Prune(), Share(), Basis(), Quantize(), Heal())}

__all__ = ["METHODS", "Method", "BasisOptions", "HealOptions", "InheritOptions", "PruneOptions", "ShareOptions", "compressed_types"]
