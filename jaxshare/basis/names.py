"""Basis Sharing's option names, without jax: the CLI's parser (`jaxshare --help`) offers them as
choices, and building it must not load jax. The library modules import them from here."""
from __future__ import annotations

METHODS = ("basis", "svd-llm", "svd")
# how a group's basis is found: by shape, eigh of S(sum W W^T)S^T, or svd of the concatenation
PATHS = ("auto", "eig", "concat")
# The linear weight types, in jaxshare.core.matrices.TYPES' order (that table needs jax; a test keeps the two equal).
TYPE_NAMES = ("q", "k", "v", "o", "up", "gate", "down")
