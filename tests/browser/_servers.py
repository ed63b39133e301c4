"""What the browser tests share: Chromium's flags, a free port, and a server process (JupyterLab or
Voilà) started, waited for until it answers, and stopped with everything it started."""
from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(command: list[str], *, ready_url: str, log_path: Path, timeout_s: float, name: str, **popen):
    """Start `command`, wait until `ready_url` answers 200 (fail with the log's tail if the process
    dies or `timeout_s` passes), yield the process; then SIGTERM (servers stop their kernels on it),
    and kill it if it has not exited within 30 s."""
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **popen)
        try:
            deadline = time.monotonic() + timeout_s
            while not _answers(ready_url):
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"{name} did not start; log:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            yield server
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status == 200
    except OSError:
        return False
