"""Solution to exercise 6: RoI max pooling of one RoI (Fast R-CNN, Sec. 2.1), and the bonus: the
whole operation on a batch, written with it."""
import math

import torch


def round_half_away_from_zero(v):
    """C's round(): 2.5 -> 3, -2.5 -> -3 (Python's round and torch.round give 2)."""
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def my_roi_pool(features, roi, output_size, spatial_scale):
    """Max-pool one RoI into a fixed grid: features (C, H, W), roi (4,) -> (C, h, w).

    roi is (x1, y1, x2, y2) in image pixels; spatial_scale (e.g. 1/16) maps it onto the map.
    """
    channels, height, width = features.shape
    out_h, out_w = output_size

    # 1. Snap the RoI onto the feature grid; the end cell is included, hence + 1.
    x1, y1, x2, y2 = [round_half_away_from_zero(float(v) * spatial_scale) for v in roi]
    roi_w = max(x2 - x1 + 1, 1)
    roi_h = max(y2 - y1 + 1, 1)

    output = torch.zeros(channels, out_h, out_w, dtype=features.dtype)
    for i in range(out_h):
        # 2. Bin i covers rows floor(i * roi_h / out_h) .. ceil((i + 1) * roi_h / out_h),
        #    end excluded, clamped to the map.
        row_start = min(max(y1 + math.floor(i * roi_h / out_h), 0), height)
        row_end = min(max(y1 + math.ceil((i + 1) * roi_h / out_h), 0), height)
        for j in range(out_w):
            col_start = min(max(x1 + math.floor(j * roi_w / out_w), 0), width)
            col_end = min(max(x1 + math.ceil((j + 1) * roi_w / out_w), 0), width)
            if row_end <= row_start or col_end <= col_start:
                continue            # the bin is off the map: it stays 0
            # 3. The maximum over the bin, for every channel at once.
            window = features[:, row_start:row_end, col_start:col_end]
            output[:, i, j] = window.amax(dim=(1, 2))
    return output


def my_roi_pool_batch(features, rois, output_size, spatial_scale):
    """RoI max pooling of a batch: features (N, C, H, W), rois (K, 5) -> (K, C, h, w).

    Each row of rois is (batch index, x1, y1, x2, y2): column 0 says which image of the batch the
    RoI belongs to (not a class or a score), the other four are the box in image pixels.
    """
    channels = features.shape[1]
    out_h, out_w = output_size
    pooled = []
    for roi in rois:
        # 1. The RoI's own image: features[0] would pool every RoI from the first image.
        image = features[int(roi[0])]                                        # (C, H, W)
        # 2. Pool it with the one-RoI function.
        pooled.append(my_roi_pool(image, roi[1:], output_size, spatial_scale))  # (C, h, w)
    if not pooled:
        # No RoIs: torch.stack([]) fails, so build the empty (0, C, h, w) result directly.
        return torch.zeros(0, channels, out_h, out_w, dtype=features.dtype)
    return torch.stack(pooled)                                               # (K, C, h, w)
