"""Argument checks shared by boxes, anchors and roi.

They live here, apart from the maths, so that each teaching module opens with its formulas and
reads like the paper; the public functions there call these at their door. Every check raises
``ValueError`` with a message that names the argument, the first offending element and the
shape. Shape, dtype and device checks are cheap; checks that read *values* (finite, x2 >= x1,
batch indices) need the result on the host, which on a GPU is a synchronisation, so the callers
run them only when ``validate=True``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

IMPLS = ("fast", "reference")


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


def check_impl(impl: str) -> None:
    """boxes and anchors: ``impl`` is "fast" or "reference"."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be 'fast' or 'reference', got {impl!r}")


# ---------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------


def require_tensor(x, name: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def check_box_tensor(boxes: Tensor, name: str, batched: bool) -> None:
    """Type and shape of a box tensor: floating, ``(N, 4)`` (or ``(..., 4)`` if batched)."""
    require_tensor(boxes, name)
    wanted = "(..., 4)" if batched else "(N, 4)"
    ok_shape = boxes.shape[-1:] == (4,) if batched else (boxes.dim() == 2 and boxes.shape[1] == 4)
    if not ok_shape:
        raise ValueError(f"{name} must have shape {wanted}, got shape {_shape(boxes)}")
    if not boxes.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {boxes.dtype}; {name} has shape {_shape(boxes)}")


def check_box_values(boxes: Tensor, name: str, positive_size: bool = False) -> None:
    """Values of a ``(..., 4)`` box tensor: finite, x2 >= x1, y2 >= y1 (> if positive_size).

    One host sync when everything is fine; the error path finds the first bad box.
    """
    if boxes.numel() == 0:
        return
    finite = torch.isfinite(boxes).all(dim=-1)
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    if positive_size:
        bad_w, bad_h = ~(w > 0), ~(h > 0)
    else:
        bad_w, bad_h = w < 0, h < 0
    bad = ~finite | bad_w | bad_h
    if not bool(bad.any()):
        return
    first = tuple(bad.nonzero()[0].tolist())
    where = f"{name}[{', '.join(str(i) for i in first)}]"
    if not bool(finite[first]):
        problem = "is not finite"
    elif positive_size and bool(bad_w[first]):
        problem = "has x2 <= x1 (width must be positive here)"
    elif positive_size:
        problem = "has y2 <= y1 (height must be positive here)"
    elif bool(bad_w[first]):
        problem = "has x2 < x1"
    else:
        problem = "has y2 < y1"
    raise ValueError(f"{where} {problem}: {boxes[first]}; {name} has shape {_shape(boxes)}")


def check_boxes(boxes: Tensor, name: str = "boxes") -> None:
    """Raise ``ValueError`` unless ``boxes`` is a valid ``(N, 4)`` box tensor.

    Valid: a floating tensor of shape ``(N, 4)`` (``N`` may be 0), every value
    finite, ``x2 >= x1`` and ``y2 >= y1`` (zero width or height is allowed
    here; ``encode`` needs positive sizes and checks that itself). The message
    names ``name``, the first offending index and the shape, e.g.
    ``"boxes[3] has x2 < x1: tensor([...]); boxes has shape (5, 4)"``.
    """
    check_box_tensor(boxes, name, batched=False)
    check_box_values(boxes, name)


def check_same_device(**tensors: Tensor) -> None:
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{first_name} is on device {first.device} but {name} is on device {t.device}; "
                "move them to the same device"
            )


def check_broadcast(a: Tensor, a_name: str, b: Tensor, b_name: str) -> tuple:
    """The broadcast shape of ``a`` and ``b``; ``ValueError`` if they do not broadcast."""
    try:
        return tuple(torch.broadcast_shapes(a.shape, b.shape))
    except RuntimeError:
        raise ValueError(
            f"{a_name} of shape {_shape(a)} and {b_name} of shape {_shape(b)} do not broadcast"
        ) from None


def check_weights(weights) -> tuple:
    """The box coder's ``(wx, wy, ww, wh)`` as 4 positive floats."""
    try:
        w = tuple(float(v) for v in weights)
    except TypeError:
        raise ValueError(f"weights must be 4 positive numbers (wx, wy, ww, wh), got {weights!r}") from None
    if len(w) != 4:
        raise ValueError(f"weights must be 4 positive numbers (wx, wy, ww, wh), got {len(w)}: {weights!r}")
    for i, v in enumerate(w):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"weights[{i}] must be positive and finite, got {v}; weights = {weights!r}")
    return w


def check_deltas(deltas: Tensor) -> None:
    """Type and shape of regression deltas: floating, ``(..., 4)``."""
    require_tensor(deltas, "deltas")
    if deltas.shape[-1:] != (4,):
        raise ValueError(f"deltas must have shape (..., 4), got shape {_shape(deltas)}")
    if not deltas.is_floating_point():
        raise ValueError(f"deltas must be a floating-point tensor, got {deltas.dtype}; "
                         f"deltas has shape {_shape(deltas)}")


def check_deltas_finite(deltas: Tensor) -> None:
    bad = ~torch.isfinite(deltas).all(dim=-1)
    if bool(bad.any()):
        first = tuple(bad.nonzero()[0].tolist())
        raise ValueError(
            f"deltas[{', '.join(map(str, first))}] is not finite: {deltas[first]}; "
            f"deltas has shape {_shape(deltas)}"
        )


def check_image_size(image_size) -> tuple:
    """``(H, W)`` as two non-negative floats."""
    try:
        h, w = (float(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (H, W), got {image_size!r}") from None
    for i, (label, v) in enumerate((("H", h), ("W", w))):
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"image_size[{i}] ({label}) must be a non-negative number, got {v}")
    return h, w


def check_min_size(min_size) -> float:
    min_size = float(min_size)
    if math.isnan(min_size):
        raise ValueError("min_size must be a number, got nan")
    return min_size


def check_nms_args(boxes: Tensor, scores: Tensor, iou_threshold, impl: str, validate: bool) -> float:
    """Arguments of ``nms`` and ``batched_nms``; returns ``iou_threshold`` as a float."""
    check_impl(impl)
    check_box_tensor(boxes, "boxes", batched=False)
    require_tensor(scores, "scores")
    n = boxes.shape[0]
    if scores.shape != (n,):
        raise ValueError(f"scores must have shape (N,) = ({n},) to match boxes of shape {_shape(boxes)}, "
                         f"got shape {_shape(scores)}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be a floating-point tensor, got {scores.dtype}; "
                         f"scores has shape {_shape(scores)}")
    if scores.dtype != boxes.dtype:
        raise ValueError(f"scores ({scores.dtype}) must have the same dtype as boxes ({boxes.dtype})")
    check_same_device(boxes=boxes, scores=scores)
    try:
        threshold = float(iou_threshold)
    except (TypeError, ValueError):
        raise ValueError(f"iou_threshold must be a number in [0, 1], got {iou_threshold!r}") from None
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"iou_threshold must be a number in [0, 1], got {threshold}")
    if validate:
        check_box_values(boxes, "boxes")
        bad = ~torch.isfinite(scores)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(f"scores[{i}] is not finite: {scores[i]}; scores has shape {_shape(scores)}")
    return threshold


def check_idxs(idxs: Tensor, boxes: Tensor, scores: Tensor) -> None:
    """``batched_nms``'s categories: an integer ``(N,)`` tensor on the boxes' device."""
    require_tensor(idxs, "idxs")
    if idxs.shape != scores.shape:
        raise ValueError(f"idxs must have shape (N,) = ({boxes.shape[0]},) to match boxes of shape "
                         f"{_shape(boxes)}, got shape {_shape(idxs)}")
    if idxs.is_floating_point() or idxs.is_complex() or idxs.dtype == torch.bool:
        raise ValueError(f"idxs must be an integer tensor of categories, got {idxs.dtype}; "
                         f"idxs has shape {_shape(idxs)}")
    check_same_device(boxes=boxes, idxs=idxs)


# ---------------------------------------------------------------------------
# Anchors
# ---------------------------------------------------------------------------


def check_positive_list(values, name: str) -> tuple:
    try:
        values = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of positive numbers, got {values!r}") from None
    if len(values) == 0:
        raise ValueError(f"{name} must not be empty")
    for i, v in enumerate(values):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name}[{i}] must be positive and finite, got {v}; {name} = {values}")
    return values


def check_positive(value, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value}")
    return value


def check_finite(value, name: str) -> float:
    """``float(value)``; ``ValueError`` (showing ``value`` as given) unless it is finite."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return number


def check_feature_size(feature_size) -> tuple:
    try:
        h, w = (int(v) for v in feature_size)
    except (TypeError, ValueError):
        raise ValueError(f"feature_size must be (H, W), got {feature_size!r}") from None
    if h < 0 or w < 0:
        raise ValueError(f"feature_size must be (H, W) with H, W >= 0, got {(h, w)}")
    return h, w


def check_border(allowed_border) -> float:
    b = float(allowed_border)
    if math.isnan(b):
        raise ValueError("allowed_border must be a number (float('inf') keeps all anchors), got nan")
    return b


# ---------------------------------------------------------------------------
# RoI pooling
# ---------------------------------------------------------------------------


def check_roi_impl(impl: str) -> None:
    """roi: ``impl`` is one of IMPLS."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def check_output_size(output_size: int | Sequence[int]) -> tuple[int, int]:
    """7 -> (7, 7); (6, 6) -> (6, 6). Raises ValueError unless both are positive ints."""
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                 for s in size):
        raise ValueError(f"output_size must be a positive int or a pair (h, w) of them, "
                         f"got {output_size!r}")
    return size


def check_rois(features: torch.Tensor, rois: torch.Tensor) -> None:
    """Raise ValueError unless features is (N, C, H, W) and rois a matching (K, 5) tensor.

    Checks: shapes, floating dtype equal to the features', same device, finite coordinates, and
    batch indices that are whole numbers in [0, N). The batch-index check reads the values, so on
    CUDA it waits for the GPU; pass validate=False in a hot loop whose RoIs you built yourself.
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 4:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features)
        raise ValueError(f"features must have shape (N, C, H, W), got {shape}")
    if not isinstance(rois, torch.Tensor) or rois.dim() != 2 or rois.shape[1] != 5:
        shape = tuple(rois.shape) if isinstance(rois, torch.Tensor) else type(rois)
        raise ValueError(f"rois must have shape (K, 5) = (batch index, x1, y1, x2, y2), got {shape}")
    if not rois.is_floating_point():
        raise ValueError(f"rois must be a floating-point tensor, got dtype {rois.dtype} "
                         f"(shape {tuple(rois.shape)})")
    if rois.dtype != features.dtype or rois.device != features.device:
        raise ValueError(f"rois ({rois.dtype}, {rois.device}) must have the dtype and device of "
                         f"features ({features.dtype}, {features.device}); "
                         f"rois shape {tuple(rois.shape)}")
    if len(rois) == 0:
        return
    bad = ~torch.isfinite(rois).all(dim=1)
    if bad.any():
        k = int(bad.nonzero()[0])
        raise ValueError(f"rois[{k}] = {rois[k].tolist()} is not finite (rois shape "
                         f"{tuple(rois.shape)})")
    batch_index = rois[:, 0]
    num_images = features.shape[0]
    bad = (batch_index != batch_index.round()) | (batch_index < 0) | (batch_index >= num_images)
    if bad.any():
        k = int(bad.nonzero()[0])
        raise ValueError(f"rois[{k}, 0] = {batch_index[k].item()} is not an image index in "
                         f"[0, {num_images}) (rois shape {tuple(rois.shape)}, features shape "
                         f"{tuple(features.shape)}); column 0 of a RoI is the index of its "
                         f"image in the batch, the box follows in columns 1-4")
