"""One RoI through RoI max pooling ([F] Sec. 2.1): snapped to the feature grid, cut into bins,
max-pooled: fe.widgets.roi_pool_explorer()."""
from __future__ import annotations

import ipywidgets as widgets
import torch
import torch.nn.functional as F

from .. import viz
from ..roi import roi_pool, roi_pool_bins
from ._base import GROUND_TRUTH, _check_image, _Explorer, _slider, sample_photo


def brightness_features(image: torch.Tensor, stride: int = 16) -> torch.Tensor:
    """A stand-in feature map (1, ceil(H / stride), ceil(W / stride)): the image's brightness
    averaged over each stride x stride cell, so that a pooled RoI can be read as a picture."""
    grey = image.mean(dim=0, keepdim=True)[None]                           # (1, 1, H, W)
    return F.avg_pool2d(grey, stride, stride, ceil_mode=True)[0]


def pooling_bins(roi, output_size, spatial_scale: float, feature_size) -> dict:
    """The bins of RoI max pooling for one RoI (fe.roi.roi_pool_bins), with a summary.

    Returns {"h_starts", "h_ends", "w_starts", "w_ends"} (feature cells, ends exclusive), "cells"
    (c1, r1, c2, r2): the cells the snapped RoI covers on the map, ends exclusive (None when it is
    entirely off the map), and "empty": the number of empty bins (they pool to 0)."""
    output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    h_starts, h_ends, w_starts, w_ends = roi_pool_bins(torch.as_tensor(roi, dtype=torch.float32),
                                                       output_size, spatial_scale, feature_size)
    rows = [i for i in range(len(h_starts)) if h_ends[i] > h_starts[i]]
    cols = [j for j in range(len(w_starts)) if w_ends[j] > w_starts[j]]
    cells = None
    if rows and cols:
        cells = (w_starts[cols[0]], h_starts[rows[0]], w_ends[cols[-1]], h_ends[rows[-1]])
    empty = output_size[0] * output_size[1] - len(rows) * len(cols)
    return {"h_starts": h_starts, "h_ends": h_ends, "w_starts": w_starts, "w_ends": w_ends,
            "cells": cells, "empty": empty}


def pool_one_roi(features: torch.Tensor, roi, output_size, spatial_scale: float) -> torch.Tensor:
    """RoI max pooling of one RoI: features (C, H', W'), roi (x1, y1, x2, y2) -> (C, h, w)."""
    rois = torch.cat([torch.zeros(1), torch.as_tensor(roi, dtype=torch.float32)]).reshape(1, 5)
    return roi_pool(features[None].float(), rois, output_size, spatial_scale)[0]


class RoIPoolExplorer(_Explorer):
    """One RoI through RoI max pooling ([F] Sec. 2.1): snapped to the feature grid, cut into bins
    (fe.roi.roi_pool_bins), max-pooled (fe.roi.roi_pool).

    Left: the image with the feature grid (one cell = stride x stride pixels), the RoI (red), the
    cells it snaps to (yellow, dashed) and the bins (cyan; overlapping bins look darker). Right:
    the pooled output. Controls: x1, y1, x2, y2, output_size, channel (when C > 1).
    state: roi, output_size, bins (see pooling_bins), pooled (C, h, w), empty_bins, feature_size.
    """

    def __init__(self, image=None, features=None, stride: int = 16, roi=None, output_size: int = 7):
        self.image = sample_photo("astronaut", shorter_side=None) if image is None else _check_image(image)
        height, width = self.image.shape[-2:]
        self.stride = stride
        self.features = (brightness_features(self.image, stride) if features is None
                         else torch.as_tensor(features).detach().float().cpu())
        if self.features.dim() != 3:
            raise ValueError(f"features must be (C, H', W'), got shape {tuple(self.features.shape)}")
        if roi is None:
            roi = (0.3 * width, 0.2 * height, 0.7 * width, 0.6 * height)
        x1, y1, x2, y2 = (int(round(float(v))) for v in roi)
        controls = {
            "x1": _slider(widgets.IntSlider, "RoI x1", x1, 0, width),
            "y1": _slider(widgets.IntSlider, "RoI y1", y1, 0, height),
            "x2": _slider(widgets.IntSlider, "RoI x2", x2, 0, width),
            "y2": _slider(widgets.IntSlider, "RoI y2", y2, 0, height),
            "output_size": _slider(widgets.IntSlider, "output size", output_size, 1, 14),
        }
        if self.features.shape[0] > 1:
            controls["channel"] = _slider(widgets.IntSlider, "channel", 0, 0, self.features.shape[0] - 1)
        self._build(controls, figsize=(10.0, 5.2), ncols=2)
        self.ax_pooled = self.axes[1]

    def compute(self) -> dict:
        c = self.controls
        roi = (c["x1"].value, c["y1"].value, c["x2"].value, c["y2"].value)
        size = (c["output_size"].value, c["output_size"].value)
        feature_size = tuple(self.features.shape[-2:])
        bins = pooling_bins(roi, size, 1.0 / self.stride, feature_size)
        pooled = pool_one_roi(self.features, roi, size, 1.0 / self.stride)
        return {"roi": roi, "output_size": size, "bins": bins, "pooled": pooled,
                "empty_bins": bins["empty"], "feature_size": feature_size}

    def draw(self):
        s, ax, ax2 = self.state, self.ax, self.axes[1]
        stride, bins = self.stride, s["bins"]
        viz.show_image(self.image, ax)
        viz.draw_feature_grid(ax, s["feature_size"], stride)
        for i in range(s["output_size"][0]):
            for j in range(s["output_size"][1]):
                hs, he, ws, we = bins["h_starts"][i], bins["h_ends"][i], bins["w_starts"][j], bins["w_ends"][j]
                if he > hs and we > ws:
                    viz.draw_box_outline(ax, (ws * stride, hs * stride, we * stride, he * stride),
                                         color="#42d4f4", linewidth=0.8, fill_alpha=0.12)
        if bins["cells"] is not None:
            c1, r1, c2, r2 = bins["cells"]
            viz.draw_box_outline(ax, (c1 * stride, r1 * stride, c2 * stride, r2 * stride),
                                 color="#ffe119", linewidth=2, linestyle="--")
        viz.draw_box_outline(ax, s["roi"], color=GROUND_TRUTH, linewidth=2)
        fh, fw = s["feature_size"]
        self._fit_view(ax, self.image.shape[-2:], [(0, 0, fw * stride, fh * stride)])
        h, w = s["output_size"]
        ax.set_title(f"RoI (red) on a {fh} x {fw} feature grid (stride {stride});\n"
                     f"snapped cells (yellow), {h} x {w} bins (cyan), {s['empty_bins']} empty", fontsize=9)
        channel = self.controls["channel"].value if "channel" in self.controls else 0
        values = s["pooled"][channel]
        fmap = self.features[channel]
        ax2.imshow(values.numpy(), cmap="gray", vmin=float(fmap.min()), vmax=float(fmap.max()))
        if h * w <= 64:
            for i in range(h):
                for j in range(w):
                    ax2.text(j, i, f"{float(values[i, j]):.2f}", ha="center", va="center", fontsize=7,
                             color="red")
        ax2.set_xticks(range(w))
        ax2.set_yticks(range(h))
        ax2.set_title(f"pooled output, channel {channel}: ({h}, {w})\nthe max of each bin", fontsize=9)


def roi_pool_explorer(image=None, features=None, **kwargs) -> RoIPoolExplorer:
    """A RoI through RoI max pooling; default: a sample photo and its brightness averaged over
    16 x 16 cells as the feature map. kwargs: stride, roi, output_size."""
    return RoIPoolExplorer(image, features, **kwargs)
