"""Solution to exercise 5: which anchors are positive, negative or ignored (Sec. 3.1.2)."""
import torch

import frcnn_edu as fe


def my_assign(anchors, gt_boxes, image_size, pos_iou=0.7, neg_iou=0.3):
    """Labels (A,) int64: 1 positive, 0 negative, -1 ignored. anchors (A, 4), gt_boxes (G, 4)."""
    height, width = image_size
    labels = torch.full((len(anchors),), -1, dtype=torch.int64)

    # Rule 0: anchors that cross the image boundary are ignored (Sec. 3.3).
    inside = ((anchors[:, 0] >= 0) & (anchors[:, 1] >= 0)
              & (anchors[:, 2] <= width) & (anchors[:, 3] <= height))
    if len(gt_boxes) == 0:
        labels[inside] = 0          # nothing to find: every inside anchor is background
        return labels

    iou = fe.boxes.box_iou(anchors, gt_boxes)        # (A, G); or your my_iou
    iou[~inside] = -1                                # outside anchors can never win

    # Negative: IoU < neg_iou with every ground-truth box.
    best_iou_per_anchor = iou.max(dim=1).values      # (A,)
    labels[inside & (best_iou_per_anchor < neg_iou)] = 0
    # Positive (ii): IoU > pos_iou with some box.
    labels[best_iou_per_anchor > pos_iou] = 1
    # Positive (i): for each box, the anchor(s) with the highest IoU, ties included; skipped when
    # no inside anchor touches the box at all (best IoU 0).
    best_iou_per_box = iou.max(dim=0).values         # (G,)
    for g in range(len(gt_boxes)):
        if best_iou_per_box[g] > 0:
            labels[iou[:, g] == best_iou_per_box[g]] = 1
    return labels
