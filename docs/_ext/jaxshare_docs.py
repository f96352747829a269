"""Pages generated from the code at build time: the CLI reference and the API member list.

``docs/_generated/cli_commands.md`` is every ``jaxshare`` subcommand's ``--help``, walked from
``jaxshare.cli.main.build_parser()``; ``docs/_generated/api_members.md`` is one autodoc entry per
name in ``jaxshare.__all__``; ``docs/_generated/stale_results.md`` is ``benchmarks.stale``'s table of
the committed results the code has moved past. cli.md, api.md and results.md include them, so none
is typed by hand.
"""
from __future__ import annotations

import argparse
import inspect
import os
import re
from pathlib import Path

HELP_WIDTH = 100


def walk(parser: argparse.ArgumentParser, words: list[str]):
    yield words, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, [*words, name])


def cli_markdown() -> str:
    from jaxshare.cli.main import build_parser

    os.environ["COLUMNS"] = str(HELP_WIDTH)  # argparse wraps the help to $COLUMNS
    out = []
    for words, parser in walk(build_parser(), []):
        title = " ".join(["jaxshare", *words])
        out += [f"## `{title}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def api_markdown() -> str:
    import jaxshare

    out = []
    for name in jaxshare.__all__:
        obj = getattr(jaxshare, name)
        if inspect.ismodule(obj):
            directive = "automodule"
        elif inspect.isclass(obj):
            directive = "autoclass"
        elif callable(obj):
            directive = "autofunction"
        else:
            directive = "autodata"
        out += [f"## `js.{name}`", "", "```{eval-rst}", f".. {directive}:: jaxshare.{name}"]
        if directive == "autoclass":
            out += ["   :members:"]
        out += ["```", ""]
    return "\n".join(out)


def stale_markdown() -> str:
    """benchmarks.stale's table: which committed results the code has moved past."""
    from benchmarks import stale

    try:
        return stale.markdown(stale.check())
    except (OSError, RuntimeError) as e:  # a source tree without git history cannot tell
        return f"The staleness check could not run here ({e}); run `python -m benchmarks.stale` in a clone.\n"


def generate(app) -> None:
    gen = Path(app.srcdir) / "_generated"
    gen.mkdir(exist_ok=True)
    for name, text in (("cli_commands.md", cli_markdown()), ("api_members.md", api_markdown()),
                       ("stale_results.md", stale_markdown())):
        path = gen / name
        if not path.exists() or path.read_text() != text:  # unchanged: no rebuild
            path.write_text(text)


# a lone ``*`` in a docstring (``*lead`` shapes, ``*index`` fields) is not reST emphasis: escape it
LONE_STAR = re.compile(r"(?<![\w*\\])\*(?=\w+(?![\w*]))")


def escape_lone_stars(app, what, name, obj, options, lines) -> None:
    lines[:] = [LONE_STAR.sub(r"\\*", line) for line in lines]


def setup(app):
    app.connect("builder-inited", generate)
    app.connect("autodoc-process-docstring", escape_lone_stars)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
