"""Target validation: the one door every ground-truth target passes through.

A target is a dict with

    "boxes"     (N, 4) float, (x1, y1, x2, y2) in continuous pixel coordinates
    "labels"    (N,)   int64, 1..C  (0 is reserved for background)
    "difficult" (N,)   bool, optional (VOC "difficult" / COCO "iscrowd"), ignored in evaluation

plus any other keys (e.g. "image_id"), which are passed through untouched.

Why a door: the most reported Faster R-CNN training failure is a NaN loss a few
iterations in, caused by a box of zero or negative size (the eq. 2 targets take
log(w_gt / w_anchor), and log(0) = -inf; pytorch/vision #2240). The second is a
real class given label 0, which the model learns to call background
(pytorch/vision #1952). Both are stopped here, at data-loading time, with a
message naming the image, instead of showing up later as a NaN or an empty
detector. So is a label above the model's number of classes (given
`num_classes`), which would otherwise index past the classifier's outputs.
"""

import warnings

import torch


class DegenerateBoxWarning(UserWarning):
    """A box with zero or negative width/height was dropped from a target."""


def _where(index, source):
    """Human-readable name of the image a target belongs to, for messages."""
    parts = []
    if source is not None:
        parts.append(str(source))
    if index is not None:
        parts.append(f"image {index}")
    return ", ".join(parts) if parts else "target"


def _check_image_size(image_size):
    try:
        height, width = (float(s) for s in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (H, W), got {image_size!r}") from None
    if not (height > 0 and width > 0):
        raise ValueError(f"image_size must be positive (H, W), got {tuple(image_size)}")
    return height, width


def _as_boxes(boxes, where):
    boxes = torch.as_tensor(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: target['boxes'] must have shape (N, 4), got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        if boxes.dtype == torch.bool or boxes.is_complex():
            raise ValueError(f"{where}: target['boxes'] must be float, got {boxes.dtype}")
        boxes = boxes.to(torch.float32)  # integer pixel boxes are fine, just convert
    return boxes


def _as_labels(labels, num_boxes, where):
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{where}: target['labels'] must be int64, got {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != num_boxes:
        raise ValueError(
            f"{where}: target['labels'] must have shape ({num_boxes},) to match boxes "
            f"(N={num_boxes}), got {tuple(labels.shape)}"
        )
    return labels.to(torch.int64)


def _as_difficult(difficult, num_boxes, device, where):
    if difficult is None:
        return torch.zeros(num_boxes, dtype=torch.bool, device=device)
    difficult = torch.as_tensor(difficult, device=device)
    if difficult.ndim != 1 or difficult.shape[0] != num_boxes:
        raise ValueError(
            f"{where}: target['difficult'] must have shape ({num_boxes},) to match boxes "
            f"(N={num_boxes}), got {tuple(difficult.shape)}"
        )
    if difficult.dtype != torch.bool:
        # 0/1 integers (as in VOC XML) are accepted; anything else is a mistake.
        if difficult.is_floating_point() or not bool(((difficult == 0) | (difficult == 1)).all()):
            raise ValueError(f"{where}: target['difficult'] must be bool (or 0/1), got {difficult.dtype}")
        difficult = difficult.bool()
    return difficult


def validate_target(target, image_size, index=None, source=None, *, clip=True, num_classes=None):
    """Check and clean one target; return a new dict (the input is not modified).

    Args:
        target: dict with "boxes" (N, 4), "labels" (N,) and optionally "difficult" (N,).
        image_size: (H, W) of the image the boxes live in.
        index: image index, used in messages.
        source: where the target came from (e.g. an annotation file), used in messages.
        clip: clip boxes to [0, W] x [0, H] (boxes partly outside the image are common
            in hand-made annotations).
        num_classes: C, the number of object classes; labels above it are an error.
            None: not checked (a dataset does not know the model's C).

    Returns:
        dict with "boxes" (M, 4) floating (integers become float32), "labels" (M,) int64,
        "difficult" (M,) bool and every other key of `target` unchanged. M <= N:
        degenerate boxes (x2 <= x1 or y2 <= y1 after clipping) are dropped with a
        DegenerateBoxWarning naming the image and the box.

    Raises:
        ValueError on wrong shapes/dtypes, non-finite coordinates, label 0, negative labels
        or (given num_classes) labels above num_classes.
    """
    where = _where(index, source)
    if not isinstance(target, dict):
        raise ValueError(f"{where}: target must be a dict, got {type(target).__name__}")
    for key in ("boxes", "labels"):
        if key not in target:
            raise ValueError(f"{where}: target has no {key!r} (keys: {sorted(target)})")
    height, width = _check_image_size(image_size)
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")

    boxes = _as_boxes(target["boxes"], where)
    num_boxes = boxes.shape[0]
    labels = _as_labels(target["labels"], num_boxes, where).to(boxes.device)
    difficult = _as_difficult(target.get("difficult"), num_boxes, boxes.device, where)

    # Checked before clipping: clamping would turn +-inf into a finite image border.
    finite = torch.isfinite(boxes).all(dim=1)
    raw_boxes = boxes
    if clip:
        # clamp() returns a new tensor, so the caller's boxes are never modified.
        x = boxes[:, 0::2].clamp(0, width)
        y = boxes[:, 1::2].clamp(0, height)
        boxes = torch.stack((x[:, 0], y[:, 0], x[:, 1], y[:, 1]), dim=1)

    # Every check below reduces to one small tensor read back once (a single host
    # sync, which matters when this runs inside the model's forward on a GPU).
    keep = finite & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    too_big = labels > num_classes if num_classes is not None else torch.zeros_like(labels, dtype=torch.bool)
    counts = torch.stack(
        ((~finite).sum(), (labels == 0).sum(), (labels < 0).sum(), too_big.sum(), (~keep).sum())
    )
    n_nonfinite, n_zero, n_negative, n_too_big, n_degenerate = counts.tolist()

    if n_nonfinite:
        i = int(torch.nonzero(~finite)[0])
        raise ValueError(f"{where}: box {i} has non-finite coordinates {raw_boxes[i].tolist()}")
    if n_zero:
        i = int(torch.nonzero(labels == 0)[0])
        raise ValueError(
            f"{where}: box {i} has label 0, but label 0 is reserved for background; "
            "real classes start at 1"
        )
    if n_negative:
        i = int(torch.nonzero(labels < 0)[0])
        raise ValueError(f"{where}: box {i} has negative label {int(labels[i])}; labels must be 1..C")
    if n_too_big:
        i = int(torch.nonzero(too_big)[0])
        raise ValueError(
            f"{where}: box {i} has label {int(labels[i])}, but there are only {num_classes} classes; "
            f"labels must be 1..{num_classes}"
        )
    if n_degenerate:
        for i in torch.nonzero(~keep).flatten().tolist():
            clipped = f" (clipped to the {height:g}x{width:g} image: {boxes[i].tolist()})" if clip else ""
            warnings.warn(
                f"{where}: dropping box {i} {raw_boxes[i].tolist()}{clipped}: zero or negative "
                "width/height would give log(0) in the box-regression targets (eq. 2)",
                DegenerateBoxWarning,
                stacklevel=2,
            )
        boxes, labels, difficult = boxes[keep], labels[keep], difficult[keep]

    out = dict(target)
    out.update(boxes=boxes, labels=labels, difficult=difficult)
    return out
