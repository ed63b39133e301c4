"""Sphinx configuration of the course website (`make book`; docs/book/build.py stages the sources).

Sphinx + myst-nb + sphinx-book-theme: the stack under Jupyter Book 1, used directly. Jupyter Book
2 (MyST-JS) fetches its theme from the internet when it builds, and this site must build offline.
Everything the pages load is local: the theme's assets, MathJax 3 from the sphinx-mathjax-offline
package (copied into _static/mathjax) and no ipywidgets JavaScript (see _ext/static_explorers.py).
"""
import sys
from pathlib import Path

import frcnn_edu

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "frcnn_edu"
author = "the frcnn_edu authors"
copyright = "the frcnn_edu authors"
release = frcnn_edu.__version__
version = release

extensions = [
    "myst_nb",                   # .ipynb and .md pages, notebooks executed at build time
    "sphinx.ext.autodoc",        # the API reference, from the docstrings
    "sphinx.ext.viewcode",       # each documented object links to its highlighted source
    "sphinx-mathjax-offline",    # MathJax 3 served from _static, not from a CDN
    "static_explorers",          # the widget explorers as a picture and a note
    "repository_links",          # links to repository files that are not pages become code text
]

root_doc = "index"
exclude_patterns = ["jupyter_execute", "**/.ipynb_checkpoints"]
# "myst.header": README.md starts at '##' under its '#' title, fine on a page. "docutils": the
# docstrings are written as plain text for help() and an editor (hanging indents, aligned columns);
# read as reStructuredText they give ~30 "Definition list ends without a blank line" warnings
# while every word still shows. Broken references and everything else still warn.
suppress_warnings = ["myst.header", "docutils"]

# --- notebooks ---
nb_execution_mode = "cache"           # run once, reuse while the code is unchanged (build.py sets the path)
nb_execution_timeout = 600            # per cell: notebooks run in < 2 min on 2 idle cores, much slower on busy ones
nb_execution_raise_on_error = True    # a notebook that fails to run fails the build
nb_execution_show_tb = True
nb_ipywidgets_js: dict = {}           # the default loads require.js and the widget manager from CDNs
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3              # README's '#section' links

# --- API reference ---
autodoc_member_order = "bysource"     # the order of the module, which is the paper's order
autodoc_default_options = {"show-inheritance": True}   # api.md asks for :members: per module
autodoc_typehints = "signature"
autodoc_mock_imports: list = []

# --- HTML ---
html_theme = "sphinx_book_theme"
html_title = f"frcnn_edu {release}: Faster R-CNN from scratch"
html_static_path: list = []
html_last_updated_fmt = None
html_theme_options = {
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "use_download_button": True,       # the notebook as .ipynb, and the page as .md
    "use_fullscreen_button": False,
    "use_repository_button": False,    # no links that need the internet
    "use_issues_button": False,
    "use_edit_page_button": False,
    "launch_buttons": {},
    "navigation_with_keys": False,
}
