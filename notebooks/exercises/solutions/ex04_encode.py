"""Solution to exercise 4: box regression targets, equation 2 of the paper."""
import torch


def my_encode(boxes, anchors):
    """Targets (tx, ty, tw, th) of each box relative to its anchor: (N, 4), (N, 4) -> (N, 4).

    tx = (x - xa) / wa,  ty = (y - ya) / ha,  tw = log(w / wa),  th = log(h / ha)
    with (x, y) the centre and (w, h) the size of a box.
    """
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    x = boxes[:, 0] + w / 2
    y = boxes[:, 1] + h / 2
    wa = anchors[:, 2] - anchors[:, 0]
    ha = anchors[:, 3] - anchors[:, 1]
    xa = anchors[:, 0] + wa / 2
    ya = anchors[:, 1] + ha / 2
    tx = (x - xa) / wa
    ty = (y - ya) / ha
    tw = torch.log(w / wa)
    th = torch.log(h / ha)
    return torch.stack([tx, ty, tw, th], dim=1)
