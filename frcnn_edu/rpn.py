"""The Region Proposal Network ([P] Sec. 3.1): the heart of Faster R-CNN.

A small network slides over the shared conv feature map. At every position it looks at an
n x n window (n = 3) and, for each of k anchors centred there, predicts
  - an objectness score (is there an object in this anchor?), and
  - four box deltas (eq. 2) that move the anchor onto the object.
This module has the four pieces, in the order data flows through them:

  RPNHead                 the sliding window and its two sibling 1x1 layers (Sec. 3.1)
  assign_anchor_targets   which anchors are positive / negative / ignored (Sec. 3.1.2)
  rpn_loss                eq. 1
  generate_proposals      top-N, decode, clip, drop small boxes, NMS, top-N (Sec. 3.3)

and `RegionProposalNetwork`, which ties them together. The order of anchors and of the head's
outputs is defined once, in `frcnn_edu.anchors`.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from . import boxes as box_ops
from .anchors import AnchorGenerator, flatten_head_output, inside_image
from .config import FasterRCNNConfig
from .parallel import parallel_map


# ----------------------------------------------------------------------------------------------
# The head: an n x n conv, then two sibling 1 x 1 convs
# ----------------------------------------------------------------------------------------------
class RPNHead(nn.Module):
    """The sliding window of [P] Sec. 3.1, implemented as convolutions.

    A 3x3 conv maps each window of the feature map to a `mid_channels`-d vector (256-d for ZF,
    512-d for VGG-16), followed by ReLU. Two sibling 1x1 convs read that vector:
      cls: 2k objectness logits (two-class softmax, footnote 4) or k with objectness="sigmoid";
      reg: 4k box deltas, one (tx, ty, tw, th) per anchor. The k regressors do not share
           weights: each serves one anchor size and ratio.

    forward(features (N, C, H, W)) -> (objectness (N, 2k or k, H, W), deltas (N, 4k, H, W)).
    New layers start from a zero-mean Gaussian with std 0.01 ([P] Sec. 3.1.3).
    """

    def __init__(self, in_channels: int, num_anchors: int = 9, mid_channels: int = 512,
                 objectness: str = "softmax", init_std: float = 0.01):
        super().__init__()
        if objectness not in ("softmax", "sigmoid"):
            raise ValueError(f"objectness must be 'softmax' or 'sigmoid', got {objectness!r}")
        self.num_anchors = num_anchors
        self.objectness = objectness
        self.scores_per_anchor = 2 if objectness == "softmax" else 1
        self.conv = nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1)
        self.cls = nn.Conv2d(mid_channels, num_anchors * self.scores_per_anchor, kernel_size=1)
        self.reg = nn.Conv2d(mid_channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.cls, self.reg):
            nn.init.normal_(layer.weight, std=init_std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        window = F.relu(self.conv(features))
        return self.cls(window), self.reg(window)


def objectness_logit(scores: torch.Tensor) -> torch.Tensor:
    """One logit per anchor from the head's flattened scores: (..., 2) or (..., 1) -> (...).

    For the two-class softmax, p(object) = softmax(l)[1] = sigmoid(l[1] - l[0]), so the
    difference of the two logits ranks anchors exactly as the softmax probability does.
    """
    if scores.shape[-1] == 2:
        return scores[..., 1] - scores[..., 0]
    return scores[..., 0]


# ----------------------------------------------------------------------------------------------
# Anchor targets (Sec. 3.1.2)
# ----------------------------------------------------------------------------------------------
def _random_ranks(candidates: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Rank of each candidate in a random order, (A,) int64; non-candidates rank after all.

    Sampling "the first n of a random permutation" becomes `rank < n`, which needs neither a
    Python loop nor a device-to-host copy of n.
    """
    keys = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    keys = torch.where(candidates, keys, keys + 2.0)
    order = keys.argsort()
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel(), device=order.device)
    return ranks


def sample_anchors(labels: torch.Tensor, batch_size: int = 256, positive_fraction: float = 0.5,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep a random mini-batch of labelled anchors ([P] Sec. 3.1.3), the rest set to -1.

    labels (A,) in {1, 0, -1}. At most batch_size * positive_fraction positives are kept; the
    batch is filled up with negatives ("if there are fewer than 128 positives, we pad the
    mini-batch with negative ones"). Returns new labels (A,).
    """
    positive, negative = labels == 1, labels == 0
    keep_positive = positive & (_random_ranks(positive, generator) < int(batch_size * positive_fraction))
    num_negatives = batch_size - keep_positive.sum()
    keep_negative = negative & (_random_ranks(negative, generator) < num_negatives)
    sampled = torch.full_like(labels, -1)
    sampled[keep_negative] = 0
    sampled[keep_positive] = 1
    return sampled


def assign_anchor_targets(anchors: torch.Tensor, gt_boxes: torch.Tensor, image_size, *,
                          pos_iou: float = 0.7, neg_iou: float = 0.3, batch_size: int = 256,
                          positive_fraction: float = 0.5, allowed_border: float = 0.0,
                          generator: torch.Generator | None = None, sample: bool = True,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Label every anchor positive (1), negative (0) or ignored (-1), as in [P] Sec. 3.1.2.

    anchors (A, 4), gt_boxes (G, 4), image_size (H, W) of the image (not the padded batch).
    Returns labels (A,) int64 and matched_gt_boxes (A, 4): the ground-truth box each anchor
    regresses to (its highest-IoU box; the anchor itself when G = 0).

    The rules, in the paper's words and in this order:
      1. anchors crossing the image boundary are ignored (Sec. 3.3; `allowed_border` pixels of
         slack, float("inf") to keep them all);
      2. negative: IoU < neg_iou (0.3) with every ground-truth box;
      3. positive: IoU > pos_iou (0.7) with any ground-truth box, or
      4. positive: the anchor(s) with the highest IoU with a ground-truth box, even below 0.7,
         ties included (rule 3 alone sometimes finds no positive for a box). Positives win
         over negatives, as in the released code;
      5. (sample=True) a random mini-batch of `batch_size` anchors, at most positive_fraction
         of them positive, the rest set to -1.
    An image with no boxes has only negatives (and ignored cross-boundary anchors).
    """
    num_anchors = anchors.shape[0]
    inside = inside_image(anchors, image_size, allowed_border, validate=False)
    labels = torch.full((num_anchors,), -1, dtype=torch.int64, device=anchors.device)
    if gt_boxes.shape[0] == 0:
        labels[inside] = 0
        matched = anchors.clone()        # regression targets of 0; never used (no positives)
    else:
        iou = box_ops.box_iou(anchors, gt_boxes, validate=False)                  # (A, G)
        iou = torch.where(inside[:, None], iou, torch.full_like(iou, -1.0))       # rule 1
        best_iou, best_gt = iou.max(dim=1)                                        # (A,)
        matched = gt_boxes[best_gt]
        labels[inside & (best_iou < neg_iou)] = 0                                 # rule 2
        labels[best_iou > pos_iou] = 1                                            # rule 3
        # Rule 4: an anchor ties the best IoU of some ground-truth box. A box that overlaps no
        # inside anchor at all (best IoU 0) must not make every zero-IoU anchor positive.
        best_per_gt = iou.max(dim=0).values                                       # (G,)
        is_best = (iou == best_per_gt[None, :]) & (best_per_gt[None, :] > 0)
        labels[is_best.any(dim=1)] = 1
    if sample:
        labels = sample_anchors(labels, batch_size, positive_fraction, generator)
    return labels, matched


# ----------------------------------------------------------------------------------------------
# The loss (eq. 1)
# ----------------------------------------------------------------------------------------------
def rpn_loss(objectness: torch.Tensor, deltas: torch.Tensor, labels: torch.Tensor,
             regression_targets: torch.Tensor, *, num_locations: int, lambda_: float = 10.0,
             normalization: str = "paper", batch_size_per_image: int = 256, beta: float = 1.0,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Equation 1 of [P]: L = 1/N_cls sum L_cls(p_i, p_i*) + lambda 1/N_reg sum p_i* L_reg(t_i, t_i*).

    objectness (B, A, 2) or (B, A, 1) logits, deltas (B, A, 4), labels (B, A) in {1, 0, -1}
    (-1 is not in the mini-batch), regression_targets (B, A, 4) = eq. 2 encodings of each
    anchor's matched ground-truth box. num_locations = H * W of the feature map.

    L_cls is the two-class log loss (cross-entropy over the softmax, or binary cross-entropy for
    one sigmoid logit) over the sampled anchors; L_reg is smooth L1 ([F] eq. 3) summed over the
    4 coordinates and counted for positive anchors only (the p_i* factor).

    Normalisation, normalization="paper": N_cls = the mini-batch size (256 per image) and
    N_reg = the number of anchor locations (~2,400 per image); lambda = 10 then makes both
    terms weigh about the same. The paper notes this normalisation is not required and that the
    result is insensitive to lambda over two orders of magnitude ([P] Table 9: 67.2 / 68.9 /
    69.9 / 69.1 mAP for lambda = 0.1 / 1 / 10 / 100). normalization="sampled" divides both terms
    by the number of sampled anchors instead (the released code, used with lambda = 1).

    Returns (loss_cls, loss_box), each a scalar.
    """
    # (image, anchor) index pairs rather than boolean masks: each costs one device-to-host sync
    # when it is built, not one per tensor it selects from (and none in the backward pass).
    sampled = torch.where(labels >= 0)
    positive = torch.where(labels == 1)
    num_images = labels.shape[0]
    if objectness.shape[-1] == 2:
        cls_terms = F.cross_entropy(objectness[sampled], labels[sampled], reduction="sum")
    else:
        cls_terms = F.binary_cross_entropy_with_logits(
            objectness[..., 0][sampled], labels[sampled].to(objectness.dtype), reduction="sum")
    reg_terms = F.smooth_l1_loss(deltas[positive], regression_targets[positive],
                                 beta=beta, reduction="sum")
    n_cls: int | torch.Tensor
    n_reg: int | torch.Tensor
    if normalization == "paper":
        n_cls = batch_size_per_image * num_images
        n_reg = num_locations * num_images
    elif normalization == "sampled":
        n_cls = n_reg = (labels >= 0).sum().clamp(min=1)
    else:
        raise ValueError(f"normalization must be 'paper' or 'sampled', got {normalization!r}")
    return cls_terms / n_cls, lambda_ * reg_terms / n_reg


# ----------------------------------------------------------------------------------------------
# The proposal layer (Sec. 3.3)
# ----------------------------------------------------------------------------------------------
def generate_proposals(objectness: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor,
                       image_sizes, *, pre_nms_top_n: int, post_nms_top_n: int,
                       nms_iou: float = 0.7, min_sizes=0.0, nms_impl: str = "fast",
                       ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Turn the head's outputs at every anchor into at most post_nms_top_n proposals per image.

    objectness (B, A) logits, deltas (B, A, 4), anchors (A, 4), image_sizes [(H, W)] x B (each
    image's own size inside the padded batch), min_sizes a number or one per image (in the
    network input's pixels). Returns (boxes [(P_i, 4)], scores [(P_i,)]) sorted by score, with
    scores as probabilities.

    Steps ([P] Sec. 3.3 and [C]):
      1. keep the pre_nms_top_n anchors with the highest objectness (12,000 train / 6,000 test);
      2. decode their deltas (eq. 2 inverted) into boxes;
      3.-6. per image, `select_proposals`: clip, drop small boxes, NMS, keep the best.
    ([C] drops the small boxes before step 1; see FasterRCNNConfig.rpn_min_size.)
    """
    num_images = objectness.shape[0]
    if isinstance(min_sizes, (int, float)):
        min_sizes = [float(min_sizes)] * num_images
    top_n = min(pre_nms_top_n, objectness.shape[1])
    top_scores, top_idx = objectness.topk(top_n, dim=1)                               # (B, n)
    top_deltas = deltas.gather(1, top_idx[..., None].expand(-1, -1, 4))               # (B, n, 4)
    top_boxes = box_ops.decode(top_deltas, anchors[top_idx], validate=False)          # (B, n, 4)
    select = partial(select_proposals, nms_iou=nms_iou, post_nms_top_n=post_nms_top_n, nms_impl=nms_impl)
    # The images are independent: on the CPU their NMS runs on parallel threads from 4 images
    # on (frcnn_edu.parallel); the result is the same as the plain loop's.
    results = parallel_map(lambda args: select(*args), zip(top_boxes, top_scores, image_sizes, min_sizes),
                           objectness.device, min_items=4)
    return [boxes for boxes, _ in results], [scores for _, scores in results]


def select_proposals(boxes: torch.Tensor, logits: torch.Tensor, image_size, min_size: float, *,
                     nms_iou: float, post_nms_top_n: int, nms_impl: str = "fast",
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 3-6 of the proposal layer for one image: boxes (n, 4), logits (n,) sorted by score.

      3. clip the boxes to the image ("cross-boundary proposal boxes are clipped");
      4. drop boxes smaller than min_size (and empty ones);
      5. NMS at IoU nms_iou (0.7);
      6. keep the post_nms_top_n best (2,000 train / 300 test).
    Returns boxes (P, 4) and their objectness probabilities (P,).
    """
    boxes = box_ops.clip_boxes(boxes, image_size, validate=False)
    # box_ops.remove_small_boxes, with one more test in the same mask: an anchor entirely outside
    # this image (e.g. in the padding of a smaller image in the batch) clips to an empty box,
    # never a proposal, even when min_size is 0. (One mask: one device-to-host sync.)
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = torch.where((width >= min_size) & (height >= min_size) & (width > 0) & (height > 0))[0]
    boxes, logits = boxes[keep], logits[keep]
    keep = box_ops.nms(boxes, logits, nms_iou, impl=nms_impl, validate=False)[:post_nms_top_n]
    return boxes[keep], torch.sigmoid(logits[keep])


# ----------------------------------------------------------------------------------------------
# Everything together
# ----------------------------------------------------------------------------------------------
class RegionProposalNetwork(nn.Module):
    """Head + anchors + targets + loss + proposals, with every setting read from `config`.

    forward(features (B, C, H, W), image_sizes [(h, w)] x B, targets=None, *, min_sizes=None,
            return_proposals=True, pre_nms_top_n=None, post_nms_top_n=None, nms_iou=None)
      training: returns (proposals [(P_i, 4)], scores [(P_i,)], {"loss_rpn_cls", "loss_rpn_box"});
      eval:     returns (proposals, scores, {}).
    Proposals are in the coordinates of the network's input (the resized image) and are
    detached: approximate joint training ignores the gradient through them ([P] Sec. 3.2).
    min_sizes: the smallest proposal side per image in those coordinates (default
    config.rpn_min_size). The proposal settings default to the config's values for the current
    mode (train / test); passing one overrides it for this call only.
    """

    def __init__(self, in_channels: int, stride: int, config: FasterRCNNConfig):
        super().__init__()
        self.config = config
        self.anchor_generator = AnchorGenerator(config.anchor_sizes, config.anchor_ratios, stride)
        self.head = RPNHead(in_channels, self.anchor_generator.num_anchors, config.rpn_mid_channels,
                            config.rpn_objectness, config.init_std)
        self.generator: torch.Generator | None = None   # set by the trainer for reproducible sampling

    def forward(self, features: torch.Tensor, image_sizes, targets=None, *, min_sizes=None,
                return_proposals: bool = True, pre_nms_top_n: int | None = None,
                post_nms_top_n: int | None = None, nms_iou: float | None = None):
        c = self.config
        scores_map, deltas_map = self.head(features)
        height, width = features.shape[-2:]
        # Anchors, box arithmetic, matching and losses in float32 also under mixed precision
        # (torch.autocast): float16 cannot hold pixel coordinates of a 1000-px image to better
        # than 0.5 px (bfloat16: 4 px), and the highest-IoU rule compares IoUs for equality.
        anchors = self.anchor_generator((height, width), device=features.device, dtype=torch.float32)
        # (copy=True: a tensor of its own, not a view of the head's channels_last output, which
        # torch.compile cannot rebuild when a graph ends here)
        scores = flatten_head_output(scores_map, self.head.scores_per_anchor).to(torch.float32, copy=True)
        deltas = flatten_head_output(deltas_map, 4).to(torch.float32, copy=True)       # (B, A, 4)

        proposals: list[torch.Tensor] = []
        proposal_scores: list[torch.Tensor] = []
        if return_proposals:   # training the RPN alone needs only the losses
            if pre_nms_top_n is None:
                pre_nms_top_n = c.rpn_pre_nms_top_n_train if self.training else c.rpn_pre_nms_top_n_test
            if post_nms_top_n is None:
                post_nms_top_n = c.rpn_post_nms_top_n_train if self.training else c.rpn_post_nms_top_n_test
            proposals, proposal_scores = generate_proposals(
                objectness_logit(scores.detach()), deltas.detach(), anchors, image_sizes,
                pre_nms_top_n=pre_nms_top_n, post_nms_top_n=post_nms_top_n,
                nms_iou=c.rpn_nms_iou if nms_iou is None else nms_iou,
                min_sizes=c.rpn_min_size if min_sizes is None else min_sizes, nms_impl=c.nms_impl)
        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("RegionProposalNetwork in training mode needs targets")
            labels, regression_targets = self.targets(anchors, targets, image_sizes)
            loss_cls, loss_box = rpn_loss(
                scores, deltas, labels, regression_targets, num_locations=height * width,
                lambda_=c.rpn_lambda, normalization=c.rpn_loss_normalization,
                batch_size_per_image=c.rpn_batch_size, beta=c.rpn_smooth_l1_beta)
            losses = {"loss_rpn_cls": loss_cls, "loss_rpn_box": loss_box}
        return proposals, proposal_scores, losses

    @torch.no_grad()
    def targets(self, anchors: torch.Tensor, targets, image_sizes) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels (B, A) and eq. 2 regression targets (B, A, 4) for a batch."""
        c = self.config
        check_generator_device(self.generator, anchors.device)
        labels, regression = [], []
        for target, size in zip(targets, image_sizes):
            image_labels, matched = assign_anchor_targets(
                anchors, target["boxes"], size, pos_iou=c.rpn_pos_iou, neg_iou=c.rpn_neg_iou,
                batch_size=c.rpn_batch_size, positive_fraction=c.rpn_positive_fraction,
                allowed_border=c.rpn_allowed_border, generator=self.generator)
            labels.append(image_labels)
            regression.append(box_ops.encode(matched, anchors, validate=False))
        return torch.stack(labels), torch.stack(regression)


def check_generator_device(generator: torch.Generator | None, device: torch.device) -> None:
    """A random generator must live where the sampling happens (torch.rand would raise deep inside)."""
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"the sampling generator is on {generator.device} but the model runs on "
                         f"{device.type}: create it there, torch.Generator(device={device.type!r})")
