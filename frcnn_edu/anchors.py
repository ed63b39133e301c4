"""Anchors: the reference boxes the RPN regresses from (Sec. 3.1.1).

At every position of the last shared feature map the RPN looks at one 3x3
window and predicts, for each of k reference boxes ("anchors") centred on that
window, an objectness score and 4 box deltas (eq. 2). The paper uses k = 9:
areas 128^2, 256^2, 512^2 times aspect ratios 1:2, 1:1, 2:1.

ANCHOR ORDER -- defined here, once; the RPN head, the anchor targets and the
proposal layer all rely on it:

    anchors are ordered position-major, anchor-minor:
        index = (y * W + x) * k + a
    for the feature cell at row y, column x of an H x W map, where a indexes
    the base anchors in the order generate_base_anchors() returns them:
    ratios outer, sizes inner, i.e. [r0s0, r0s1, r0s2, r1s0, ...] (the same as
    py-faster-rcnn and torchvision).

A head output of shape (N, k*4, H, W) whose channel index is a*4 + coord is put
in this order by

    x.view(N, k, 4, H, W).permute(0, 3, 4, 1, 2).reshape(N, H*W*k, 4)

and 2-logit objectness (channel a*2 + c) likewise with view(N, k, 2, H, W).
flatten_head_output() does exactly this; use it rather than reshaping by hand:
a score reshaped in a different order from its box silently pairs the wrong
score with the wrong anchor.

Aspect ratio means height / width throughout (as in py-faster-rcnn and
torchvision after pytorch/vision#2171): ratio 2 is a tall box, 0.5 a wide one.
"""

import math
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor

from .checks import (
    check_border,
    check_box_tensor,
    check_box_values,
    check_feature_size,
    check_finite,
    check_image_size,
    check_impl,
    check_positive,
    check_positive_list,
)


def generate_base_anchors(sizes=(128, 256, 512), ratios=(0.5, 1.0, 2.0), dtype=torch.float32) -> Tensor:
    """The k = len(ratios) * len(sizes) anchors of one position, centred on (0, 0): ``(k, 4)``.

    An anchor of size s and ratio r has area s^2 and height / width = r, so
    ``w = s / sqrt(r)`` and ``h = s * sqrt(r)`` (w * h = s^2, h / w = r). The
    boxes are ``(-w/2, -h/2, w/2, h/2)`` in continuous coordinates, unrounded.
    Order: ratios outer, sizes inner (see the module docstring). The defaults
    are the paper's 3 scales x 3 ratios (Sec. 3.1.1).
    """
    sizes = check_positive_list(sizes, "sizes")
    ratios = check_positive_list(ratios, "ratios")
    anchors = []
    for r in ratios:
        for s in sizes:
            w = s / math.sqrt(r)
            h = s * math.sqrt(r)
            anchors.append((-w / 2, -h / 2, w / 2, h / 2))
    # Computed in Python floats (double precision), rounded once to dtype.
    return torch.tensor(anchors, dtype=dtype)


def generate_base_anchors_legacy(base_size=16, ratios=(0.5, 1, 2), scales=(8, 16, 32)) -> Tensor:
    """py-faster-rcnn's ``generate_anchors()``, reproduced exactly: ``(9, 4)`` float32.

    These are the famous numbers printed in py-faster-rcnn (first row
    ``[-84, -40, 99, 55]``). They use the old *inclusive-pixel* convention: a
    box ``(x1, y1, x2, y2)`` covers pixels x1..x2, so its width is
    ``x2 - x1 + 1`` and its centre ``x1 + 0.5 * (width - 1)``. Here all of them
    are centred at (7.5, 7.5), the centre of the first 16x16 cell, not at 0.
    The rest of frcnn_edu uses continuous coordinates; this exists to show
    where those numbers come from. Steps:

    1. Base box ``[0, 0, 15, 15]``: one stride-16 cell, width 16, centre 7.5.
    2. For each ratio (height / width), keep the area ``w * h = 256``:
       ``size_ratios = 256 / ratio``, ``ws = round(sqrt(size_ratios))``,
       ``hs = round(ws * ratio)``. Rounding to whole pixels (numpy's round,
       half to even) is why the areas are not exact: 23 x 12 for ratio 0.5.
    3. For each scale, multiply ``ws`` and ``hs`` by it (16 * 8 = 128 and so
       on: "sizes 128, 256, 512" are ``base_size * scales``).
    4. Box = centre -/+ ``0.5 * (size - 1)`` (inclusive pixels).

    Order: ratios outer, scales inner, the same as ``generate_base_anchors``.
    """
    ratios = check_positive_list(ratios, "ratios")
    scales = check_positive_list(scales, "scales")
    base_size = check_positive(base_size, "base_size")
    ratios_t = torch.tensor(ratios, dtype=torch.float64)
    scales_t = torch.tensor(scales, dtype=torch.float64)
    # Step 1: the base box [0, 0, base_size - 1, base_size - 1].
    width = height = base_size
    centre_x = centre_y = 0.5 * (base_size - 1)
    # Step 2: same area, each ratio; torch.round rounds half to even like np.round.
    size_ratios = (width * height) / ratios_t
    ws = torch.round(torch.sqrt(size_ratios))
    hs = torch.round(ws * ratios_t)
    # Step 3: every scale of every ratio anchor, ratios outer.
    ws = (ws[:, None] * scales_t[None, :]).reshape(-1)
    hs = (hs[:, None] * scales_t[None, :]).reshape(-1)
    # Step 4: inclusive-pixel corners around the centre.
    anchors = torch.stack(
        (centre_x - 0.5 * (ws - 1), centre_y - 0.5 * (hs - 1), centre_x + 0.5 * (ws - 1), centre_y + 0.5 * (hs - 1)),
        dim=1,
    )
    return anchors.to(torch.float32)


def _shift_anchors_reference(base_anchors: Tensor, height: int, width: int, stride: float, offset: float) -> Tensor:
    """Readable version: for each cell, in row-major order, the k base anchors moved to its centre."""
    rows = []
    for y in range(height):
        for x in range(width):
            cx = (x + offset) * stride
            cy = (y + offset) * stride
            shift = torch.tensor([cx, cy, cx, cy], dtype=base_anchors.dtype, device=base_anchors.device)
            rows.append(base_anchors + shift)  # (k, 4): anchors a = 0..k-1 of cell (y, x)
    if not rows:
        return base_anchors.new_zeros((0, 4))
    return torch.cat(rows)


def _shift_anchors_fast(base_anchors: Tensor, height: int, width: int, stride: float, offset: float) -> Tensor:
    """Broadcasting version: (H*W, 1, 4) cell centres + (1, k, 4) base anchors."""
    # Centres computed in float64 and rounded once to the anchors' dtype, exactly
    # like the Python floats of the reference; only H + W numbers cross devices.
    xs = ((torch.arange(width, dtype=torch.float64) + offset) * stride).to(base_anchors)
    ys = ((torch.arange(height, dtype=torch.float64) + offset) * stride).to(base_anchors)
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each; row-major = y * W + x
    cx, cy = cx.reshape(-1), cy.reshape(-1)
    shifts = torch.stack((cx, cy, cx, cy), dim=1)  # (H*W, 4)
    return (shifts[:, None, :] + base_anchors[None, :, :]).reshape(-1, 4)


def shift_anchors(base_anchors: Tensor, feature_size, stride, offset: float = 0.5, impl: str = "fast") -> Tensor:
    """All anchors of an H x W feature map: ``(k, 4) -> (H*W*k, 4)``, in the module's anchor order.

    Feature cell (y, x) gets the base anchors centred at
    ``((x + offset) * stride, (y + offset) * stride)`` in image coordinates.
    With the default ``offset = 0.5`` that is the centre of the ``stride x
    stride`` image patch the cell stands for: with padded convolutions and 2x2
    poolings, the receptive field of cell x is centred at ``(x + 0.5) * stride``
    in continuous coordinates. (py-faster-rcnn's legacy anchors are centred at
    ``x * 16 + 7.5`` in inclusive-pixel coordinates, the same point.)

    ``impl="reference"`` is a plain loop over (y, x); ``impl="fast"`` broadcasts.
    Both return identical tensors on ``base_anchors``'s device and dtype.
    """
    check_impl(impl)
    check_box_tensor(base_anchors, "base_anchors", batched=False)
    height, width = check_feature_size(feature_size)
    stride = check_positive(stride, "stride")
    offset = check_finite(float(offset), "offset")
    if impl == "fast":
        return _shift_anchors_fast(base_anchors, height, width, stride, offset)
    return _shift_anchors_reference(base_anchors, height, width, stride, offset)


class AnchorGenerator:
    """The anchors of a feature map of a given size.

    ``AnchorGenerator(sizes, ratios, stride)(feature_size, device=...)`` returns
    ``(H*W*k, 4)`` anchors in image coordinates, in the module's anchor order:
    the k base anchors (``generate_base_anchors``) shifted to every cell
    (``shift_anchors``). ``num_anchors`` is k, ``base_anchors`` the ``(k, 4)``
    float32 base anchors (on the CPU).

    Why a cache: the anchors depend only on the feature map's size (and the
    device and dtype they are wanted in), never on the image's content, so
    there is no need to rebuild them for every image. Calls are cached per
    (H, W, device, dtype) in a small LRU cache (``max_cache_size`` entries,
    ``_lru_get`` at the bottom of this module): a training loop over images of
    a few sizes builds each grid once, and memory stays bounded when sizes
    vary. The returned tensor is the cached one: do not modify it in place.
    ``grid_anchors`` computes them without the cache.
    """

    max_cache_size = 32

    def __init__(self, sizes=(128, 256, 512), ratios=(0.5, 1.0, 2.0), stride=16, offset=0.5):
        self.sizes = check_positive_list(sizes, "sizes")
        self.ratios = check_positive_list(ratios, "ratios")
        self.stride = check_positive(stride, "stride")
        self.offset = check_finite(offset, "offset")
        self.base_anchors = generate_base_anchors(self.sizes, self.ratios)
        self.num_anchors = self.base_anchors.shape[0]
        self._cache: OrderedDict[tuple, Tensor] = OrderedDict()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(sizes={self.sizes}, ratios={self.ratios}, "
                f"stride={self.stride}, offset={self.offset})")

    def grid_anchors(self, feature_size, device=None, dtype=torch.float32) -> Tensor:
        """The anchors of an H x W feature map, computed afresh: ``(H*W*k, 4)``."""
        base = self.base_anchors.to(device=device, dtype=dtype)
        return shift_anchors(base, feature_size, self.stride, self.offset)

    def __call__(self, feature_size, device=None, dtype=torch.float32) -> Tensor:
        """``grid_anchors(feature_size, device, dtype)``, cached."""
        height, width = check_feature_size(feature_size)
        device = _canonical_device(device)
        return _lru_get(self._cache, (height, width, device, dtype), self.max_cache_size,
                        lambda: self.grid_anchors((height, width), device, dtype))


def inside_image(anchors: Tensor, image_size, allowed_border: float = 0, *, validate: bool = True) -> Tensor:
    """Which anchors lie inside the image: ``(A, 4) -> (A,)`` bool.

    Inside means ``x1 >= -b``, ``y1 >= -b``, ``x2 <= W + b``, ``y2 <= H + b``
    with ``b = allowed_border`` and ``image_size = (H, W)``, in continuous
    coordinates. During training the paper ignores cross-boundary anchors
    (Sec. 3.3: about 6,000 of about 20,000 remain for a 1000 x 600 image);
    ``allowed_border=float("inf")`` keeps every anchor (torchvision's
    behaviour); a negative border demands a margin inside the image.
    """
    check_box_tensor(anchors, "anchors", batched=False)
    height, width = check_image_size(image_size)
    b = check_border(allowed_border)
    if validate:
        check_box_values(anchors, "anchors")
    return (
        (anchors[:, 0] >= -b)
        & (anchors[:, 1] >= -b)
        & (anchors[:, 2] <= width + b)
        & (anchors[:, 3] <= height + b)
    )


def flatten_head_output(x: Tensor, values_per_anchor: int) -> Tensor:
    """Reorder a head output ``(N, k*v, H, W)`` into the anchor order: ``(N, H*W*k, v)``.

    Channel ``a * v + c`` at position ``(y, x)`` becomes row ``(y * W + x) * k + a``,
    column ``c`` (see the module docstring). ``v = 4`` for box deltas, 2 for
    two-class softmax objectness, 1 for a single logistic score per anchor.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (N, k*v, H, W), got {shape}")
    v = int(values_per_anchor)
    if v <= 0:
        raise ValueError(f"values_per_anchor must be positive, got {values_per_anchor}")
    n, channels, height, width = x.shape
    if channels % v != 0:
        raise ValueError(f"x has {channels} channels, not a multiple of values_per_anchor = {v}; "
                         f"x has shape {tuple(x.shape)}")
    k = channels // v
    # reshape, not view, so that any memory layout works; for a contiguous or a
    # channels_last tensor no data is copied until the final reshape (if at all).
    return x.reshape(n, k, v, height, width).permute(0, 3, 4, 1, 2).reshape(n, height * width * k, v)


# ---------------------------------------------------------------------------
# The AnchorGenerator's cache
# ---------------------------------------------------------------------------


def _canonical_device(device) -> torch.device:
    """One cache key per device: None -> cpu, and "cuda" -> "cuda:<current>" (the same device)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _lru_get(cache: OrderedDict, key, max_size: int, build: Callable[[], Tensor]) -> Tensor:
    """``cache[key]``, built with ``build()`` on a miss; keeps the ``max_size`` most recently used."""
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)  # most recently used
        return value
    value = cache[key] = build()
    if len(cache) > max_size:
        cache.popitem(last=False)  # drop the least recently used
    return value
