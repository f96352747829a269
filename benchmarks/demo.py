"""`jaxshare demo` on the embedded model, its summary recorded: the figures docs/results.md's
demo table gives (parity, dense PPL, DirectShare at 10% and 30%, Basis Sharing at 20%,
Inheritune), with the run's provenance.

    python -m benchmarks.demo [--model smollm2-135m] [--max-windows 16]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile

from benchmarks.common import write_result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-windows", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from jaxshare.cli.demo import run_demo

    with tempfile.TemporaryDirectory() as plots:
        summary = run_demo(args.model, args.seq_len, args.max_windows, plot_dir=plots)
    # what json can hold (the summary is made for printing; arrays and paths become text)
    write_result("demo", {"summary": json.loads(json.dumps(summary, default=str))}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
