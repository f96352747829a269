"""Experiments: run from the checkout root as `python -m experiments.<name>` (jaxshare installed or on the path)."""
