"""Which anchors are positive, negative or ignored for one ground-truth box (Sec. 3.1.2):
fe.widgets.assignment_explorer()."""
from __future__ import annotations

from collections.abc import Callable

import ipywidgets as widgets
import torch

from ..anchors import AnchorGenerator
from ..boxes import box_iou
from ..rpn import assign_anchor_targets
from ._base import (
    DESCRIPTION_WIDTH,
    DIFFERENT,
    GROUND_TRUTH,
    HALO,
    IGNORED,
    NEGATIVE,
    POSITIVE,
    _check_image,
    _Explorer,
    _slider,
    add_box,
    caption_html,
    error_message,
    legend_html,
    shapes_sample,
    show_background_image,
)
from .anchors import feature_map_size


def label_anchors(anchors: torch.Tensor, gt_boxes: torch.Tensor, image_size, pos_iou: float = 0.7,
                  neg_iou: float = 0.3, allowed_border: float = 0.0) -> torch.Tensor:
    """Labels (A,): 1 positive, 0 negative, -1 ignored -- fe.rpn.assign_anchor_targets with
    sample=False (every anchor labelled, no random mini-batch). allowed_border=inf keeps the
    cross-boundary anchors."""
    labels, _ = assign_anchor_targets(anchors, gt_boxes, image_size, pos_iou=pos_iou,
                                      neg_iou=neg_iou, allowed_border=allowed_border, sample=False)
    return labels


def student_labels(assign_fn: Callable, anchors: torch.Tensor, gt_boxes: torch.Tensor, image_size,
                   pos_iou: float, neg_iou: float) -> torch.Tensor:
    """assign_fn(anchors, gt_boxes, image_size, pos_iou, neg_iou) -- the signature of exercise ex05
    (check_assign) -- as (A,) int64 labels; ValueError with a short reason when it is not that."""
    got = assign_fn(anchors.clone(), gt_boxes.clone(), tuple(image_size), pos_iou, neg_iou)
    try:
        got = torch.as_tensor(got).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"returned {type(got).__name__}, not an (A,) tensor of labels") from error
    if tuple(got.shape) != (len(anchors),):
        raise ValueError(f"returned shape {tuple(got.shape)}; expected (A,) = ({len(anchors)},), one label per anchor")
    return got.long()


class AssignmentExplorer(_Explorer):
    """Which anchors are positive, negative or ignored for one ground-truth box (Sec. 3.1.2).

    Each feature cell shows its k anchors as a small grid of dots (rows: ratios, columns: sizes)
    coloured by label; positive anchors are drawn as boxes (dashed: positive only by the
    highest-IoU rule). Controls: pos_iou, neg_iou, x, y, w, h (the box), cross_boundary
    ("ignore" or "use" the anchors that cross the border).
    state: gt_box, labels (A,), counts {"positive", "negative", "ignored"}, positive (indices),
    by_best_rule (positives whose IoU is <= pos_iou), max_iou (A,); with assign_fn also reference
    (the package's labels), differing (anchors where yours differ) and error.
    """

    def __init__(self, image=None, gt_box=None, sizes=(32, 64, 128), ratios=(0.5, 1.0, 2.0),
                 stride: int = 16, pos_iou: float = 0.7, neg_iou: float = 0.3,
                 assign_fn: Callable | None = None):
        if image is None:
            image, target = shapes_sample()
            gt_box = target["boxes"][0] if gt_box is None else gt_box
        self.image = _check_image(image)
        self.assign_fn = assign_fn
        height, width = self.image.shape[-2:]
        if gt_box is None:
            gt_box = (width * 3 / 8, height * 3 / 8, width * 5 / 8, height * 5 / 8)
        x1, y1, x2, y2 = (int(round(float(v))) for v in gt_box)
        self.sizes, self.ratios, self.stride = tuple(sizes), tuple(ratios), stride
        self.feature_size = feature_map_size((height, width), stride)
        self.anchors = AnchorGenerator(sizes, ratios, stride)(self.feature_size)
        self._dots = self._dot_positions().numpy()
        controls = {
            "pos_iou": _slider(widgets.FloatSlider, "positive IoU >", pos_iou, 0.05, 1.0, 0.05,
                               tooltip="an anchor with IoU above this is positive"),
            "neg_iou": _slider(widgets.FloatSlider, "negative IoU <", neg_iou, 0.0, 1.0, 0.05,
                               tooltip="an anchor with IoU below this (with every box) is negative"),
            "x": _slider(widgets.IntSlider, "box x1", x1, 0, width - 1),
            "y": _slider(widgets.IntSlider, "box y1", y1, 0, height - 1),
            "w": _slider(widgets.IntSlider, "box width", max(x2 - x1, 1), 1, width),
            "h": _slider(widgets.IntSlider, "box height", max(y2 - y1, 1), 1, height),
            "cross_boundary": widgets.ToggleButtons(
                options=["ignore", "use"], value="ignore", description="border anchors",
                tooltips=["ignore anchors that cross the image border (training, Sec. 3.3)",
                          "label the anchors that cross the border too"],
                disabled=assign_fn is not None,        # the exercise's function always ignores them
                style={"description_width": DESCRIPTION_WIDTH, "button_width": "80px"}),
        }
        self._build(controls, figsize=(5.6, 5.6))

    def setup(self):
        show_background_image(self.ax, self.image)
        # One scatter per label, one colour each (matplotlib's fast path; per-dot colours are slow).
        self._label_dots = {-1: self.ax.scatter([], [], s=9, c=IGNORED, linewidths=0),
                            0: self.ax.scatter([], [], s=9, c=NEGATIVE, linewidths=0),
                            1: self.ax.scatter([], [], s=28, c=POSITIVE, edgecolors="black", linewidths=0.8)}
        self.live += list(self._label_dots.values())

    def _constrain(self, change):
        pos, neg = self.controls["pos_iou"], self.controls["neg_iou"]
        if neg.value > pos.value:          # a negative threshold above the positive one: move the other
            if change["owner"] is pos:
                neg.value = pos.value
            elif change["owner"] is neg:
                pos.value = neg.value

    def _student(self, gt, image_size, reference) -> dict:
        """Your assign_fn's labels, compared with the package's: {labels, differing, error}."""
        if self.assign_fn is None:
            return {"labels": reference, "differing": [], "error": None}
        c = self.controls
        try:
            labels = student_labels(self.assign_fn, self.anchors, gt, image_size, c["pos_iou"].value,
                                    c["neg_iou"].value)
        except Exception as error:       # the student's code: any failure becomes a message
            return {"labels": reference, "differing": [], "error": error_message("your assign_fn", error)}
        return {"labels": labels, "differing": torch.where(labels != reference)[0].tolist(), "error": None}

    def compute(self) -> dict:
        c = self.controls
        height, width = self.image.shape[-2:]
        x1, y1 = c["x"].value, c["y"].value
        gt = torch.tensor([[x1, y1, min(x1 + c["w"].value, width), min(y1 + c["h"].value, height)]],
                          dtype=torch.float32)
        border = 0.0 if c["cross_boundary"].value == "ignore" else float("inf")
        reference = label_anchors(self.anchors, gt, (height, width), c["pos_iou"].value,
                                  c["neg_iou"].value, allowed_border=border)
        mine = self._student(gt, (height, width), reference)
        labels = mine["labels"]
        max_iou = box_iou(self.anchors, gt).max(dim=1).values
        positive = torch.where(labels == 1)[0]
        by_best = positive[max_iou[positive] <= c["pos_iou"].value]
        return {
            "gt_box": gt[0], "labels": labels, "max_iou": max_iou,
            "counts": {"positive": int((labels == 1).sum()), "negative": int((labels == 0).sum()),
                       "ignored": int((labels == -1).sum())},
            "positive": positive.tolist(), "by_best_rule": by_best.tolist(),
            "reference": reference, "differing": mine["differing"], "error": mine["error"],
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
        labels = s["labels"].numpy()
        dots = self._dots
        # One dot per anchor, coloured by label, positives last (on top). Positives: larger dots
        # with a black edge and boxes with a white halo, so that they stand out on any colour (a
        # green shape under green positives hid them).
        for value, artist in self._label_dots.items():
            artist.set_offsets(dots[labels == value].reshape(-1, 2))
        best = set(s["by_best_rule"])
        positive_boxes = self.anchors[s["positive"]].tolist()      # (P, 4): only the few drawn
        for a, box in zip(s["positive"], positive_boxes):
            add_box(ax, box, POSITIVE, linewidth=2, linestyle="--" if a in best else "-", halo=True)
        add_box(ax, s["gt_box"].tolist(), GROUND_TRUTH, linewidth=2.5, halo=True)
        if s["differing"]:
            ring = ax.scatter(dots[s["differing"], 0], dots[s["differing"], 1], s=90, facecolors="none",
                              edgecolors=DIFFERENT, linewidths=1.6)
            ring.set_path_effects(HALO)
        self._fit_view(ax, self.image.shape[-2:], positive_boxes)
        c = s["counts"]
        self.caption.value = caption_html(
            f"<b>{c['positive']} positive</b> ({len(best)} only by the highest-IoU rule, dashed), "
            f"<b>{c['negative']} negative</b>, {c['ignored']} ignored of {len(self.anchors):,} anchors",
            f"IoU &gt; {self.controls['pos_iou'].value:.2f}: positive; &lt; "
            f"{self.controls['neg_iou'].value:.2f}: negative")
        entries = [dict(label=f"positive ({c['positive']})", color=POSITIVE, marker="dot"),
                   dict(label=f"negative ({c['negative']})", color=NEGATIVE, marker="dot"),
                   dict(label=f"ignored ({c['ignored']})", color=IGNORED, marker="dot"),
                   dict(label="positive anchor", color=POSITIVE, halo=True),
                   dict(label="positive by the highest-IoU rule only", color=POSITIVE, style="--", halo=True),
                   dict(label="ground-truth box", color=GROUND_TRUTH, width=2.5, halo=True)]
        if s["differing"]:
            entries.append(dict(label="your label differs", color=DIFFERENT, marker="ring"))
        self.legend.value = legend_html(entries)
        self._show_comparison()

    def _show_comparison(self):
        """The readout under the controls: how your assign_fn compares with the package's."""
        s = self.state
        if self.assign_fn is None:
            return
        if s["error"]:
            self.message.value = s["error"] + " (the dots show the package's labels)"
        elif s["differing"]:
            self.message.value = (f"<b>your assign_fn: {len(s['differing'])} of {len(self.anchors):,} labels "
                                  "differ</b> from fe.rpn.assign_anchor_targets (ringed dots)")
        else:
            self.message.value = f"your assign_fn: all {len(self.anchors):,} labels match the package's."


def assignment_explorer(image=None, gt_box=None, **kwargs) -> AssignmentExplorer:
    """Positive / negative / ignored anchors for one box; default: a shapes image and its first
    box, the shapes_tiny anchors (32, 64, 128 px, stride 16). kwargs: sizes, ratios, stride,
    pos_iou, neg_iou, assign_fn (your fn(anchors, gt_boxes, image_size, pos_iou, neg_iou) -> (A,)
    of exercise ex05: its labels are drawn, and the anchors where they differ from the package's
    are ringed)."""
    return AssignmentExplorer(image, gt_box, **kwargs)
