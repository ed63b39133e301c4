"""check_anchors(fn): fn(sizes, ratios) -> (len(ratios) * len(sizes), 4), against
fe.anchors.generate_base_anchors.

Planted mistakes: width and height swapped, sizes in the outer loop, boxes not centred on
(0, 0), an area that is not s^2.

The answer (what a solution may not call): fe.anchors.generate_base_anchors."""
from __future__ import annotations

from collections.abc import Callable

import torch

from .. import anchors as anchor_ops
from ._checking import (
    Case,
    CheckResult,
    _as_tensor,
    _call,
    _check_shape,
    _diagnose,
    _explain,
    _first_mismatch,
    _fmt,
    _run,
    _Watch,
)


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


_ANCHOR_ANSWER = ("frcnn_edu.anchors.generate_base_anchors",)


def check_anchors(fn: Callable, *, raise_on_failure: bool = False) -> CheckResult:
    """Check fn(sizes, ratios) -> (len(ratios) * len(sizes), 4) against generate_base_anchors.

    raise_on_failure=True is grading mode: silent on success, AssertionError on failure, and a
    function that calls generate_base_anchors fails.
    """
    names = ("sizes", "ratios")
    watch = _Watch(fn, _ANCHOR_ANSWER)

    def check_one(case: Case):
        sizes, ratios = case.args
        expected = anchor_ops.generate_base_anchors(sizes, ratios)
        got = _as_tensor(_call(fn, case, names, watch), "a (k, 4) tensor of anchors").float()
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

    return _run(fn, "anchors", _anchor_cases(), check_one, watch, raise_on_failure)
