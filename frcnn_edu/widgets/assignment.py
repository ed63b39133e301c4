"""Which anchors are positive, negative or ignored for one ground-truth box (Sec. 3.1.2):
fe.widgets.assignment_explorer()."""
from __future__ import annotations

import ipywidgets as widgets
import torch

from .. import viz
from ..anchors import AnchorGenerator
from ..boxes import box_iou
from ..rpn import assign_anchor_targets
from ._base import GROUND_TRUTH, IGNORED, NEGATIVE, POSITIVE, _check_image, _Explorer, _slider, shapes_sample
from .anchors import feature_map_size


def label_anchors(anchors: torch.Tensor, gt_boxes: torch.Tensor, image_size, pos_iou: float = 0.7,
                  neg_iou: float = 0.3, allowed_border: float = 0.0) -> torch.Tensor:
    """Labels (A,): 1 positive, 0 negative, -1 ignored -- fe.rpn.assign_anchor_targets with
    sample=False (every anchor labelled, no random mini-batch). allowed_border=inf keeps the
    cross-boundary anchors."""
    labels, _ = assign_anchor_targets(anchors, gt_boxes, image_size, pos_iou=pos_iou,
                                      neg_iou=neg_iou, allowed_border=allowed_border, sample=False)
    return labels


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


def assignment_explorer(image=None, gt_box=None, **kwargs) -> AssignmentExplorer:
    """Positive / negative / ignored anchors for one box; default: a shapes image and its first
    box, the shapes_tiny anchors (32, 64, 128 px, stride 16). kwargs: sizes, ratios, stride,
    pos_iou, neg_iou."""
    return AssignmentExplorer(image, gt_box, **kwargs)
