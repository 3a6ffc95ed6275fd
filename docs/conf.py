"""Sphinx configuration for the biodatacentric documentation."""

import os
import sys

sys.path.insert(0, os.path.abspath("../src"))

project = "biodatacentric"
author = "biodatacentric developers"
copyright = "2026, biodatacentric developers"

import biodatacentric  # noqa: E402

release = biodatacentric.__version__
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autodoc_default_options = {"members": True, "inherited-members": False, "show-inheritance": True}
autodoc_typehints = "none"
autosummary_generate = False
myst_heading_anchors = 3
exclude_patterns = ["_build", "extending_selector.md"]
html_theme = "alabaster"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
suppress_warnings = ["myst.header"]
nitpicky = False


def _skip_sklearn_routing(app, what, name, obj, skip, options):
    """scikit-learn adds set_<method>_request helpers to every estimator; they are not ours."""
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return skip


def setup(app):
    app.connect("autodoc-skip-member", _skip_sklearn_routing)
