"""The exercise checkers (frcnn_edu.exercises): they pass the package's reference and the shipped
solutions, and fail planted mistakes with a message that names the input, shows expected vs got
and gives a hint. They never raise."""
import importlib.util
import math
from pathlib import Path

import pytest
import torch

import frcnn_edu as fe
from frcnn_edu import exercises as ex

SOLUTIONS = Path(__file__).resolve().parent.parent / "notebooks" / "exercises" / "solutions"


def _solution(module: str, name: str):
    spec = importlib.util.spec_from_file_location(module, SOLUTIONS / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, name)


def _reference_roi_pool(features, roi, output_size, spatial_scale):
    rois = torch.cat([torch.zeros(1), roi]).reshape(1, 5)
    return fe.roi.roi_pool(features[None], rois, output_size, spatial_scale, impl="reference")[0]


def _reference_assign(anchors, gt_boxes, image_size, pos_iou=0.7, neg_iou=0.3):
    return fe.rpn.assign_anchor_targets(anchors, gt_boxes, image_size, pos_iou=pos_iou,
                                        neg_iou=neg_iou, sample=False)[0]


CHECKERS = {
    "iou": (ex.check_iou, fe.boxes.box_iou, ("ex01_iou", "my_iou")),
    "nms": (ex.check_nms, lambda b, s, t: fe.boxes.nms(b, s, t, impl="reference"), ("ex02_nms", "my_nms")),
    "anchors": (ex.check_anchors, fe.anchors.generate_base_anchors, ("ex03_anchors", "my_anchors")),
    "encode": (ex.check_encode, fe.boxes.encode, ("ex04_encode", "my_encode")),
    "assign": (ex.check_assign, _reference_assign, ("ex05_assign", "my_assign")),
    "roi_pool": (ex.check_roi_pool, _reference_roi_pool, ("ex06_roi_pool", "my_roi_pool")),
}


@pytest.mark.parametrize("task", sorted(CHECKERS))
def test_checker_passes_the_reference(task, capsys):
    checker, reference, _ = CHECKERS[task]
    assert checker(reference) is True
    assert "PASSED" in capsys.readouterr().out


@pytest.mark.parametrize("task", sorted(CHECKERS))
def test_checker_passes_the_solution(task, capsys):
    checker, _, (module, name) = CHECKERS[task]
    assert checker(_solution(module, name)) is True
    out = capsys.readouterr().out
    assert out.startswith("PASSED") and name in out


def test_full_roi_pool_checker_passes_roi_pool(capsys):
    assert ex.check_roi_pool(lambda f, r, s, sc: fe.roi.roi_pool(f, r, s, sc, impl="reference"), full=True)
    assert ex.check_roi_pool(fe.roi.roi_pool, full=True)
    assert "PASSED" in capsys.readouterr().out


@pytest.mark.parametrize("task", sorted(CHECKERS))
def test_unsolved_stub_says_not_implemented(task, capsys):
    checker = CHECKERS[task][0]

    def my_function(*args):
        raise NotImplementedError  # your code here

    assert checker(my_function) is False
    out = capsys.readouterr().out
    assert "my_function is not implemented yet" in out and "NotImplementedError" in out


def test_an_exception_is_explained_with_its_line_and_input(capsys):
    def my_iou(boxes1, boxes2):
        return boxes1 @ boxes2           # (N, 4) @ (M, 4): shapes do not match

    assert ex.check_iou(my_iou) is False
    out = capsys.readouterr().out
    assert "my_iou raised RuntimeError" in out
    assert "return boxes1 @ boxes2" in out                                 # the learner's line
    assert "two partly overlapping boxes" in out and "boxes1 = [[ 0.,  0., 10., 10.]]" in out


def test_a_non_function_is_explained(capsys):
    assert ex.check_nms(None) is False
    assert "needs a function" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Planted mistakes: each fails with the input named, expected vs got, and a specific hint
# ----------------------------------------------------------------------------------------------
def _failure(checker, fn, capsys, **kwargs) -> str:
    assert checker(fn, **kwargs) is False
    out = capsys.readouterr().out
    assert out.startswith("FAILED") and "expected:" in out and "got:" in out and "Input \"" in out
    return out


def iou_plus_one(boxes1, boxes2):
    area1 = (boxes1[:, 2] - boxes1[:, 0] + 1) * (boxes1[:, 3] - boxes1[:, 1] + 1)
    area2 = (boxes2[:, 2] - boxes2[:, 0] + 1) * (boxes2[:, 3] - boxes2[:, 1] + 1)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def test_iou_with_plus_one_pixels(capsys):
    out = _failure(ex.check_iou, iou_plus_one, capsys)
    assert "two partly overlapping boxes" in out
    assert "boxes1 = [[ 0.,  0., 10., 10.]]" in out and "boxes2 = [[ 5.,  5., 15., 15.]]" in out
    assert "expected: [[0.1429]]" in out and "got:      [[0.1748]]" in out
    assert "add 1 to widths" in out


def test_iou_without_the_nan_guard(capsys):
    def my_iou(boxes1, boxes2):
        lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
        rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
        wh = (rb - lt).clamp(min=0)
        inter = wh[..., 0] * wh[..., 1]
        a1 = fe.boxes.box_area(boxes1)
        a2 = fe.boxes.box_area(boxes2)
        return inter / (a1[:, None] + a2[None, :] - inter)

    out = _failure(ex.check_iou, my_iou, capsys)
    assert "zero-area boxes" in out and "nan" in out and "0 / 0" in out


def test_nms_with_greater_equal(capsys):
    def my_nms(boxes, scores, iou_threshold):
        order = torch.argsort(scores, descending=True, stable=True).tolist()
        iou = fe.boxes.box_iou(boxes, boxes)
        keep = []
        for i in order:
            if all(iou[i, k] < iou_threshold for k in keep):      # >= suppresses: the bug
                keep.append(i)
        return torch.tensor(keep, dtype=torch.int64)

    out = _failure(ex.check_nms, my_nms, capsys)
    assert "IoU exactly equal to the threshold" in out
    assert "expected: [0, 1]" in out and "got:      [0]" in out
    assert "iou_threshold = 0.5" in out and "0.500, not > 0.5" in out
    assert "strictly greater" in out


def test_nms_returning_indices_in_index_order(capsys):
    def my_nms(boxes, scores, iou_threshold):
        return fe.boxes.nms(boxes, scores, iou_threshold).sort().values

    out = _failure(ex.check_nms, my_nms, capsys)
    assert "scores not in sorted order" in out
    assert "expected: [2, 1]" in out and "got:      [1, 2]" in out
    assert "decreasing score" in out


def test_nms_returning_a_mask(capsys):
    def my_nms(boxes, scores, iou_threshold):
        keep = torch.zeros(len(boxes), dtype=torch.bool)
        keep[fe.boxes.nms(boxes, scores, iou_threshold)] = True
        return keep

    assert ex.check_nms(my_nms) is False
    assert "boolean mask" in capsys.readouterr().out


def test_anchors_with_width_and_height_swapped(capsys):
    def my_anchors(sizes, ratios):                      # ratio taken as width / height
        rows = []
        for r in ratios:
            for s in sizes:
                w, h = s * math.sqrt(r), s / math.sqrt(r)
                rows.append([-w / 2, -h / 2, w / 2, h / 2])
        return torch.tensor(rows)

    out = _failure(ex.check_anchors, my_anchors, capsys)
    assert "one size, ratio 2" in out and "sizes = (128,)" in out and "ratios = (2.0,)" in out
    assert "expected: [[-45.2548, -90.5097,  45.2548,  90.5097]]" in out
    assert "got:      [[-90.5097, -45.2548,  90.5097,  45.2548]]" in out
    assert "height / width" in out and "swapped" in out


def test_anchors_in_the_wrong_order(capsys):
    def my_anchors(sizes, ratios):
        base = fe.anchors.generate_base_anchors(sizes, ratios)
        k_s, k_r = len(sizes), len(ratios)
        return base.reshape(k_r, k_s, 4).transpose(0, 1).reshape(-1, 4)   # sizes outer

    out = _failure(ex.check_anchors, my_anchors, capsys)
    assert "the paper's 3 sizes x 3 ratios" in out and "row 1" in out and "OUTER" in out


def test_encode_without_log(capsys):
    def my_encode(boxes, anchors):
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        wa, ha = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        x, y = boxes[:, 0] + w / 2, boxes[:, 1] + h / 2
        xa, ya = anchors[:, 0] + wa / 2, anchors[:, 1] + ha / 2
        return torch.stack([(x - xa) / wa, (y - ya) / ha, w / wa, h / ha], dim=1)

    out = _failure(ex.check_encode, my_encode, capsys)
    assert "box equal to its anchor" in out and "boxes = [[10., 20., 50., 80.]]" in out
    assert "expected: [[0., 0., 0., 0.]]" in out and "got:      [[0., 0., 1., 1.]]" in out
    assert "tw = log(w / wa)" in out and "logarithm" in out


def test_assign_without_the_highest_iou_rule(capsys):
    def my_assign(anchors, gt_boxes, image_size, pos_iou=0.7, neg_iou=0.3):
        height, width = image_size
        labels = torch.full((len(anchors),), -1, dtype=torch.int64)
        inside = ((anchors[:, 0] >= 0) & (anchors[:, 1] >= 0)
                  & (anchors[:, 2] <= width) & (anchors[:, 3] <= height))
        if len(gt_boxes) == 0:
            labels[inside] = 0
            return labels
        best = fe.boxes.box_iou(anchors, gt_boxes).max(dim=1).values
        labels[inside & (best < neg_iou)] = 0
        labels[inside & (best > pos_iou)] = 1
        return labels

    out = _failure(ex.check_assign, my_assign, capsys)
    assert "the best anchor is below pos_iou" in out
    assert "gt_boxes = [[ 0.,  0., 10.,  5.]]" in out
    assert "expected: [1, 0]" in out and "got:      [-1,  0]" in out
    assert "expected label 1, got -1" in out and "highest-IoU anchor of box 0" in out
    assert "highest-IoU rule is missing" in out


def test_assign_keeping_cross_boundary_anchors(capsys):
    def my_assign(anchors, gt_boxes, image_size, pos_iou=0.7, neg_iou=0.3):
        return fe.rpn.assign_anchor_targets(anchors, gt_boxes, image_size, pos_iou=pos_iou, neg_iou=neg_iou,
                                            allowed_border=float("inf"), sample=False)[0]

    out = _failure(ex.check_assign, my_assign, capsys)
    assert "an anchor crossing the image boundary" in out and "image_size = (60, 60)" in out
    assert "expected label -1, got 1" in out and "crosses the image boundary" in out


def roi_pool_torch_round(features, roi, output_size, spatial_scale):
    """The solution, but rounding the RoI with torch.round (half to even)."""
    channels, height, width = features.shape
    x1, y1, x2, y2 = [int(torch.round(v * spatial_scale)) for v in roi]
    roi_w, roi_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    out = torch.zeros(channels, *output_size)
    for i in range(output_size[0]):
        hs = min(max(y1 + math.floor(i * roi_h / output_size[0]), 0), height)
        he = min(max(y1 + math.ceil((i + 1) * roi_h / output_size[0]), 0), height)
        for j in range(output_size[1]):
            ws = min(max(x1 + math.floor(j * roi_w / output_size[1]), 0), width)
            we = min(max(x1 + math.ceil((j + 1) * roi_w / output_size[1]), 0), width)
            if he > hs and we > ws:
                out[:, i, j] = features[:, hs:he, ws:we].amax(dim=(1, 2))
    return out


def test_roi_pool_with_torch_round(capsys):
    out = _failure(ex.check_roi_pool, roi_pool_torch_round, capsys)
    assert "coordinates ending in .5 after scaling" in out
    assert "roi = [ 5.,  1., 13.,  9.]" in out and "spatial_scale = 0.5" in out
    assert "First difference at channel 0, bin (0, 0)" in out
    assert "torch.round" in out and "half AWAY from zero" in out


def test_roi_pool_starting_the_max_at_zero(capsys):
    def my_roi_pool(features, roi, output_size, spatial_scale):
        return _reference_roi_pool(features, roi, output_size, spatial_scale).clamp(min=0)

    out = _failure(ex.check_roi_pool, my_roi_pool, capsys)
    assert "all features negative" in out and "do not start the maximum at 0" in out


def test_full_roi_pool_ignoring_the_batch_index(capsys):
    def my_roi_pool(features, rois, output_size, spatial_scale):
        rois = rois.clone()
        rois[:, 0] = 0
        return fe.roi.roi_pool(features, rois, output_size, spatial_scale)

    out = _failure(ex.check_roi_pool, my_roi_pool, capsys, full=True)
    assert "two images, three RoIs" in out and "RoI 0, channel" in out
    assert "which image of the batch" in out


def test_checkers_do_not_let_the_learner_change_their_inputs(capsys):
    def my_iou(boxes1, boxes2):
        result = fe.boxes.box_iou(boxes1, boxes2)
        boxes1.zero_()                                   # an in-place edit of the input
        return result

    assert ex.check_iou(my_iou) is True
