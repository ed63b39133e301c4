"""Where the time goes: frcnn_edu's own forward pass, timed stage by stage.

`staged_inference` and `staged_training_step` run the model itself — `model(images)`,
`model(images, targets)` — with a clock around each of its parts: the submodules (transform,
backbone, RPN head, RoI pooling, detector head) and the functions they call (anchors, the
proposal layer, anchor and RoI targets, losses, post-processing). The wrappers are put in place
for the call and removed afterwards; the model's code is not copied, so the split cannot drift
from what the model computes. A part's time excludes the timed parts inside it (the detector
head's excludes RoI pooling); what no clock covers is reported as "glue".
"""
from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from unittest import mock

import torch

from frcnn_edu import fast_rcnn, rpn
from frcnn_edu.anchors import AnchorGenerator

# Stage -> the paper's Table 5 column (K40, VGG-16: conv 141 / proposal 10 / region-wise 47 ms).
PAPER_COLUMN = {
    "preprocess": "(not in the table)",
    "backbone": "conv",
    "rpn head": "proposal",
    "anchors": "proposal",
    "proposal layer": "proposal",
    "roi pool": "region-wise",
    "detector head (fc6, fc7, cls, bbox)": "region-wise",
    "post-processing": "region-wise",
    "glue": "(not in the table)",
}
PAPER_MS = {"conv": 141.0, "proposal": 10.0, "region-wise": 47.0, "total": 198.0}


class StageClock:
    """Accumulates the time of wrapped calls by stage name, each net of the wrapped calls inside it."""

    def __init__(self, sync: Callable[[], None]):
        self.sync, self.times, self._children = sync, {}, []

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            self._children.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                elapsed = time.perf_counter() - start
                inside = self._children.pop()
                self.times[name] = self.times.get(name, 0.0) + elapsed - inside
                if self._children:
                    self._children[-1] += elapsed
        return timed


@contextmanager
def _clocked(model, clock: StageClock, training: bool):
    """Wrap the model's parts with the clock for the duration of the block."""
    head = model.fast_rcnn.head
    parts = [  # (object, attribute, stage name)
        (model.transform, "forward", "preprocess (+ target checks)" if training else "preprocess"),
        (model.backbone, "forward", "backbone"),
        (model.rpn.head, "forward", "rpn head"),
        (AnchorGenerator, "__call__", "anchors"),
        (rpn, "generate_proposals", "proposal layer"),
        (head.roi_pool, "forward", "roi pool"),
        (head, "forward", "detector head (fc6, fc7, cls, bbox)"),
    ]
    if training:
        parts += [(model.rpn, "targets", "anchor targets"), (rpn, "rpn_loss", "rpn loss"),
                  (fast_rcnn, "sample_proposal_targets", "proposal targets (RoI sampling)"),
                  (fast_rcnn, "fast_rcnn_loss", "detector loss")]
    else:
        parts += [(fast_rcnn, "postprocess_detections", "post-processing"),
                  (model.transform, "to_original", "post-processing")]
    with ExitStack() as stack:
        for owner, attribute, name in parts:
            stack.enter_context(mock.patch.object(owner, attribute, clock.wrap(name, getattr(owner, attribute))))
        yield


def staged_inference(model, images, sync) -> tuple[dict, list[dict]]:
    """({stage: seconds}, detections) of one model(images) call. Call under inference_mode."""
    clock = StageClock(sync)
    sync()
    start = time.perf_counter()
    with _clocked(model, clock, training=False):
        detections = model(images)
    sync()
    clock.times["glue"] = max(0.0, time.perf_counter() - start - sum(clock.times.values()))
    return clock.times, detections


def same_detections(a: list[dict], b: list[dict]) -> bool:
    """True when two lists of detections are equal (to float round-off)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        for key in ("boxes", "labels", "scores"):
            if x[key].shape != y[key].shape:
                return False
            if not torch.allclose(x[key].float().cpu(), y[key].float().cpu(), atol=1e-4, rtol=1e-4):
                return False
    return True


def staged_training_step(model, optimizer, images, targets, sync) -> tuple[dict, dict]:
    """({stage: seconds}, losses) of one training step (forward, backward, SGD step) in train mode."""
    clock = StageClock(sync)
    sync()
    start = time.perf_counter()
    with _clocked(model, clock, training=True):
        losses = model(images, targets)
    sync()
    clock.times["glue"] = max(0.0, time.perf_counter() - start - sum(clock.times.values()))
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    clock.wrap("backward", loss.backward)()
    clock.wrap("SGD step", optimizer.step)()
    return clock.times, {k: float(v.detach()) for k, v in losses.items()}
