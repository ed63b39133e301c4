"""Solution to exercise 1: intersection over union (IoU) of every pair of boxes.

Boxes are (x1, y1, x2, y2) in continuous pixel coordinates: width = x2 - x1 (no "+1").
"""
import torch


def my_iou(boxes1, boxes2):
    """IoU of every pair: boxes1 (N, 4), boxes2 (M, 4) -> (N, M)."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])   # (N,)
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])   # (M,)

    # The intersection of boxes i and j is the rectangle between the larger top-left corner and
    # the smaller bottom-right corner. [:, None] and [None, :] make every (i, j) pair: (N, M, 2).
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    # Boxes that do not overlap give a negative width or height: that is no overlap, so 0.
    wh = (bottom_right - top_left).clamp(min=0)
    intersection = wh[..., 0] * wh[..., 1]                                   # (N, M)

    union = area1[:, None] + area2[None, :] - intersection                   # (N, M)
    # Two zero-area boxes have union 0; call their IoU 0 instead of 0 / 0 = NaN.
    union = torch.where(union > 0, union, torch.ones_like(union))
    return intersection / union
