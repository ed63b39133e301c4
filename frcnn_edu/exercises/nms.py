"""check_nms(fn): fn(boxes (N, 4), scores (N,), iou_threshold) -> kept indices (K,), against
fe.boxes.nms.

Planted mistakes: suppressing at IoU >= threshold; suppressed boxes that still suppress.

The answer (what a solution may not call): nms and batched_nms, in frcnn_edu and torchvision. IoU
is allowed: the exercise says "You may use fe.boxes.box_iou"."""
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
    _diagnose,
    _explain,
    _Failure,
    _fmt,
    _random_boxes,
    _run,
    _Watch,
)


def _nms_greater_equal(boxes, scores, iou_threshold):
    """Suppressing at IoU >= threshold instead of > threshold."""
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    iou = box_ops.box_iou(boxes, boxes)
    keep = []
    for i in order:
        if all(float(iou[i, k]) < iou_threshold for k in keep):
            keep.append(i)
    return torch.tensor(keep, dtype=torch.int64)


def _nms_suppressed_suppress(boxes, scores, iou_threshold):
    """Letting boxes that were already suppressed suppress others."""
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    iou = box_ops.box_iou(boxes, boxes)
    keep = []
    for rank, i in enumerate(order):
        if all(float(iou[i, k]) <= iou_threshold for k in order[:rank]):
            keep.append(i)
    return torch.tensor(keep, dtype=torch.int64)


_NMS_MISTAKES = [
    (_nms_greater_equal, "it looks like you suppress at IoU >= threshold. A box is suppressed only "
                         "when its IoU with a kept box is strictly greater than the threshold."),
    (_nms_suppressed_suppress, "it looks like boxes that were already suppressed still suppress "
                               "others. Only KEPT boxes suppress: compare with the boxes in `keep`."),
]


_NMS_ANSWER = ("frcnn_edu.boxes.nms", "frcnn_edu.boxes._nms_reference", "frcnn_edu.boxes.batched_nms",
               "torchvision.ops.nms", "torchvision.ops.batched_nms")


def _nms_cases() -> list:
    g = torch.Generator().manual_seed(1)
    rand = _random_boxes(40, g, size=60.0)
    rand_scores = torch.rand(40, generator=g)
    return [
        Case("two boxes overlapping a lot (IoU 0.68)",
             (_boxes([[0, 0, 10, 10], [1, 1, 11, 11]]), torch.tensor([0.9, 0.8]), 0.5),
             "the lower-scoring box has IoU 0.68 > 0.5 with the kept one: suppress it."),
        Case("scores not in sorted order",
             (_boxes([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]]), torch.tensor([0.3, 0.5, 0.9]), 0.5),
             "visit the boxes from the highest score down (torch.argsort(scores, descending=True)) "
             "and return indices into the ORIGINAL boxes, in that order."),
        Case("a chain: A overlaps B, B overlaps C, A does not overlap C",
             (_boxes([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]]), torch.tensor([0.9, 0.8, 0.7]), 0.3),
             "B is suppressed by A; C overlaps only B, which is not kept, so C stays."),
        Case("IoU exactly equal to the threshold",
             (_boxes([[0, 0, 10, 10], [0, 0, 10, 5]]), torch.tensor([0.9, 0.8]), 0.5),
             "the IoU is exactly 0.5 = threshold: suppress only if IoU > threshold, so both stay."),
        Case("equal scores (a tie)",
             (_boxes([[0, 0, 10, 10], [1, 1, 11, 11], [40, 40, 50, 50]]), torch.tensor([0.5, 0.5, 0.5]), 0.5),
             "among equal scores the lower index goes first: use a stable sort, "
             "torch.sort(scores, descending=True, stable=True)."),
        Case("no boxes (empty input)", (_boxes([]), torch.zeros(0), 0.5),
             "with no boxes return an empty int64 tensor: torch.zeros(0, dtype=torch.int64)."),
        Case("one box", (_boxes([[3, 3, 9, 9]]), torch.tensor([0.1]), 0.7)),
        Case("zero-area boxes", (_boxes([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10]]),
                                 torch.tensor([0.9, 0.8, 0.7]), 0.5),
             "zero-area boxes have IoU 0 with everything, so they never suppress anything."),
        Case("40 random boxes, threshold 0.3", (rand, rand_scores, 0.3)),
        Case("40 random boxes, threshold 0.7", (rand, rand_scores, 0.7)),
    ]


def _as_index_list(value) -> list:
    t = _as_tensor(value, "a 1-D tensor of kept indices")
    if t.dtype == torch.bool:
        raise _Failure("  It returned a boolean mask. Hint: return the INDICES of the kept boxes, "
                       "ordered by decreasing score, e.g. torch.tensor(keep).")
    if t.is_floating_point() and not bool((t == t.round()).all()):
        raise _Failure(f"  It returned non-integer values {_fmt(t)}. Hint: return the indices of "
                       f"the kept boxes (integers), not scores or IoUs.")
    return [int(v) for v in t.reshape(-1).tolist()]


def check_nms(fn: Callable, *, raise_on_failure: bool = False) -> CheckResult:
    """Check fn(boxes (N, 4), scores (N,), iou_threshold) -> kept indices against fe.boxes.nms.

    raise_on_failure=True is grading mode: silent on success, AssertionError on failure, and a
    function that calls nms fails (box_iou is allowed).
    """
    names = ("boxes", "scores", "iou_threshold")
    watch = _Watch(fn, _NMS_ANSWER)

    def check_one(case: Case):
        boxes, scores, threshold = case.args
        expected = box_ops.nms(boxes, scores, threshold).tolist()
        got = _as_index_list(_call(fn, case, names, watch))
        if got == expected:
            return
        iou = box_ops.box_iou(boxes, boxes) if len(boxes) else None
        if sorted(got) == sorted(expected):
            detail = "You keep the right boxes but in another order."
            hint = ("return the kept indices ordered by decreasing score; among equal scores the "
                    "lower index first (torch.sort(scores, descending=True, stable=True)).")
            raise _explain(fn, case, names, str(expected), str(got), detail, hint)
        missing = [i for i in expected if i not in got]
        extra = [i for i in got if i not in expected or got.count(i) > 1]
        if missing:
            i = missing[0]
            before = [k for k in expected[:expected.index(i)]]
            best = max((float(iou[i, k]) for k in before), default=0.0)
            detail = (f"Box {i} = {_fmt(boxes[i])} (score {float(scores[i]):.2f}) should be kept: its "
                      f"largest IoU with a higher-scoring kept box is {best:.3f}, not > {threshold}.")
        else:
            i = extra[0]
            if not 0 <= i < len(boxes):
                detail = f"Index {i} is not a valid box index (there are {len(boxes)} boxes)."
            elif got.count(i) > 1:
                detail = f"Index {i} appears more than once."
            else:
                killer = next((k for k in expected if float(iou[i, k]) > threshold
                               and float(scores[k]) >= float(scores[i]) and k != i), None)
                detail = (f"Box {i} = {_fmt(boxes[i])} (score {float(scores[i]):.2f}) should be "
                          f"suppressed" + (f": kept box {killer} (score {float(scores[killer]):.2f}) "
                                           f"overlaps it with IoU {float(iou[i, killer]):.3f} > {threshold}."
                                           if killer is not None else "."))
        hint = _diagnose(_NMS_MISTAKES, case, torch.tensor(got, dtype=torch.float64))
        raise _explain(fn, case, names, str(expected), str(got), detail, hint)

    return _run(fn, "nms", _nms_cases(), check_one, watch, raise_on_failure)
