"""Sphinx configuration of the API reference: the docstrings of `research/`, one page per subpackage.

Build (as docs/development.md shows; tests/test_docs_commands.py runs that and checks the pages, warnings as errors):

    python -m sphinx -W --keep-going -b html docs /tmp/research-docs

Only docs/index.md and docs/api/ belong to this site. The guide pages (docs/*.md) and the
benchmark tables (docs/benchmarks/) are GitHub-rendered Markdown and stay out of it.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Document the checkout these docs sit in, even where another copy of `research` is installed.
sys.path.insert(0, str(HERE.parent))
# Autodoc imports every module; CPU is enough and avoids probing for accelerators.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

project = "research"
author = "research authors"
copyright = "research authors"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode", "myst_parser"]

root_doc = "index"
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# Everything at the top of docs/ other than the site's own files: the guide pages and
# docs/benchmarks/ (and any page added there later) are not part of this site.
_SITE = {"conf.py", "index.md", "api"}
exclude_patterns = sorted(p.name for p in HERE.iterdir() if p.name not in _SITE)

# Docstrings are plain prose that quote code in single `backticks`: render those as code.
default_role = "code"

# Each page says `:members:` itself; these only set the order and show base classes.
autodoc_default_options = {"member-order": "bysource", "show-inheritance": True}
autodoc_typehints = "signature"
# Keep signatures readable: `ml_collections.ConfigDict`, not its full import path.
autodoc_typehints_format = "short"
python_use_unqualified_type_names = True

html_theme = "alabaster"
html_title = "research API reference"
html_static_path: list[str] = []
