"""One RoI through RoI max pooling ([F] Sec. 2.1): snapped to the feature grid, cut into bins,
max-pooled: fe.widgets.roi_pool_explorer()."""
from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import torch
import torch.nn.functional as F

from .. import viz
from ..roi import roi_pool, roi_pool_bins
from ._base import (
    BINS,
    FEATURE_CELLS,
    MIN_FONT_PT,
    ROI,
    _check_image,
    _Explorer,
    _slider,
    add_box,
    add_boxes,
    caption_html,
    legend_html,
    sample_photo,
    show_background_image,
)


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


def strongest_channel(features: torch.Tensor, roi, output_size, spatial_scale: float) -> int:
    """The channel whose pooled output for `roi` has the largest absolute value: a first picture
    that is not an all-zero channel (ReLU maps are zero in many channels)."""
    pooled = pool_one_roi(features, roi, output_size, spatial_scale)
    return int(pooled.abs().flatten(1).amax(dim=1).argmax())


def pooled_table_html(values: torch.Tensor, low: float, high: float) -> str:
    """(h, w) pooled values as an HTML table, each cell shaded like the picture (grey scale)."""
    span = (high - low) or 1.0
    rows = []
    for row in values.tolist():
        cells = []
        for v in row:
            level = min(max((v - low) / span, 0.0), 1.0)
            grey = round(255 * level)
            ink = "black" if level > 0.5 else "white"
            cells.append(f"<td style='background:rgb({grey},{grey},{grey});color:{ink};padding:1px 5px;"
                         f"text-align:right;font-family:monospace'>{v:.2f}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "<table style='border-collapse:collapse;font-size:13px'>" + "".join(rows) + "</table>"


class RoIPoolExplorer(_Explorer):
    """One RoI through RoI max pooling ([F] Sec. 2.1): snapped to the feature grid, cut into bins
    (fe.roi.roi_pool_bins), max-pooled (fe.roi.roi_pool).

    Left: the image with the feature grid (one cell = stride x stride pixels), the RoI (red),
    the cells it snaps to (yellow, dashed) and the bins (cyan; overlapping bins look darker).
    Right: the pooled output (its values in a table below). Controls: x1, y1, x2, y2,
    output_size, channel (when C > 1; it opens on the channel with the strongest response).
    state: roi, output_size, bins (see pooling_bins), pooled (C, h, w), empty_bins, feature_size.
    """

    def __init__(self, image=None, features=None, stride: int = 16, roi=None, output_size: int = 7,
                 channel: int | None = None):
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
            "x1": _slider(widgets.IntSlider, "RoI x1", x1, 0, width, tooltip="left edge of the RoI (pixels)"),
            "y1": _slider(widgets.IntSlider, "RoI y1", y1, 0, height, tooltip="top edge of the RoI (pixels)"),
            "x2": _slider(widgets.IntSlider, "RoI x2", x2, 0, width, tooltip="right edge of the RoI (pixels)"),
            "y2": _slider(widgets.IntSlider, "RoI y2", y2, 0, height, tooltip="bottom edge of the RoI (pixels)"),
            "output_size": _slider(widgets.IntSlider, "output size", output_size, 1, 14,
                                   tooltip="the pooled output is output size x output size"),
        }
        if self.features.shape[0] > 1:
            if channel is None:
                channel = strongest_channel(self.features, (x1, y1, x2, y2), output_size, 1.0 / stride)
            controls["channel"] = _slider(widgets.IntSlider, "channel", channel, 0, self.features.shape[0] - 1,
                                          tooltip="which feature channel to show")
        self._build(controls, figsize=(8.6, 4.4), ncols=2)
        self.ax_pooled = self.axes[1]

    def setup(self):
        ax, fmap = self.ax, self.features
        show_background_image(ax, self.image)
        fh, fw = fmap.shape[-2:]
        viz.draw_feature_grid(ax, (fh, fw), self.stride)
        height, width = self.image.shape[-2:]
        ax.set_xlim(-0.5, max(width, fw * self.stride) - 0.5)
        ax.set_ylim(max(height, fh * self.stride) - 0.5, -0.5)
        self._pooled = self.axes[1].imshow(np.zeros((1, 1)), cmap="gray")
        self.axes[1].tick_params(labelsize=MIN_FONT_PT)
        self.live.append(self._pooled)

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
        h, w = s["output_size"]
        cells = [(bins["w_starts"][j] * stride, bins["h_starts"][i] * stride, bins["w_ends"][j] * stride,
                  bins["h_ends"][i] * stride) for i in range(h) for j in range(w)
                 if bins["h_ends"][i] > bins["h_starts"][i] and bins["w_ends"][j] > bins["w_starts"][j]]
        add_boxes(ax, cells, BINS, linewidth=0.8, fill_alpha=0.12)
        if bins["cells"] is not None:
            c1, r1, c2, r2 = bins["cells"]
            add_box(ax, (c1 * stride, r1 * stride, c2 * stride, r2 * stride), FEATURE_CELLS, linewidth=2,
                    linestyle="--")
        add_box(ax, s["roi"], ROI, linewidth=2, halo=True)
        channel = self.controls["channel"].value if "channel" in self.controls else 0
        values, fmap = s["pooled"][channel], self.features[channel]
        low, high = float(fmap.min()), float(fmap.max())
        self._pooled.set_data(values.numpy())
        self._pooled.set_clim(low, high)
        self._pooled.set_extent((-0.5, w - 0.5, h - 0.5, -0.5))
        ax2.set_xlim(-0.5, w - 0.5)
        ax2.set_ylim(h - 0.5, -0.5)
        ax2.set_xticks(range(w))
        ax2.set_yticks(range(h))
        fh, fw = s["feature_size"]
        self.caption.value = caption_html(
            f"<b>RoI</b> (red) on a {fh} x {fw} feature grid (stride {stride}): snapped cells (yellow), "
            f"{h} x {w} bins (cyan), <b>{s['empty_bins']} empty</b>; right: the pooled output, channel "
            f"{channel}, ({h}, {w}), the max of each bin")
        legend = legend_html([dict(label="RoI", color=ROI, halo=True),
                              dict(label="cells it snaps to", color=FEATURE_CELLS, style="--"),
                              dict(label="bins", color=BINS, width=1)])
        table = pooled_table_html(values, low, high) if h * w <= 64 else ""
        self.legend.value = legend + table


def roi_pool_explorer(image=None, features=None, **kwargs) -> RoIPoolExplorer:
    """A RoI through RoI max pooling; default: a sample photo and its brightness averaged over
    16 x 16 cells as the feature map. kwargs: stride, roi, output_size, channel (default: the
    channel with the strongest response in the RoI)."""
    return RoIPoolExplorer(image, features, **kwargs)
