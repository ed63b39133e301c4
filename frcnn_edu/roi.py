"""RoI pooling: a fixed-size feature for every region proposal (Fast R-CNN [F] Sec. 2.1).

The detector head is made of fully connected layers, so it needs the same input size for every
proposal, whatever the proposal's size. RoI max pooling gets it in three steps:

  (1) snap the RoI, given in input-image pixels, onto the feature grid: x * spatial_scale,
      rounded to the nearest cell (spatial_scale = 1 / stride, e.g. 1/16 for ZF and VGG-16);
  (2) cut the snapped RoI into an h x w grid of bins of about (RoI height / h) x (RoI width / w)
      cells (7 x 7 for VGG-16, 6 x 6 for ZF in py-faster-rcnn); bins start at the floor and end
      at the ceil of their fractional edges, so neighbouring bins may share a row or column;
  (3) take the maximum of each bin, per channel. The gradient flows back to that argmax only.

`roi_pool(..., impl="reference")` does exactly this in plain PyTorch, one bin at a time, so it
can be read next to the picture `roi_pool_bins` draws. `impl="fast"` calls torchvision's compiled
kernel (on the CPU with the RoIs split over the cores, `frcnn_edu.parallel`); the tests check
that the two agree bit for bit, values and gradients.

RoIAlign (Mask R-CNN, He et al. 2017; what torchvision's Faster R-CNN uses) skips both roundings
and averages bilinearly interpolated samples instead. It is here for comparison.

RoIs are (K, 5) tensors: (batch index, x1, y1, x2, y2). `boxes_to_rois` builds them from one
(P_i, 4) box tensor per image.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchvision
from torch import nn

from .checks import IMPLS as IMPLS  # ("fast", "reference")
from .checks import check_output_size, check_roi_impl
from .checks import check_rois as check_rois  # public: frcnn_edu.roi.check_rois
from .parallel import roi_pool_threaded


# ----------------------------------------------------------------------------------------------
# RoI max pooling
# ----------------------------------------------------------------------------------------------
def _round_half_away_from_zero(x: torch.Tensor) -> torch.Tensor:
    """C's round(): 2.5 -> 3, -2.5 -> -3. (torch.round rounds halves to even: 2.5 -> 2.)

    Written with trunc, not floor(x + 0.5): x - trunc(x) is exact in floating point, while
    x + 0.5 can round up (0.49999997 + 0.5 == 1.0 in float32).
    """
    whole = torch.trunc(x)
    return whole + torch.sign(x) * ((x - whole).abs() >= 0.5)


def roi_pool_bins(roi: torch.Tensor | Sequence[float], output_size: int | Sequence[int],
                  spatial_scale: float, feature_size: tuple[int, int]
                  ) -> tuple[list[int], list[int], list[int], list[int]]:
    """The bins RoI max pooling takes the maximum over, for one RoI, as integer cell indices.

    roi: (4,) box (x1, y1, x2, y2) in input-image pixels (no batch index). The arithmetic is done
        in roi's dtype (float32 unless it is a float64 tensor), as torchvision does in the
        features' dtype, so that the edges agree with its kernel to the last bit.
    feature_size: (H, W) of the feature map.
    Returns (h_starts, h_ends, w_starts, w_ends): lists of length h, h, w, w. Bin (i, j) covers
    rows h_starts[i] : h_ends[i] and columns w_starts[j] : w_ends[j] (ends exclusive, clamped to
    the map); a bin with end <= start is empty (the RoI is off the map there) and pools to 0.
    """
    pooled_h, pooled_w = check_output_size(output_size)
    height, width = feature_size
    roi = torch.as_tensor(roi).detach().cpu()
    if not roi.is_floating_point():
        roi = roi.float()
    if roi.shape != (4,):
        raise ValueError(f"roi must have shape (4,) = (x1, y1, x2, y2), got {tuple(roi.shape)}")

    # (1) Snap the RoI onto the feature grid: the cell nearest to x * spatial_scale.
    scale = torch.tensor(spatial_scale, dtype=roi.dtype)
    x1, y1, x2, y2 = _round_half_away_from_zero(roi * scale).long().tolist()
    # End cells are inclusive, hence + 1; a RoI that snaps to nothing (x2 < x1) becomes 1 x 1.
    roi_w, roi_h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)

    # (2) Fractional bin edges k * (roi_h / pooled_h); the bin runs from the floor of its start
    # edge to the ceil of its end edge, so every cell of the RoI lands in at least one bin.
    def edges(roi_len: int, pooled: int, offset: int, limit: int) -> tuple[list[int], list[int]]:
        bin_size = torch.tensor(roi_len, dtype=roi.dtype) / pooled
        k = torch.arange(pooled + 1, dtype=roi.dtype)
        starts = torch.floor(k[:-1] * bin_size).long() + offset
        ends = torch.ceil(k[1:] * bin_size).long() + offset
        return starts.clamp(0, limit).tolist(), ends.clamp(0, limit).tolist()

    h_starts, h_ends = edges(roi_h, pooled_h, y1, height)
    w_starts, w_ends = edges(roi_w, pooled_w, x1, width)
    return h_starts, h_ends, w_starts, w_ends


def _roi_pool_reference(features: torch.Tensor, rois: torch.Tensor,
                        output_size: tuple[int, int], spatial_scale: float) -> torch.Tensor:
    _, channels, height, width = features.shape
    pooled_h, pooled_w = output_size
    num_rois = len(rois)
    device = features.device

    # First find WHERE the maximum of every (RoI, bin, channel) is. This part needs no gradient.
    # For each bin we keep the bin's top-left cell and width, and the position of the maximum
    # inside the bin counted row by row (-1 for an empty bin).
    h_start = torch.zeros(num_rois, pooled_h, dtype=torch.long)
    w_start = torch.zeros(num_rois, pooled_w, dtype=torch.long)
    w_len = torch.ones(num_rois, pooled_w, dtype=torch.long)
    position_in_bin = []                          # one (C,) tensor per (RoI, bin), row-major
    empty_bin = torch.full((channels,), -1, dtype=torch.long, device=device)
    with torch.no_grad():
        for k, roi in enumerate(rois.detach().cpu()):
            image = features[int(roi[0])]                                  # (C, H, W)
            h_starts, h_ends, w_starts, w_ends = roi_pool_bins(
                roi[1:], output_size, spatial_scale, (height, width))
            h_start[k] = torch.tensor(h_starts)
            w_start[k] = torch.tensor(w_starts)
            w_len[k] = (torch.tensor(w_ends) - w_start[k]).clamp(min=1)
            for i in range(pooled_h):
                for j in range(pooled_w):
                    hs, he, ws, we = h_starts[i], h_ends[i], w_starts[j], w_ends[j]
                    if he <= hs or we <= ws:      # the RoI is off the map here:
                        position_in_bin.append(empty_bin)     # output 0, no gradient
                        continue
                    # (3) Max per bin. argmax returns the FIRST maximum in row-major order,
                    # which is the one torchvision's kernel keeps (it scans with a strict >).
                    window = image[:, hs:he, ws:we].reshape(channels, -1)
                    position_in_bin.append(window.argmax(dim=1))
    if num_rois == 0:
        position_in_bin.append(torch.zeros(0, channels, dtype=torch.long))
    position = torch.stack(position_in_bin).cpu().view(num_rois, pooled_h, pooled_w, channels)
    position = position.permute(0, 3, 1, 2)                                # (K, C, h, w)
    empty = position < 0
    position = position.clamp(min=0)
    # Position inside the bin -> row and column in the feature map.
    rows = h_start[:, None, :, None] + position // w_len[:, None, None, :]
    cols = w_start[:, None, None, :] + position % w_len[:, None, None, :]
    rows, cols = rows.masked_fill(empty, 0), cols.masked_fill(empty, 0)   # any valid cell

    # Then read the maxima out with one indexing operation. Autograd sends each output's
    # gradient back to exactly the element it was read from: the argmax (summed where bins or
    # RoIs share an argmax), as in [F] Sec. 2.3.
    image_index = rois[:, 0].detach().long().view(-1, 1, 1, 1)
    channel_index = torch.arange(channels, device=device).view(1, -1, 1, 1)
    pooled = features[image_index, channel_index, rows.to(device), cols.to(device)]
    return pooled.masked_fill(empty.to(device), 0)


def roi_pool(features: torch.Tensor, rois: torch.Tensor, output_size: int | Sequence[int],
             spatial_scale: float, impl: str = "fast", *, validate: bool = True) -> torch.Tensor:
    """RoI max pooling ([F] Sec. 2.1): (N, C, H, W) features, (K, 5) rois -> (K, C, h, w).

    rois: (K, 5) rows (batch index, x1, y1, x2, y2), same dtype and device as features. Column 0
        is the index of the RoI's IMAGE IN THE BATCH (0 .. N-1), not a class label or a score.
        The box is in INPUT-IMAGE pixels; spatial_scale (1 / total stride, e.g. 1/16) maps it
        onto the feature map.
    output_size: h = w = int, or (h, w): 7 for VGG-16, 6 for ZF.
    impl: "fast" (torchvision.ops.roi_pool) or "reference" (readable plain PyTorch, much slower;
        the same values and gradients bit for bit on finite inputs: on the CPU exactly, on CUDA
        up to the order in which torchvision's backward adds shared gradients with atomics).
    validate: check shapes, dtypes and batch indices (see `check_rois`); False skips the checks
        and their GPU sync.

    Rounding, as in torchvision's and Caffe's kernels (`roi_pool_bins` has the details): RoI
    corners round half away from zero, ends inclusive; bins run from floor(start) to ceil(end);
    a bin entirely off the feature map gives 0; ties keep the first maximum in row-major order.
    """
    features, size = prepare_roi_inputs(features, rois, output_size, impl, validate)
    if impl == "fast":
        # torchvision's kernel (on the CPU with the RoIs split over the threads).
        return roi_pool_threaded(features, rois, size, spatial_scale)
    return _roi_pool_reference(features, rois, size, spatial_scale)


# ----------------------------------------------------------------------------------------------
# RoIAlign, for comparison
# ----------------------------------------------------------------------------------------------
def _interpolation_matrix(coords: torch.Tensor, size: int) -> torch.Tensor:
    """Linear interpolation along one axis as a matrix: (S,) sample positions -> (S, size).

    Row s holds the weights of the two cells around position coords[s] (in feature cells), so
    that matrix @ values interpolates. torchvision's rules: a sample more than one cell off the
    map is 0; positions are clamped to the map; the last cell is its own right neighbour.
    """
    inside = (coords >= -1.0) & (coords <= size)
    coords = coords.clamp(min=0)
    low = coords.long()                                      # floor, since coords >= 0
    at_edge = low >= size - 1
    low = low.clamp(max=size - 1)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(coords), coords - low)
    matrix = torch.zeros(len(coords), size, dtype=coords.dtype)
    rows = torch.arange(len(coords))
    matrix.index_put_((rows, low), (1.0 - frac) * inside, accumulate=True)
    matrix.index_put_((rows, high), frac * inside, accumulate=True)
    return matrix


def _roi_align_reference(features: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int],
                         spatial_scale: float, sampling_ratio: int, aligned: bool) -> torch.Tensor:
    _, channels, height, width = features.shape
    pooled_h, pooled_w = output_size
    dtype = features.dtype
    scale = torch.tensor(spatial_scale, dtype=dtype)
    outputs = []
    for roi in rois.detach().cpu():
        image = features[int(roi[0])]                                      # (C, H, W)
        # No rounding: the RoI stays at fractional feature coordinates. aligned=True shifts by
        # half a cell so that pixel centres line up (torchvision's aligned option).
        x1, y1, x2, y2 = roi[1:] * scale - (0.5 if aligned else 0.0)
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
        bin_h, bin_w = roi_h / pooled_h, roi_w / pooled_w
        # Each bin averages a grid_h x grid_w grid of samples; adaptive: about one per cell.
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(float(bin_h))
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(float(bin_w))
        grid_h, grid_w = max(grid_h, 0), max(grid_w, 0)    # aligned RoI of negative size: none
        # Sample positions: bin start + (s + 0.5) / grid of the bin, for s = 0 .. grid - 1.
        ys = (y1 + torch.arange(pooled_h, dtype=dtype)[:, None] * bin_h
              + (torch.arange(grid_h, dtype=dtype) + 0.5) * bin_h / grid_h)    # (h, grid_h)
        xs = (x1 + torch.arange(pooled_w, dtype=dtype)[:, None] * bin_w
              + (torch.arange(grid_w, dtype=dtype) + 0.5) * bin_w / grid_w)    # (w, grid_w)
        # Bilinear interpolation is linear interpolation along y, then along x, and averaging
        # the samples of a bin is linear too: the whole RoI is  rows @ image @ cols^T  with
        # rows[i] = mean over bin row i's samples of their y-interpolation weights, (h, H).
        rows = _interpolation_matrix(ys.reshape(-1), height).view(pooled_h, grid_h, height)
        cols = _interpolation_matrix(xs.reshape(-1), width).view(pooled_w, grid_w, width)
        rows = (rows.sum(dim=1) / max(grid_h, 1)).to(features.device)        # (h, H)
        cols = (cols.sum(dim=1) / max(grid_w, 1)).to(features.device)        # (w, W)
        outputs.append(rows @ image @ cols.T)                                # (C, h, w)
    if not outputs:     # no RoIs: an empty result that is still part of the autograd graph
        return features.reshape(-1)[:0].view(0, channels, pooled_h, pooled_w)
    return torch.stack(outputs)


def roi_align(features: torch.Tensor, rois: torch.Tensor, output_size: int | Sequence[int],
              spatial_scale: float, sampling_ratio: int = -1, aligned: bool = False,
              impl: str = "fast", *, validate: bool = True) -> torch.Tensor:
    """RoIAlign: (N, C, H, W) features, (K, 5) rois -> (K, C, h, w), averaging bilinear samples.

    rois as in `roi_pool`: column 0 is the image's index in the batch, then (x1, y1, x2, y2) in
    input-image pixels. sampling_ratio: samples per bin along each axis; <= 0 means adaptive,
    ceil(RoI size / output size). aligned=True subtracts half a cell so that sample positions
    line up with pixel centres (Detectron2's fix); False is the original RoIAlign.
    impl: "fast" (torchvision.ops.roi_align) or "reference" (plain PyTorch; agrees to about 1e-6
    in float32: the sums are taken in a different order).
    """
    features, size = prepare_roi_inputs(features, rois, output_size, impl, validate)
    if impl == "fast":
        return torchvision.ops.roi_align(features, rois, size, spatial_scale,
                                         sampling_ratio=sampling_ratio, aligned=aligned)
    return _roi_align_reference(features, rois, size, spatial_scale, sampling_ratio, aligned)


# ----------------------------------------------------------------------------------------------
# As a layer, and building RoIs from boxes
# ----------------------------------------------------------------------------------------------
class RoIPool(nn.Module):
    """`roi_pool` as a layer: RoIPool(7, 1 / 16)(features (N, C, H, W), rois (K, 5)).

    validate=False skips `check_rois` (and its GPU sync) in forward: for a model that builds its
    own RoIs.
    """

    def __init__(self, output_size: int | Sequence[int], spatial_scale: float, impl: str = "fast",
                 validate: bool = True):
        super().__init__()
        check_roi_impl(impl)
        self.output_size = check_output_size(output_size)
        self.spatial_scale = spatial_scale
        self.impl = impl
        self.validate = validate

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return roi_pool(features, rois, self.output_size, self.spatial_scale, self.impl,
                        validate=self.validate)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"impl={self.impl!r}, validate={self.validate}")


def boxes_to_rois(boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """One (P_i, 4) box tensor per image -> (sum P_i, 5) RoIs with the image index in column 0."""
    if len(boxes) == 0:
        raise ValueError("boxes must hold one (P_i, 4) tensor per image, got an empty list")
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{i}] must have shape (P, 4), got shape {tuple(b.shape)}")
    index = torch.cat([torch.full((len(b), 1), i, dtype=b.dtype, device=b.device)
                       for i, b in enumerate(boxes)])
    return torch.cat([index, torch.cat(list(boxes))], dim=1)


def prepare_roi_inputs(features: torch.Tensor, rois: torch.Tensor, output_size, impl: str,
                       validate: bool) -> tuple[torch.Tensor, tuple[int, int]]:
    """The common door of roi_pool and roi_align: (features, (h, w)) after the checks.

    Under torch.autocast the features may be bfloat16 / float16 while the RoIs stay float32
    (bfloat16 cannot hold a 1000-px coordinate to better than 4 px): pool in float32 then.
    """
    size = check_output_size(output_size)
    check_roi_impl(impl)
    if features.dtype in (torch.float16, torch.bfloat16) and rois.dtype == torch.float32:
        features = features.float()
    if validate:
        check_rois(features, rois)
    return features, size
