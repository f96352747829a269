"""The repository's promises: README commands, CI script, CLI help, thin program packages."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jaxshare.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    block = re.search(r"```(?:bash|sh)\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_demo_and_test_commands_and_ci_runs_the_second():
    demo, tests = readme_commands()[:2]
    assert demo.endswith("jaxshare demo")
    assert tests.endswith("python -m pytest -q")
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == tests


@pytest.mark.parametrize("argv", [["--help"], ["fetch", "--help"], ["convert", "--help"], ["export", "--help"],
                                  ["eval", "--help"], ["eval", "ppl", "--help"], ["parity", "--help"],
                                  ["generate", "--help"], ["demo", "--help"]])
def test_every_subcommand_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 0 and "usage: jaxshare" in capsys.readouterr().out


def test_python_m_convert_reaches_the_same_code():
    out = subprocess.run([sys.executable, "-m", "convert", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "convert a model to a native jaxshare checkpoint" in out.stdout
