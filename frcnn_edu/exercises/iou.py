"""check_iou(fn): fn(boxes1 (N, 4), boxes2 (M, 4)) -> IoU matrix (N, M), against fe.boxes.box_iou.

Planted mistakes: the +1-pixel width, no clamp at 0, dividing by area1 + area2, no guard
against 0 / 0. Values outside [0, 1] get a hint of their own.

The answer (what a solution may not call): box_iou, box_area and their helpers, in frcnn_edu and
torchvision."""
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


def _iou_plus_one(boxes1, boxes2):
    """The old inclusive-pixel convention: width = x2 - x1 + 1."""
    def area(b):
        return (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area(boxes1)[:, None] + area(boxes2)[None, :] - inter)


def _iou_from(inter, boxes1, boxes2, union_extra=None, guard=True):
    a1, a2 = box_ops.box_area(boxes1), box_ops.box_area(boxes2)
    union = a1[:, None] + a2[None, :] - (inter if union_extra is None else union_extra)
    if guard:
        union = torch.where(union > 0, union, torch.ones_like(union))
    return inter / union


def _intersection(boxes1, boxes2, clamp=True):
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0) if clamp else rb - lt
    return wh[..., 0] * wh[..., 1]


def _iou_no_clamp(boxes1, boxes2):
    """Forgetting to clamp negative overlaps at 0."""
    return _iou_from(_intersection(boxes1, boxes2, clamp=False), boxes1, boxes2)


def _iou_inter_over_sum(boxes1, boxes2):
    """Dividing by area1 + area2 (forgetting to subtract the intersection)."""
    inter = _intersection(boxes1, boxes2)
    return _iou_from(inter, boxes1, boxes2, union_extra=torch.zeros_like(inter))


def _iou_no_guard(boxes1, boxes2):
    """No guard against 0 / 0 for two zero-area boxes."""
    return _iou_from(_intersection(boxes1, boxes2), boxes1, boxes2, guard=False)


_IOU_MISTAKES = [
    (_iou_plus_one, "it looks like you add 1 to widths and heights (the old inclusive-pixel "
                    "convention of py-faster-rcnn). Here boxes are continuous: width = x2 - x1."),
    (_iou_no_clamp, "it looks like negative overlaps are not clamped: when the boxes do not overlap, "
                    "x2 - x1 of the intersection is negative; use .clamp(min=0) on its width and "
                    "height before multiplying (two negatives make a positive area!)."),
    (_iou_inter_over_sum, "it looks like you divide by area1 + area2: the union is "
                          "area1 + area2 - intersection (the overlap is counted twice otherwise)."),
    (_iou_no_guard, "two zero-area boxes have union 0 and 0 / 0 = nan: define their IoU as 0, e.g. "
                    "divide by torch.where(union > 0, union, torch.ones_like(union))."),
]


_IOU_ANSWER = ("frcnn_edu.boxes.box_iou", "frcnn_edu.boxes._box_iou", "frcnn_edu.boxes.box_area",
               "frcnn_edu.boxes._box_area", "torchvision.ops.box_iou", "torchvision.ops.box_area",
               "torchvision.ops.boxes._box_inter_union")


def _out_of_range(got: torch.Tensor) -> tuple[str, str]:
    """(detail, hint) about IoU values outside [0, 1], or ("", "") when all lie inside (NaN has
    its own hint)."""
    values = got.double()
    values = values[~torch.isnan(values)]
    below, above = bool((values < 0).any()), bool((values > 1).any())
    if not (below or above):
        return "", ""
    detail = (f"IoU must lie in [0, 1], but your values go from {float(values.min()):.4f} "
              f"to {float(values.max()):.4f}.")
    hints = []
    if below:
        hints.append("values below 0 mean a negative intersection: when two boxes do not overlap, "
                     "the width or height of their intersection is negative; clamp both at 0 "
                     "(.clamp(min=0)) before multiplying.")
    if above:
        hints.append("values above 1 mean the intersection came out larger than the union: the "
                     "intersection runs from the LARGER top-left corner (torch.max) to the SMALLER "
                     "bottom-right corner (torch.min), and the union is area1 + area2 - intersection, "
                     "the intersection subtracted exactly once.")
    return detail, " Also, ".join(hints)


def _iou_cases() -> list:
    g = torch.Generator().manual_seed(0)
    return [
        Case("two partly overlapping boxes", (_boxes([[0, 0, 10, 10]]), _boxes([[5, 5, 15, 15]])),
             "intersection 5 x 5 = 25, union 100 + 100 - 25 = 175, IoU = 25 / 175."),
        Case("identical boxes", (_boxes([[2, 3, 12, 8]]), _boxes([[2, 3, 12, 8]])),
             "a box overlaps itself completely: IoU = 1."),
        Case("one box inside the other", (_boxes([[0, 0, 20, 20]]), _boxes([[5, 5, 10, 10]])),
             "the intersection is the small box: 25 / 400."),
        Case("boxes that do not overlap", (_boxes([[0, 0, 10, 10]]), _boxes([[20, 20, 30, 30]])),
             "the overlap's width and height are negative here: clamp them at 0."),
        Case("boxes that only touch along an edge", (_boxes([[0, 0, 10, 10]]), _boxes([[10, 0, 20, 10]])),
             "touching boxes share no area: IoU = 0."),
        Case("3 boxes against 2 (every pair: a 3 x 2 matrix)",
             (_boxes([[0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 4, 4]]),
              _boxes([[0, 0, 10, 10], [0, 5, 10, 15]])),
             "compute every pair (i, j): broadcast boxes1[:, None, :] against boxes2[None, :, :]."),
        Case("no boxes in boxes1 (empty input)", (_boxes([]), _boxes([[0, 0, 10, 10]] * 3)),
             "with N = 0 boxes the answer is an empty (0, M) tensor, not an error."),
        Case("no boxes in boxes2 (empty input)", (_boxes([[0, 0, 10, 10]] * 2), _boxes([])),
             "with M = 0 boxes the answer is an empty (N, 0) tensor."),
        Case("zero-area boxes", (_boxes([[5, 5, 5, 5], [0, 0, 10, 10]]), _boxes([[5, 5, 5, 5], [5, 5, 5, 9]])),
             "two zero-area boxes have union 0: 0 / 0 is NaN. Define their IoU as 0, e.g. divide by "
             "torch.where(union > 0, union, 1)."),
        Case("random boxes (20 x 15)", (_random_boxes(20, g), _random_boxes(15, g))),
    ]


def check_iou(fn: Callable, *, raise_on_failure: bool = False) -> CheckResult:
    """Check fn(boxes1 (N, 4), boxes2 (M, 4)) -> IoU matrix (N, M) against fe.boxes.box_iou.

    raise_on_failure=True is grading mode: silent on success, AssertionError on failure, and a
    function that calls box_iou (or box_area) fails.
    """
    names = ("boxes1", "boxes2")
    watch = _Watch(fn, _IOU_ANSWER)

    def check_one(case: Case):
        expected = box_ops.box_iou(*case.args)
        got = _as_tensor(_call(fn, case, names, watch), "an (N, M) IoU matrix")
        _check_shape(fn, case, names, got, expected, "an IoU matrix")
        where = _first_mismatch(got, expected, atol=1e-5, rtol=1e-4)
        if where is None:
            return
        i, j = where
        b1, b2 = case.args[0][i], case.args[1][j]
        detail = (f"First difference at [{i}, {j}]: IoU of boxes1[{i}] = {_fmt(b1)} and "
                  f"boxes2[{j}] = {_fmt(b2)} should be {float(expected[i, j]):.4f}, "
                  f"yours is {float(got[i, j]):.4f}.")
        range_detail, range_hint = _out_of_range(got)
        if range_detail:
            detail += f"\n  {range_detail}"
        hint = _diagnose(_IOU_MISTAKES, case, got) or range_hint
        raise _explain(fn, case, names, _fmt(expected), _fmt(got), detail, hint)

    return _run(fn, "iou", _iou_cases(), check_one, watch, raise_on_failure)
