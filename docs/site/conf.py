"""Sphinx configuration of the course website (`make site`).

The pages are built from the notebooks' stored outputs: nothing is executed at build time (the
outputs are the tested, full-mode ones). ``scripts/build_site.py`` stages the sources next to
this file (home page, setup page, instructor guide, notebooks) and runs Sphinx on them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

project = "Attention Mechanisms, from Scratch to Scale"
author = "The course's authors"
copyright = "the course's authors, MIT licence"

extensions = ["myst_nb"]  # notebooks and Markdown (MyST)

# MathJax served from the site itself, so maths renders offline: the copy of MathJax 3 that the
# package sphinx-mathjax-offline ships (its static folder, used directly as a static path).
_mathjax = importlib.util.find_spec("sphinx-mathjax-offline")
if _mathjax is None or _mathjax.origin is None:
    raise RuntimeError("the site needs sphinx-mathjax-offline: run `make site`, which installs it")
mathjax_path = "mathjax/tex-chtml.js"

# Notebooks are rendered from their stored outputs, never executed here.
nb_execution_mode = "off"
nb_output_folder = str(Path(__file__).resolve().parent.parent / "site_outputs")  # in build/, ignored
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
nb_ipywidgets_js = {}  # no widget JavaScript from a CDN (the staged notebooks carry no widget state)

smartquotes = False  # the pages show the notebooks' own text, quotes included

html_theme = "sphinx_book_theme"
html_title = "Attention, from Scratch to Scale"
html_theme_options = {
    "show_navbar_depth": 1,
    "home_page_in_toc": True,
    "use_download_button": False,  # each notebook page links its .ipynb itself (the original)
    "show_prev_next": True,
    "navigation_with_keys": True,
}
html_static_path = [str(Path(_mathjax.origin).parent / "static")]
html_last_updated_fmt = None
html_copy_source = False
