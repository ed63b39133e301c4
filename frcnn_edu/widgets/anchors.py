"""The sliding window at one feature-map position, its receptive field and its k anchors
([P] Sec. 3.1, 3.3): fe.widgets.anchor_explorer()."""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib import patheffects
from torch import nn

from ..anchors import generate_base_anchors, inside_image
from ..backbones import build_backbone, receptive_field
from ._base import (
    CONTROL_WIDTH,
    DESCRIPTION_WIDTH,
    DIFFERENT,
    FEATURE_CELLS,
    MIN_FONT_PT,
    RECEPTIVE_FIELD,
    _check_image,
    _Explorer,
    _slider,
    add_box,
    caption_html,
    error_message,
    legend_html,
    ratio_colour,
    sample_photo,
    show_background_image,
    size_style,
)


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
RATIO_STYLES = [size_style(i) for i in range(5)]   # kept for old code: line styles now mean sizes


def student_base_anchors(anchors_fn: Callable, sizes, ratios) -> torch.Tensor:
    """anchors_fn(sizes, ratios) -- the signature of exercise ex03 (check_anchors) -- as a float
    (len(ratios) * len(sizes), 4) tensor; ValueError with a short reason when it is not that."""
    got = anchors_fn(tuple(sizes), tuple(ratios))
    try:
        got = torch.as_tensor(got).detach().float().cpu()
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"returned {type(got).__name__}, not a (k, 4) tensor of boxes") from error
    k = len(ratios) * len(sizes)
    if tuple(got.shape) != (k, 4):
        raise ValueError(f"returned shape {tuple(got.shape)}; expected (len(ratios) * len(sizes), 4) = ({k}, 4)")
    return got


class AnchorExplorer(_Explorer):
    """The sliding window at one feature-map position, its receptive field and its k anchors.

    Controls: size1..sizeN (anchor sizes, sqrt of the area), ratios (height / width), stride,
    x and y (the feature-map position), backbone (whose receptive field to draw, + the 3x3 window).
    An anchor's colour is its ratio, its line style its size (_base.RATIO_COLOURS, SIZE_STYLES).
    state: position, centre, feature_size, anchors (k, 4), k, total_anchors (H' * W' * k),
    window (4,), receptive_field (px or None), receptive_field_box, cross_boundary (how many of the
    k anchors cross the image border); with anchors_fn also reference (k, 4) (the package's
    anchors), differing (rows where yours differ) and error (why your function could not be drawn).
    """

    def __init__(self, image=None, sizes=(128, 256, 512), ratios=(0.5, 1.0, 2.0), stride: int = 16,
                 backbone: str | None = "zf", position=None, anchors_fn: Callable | None = None):
        self.image = sample_photo() if image is None else _check_image(image)
        self.anchors_fn = anchors_fn
        height, width = self.image.shape[-2:]
        fh, fw = feature_map_size((height, width), stride)
        x, y = position if position is not None else (fw // 2, fh // 2)
        known = {value for _, value in RATIO_OPTIONS}
        options = list(RATIO_OPTIONS) + [(f"h/w {r:g}", float(r)) for r in ratios if float(r) not in known]
        style, layout = {"description_width": DESCRIPTION_WIDTH}, widgets.Layout(width=CONTROL_WIDTH)
        controls = {f"size{i + 1}": _slider(widgets.IntSlider, f"anchor size {i + 1}", int(s), 8, 1024, 8,
                                            tooltip=f"anchor size {i + 1}: sqrt of the area, in pixels")
                    for i, s in enumerate(sizes)}
        controls["ratios"] = widgets.SelectMultiple(
            options=options, value=tuple(float(r) for r in ratios), rows=len(options),
            description="ratios (h/w)", tooltip="aspect ratios height / width (ctrl-click: several)",
            style=style, layout=layout)
        controls["stride"] = widgets.SelectionSlider(
            options=sorted({4, 8, 16, 32, int(stride)}), value=int(stride), description="stride",
            continuous_update=True, tooltip="pixels per feature-map cell", style=style, layout=layout)
        controls["x"] = _slider(widgets.IntSlider, "x (column)", x, 0, fw - 1)
        controls["y"] = _slider(widgets.IntSlider, "y (row)", y, 0, fh - 1)
        controls["backbone"] = widgets.Dropdown(
            options=[("ZF + 3x3", "zf"), ("VGG-16 + 3x3", "vgg16"), ("tiny + 3x3", "tiny"), ("none", None)],
            value=backbone, description="receptive field", tooltip="whose receptive field to draw",
            style=style, layout=layout)
        self._dots = None
        self._build(controls, figsize=(6.4, 5.2))

    def setup(self):
        show_background_image(self.ax, self.image)
        self.ax.set_axis_on()
        self.ax.tick_params(labelsize=MIN_FONT_PT)
        self._centres = self.ax.scatter([], [], s=1.5, c="white", alpha=0.5, linewidths=0)
        self.live.append(self._centres)

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

    def _student_anchors(self, sizes, ratios, stride, position, reference) -> dict:
        """Your anchors_fn at this cell, compared with the package's: {anchors, differing, error}."""
        if self.anchors_fn is None:
            return {"anchors": reference, "differing": [], "error": None}
        if not ratios:
            return {"anchors": reference, "differing": [], "error": None}
        try:
            base = student_base_anchors(self.anchors_fn, sizes, ratios)
        except Exception as error:       # the student's code: any failure becomes a message
            return {"anchors": torch.zeros(0, 4), "differing": [], "error": error_message("your anchors_fn", error)}
        cx, cy = (position[0] + 0.5) * stride, (position[1] + 0.5) * stride
        anchors = base + torch.tensor([cx, cy, cx, cy])
        close = torch.isclose(anchors, reference, atol=1e-3, rtol=1e-5).all(dim=1)
        return {"anchors": anchors, "differing": torch.where(~close)[0].tolist(), "error": None}

    def compute(self) -> dict:
        c = self.controls
        sizes = tuple(c[name].value for name in c if name.startswith("size"))
        ratios = tuple(sorted(c["ratios"].value))
        stride, position = c["stride"].value, (c["x"].value, c["y"].value)
        image_size = tuple(self.image.shape[-2:])
        fh, fw = feature_map_size(image_size, stride)
        reference = anchors_at(position, sizes, ratios, stride) if ratios else torch.zeros(0, 4)
        mine = self._student_anchors(sizes, ratios, stride, position, reference)
        anchors = mine["anchors"]
        rf = rpn_receptive_field(c["backbone"].value)[0] if c["backbone"].value else None
        return {
            "position": position, "centre": ((position[0] + 0.5) * stride, (position[1] + 0.5) * stride),
            "feature_size": (fh, fw), "stride": stride, "sizes": sizes, "ratios": ratios,
            "anchors": anchors, "k": len(anchors), "total_anchors": fh * fw * len(anchors),
            "window": window_box(position, stride), "receptive_field": rf,
            "receptive_field_box": receptive_field_box(position, stride, rf) if rf else None,
            "cross_boundary": int((~inside_image(anchors, image_size)).sum()) if len(anchors) else 0,
            "reference": reference, "differing": mine["differing"], "error": mine["error"],
        }

    def draw(self):
        s, ax = self.state, self.ax
        fh, fw = s["feature_size"]
        stride = s["stride"]
        if self._dots != (fh, fw, stride):       # the anchor centres: new only with a new stride
            cx, cy = np.meshgrid((np.arange(fw) + 0.5) * stride, (np.arange(fh) + 0.5) * stride)
            self._centres.set_offsets(np.stack([cx.ravel(), cy.ravel()], axis=1))
            self._dots = (fh, fw, stride)
        window = s["window"].tolist()
        drawn = [window]
        add_box(ax, window, FEATURE_CELLS, linewidth=2.5, fill_alpha=0.15)
        if s["receptive_field_box"] is not None:
            field = s["receptive_field_box"].tolist()
            add_box(ax, field, RECEPTIVE_FIELD, linewidth=2, linestyle="--")
            drawn.append(field)
        num_sizes = max(len(s["sizes"]), 1)
        for a, box in enumerate(s["anchors"].tolist()):
            add_box(ax, box, ratio_colour(s["ratios"][a // num_sizes]), linewidth=1.8,
                    linestyle=size_style(a % num_sizes))
            drawn.append(box)
        for a in s["differing"]:                 # the package's anchor where yours differs
            box = s["reference"][a].tolist()
            add_box(ax, box, DIFFERENT, linewidth=2.5, halo=True)
            drawn.append(box)
        ax.plot(*s["centre"], marker="+", color=FEATURE_CELLS, markersize=12, mew=2.5,
                path_effects=[patheffects.withStroke(linewidth=4.5, foreground="black")])
        self._fit_view(ax, self.image.shape[-2:], drawn)
        x, y = s["position"]
        self.caption.value = caption_html(
            f"<b>cell (x={x}, y={y})</b> of a {fh} x {fw} map (stride {stride}): <b>{s['k']} anchors</b> here, "
            f"{fh} x {fw} x {s['k']} = {s['total_anchors']:,} in all; "
            f"{s['cross_boundary']} of these {s['k']} cross the image border")
        self.legend.value = legend_html(self._legend_entries())
        self._show_comparison()

    def _legend_entries(self) -> list:
        s = self.state
        entries = [dict(label=f"3x3 window ({3 * s['stride']} px)", color=FEATURE_CELLS, width=2.5)]
        if s["receptive_field"]:
            entries.append(dict(label=f"receptive field {s['receptive_field']} px", color=RECEPTIVE_FIELD,
                                style="--"))
        entries += [dict(label=f"ratio h/w {r:g}", color=ratio_colour(r), width=2.5) for r in s["ratios"]]
        entries += [dict(label=f"size {size}", color="black", style=size_style(i), width=1.5)
                    for i, size in enumerate(s["sizes"])]
        if s["differing"]:
            entries.append(dict(label="expected box (yours differs)", color=DIFFERENT, width=2.5, halo=True))
        return entries

    def _show_comparison(self):
        """The readout under the controls: how your anchors_fn compares with the package's."""
        s = self.state
        if self.anchors_fn is None:
            return
        if s["error"]:
            self.message.value = s["error"]
        elif s["differing"]:
            self.message.value = (f"<b>your anchors_fn: {len(s['differing'])} of {len(s['reference'])} boxes "
                                  f"differ</b> from fe.anchors.generate_base_anchors (rows {s['differing']}; "
                                  "black with a white edge: the expected boxes)")
        else:
            self.message.value = f"your anchors_fn: all {len(s['reference'])} boxes match the package's."


def anchor_explorer(image=None, **kwargs) -> AnchorExplorer:
    """The sliding window, its receptive field and its k anchors on `image` (3, H, W); default: a
    sample photo rescaled to a shorter side of 600 px (Sec. 3.3). kwargs: sizes, ratios, stride,
    backbone ("zf", "vgg16", "tiny" or None), position (x, y), anchors_fn (your
    fn(sizes, ratios) -> (len(ratios) * len(sizes), 4) of exercise ex03: drawn instead of the
    package's anchors, with the boxes where it differs)."""
    return AnchorExplorer(image, **kwargs)
