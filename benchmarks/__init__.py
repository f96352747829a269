"""Benchmarks: run from the checkout root as `python -m benchmarks.<name>` (jaxshare installed or on the path)."""
