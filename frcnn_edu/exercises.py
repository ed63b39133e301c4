"""Checkers for the exercise notebooks (notebooks/exercises/): is the learner's function right?

Each checker calls the learner's function on hand-picked and random inputs, compares the answer
with the package's own implementation (the "reference") and

  - on success prints a short message and returns True;
  - on the FIRST wrong answer prints which input it was, the expected and the received output,
    and a hint, then returns False. It never raises, so a notebook with an unsolved exercise
    still runs from top to bottom.

    check_iou(fn)        fn(boxes1 (N, 4), boxes2 (M, 4)) -> (N, M)          fe.boxes.box_iou
    check_nms(fn)        fn(boxes (N, 4), scores (N,), iou_threshold) -> kept indices (K,)
    check_anchors(fn)    fn(sizes, ratios) -> (len(ratios) * len(sizes), 4)  generate_base_anchors
    check_encode(fn)     fn(boxes (N, 4), anchors (N, 4)) -> (N, 4)          eq. 2, fe.boxes.encode
    check_assign(fn)     fn(anchors (A, 4), gt_boxes (G, 4), image_size, pos_iou, neg_iou) -> (A,)
                         labels 1 / 0 / -1 (fe.rpn.assign_anchor_targets with sample=False)
    check_roi_pool(fn)   fn(features (C, H, W), roi (4,), output_size (h, w), spatial_scale)
                         -> (C, h, w); or, with full=True, fn(features (N, C, H, W), rois (K, 5),
                         output_size, spatial_scale) -> (K, C, h, w)   (fe.roi.roi_pool)

Known mistakes (the +1-pixel width, >= in NMS, width and height swapped, a missing log, ...) are
recognised by recomputing the input with the mistake made on purpose; when the learner's answer
matches, the hint names the mistake.
"""
from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import anchors as anchor_ops
from . import boxes as box_ops
from . import roi as roi_ops
from . import rpn

__all__ = ["check_iou", "check_nms", "check_anchors", "check_encode", "check_assign", "check_roi_pool"]


# ----------------------------------------------------------------------------------------------
# The machinery shared by all checkers
# ----------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One input of a checker: a name learners can read, the arguments, and a hint."""

    name: str
    args: tuple
    hint: str = ""
    extra: dict = field(default_factory=dict)   # anything the explanation needs (e.g. threshold)


class _Failure(Exception):
    """Raised inside a checker with the explanation of the first wrong answer."""


class _NotImplemented(_Failure):
    """The learner's function still raises NotImplementedError."""


def _fmt(x, precision: int = 4) -> str:
    """A tensor, list or number as short readable text (numpy's printing: no 'tensor(...)')."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bool:
            return np.array2string(x.numpy(), threshold=40)
        x = x.numpy()
    if isinstance(x, np.ndarray):
        text = np.array2string(x, precision=precision, suppress_small=True, threshold=40,
                               max_line_width=100, separator=", ")
        return text.replace("\n", "\n      ")
    if isinstance(x, float):
        return f"{x:.{precision}g}"
    return repr(x)


def _fmt_input(name: str, value) -> str:
    shape = f"   (shape {tuple(value.shape)})" if isinstance(value, torch.Tensor) else ""
    return f"    {name} = {_fmt(value)}{shape}"


def _clone(args: tuple) -> tuple:
    """Fresh copies, so a learner's in-place edit cannot change the reference's input."""
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _as_tensor(value, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(value))
    except Exception:
        raise _Failure(f"  It returned {type(value).__name__} {value!r}, not {what}.\n"
                       f"  Hint: return a torch tensor ({what}).") from None


def _call(fn: Callable, case: Case, arg_names: tuple):
    """The learner's answer for one case; exceptions become explanations."""
    try:
        return fn(*_clone(case.args))
    except NotImplementedError:
        raise _NotImplemented(f"NOT DONE YET: {_name(fn)} is not implemented yet: replace `raise NotImplementedError` "
                       f"with your code, run its cell, then run this check again.") from None
    except Exception as error:
        frame = _learner_frame(error)
        inputs = "\n".join(_fmt_input(n, v) for n, v in zip(arg_names, case.args))
        raise _Failure(
            f"  {_name(fn)} raised {type(error).__name__}: {error}\n"
            f"  (line {frame.lineno}: {frame.line})\n"
            f"  on the input \"{case.name}\":\n{inputs}\n"
            + (f"  Hint: {case.hint}" if case.hint else "")) from None


def _learner_frame(error: Exception):
    """The innermost frame of the traceback that is not inside torch or numpy."""
    frames = traceback.extract_tb(error.__traceback__)[1:]      # [0] is _call itself
    for frame in reversed(frames):
        if "site-packages" not in frame.filename and "/torch/" not in frame.filename:
            return frame
    return frames[-1] if frames else traceback.extract_tb(error.__traceback__)[-1]


def _name(fn: Callable) -> str:
    return getattr(fn, "__name__", "your function")


def _explain(fn: Callable, case: Case, arg_names: tuple, expected: str, got: str, detail: str = "",
             hint: str = "") -> _Failure:
    inputs = "\n".join(_fmt_input(n, v) for n, v in zip(arg_names, case.args))
    lines = [f"  Input \"{case.name}\":", inputs,
             f"  expected: {expected}",
             f"  got:      {got}"]
    if detail:
        lines.append(f"  {detail}")
    hint = hint or case.hint
    if hint:
        lines.append(f"  Hint: {hint}")
    return _Failure("\n".join(lines))


def _run(fn: Callable, task: str, cases: list, check_one: Callable) -> bool:
    """Run check_one(case) for each case; print the first failure or a success message."""
    if not callable(fn):
        print(f"FAILED: check_{task} needs a function, got {type(fn).__name__} {fn!r}.")
        return False
    for number, case in enumerate(cases, 1):
        try:
            check_one(case)
        except _NotImplemented as failure:
            print(failure)
            return False
        except _Failure as failure:
            print(f"FAILED: {_name(fn)} is not right yet (check {number} of {len(cases)}, "
                  f"\"{case.name}\").\n{failure}")
            return False
    print(f"PASSED: {_name(fn)} agrees with the reference on all {len(cases)} checks "
          f"(hand-picked edge cases and random inputs). Well done!")
    return True


def _check_shape(fn, case, arg_names, got: torch.Tensor, expected: torch.Tensor, what: str):
    if tuple(got.shape) != tuple(expected.shape):
        raise _explain(fn, case, arg_names, f"{what} of shape {tuple(expected.shape)}",
                       f"shape {tuple(got.shape)}: {_fmt(got)}")


def _first_mismatch(got: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float):
    """Index tuple of the first element where got and expected differ (NaN counts), or None."""
    got, expected = got.double(), expected.double()
    close = torch.isclose(got, expected, rtol=rtol, atol=atol)
    if bool(close.all()):
        return None
    return tuple(int(i) for i in (~close).nonzero()[0])


def _matches(wrong: Callable, case: Case, got: torch.Tensor, atol: float = 1e-4) -> bool:
    """Does the learner's answer equal the answer of a known mistake?"""
    try:
        answer = torch.as_tensor(wrong(*_clone(case.args))).double()
    except Exception:
        return False
    return answer.shape == got.shape and bool(torch.allclose(answer, got.double(), atol=atol,
                                                             rtol=1e-4, equal_nan=True))


def _diagnose(mistakes: list, case: Case, got: torch.Tensor) -> str:
    for wrong, hint in mistakes:
        if _matches(wrong, case, got):
            return hint
    return ""


def _boxes(rows, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype).reshape(-1, 4)


def _random_boxes(n: int, generator: torch.Generator, size: float = 100.0, min_side: float = 2.0
                  ) -> torch.Tensor:
    """n random boxes inside [0, size]^2 with sides >= min_side, float32, whole and half pixels."""
    xy = torch.rand(n, 2, generator=generator) * size * 0.7
    wh = min_side + torch.rand(n, 2, generator=generator) * size * 0.3
    return (torch.round(torch.cat([xy, xy + wh], dim=1) * 2) / 2).float()


# ----------------------------------------------------------------------------------------------
# IoU
# ----------------------------------------------------------------------------------------------
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


def check_iou(fn: Callable) -> bool:
    """Check fn(boxes1 (N, 4), boxes2 (M, 4)) -> IoU matrix (N, M) against fe.boxes.box_iou."""
    names = ("boxes1", "boxes2")

    def check_one(case: Case):
        expected = box_ops.box_iou(*case.args)
        got = _as_tensor(_call(fn, case, names), "an (N, M) IoU matrix")
        _check_shape(fn, case, names, got, expected, "an IoU matrix")
        where = _first_mismatch(got, expected, atol=1e-5, rtol=1e-4)
        if where is None:
            return
        i, j = where
        b1, b2 = case.args[0][i], case.args[1][j]
        detail = (f"First difference at [{i}, {j}]: IoU of boxes1[{i}] = {_fmt(b1)} and "
                  f"boxes2[{j}] = {_fmt(b2)} should be {float(expected[i, j]):.4f}, "
                  f"yours is {float(got[i, j]):.4f}.")
        hint = _diagnose(_IOU_MISTAKES, case, got)
        raise _explain(fn, case, names, _fmt(expected), _fmt(got), detail, hint)

    return _run(fn, "iou", _iou_cases(), check_one)


# ----------------------------------------------------------------------------------------------
# NMS
# ----------------------------------------------------------------------------------------------
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


def check_nms(fn: Callable) -> bool:
    """Check fn(boxes (N, 4), scores (N,), iou_threshold) -> kept indices against fe.boxes.nms."""
    names = ("boxes", "scores", "iou_threshold")

    def check_one(case: Case):
        boxes, scores, threshold = case.args
        expected = box_ops.nms(boxes, scores, threshold).tolist()
        got = _as_index_list(_call(fn, case, names))
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

    return _run(fn, "nms", _nms_cases(), check_one)


# ----------------------------------------------------------------------------------------------
# Base anchors
# ----------------------------------------------------------------------------------------------
def _anchors_swapped(sizes, ratios):
    """Ratio taken as width / height: w and h swapped."""
    return anchor_ops.generate_base_anchors(sizes, ratios)[:, [1, 0, 3, 2]]


def _anchors_sizes_outer(sizes, ratios):
    """Sizes in the outer loop instead of ratios."""
    rows = [anchor_ops.generate_base_anchors([s], [r])[0] for s in sizes for r in ratios]
    return torch.stack(rows)


def _anchors_not_centred(sizes, ratios):
    """Boxes (0, 0, w, h) instead of centred on (0, 0)."""
    a = anchor_ops.generate_base_anchors(sizes, ratios)
    return a - torch.cat([a[:, :2], a[:, :2]], dim=1)


def _anchors_area_ratio(sizes, ratios):
    """w = s * r, h = s: the area is not s^2."""
    rows = []
    for r in ratios:
        for s in sizes:
            w, h = s, s * r
            rows.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(rows)


_ANCHOR_MISTAKES = [
    (_anchors_swapped, "width and height look swapped. The aspect ratio is height / width: "
                       "ratio 2 is a TALL box, so w = s / sqrt(r) and h = s * sqrt(r)."),
    (_anchors_sizes_outer, "the rows are in the wrong order: ratios go in the OUTER loop and sizes "
                           "in the inner one: [r0 s0, r0 s1, r0 s2, r1 s0, ...]."),
    (_anchors_not_centred, "the boxes are not centred on (0, 0): use (-w/2, -h/2, w/2, h/2)."),
    (_anchors_area_ratio, "the area should be s^2 for every ratio: w = s / sqrt(r), h = s * sqrt(r) "
                          "gives w * h = s^2 and h / w = r."),
]


def _anchor_cases() -> list:
    return [
        Case("one size, ratio 1 (a square)", ((128,), (1.0,)),
             "a square of side s centred on (0, 0) is (-s/2, -s/2, s/2, s/2)."),
        Case("one size, ratio 2 (height / width = 2: a tall box)", ((128,), (2.0,)),
             "ratio = height / width; keep the area s^2: w = s / sqrt(r), h = s * sqrt(r)."),
        Case("one size, ratio 0.5 (a wide box)", ((64,), (0.5,))),
        Case("two sizes, one ratio", ((32, 64), (1.0,))),
        Case("the paper's 3 sizes x 3 ratios (k = 9)", ((128, 256, 512), (0.5, 1.0, 2.0)),
             "order: ratios outer, sizes inner: [r0 s0, r0 s1, r0 s2, r1 s0, ...]."),
        Case("sizes that are not powers of 2, extreme ratios", ((50, 75.5), (0.25, 4.0, 1.5))),
    ]


def check_anchors(fn: Callable) -> bool:
    """Check fn(sizes, ratios) -> (len(ratios) * len(sizes), 4) against generate_base_anchors."""
    names = ("sizes", "ratios")

    def check_one(case: Case):
        sizes, ratios = case.args
        expected = anchor_ops.generate_base_anchors(sizes, ratios)
        got = _as_tensor(_call(fn, case, names), "a (k, 4) tensor of anchors").float()
        _check_shape(fn, case, names, got, expected, f"k = {len(ratios)} x {len(sizes)} anchors")
        where = _first_mismatch(got, expected, atol=1e-3, rtol=1e-5)
        if where is None:
            return
        a = where[0]
        r, s = ratios[a // len(sizes)], sizes[a % len(sizes)]
        ew, eh = float(expected[a, 2] - expected[a, 0]), float(expected[a, 3] - expected[a, 1])
        gw, gh = float(got[a, 2] - got[a, 0]), float(got[a, 3] - got[a, 1])
        detail = (f"First difference in row {a}, the anchor of size {s} and ratio {r}: expected "
                  f"{_fmt(expected[a])} (w = {ew:.2f}, h = {eh:.2f}), got {_fmt(got[a])} "
                  f"(w = {gw:.2f}, h = {gh:.2f}).")
        hint = _diagnose(_ANCHOR_MISTAKES, case, got)
        raise _explain(fn, case, names, _fmt(expected), _fmt(got), detail, hint)

    return _run(fn, "anchors", _anchor_cases(), check_one)


# ----------------------------------------------------------------------------------------------
# Box encoding (eq. 2)
# ----------------------------------------------------------------------------------------------
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


def check_encode(fn: Callable) -> bool:
    """Check fn(boxes (N, 4), anchors (N, 4)) -> (N, 4) eq. 2 targets against fe.boxes.encode."""
    names = ("boxes", "anchors")
    components = ("tx = (x - xa) / wa", "ty = (y - ya) / ha", "tw = log(w / wa)", "th = log(h / ha)")

    def check_one(case: Case):
        boxes, anchors = case.args
        expected = box_ops.encode(boxes, anchors)
        got = _as_tensor(_call(fn, case, names), "an (N, 4) tensor of targets")
        _check_shape(fn, case, names, got, expected, "targets")
        where = _first_mismatch(got, expected, atol=1e-5, rtol=1e-4)
        if where is None:
            return
        i, c = where
        detail = (f"First difference in row {i}, {components[c]}: box {_fmt(boxes[i])}, anchor "
                  f"{_fmt(anchors[i])}: expected {float(expected[i, c]):.4f}, got {float(got[i, c]):.4f}.")
        hint = _diagnose(_ENCODE_MISTAKES, case, got)
        raise _explain(fn, case, names, _fmt(expected), _fmt(got), detail, hint)

    return _run(fn, "encode", _encode_cases(), check_one)


# ----------------------------------------------------------------------------------------------
# Anchor assignment (Sec. 3.1.2)
# ----------------------------------------------------------------------------------------------
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


def check_assign(fn: Callable) -> bool:
    """Check fn(anchors, gt_boxes, image_size, pos_iou, neg_iou) -> labels (A,) in {1, 0, -1}.

    The reference is fe.rpn.assign_anchor_targets(..., allowed_border=0, sample=False): rules
    (i)-(ii) of Sec. 3.1.2 and cross-boundary anchors ignored, without the random mini-batch.
    """
    names = ("anchors", "gt_boxes", "image_size", "pos_iou", "neg_iou")

    def check_one(case: Case):
        anchors, gt_boxes, image_size, pos_iou, neg_iou = case.args
        expected = _reference_labels(*case.args)
        got = _as_tensor(_call(fn, case, names), "an (A,) tensor of labels")
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

    return _run(fn, "assign", _assign_cases(), check_one)


# ----------------------------------------------------------------------------------------------
# RoI max pooling ([F] Sec. 2.1)
# ----------------------------------------------------------------------------------------------
def _edges_agree(length: int, pooled: int) -> bool:
    """Do the bin edges floor(i * length / pooled), ceil((i + 1) * length / pooled) come out the
    same in float32 (torchvision's kernel), float64 (Python floats) and exact integers?

    For a few (length, pooled) pairs float32 rounds i * (length / pooled) just above a whole
    number; the checker avoids them so that any careful implementation passes."""
    variants = set()
    for dtype in (torch.float32, torch.float64):
        size = torch.tensor(length, dtype=dtype) / pooled
        k = torch.arange(pooled + 1, dtype=dtype)
        variants.add((tuple(torch.floor(k[:-1] * size).long().tolist()),
                      tuple(torch.ceil(k[1:] * size).long().tolist())))
    variants.add((tuple((i * length) // pooled for i in range(pooled)),
                  tuple(-((-(i + 1) * length) // pooled) for i in range(pooled))))
    return len(variants) == 1


def _round_half_away(v: float) -> int:
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


def _roi_ok(roi, output_size, spatial_scale) -> bool:
    x1, y1, x2, y2 = (_round_half_away(float(v) * spatial_scale) for v in roi)
    return (_edges_agree(max(y2 - y1 + 1, 1), output_size[0])
            and _edges_agree(max(x2 - x1 + 1, 1), output_size[1]))


def _random_roi_case(g: torch.Generator, name: str) -> Case:
    channels, height, width = 2, 12, 12
    features = torch.randn(channels, height, width, generator=g)
    scale = 0.25
    while True:
        xy = torch.randint(0, 40, (2,), generator=g)
        wh = torch.randint(0, 24, (2,), generator=g)
        roi = torch.cat([xy, xy + wh]).float()
        size = tuple(int(v) for v in torch.randint(1, 8, (2,), generator=g))
        if _roi_ok(roi, size, scale):
            return Case(name, (features, roi, size, scale))


def _roi_cases() -> list:
    g = torch.Generator().manual_seed(4)
    ramp = torch.arange(36, dtype=torch.float32).reshape(1, 6, 6)
    noise = torch.randn(1, 10, 10, generator=g)
    cases = [
        Case("a 4 x 4-cell RoI pooled to 2 x 2 (spatial_scale 1)",
             (ramp, torch.tensor([1.0, 1.0, 4.0, 4.0]), (2, 2), 1.0),
             "the RoI covers feature cells 1..4 (both ends included); each bin is 2 x 2 cells; "
             "take the maximum of each bin."),
        Case("a 5-cell-wide RoI into 2 bins (bins overlap)",
             (ramp, torch.tensor([0.0, 0.0, 4.0, 4.0]), (2, 2), 1.0),
             "bin i spans rows floor(i * h / H) to ceil((i + 1) * h / H) (end excluded): with h = 5 "
             "cells and H = 2 bins, rows 0..2 and 2..4 -- neighbouring bins share a row."),
        Case("coordinates ending in .5 after scaling (rounding)",
             (noise, torch.tensor([5.0, 1.0, 13.0, 9.0]), (3, 3), 0.5),
             "x * spatial_scale = 2.5 must round to 3 (half away from zero, like C's round()); "
             "torch.round and Python's round() send 2.5 to 2 (half to even)."),
        Case("a RoI smaller than the output (2 x 2 cells into 4 x 4 bins)",
             (ramp, torch.tensor([2.0, 2.0, 3.0, 3.0]), (4, 4), 1.0),
             "with fewer cells than bins, bins repeat cells; every bin still has at least one cell."),
        Case("all features negative",
             (-1.0 - ramp, torch.tensor([0.0, 0.0, 5.0, 5.0]), (2, 3), 1.0),
             "the maximum of negative numbers is negative: do not start the maximum at 0 "
             "(use .max() / .amax() of the bin's values)."),
        Case("a RoI partly outside the feature map (empty bins)",
             (ramp, torch.tensor([3.0, 3.0, 11.0, 11.0]), (3, 3), 1.0),
             "clamp the bins to the map (rows 0..H, columns 0..W); a bin with nothing left is "
             "empty and pools to 0."),
        Case("three channels, non-square output (2 x 3), spatial_scale 1/16",
             (torch.randn(3, 8, 8, generator=g), torch.tensor([16.0, 8.0, 100.0, 72.0]), (2, 3), 1 / 16),
             "pool every channel separately: the output has shape (C, h, w)."),
    ]
    cases += [_random_roi_case(g, f"random RoI {i + 1}") for i in range(4)]
    assert all(_roi_ok(c.args[1], c.args[2], c.args[3]) for c in cases)
    return cases


def _pool_variant(features, roi, output_size, spatial_scale, *, rounding="half_away",
                  bins="floor_ceil", end_inclusive=True):
    """One RoI pooled with a chosen rounding, bin rule and end rule: the known mistakes."""
    channels, height, width = features.shape
    scaled = [float(v) * spatial_scale for v in roi]
    if rounding == "half_away":
        x1, y1, x2, y2 = (_round_half_away(v) for v in scaled)
    else:                                                       # torch.round: half to even
        x1, y1, x2, y2 = (int(torch.round(torch.tensor(v, dtype=torch.float64))) for v in scaled)
    extra = 1 if end_inclusive else 0
    rh, rw = max(y2 - y1 + extra, 1), max(x2 - x1 + extra, 1)

    def edge(i, length, pooled, up):
        if bins == "floor_ceil":
            return -((-i * length) // pooled) if up else (i * length) // pooled
        return (i * length) // pooled                          # equal integer splits

    out = features.new_zeros(channels, *output_size)
    for i in range(output_size[0]):
        hs = min(max(y1 + edge(i, rh, output_size[0], False), 0), height)
        he = min(max(y1 + edge(i + 1, rh, output_size[0], True), 0), height)
        for j in range(output_size[1]):
            ws = min(max(x1 + edge(j, rw, output_size[1], False), 0), width)
            we = min(max(x1 + edge(j + 1, rw, output_size[1], True), 0), width)
            if he > hs and we > ws:
                out[:, i, j] = features[:, hs:he, ws:we].amax(dim=(1, 2))
    return out


def _roi_pool_torch_round(features, roi, output_size, spatial_scale):
    return _pool_variant(features, roi, output_size, spatial_scale, rounding="half_even")


def _roi_pool_equal_split(features, roi, output_size, spatial_scale):
    return _pool_variant(features, roi, output_size, spatial_scale, bins="equal")


def _roi_pool_exclusive_end(features, roi, output_size, spatial_scale):
    return _pool_variant(features, roi, output_size, spatial_scale, end_inclusive=False)


_ROI_MISTAKES = [
    (_roi_pool_torch_round, "it looks like the RoI corners are rounded with torch.round (or Python's "
                            "round), which sends 2.5 to 2. RoI pooling rounds half AWAY from zero, "
                            "like C's round(): 2.5 -> 3, e.g. math.floor(v + 0.5) for v >= 0."),
    (_roi_pool_equal_split, "bins look like equal integer splits. Bin i runs from "
                            "floor(i * h / H) to ceil((i + 1) * h / H), so bins may overlap."),
    (_roi_pool_exclusive_end, "the RoI looks one cell too small: after rounding, the end cell is "
                              "INCLUDED, so the RoI is x2 - x1 + 1 cells wide."),
]


def _reference_single(features, roi, output_size, spatial_scale):
    rois = torch.cat([torch.zeros(1, dtype=features.dtype), roi.to(features.dtype)]).reshape(1, 5)
    return roi_ops.roi_pool(features[None], rois, output_size, spatial_scale)[0]


def _explain_bin(case: Case, where: tuple, expected, got, full: bool) -> str:
    features, roi, output_size, scale = case.args
    if full:
        k, c, i, j = where
        roi_k = roi[k, 1:]
        label = f"RoI {k}, channel {c}, bin ({i}, {j})"
    else:
        c, i, j = where
        roi_k = roi
        label = f"channel {c}, bin ({i}, {j})"
    height, width = features.shape[-2:]
    hs, he, ws, we = roi_ops.roi_pool_bins(roi_k, output_size, scale, (height, width))
    cells = (f"feature rows {hs[i]}..{he[i] - 1}, columns {ws[j]}..{we[j] - 1}"
             if he[i] > hs[i] and we[j] > ws[j] else "no cells: the bin is off the map, so 0")
    return (f"First difference at {label}: expected {float(expected[where]):.4f} (the maximum over "
            f"{cells}), got {float(got[where]):.4f}.")


def _full_cases() -> list:
    """The single-RoI cases as (N, C, H, W), (K, 5) inputs, plus a batch and an empty one."""
    cases = []
    for case in _roi_cases():
        features, roi, size, scale = case.args
        rois = torch.cat([torch.zeros(1), roi]).reshape(1, 5)
        cases.append(Case(case.name, (features[None], rois, size, scale), case.hint))
    g = torch.Generator().manual_seed(5)
    batch = torch.randn(2, 2, 12, 12, generator=g)
    rois = torch.tensor([[1, 0, 0, 40, 40], [0, 8, 4, 30, 44], [1, 20, 12, 47, 47]], dtype=torch.float32)
    cases.append(Case("two images, three RoIs (column 0 is the image index)", (batch, rois, (3, 3), 0.25),
                      "rois[k, 0] says which image of the batch RoI k belongs to."))
    cases.append(Case("no RoIs (empty input)", (batch, torch.zeros(0, 5), (3, 3), 0.25),
                      "with K = 0 RoIs return an empty (0, C, h, w) tensor."))
    return cases


def check_roi_pool(fn: Callable, full: bool = False) -> bool:
    """Check a RoI max pooling function against fe.roi.roi_pool.

    full=False: fn(features (C, H, W), roi (4,) = (x1, y1, x2, y2) in image pixels,
                   output_size (h, w), spatial_scale) -> (C, h, w)   -- one RoI;
    full=True:  fn(features (N, C, H, W), rois (K, 5), output_size (h, w), spatial_scale)
                   -> (K, C, h, w)   -- the whole operation.
    """
    names = ("features", "rois" if full else "roi", "output_size", "spatial_scale")

    def check_one(case: Case):
        features, roi, size, scale = case.args
        if full:
            expected = roi_ops.roi_pool(features, roi, size, scale)
        else:
            expected = _reference_single(features, roi, size, scale)
        got = _as_tensor(_call(fn, case, names), "a tensor of pooled features")
        _check_shape(fn, case, names, got, expected, "pooled features")
        where = _first_mismatch(got, expected, atol=1e-6, rtol=1e-6)
        if where is None:
            return
        detail = _explain_bin(case, where, expected, got, full)
        hint = "" if full else _diagnose(_ROI_MISTAKES, case, got)
        raise _explain(fn, case, names, _fmt(expected), _fmt(got), detail, hint)

    return _run(fn, "roi_pool", _full_cases() if full else _roi_cases(), check_one)
