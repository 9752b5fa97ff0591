"""Sphinx configuration for the scexceiver documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html``. The build needs no network:
the tutorials (jupytext percent scripts in ``tutorials/``, linked here as
``docs/tutorials``) are executed once by myst-nb during the build, on bundled data, and
the architecture figure is drawn from the real module (``docs/_scripts/architecture.py``).
Links to other projects' documentation (intersphinx) need their inventories online, so
they are only enabled where those are reachable: on Read the Docs, or with
``SCEXCEIVER_INTERSPHINX=1``.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "_scripts"))

from architecture import write_architecture_svg  # noqa: E402

# -- Project information -----------------------------------------------------

project = "scexceiver"
author = "scexceiver developers"
copyright = "scexceiver developers"
release = _version("scexceiver")
version = ".".join(release.split(".")[:2])

# -- General configuration ---------------------------------------------------

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.intersphinx",
]

master_doc = "index"
templates_path = ["_templates"]
html_static_path = ["_static"]
exclude_patterns = ["_build", "_scripts", "conf.py", "Thumbs.db", ".DS_Store", "**/*.ipynb"]

# -- Notebooks (myst-nb) -----------------------------------------------------

# Tutorials are jupytext percent scripts; myst-nb reads them as notebooks and executes
# them once per build (CI runs no other copy of them). "cache" re-executes a tutorial
# only when its code changed since the last local build.
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
nb_execution_mode = os.environ.get("SCEXCEIVER_NB_EXECUTION", "cache")
nb_execution_timeout = 3600  # a guard against hangs; the quick start takes minutes
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
nb_output_stderr = "remove"  # progress bars and library warnings

# -- autodoc / autosummary ---------------------------------------------------

autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autoclass_content = "class"

# -- napoleon (numpy-style docstrings) ---------------------------------------

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_include_init_with_doc = False
napoleon_use_rtype = True
napoleon_use_param = True

# -- MyST --------------------------------------------------------------------

myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# -- intersphinx -------------------------------------------------------------

# No package installed here ships these inventories, and the offline -W build must not
# fail on unreachable ones; without them, references to these projects render as text.
if os.environ.get("READTHEDOCS") or os.environ.get("SCEXCEIVER_INTERSPHINX"):
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable/", None),
        "pandas": ("https://pandas.pydata.org/docs/", None),
        "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
        "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
        "scvi-tools": ("https://docs.scvi-tools.org/en/stable/", None),
        "torch": ("https://docs.pytorch.org/docs/stable/", None),
        "lightning": ("https://lightning.ai/docs/pytorch/stable/", None),
    }
else:
    intersphinx_mapping = {}

# -- HTML output -------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = f"scexceiver {release}"
html_theme_options = {
    "repository_url": "https://github.com/scexceiver/scexceiver",
    "use_repository_button": True,
    "path_to_docs": "docs",
}


def setup(app) -> None:
    """Draw the architecture figure from the module before reading the sources."""
    write_architecture_svg(HERE / "_static" / "architecture.svg")
