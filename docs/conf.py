"""Sphinx configuration: MyST Markdown pages, notebooks through myst-nb (not executed), book theme.

Build: ``python -m sphinx -W --keep-going -b html docs /tmp/docs_html`` (needs ``pip install -e '.[docs]'``).
"""
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))  # jaxshare from the checkout, installed or not

project = "jaxshare"
author = "the jaxshare authors"
copyright = "the jaxshare authors"

extensions = [
    "myst_nb",  # MyST Markdown (it loads myst_parser) and .ipynb
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "jaxshare_docs",  # the generated CLI reference and API member list (_ext/jaxshare_docs.py)
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = [
    "_build", "_generated", "_ext", "**/.ipynb_checkpoints", "Thumbs.db", ".DS_Store",
]

# MyST
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3  # [text](page.md#a-heading) links resolve

# notebooks are shown with their stored outputs; the slow tests execute them
nb_execution_mode = "off"

# autodoc: the public names of jaxshare.__all__
autodoc_typehints = "description"
default_role = "code"  # docstrings write `name` for code, as Markdown does
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "sphinx_book_theme"
html_title = "jaxshare"
html_theme_options = {"show_toc_level": 2, "navigation_with_keys": False}
