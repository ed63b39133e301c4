"""Timing helpers: device sync, a lap timer, and alternating side-by-side comparisons.

Every comparison runs the systems in turn inside one loop (A B, then B A, ...) after a warm-up,
so that a slow phase of a shared machine hits both; we report medians.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def make_sync(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device: torch.cuda.synchronize on CUDA, nothing on CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_call(fn: Callable, sync: Callable[[], None]):
    """(seconds, result) of one call, with the device synchronised before and after."""
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - start, result


def compare(fns: dict[str, Callable], *, warmup: int, reps: int, sync: Callable[[], None]) -> dict:
    """Time each callable `reps` times, alternating their order every round, after `warmup` rounds.

    Returns {name: {"times": [s, ...], "median": s, "min": s, "last": last result}}.
    """
    names = list(fns)
    out = {name: {"times": [], "last": None} for name in names}
    for _ in range(warmup):
        for name in names:
            _, out[name]["last"] = time_call(fns[name], sync)
    for r in range(reps):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            seconds, result = time_call(fns[name], sync)
            out[name]["times"].append(seconds)
            out[name]["last"] = result
    for name in names:
        times = out[name]["times"]
        out[name]["median"] = statistics.median(times) if times else float("nan")
        out[name]["min"] = min(times) if times else float("nan")
    return out


class Laps:
    """Stage timer: `laps.lap("backbone")` records the time since the previous lap."""

    def __init__(self, sync: Callable[[], None]):
        self.sync = sync
        self.times: dict[str, float] = {}
        sync()
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - self._last
        self._last = now


def median_laps(runs: list[dict]) -> dict:
    """Per-stage medians over several Laps.times dicts (same keys)."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}
