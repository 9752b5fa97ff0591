"""Sphinx configuration for the scexceiver documentation.

Builds offline: no intersphinx, no notebook execution, nothing mocked.
Build with ``sphinx-build -W -b html docs docs/_build/html``.
"""

from __future__ import annotations

from importlib.metadata import version as _version

# -- Project information -----------------------------------------------------

project = "scexceiver"
author = "scexceiver developers"
copyright = "scexceiver developers"
release = _version("scexceiver")
version = ".".join(release.split(".")[:2])

# -- General configuration ---------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
master_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

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

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# -- HTML output -------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = f"scexceiver {release}"
html_theme_options = {
    "repository_url": "https://github.com/scexceiver/scexceiver",
    "use_repository_button": True,
    "path_to_docs": "docs",
}
