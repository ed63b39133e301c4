"""Peak memory of one shapes_tiny training step, one system per fresh process.

    python -m bench.memory --system frcnn_edu|torchvision --device cpu|cuda --batch 8

prints one JSON line. The process builds the model, the optimizer and the batch, then runs two
training steps (forward, backward, SGD with momentum) and reports the peak over them minus what
was in use before the first one; that includes SGD's momentum buffers and the gradients (both
systems have them). Measuring from before the FIRST step matters on the CPU: freed memory stays
in the allocator's arenas, so a second step alone would look almost free.
  CPU:  the peak resident set size (VmHWM) minus the resident size (VmRSS) before the steps.
        The peak is reset first by writing 5 to /proc/self/clear_refs (Linux); where that is not
        possible the fallback is getrusage's ru_maxrss (the peak since the process started).
        (tracemalloc does not see torch's allocations, hence RSS.) `measure_in_subprocess` sets
        MALLOC_MMAP_THRESHOLD_=131072 so that RSS follows live memory: repeated runs then agree
        to about 0.5 MB (without it they scatter by +-5%).
  CUDA: torch.cuda.max_memory_allocated() minus memory_allocated() before the steps.
The absolute peak is reported too.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys

import torch


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(system: str, device: torch.device, batch_size: int, threads: int | None) -> dict:
    from .systems import frcnn_edu_model, shapes_batch, to_device, torchvision_twin

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    # Both processes build both models and drop the other one, so that they have the same history
    # (memory freed before the steps can stay resident and be reused; it must be the same for both).
    ours = frcnn_edu_model("shapes_tiny", 5, rpn_objectness="sigmoid")
    twin = torchvision_twin(ours)
    model = ours if system == "frcnn_edu" else twin
    del ours, twin
    gc.collect()
    model.to(device).train()
    images, targets = to_device(*shapes_batch(batch_size, (256, 256)), device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)

    def step():
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"system": system, "method": "torch.cuda.max_memory_allocated",
                "before_mb": before / 2**20, "peak_mb": peak / 2**20, "step_mb": (peak - before) / 2**20}
    reset = _reset_peak_rss()
    before_kb = _status_kb("VmRSS")
    step()
    step()
    if reset:
        peak_kb, method = _status_kb("VmHWM"), "VmHWM after clear_refs"
    else:
        peak_kb, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
    return {"system": system, "method": method, "before_mb": before_kb / 1024, "peak_mb": peak_kb / 1024,
            "step_mb": (peak_kb - before_kb) / 1024}


def measure_in_subprocess(system: str, device: torch.device, batch_size: int, threads: int | None,
                          timeout: float = 600) -> dict:
    """Run `measure` in a fresh Python process (nothing else allocated in it)."""
    command = [sys.executable, "-m", "bench.memory", "--system", system, "--device", str(device),
               "--batch", str(batch_size)]
    if threads:
        command += ["--threads", str(threads)]
    # A fixed mmap threshold: glibc then serves every block >= 128 KiB with mmap and returns it
    # on free, so RSS follows live memory. (By default the threshold grows after frees, up to
    # 32 MiB, and freed tensors stay resident in the heap: the peak then depends on history.)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # where `bench` is importable
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=root)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=("frcnn_edu", "torchvision"), required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.system, torch.device(args.device), args.batch, args.threads)))


if __name__ == "__main__":
    main()
