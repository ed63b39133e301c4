"""The sliding window at one feature-map position, its receptive field and its k anchors
([P] Sec. 3.1, 3.3): fe.widgets.anchor_explorer()."""
from __future__ import annotations

import functools
import math

import ipywidgets as widgets
import torch
from matplotlib.lines import Line2D
from torch import nn

from .. import viz
from ..anchors import generate_base_anchors, inside_image
from ..backbones import build_backbone, receptive_field
from ._base import _check_image, _Explorer, _slider, sample_photo


def feature_map_size(image_size, stride: int) -> tuple[int, int]:
    """(ceil(H / stride), ceil(W / stride)): the map of a backbone that rounds up, like Caffe's
    pooling and our VGG-16 and ZF (600 x 1000 -> 38 x 63, [P] Sec. 3.3)."""
    height, width = image_size
    return math.ceil(height / stride), math.ceil(width / stride)


def anchors_at(position, sizes=(128, 256, 512), ratios=(0.5, 1.0, 2.0), stride: int = 16
               ) -> torch.Tensor:
    """The k anchors of feature cell position = (x, y): (k, 4) in image pixels.

    The base anchors (generate_base_anchors: w = s / sqrt(r), h = s * sqrt(r)) moved to the cell
    centre ((x + 0.5) * stride, (y + 0.5) * stride) -- the same boxes AnchorGenerator gives that
    cell, rows (y * W + x) * k ... + k - 1.
    """
    x, y = position
    cx, cy = (x + 0.5) * stride, (y + 0.5) * stride
    return generate_base_anchors(sizes, ratios) + torch.tensor([cx, cy, cx, cy])


def window_box(position, stride: int = 16, window: int = 3) -> torch.Tensor:
    """(4,) the pixels under the n x n sliding window at feature cell (x, y) ([P] Sec. 3.1):
    its n x n cells, each stride x stride pixels."""
    x, y = position
    r = window // 2
    return torch.tensor([(x - r) * stride, (y - r) * stride, (x + r + 1) * stride,
                         (y + r + 1) * stride], dtype=torch.float32)


@functools.cache
def rpn_receptive_field(backbone: str = "zf") -> tuple[int, int]:
    """(size, stride) of one RPN window: the backbone's layers plus the 3x3 conv ([P] Sec. 3.1:
    171 px for ZF, 228 px for VGG-16). Built on the meta device: only the layer shapes matter."""
    with torch.device("meta"):
        net = build_backbone(backbone)
        window = nn.Conv2d(net.out_channels, net.out_channels, kernel_size=3, padding=1)
    return receptive_field(net, extra=[window])


def receptive_field_box(position, stride: int, size: int) -> torch.Tensor:
    """(4,) a size x size square centred on the centre of feature cell (x, y).

    (The exact centre depends on the paddings: VGG-16's field is centred on the cell centre,
    ZF's lies 7.5 px up and left of it; at 171 px that is invisible here.)"""
    x, y = position
    cx, cy = (x + 0.5) * stride, (y + 0.5) * stride
    return torch.tensor([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])


RATIO_OPTIONS = [("h/w 0.25 (wide)", 0.25), ("h/w 0.5 (1:2, wide)", 0.5), ("h/w 1 (square)", 1.0),
                 ("h/w 2 (2:1, tall)", 2.0), ("h/w 4 (tall)", 4.0)]
RATIO_STYLES = ["--", "-", ":", "-.", (0, (1, 3))]


class AnchorExplorer(_Explorer):
    """The sliding window at one feature-map position, its receptive field and its k anchors.

    Controls: size1..sizeN (anchor sizes, sqrt of the area), ratios (height / width), stride,
    x and y (the feature-map position), backbone (whose receptive field to draw, + the 3x3 window).
    state: position, centre, feature_size, anchors (k, 4), k, total_anchors (H' * W' * k),
    window (4,), receptive_field (px or None), receptive_field_box, cross_boundary (how many of the
    k anchors cross the image border).
    """

    def __init__(self, image=None, sizes=(128, 256, 512), ratios=(0.5, 1.0, 2.0), stride: int = 16,
                 backbone: str | None = "zf", position=None):
        self.image = sample_photo() if image is None else _check_image(image)
        height, width = self.image.shape[-2:]
        fh, fw = feature_map_size((height, width), stride)
        x, y = position if position is not None else (fw // 2, fh // 2)
        known = {value for _, value in RATIO_OPTIONS}
        options = list(RATIO_OPTIONS) + [(f"h/w {r:g}", float(r)) for r in ratios if float(r) not in known]
        controls = {f"size{i + 1}": _slider(widgets.IntSlider, f"anchor size {i + 1}", int(s), 8, 1024, 8)
                    for i, s in enumerate(sizes)}
        controls["ratios"] = widgets.SelectMultiple(
            options=options, value=tuple(float(r) for r in ratios), rows=len(options),
            description="ratios", style={"description_width": "90px"}, layout=widgets.Layout(width="310px"))
        controls["stride"] = widgets.SelectionSlider(
            options=sorted({4, 8, 16, 32, int(stride)}), value=int(stride), description="stride",
            continuous_update=False,
            style={"description_width": "90px"}, layout=widgets.Layout(width="310px"))
        controls["x"] = _slider(widgets.IntSlider, "x (column)", x, 0, fw - 1)
        controls["y"] = _slider(widgets.IntSlider, "y (row)", y, 0, fh - 1)
        controls["backbone"] = widgets.Dropdown(
            options=[("ZF + 3x3", "zf"), ("VGG-16 + 3x3", "vgg16"), ("tiny + 3x3", "tiny"), ("none", None)],
            value=backbone, description="receptive field", style={"description_width": "90px"},
            layout=widgets.Layout(width="310px"))
        self._build(controls, figsize=(7.0, 6.0))

    def _constrain(self, change):
        if change["owner"] is self.controls["stride"]:
            # A new stride changes the map size: keep x, y on the map, at the same image point.
            old, new = change["old"], change["new"]
            fh, fw = feature_map_size(self.image.shape[-2:], new)
            x = min(int((self.controls["x"].value + 0.5) * old / new), fw - 1)
            y = min(int((self.controls["y"].value + 0.5) * old / new), fh - 1)
            self.controls["x"].max, self.controls["y"].max = max(fw - 1, x), max(fh - 1, y)
            self.controls["x"].value, self.controls["y"].value = x, y
            self.controls["x"].max, self.controls["y"].max = fw - 1, fh - 1

    def compute(self) -> dict:
        c = self.controls
        sizes = tuple(c[name].value for name in c if name.startswith("size"))
        ratios = tuple(sorted(c["ratios"].value))
        stride, position = c["stride"].value, (c["x"].value, c["y"].value)
        image_size = tuple(self.image.shape[-2:])
        fh, fw = feature_map_size(image_size, stride)
        anchors = anchors_at(position, sizes, ratios, stride) if ratios else torch.zeros(0, 4)
        rf = rpn_receptive_field(c["backbone"].value)[0] if c["backbone"].value else None
        return {
            "position": position, "centre": ((position[0] + 0.5) * stride, (position[1] + 0.5) * stride),
            "feature_size": (fh, fw), "stride": stride, "sizes": sizes, "ratios": ratios,
            "anchors": anchors, "k": len(anchors), "total_anchors": fh * fw * len(anchors),
            "window": window_box(position, stride), "receptive_field": rf,
            "receptive_field_box": receptive_field_box(position, stride, rf) if rf else None,
            "cross_boundary": int((~inside_image(anchors, image_size)).sum()) if len(anchors) else 0,
        }

    def draw(self):
        s, ax = self.state, self.ax
        viz.show_image(self.image, ax)
        fh, fw = s["feature_size"]
        stride = s["stride"]
        cx = (torch.arange(fw) + 0.5) * stride
        cy = (torch.arange(fh) + 0.5) * stride
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")
        ax.scatter(grid_x.reshape(-1), grid_y.reshape(-1), s=1.5, c="white", alpha=0.5, linewidths=0)
        drawn = [s["window"]]
        viz.draw_box_outline(ax, s["window"], color="#ffe119", linewidth=2.5, fill_alpha=0.15)
        if s["receptive_field_box"] is not None:
            viz.draw_box_outline(ax, s["receptive_field_box"], color="#42d4f4", linewidth=2, linestyle="--")
            drawn.append(s["receptive_field_box"])
        num_sizes = len(s["sizes"])
        for a, box in enumerate(s["anchors"]):
            viz.draw_box_outline(ax, box, color=viz.PALETTE[a % num_sizes], linewidth=1.8,
                                 linestyle=RATIO_STYLES[(a // num_sizes) % len(RATIO_STYLES)])
            drawn.append(box)
        ax.plot(*s["centre"], marker="+", color="red", markersize=12, mew=2)
        self._fit_view(ax, self.image.shape[-2:], drawn)
        ax.set_axis_on()
        handles = [Line2D([], [], color="#ffe119", lw=2.5, label=f"3x3 window ({3 * stride} px)")]
        if s["receptive_field"]:
            handles.append(Line2D([], [], color="#42d4f4", lw=2, ls="--",
                                  label=f"receptive field {s['receptive_field']} px"))
        handles += [Line2D([], [], color=viz.PALETTE[i], lw=2, label=f"size {size}")
                    for i, size in enumerate(s["sizes"])]
        handles += [Line2D([], [], color="black", lw=1.5, ls=RATIO_STYLES[i % len(RATIO_STYLES)],
                           label=f"ratio h/w {r:g}") for i, r in enumerate(s["ratios"])]
        ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.8)
        x, y = s["position"]
        ax.set_title(f"cell (x={x}, y={y}) of a {fh} x {fw} map (stride {stride}): {s['k']} anchors here,\n"
                     f"{fh} x {fw} x {s['k']} = {s['total_anchors']:,} in all; "
                     f"{s['cross_boundary']} of these {s['k']} cross the image border", fontsize=9)


def anchor_explorer(image=None, **kwargs) -> AnchorExplorer:
    """The sliding window, its receptive field and its k anchors on `image` (3, H, W); default: a
    sample photo rescaled to a shorter side of 600 px (Sec. 3.3). kwargs: sizes, ratios, stride,
    backbone ("zf", "vgg16", "tiny" or None), position (x, y)."""
    return AnchorExplorer(image, **kwargs)
