"""The exercise checkers (frcnn_edu.exercises): they pass the package's reference and the shipped
solutions, and fail planted mistakes with a message that names the input, shows expected vs got
and gives a hint. They return a CheckResult; in learning mode (the default) they print and never
raise, in grading mode (raise_on_failure=True) they are silent on success, raise
AssertionError(explanation) on failure, and fail a function that calls the package's answer."""
import functools
import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch
import torchvision

import frcnn_edu as fe
from frcnn_edu import exercises as ex
from frcnn_edu.boxes import box_iou as imported_box_iou  # as a learner's notebook might import it

SOLUTIONS = Path(__file__).resolve().parent.parent / "notebooks" / "exercises" / "solutions"


@functools.cache
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


def _reference_roi_pool_full(features, rois, output_size, spatial_scale):
    return fe.roi.roi_pool(features, rois, output_size, spatial_scale, impl="reference")


CHECKERS = {
    "iou": (ex.check_iou, fe.boxes.box_iou, ("ex01_iou", "my_iou")),
    "nms": (ex.check_nms, lambda b, s, t: fe.boxes.nms(b, s, t, impl="reference"), ("ex02_nms", "my_nms")),
    "anchors": (ex.check_anchors, fe.anchors.generate_base_anchors, ("ex03_anchors", "my_anchors")),
    "encode": (ex.check_encode, fe.boxes.encode, ("ex04_encode", "my_encode")),
    "assign": (ex.check_assign, _reference_assign, ("ex05_assign", "my_assign")),
    "roi_pool": (ex.check_roi_pool, _reference_roi_pool, ("ex06_roi_pool", "my_roi_pool")),
    "roi_pool_full": (functools.partial(ex.check_roi_pool, full=True), _reference_roi_pool_full,
                      ("ex06_roi_pool", "my_roi_pool_batch")),
}
PASSED = re.compile(r"PASSED: (\S+) agrees with the reference on all \d+ checks \(hand-picked edge cases "
                    r"and random inputs\)\. Well done!\n")


@pytest.mark.parametrize("task", sorted(CHECKERS))
def test_checker_passes_the_reference(task, capsys):
    checker, reference, _ = CHECKERS[task]
    assert checker(reference).passed is True
    assert "PASSED" in capsys.readouterr().out


@pytest.mark.parametrize("task", sorted(CHECKERS))
def test_checker_passes_the_solution(task, capsys):
    checker, _, (module, name) = CHECKERS[task]
    result = checker(_solution(module, name))
    assert result.passed is True and result.delegated_to == ()
    out = capsys.readouterr().out
    match = PASSED.fullmatch(out)                       # the message of before, word for word
    assert match and match.group(1) == name, out


def test_full_roi_pool_checker_passes_roi_pool(capsys):
    assert ex.check_roi_pool(lambda f, r, s, sc: fe.roi.roi_pool(f, r, s, sc, impl="reference"), full=True)
    assert ex.check_roi_pool(fe.roi.roi_pool, full=True)
    assert "PASSED" in capsys.readouterr().out


@pytest.mark.parametrize("task", sorted(CHECKERS))
def test_unsolved_stub_says_not_implemented(task, capsys):
    checker = CHECKERS[task][0]

    def my_function(*args):
        raise NotImplementedError  # your code here

    result = checker(my_function)
    assert result.passed is False
    out = capsys.readouterr().out
    assert "my_function is not implemented yet" in out and "NotImplementedError" in out
    assert repr(result).endswith(": my_function is not implemented yet \u2014 see above")


def test_an_exception_is_explained_with_its_line_and_input(capsys):
    def my_iou(boxes1, boxes2):
        return boxes1 @ boxes2           # (N, 4) @ (M, 4): shapes do not match

    assert ex.check_iou(my_iou).passed is False
    out = capsys.readouterr().out
    assert "my_iou raised RuntimeError" in out
    assert "return boxes1 @ boxes2" in out                                 # the learner's line
    assert "two partly overlapping boxes" in out and "boxes1 = [[ 0.,  0., 10., 10.]]" in out


def test_a_non_function_is_explained(capsys):
    assert ex.check_nms(None).passed is False
    assert "needs a function" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Planted mistakes: each fails with the input named, expected vs got, and a specific hint
# ----------------------------------------------------------------------------------------------
def _failure(checker, fn, capsys, **kwargs) -> str:
    assert checker(fn, **kwargs).passed is False
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
    assert "IoU must lie in [0, 1]" not in out                 # in range: no range hint


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


def nms_greater_equal(boxes, scores, iou_threshold):
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    iou = fe.boxes.box_iou(boxes, boxes)                 # allowed by the exercise
    keep = []
    for i in order:
        if all(iou[i, k] < iou_threshold for k in keep):      # >= suppresses: the bug
            keep.append(i)
    return torch.tensor(keep, dtype=torch.int64)


def test_nms_with_greater_equal(capsys):
    out = _failure(ex.check_nms, nms_greater_equal, capsys)
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

    assert ex.check_nms(my_nms).passed is False
    assert "boolean mask" in capsys.readouterr().out


def anchors_swapped(sizes, ratios):                     # ratio taken as width / height
    rows = []
    for r in ratios:
        for s in sizes:
            w, h = s * math.sqrt(r), s / math.sqrt(r)
            rows.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(rows)


def test_anchors_with_width_and_height_swapped(capsys):
    out = _failure(ex.check_anchors, anchors_swapped, capsys)
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


def encode_without_log(boxes, anchors):
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    wa, ha = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    x, y = boxes[:, 0] + w / 2, boxes[:, 1] + h / 2
    xa, ya = anchors[:, 0] + wa / 2, anchors[:, 1] + ha / 2
    return torch.stack([(x - xa) / wa, (y - ya) / ha, w / wa, h / ha], dim=1)


def test_encode_without_log(capsys):
    out = _failure(ex.check_encode, encode_without_log, capsys)
    assert "box equal to its anchor" in out and "boxes = [[10., 20., 50., 80.]]" in out
    assert "expected: [[0., 0., 0., 0.]]" in out and "got:      [[0., 0., 1., 1.]]" in out
    assert "tw = log(w / wa)" in out and "logarithm" in out


def assign_without_the_highest_iou_rule(anchors, gt_boxes, image_size, pos_iou=0.7, neg_iou=0.3):
    height, width = image_size
    labels = torch.full((len(anchors),), -1, dtype=torch.int64)
    inside = ((anchors[:, 0] >= 0) & (anchors[:, 1] >= 0)
              & (anchors[:, 2] <= width) & (anchors[:, 3] <= height))
    if len(gt_boxes) == 0:
        labels[inside] = 0
        return labels
    best = fe.boxes.box_iou(anchors, gt_boxes).max(dim=1).values     # allowed by the exercise
    labels[inside & (best < neg_iou)] = 0
    labels[inside & (best > pos_iou)] = 1
    return labels


def test_assign_without_the_highest_iou_rule(capsys):
    out = _failure(ex.check_assign, assign_without_the_highest_iou_rule, capsys)
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

    assert ex.check_iou(my_iou).passed is True


# ----------------------------------------------------------------------------------------------
# IoU values outside [0, 1]
# ----------------------------------------------------------------------------------------------
def test_iou_above_one_is_flagged_with_a_hint(capsys):
    def my_iou(boxes1, boxes2):          # torch.min / torch.max swapped: the enclosing box
        top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
        bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
        wh = (bottom_right - top_left).clamp(min=0)
        inter = wh[..., 0] * wh[..., 1]
        area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
        area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
        union = area1[:, None] + area2[None, :] - inter
        return inter / torch.where(union > 0, union, torch.ones_like(union))

    out = _failure(ex.check_iou, my_iou, capsys)
    assert "IoU must lie in [0, 1], but your values go from 225.0000 to 225.0000." in out
    assert "Hint: values above 1 mean the intersection came out larger than the union" in out
    assert "LARGER top-left corner (torch.max)" in out and "values below 0" not in out


def test_iou_below_zero_is_flagged_with_a_hint(capsys):
    solution = _solution("ex01_iou", "my_iou")

    def my_iou(boxes1, boxes2):
        return 2 * solution(boxes1, boxes2) - 1

    out = _failure(ex.check_iou, my_iou, capsys)
    assert "IoU must lie in [0, 1], but your values go from -0.7143 to -0.7143." in out
    assert "Hint: values below 0 mean a negative intersection" in out and ".clamp(min=0)" in out


# ----------------------------------------------------------------------------------------------
# CheckResult: what a checker returns and a notebook cell shows
# ----------------------------------------------------------------------------------------------
def test_a_check_result_is_truthy_and_shows_a_one_line_verdict(capsys):
    passed = ex.check_iou(_solution("ex01_iou", "my_iou"))
    failed = ex.check_iou(iou_plus_one)
    out = capsys.readouterr().out
    assert isinstance(passed, ex.CheckResult) and passed and not failed
    assert (passed.passed, failed.passed) == (True, False)
    assert out == passed.message + "\n" + failed.message + "\n"        # message: what was printed
    assert repr(passed) == "\u2713 check_iou: all 10 checks pass"
    assert repr(failed) == ('\u2717 check_iou: check 1 of 10 ("two partly overlapping boxes") differs '
                            '\u2014 see above')
    assert "&quot;two partly overlapping boxes&quot;" in failed._repr_html_()
    assert "\u2713 check_iou: all 10 checks pass" in passed._repr_html_()
    assert ex.check_iou(_solution("ex01_iou", "my_iou"))             # `assert check(fn)` still works


# ----------------------------------------------------------------------------------------------
# Grading mode (raise_on_failure=True) and functions that only call the package's answer
# ----------------------------------------------------------------------------------------------
def roi_pool_full_always_image_0(features, rois, output_size, spatial_scale):
    """The batch solution, but every RoI pooled from image 0: ignores column 0."""
    my_roi_pool = _solution("ex06_roi_pool", "my_roi_pool")
    return torch.stack([my_roi_pool(features[0], roi[1:], output_size, spatial_scale) for roi in rois]
                       ) if len(rois) else torch.zeros(0, features.shape[1], *output_size)


WRONG = {                        # wrong answers that do not call the answer
    "iou": iou_plus_one,
    "nms": nms_greater_equal,
    "anchors": anchors_swapped,
    "encode": encode_without_log,
    "assign": assign_without_the_highest_iou_rule,
    "roi_pool": roi_pool_torch_round,
    "roi_pool_full": roi_pool_full_always_image_0,
}
DELEGATING = {                   # right answers that call the function the exercise asks for
    "iou": (lambda a, b: fe.boxes.box_iou(a, b), "frcnn_edu.boxes.box_iou"),
    "nms": (lambda b, s, t: fe.boxes.nms(b, s, t), "frcnn_edu.boxes.nms"),
    "anchors": (lambda s, r: fe.anchors.generate_base_anchors(s, r), "frcnn_edu.anchors.generate_base_anchors"),
    "encode": (lambda b, a: fe.boxes.encode(b, a), "frcnn_edu.boxes.encode"),
    "assign": (_reference_assign, "frcnn_edu.rpn.assign_anchor_targets"),
    "roi_pool": (_reference_roi_pool, "frcnn_edu.roi.roi_pool"),
    "roi_pool_full": (lambda f, r, s, sc: torchvision.ops.roi_pool(f, r, s, sc), "torchvision.ops.roi_pool"),
}


@pytest.mark.parametrize("task", sorted(CHECKERS))
def test_grading_mode_passes_the_solution_silently(task, capsys):
    checker, _, (module, name) = CHECKERS[task]
    result = checker(_solution(module, name), raise_on_failure=True)
    assert result.passed and result.delegated_to == ()
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("task", sorted(CHECKERS))
def test_grading_mode_raises_the_learning_mode_explanation(task, capsys):
    checker = CHECKERS[task][0]
    learning = checker(WRONG[task])
    printed = capsys.readouterr().out
    assert not learning and printed.startswith("FAILED") and "expected:" in printed and "Note:" not in printed
    with pytest.raises(AssertionError) as raised:
        checker(WRONG[task], raise_on_failure=True)
    assert str(raised.value) == learning.message == printed[:-1]
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("task", sorted(CHECKERS))
def test_grading_mode_fails_a_function_that_calls_the_answer(task, capsys):
    checker = CHECKERS[task][0]
    fn, answer = DELEGATING[task]
    with pytest.raises(AssertionError) as raised:
        checker(fn, raise_on_failure=True)
    message = str(raised.value)
    assert message.startswith(f"FAILED: your function calls {answer}, the function this exercise asks "
                              f"you to write (check 1 of "), message
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("task", sorted(CHECKERS))
def test_learning_mode_only_notes_a_function_that_calls_the_answer(task, capsys):
    checker = CHECKERS[task][0]
    fn, answer = DELEGATING[task]
    result = checker(fn)
    out = capsys.readouterr().out
    assert result.passed and result.delegated_to[0] == answer
    assert PASSED.match(out) and out.endswith(
        f"\nNote: your function calls {answer}, the function this exercise asks you to write. That is "
        f"fine while exploring, but in grading mode (raise_on_failure=True) it does not count as a "
        f"solution.\n")
    assert repr(result).endswith(f"checks pass (but your function calls {answer}) \u2014 see above")


def test_a_wrong_answer_that_calls_the_answer_gets_the_explanation_and_the_note(capsys):
    def my_nms(boxes, scores, iou_threshold):
        return fe.boxes.nms(boxes, scores, iou_threshold).sort().values

    result = ex.check_nms(my_nms)
    out = capsys.readouterr().out
    assert out.startswith("FAILED: my_nms is not right yet") and "decreasing score" in out
    assert "Note: your function calls frcnn_edu.boxes.nms" in out and not result
    with pytest.raises(AssertionError, match="your function calls frcnn_edu.boxes.nms"):
        ex.check_nms(my_nms, raise_on_failure=True)


def _box_iou_from_torchvision_boxes(boxes1, boxes2):
    return torchvision.ops.boxes.box_iou(boxes1, boxes2)


def _box_iou_imported_by_name(boxes1, boxes2):
    return imported_box_iou(boxes1, boxes2)              # `from frcnn_edu.boxes import box_iou`


def _box_iou_from_another_module(boxes1, boxes2):
    return fe.evaluate.box_iou(boxes1, boxes2)           # frcnn_edu.evaluate imports it by name


@pytest.mark.parametrize("fn, answer", [
    (_box_iou_imported_by_name, "frcnn_edu.boxes.box_iou"),
    (_box_iou_from_another_module, "frcnn_edu.boxes.box_iou"),
    (_box_iou_from_torchvision_boxes, "torchvision.ops.box_iou"),
    (fe.boxes.box_iou, "frcnn_edu.boxes.box_iou"),                       # the answer itself
], ids=["imported-by-name", "another-module", "torchvision-submodule", "the-answer-itself"])
def test_calling_the_answer_is_noticed_under_any_name(fn, answer):
    with pytest.raises(AssertionError, match=re.escape(f"your function calls {answer},")):
        ex.check_iou(fn, raise_on_failure=True)


def test_the_answer_itself_is_noticed_without_any_inner_call():
    with pytest.raises(AssertionError, match="calls frcnn_edu.anchors.generate_base_anchors,"):
        ex.check_anchors(fe.anchors.generate_base_anchors, raise_on_failure=True)
    with pytest.raises(AssertionError, match="calls frcnn_edu.boxes.nms,"):
        ex.check_nms(functools.partial(fe.boxes.nms, impl="reference"), raise_on_failure=True)


def test_the_package_functions_are_restored_after_a_check(capsys):
    before = (fe.boxes.box_iou, fe.evaluate.box_iou, torchvision.ops.box_iou, torchvision.ops.boxes.box_iou,
              imported_box_iou, fe.boxes._box_iou)
    ex.check_iou(_box_iou_imported_by_name)
    with pytest.raises(AssertionError):
        ex.check_iou(_box_iou_imported_by_name, raise_on_failure=True)
    after = (fe.boxes.box_iou, fe.evaluate.box_iou, torchvision.ops.box_iou, torchvision.ops.boxes.box_iou,
             imported_box_iou, fe.boxes._box_iou)
    assert all(a is b for a, b in zip(before, after))
    assert fe.boxes.box_iou.__module__ == "frcnn_edu.boxes" and not hasattr(fe.boxes.box_iou, "__wrapped__")


def test_grading_mode_raises_for_an_unsolved_stub_and_a_non_function(capsys):
    def my_iou(boxes1, boxes2):
        raise NotImplementedError  # your code here

    with pytest.raises(AssertionError, match="my_iou is not implemented yet"):
        ex.check_iou(my_iou, raise_on_failure=True)
    with pytest.raises(AssertionError, match="check_nms needs a function"):
        ex.check_nms(None, raise_on_failure=True)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("checker, fn, answer", [
    (functools.partial(ex.check_roi_pool, full=True), lambda f, r, s, sc: fe.roi.RoIPool(s, sc)(f, r),
     "frcnn_edu.roi.roi_pool"),
    (functools.partial(ex.check_roi_pool, full=True), lambda f, r, s, sc: torchvision.ops.RoIPool(s, sc)(f, r),
     "torchvision.ops.roi_pool"),
    (ex.check_nms, lambda b, s, t: fe.boxes.batched_nms(b, s, torch.zeros(len(b), dtype=torch.int64), t),
     "frcnn_edu.boxes.batched_nms"),
    (ex.check_anchors, lambda s, r: fe.anchors.AnchorGenerator(s, r, 16)((1, 1)),
     "frcnn_edu.anchors.generate_base_anchors"),
], ids=["fe-RoIPool-layer", "torchvision-RoIPool-layer", "batched_nms", "AnchorGenerator"])
def test_a_layer_or_wrapper_around_the_answer_is_noticed(checker, fn, answer):
    with pytest.raises(AssertionError, match=re.escape(f"your function calls {answer},")):
        checker(fn, raise_on_failure=True)
