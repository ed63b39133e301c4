"""The anchor explorer in a real JupyterLab, in a real browser: run the notebook, move a slider
with the keyboard, and check that the drawing changes.

JupyterLab runs on a free loopback port with a random token and a temporary root directory that
holds only a small notebook of this test; Chromium (/usr/bin/chromium, headless) is driven by
Playwright. Screenshots of the explorer before and after the slider move are saved in pytest's
tmp_path (printed at the end; `pytest -s` or `-rA` shows the paths).
"""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the playwright Python package is not installed (pip install playwright)")
nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[dev]')")

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
NOTEBOOK = "anchor_explorer.ipynb"
START_TIMEOUT_S = 90          # JupyterLab's server on a busy 2-core machine
UI_TIMEOUT_MS = 180_000       # loading the lab, starting the kernel, importing torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_notebook(path: Path) -> None:
    from nbformat.v4 import new_code_cell, new_notebook
    nb = new_notebook(cells=[
        new_code_cell("%matplotlib inline\nimport frcnn_edu as fe\nimport frcnn_edu.widgets"),
        new_code_cell("fe.widgets.anchor_explorer()"),
    ], metadata={"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}})
    nbformat.write(nb, path)


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server of our own: (base URL, token); terminated (it stops its kernels) after."""
    root, state = tmp_path / "root", tmp_path / "jupyter"
    root.mkdir()
    _write_notebook(root / NOTEBOOK)
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for var, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                     ("JUPYTERLAB_SETTINGS_DIR", "settings"), ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
                     ("IPYTHONDIR", "ipython")]:
        env[var] = str(state / sub)
    # Lab settings of this server only: start the notebook's kernel without asking, no news pop-up.
    for plugin, settings in [("notebook-extension/tracker", '{"autoStartDefaultKernel": true}'),
                             ("apputils-extension/notification", '{"fetchNews": "false"}')]:
        path = state / "settings" / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(settings)
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
         f"--IdentityProvider.token={token}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"]
        + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"JupyterLab did not start; log:\n{(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, token
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_anchor_explorer_slider_redraws_in_jupyterlab(jupyterlab, tmp_path):
    base, token = jupyterlab
    started = time.monotonic()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(UI_TIMEOUT_MS)
        try:
            page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell")
            page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
            # Should JupyterLab still ask which kernel to start, take the one it proposes.
            select = page.locator(".jp-Dialog button", has_text="Select")
            try:
                select.wait_for(state="visible", timeout=3000)
                select.click()
            except sync_api.TimeoutError:
                pass

            # Run > Run All Cells
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

            image = page.locator(".widget-output img").first
            image.wait_for(state="visible")
            source_before = image.get_attribute("src")
            before = image.screenshot(path=str(tmp_path / "anchor_explorer_before.png"))

            # Focus the "x (column)" slider's handle and move it 3 cells right with the keyboard;
            # each key press is one change of the slider's value, hence one new drawing.
            slider = page.locator(".widget-slider", has=page.locator(".widget-label", has_text="x (column)"))
            readout = slider.locator(".widget-readout")
            x_before = int(readout.inner_text())
            handle = slider.locator(".noUi-handle")
            handle.focus()
            source = source_before
            for _ in range(3):
                handle.press("ArrowRight")
                page.wait_for_function(
                    "old => { const i = document.querySelector('.widget-output img');"
                    " return i && i.src !== old; }", arg=source)
                source = page.locator(".widget-output img").first.get_attribute("src")
            image = page.locator(".widget-output img").first
            image.wait_for(state="visible")
            after = image.screenshot(path=str(tmp_path / "anchor_explorer_after.png"))
            page.screenshot(path=str(tmp_path / "jupyterlab.png"), full_page=True)
            x_after = int(readout.inner_text())
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            print(f"\nfailure screenshot: {tmp_path / 'failure.png'}; server log: {tmp_path / 'jupyterlab.log'}")
            raise
        finally:
            browser.close()
    elapsed = time.monotonic() - started
    print(f"\nscreenshots in {tmp_path}: anchor_explorer_before.png, anchor_explorer_after.png, "
          f"jupyterlab.png ({elapsed:.0f} s in the browser)")
    artefacts = os.environ.get("FRCNN_EDU_BROWSER_ARTIFACTS")
    if artefacts:                       # e.g. outputs/browser: keep the pictures after the run
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        for name in ("anchor_explorer_before.png", "anchor_explorer_after.png", "jupyterlab.png"):
            shutil.copy(tmp_path / name, Path(artefacts) / name)

    assert x_after == x_before + 3
    assert before != after, "the explorer's drawing did not change after moving the slider"
