"""End to end, as a learner: JupyterLab in headless Chromium runs notebook 01 through the UI.

The test starts `make lab` (token on, 127.0.0.1), opens a copy of notebook 01 in Debian's
Chromium driven by Playwright, runs every cell with the "Run All Cells" menu entry, and checks
that no error output appears and that the attention heatmaps are rendered as images. It saves a
screenshot to build/screenshots/ (ignored by git, so a test run never dirties the tree);
`make screenshots` runs it with ``COURSE_SCREENSHOT_DIR=reports/screenshots`` to refresh the
committed one. The kernel runs in fast mode. In CI a missing browser is a
failure, not a skip (`.ci/run` installs Debian's `chromium`); on a learner's machine without
Chromium the test is skipped with the command that installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import REPO  # noqa: E402
from lab_server import running_lab

CHROMIUM = os.environ.get("COURSE_CHROMIUM", "/usr/bin/chromium")
NOTEBOOK = "01_attention_as_soft_lookup"
SCREENSHOT_DIR = Path(os.environ.get("COURSE_SCREENSHOT_DIR") or REPO / "build" / "screenshots")
SCREENSHOT = (SCREENSHOT_DIR if SCREENSHOT_DIR.is_absolute() else REPO / SCREENSHOT_DIR) / f"{NOTEBOOK}_jupyterlab.png"
# Chromium flags for a closed network: no background requests, no sandbox as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _wait_for(condition, seconds: float, message: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(message)
        time.sleep(0.5)


@pytest.mark.slow
def test_notebook_runs_in_jupyterlab_in_a_real_browser(tmp_path):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        message = f"Chromium not found at {CHROMIUM}: install it (`apt-get install chromium`; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI a missing browser is a failure, never a silent skip
        pytest.skip(message)
    # A copy, so that JupyterLab's autosave can never overwrite the stored full-mode outputs.
    copy_name = f"zz_browser_test_{os.getpid()}.ipynb"
    copy = REPO / "notebooks" / copy_name
    shutil.copy(REPO / "notebooks" / f"{NOTEBOOK}.ipynb", copy)
    try:
        # JupyterLab renders only the cells in view ("windowing"); render all of them so every
        # prompt and output can be checked.
        settings = tmp_path / "lab-settings" / "@jupyterlab" / "notebook-extension"
        settings.mkdir(parents=True)
        (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
        code_cells = sum(c["cell_type"] == "code" for c in json.loads(copy.read_text())["cells"])
        env = {"COURSE_FAST": "1", "TQDM_DISABLE": "1", "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings")}
        with running_lab(extra_env=env) as (base, token):
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"{base}/lab/tree/notebooks/{copy_name}?token={token}")
                page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
                _wait_for(lambda: page.locator(".jp-Notebook .jp-CodeCell").count() == code_cells, 60,
                          f"JupyterLab did not render all {code_cells} code cells")
                # Clear the stored outputs first, so every image we find below was drawn by this run.
                page.locator(".lm-MenuBar-itemLabel", has_text="Edit").click()
                page.locator(".lm-Menu-itemLabel", has_text="Clear Outputs of All Cells").click()
                assert page.locator(".jp-RenderedImage img").count() == 0
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").click()
                page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
                deadline = time.monotonic() + 240
                while time.monotonic() < deadline:
                    prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
                    done = [t for t in prompts if t.strip().startswith("[") and t.strip()[1:-2].strip().isdigit()]
                    if len(done) == code_cells and not any("*" in t for t in prompts):
                        break
                    time.sleep(1)
                else:
                    page.screenshot(path=str(tmp_path / "timeout.png"), full_page=True)
                    pytest.fail(f"not all {code_cells} cells finished within 240 s; prompts: {prompts}")
                errors = page.locator("[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
                tracebacks = [e for e in errors if "Traceback" in e or "Error" in e]
                assert not tracebacks, f"error output in the browser: {tracebacks[0][:500]}"
                images = page.locator(".jp-RenderedImage img")
                assert images.count() >= 1, "no figure was rendered"
                widths = images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
                assert min(widths) > 0, f"an image failed to load: widths {widths}"
                heatmap = page.locator(".jp-RenderedImage img").first
                heatmap.scroll_into_view_if_needed()
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOT))
                browser.close()
    finally:
        copy.unlink(missing_ok=True)
        (REPO / "notebooks" / ".ipynb_checkpoints" / copy_name.replace(".ipynb", "-checkpoint.ipynb")).unlink(missing_ok=True)
