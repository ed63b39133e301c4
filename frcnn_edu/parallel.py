"""Using every CPU core for torchvision's single-threaded kernels.

torchvision's CPU kernels for RoI pooling and NMS work through their input on one thread, while
the convolutions around them use all of torch's intra-op threads: on a 2-core CPU, RoI pooling
and the proposal layer's NMS run at half the machine's speed. Their work splits into independent
pieces (RoIs; images of a batch), and the kernels release Python's GIL while they run, so
frcnn_edu hands the pieces to a small pool of threads, one per torch thread.

Nothing changes but the speed: each piece is computed by the same kernel as in one call, and the
results are put back in order. On CUDA, with one torch thread, or with a single piece, the work
runs as plain calls on the calling thread.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch

_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}


def num_workers(device) -> int:
    """How many pieces CPU work is split into: torch's thread count on the CPU, 1 elsewhere."""
    return torch.get_num_threads() if torch.device(device).type == "cpu" else 1


def parallel_map(fn, items, device, min_items: int = 2) -> list:
    """[fn(item) for item in items], spread over num_workers(device) threads on the CPU.

    With fewer than min_items items everything runs on the calling thread (a hand-off costs
    tens of microseconds, and after an OpenMP region torch's own threads keep spinning for a
    while). Grad mode and inference mode are thread-local in PyTorch; the workers get the caller's.
    """
    items = list(items)
    workers = min(num_workers(device), len(items))
    if workers < 2 or len(items) < min_items:
        return [fn(item) for item in items]
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def call(item):
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(item)

    # One pool per process: a forked child inherits the parent's pool object but not its threads.
    # The workers run one torch thread each (their kernels are single-threaded anyway).
    key = (os.getpid(), workers)
    if key not in _pools:
        _pools[key] = ThreadPoolExecutor(workers, thread_name_prefix="frcnn_edu",
                                         initializer=torch.set_num_threads, initargs=(1,))
    return list(_pools[key].map(call, items))
