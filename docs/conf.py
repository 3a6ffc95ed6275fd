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
    "sphinx.ext.intersphinx",
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
exclude_patterns = ["_build", "extending_selector.md", "_inventories"]
html_theme = "alabaster"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
suppress_warnings = ["myst.header"]

# Cross-links to the projects we build on: the online inventory first, then the offline copy in
# _inventories/ (see its README) so that an offline build still links and still passes -W.
_INV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_inventories")
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", (None, os.path.join(_INV, "python.inv"))),
    "scipy": ("https://docs.scipy.org/doc/scipy", (None, os.path.join(_INV, "scipy.inv"))),
    "sklearn": ("https://scikit-learn.org/stable", (None, os.path.join(_INV, "sklearn.inv"))),
    "skimage": ("https://scikit-image.org/docs/stable", (None, os.path.join(_INV, "skimage.inv"))),
}
if os.environ.get("BIODATACENTRIC_DOCS_ONLINE") == "1":   # no offline copy exists for these two
    intersphinx_mapping["numpy"] = ("https://numpy.org/doc/stable", None)
    intersphinx_mapping["torch"] = ("https://docs.pytorch.org/docs/stable", None)
intersphinx_timeout = 5
nitpicky = False


def _skip_sklearn_routing(app, what, name, obj, skip, options):
    """scikit-learn adds set_<method>_request helpers to every estimator; they are not ours."""
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return skip


def setup(app):
    app.connect("autodoc-skip-member", _skip_sklearn_routing)
