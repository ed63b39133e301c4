"""Analytic FLOPs (1 multiply-add = 2 FLOPs) of Faster R-CNN's dense layers, and the floor.

The layer shapes come from the model itself: a copy of the backbone and RPN head on the "meta"
device (shapes only, no arithmetic) is run on a meta image, and forward hooks record every Conv2d
output. The detector's fc layers are counted for `num_rois` RoIs. Pooling, ReLU, NMS and the
rest are left out: they are memory-bound and small, and the floor is about arithmetic.

floor = GFLOP / (the machine's fp32 matmul GFLOP/s, measured in the same run): no
implementation of the same network can beat it.
"""
from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn


def conv_flops(module: nn.Module, input_shape) -> tuple[list[tuple[str, float]], tuple]:
    """([(layer name, FLOPs)] of every Conv2d of `module` on one (C, H, W) input, output shape)."""
    meta = copy.deepcopy(module).to("meta")
    records = []

    def hook(name):
        def record(layer, inputs, output):
            kh, kw = layer.kernel_size
            per_output = 2 * (layer.in_channels // layer.groups) * kh * kw
            records.append((name, float(per_output * output[0].numel())))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in meta.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            out = meta(torch.empty((1, *input_shape), device="meta"))
    finally:
        for h in handles:
            h.remove()
    first = out[0] if isinstance(out, tuple) else out
    return records, tuple(first.shape[1:])          # per-image output shape (C, H, W)


def model_flops(model, image_size, num_rois: int) -> dict:
    """GFLOP of backbone, RPN head and detector head (fc6, fc7, cls, bbox on num_rois) for one image.

    model: a frcnn_edu FasterRCNN. image_size: (H, W) of the network input.
    """
    backbone_layers, feature_shape = conv_flops(model.backbone, (3, *image_size))
    head_layers, _ = conv_flops(model.rpn.head, feature_shape)
    head = model.fast_rcnn.head
    fc = [(name, 2.0 * layer.in_features * layer.out_features * num_rois)
          for name, layer in (("fc6", head.fc6), ("fc7", head.fc7), ("cls_score", head.cls_score),
                              ("bbox_pred", head.bbox_pred))]
    backbone = sum(f for _, f in backbone_layers) / 1e9
    rpn = sum(f for _, f in head_layers) / 1e9
    detector = sum(f for _, f in fc) / 1e9
    return {"image_size": tuple(image_size), "feature_size": feature_shape[-2:],
            "backbone": backbone, "rpn_head": rpn, "detector": detector,
            "total": backbone + rpn + detector, "num_rois": num_rois}


def matmul_gflops(device: torch.device, n: int = 2048, reps: int = 10, sync=lambda: None) -> dict:
    """fp32 throughput of an n x n matmul (GFLOP/s): median and best of `reps` after a warm-up."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    sync()
    rates = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        rates.append(2.0 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return {"median": statistics.median(rates), "best": max(rates), "n": n, "reps": reps}
