"""The README stays short and true, every relative link resolves, and docs/ builds with warnings as errors."""
import ast
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
    """The file without its fenced code blocks (a `[x](y)` inside code is not a link)."""
    return re.sub(r"^(```|~~~).*?^\1", "", path.read_text(), flags=re.S | re.M)


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


def test_readme_cli_example_parses():
    from jaxshare.cli.main import build_parser

    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Command line\n+```bash\n(.*?)```", text, re.S).group(1)
    lines = [ln for ln in block.splitlines() if ln.startswith("jaxshare ")]
    assert len(lines) >= 5
    for line in lines:
        build_parser().parse_args(shlex.split(line.split("  #")[0])[1:])  # exits 2 on a wrong flag


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
    (tmp_path / "forward.md").write_text((tmp_path / "forward.md").read_text().replace("| 480 |", "| 481 |"))
    (tmp_path / "quantize.md").write_text((tmp_path / "quantize.md").read_text().replace("| 30.68 |", "| 30.67 |"))
    assert tables.main(["--check", "--results", str(tmp_path)]) == 1
    assert "forward.md, quantize.md" in capsys.readouterr().err
