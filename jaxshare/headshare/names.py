"""Head sharing's option names, without jax: the CLI's parser (`jaxshare --help`) offers them as
choices, and building it must not load jax. The library modules import them from here."""
from __future__ import annotations

MATCHES = ("qk", "q", "k", "v", "qkv", "separate")  # match functions (paper Table 12)
KEEP = ("root", "mean", "data")  # what a tied group stores: the root's row, the mean, a calibration merge
CORRECT = ("none", "qk", "qkv")  # per-unit corrections fitted on calibration data
