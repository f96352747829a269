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


COMMANDS = [[], ["fetch"], ["convert"], ["export"], ["eval"], ["eval", "ppl"], ["eval", "mc"], ["parity"], ["generate"], ["demo"],
            ["similarity"], ["attention-similarity"], ["share"], ["basis"], ["basis-pairs"], ["train"],
            ["train", "postshare"], ["train", "direct+post"], ["train", "plain"], ["train", "resume"], ["plot-run"],
            ["train", "inheritune"], ["train", "heal"], ["degeneration"], ["inherit"], ["compress"], ["quantize"],
            ["heal"], ["prune"]]


def test_the_help_list_covers_every_subcommand():
    import argparse

    def walk(parser, prefix):
        yield prefix
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    yield from walk(sp, [*prefix, name])

    assert sorted(walk(build_parser(), [])) == sorted(COMMANDS)


@pytest.mark.parametrize("words", COMMANDS, ids=lambda w: " ".join(w) or "jaxshare")
def test_every_subcommand_has_help(words, capsys):
    argv = [*words, "--help"]
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 0 and f"usage: {' '.join(['jaxshare', *words])} " in capsys.readouterr().out


def test_python_m_convert_reaches_the_same_code():
    out = subprocess.run([sys.executable, "-m", "convert", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "convert a model to a native jaxshare checkpoint" in out.stdout
