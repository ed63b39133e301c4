"""Checkers for the exercise notebooks (notebooks/exercises/): is the learner's function right?

Each checker calls the learner's function on hand-picked and random inputs, compares the answer
with the package's own implementation (the "reference") and returns a CheckResult: `.passed`,
`.message` (the explanation) and a one-line verdict, which is what the notebook cell shows
("✓ check_iou: all 10 checks pass"); bool(result) is `.passed`. Two modes:

  - learning mode (the default): prints the explanation and returns the result. On success a
    short message; on the FIRST wrong answer which input it was, the expected and the received
    output, and a hint. It never raises, so a notebook with an unsolved exercise still runs from
    top to bottom.
  - grading mode, `raise_on_failure=True` (for nbgrader and otter tests): prints nothing on
    success and raises AssertionError(explanation) on failure, so a bare call is a test:
    `fe.exercises.check_iou(my_iou, raise_on_failure=True)`.

While the learner's function runs, the package functions that ARE the answer (fe.boxes.box_iou
for check_iou, nms for check_nms, ...; wherever frcnn_edu, torchvision or the learner's module
holds them) are replaced by wrappers that note the call (unittest.mock.patch) and call through.
A function that calls them fails in grading mode ("your function calls frcnn_edu.boxes.box_iou,
the function this exercise asks you to write"); in learning mode it only gets a note. Helpers an
exercise allows (box_iou in the NMS and assignment exercises) stay allowed.

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

One module per checker, each with its cases, its planted mistakes and the functions that are its
answer: iou, nms, anchors, encode, assign, roi_pool; _checking holds what they share (Case,
running the cases, explaining a failure, watching for the answer, CheckResult).
"""
from ._checking import CheckResult
from .anchors import check_anchors
from .assign import check_assign
from .encode import check_encode
from .iou import check_iou
from .nms import check_nms
from .roi_pool import check_roi_pool

__all__ = ["CheckResult", "check_iou", "check_nms", "check_anchors", "check_encode", "check_assign", "check_roi_pool"]
