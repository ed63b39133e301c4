"""Real-browser tests: JupyterLab driven by Debian's Chromium through Playwright (`make test-browser`).

They need `/usr/bin/chromium` (apt-get install chromium) and the `playwright` Python package
(pip install playwright; never `playwright install`: the system Chromium is used). Without either,
the tests in this directory are skipped with the reason.
"""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "browser: drives JupyterLab in a real Chromium browser (make test-browser)")
