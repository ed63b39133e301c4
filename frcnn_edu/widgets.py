"""Interactive explorers for the notebooks: anchors, anchor labels, proposals and RoI pooling.

Each explorer opens with one line, on a default picture or on your own image (3, H, W):

    fe.widgets.anchor_explorer()             # the 3x3 window, its receptive field, the k anchors
    fe.widgets.assignment_explorer()         # positive / negative / ignored anchors (Sec. 3.1.2)
    fe.widgets.proposal_explorer()           # NMS threshold and top-N vs recall (Sec. 3.3)
    fe.widgets.roi_pool_explorer()           # RoI -> feature grid -> bins -> pooled output ([F])

Put the call last in a cell (or `display(...)` it). The numbers come from small functions that
call the package's own code -- `anchors_at`, `window_box`, `rpn_receptive_field`,
`label_anchors`, `kept_proposals`, `pooling_bins`, `pool_one_roi` -- which you can import and test
on their own. The explorer classes only wire sliders to them and draw. Every explorer has

    .widget     the ipywidgets container (what is displayed)
    .controls   {name: slider}; setting `.controls["x"].value = 5` redraws, as dragging does
    .fig, .ax   the matplotlib figure and its main axes
    .state      the numbers of the last redraw (counts, kept indices, bins, ...)
    .png        the last drawing as PNG bytes
    .redraw()   recompute and redraw; the sliders' observers call it
    .set(**values)  set several controls with one redraw, e.g. .set(x=10, y=4)

The figure is a plain matplotlib `Figure` rendered to a PNG inside an `ipywidgets.Output`
(clear_output(wait=True), then display), so the explorers work with the inline backend and need
no ipympl.
"""
from __future__ import annotations

import contextlib
import functools
import io
import math
from pathlib import Path

import ipywidgets as widgets
import matplotlib
import torch
import torch.nn.functional as F
from IPython.display import Image, clear_output, display
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import nn

from . import viz
from .anchors import AnchorGenerator, generate_base_anchors, inside_image
from .backbones import build_backbone, receptive_field
from .boxes import box_iou, clip_boxes, nms, remove_small_boxes
from .evaluate import proposal_recall
from .roi import roi_pool, roi_pool_bins
from .rpn import assign_anchor_targets

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = REPO / "data" / "checkpoints" / "shapes_tiny.pt"
POSITIVE, NEGATIVE, IGNORED, GROUND_TRUTH = "#3cb44b", "#4363d8", "#a9a9a9", "#e6194b"


# ----------------------------------------------------------------------------------------------
# Default pictures
# ----------------------------------------------------------------------------------------------
def resize_shorter_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """Rescale (3, H, W) so that the shorter side is `size` ([P] Sec. 3.3 uses 600)."""
    height, width = image.shape[-2:]
    scale = size / min(height, width)
    new_size = (round(height * scale), round(width * scale))
    return F.interpolate(image[None], size=new_size, mode="bilinear", align_corners=False,
                         antialias=True)[0].clamp(0, 1)


def sample_photo(name: str = "chelsea", shorter_side: int | None = 600) -> torch.Tensor:
    """A shipped photo (frcnn_edu.samples), rescaled like the paper's input (shorter side 600)."""
    from .samples import load_sample_image
    image = load_sample_image(name)
    return image if shorter_side is None else resize_shorter_side(image, shorter_side)


def shapes_sample(index: int = 0, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """One 256 x 256 image of the built-in shapes data and its target."""
    from .data import ShapesDataset
    return ShapesDataset(num_images=index + 1, seed=seed)[index]


def _check_image(image) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a (3, H, W) float tensor in [0, 1], got {shape}")
    return image.detach().float().cpu()


# ----------------------------------------------------------------------------------------------
# The computations, apart from the drawing
# ----------------------------------------------------------------------------------------------
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


@functools.lru_cache(maxsize=None)
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


def label_anchors(anchors: torch.Tensor, gt_boxes: torch.Tensor, image_size, pos_iou: float = 0.7,
                  neg_iou: float = 0.3, allowed_border: float = 0.0) -> torch.Tensor:
    """Labels (A,): 1 positive, 0 negative, -1 ignored -- fe.rpn.assign_anchor_targets with
    sample=False (every anchor labelled, no random mini-batch). allowed_border=inf keeps the
    cross-boundary anchors."""
    labels, _ = assign_anchor_targets(anchors, gt_boxes, image_size, pos_iou=pos_iou,
                                      neg_iou=neg_iou, allowed_border=allowed_border, sample=False)
    return labels


def kept_proposals(boxes: torch.Tensor, scores: torch.Tensor, nms_iou: float = 0.7,
                   top_n: int = 300) -> torch.Tensor:
    """Indices (K,) of the proposals kept by NMS at nms_iou, then the top_n best ([P] Sec. 3.3)."""
    return nms(boxes, scores, nms_iou)[:top_n]


def recall_of(proposals: torch.Tensor, gt_boxes: torch.Tensor, iou_thresholds=(0.5, 0.7)) -> dict:
    """{iou: fraction of gt boxes with a proposal of IoU >= iou} (fe.evaluate.proposal_recall)."""
    n = max(len(proposals), 1)
    recall = proposal_recall([proposals], [gt_boxes], num_proposals=(n,), iou_thresholds=iou_thresholds)
    return {t: recall[t][n] for t in recall}


def jittered_proposals(gt_boxes: torch.Tensor, image_size, num_per_box: int = 60,
                       num_background: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-in proposals when no trained RPN is at hand: boxes (P, 4), scores (P,), best first.

    Around each ground-truth box, num_per_box boxes with jittered centres (std 15% of the size)
    and sizes (x exp(N(0, 0.25^2))), scored by their IoU with the box plus noise; and
    num_background random boxes with low scores. Clipped to the image.
    """
    g = torch.Generator().manual_seed(seed)
    height, width = image_size
    parts = []
    if len(gt_boxes):
        gt = gt_boxes.float().repeat_interleave(num_per_box, dim=0)
        w, h = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
        cx = gt[:, 0] + w / 2 + 0.15 * w * torch.randn(len(gt), generator=g)
        cy = gt[:, 1] + h / 2 + 0.15 * h * torch.randn(len(gt), generator=g)
        w = w * torch.exp(0.25 * torch.randn(len(gt), generator=g))
        h = h * torch.exp(0.25 * torch.randn(len(gt), generator=g))
        parts.append(torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1))
    xy = torch.rand(num_background, 2, generator=g) * torch.tensor([width, height])
    wh = 16 + torch.rand(num_background, 2, generator=g) * torch.tensor([width, height]) / 2
    parts.append(torch.cat([xy - wh / 2, xy + wh / 2], dim=1))
    boxes = clip_boxes(torch.cat(parts), image_size)
    boxes = boxes[remove_small_boxes(boxes, 2.0)]
    if len(gt_boxes):
        scores = box_iou(boxes, gt_boxes.float()).max(dim=1).values
    else:
        scores = torch.zeros(len(boxes))
    scores = (scores + 0.1 * torch.randn(len(boxes), generator=g)).clamp(0.001, 0.999)
    order = scores.argsort(descending=True)
    return boxes[order], scores[order]


@torch.no_grad()
def proposals_before_nms(model, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A trained model's RPN proposals for one image with its NMS switched off: boxes (P, 4),
    scores (P,) best first -- the input NMS works on (after top-N, decoding, clipping and the
    small-box filter). Switching off = threshold 1.0 (suppress only IoU > 1) and no post-NMS cut."""
    rpn = model.rpn
    saved = rpn.nms_iou, dict(rpn.post_nms_top_n)
    rpn.nms_iou, rpn.post_nms_top_n["test"] = 1.0, rpn.pre_nms_top_n["test"]
    try:
        out = model.propose([image])[0]
    finally:
        rpn.nms_iou, rpn.post_nms_top_n = saved[0], saved[1]
    return out["boxes"].cpu(), out["scores"].cpu()


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


# ----------------------------------------------------------------------------------------------
# The explorers
# ----------------------------------------------------------------------------------------------
def _slider(kind, description, value, minimum, maximum, step=1, **kwargs):
    return kind(value=value, min=minimum, max=maximum, step=step, description=description,
                continuous_update=False, style={"description_width": "90px"},
                layout=widgets.Layout(width="310px"), **kwargs)


class _Explorer:
    """Plumbing shared by the explorers: controls -> compute() -> draw() -> PNG in an Output."""

    dpi = 72

    def _build(self, controls: dict, figsize, ncols: int = 1):
        self.controls = controls
        self.fig = Figure(figsize=figsize)
        self.fig.subplots_adjust(left=0.07, right=0.98, bottom=0.05, top=0.88, wspace=0.15)
        FigureCanvasAgg(self.fig)
        axes = self.fig.subplots(1, ncols, squeeze=False)[0]
        self.ax = axes[0]
        self.axes = list(axes)
        self.state: dict = {}
        self.png = b""
        self.redraw_count = 0
        self._quiet = False
        self.output = widgets.Output(layout=widgets.Layout(min_width=f"{int(figsize[0] * self.dpi)}px"))
        for control in controls.values():
            control.observe(self._on_change, names="value")
        self.widget = widgets.HBox([widgets.VBox(list(controls.values())), self.output])
        self.redraw()

    @contextlib.contextmanager
    def _hold(self):
        """Change controls without a redraw for each change."""
        self._quiet, before = True, self._quiet
        try:
            yield
        finally:
            self._quiet = before

    def _on_change(self, change):
        if self._quiet:
            return
        with self._hold():
            self._constrain(change)
        self.redraw()

    def _constrain(self, change):
        """Keep the controls consistent after `change` (e.g. neg_iou <= pos_iou)."""

    def compute(self) -> dict:
        raise NotImplementedError

    def draw(self):
        raise NotImplementedError

    def redraw(self) -> dict:
        """Recompute the state from the controls, redraw the figure and show it."""
        self.state = self.compute()
        for ax in self.axes:
            ax.clear()
        self.draw()
        buffer = io.BytesIO()
        self.fig.savefig(buffer, format="png", dpi=self.dpi)
        self.png = buffer.getvalue()
        self.redraw_count += 1
        with self.output:
            clear_output(wait=True)
            display(Image(data=self.png, format="png"))
        return self.state

    def set(self, **values) -> dict:
        """Set several controls at once with a single redraw: ex.set(x=10, y=4). Returns .state."""
        unknown = sorted(set(values) - set(self.controls))
        if unknown:
            raise ValueError(f"unknown control(s) {unknown}; this explorer has {sorted(self.controls)}")
        with self._hold():
            for name, value in values.items():
                old = self.controls[name].value
                self.controls[name].value = value
                self._constrain({"owner": self.controls[name], "old": old, "new": value})
        return self.redraw()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _fit_view(self, ax, image_size, boxes):
        """Show the image and everything drawn around it (large anchors cross the border)."""
        height, width = image_size
        x1, y1, x2, y2 = 0.0, 0.0, float(width), float(height)
        for box in boxes:
            bx1, by1, bx2, by2 = (float(v) for v in box)
            x1, y1, x2, y2 = min(x1, bx1), min(y1, by1), max(x2, bx2), max(y2, by2)
        margin = 0.02 * max(x2 - x1, y2 - y1)
        ax.set_xlim(x1 - margin, x2 + margin)
        ax.set_ylim(y2 + margin, y1 - margin)


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


class AssignmentExplorer(_Explorer):
    """Which anchors are positive, negative or ignored for one ground-truth box (Sec. 3.1.2).

    Each feature cell shows its k anchors as a small grid of dots (rows: ratios, columns: sizes)
    coloured by label; positive anchors are drawn as boxes (dashed: positive only by the
    highest-IoU rule). Controls: pos_iou, neg_iou, x, y, w, h (the box), cross_boundary
    ("ignore" or "use" the anchors that cross the border).
    state: gt_box, labels (A,), counts {"positive", "negative", "ignored"}, positive (indices),
    by_best_rule (positives whose IoU is <= pos_iou), max_iou (A,).
    """

    def __init__(self, image=None, gt_box=None, sizes=(32, 64, 128), ratios=(0.5, 1.0, 2.0),
                 stride: int = 16, pos_iou: float = 0.7, neg_iou: float = 0.3):
        if image is None:
            image, target = shapes_sample()
            gt_box = target["boxes"][0] if gt_box is None else gt_box
        self.image = _check_image(image)
        height, width = self.image.shape[-2:]
        if gt_box is None:
            gt_box = (width * 3 / 8, height * 3 / 8, width * 5 / 8, height * 5 / 8)
        x1, y1, x2, y2 = (int(round(float(v))) for v in gt_box)
        self.sizes, self.ratios, self.stride = tuple(sizes), tuple(ratios), stride
        self.feature_size = feature_map_size((height, width), stride)
        self.anchors = AnchorGenerator(sizes, ratios, stride)(self.feature_size)
        controls = {
            "pos_iou": _slider(widgets.FloatSlider, "positive IoU >", pos_iou, 0.05, 1.0, 0.05),
            "neg_iou": _slider(widgets.FloatSlider, "negative IoU <", neg_iou, 0.0, 1.0, 0.05),
            "x": _slider(widgets.IntSlider, "box x1", x1, 0, width - 1),
            "y": _slider(widgets.IntSlider, "box y1", y1, 0, height - 1),
            "w": _slider(widgets.IntSlider, "box width", max(x2 - x1, 1), 1, width),
            "h": _slider(widgets.IntSlider, "box height", max(y2 - y1, 1), 1, height),
            "cross_boundary": widgets.ToggleButtons(
                options=["ignore", "use"], value="ignore", description="border anchors",
                style={"description_width": "90px", "button_width": "70px"}),
        }
        self._build(controls, figsize=(6.5, 6.5))

    def _constrain(self, change):
        pos, neg = self.controls["pos_iou"], self.controls["neg_iou"]
        if neg.value > pos.value:          # a negative threshold above the positive one: move the other
            if change["owner"] is pos:
                neg.value = pos.value
            elif change["owner"] is neg:
                pos.value = neg.value

    def compute(self) -> dict:
        c = self.controls
        height, width = self.image.shape[-2:]
        x1, y1 = c["x"].value, c["y"].value
        gt = torch.tensor([[x1, y1, min(x1 + c["w"].value, width), min(y1 + c["h"].value, height)]],
                          dtype=torch.float32)
        border = 0.0 if c["cross_boundary"].value == "ignore" else float("inf")
        labels = label_anchors(self.anchors, gt, (height, width), c["pos_iou"].value,
                               c["neg_iou"].value, allowed_border=border)
        max_iou = box_iou(self.anchors, gt).max(dim=1).values
        positive = torch.where(labels == 1)[0]
        by_best = positive[max_iou[positive] <= c["pos_iou"].value]
        return {
            "gt_box": gt[0], "labels": labels, "max_iou": max_iou,
            "counts": {"positive": int((labels == 1).sum()), "negative": int((labels == 0).sum()),
                       "ignored": int((labels == -1).sum())},
            "positive": positive.tolist(), "by_best_rule": by_best.tolist(),
        }

    def _dot_positions(self) -> torch.Tensor:
        """(A, 2) where to draw each anchor's dot: its cell centre + a small offset per anchor."""
        k_sizes, k_ratios = len(self.sizes), len(self.ratios)
        a = torch.arange(k_sizes * k_ratios)
        step = self.stride / (max(k_sizes, k_ratios) + 1)
        dx = (a % k_sizes - (k_sizes - 1) / 2) * step
        dy = (a // k_sizes - (k_ratios - 1) / 2) * step
        centres = (self.anchors[:, :2] + self.anchors[:, 2:]) / 2
        return centres + torch.stack([dx, dy], dim=1).repeat(len(self.anchors) // len(a), 1)

    def draw(self):
        s, ax = self.state, self.ax
        viz.show_image(self.image, ax)
        dots = self._dot_positions()
        for value, colour, name in ((-1, IGNORED, "ignored"), (0, NEGATIVE, "negative"), (1, POSITIVE, "positive")):
            chosen = s["labels"] == value
            ax.scatter(dots[chosen, 0], dots[chosen, 1], s=9, c=colour, linewidths=0,
                       label=f"{name} ({s['counts'][name]})")
        best = set(s["by_best_rule"])
        for a in s["positive"]:
            viz.draw_box_outline(ax, self.anchors[a], color=POSITIVE, linewidth=2,
                                 linestyle="--" if a in best else "-")
        viz.draw_box_outline(ax, s["gt_box"], color=GROUND_TRUTH, linewidth=2.5)
        self._fit_view(ax, self.image.shape[-2:], [self.anchors[a] for a in s["positive"]])
        ax.legend(loc="upper right", fontsize=7, markerscale=3, framealpha=0.8)
        c = s["counts"]
        ax.set_title(f"{c['positive']} positive ({len(best)} only by the highest-IoU rule, dashed), "
                     f"{c['negative']} negative,\n{c['ignored']} ignored of {len(self.anchors):,} anchors "
                     f"(IoU > {self.controls['pos_iou'].value:.2f} positive, "
                     f"< {self.controls['neg_iou'].value:.2f} negative)", fontsize=9)


class ProposalExplorer(_Explorer):
    """NMS and the top-N cut over a set of scored proposals, and the recall they leave (Sec. 3.3).

    Proposals: `boxes`/`scores` if given; else the shipped checkpoint's RPN proposals before NMS
    (data/checkpoints/shapes_tiny.pt), or, without it, random boxes jittered around the ground
    truth. Controls: nms_iou, top_n. state: kept (indices into the proposals), num_after_nms,
    num_proposals, recall {0.5: r, 0.7: r}, source.
    """

    def __init__(self, image=None, gt_boxes=None, boxes=None, scores=None, checkpoint=DEFAULT_CHECKPOINT,
                 nms_iou: float = 0.7, top_n: int = 50, seed: int = 0):
        if image is None:
            image, target = shapes_sample(seed=seed)
            gt_boxes = target["boxes"] if gt_boxes is None else gt_boxes
        self.image = _check_image(image)
        image_size = tuple(self.image.shape[-2:])
        self.gt_boxes = torch.zeros(0, 4) if gt_boxes is None else torch.as_tensor(gt_boxes).float().reshape(-1, 4)
        if boxes is not None:
            self.boxes = torch.as_tensor(boxes).float().reshape(-1, 4)
            self.scores = (torch.as_tensor(scores).float() if scores is not None
                           else torch.linspace(1, 0, len(self.boxes)))
            self.source = "given proposals"
        elif checkpoint is not None and Path(checkpoint).is_file():
            from .checkpoints import load_model
            model = load_model(checkpoint, device="cpu")
            self.boxes, self.scores = proposals_before_nms(model, self.image)
            self.source = f"RPN of {Path(checkpoint).name}, before NMS"
        else:
            self.boxes, self.scores = jittered_proposals(self.gt_boxes, image_size, seed=seed)
            self.source = "random boxes jittered around the ground truth"
        n = max(len(self.boxes), 1)
        controls = {
            "nms_iou": _slider(widgets.FloatSlider, "NMS IoU", nms_iou, 0.05, 1.0, 0.05),
            "top_n": _slider(widgets.IntSlider, "top N", min(top_n, n), 1, n),
        }
        self._build(controls, figsize=(6.5, 6.5))

    def compute(self) -> dict:
        c = self.controls
        after_nms = nms(self.boxes, self.scores, c["nms_iou"].value)
        kept = after_nms[:c["top_n"].value]
        return {"kept": kept.tolist(), "num_after_nms": len(after_nms), "num_proposals": len(self.boxes),
                "recall": recall_of(self.boxes[kept], self.gt_boxes), "source": self.source}

    def draw(self):
        s, ax = self.state, self.ax
        viz.show_image(self.image, ax)
        kept = s["kept"]
        cmap = matplotlib.colormaps["viridis"]
        for i in reversed(kept):                 # the best last, on top
            viz.draw_box_outline(ax, self.boxes[i], color=cmap(float(self.scores[i])), linewidth=1.0)
        for box in self.gt_boxes:
            viz.draw_box_outline(ax, box, color=GROUND_TRUTH, linewidth=2.5, linestyle="--")
        r = s["recall"]
        ax.set_title(f"NMS at IoU {self.controls['nms_iou'].value:.2f} keeps {s['num_after_nms']} of "
                     f"{s['num_proposals']}; the top {len(kept)} drawn (colour = score)\n"
                     f"recall of the {len(self.gt_boxes)} boxes (red): {r[0.5]:.2f} at IoU 0.5, "
                     f"{r[0.7]:.2f} at IoU 0.7\n({s['source']})", fontsize=9)


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


# ----------------------------------------------------------------------------------------------
# One line each
# ----------------------------------------------------------------------------------------------
def anchor_explorer(image=None, **kwargs) -> AnchorExplorer:
    """The sliding window, its receptive field and its k anchors on `image` (3, H, W); default: a
    sample photo rescaled to a shorter side of 600 px (Sec. 3.3). kwargs: sizes, ratios, stride,
    backbone ("zf", "vgg16", "tiny" or None), position (x, y)."""
    return AnchorExplorer(image, **kwargs)


def assignment_explorer(image=None, gt_box=None, **kwargs) -> AssignmentExplorer:
    """Positive / negative / ignored anchors for one box; default: a shapes image and its first
    box, the shapes_tiny anchors (32, 64, 128 px, stride 16). kwargs: sizes, ratios, stride,
    pos_iou, neg_iou."""
    return AssignmentExplorer(image, gt_box, **kwargs)


def proposal_explorer(image=None, gt_boxes=None, boxes=None, scores=None, **kwargs) -> ProposalExplorer:
    """NMS threshold and top-N vs recall; default: a shapes image, the shipped checkpoint's
    proposals (or jittered boxes without it). kwargs: checkpoint, nms_iou, top_n, seed."""
    return ProposalExplorer(image, gt_boxes, boxes, scores, **kwargs)


def roi_pool_explorer(image=None, features=None, **kwargs) -> RoIPoolExplorer:
    """A RoI through RoI max pooling; default: a sample photo and its brightness averaged over
    16 x 16 cells as the feature map. kwargs: stride, roi, output_size."""
    return RoIPoolExplorer(image, features, **kwargs)
