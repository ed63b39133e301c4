"""Time the four explorers of frcnn_edu.widgets in-process: what one slider move costs in the
kernel (compute + draw + encode of the picture), median and p90 over 20 moves.

    .venv/bin/python -m bench.explorers                  # the current explorers
    .venv/bin/python -m bench.explorers --before HEAD    # and those of a git revision, side by side

No browser: the browser's share (sending the picture, decoding it) is measured by
tests/browser/test_anchor_explorer_browser.py (key press to picture, written to latency.json).
Each move is set the way ipywidgets applies a browser update, so the explorer's browser path (a
JPEG frame) is the one timed; the first frame (and the cached background) is made before the
timing starts.
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

MOVES = 20
# explorer -> (the control moved, its step per move); moves go back and forth to stay in range
MOVED = {"anchor_explorer": ("x", 1), "assignment_explorer": ("x", 1),
         "proposal_explorer": ("top_n", -1), "roi_pool_explorer": ("x1", 5)}
REPO = Path(__file__).resolve().parents[1]


def time_moves(explorer, control: str, step: int, moves: int = MOVES) -> list[float]:
    """Milliseconds per move of explorer.controls[control] by +-step (one redraw each)."""
    slider = explorer.controls[control]
    times = []
    for i in range(moves):
        direction = 1 if (i // 5) % 2 == 0 else -1            # 5 moves one way, 5 back, ...
        value = slider.value + direction * step
        started = time.perf_counter()
        with slider._lock_property(value=value):               # as ipywidgets applies a browser update
            slider.value = value
        times.append((time.perf_counter() - started) * 1000)
    return times


def summary(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def widgets_at(revision: str):
    """frcnn_edu.widgets as it was at a git revision, imported from a temporary copy."""
    folder = Path(tempfile.mkdtemp(prefix="explorers_")) / "widgets_before"
    folder.mkdir()
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{revision}:frcnn_edu/widgets"], cwd=REPO,
                           check=True, capture_output=True, text=True).stdout.split()
    for name in (n for n in names if n.endswith(".py")):
        source = subprocess.run(["git", "show", f"{revision}:frcnn_edu/widgets/{name}"], cwd=REPO,
                                check=True, capture_output=True, text=True).stdout
        source = source.replace("from .. import", "from frcnn_edu import").replace("from ..", "from frcnn_edu.")
        (folder / name).write_text(source)
    sys.path.insert(0, str(folder.parent))
    return importlib.import_module("widgets_before")


def bench(module, label: str) -> dict:
    rows = {}
    for name, (control, step) in MOVED.items():
        explorer = getattr(module, name)()
        times = time_moves(explorer, control, step)
        median, p90 = summary(times)
        size = len(getattr(explorer, "frame", b"") or explorer.png) / 1024
        rows[name] = (median, p90, size)
        print(f"{label:8s} {name:20s} median {median:6.1f} ms   p90 {p90:6.1f} ms   picture {size:5.0f} KB",
              flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", metavar="REVISION", help="also time the explorers of this git revision")
    args = parser.parse_args(argv)
    from frcnn_edu import widgets
    cpu = platform.processor() or platform.machine()
    print(f"{MOVES} moves per explorer; {os.cpu_count()} CPUs ({cpu}); load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    if args.before:
        bench(widgets_at(args.before), args.before[:8])
    bench(widgets, "now")
    print(f"load average after: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
