"""Solution to exercise 2: greedy non-maximum suppression (NMS)."""
import torch

import frcnn_edu as fe


def my_nms(boxes, scores, iou_threshold):
    """Indices of the boxes kept, by decreasing score: boxes (N, 4), scores (N,) -> (K,) int64.

    Visit the boxes from the highest score down; keep a box unless a box kept before it overlaps
    it with IoU > iou_threshold (strictly greater).
    """
    # A stable sort: among equal scores the lower index comes first.
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = fe.boxes.box_iou(boxes, boxes)          # (N, N); or your my_iou from exercise 1
    keep = []
    for i in order.tolist():
        # Only boxes we KEPT can suppress box i.
        if all(iou[i, k] <= iou_threshold for k in keep):
            keep.append(i)
    return torch.tensor(keep, dtype=torch.int64)
