"""What the CLI tests share: running the command in-process, and walking its parsers."""
import argparse

from jaxshare.cli.main import main


def run(capsys, *argv):
    """(exit code, stdout, stderr) of the CLI in-process; argparse's SystemExit counts as its code."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def leaves(parser, prefix=()):
    """(command words, parser) of every runnable subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sp in action.choices.items():
                if sp.get_default("fn") is not None:
                    yield (*prefix, name), sp
                yield from leaves(sp, (*prefix, name))
