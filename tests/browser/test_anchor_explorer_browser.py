"""The four explorers in a real JupyterLab, in a real browser: run a notebook of them, move a
slider of each with the keyboard, time each key press to its new picture, check the layout, and
restart the kernel to check that the explorers say so.

JupyterLab runs on a free loopback port with a random token and a temporary root directory that
holds only a small notebook of this test; Chromium (/usr/bin/chromium, headless) is driven by
Playwright. Screenshots are saved in pytest's tmp_path (and in $FRCNN_EDU_BROWSER_ARTIFACTS when
set, with latency.json: median and p90 key-press-to-picture per explorer). The latencies are
printed and recorded, not asserted: a shared machine is too noisy for a timing assertion.
"""
import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

import pytest
from _servers import CHROMIUM, CHROMIUM_ARGS, free_port, running_server  # tests/browser/_servers.py

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the playwright Python package is not installed (pip install playwright)")
nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[dev]')")

pytestmark = pytest.mark.browser

NOTEBOOK = "explorers.ipynb"
START_TIMEOUT_S = 90          # JupyterLab's server on a busy 2-core machine
UI_TIMEOUT_MS = 180_000       # loading the lab, starting the kernel, importing torch
PRESSES = 20                  # key presses timed per explorer
# (explorer, the slider moved, the key): each press changes the value (PageUp: by 5 steps; one pixel
# of the RoI can be less than one pixel of the picture), hence the picture
EXPLORERS = [("anchor_explorer", "x (column)", "ArrowRight"), ("assignment_explorer", "box x1", "ArrowRight"),
             ("proposal_explorer", "top N", "ArrowLeft"), ("roi_pool_explorer", "RoI x1", "PageUp")]

# Records, in the page, when a key goes down in explorer `index` and when its picture changes.
WATCH_JS = """index => {
  const root = document.querySelectorAll('.frcnn-edu-explorer')[index];
  const image = () => root.querySelector('.widget-output img');
  const record = {presses: [], frames: [], last: image() ? image().src : null};
  root.addEventListener('keydown', () => record.presses.push(performance.now()), true);
  new MutationObserver(() => {
    const img = image();
    if (img && img.src !== record.last) { record.last = img.src; record.frames.push(performance.now()); }
  }).observe(root, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
  (window.frcnnWatch = window.frcnnWatch || {})[index] = record;
}"""


def _write_notebook(path: Path) -> None:
    from nbformat.v4 import new_code_cell, new_notebook
    nb = new_notebook(cells=[
        new_code_cell("%matplotlib inline\nimport frcnn_edu as fe\nimport frcnn_edu.widgets"),
    ] + [new_code_cell(f"fe.widgets.{name}()") for name, _, _ in EXPLORERS],
        metadata={"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}})
    nbformat.write(nb, path)


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server of our own: (base URL, token); terminated (it stops its kernels) after."""
    root, state = tmp_path / "root", tmp_path / "jupyter"
    root.mkdir()
    _write_notebook(root / NOTEBOOK)
    port, token = free_port(), secrets.token_hex(16)
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
    base = f"http://127.0.0.1:{port}"
    command = ([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
                f"--IdentityProvider.token={token}", "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"]
               + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []))
    with running_server(command, ready_url=f"{base}/api/status?token={token}", log_path=tmp_path / "jupyterlab.log",
                        timeout_s=START_TIMEOUT_S, name="JupyterLab", cwd=root, env=env):
        yield base, token


def _percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _open_and_run_all(page, base, token):
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
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()          # Run > Run All Cells
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    page.wait_for_function(f"document.querySelectorAll('.frcnn-edu-explorer .widget-output img').length"
                           f" >= {len(EXPLORERS)}")


def _time_key_presses(page, index, label, key, tmp_path):
    """Press `key` PRESSES times on the slider `label` of explorer `index`, each time waiting for
    the new picture; returns (latencies in ms, picture before, picture after, readout before, after)."""
    root = page.locator(".frcnn-edu-explorer").nth(index)
    slider = root.locator(".widget-slider", has=page.locator(".widget-label", has_text=label))
    readout = slider.locator(".widget-readout")
    image = root.locator(".widget-output img").first
    image.scroll_into_view_if_needed()
    before, value_before = image.screenshot(), readout.inner_text()
    page.evaluate(WATCH_JS, index)
    handle = slider.locator(".noUi-handle")
    handle.focus()
    for n in range(1, PRESSES + 1):
        handle.press(key)
        page.wait_for_function("([i, n]) => window.frcnnWatch[i].frames.length >= n", arg=[index, n],
                               timeout=30_000)
    record = page.evaluate("i => window.frcnnWatch[i]", index)
    latencies = [frame - press for press, frame in zip(record["presses"], record["frames"])]
    image = root.locator(".widget-output img").first
    after = image.screenshot(path=str(tmp_path / f"explorer_{index}_after.png"))
    return latencies, before, after, value_before, readout.inner_text()


def _layout_problems(page) -> list:
    """What a user would not see: a narrow control column, hidden readouts, a scaled picture."""
    return page.evaluate("""() => {
      const problems = [];
      document.querySelectorAll('.frcnn-edu-explorer').forEach((root, i) => {
        const column = root.querySelector('.frcnn-edu-controls').getBoundingClientRect();
        if (column.width < 320) problems.push(`explorer ${i}: control column ${column.width} px`);
        root.querySelectorAll('.widget-readout').forEach(r => {
          const box = r.getBoundingClientRect();
          if (box.width < 10 || getComputedStyle(r).display === 'none') problems.push(`explorer ${i}: readout hidden`);
        });
        root.querySelectorAll('.widget-label').forEach(l => {
          if (l.scrollWidth > l.clientWidth + 1) problems.push(`explorer ${i}: label cut: ${l.textContent}`);
        });
        const img = root.querySelector('.widget-output img');
        if (img && Math.abs(img.getBoundingClientRect().width - img.naturalWidth) > 1)
          problems.push(`explorer ${i}: picture scaled to ${img.getBoundingClientRect().width} px`);
      });
      return problems;
    }""")


def _restart_kernel(page):
    """Kernel > Restart Kernel..., as a user does (a restart through the REST API alone does not
    reach the page's widget manager the same way)."""
    page.locator(".lm-MenuBar-itemLabel", has_text="Kernel").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Restart Kernel").first.click()
    page.locator(".jp-Dialog button", has_text="Restart").first.click()


def _report(results, elapsed, tmp_path) -> dict:
    """Print the key-press-to-picture numbers and write latency.json; returns them."""
    latency = {name: {"median_ms": round(_percentile(r[0], 0.5), 1), "p90_ms": round(_percentile(r[0], 0.9), 1),
                      "presses": len(r[0]), "samples_ms": [round(v, 1) for v in r[0]]}
               for name, r in results.items()}
    print(f"\nkey press -> new picture in the DOM, {PRESSES} presses each ({elapsed:.0f} s in the browser):")
    for name, numbers in latency.items():
        print(f"  {name:20s} median {numbers['median_ms']:6.1f} ms   p90 {numbers['p90_ms']:6.1f} ms")
    artefacts = os.environ.get("FRCNN_EDU_BROWSER_ARTIFACTS")
    if artefacts:
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        (Path(artefacts) / "latency.json").write_text(json.dumps(latency, indent=1) + "\n")
    return latency


def test_explorers_redraw_fast_and_say_when_the_kernel_is_gone(jupyterlab, tmp_path):
    base, token = jupyterlab
    started = time.monotonic()
    results, problems = {}, {}
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(UI_TIMEOUT_MS)
        try:
            _open_and_run_all(page, base, token)
            problems[1400] = _layout_problems(page)
            for index, (name, label, key) in enumerate(EXPLORERS):
                results[name] = _time_key_presses(page, index, label, key, tmp_path)
            _report(results, time.monotonic() - started, tmp_path)
            page.screenshot(path=str(tmp_path / "jupyterlab.png"), full_page=True)
            page.set_viewport_size({"width": 760, "height": 1100})    # narrow: the controls wrap, stay wide
            page.wait_for_timeout(500)
            problems[760] = [p for p in _layout_problems(page) if "picture scaled" not in p]
            page.screenshot(path=str(tmp_path / "narrow.png"), full_page=True)

            _restart_kernel(page)
            page.wait_for_selector(".frcnn-edu-explorer.jupyter-widgets-disconnected", timeout=60_000,
                                   state="attached")
            notice = page.evaluate("() => getComputedStyle(document.querySelector("
                                   "'.frcnn-edu-explorer.jupyter-widgets-disconnected'), '::before').content")
            page.locator(".frcnn-edu-explorer").first.scroll_into_view_if_needed()
            page.screenshot(path=str(tmp_path / "after_restart.png"))
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            print(f"\nfailure screenshot: {tmp_path / 'failure.png'}; server log: {tmp_path / 'jupyterlab.log'}")
            raise
        finally:
            browser.close()
    print(f"screenshots in {tmp_path} ({time.monotonic() - started:.0f} s in the browser)")
    artefacts = os.environ.get("FRCNN_EDU_BROWSER_ARTIFACTS")
    if artefacts:                       # e.g. outputs/browser: keep the pictures after the run
        for picture in sorted(tmp_path.glob("*.png")):
            shutil.copy(picture, Path(artefacts) / picture.name)

    for name, (latencies, before, after, value_before, value_after) in results.items():
        assert len(latencies) == PRESSES, name
        assert before != after, f"{name}: the drawing did not change after {PRESSES} key presses"
        assert value_before != value_after, f"{name}: the slider did not move"
    assert problems == {1400: [], 760: []}
    assert "Kernel restarted" in notice
