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

One module per checker, each with its cases and its planted mistakes: iou, nms, anchors, encode,
assign, roi_pool; _checking holds what they share (Case, running the cases, explaining a failure).
"""
from .anchors import check_anchors
from .assign import check_assign
from .encode import check_encode
from .iou import check_iou
from .nms import check_nms
from .roi_pool import check_roi_pool

__all__ = ["check_iou", "check_nms", "check_anchors", "check_encode", "check_assign", "check_roi_pool"]
