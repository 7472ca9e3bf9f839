"""A real browser: JupyterLab on localhost, notebook 00 opened in headless Chromium and run top to bottom.

Needs Debian's ``chromium`` (``/usr/bin/chromium``) and the ``playwright`` Python package (no browser download:
Playwright drives the system Chromium through ``executable_path``). ``.ci/run`` installs both; elsewhere the test is
skipped when they are missing. It saves a screenshot to ``data/cache/screenshots/00_setup.png``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = ROOT / "data" / "cache" / "screenshots" / "00_setup.png"

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

needs_browser = pytest.mark.skipif(
    (CHROMIUM is None or sync_playwright is None) and not os.environ.get("CI"),
    reason="needs Debian's chromium and the playwright package (CI installs them)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_browser
def test_notebook_00_runs_in_jupyterlab_in_chromium(tmp_path: Path):
    assert CHROMIUM is not None and sync_playwright is not None, "chromium and playwright are installed"
    work = tmp_path / "lab"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / "00_setup.ipynb", work / "00_setup.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    settings = tmp_path / "settings"
    tracker = settings / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    # render every cell (JupyterLab 4 only renders the cells in view by default), so that the DOM shows them all
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--ServerApp.open_browser=False",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start within 60 s")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/00_setup.ipynb?token={token}", timeout=120_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
            page.locator(".jp-Notebook").first.click()
            page.keyboard.press("Escape")
            page.get_by_text("Run", exact=True).first.click()
            page.get_by_text("Run All Cells", exact=True).first.click()
            # every code cell gets a number when the run is over: wait until none shows '[*]' or '[ ]'
            deadline = time.time() + 240
            while time.time() < deadline:
                prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
                if prompts and all(p.strip() not in ("[*]:", "[ ]:", "") for p in prompts):
                    break
                time.sleep(1)
            else:
                pytest.fail(f"the notebook did not finish running: prompts {prompts}")
            page.wait_for_selector(".widget-slider, .jupyter-widget-slider, .widget-hslider", timeout=60_000)
            sliders = page.locator(".widget-slider, .jupyter-widget-slider, .widget-hslider").count()
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']").count()
            page.keyboard.press("Control+s")
            time.sleep(2)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.locator(".widget-slider, .jupyter-widget-slider, .widget-hslider").first.scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENSHOT))
            browser.close()
        assert sliders >= 1, "an ipywidgets slider is rendered"
        assert errors == 0, "no cell shows an error"
        saved = json.loads((work / "00_setup.ipynb").read_text())
        outputs = [o for c in saved["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o["output_type"] == "error"], "the saved notebook holds no error output"
        counts = [c["execution_count"] for c in saved["cells"] if c["cell_type"] == "code"]
        assert None not in counts, f"every cell ran in the browser: {counts}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
