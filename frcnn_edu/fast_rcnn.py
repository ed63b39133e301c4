"""The Fast R-CNN detector ([F]) that classifies and refines the RPN's proposals.

  sample_proposal_targets   which proposals train the detector, and towards what ([F] Sec. 2.3)
  FastRCNNHead              RoI pooling -> fc6 -> fc7 -> (C+1)-way classifier + per-class boxes
  fast_rcnn_loss            cross-entropy + smooth L1 on foreground ([F] eq. 1)
  postprocess_detections    softmax, per-class decode, clip, threshold, per-class NMS, top 100
  truncated_svd             fc6 / fc7 compressed for faster detection ([F] Sec. 3.1)

and `FastRCNN`, which ties them together behind the RPN, as `RegionProposalNetwork` does for
the RPN's pieces.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import boxes as box_ops
from .config import FasterRCNNConfig
from .roi import RoIPool, boxes_to_rois
from .rpn import check_generator_device


def sample_proposal_targets(proposals: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, *,
                            batch_size: int = 128, positive_fraction: float = 0.25,
                            fg_iou: float = 0.5, bg_iou=(0.1, 0.5),
                            box_coder_weights=(10.0, 10.0, 5.0, 5.0),
                            generator: torch.Generator | None = None,
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Choose the RoIs that train the detector for one image ([F] Sec. 2.3, [C]).

    proposals (P, 4), gt_boxes (G, 4), gt_labels (G,) in 1..C.
    Returns rois (R, 4), labels (R,) int64 (0 = background) and regression targets (R, 4): the
    eq. 2 encoding of each RoI's matched ground-truth box, multiplied by box_coder_weights
    (= divided by the stds 0.1, 0.1, 0.2, 0.2 of [C]). R <= batch_size.

      - the ground-truth boxes join the proposals (so the detector always sees perfect RoIs);
      - foreground: max IoU >= fg_iou (0.5), at most batch_size * positive_fraction (25%) of them;
      - background: max IoU in [0.1, 0.5) fills the rest; when there are not enough, RoIs with
        max IoU in [0, 0.1) are used too (an image with no objects has only those).
    """
    rois = torch.cat([proposals, gt_boxes])
    if gt_boxes.shape[0] == 0:
        best_iou = torch.zeros(rois.shape[0], device=rois.device, dtype=rois.dtype)
        best_gt = torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
        matched_labels = torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
        matched_boxes = rois
    else:
        best_iou, best_gt = box_ops.box_iou(rois, gt_boxes, validate=False).max(dim=1)
        matched_labels = gt_labels[best_gt]
        matched_boxes = gt_boxes[best_gt]

    # Random order within each group; a group's rank offsets put preferred groups first.
    keys = torch.rand(rois.shape[0], generator=generator, device=rois.device)   # in [0, 1)
    foreground = best_iou >= fg_iou
    in_bg_range = (best_iou >= bg_iou[0]) & (best_iou < bg_iou[1])
    max_fg = int(round(batch_size * positive_fraction))
    fg_order = torch.where(foreground, keys, keys + 10.0).argsort()
    num_fg = int(foreground.sum())             # the one device-to-host sync of the sampling
    fg_keep = fg_order[: min(max_fg, num_fg)]
    bg_keys = torch.where(in_bg_range, keys, keys + 1.0)          # [0.1, 0.5) before [0, 0.1)
    bg_keys = torch.where(foreground, bg_keys + 10.0, bg_keys)    # never foreground
    num_bg = min(batch_size - fg_keep.numel(), rois.shape[0] - num_fg)
    bg_keep = bg_keys.argsort()[:num_bg]

    keep = torch.cat([fg_keep, bg_keep])
    labels = matched_labels[keep].clone()
    labels[fg_keep.numel():] = 0
    targets = box_ops.encode(matched_boxes[keep], rois[keep], box_coder_weights, validate=False)
    return rois[keep], labels, targets


class FastRCNNHead(nn.Module):
    """RoI pooling, two fully connected layers, then the two sibling outputs ([F] Fig. 1).

    forward(features (B, C, H, W), rois (K, 5) = (batch index, x1, y1, x2, y2) in input pixels)
      -> (class_logits (K, num_classes + 1), box_deltas (K, 4 * (num_classes + 1))).
    num_classes counts object classes only; column 0 is background.
    """

    def __init__(self, in_channels: int, num_classes: int, *, roi_output_size: int = 7,
                 spatial_scale: float = 1 / 16, representation_size: int = 4096,
                 dropout: float = 0.5, roi_pool_impl: str = "fast", init_std: float = 0.01,
                 bbox_init_std: float = 0.001):
        super().__init__()
        # The model builds its RoIs itself, so the pooling layer skips their (syncing) checks.
        self.roi_pool = RoIPool(roi_output_size, spatial_scale, impl=roi_pool_impl, validate=False)
        # nn.Linear, or after compress() two thinner layers in an nn.Sequential
        self.fc6: nn.Module = nn.Linear(in_channels * roi_output_size ** 2, representation_size)
        self.fc7: nn.Module = nn.Linear(representation_size, representation_size)
        self.dropout = nn.Dropout(dropout)
        self.cls_score = nn.Linear(representation_size, num_classes + 1)
        self.bbox_pred = nn.Linear(representation_size, 4 * (num_classes + 1))
        nn.init.normal_(self.cls_score.weight, std=init_std)
        nn.init.normal_(self.bbox_pred.weight, std=bbox_init_std)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.roi_pool(features, rois)                           # (K, C, s, s)
        x = self.dropout(F.relu(self.fc6(pooled.flatten(1))))
        x = self.dropout(F.relu(self.fc7(x)))
        # float32 outputs also under torch.autocast: losses and box decoding need the range
        return self.cls_score(x).float(), self.bbox_pred(x).float()

    def compress(self, fc6_rank: int = 1024, fc7_rank: int = 256) -> FastRCNNHead:
        """Replace fc6 and fc7 by their truncated SVDs, in place ([F] Sec. 3.1, Table 7).

        Fast R-CNN keeps the top 1024 singular values of VGG-16's fc6 (25088 x 4096) and the top
        256 of fc7 (4096 x 4096): detection got about 30% faster for a 0.3 point mAP drop. A
        test-time transformation: compress a trained model before evaluating it, not before
        training it. Returns self.
        """
        self.fc6 = truncated_svd(self.fc6, fc6_rank)
        self.fc7 = truncated_svd(self.fc7, fc7_rank)
        return self


def truncated_svd(layer: nn.Module, rank: int) -> nn.Sequential:
    """A fully connected layer y = W x + b, W (u, v), as two thinner layers ([F] Sec. 3.1).

    W ~ U_t S_t V_t^T keeps the t largest singular values: the first layer multiplies by
    S_t V_t^T (t, v), without bias, the second by U_t (u, t), with the original bias. The
    parameter count drops from u v to t (u + v); with t = min(u, v) the result is exact up to
    rounding.
    """
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"truncated_svd needs an nn.Linear, got {type(layer).__name__} "
                         f"(was the head compressed already?)")
    out_features, in_features = layer.weight.shape
    if not 1 <= rank <= min(out_features, in_features):
        raise ValueError(f"rank must lie in [1, {min(out_features, in_features)}] for a "
                         f"{in_features} -> {out_features} layer, got {rank}")
    with torch.no_grad():
        u, s, vh = torch.linalg.svd(layer.weight.double(), full_matrices=False)  # (u, r), (r,), (r, v)
        first = nn.Linear(in_features, rank, bias=False)
        second = nn.Linear(rank, out_features, bias=layer.bias is not None)
        first.weight.copy_(s[:rank, None] * vh[:rank])                          # S_t V_t^T (t, v)
        second.weight.copy_(u[:, :rank])                                         # U_t (u, t)
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second).to(layer.weight.device, layer.weight.dtype)


def fast_rcnn_loss(class_logits: torch.Tensor, box_deltas: torch.Tensor, labels: torch.Tensor,
                   regression_targets: torch.Tensor, *, lambda_: float = 1.0,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """[F] eq. 1: L = L_cls(p, u) + lambda [u >= 1] L_loc(t^u, v).

    class_logits (R, C+1), box_deltas (R, 4 (C+1)), labels (R,), regression_targets (R, 4).
    L_cls: cross-entropy averaged over the R RoIs. L_loc: smooth L1 (beta = 1) between the
    deltas predicted *for the true class u* and the targets, summed over the 4 coordinates,
    for foreground RoIs only, and divided by R as in [C].
    """
    num_rois = max(labels.numel(), 1)   # summed, then divided: R = 0 gives 0, not a NaN mean
    loss_cls = F.cross_entropy(class_logits, labels, reduction="sum") / num_rois
    foreground = torch.nonzero(labels > 0).squeeze(1)
    deltas = box_deltas.reshape(box_deltas.shape[0], box_deltas.shape[1] // 4, 4)[foreground, labels[foreground]]
    loss_box = F.smooth_l1_loss(deltas, regression_targets[foreground], beta=1.0, reduction="sum")
    return loss_cls, lambda_ * loss_box / num_rois


def postprocess_detections(class_logits: torch.Tensor, box_deltas: torch.Tensor,
                           proposals: torch.Tensor, image_size, *, score_thresh: float = 0.05,
                           nms_iou: float = 0.3, detections_per_img: int = 100,
                           box_coder_weights=(10.0, 10.0, 5.0, 5.0), nms_impl: str = "fast",
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detections for one image from the head's outputs on its P proposals ([C] test.py).

    class_logits (P, C+1), box_deltas (P, 4 (C+1)), proposals (P, 4), image_size (H, W).
    Returns boxes (D, 4), labels (D,) in 1..C, scores (D,), D <= detections_per_img:
      softmax -> decode each class's deltas -> clip -> drop background and scores <= 0.05 ->
      NMS per class at IoU 0.3 -> the 100 best.
    """
    num_classes = class_logits.shape[1] - 1
    scores = F.softmax(class_logits, dim=1)[:, 1:]                                    # (P, C)
    deltas = box_deltas.reshape(-1, num_classes + 1, 4)[:, 1:]                        # (P, C, 4)
    boxes = box_ops.decode(deltas, proposals[:, None, :], box_coder_weights, validate=False)  # (P, C, 4)
    boxes = box_ops.clip_boxes(boxes, image_size, validate=False)
    labels = torch.arange(1, num_classes + 1, device=scores.device).expand_as(scores)

    boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
    keep = torch.nonzero(scores > score_thresh).squeeze(1)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = box_ops.remove_small_boxes(boxes, 1e-2, validate=False)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = box_ops.batched_nms(boxes, scores, labels, nms_iou, impl=nms_impl, validate=False)
    keep = keep[:detections_per_img]
    return boxes[keep], labels[keep], scores[keep]


# ----------------------------------------------------------------------------------------------
# Everything together
# ----------------------------------------------------------------------------------------------
class FastRCNN(nn.Module):
    """RoI sampling + head + loss + post-processing: the detector that reads the RPN's proposals.

    forward(features (B, C, H, W), proposals [(P_i, 4)], image_sizes [(h, w)] x B, targets=None)
      training: {"loss_cls", "loss_box"} on RoIs sampled from the proposals and the ground truth;
      eval:     [{"boxes" (D_i, 4), "labels" (D_i,), "scores" (D_i,)}] per image.
    Boxes are in the coordinates of the network's input (the rescaled image).
    """

    def __init__(self, in_channels: int, stride: int, num_classes: int, config: FasterRCNNConfig):
        super().__init__()
        self.config = config
        self.head = FastRCNNHead(
            in_channels, num_classes, roi_output_size=config.roi_output_size,
            spatial_scale=1.0 / stride, representation_size=config.representation_size,
            dropout=config.dropout, roi_pool_impl=config.roi_pool_impl, init_std=config.init_std,
            bbox_init_std=config.bbox_init_std)
        self.generator: torch.Generator | None = None   # set by the trainer for reproducible sampling

    def forward(self, features: torch.Tensor, proposals: list[torch.Tensor], image_sizes,
                targets: list[dict] | None = None):
        if self.training:
            if targets is None:
                raise ValueError("FastRCNN in training mode needs targets")
            return self.losses(features, proposals, targets)
        return self.detect(features, proposals, image_sizes)

    def losses(self, features: torch.Tensor, proposals: list[torch.Tensor], targets: list[dict]) -> dict:
        """Sample RoIs per image ([F] Sec. 2.3), run the head on all of them, [F] eq. 1."""
        c = self.config
        check_generator_device(self.generator, features.device)
        samples = [sample_proposal_targets(
            image_proposals.detach(), target["boxes"], target["labels"],
            batch_size=c.roi_batch_size, positive_fraction=c.roi_positive_fraction,
            fg_iou=c.roi_fg_iou, bg_iou=c.roi_bg_iou, box_coder_weights=c.box_coder_weights,
            generator=self.generator) for image_proposals, target in zip(proposals, targets)]
        rois, labels, regression_targets = zip(*samples)
        class_logits, box_deltas = self.head(features, boxes_to_rois(rois))
        loss_cls, loss_box = fast_rcnn_loss(class_logits, box_deltas, torch.cat(labels),
                                            torch.cat(regression_targets), lambda_=c.det_lambda)
        return {"loss_cls": loss_cls, "loss_box": loss_box}

    def detect(self, features: torch.Tensor, proposals: list[torch.Tensor], image_sizes) -> list[dict]:
        """Score and refine every proposal, then post-process each image's ([C] test.py)."""
        c = self.config
        class_logits, box_deltas = self.head(features, boxes_to_rois(proposals))
        counts = [p.shape[0] for p in proposals]
        detections = []
        for logits, deltas, image_proposals, size in zip(
                class_logits.split(counts), box_deltas.split(counts), proposals, image_sizes):
            boxes, labels, scores = postprocess_detections(
                logits, deltas, image_proposals, size, score_thresh=c.score_thresh,
                nms_iou=c.det_nms_iou, detections_per_img=c.detections_per_img,
                box_coder_weights=c.box_coder_weights, nms_impl=c.nms_impl)
            detections.append({"boxes": boxes, "labels": labels, "scores": scores})
        return detections
