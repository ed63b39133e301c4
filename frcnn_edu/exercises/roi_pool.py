"""check_roi_pool(fn, full=False): RoI max pooling ([F] Sec. 2.1) of one RoI, or with full=True the
whole operation, against fe.roi.roi_pool.

Planted mistakes: rounding half to even (torch.round), equal integer bins, the end cell
left out.

The answer (what a solution may not call): fe.roi.roi_pool with its bins and kernels, and
torchvision's roi_pool (fe.roi.RoIPool and torchvision.ops.RoIPool call them too)."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .. import roi as roi_ops
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


_ROI_POOL_ANSWER = ("frcnn_edu.roi.roi_pool", "frcnn_edu.roi._roi_pool_reference", "frcnn_edu.roi.roi_pool_bins",
                    "frcnn_edu.parallel.roi_pool_threaded", "torchvision.ops.roi_pool")


def check_roi_pool(fn: Callable, full: bool = False, *, raise_on_failure: bool = False) -> CheckResult:
    """Check a RoI max pooling function against fe.roi.roi_pool.

    full=False: fn(features (C, H, W), roi (4,) = (x1, y1, x2, y2) in image pixels,
                   output_size (h, w), spatial_scale) -> (C, h, w)   -- one RoI;
    full=True:  fn(features (N, C, H, W), rois (K, 5), output_size (h, w), spatial_scale)
                   -> (K, C, h, w)   -- the whole operation.
    raise_on_failure=True is grading mode: silent on success, AssertionError on failure, and a
    function that calls roi_pool (or roi_pool_bins) fails.
    """
    names = ("features", "rois" if full else "roi", "output_size", "spatial_scale")
    watch = _Watch(fn, _ROI_POOL_ANSWER)

    def check_one(case: Case):
        features, roi, size, scale = case.args
        if full:
            expected = roi_ops.roi_pool(features, roi, size, scale)
        else:
            expected = _reference_single(features, roi, size, scale)
        got = _as_tensor(_call(fn, case, names, watch), "a tensor of pooled features")
        _check_shape(fn, case, names, got, expected, "pooled features")
        where = _first_mismatch(got, expected, atol=1e-6, rtol=1e-6)
        if where is None:
            return
        detail = _explain_bin(case, where, expected, got, full)
        hint = "" if full else _diagnose(_ROI_MISTAKES, case, got)
        raise _explain(fn, case, names, _fmt(expected), _fmt(got), detail, hint)

    return _run(fn, "roi_pool", _full_cases() if full else _roi_cases(), check_one, watch, raise_on_failure)
