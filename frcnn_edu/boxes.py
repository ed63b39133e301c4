"""Box geometry: area, IoU, the eq. 2 box coder, clipping, small-box filter and NMS.

Conventions (the same as torchvision):

* A box is ``(x1, y1, x2, y2)`` in *continuous* pixel coordinates: the image
  covers ``[0, W] x [0, H]`` and a box's width is ``x2 - x1`` (no "+1"; the
  +1-pixel convention of py-faster-rcnn survives only in
  ``anchors.generate_base_anchors_legacy``).
* A set of boxes is a floating tensor of shape ``(N, 4)``; ``N = 0`` is valid
  everywhere and gives empty outputs of the right shape and dtype.
* Image sizes are ``(H, W)``.

Validation. Public functions check shapes, dtypes and devices (cheap, no
device-to-host sync) and, by default, the *values* of the boxes they are given
(finite, ``x2 >= x1``, ``y2 >= y1``). Checking values needs the result on the
host, which on a GPU is a synchronisation, so every function that takes boxes
has a keyword-only ``validate=True``. The model validates its targets once, at
the door, and then passes ``validate=False`` in its hot paths. The checks
themselves are in ``frcnn_edu.checks``, out of the way of the formulas.

NMS has two implementations, chosen with ``impl``: ``"fast"`` calls
torchvision's compiled kernel, ``"reference"`` is the same greedy algorithm in
a few lines of plain PyTorch. The tests prove that both return the same
indices in the same order, ties included.
"""

import math

import torch
import torchvision
from torch import Tensor

from .checks import (
    check_box_tensor,
    check_box_values,
    check_broadcast,
    check_deltas,
    check_deltas_finite,
    check_idxs,
    check_image_size,
    check_min_size,
    check_nms_args,
    check_same_device,
    check_weights,
)
from .checks import check_boxes as check_boxes  # public: frcnn_edu.boxes.check_boxes

# ---------------------------------------------------------------------------
# Area and IoU
# ---------------------------------------------------------------------------


def box_area(boxes: Tensor, *, validate: bool = True) -> Tensor:
    """Area of each box: ``(N, 4) -> (N,)``, ``(x2 - x1) * (y2 - y1)``."""
    check_box_tensor(boxes, "boxes", batched=False)
    if validate:
        check_box_values(boxes, "boxes")
    return _box_area(boxes)


def _box_area(boxes: Tensor) -> Tensor:
    boxes = _upcast(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _upcast(t: Tensor) -> Tensor:
    # Half precision loses too much in products of coordinates; compute areas and
    # IoU in float32 (as torchvision does), keep float32/float64 as they are.
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def box_iou(boxes1: Tensor, boxes2: Tensor, *, validate: bool = True) -> Tensor:
    """Intersection over union of every pair: ``(N, 4), (M, 4) -> (N, M)``, values in [0, 1].

    IoU = area(a & b) / area(a | b). Two zero-area boxes have an empty union;
    their IoU is defined as 0 (not 0/0 = NaN), so degenerate boxes never
    suppress anything in NMS and never match anything.
    """
    check_box_tensor(boxes1, "boxes1", batched=False)
    check_box_tensor(boxes2, "boxes2", batched=False)
    check_same_device(boxes1=boxes1, boxes2=boxes2)
    if validate:
        check_box_values(boxes1, "boxes1")
        check_box_values(boxes2, "boxes2")
    return _box_iou(boxes1, boxes2)


def _box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """box_iou without the checks (the NMS loop calls it once per kept box)."""
    area1 = _box_area(boxes1)
    area2 = _box_area(boxes2)
    # Intersection rectangle of each pair: the larger top-left corner and the
    # smaller bottom-right corner; a negative side means no overlap.
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = _upcast(bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    union = area1[:, None] + area2[None, :] - inter
    # union == 0 only when both boxes have zero area, and then inter == 0 too:
    # dividing by 1 instead gives IoU 0 without a NaN (in values or gradients).
    union = torch.where(union > 0, union, torch.ones_like(union))
    return inter / union


# ---------------------------------------------------------------------------
# The box coder: eq. 2
# ---------------------------------------------------------------------------

# Largest dw, dh that decode() feeds to exp(): a box at most 1000/16 = 62.5
# times wider or taller than its anchor. Early in training the regressor can
# predict wild deltas, and exp() of them would overflow to inf (then NaN in the
# loss). This package clamps at BBOX_XFORM_CLIP = log(1000 / 16), the value
# torchvision (and Detectron) use. The authors' released code, py-faster-rcnn
# (https://github.com/rbgirshick/py-faster-rcnn, bbox_transform_inv), does not
# clamp: it applies exp() to dw and dh as they are.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def _centre_size(boxes: Tensor):
    """(..., 4) corners -> centre x, centre y, width, height, each (...)."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode(boxes: Tensor, anchors: Tensor, weights=(1.0, 1.0, 1.0, 1.0), *, validate: bool = True) -> Tensor:
    """Regression targets of ``boxes`` relative to ``anchors`` (Sec. 3.1.2, eq. 2).

    ``(..., 4), (..., 4) -> (..., 4)`` (the leading dimensions broadcast)::

        tx = wx * (x - xa) / wa      ty = wy * (y - ya) / ha
        tw = ww * log(w / wa)        th = wh * log(h / ha)

    where ``(x, y)`` is a box centre, ``(w, h)`` its size (``w = x2 - x1``,
    ``x = x1 + w / 2``) and ``a`` marks the anchor. The paper's eq. 2 is the case
    ``weights = (1, 1, 1, 1)`` (the RPN); Fast R-CNN's detector head uses
    ``(10, 10, 5, 5)``, i.e. targets divided by the std (0.1, 0.1, 0.2, 0.2).
    Offsets are relative to the anchor size and sizes are in log space, so the
    targets do not depend on the scale of the object.

    Widths and heights must be positive (``log(0) = -inf``); with
    ``validate=True`` zero-size boxes or anchors raise ``ValueError``.
    """
    check_box_tensor(boxes, "boxes", batched=True)
    check_box_tensor(anchors, "anchors", batched=True)
    check_same_device(boxes=boxes, anchors=anchors)
    check_broadcast(boxes, "boxes", anchors, "anchors")
    wx, wy, ww, wh = check_weights(weights)
    if validate:
        check_box_values(boxes, "boxes", positive_size=True)
        check_box_values(anchors, "anchors", positive_size=True)
    x, y, w, h = _centre_size(boxes)
    xa, ya, wa, ha = _centre_size(anchors)
    tx = wx * (x - xa) / wa
    ty = wy * (y - ya) / ha
    tw = ww * torch.log(w / wa)
    th = wh * torch.log(h / ha)
    return torch.stack((tx, ty, tw, th), dim=-1)


def decode(deltas: Tensor, anchors: Tensor, weights=(1.0, 1.0, 1.0, 1.0), *, validate: bool = True) -> Tensor:
    """Apply regression ``deltas`` to ``anchors``: the inverse of ``encode`` (eq. 2).

    ``(..., 4), (..., 4) -> (..., 4)`` with broadcasting; e.g. per-class deltas
    ``(N, C, 4)`` with boxes ``(N, 1, 4)`` give ``(N, C, 4)``. The deltas are
    divided by ``weights`` first; ``dw`` and ``dh`` are clamped at
    ``BBOX_XFORM_CLIP = log(1000 / 16)`` before ``exp`` so that wild
    predictions early in training cannot overflow to ``inf`` (torchvision
    clamps at the same value; py-faster-rcnn's ``bbox_transform_inv`` does not
    clamp).
    """
    check_deltas(deltas)
    check_box_tensor(anchors, "anchors", batched=True)
    check_same_device(deltas=deltas, anchors=anchors)
    check_broadcast(deltas, "deltas", anchors, "anchors")
    wx, wy, ww, wh = check_weights(weights)
    if validate:
        check_box_values(anchors, "anchors")
        check_deltas_finite(deltas)
    xa, ya, wa, ha = _centre_size(anchors)
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = (deltas[..., 2] / ww).clamp(max=BBOX_XFORM_CLIP)
    dh = (deltas[..., 3] / wh).clamp(max=BBOX_XFORM_CLIP)
    x = dx * wa + xa
    y = dy * ha + ya
    w = torch.exp(dw) * wa
    h = torch.exp(dh) * ha
    return torch.stack((x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h), dim=-1)


# ---------------------------------------------------------------------------
# Clipping and filtering
# ---------------------------------------------------------------------------


def clip_boxes(boxes: Tensor, image_size, *, validate: bool = True) -> Tensor:
    """Clamp boxes to the image: x to ``[0, W]``, y to ``[0, H]``. ``(..., 4) -> (..., 4)``.

    ``image_size`` is ``(H, W)``. At test time proposals that cross the image
    boundary are clipped rather than dropped (Sec. 3.3).
    """
    check_box_tensor(boxes, "boxes", batched=True)
    height, width = check_image_size(image_size)
    if validate:
        check_box_values(boxes, "boxes")
    x = boxes[..., 0::2].clamp(min=0, max=width)  # (..., 2): x1, x2
    y = boxes[..., 1::2].clamp(min=0, max=height)  # (..., 2): y1, y2
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def remove_small_boxes(boxes: Tensor, min_size: float, *, validate: bool = True) -> Tensor:
    """Indices ``(K,)`` int64 of the boxes whose width and height are both ``>= min_size``.

    py-faster-rcnn drops proposals smaller than 16 px at the original image scale.
    """
    check_box_tensor(boxes, "boxes", batched=False)
    min_size = check_min_size(min_size)
    if validate:
        check_box_values(boxes, "boxes")
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return torch.where((w >= min_size) & (h >= min_size))[0]


# ---------------------------------------------------------------------------
# Non-maximum suppression
# ---------------------------------------------------------------------------


def _nms_reference(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS in plain PyTorch, the same algorithm as torchvision's kernel.

    Visit the boxes from the highest score down; keep a box unless a box kept
    before it overlaps it with IoU > iou_threshold.
    """
    # Stable sort: among equal scores the lower index comes first (and wins),
    # exactly as in torchvision's CPU kernel.
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = boxes[order]  # best first
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(boxes.shape[0]):
        if suppressed[i]:  # a better box kept earlier overlaps this one too much
            continue
        keep.append(i)
        # One row of the IoU matrix: the kept box against all boxes. Computing
        # rows on demand keeps memory O(N) (a full 12,000^2 matrix is 0.6 GB).
        iou = _box_iou(boxes[i : i + 1], boxes)[0]
        # Compare in float64: torchvision's kernel compares its float IoU with a
        # C++ double threshold (0.3 rounded to float32 would be a different cut).
        suppressed |= iou.double() > iou_threshold
    return order[torch.tensor(keep, dtype=torch.int64, device=boxes.device)]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, impl: str = "fast", *, validate: bool = True) -> Tensor:
    """Non-maximum suppression: indices ``(K,)`` int64 of the boxes kept, by decreasing score.

    ``boxes`` ``(N, 4)``, ``scores`` ``(N,)``. A box is suppressed when a
    higher-scoring kept box overlaps it with IoU strictly greater than
    ``iou_threshold``. Equal scores are visited in index order (lower index
    first). The RPN's proposals use 0.7 (Sec. 3.3); the detector's per-class
    NMS at test time uses 0.3.

    ``impl="fast"`` uses ``torchvision.ops.nms``; ``impl="reference"`` runs the
    readable loop in ``_nms_reference`` and returns the same result.
    """
    threshold = check_nms_args(boxes, scores, iou_threshold, impl, validate)
    if boxes.dtype not in (torch.float32, torch.float64):
        # torchvision's kernel has no half-precision version; both impls use float32.
        boxes, scores = boxes.float(), scores.float()
    if impl == "fast":
        return torchvision.ops.nms(boxes, scores, threshold)
    return _nms_reference(boxes, scores, threshold)


def _sort_by_score(keep: Tensor, scores: Tensor) -> Tensor:
    """Order kept indices by decreasing score, equal scores by increasing index."""
    keep = keep.sort().values
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, impl: str = "fast",
                *, validate: bool = True) -> Tensor:
    """NMS independently within each category: boxes with different ``idxs`` never suppress each other.

    ``boxes`` ``(N, 4)``, ``scores`` ``(N,)``, ``idxs`` ``(N,)`` integer category
    of each box. Returns indices ``(K,)`` int64 sorted by decreasing score
    (equal scores by increasing index).

    ``impl="reference"`` loops over the categories and runs NMS on each;
    ``impl="fast"`` calls ``torchvision.ops.batched_nms``, which for small
    inputs instead shifts each category's boxes by ``idx * (max coordinate + 1)``
    so that they cannot overlap and runs one NMS. The shift rounds float32
    coordinates slightly, so the two can disagree on a pair whose IoU is within
    about 1e-5 of the threshold; otherwise they return the same indices.
    """
    threshold = check_nms_args(boxes, scores, iou_threshold, impl, validate)
    check_idxs(idxs, boxes, scores)
    if boxes.dtype not in (torch.float32, torch.float64):
        boxes, scores = boxes.float(), scores.float()
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    if impl == "fast":
        keep = torchvision.ops.batched_nms(boxes, scores, idxs, threshold)
        # For large inputs torchvision concatenates per-class results and sorts
        # them with an unstable sort; re-sort so that ties come out in index order.
        return _sort_by_score(keep, scores)
    keep = []
    for category in torch.unique(idxs):
        members = torch.where(idxs == category)[0]
        keep.append(members[_nms_reference(boxes[members], scores[members], threshold)])
    return _sort_by_score(torch.cat(keep), scores)
