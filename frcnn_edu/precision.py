"""One switch for numeric precision: "fp32" (the default), "bf16" (CPU and CUDA), "fp16" (CUDA).

bf16 and fp16 run the convolutions and matrix products under torch.autocast; the model keeps
anchors, box coding, IoU matching, RoI pooling, NMS and the losses in float32 whatever the
autocast state (rpn.py, fast_rcnn.py, roi.py). fp16's narrow range needs a gradient scaler in
training (train.py); bf16 has float32's range and needs none. On a CPU without bfloat16 hardware
(AMX or AVX512-BF16: see `cpu_has_bf16`) bf16 still works, emulated, and is usually slower.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> str:
    """The precision name, or ValueError: unknown names, and fp16 without CUDA."""
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise ValueError(f"precision 'fp16' (float16 with a gradient scaler) needs a CUDA device, got "
                         f"{device}; use 'bf16' on the CPU")
    return precision


def autocast(device: torch.device, precision: str = "fp32"):
    """torch.autocast for bf16 / fp16; a no-op context for fp32."""
    dtype = DTYPES[check_precision(precision, device)]
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (Linux /proc/cpuinfo flags)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return any(flag in flags for flag in ("amx_bf16", "avx512_bf16"))
