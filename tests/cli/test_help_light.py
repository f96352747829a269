"""Building the parser and `jaxshare --help` load no jax: the choices the parser offers (match
functions, keep/correct, basis methods and paths, matrix types) live in jax-free name modules."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CODE = """
import sys
from jaxshare.cli.main import build_parser, main
build_parser()
for argv in {argvs!r}:
    try:
        main(argv)
    except SystemExit:
        pass
print(sorted(m for m in sys.modules if m == "jax" or m.startswith("jax.")))
"""


@pytest.mark.parametrize("argvs", [[["--help"]], [["share", "--help"], ["basis", "--help"], ["similarity", "--help"]]])
def test_help_imports_no_jax(argvs):
    proc = subprocess.run([sys.executable, "-c", CODE.format(argvs=argvs)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout[-2000:]


def test_one_home_for_the_names():
    from jaxshare.basis import factor, names as basis_names
    from jaxshare.core.matrices import TYPES
    from jaxshare.headshare import datashare, names as share_names, similarity

    assert basis_names.TYPE_NAMES == tuple(TYPES)  # core.config's jax-free names are core.matrices' table's
    assert factor.METHODS is basis_names.METHODS
    assert similarity.MATCHES is share_names.MATCHES
    assert datashare.KEEP is share_names.KEEP and datashare.CORRECT is share_names.CORRECT
