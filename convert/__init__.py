"""Conversion programs: `python -m convert SRC OUT` is `jaxshare convert SRC OUT`."""
