"""NMS and the top-N cut over scored proposals, and the recall they leave (Sec. 3.3):
fe.widgets.proposal_explorer()."""
from __future__ import annotations

from pathlib import Path

import ipywidgets as widgets
import matplotlib
import torch

from ..boxes import box_iou, clip_boxes, nms, remove_small_boxes
from ..evaluate import proposal_recall
from ..samples import SHIPPED_CHECKPOINT
from ._base import (
    GROUND_TRUTH,
    _check_image,
    _Explorer,
    _slider,
    add_box,
    add_boxes,
    caption_html,
    legend_html,
    shapes_sample,
    show_background_image,
)

DEFAULT_CHECKPOINT = SHIPPED_CHECKPOINT          # frcnn_edu/assets/checkpoints/shapes_tiny.pt


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
    every = model.config.rpn_pre_nms_top_n_test
    out = model.propose([image], nms_iou=1.0, post_nms_top_n=every)[0]
    return out["boxes"].cpu(), out["scores"].cpu()


class ProposalExplorer(_Explorer):
    """NMS and the top-N cut over a set of scored proposals, and the recall they leave (Sec. 3.3).

    Proposals: `boxes`/`scores` if given; else the shipped checkpoint's RPN proposals before NMS
    (frcnn_edu.samples.SHIPPED_CHECKPOINT), or, without it, random boxes jittered around the ground
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
            self.boxes = torch.as_tensor(boxes).detach().float().cpu().reshape(-1, 4)
            self.scores = (torch.as_tensor(scores).detach().float().cpu() if scores is not None
                           else torch.linspace(1, 0, len(self.boxes)))
            self.source = "given proposals"
        elif checkpoint is not None and Path(checkpoint).is_file():
            from ..checkpoints import load_model
            model = load_model(checkpoint, device="cpu")
            self.boxes, self.scores = proposals_before_nms(model, self.image)
            self.source = f"RPN of {Path(checkpoint).name}, before NMS"
        else:
            self.boxes, self.scores = jittered_proposals(self.gt_boxes, image_size, seed=seed)
            self.source = "random boxes jittered around the ground truth"
        n = max(len(self.boxes), 1)
        self._after_nms = (None, None)
        controls = {
            "nms_iou": _slider(widgets.FloatSlider, "NMS IoU", nms_iou, 0.05, 1.0, 0.05,
                               tooltip="a proposal overlapping a better one by more than this is dropped"),
            "top_n": _slider(widgets.IntSlider, "top N", min(top_n, n), 1, n,
                             tooltip="how many of the proposals left after NMS are kept, best first"),
        }
        self._build(controls, figsize=(5.6, 5.6))

    def setup(self):
        show_background_image(self.ax, self.image)

    def compute(self) -> dict:
        c = self.controls
        # NMS depends on the threshold only: moving top N re-uses it (the proposals never change).
        if self._after_nms[0] != c["nms_iou"].value:
            self._after_nms = (c["nms_iou"].value, nms(self.boxes, self.scores, c["nms_iou"].value))
        after_nms = self._after_nms[1]
        kept = after_nms[:c["top_n"].value]
        return {"kept": kept.tolist(), "num_after_nms": len(after_nms), "num_proposals": len(self.boxes),
                "recall": recall_of(self.boxes[kept], self.gt_boxes), "source": self.source}

    def draw(self):
        s, ax = self.state, self.ax
        kept = s["kept"]
        cmap = matplotlib.colormaps["viridis"]
        order = kept[::-1]                       # the best last, on top
        add_boxes(ax, self.boxes[order].tolist(), cmap(self.scores[order].numpy()), linewidth=1.0)
        for box in self.gt_boxes.tolist():
            add_box(ax, box, GROUND_TRUTH, linewidth=2.5, halo=True)
        r = s["recall"]
        self.caption.value = caption_html(
            f"NMS at IoU {self.controls['nms_iou'].value:.2f} keeps <b>{s['num_after_nms']}</b> of "
            f"{s['num_proposals']}; the top <b>{len(kept)}</b> drawn",
            f"recall of the {len(self.gt_boxes)} ground-truth boxes: <b>{r[0.5]:.2f}</b> at IoU 0.5, "
            f"<b>{r[0.7]:.2f}</b> at IoU 0.7 <span style='color:#666'>({s['source']})</span>")
        self.legend.value = legend_html(
            [dict(label="ground-truth box", color=GROUND_TRUTH, width=2.5, halo=True)]
            + [dict(label=f"proposal, score {v:.1f}", color=matplotlib.colors.to_hex(cmap(v)), width=1.5)
               for v in (0.1, 0.5, 0.9)])


def proposal_explorer(image=None, gt_boxes=None, boxes=None, scores=None, **kwargs) -> ProposalExplorer:
    """NMS threshold and top-N vs recall; default: a shapes image, the shipped checkpoint's
    proposals (or jittered boxes without it). kwargs: checkpoint, nms_iou, top_n, seed."""
    return ProposalExplorer(image, gt_boxes, boxes, scores, **kwargs)

