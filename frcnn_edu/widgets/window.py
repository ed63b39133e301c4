"""The RPN's sliding window, moved by hand: one 3x3 window on the feature map and what it sees in
the image ([P] Sec. 3.1): fe.widgets.window_explorer()."""
from __future__ import annotations

import ipywidgets as widgets
import torch
import torch.nn.functional as F
from matplotlib import patheffects

from ._base import (
    CONTROL_WIDTH,
    DESCRIPTION_WIDTH,
    FEATURE_CELLS,
    MIN_FONT_PT,
    RECEPTIVE_FIELD,
    _check_image,
    _Explorer,
    _slider,
    add_box,
    caption_html,
    legend_html,
    sample_photo,
    show_background_image,
)
from .anchors import feature_map_size, receptive_field_box, rpn_receptive_field, window_box


def cell_colours(image: torch.Tensor, stride: int) -> torch.Tensor:
    """(3, H, W) image -> (ceil(H / stride), ceil(W / stride), 3): each feature cell painted with
    the mean colour of the stride x stride patch it stands for (a picture of the map's geometry;
    the real cell holds 512 numbers for VGG-16)."""
    height, width = image.shape[-2:]
    fh, fw = feature_map_size((height, width), stride)
    padded = F.pad(image, (0, fw * stride - width, 0, fh * stride - height), mode="replicate")
    return F.avg_pool2d(padded[None], stride)[0].permute(1, 2, 0).clamp(0, 1)


def inside_share(box: torch.Tensor, image_size) -> float:
    """The share of box (4,) = (x1, y1, x2, y2) that lies inside an image of image_size (H, W)."""
    height, width = image_size
    x1, y1, x2, y2 = box.tolist()
    inside = max(0.0, min(x2, width) - max(x1, 0.0)) * max(0.0, min(y2, height) - max(y1, 0.0))
    return inside / max((x2 - x1) * (y2 - y1), 1e-9)


class WindowExplorer(_Explorer):
    """The n x n sliding window at one feature-map position (left) and the image pixels it covers
    and sees (right).

    Controls: x and y (the window's centre cell), backbone (whose receptive field to draw).
    state: position, feature_size, stride, window (4,) the pixels of the window's 3 x 3 cells,
    cell (4,) the centre cell's stride x stride patch, receptive_field (px),
    receptive_field_box (4,), field_inside (share of the field inside the image).
    """

    def __init__(self, image=None, stride: int = 16, backbone: str = "vgg16", position=None):
        self.image = sample_photo("coffee") if image is None else _check_image(image)
        self.stride = int(stride)
        fh, fw = feature_map_size(self.image.shape[-2:], self.stride)
        x, y = position if position is not None else (fw // 2, fh // 2)
        controls = {
            "x": _slider(widgets.IntSlider, "x (column)", x, 0, fw - 1),
            "y": _slider(widgets.IntSlider, "y (row)", y, 0, fh - 1),
            "backbone": widgets.Dropdown(
                options=[("VGG-16 + 3x3", "vgg16"), ("ZF + 3x3", "zf")], value=backbone,
                description="receptive field", tooltip="whose receptive field to draw",
                style={"description_width": DESCRIPTION_WIDTH}, layout=widgets.Layout(width=CONTROL_WIDTH)),
        }
        self._build(controls, figsize=(9.6, 3.9), ncols=2)

    def setup(self):
        fh, fw = feature_map_size(self.image.shape[-2:], self.stride)
        cells, photo = self.axes
        cells.imshow(cell_colours(self.image, self.stride).numpy(), extent=(0, fw, fh, 0),
                     interpolation="nearest")
        for y in range(fh + 1):
            cells.axhline(y, color="white", linewidth=0.3, alpha=0.6)
        for x in range(fw + 1):
            cells.axvline(x, color="white", linewidth=0.3, alpha=0.6)
        cells.set_xlim(-0.5, fw + 0.5)
        cells.set_ylim(fh + 0.5, -0.5)
        cells.set_xlabel(f"feature map: {fh} x {fw} cells", fontsize=MIN_FONT_PT + 1)
        cells.tick_params(labelsize=MIN_FONT_PT)
        show_background_image(photo, self.image)
        photo.set_axis_on()
        photo.tick_params(labelsize=MIN_FONT_PT)
        height, width = self.image.shape[-2:]
        photo.set_xlabel(f"image: {height} x {width} pixels", fontsize=MIN_FONT_PT + 1)

    def compute(self) -> dict:
        c = self.controls
        position = (c["x"].value, c["y"].value)
        x, y = position
        size, stride = rpn_receptive_field(c["backbone"].value)
        field = receptive_field_box(position, self.stride, size)
        cell = torch.tensor([x * self.stride, y * self.stride, (x + 1) * self.stride, (y + 1) * self.stride],
                            dtype=torch.float32)
        return {
            "position": position, "stride": self.stride,
            "feature_size": feature_map_size(self.image.shape[-2:], self.stride),
            "window": window_box(position, self.stride), "cell": cell,
            "receptive_field": size, "receptive_field_box": field,
            "field_inside": inside_share(field, self.image.shape[-2:]),
        }

    def draw(self):
        s = self.state
        cells, photo = self.axes
        x, y = s["position"]
        outline = [patheffects.withStroke(linewidth=4.5, foreground="black")]
        add_box(cells, (x - 1, y - 1, x + 2, y + 2), FEATURE_CELLS, linewidth=2.5, fill_alpha=0.25)
        add_box(cells, (x, y, x + 1, y + 1), FEATURE_CELLS, linewidth=1.5, fill_alpha=0.8)
        window, field = s["window"].tolist(), s["receptive_field_box"].tolist()
        add_box(photo, window, FEATURE_CELLS, linewidth=2.5, fill_alpha=0.15)
        add_box(photo, s["cell"].tolist(), FEATURE_CELLS, linewidth=1.5, fill_alpha=0.8)
        add_box(photo, field, RECEPTIVE_FIELD, linewidth=2.5, linestyle="--", halo=True)
        centre = ((x + 0.5) * s["stride"], (y + 0.5) * s["stride"])
        photo.plot(*centre, marker="+", color=FEATURE_CELLS, markersize=12, mew=2.5, path_effects=outline)
        self._fit_view(photo, self.image.shape[-2:], [window, field])
        fh, fw = s["feature_size"]
        size = s["receptive_field"]
        self.caption.value = caption_html(
            f"<b>window centred on cell (x={x}, y={y})</b> of the {fh} x {fw} map: its 3 x 3 cells are "
            f"{3 * s['stride']} x {3 * s['stride']} pixels of the image, but through the backbone the window "
            f"sees a <b>{size} x {size}</b> square around ({centre[0]:g}, {centre[1]:g}); "
            f"{100 * s['field_inside']:.0f}% of it lies inside the image (the rest is zero padding)")
        self.legend.value = legend_html([
            dict(label="the 3x3 window (its centre cell filled)", color=FEATURE_CELLS, width=2.5),
            dict(label=f"receptive field {size} px", color=RECEPTIVE_FIELD, style="--", halo=True),
        ])


def window_explorer(image=None, stride: int = 16, backbone: str = "vgg16", position=None) -> WindowExplorer:
    """Move the RPN's 3x3 window over the feature map and see the image region each position
    covers and sees ([P] Sec. 3.1). image: (3, H, W) in [0, 1] (default: the coffee photo, shorter
    side 600); position: (x, y) of the first centre cell (default: the middle of the map)."""
    return WindowExplorer(image, stride=stride, backbone=backbone, position=position)


__all__ = ["WindowExplorer", "window_explorer", "cell_colours", "inside_share"]

