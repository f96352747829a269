"""The README stays short and true, every relative link resolves, and docs/ builds with warnings as errors."""
import ast
import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(path: Path) -> str:
    """The file without its fenced code blocks (a `[x](y)` inside code is not a link). A MyST
    directive's fence (```{warning}, ```{note}) holds rendered prose, so its lines stay."""
    out, closer, code = [], None, False
    for line in path.read_text().splitlines():
        fence = re.match(r"(`{3,}|~{3,})\s*(\{[\w-]+\})?", line)
        if closer is None and fence:
            closer = fence.group(1)
            name = fence.group(2)
            code = name is None or name in ("{code-block}", "{code-cell}", "{literalinclude}")
            continue
        if closer is not None and line.strip() == closer:
            closer = None
            continue
        if closer is None or not code:
            out.append(line)
    return "\n".join(out)


def test_readme_is_at_most_12_kb():
    size = (ROOT / "README.md").stat().st_size
    assert size <= 12_000, f"README.md is {size} bytes; move the detail into docs/"


def anchors(page: Path) -> set[str]:
    """The heading anchors of a Markdown page, slugged as GitHub and MyST (myst_heading_anchors) do."""
    return {re.sub(r"[^\w\- ]", "", m.strip().lower()).replace(" ", "-")
            for m in re.findall(r"^#{1,6} +(.+?) *#*$", prose(page), flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files_and_headings_that_exist(page):
    missing = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # URLs, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = page.parent / path if path else page
        if not dest.exists():
            missing.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            missing.append(f"{target} (no such heading)")
    assert not missing, f"{page.name}: links to missing files or headings: {missing}"


def test_the_anchor_check_sees_a_heading_that_is_gone(tmp_path):
    (tmp_path / "a.md").write_text("# Speed and memory (CPU, 2 cores)\n\n## Known gaps\n")
    assert anchors(tmp_path / "a.md") == {"speed-and-memory-cpu-2-cores", "known-gaps"}


def test_prose_keeps_a_directive_and_drops_code(tmp_path):
    page = tmp_path / "a.md"
    page.write_text("```{warning}\nsee [gone](#gone)\n```\n\n```bash\n[x](#code)\n```\n"
                    "```{include} b.md\n```\n[after](#after)\n")
    assert LINK.findall(prose(page)) == ["#gone", "#after"]


def test_readme_cli_example_parses():
    from jaxshare.cli.main import build_parser

    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Command line\n+```bash\n(.*?)```", text, re.S).group(1)
    lines = [ln for ln in block.splitlines() if ln.startswith("jaxshare ")]
    assert len(lines) >= 5
    for line in lines:
        build_parser().parse_args(shlex.split(line.split("  #")[0])[1:])  # exits 2 on a wrong flag


def test_synopsis_defaults_in_the_docs_are_the_parsers():
    """A synopsis's `[--flag value]` shows the default: the parser's, or where the parser resolves it
    later (default None), the one its --help states (healing.md once showed wiki:train and lr 5e-5
    after both defaults had moved)."""
    from jaxshare.cli.main import build_parser

    subs = next(a for a in build_parser()._actions if a.choices and "heal" in a.choices).choices
    found = 0
    for page in sorted(DOCS.glob("*.md")):
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                shown = re.findall(r"\[(--[a-z-]+) ([a-z0-9:.+-]+)\]", line)
                if not line.startswith("jaxshare ") or not shown:
                    continue
                actions = {o: a for a in subs[line.split()[1]]._actions for o in a.option_strings}
                for flag, value in shown:
                    a = actions[flag]
                    if a.default is None:
                        stated = re.search(r"default: ([^)]+)\)", " ".join((a.help or "").split()))
                        assert stated and stated.group(1) == value, f"{page.name}: {flag} shows {value}, --help: {a.help}"
                    else:
                        want = type(a.default)(value) if isinstance(a.default, (int, float)) else value
                        assert a.default == want, f"{page.name}: {flag} shows {value}, the parser's default is {a.default!r}"
                    found += 1
    assert found >= 6


def test_readme_python_example_uses_public_names():
    import jaxshare

    code = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    used = {n.attr for n in ast.walk(ast.parse(code))
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "js"}
    assert used and used <= set(jaxshare.__all__), used - set(jaxshare.__all__)


def test_the_test_extra_carries_the_docs_extra():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    from packaging.requirements import Requirement

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    docs = {str(Requirement(r)) for r in extras["docs"]}
    test = {f"{r.name}{r.specifier}" for r in map(Requirement, extras["test"])}
    assert docs <= test, docs - test


def test_sphinx_build_has_no_warnings(tmp_path):
    for module in ("sphinx", "myst_parser", "myst_nb", "sphinx_book_theme"):
        pytest.importorskip(module, reason="the docs extra is not installed: pip install -e '.[docs]'")
    out = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS),
                          str(tmp_path / "html")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-5000:]
    built = {p.stem for p in (tmp_path / "html").glob("*.html")}
    assert {p.stem for p in DOCS.glob("*.md")} <= built
    assert "jaxshare share" in (tmp_path / "html" / "cli.html").read_text()  # the generated CLI reference


RESULT_TABLES = sorted([*(ROOT / "benchmarks" / "results").glob("*.md"), *(ROOT / "experiments" / "results").glob("*.md")])


def measurement_rows(text: str) -> dict[str, frozenset[str]]:
    """Table rows with a digit, whitespace-normalized, each mapped to its measurements: the numbers
    with two or more decimals (thousands separators dropped)."""
    return {" ".join(line.split()): frozenset(re.findall(r"\d+\.\d\d+", line.replace(",", "")))
            for line in text.splitlines() if line.startswith("|") and re.search(r"\d", line)}


@pytest.mark.parametrize("result", RESULT_TABLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_generated_result_tables_are_included_not_copied(result):
    """A measurement row reaches the docs only through an {include} of its generated file: no page
    holds a copy of it, verbatim or retyped (three or more of one row's measurements in one row)."""
    generated = measurement_rows(result.read_text())
    copies = [f"{page.name}: {row}" for page in sorted(DOCS.glob("*.md"))
              for row, nums in measurement_rows(page.read_text()).items()
              if row in generated or (len(nums) >= 3 and any(nums <= g for g in generated.values()))]
    assert not copies, f"rows of {result.relative_to(ROOT)} typed into docs (use an include):\n" + "\n".join(copies)


def test_generated_result_tables_match_their_json(tmp_path, capsys):
    """Every table `benchmarks.tables` makes is committed as its result files give it, and reaches a
    page through an {include}; --check notices a table edited by hand."""
    from benchmarks import tables

    assert tables.main(["--check"]) == 0, capsys.readouterr().err
    pages = "".join(p.read_text() for p in DOCS.glob("*.md"))
    assert not [n for n in tables.TABLES
                if f"{{include}} ../{tables.paths(n)[1].relative_to(ROOT)}" not in pages]
    for name in tables.TABLES:
        sources, md = tables.paths(name)
        for path in (*sources, md):
            (tmp_path / path.name).write_text(path.read_text())
    assert tables.main(["--check", "--results", str(tmp_path)]) == 0
    forward_md = (tmp_path / "forward.md").read_text()
    assert "| fp32 | 1 | " in forward_md
    (tmp_path / "forward.md").write_text(forward_md.replace("| fp32 | 1 | ", "| fp32 | 1 | 9", 1))
    (tmp_path / "quantize.md").write_text((tmp_path / "quantize.md").read_text().replace("dequantized) | ", "dequantized) | 9", 1))
    assert tables.main(["--check", "--results", str(tmp_path)]) == 1
    assert "forward.md, quantize.md" in capsys.readouterr().err


# Numbers in prose (issue 26): a measured figure comes from a result file, never typed by hand.
RESULT_FILES = sorted(p for d in ("benchmarks/results", "experiments/results") for p in (ROOT / d).rglob("*")
                      if p.suffix in (".json", ".jsonl", ".md"))
DECIMAL = re.compile(r"(?<![\w.\-/])(\d{1,3}(?:,\d{3})+|\d+)\.(\d+)(?:e([-+]?\d+))?(?![\w.]*\d)")
# A figure in these units may be stored in another: bytes for GB/GiB/MiB, a fraction for %.
UNIT_SCALE = {"GB": 1e9, "GiB": 2 ** 30, "MB": 1e6, "MiB": 2 ** 20, "%": 0.01}
# Decimals in prose that are not measurements, each (page, figure) with its reason.
NOT_MEASURED = {
    ("head-sharing.md", "18.75"): "arithmetic: 27 of 90 q/k/v units tied is 18.75% of the attention params",
    ("results.md", "1.014"): "quotes the retired claim the warning says was rerun",
    ("results.md", "3.83"): "quotes the retired claim the warning says was rerun",
    ("head-sharing.md", "3.83"): "quotes the retired claim the page says was rerun",
    ("head-sharing.md", "13.5"): "the retired 2-repetition run's torch step times, quoted from issue 26; no file "
                                 "holds that run any more",
    ("results.md", "1.54"): "the random 1.5B checkpoint's size rounded: memory.json holds its 1,543,714,304 params",
    ("healing.md", "38.61"): "a target, not a measurement: +30% over the dense wiki PPL 29.70",
    ("healing.md", "34.16"): "a target, not a measurement: +15% over the dense wiki PPL 29.70",
}


def measured_prose(page: Path) -> list[tuple[int, str]]:
    """The page's prose lines (numbered), without code: fenced code and {include} blocks (their
    numbers come from generated files), indented code, inline code, link targets and comments. The
    text of admonitions ({warning}, {note}) stays: it is prose."""
    out, fence, code = [], None, False
    prev_blank = True
    for n, line in enumerate(page.read_text().splitlines(), 1):
        stripped = line.strip()
        m = re.match(r"^\s*(```+|~~~+)\s*(\S*)", line)
        if fence:
            if m and m.group(1) == fence and not m.group(2):
                fence = None
            continue
        if m:
            if not m.group(2).startswith("{") or m.group(2) == "{include}":
                fence = m.group(1)
            prev_blank = False
            continue
        if stripped and line.startswith("    ") and (prev_blank or code):
            code = True
            continue
        code = code and not stripped
        prev_blank = not stripped
        text = re.sub(r"`[^`]*`", "", line)
        text = re.sub(r"\]\([^)]*\)|<!--.*?-->|https?://\S+", "", text)
        out.append((n, text))
    return out


def _json_numbers(x, out: set[str]) -> None:
    """The numbers of a parsed JSON value, less long series of bare numbers (timelines, per-window
    NLLs, matrices): the docs quote their summaries, and a few thousand raw samples would match
    any typed figure. Lists of records (rows, training curves) are kept whole."""
    if isinstance(x, dict):
        for v in x.values():
            _json_numbers(v, out)
    elif isinstance(x, list):
        if len(x) <= 16 or all(isinstance(v, dict) for v in x):
            for v in x:
                _json_numbers(v, out)
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        out.add(repr(x))
    elif isinstance(x, str):  # a command line or a note in the file
        out.update(re.findall(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", x.replace(",", "")))


def result_values() -> tuple[set[str], list[float]]:
    """Every number the result files hold: the .md tables and text as printed, the JSON values."""
    import json

    tokens = set()
    for path in RESULT_FILES:
        text = path.read_text()
        if path.suffix == ".md":
            tokens.update(re.findall(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", text.replace(",", "")))
        else:
            for doc in (text.splitlines() if path.suffix == ".jsonl" else [text]):
                if doc.strip():
                    _json_numbers(json.loads(doc), tokens)
    values = {abs(float(t)) for t in tokens}
    return tokens, sorted(v for v in values if math.isfinite(v))  # a NaN would unsort the list


def backed(figure: str, unit: str, tokens: set[str], values: list[float]) -> bool:
    """The figure as a result file gives it, or some figure of one rounded to as many places (in
    bytes for GB/GiB/MiB, as a fraction for %)."""
    import bisect

    whole, places, exp = DECIMAL.fullmatch(figure).groups()
    plain = figure.replace(",", "")
    if plain in tokens:
        return True
    x = float(plain)
    half = 0.5 * 10 ** (-len(places) + int(exp or 0))
    for scale in (1.0, UNIT_SCALE.get(unit, 1.0)):
        lo, hi = (x - half) * scale * (1 - 1e-12), (x + half) * scale * (1 + 1e-12)
        i = bisect.bisect_left(values, lo)
        if i < len(values) and values[i] <= hi:
            return True
    return False


def unbacked_figures(pages) -> list[str]:
    tokens, values = result_values()
    missing = []
    for page in pages:
        for n, text in measured_prose(page):
            for m in DECIMAL.finditer(text):
                if re.search(r"arXiv:?\s*$", text[:m.start()]):  # a paper id
                    continue
                unit = re.match(r"\s?(GiB|GB|MiB|MB|%)?", text[m.end():]).group(0)
                if (page.name, m.group(0)) in NOT_MEASURED or backed(m.group(0), unit.strip(), tokens, values):
                    continue
                missing.append(f"{page.name}:{n}: {m.group(0)}{unit}  ({text.strip()[:100]})")
    return missing


def test_decimal_figures_in_docs_come_from_result_files():
    """Every decimal figure in the docs' prose (outside code and generated includes) is one that a
    file under benchmarks/results/ or experiments/results/ holds, to the places the page prints.
    This catches a figure typed by hand that no result file backs, or one that went stale; it cannot
    tell which file a figure should come from (a stale figure may still match another by chance).
    The README's headline figures are held to the same rule."""
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    missing = unbacked_figures(pages)
    assert not missing, ("decimal figures in docs/ that no result file holds (generate the sentence with "
                         "its table, match the generator's rounding, or drop the figure; a number that is "
                         "not a measurement goes in NOT_MEASURED with its reason):\n" + "\n".join(missing))


def test_provenance_pages_give_each_row_its_own_stamp(tmp_path):
    """A results file whose rows ran at several commits and machines gets a generated page with each
    row's own stamp, included where its table is (a report's footer names only the newest row's)."""
    sys.path.insert(0, str(DOCS / "_ext"))
    import jaxshare_docs

    for name, rel in jaxshare_docs.PROVENANCE.items():
        assert f"{{include}} _generated/{name}" in (DOCS / "healing.md").read_text()
        text = jaxshare_docs.provenance_markdown(rel)
        rows = [ln for ln in (ROOT / rel).read_text().splitlines() if ln.strip()]
        lines = text.splitlines()[4:]
        assert sum(ln.split(" | ")[0].count(";") + 1 for ln in lines) == len(rows)
    f = tmp_path / "rows.jsonl"
    stamp = {"machine": "x86_64 A 2 cpus", "command": "python -m x", "date": "d"}
    f.write_text("\n".join(json.dumps(r) for r in (
        {"student": "dense", "heal": "none", "commit": "a" * 40, **stamp},
        {"student": "prune", "budget": 0.2, "heal": "ce", "tokens_asked": 50000, "commit": "a" * 40, **stamp},
        {"student": "prune", "budget": 0.2, "heal": "ce", "tokens_asked": 200000, "commit": "b" * 40, "dirty": True,
         **stamp, "machine": "x86_64 B 2 cpus"})) + "\n")
    lines = jaxshare_docs.provenance_markdown(str(f)).splitlines()[4:]
    assert lines == ["| dense none; prune -20% ce 50000 | aaaaaaaaaa | x86_64 A 2 cpus | d | `python -m x` |",
                     "| prune -20% ce 200000 | bbbbbbbbbb (dirty) | x86_64 B 2 cpus | d | `python -m x` |"]


def test_the_figure_check_sees_a_typed_figure(tmp_path):
    """A figure no result file holds is reported; one a file holds (also rounded, or in bytes for
    GiB), code, inline code, an include and a paper id are not."""
    page = tmp_path / "x.md"
    page.write_text("Prose 30.68 PPL (30.7), 12.65 GB, and 123.456789 s typed by hand (arXiv 2402.11819).\n\n"
                    "```bash\nrun 987.654\n```\n`inline 987.654`\n\n```{include} ../x.md\n987.654\n```\n\n"
                    "```{warning}\nAn admonition is prose: 876.5432.\n```\n")
    assert [m.split(": ")[1].split()[0] for m in unbacked_figures([page])] == ["123.456789", "876.5432"]
