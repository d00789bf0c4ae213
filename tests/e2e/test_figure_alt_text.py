"""In a notebook started with setup_notebook, every figure is stored with its title as alt text."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # starts a Jupyter kernel


def test_a_notebook_figure_carries_its_title_as_alt_text(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("from course_utils import setup_notebook\nrun = setup_notebook('00_t', quiet=True, device='cpu')"),
        nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 2])\n"
                                  "ax.set_title('Loss  falls\\nas it trains')\nplt.show()"),
        nbformat.v4.new_code_cell("fig, ax = plt.subplots()\nax.plot([1, 2])\nplt.show()"),  # no title: no alt
    ]
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    titled = [o for o in nb.cells[1].outputs if "image/png" in o.get("data", {})]
    untitled = [o for o in nb.cells[2].outputs if "image/png" in o.get("data", {})]
    assert titled and titled[0]["metadata"]["image/png"]["alt"] == "Loss falls as it trains"
    assert untitled and "alt" not in untitled[0].get("metadata", {}).get("image/png", {})
