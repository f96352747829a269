"""`python -m convert SRC OUT [--dtype ...]`, or `python -m convert export MODEL OUT`: thin front ends
of `jaxshare convert` and `jaxshare export`."""
import sys

from jaxshare.cli.main import main

argv = sys.argv[1:]
sys.exit(main(argv if argv[:1] in (["export"], ["convert"]) else ["convert", *argv]))
