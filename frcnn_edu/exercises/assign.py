"""check_assign(fn): fn(anchors (A, 4), gt_boxes (G, 4), image_size, pos_iou, neg_iou) -> (A,)
labels 1 / 0 / -1, against fe.rpn.assign_anchor_targets with sample=False (Sec. 3.1.2).

Planted mistakes: no highest-IoU rule; cross-boundary anchors not ignored.

The answer (what a solution may not call): fe.rpn.assign_anchor_targets. IoU is allowed: the
exercise says "You may use fe.boxes.box_iou"."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import anchors as anchor_ops
from .. import boxes as box_ops
from .. import rpn
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


def _reference_labels(anchors, gt_boxes, image_size, pos_iou=0.7, neg_iou=0.3):
    labels, _ = rpn.assign_anchor_targets(anchors, gt_boxes, image_size, pos_iou=pos_iou,
                                          neg_iou=neg_iou, allowed_border=0.0, sample=False)
    return labels


def _assign_no_best_rule(anchors, gt_boxes, image_size, pos_iou=0.7, neg_iou=0.3):
    """Only rule (ii), IoU > pos_iou: the highest-IoU anchor of each box is forgotten."""
    inside = anchor_ops.inside_image(anchors, image_size)
    labels = torch.full((len(anchors),), -1, dtype=torch.int64)
    if len(gt_boxes) == 0:
        labels[inside] = 0
        return labels
    best = box_ops.box_iou(anchors, gt_boxes).max(dim=1).values
    labels[inside & (best < neg_iou)] = 0
    labels[inside & (best > pos_iou)] = 1
    return labels


def _assign_no_boundary(anchors, gt_boxes, image_size, pos_iou=0.7, neg_iou=0.3):
    labels, _ = rpn.assign_anchor_targets(anchors, gt_boxes, image_size, pos_iou=pos_iou,
                                          neg_iou=neg_iou, allowed_border=float("inf"), sample=False)
    return labels


_ASSIGN_ANSWER = ("frcnn_edu.rpn.assign_anchor_targets",)

_ASSIGN_MISTAKES = [
    (_assign_no_best_rule, "the highest-IoU rule is missing: for each ground-truth box the anchor(s) "
                           "with the highest IoU are positive even when that IoU is below pos_iou "
                           "(rule (i) of Sec. 3.1.2; without it some boxes get no positive at all)."),
    (_assign_no_boundary, "cross-boundary anchors must be ignored (label -1): an anchor is inside when "
                          "x1 >= 0, y1 >= 0, x2 <= W, y2 <= H (Sec. 3.3)."),
]


def _grid_anchors(image_size, stride, sizes):
    h, w = image_size
    fs = (math.ceil(h / stride), math.ceil(w / stride))
    return anchor_ops.AnchorGenerator(sizes, (0.5, 1.0, 2.0), stride)(fs)


def _assign_cases() -> list:
    g = torch.Generator().manual_seed(3)
    grid = _grid_anchors((96, 128), 16, (24, 48))
    gt_random = _random_boxes(3, g, size=90.0, min_side=16.0)
    return [
        Case("one box and three anchors: IoU 0.9, 0 and 0.56",
             (_boxes([[0, 0, 10, 10], [40, 40, 50, 50], [0, 0, 10, 5]]), _boxes([[0, 0, 10, 9]]), (60, 60), 0.7, 0.3),
             "positive (1) if IoU > pos_iou, negative (0) if IoU < neg_iou, otherwise ignored (-1)."),
        Case("the best anchor is below pos_iou (the highest-IoU rule)",
             (_boxes([[0, 0, 10, 10], [30, 30, 40, 40]]), _boxes([[0, 0, 10, 5]]), (60, 60), 0.7, 0.3),
             "each ground-truth box makes its highest-IoU anchor(s) positive even below pos_iou."),
        Case("two anchors tie for the best IoU",
             (_boxes([[0, 0, 10, 10], [10, 0, 20, 10], [40, 40, 50, 50]]), _boxes([[5, 0, 15, 10]]),
              (60, 60), 0.7, 0.3),
             "ties: every anchor whose IoU equals the box's best IoU is positive."),
        Case("an anchor crossing the image boundary",
             (_boxes([[-2, 0, 18, 20], [0, 0, 20, 20], [30, 30, 50, 50]]), _boxes([[0, 0, 18, 20]]),
              (60, 60), 0.7, 0.3),
             "anchors that cross the image boundary are ignored (-1), whatever their IoU; the best "
             "anchor of a box is chosen among the anchors inside the image."),
        Case("an image with no ground-truth boxes (empty gt_boxes)",
             (_boxes([[0, 0, 10, 10], [50, 50, 70, 70]]), _boxes([]), (60, 60), 0.7, 0.3),
             "with no boxes every inside anchor is negative (0); cross-boundary anchors stay -1."),
        Case("other thresholds (pos_iou 0.5, neg_iou 0.1)",
             (_boxes([[0, 0, 10, 10], [2, 0, 12, 10], [6, 0, 16, 10], [30, 0, 40, 10]]),
              _boxes([[0, 0, 10, 10]]), (60, 60), 0.5, 0.1),
             "use the pos_iou and neg_iou arguments, not 0.7 and 0.3."),
        Case("two boxes, anchors on a grid (stride 16)",
             (grid, _boxes([[10, 10, 40, 40], [60, 20, 120, 60]]), (96, 128), 0.7, 0.3)),
        Case("a box that no inside anchor overlaps",
             (_boxes([[0, 0, 10, 10], [20, 0, 30, 10]]), _boxes([[40, 40, 50, 50]]), (60, 60), 0.7, 0.3),
             "a box whose best IoU is 0 must not make every zero-IoU anchor positive: apply the "
             "highest-IoU rule only when that best IoU is > 0."),
        Case("random boxes, anchors on a grid", (grid, gt_random, (96, 128), 0.7, 0.3)),
    ]


def _why(anchors, gt_boxes, image_size, pos_iou, neg_iou, a: int, label: int) -> str:
    """Why the reference gives anchor a this label, in words."""
    inside = bool(anchor_ops.inside_image(anchors[a:a + 1], image_size)[0])
    if not inside:
        return f"anchor {a} crosses the image boundary (image (H, W) = {tuple(image_size)}), so it is ignored."
    if len(gt_boxes) == 0:
        return "there are no ground-truth boxes, so every inside anchor is negative."
    iou = box_ops.box_iou(anchors, gt_boxes)
    iou_inside = torch.where(anchor_ops.inside_image(anchors, image_size)[:, None], iou,
                             torch.full_like(iou, -1.0))
    ious = ", ".join(f"{float(v):.3f}" for v in iou[a])
    text = f"anchor {a}'s IoUs with the boxes are [{ious}]"
    best = iou_inside.max(dim=0).values
    winners = [j for j in range(len(gt_boxes)) if best[j] > 0 and float(iou_inside[a, j]) == float(best[j])]
    if label == 1 and float(iou[a].max()) <= pos_iou and winners:
        g = winners[0]
        return text + f"; it is the highest-IoU anchor of box {g} (IoU {float(best[g]):.3f}), so it is positive."
    if label == 1:
        return text + f"; one is > pos_iou = {pos_iou}, so it is positive."
    if label == 0:
        return text + f"; all are < neg_iou = {neg_iou} and it is nobody's best anchor, so it is negative."
    return text + f"; the largest is between neg_iou = {neg_iou} and pos_iou = {pos_iou}, so it is ignored."


def check_assign(fn: Callable, *, raise_on_failure: bool = False) -> CheckResult:
    """Check fn(anchors, gt_boxes, image_size, pos_iou, neg_iou) -> labels (A,) in {1, 0, -1}.

    The reference is fe.rpn.assign_anchor_targets(..., allowed_border=0, sample=False): rules
    (i)-(ii) of Sec. 3.1.2 and cross-boundary anchors ignored, without the random mini-batch.
    raise_on_failure=True is grading mode: silent on success, AssertionError on failure, and a
    function that calls assign_anchor_targets fails (box_iou is allowed).
    """
    names = ("anchors", "gt_boxes", "image_size", "pos_iou", "neg_iou")
    watch = _Watch(fn, _ASSIGN_ANSWER)

    def check_one(case: Case):
        anchors, gt_boxes, image_size, pos_iou, neg_iou = case.args
        expected = _reference_labels(*case.args)
        got = _as_tensor(_call(fn, case, names, watch), "an (A,) tensor of labels")
        _check_shape(fn, case, names, got, expected, "labels")
        where = _first_mismatch(got, expected, atol=0, rtol=0)
        if where is None:
            return
        a = where[0]
        detail = (f"First difference at anchor {a} = {_fmt(anchors[a])}: expected label "
                  f"{int(expected[a])}, got {_fmt(got[a].item())}. Because "
                  + _why(anchors, gt_boxes, image_size, pos_iou, neg_iou, a, int(expected[a])))
        hint = _diagnose(_ASSIGN_MISTAKES, case, got)
        raise _explain(fn, case, names, _fmt(expected), _fmt(got), detail, hint)

    return _run(fn, "assign", _assign_cases(), check_one, watch, raise_on_failure)
