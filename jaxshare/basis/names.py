"""Basis Sharing's option names, without jax: the CLI's parser (`jaxshare --help`) offers them as
choices, and building it must not load jax. The library modules import them from here."""
from __future__ import annotations

from jaxshare.core.config import MATRIX_TYPES as TYPE_NAMES  # noqa: F401  (jax-free; the parser offers them)

METHODS = ("basis", "svd-llm", "svd")
# how a group's basis is found: by shape, eigh of S(sum W W^T)S^T, or svd of the concatenation
PATHS = ("auto", "eig", "concat")
