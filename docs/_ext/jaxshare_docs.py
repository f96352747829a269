"""Pages generated from the code at build time: the CLI reference and the API member list.

``docs/_generated/cli_commands.md`` is every ``jaxshare`` subcommand's ``--help``, walked from
``jaxshare.cli.main.build_parser()``; ``docs/_generated/api_members.md`` is one autodoc entry per
name in ``jaxshare.__all__``; ``docs/_generated/stale_results.md`` is ``benchmarks.stale``'s table of
the committed results the code has moved past; ``docs/_generated/provenance_*.md`` lists, for a results
file whose rows ran at several commits or on several machines, each row's own stamp (a report's
footer names only its newest row's). cli.md, api.md, results.md and healing.md include them, so none
is typed by hand.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import re
from pathlib import Path

HELP_WIDTH = 100
ROOT = Path(__file__).resolve().parents[2]
# generated page -> the JSONL results file whose rows it stamps (the pages that include them: healing.md)
PROVENANCE = {"provenance_heal_books.md": "experiments/results/heal_books.jsonl",
              "provenance_heal.md": "experiments/results/heal.jsonl",
              "provenance_heal_teacher_books.md": "experiments/results/heal_teacher_books.jsonl",
              "provenance_heal_teacher_students_books.md": "experiments/results/heal_teacher_students_books.jsonl"}


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


def row_label(row: dict) -> str:
    """An experiment row by what it ran: student, budget, heal and tokens where it has them."""
    out = [str(row.get("student", "?"))]
    if row.get("budget") is not None:
        out.append(f"-{row['budget']:.0%}")
    if row.get("heal") is not None:
        out.append(str(row["heal"]))
        if row["heal"] != "none":
            out.append(str(row.get("tokens_asked", row.get("tokens", "?"))))
    return " ".join(out)


def provenance_markdown(rel: str) -> str:
    """Each row of a JSONL results file with its own stamp (commit, machine, date, command), rows in
    file order and consecutive rows of one run on one line."""
    groups: list[tuple[tuple, list[str], str]] = []
    for line in (ROOT / rel).read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        commit = str(row.get("commit") or "?")[:10] + (" (dirty)" if row.get("dirty") else "")
        # the first rows' stamps had no CPU model: "x86_64  2 cpus"
        machine = str(row.get("machine", "?")).replace("  ", " (CPU model not recorded) ")
        key = (commit, machine, row.get("command", "?"))
        if groups and groups[-1][0] == key:
            groups[-1][1].append(row_label(row))
        else:
            groups.append((key, [row_label(row)], str(row.get("date", "?"))))
    out = [f"Each row of `{rel}` with the commit, machine and command it ran under (the line under the "
           "table names only the newest row's):", "", "| rows | commit | machine | started | command |",
           "| --- | --- | --- | --- | --- |"]
    for (commit, machine, command), labels, date in groups:
        out.append(f"| {'; '.join(labels)} | {commit} | {machine} | {date} | `{command}` |")
    return "\n".join(out) + "\n"


def generate(app) -> None:
    gen = Path(app.srcdir) / "_generated"
    gen.mkdir(exist_ok=True)
    for name, text in (("cli_commands.md", cli_markdown()), ("api_members.md", api_markdown()),
                       ("stale_results.md", stale_markdown()),
                       *((name, provenance_markdown(rel)) for name, rel in PROVENANCE.items())):
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
