"""check_encode(fn): fn(boxes (N, 4), anchors (N, 4)) -> (N, 4) eq. 2 targets, against
fe.boxes.encode.

Planted mistakes: no log, corners instead of centres, offsets not divided by the anchor's
size, boxes and anchors swapped.

The answer (what a solution may not call): fe.boxes.encode and its centre / size helper, and
torchvision's box coder (if imported)."""
from __future__ import annotations

from collections.abc import Callable

import torch

from .. import boxes as box_ops
from ._checking import (
    Case,
    CheckResult,
    _as_tensor,
    _boxes,
    _call,
    _check_shape,
    _diagnose,
    _explain,
    _first_mismatch,
    _fmt,
    _random_boxes,
    _run,
    _Watch,
)


def _centre_size(b):
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    return b[:, 0] + w / 2, b[:, 1] + h / 2, w, h


def _encode_no_log(boxes, anchors):
    x, y, w, h = _centre_size(boxes)
    xa, ya, wa, ha = _centre_size(anchors)
    return torch.stack([(x - xa) / wa, (y - ya) / ha, w / wa, h / ha], dim=1)


def _encode_corners(boxes, anchors):
    x, y, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    xa, ya, wa, ha = anchors[:, 0], anchors[:, 1], anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    return torch.stack([(x - xa) / wa, (y - ya) / ha, torch.log(w / wa), torch.log(h / ha)], dim=1)


def _encode_not_divided(boxes, anchors):
    x, y, w, h = _centre_size(boxes)
    xa, ya, wa, ha = _centre_size(anchors)
    return torch.stack([x - xa, y - ya, torch.log(w / wa), torch.log(h / ha)], dim=1)


def _encode_swapped(boxes, anchors):
    return box_ops.encode(anchors, boxes)


_ENCODE_MISTAKES = [
    (_encode_no_log, "tw and th look like w / wa and h / ha: eq. 2 takes their logarithm, "
                     "tw = log(w / wa), th = log(h / ha)."),
    (_encode_corners, "it looks like you use the corner (x1, y1) instead of the centre: "
                      "x = x1 + w / 2, y = y1 + h / 2."),
    (_encode_not_divided, "tx and ty must be divided by the anchor's size: tx = (x - xa) / wa, "
                          "ty = (y - ya) / ha."),
    (_encode_swapped, "boxes and anchors look swapped: the targets are the box relative to the "
                      "anchor, (x - xa) / wa, log(w / wa)."),
]


_ENCODE_ANSWER = ("frcnn_edu.boxes.encode", "frcnn_edu.boxes._centre_size",
                  "torchvision.models.detection._utils.encode_boxes")


def _encode_cases() -> list:
    g = torch.Generator().manual_seed(2)
    anchors = _random_boxes(12, g, size=200.0, min_side=8.0)
    boxes = _random_boxes(12, g, size=200.0, min_side=8.0)
    return [
        Case("box equal to its anchor", (_boxes([[10, 20, 50, 80]]), _boxes([[10, 20, 50, 80]])),
             "the same box needs no change: all four targets are 0 (log(1) = 0)."),
        Case("box moved right by 10 pixels", (_boxes([[20, 0, 40, 20]]), _boxes([[10, 0, 30, 20]])),
             "tx = (x - xa) / wa = 10 / 20 = 0.5: offsets are measured in anchor widths."),
        Case("box twice as wide, same centre", (_boxes([[0, 0, 40, 10]]), _boxes([[10, 0, 30, 10]])),
             "tw = log(w / wa) = log(2) = 0.693."),
        Case("box moved and resized", (_boxes([[5, 10, 45, 30]]), _boxes([[0, 0, 20, 40]])),
             "centres: x = x1 + w / 2; (x, y) = (25, 20), (xa, ya) = (10, 20)."),
        Case("no boxes (empty input)", (_boxes([]), _boxes([])),
             "with N = 0 boxes return an empty (0, 4) tensor."),
        Case("12 random boxes and anchors", (boxes, anchors)),
    ]


def check_encode(fn: Callable, *, raise_on_failure: bool = False) -> CheckResult:
    """Check fn(boxes (N, 4), anchors (N, 4)) -> (N, 4) eq. 2 targets against fe.boxes.encode.

    raise_on_failure=True is grading mode: silent on success, AssertionError on failure, and a
    function that calls fe.boxes.encode fails.
    """
    names = ("boxes", "anchors")
    watch = _Watch(fn, _ENCODE_ANSWER)
    components = ("tx = (x - xa) / wa", "ty = (y - ya) / ha", "tw = log(w / wa)", "th = log(h / ha)")

    def check_one(case: Case):
        boxes, anchors = case.args
        expected = box_ops.encode(boxes, anchors)
        got = _as_tensor(_call(fn, case, names, watch), "an (N, 4) tensor of targets")
        _check_shape(fn, case, names, got, expected, "targets")
        where = _first_mismatch(got, expected, atol=1e-5, rtol=1e-4)
        if where is None:
            return
        i, c = where
        detail = (f"First difference in row {i}, {components[c]}: box {_fmt(boxes[i])}, anchor "
                  f"{_fmt(anchors[i])}: expected {float(expected[i, c]):.4f}, got {float(got[i, c]):.4f}.")
        hint = _diagnose(_ENCODE_MISTAKES, case, got)
        raise _explain(fn, case, names, _fmt(expected), _fmt(got), detail, hint)

    return _run(fn, "encode", _encode_cases(), check_one, watch, raise_on_failure)
