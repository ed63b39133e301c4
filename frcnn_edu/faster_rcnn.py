"""Faster R-CNN: one network of shared conv layers, an RPN and a Fast R-CNN detector ([P] Fig. 2).

    images ──► rescale (s = 600) ──► backbone ──► feature map ──► RPN ──► proposals
                                                      │                       │
                                                      └──► RoI pooling ◄──────┘
                                                              │
                                                   Fast R-CNN head ──► detections

Calling convention (the same as torchvision's, so users can switch):
    model.train(); losses = model(images, targets)  # loss_rpn_cls, loss_rpn_box, loss_cls, loss_box
    model.eval();  detections = model(images)       # [{"boxes", "labels", "scores"}] per image
Images are float tensors (3, H, W) in [0, 1] of any size; every output is in the original
image's coordinates (rescaling happens inside, in `preprocess`, and is undone in `forward`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone, freeze_early_layers
from .config import FasterRCNNConfig, get_preset
from .data.targets import validate_target
from .fast_rcnn import FastRCNNHead, fast_rcnn_loss, postprocess_detections, sample_proposal_targets
from .rpn import RegionProposalNetwork


@dataclass
class ImageBatch:
    """Images rescaled, normalised and zero-padded into one tensor.

    tensors (B, 3, H_pad, W_pad); image_sizes [(h, w)] of each rescaled image inside the
    padding; scales [s] with rescaled = original * s; original_sizes [(H, W)].
    """
    tensors: torch.Tensor
    image_sizes: list
    scales: list
    original_sizes: list


class FasterRCNN(nn.Module):
    """The unified detector.

    num_classes: the number of object classes, *not* counting background (the classifier
    has num_classes + 1 outputs, label 0 being background; torchvision counts background in
    its num_classes). config: a FasterRCNNConfig (default: the paper's VGG-16 setting with the
    backbone replaced by `backbone`). class_names: optional names for labels 1..num_classes,
    stored in checkpoints.
    """

    def __init__(self, num_classes: int, backbone: str | None = None,
                 config: FasterRCNNConfig | None = None, class_names=None, pretrained: bool = False):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int (object classes, without "
                             f"background), got {num_classes!r}")
        config = config or FasterRCNNConfig()
        if backbone is not None and backbone != config.backbone:
            config = config.replace(backbone=backbone)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        self.config = config
        self.num_classes = num_classes
        self.class_names = tuple(class_names) if class_names else tuple(f"class_{i}" for i in range(1, num_classes + 1))

        self.backbone = build_backbone(config.backbone, pretrained=pretrained)
        if config.backbone == "vgg16" and config.freeze_early_vgg and pretrained:
            freeze_early_layers(self.backbone)
        stride, channels = self.backbone.stride, self.backbone.out_channels
        self.rpn = RegionProposalNetwork(
            channels, stride, anchor_sizes=config.anchor_sizes, anchor_ratios=config.anchor_ratios,
            mid_channels=config.rpn_mid_channels, objectness=config.rpn_objectness,
            pos_iou=config.rpn_pos_iou, neg_iou=config.rpn_neg_iou, batch_size=config.rpn_batch_size,
            positive_fraction=config.rpn_positive_fraction, allowed_border=config.rpn_allowed_border,
            lambda_=config.rpn_lambda, loss_normalization=config.rpn_loss_normalization,
            smooth_l1_beta=config.rpn_smooth_l1_beta,
            pre_nms_top_n=(config.rpn_pre_nms_top_n_train, config.rpn_pre_nms_top_n_test),
            post_nms_top_n=(config.rpn_post_nms_top_n_train, config.rpn_post_nms_top_n_test),
            nms_iou=config.rpn_nms_iou, nms_impl=config.nms_impl, init_std=config.init_std)
        self.roi_head = FastRCNNHead(
            channels, num_classes, roi_output_size=config.roi_output_size, spatial_scale=1.0 / stride,
            representation_size=config.representation_size, dropout=config.dropout,
            roi_pool_impl=config.roi_pool_impl, init_std=config.init_std,
            bbox_init_std=config.bbox_init_std)
        if config.channels_last:   # NHWC: faster conv kernels on CPU and GPU (config.py)
            self.backbone.to(memory_format=torch.channels_last)
            self.rpn.head.to(memory_format=torch.channels_last)
        self.register_buffer("image_mean", torch.tensor(config.image_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(config.image_std).view(3, 1, 1), persistent=False)
        self.generator: torch.Generator | None = None   # reproducible sampling, set by the trainer

    @classmethod
    def from_preset(cls, name: str, num_classes: int, **kwargs) -> "FasterRCNN":
        """FasterRCNN with a named configuration: "paper_vgg16", "paper_zf" or "shapes_tiny"."""
        return cls(num_classes, config=get_preset(name), **kwargs)

    # ------------------------------------------------------------------------------------------
    # Preprocessing: validate, rescale, normalise, pad
    # ------------------------------------------------------------------------------------------
    def _check_images(self, images) -> list[torch.Tensor]:
        if isinstance(images, torch.Tensor):
            if images.dim() == 3:
                images = [images]
            elif images.dim() == 4:
                images = list(images)
            else:
                raise ValueError(f"images must be a (3, H, W) tensor, a (B, 3, H, W) tensor or a list "
                                 f"of (3, H, W) tensors; got a tensor of shape {tuple(images.shape)}")
        if not isinstance(images, (list, tuple)):
            raise ValueError(f"images must be a tensor or a list of tensors, got {type(images).__name__}")
        for i, image in enumerate(images):
            if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
                shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
                raise ValueError(f"images[{i}] must be a float tensor of shape (3, H, W), got {shape}")
            if not image.is_floating_point():
                raise ValueError(f"images[{i}] has dtype {image.dtype}; expected float values in [0, 1] "
                                 f"(convert with image.float() / 255)")
            if min(image.shape[1:]) < 1:
                raise ValueError(f"images[{i}] is empty: shape {tuple(image.shape)}")
        return list(images)

    def rescale_factor(self, height: int, width: int) -> float:
        """Shorter side to min_size unless the longer side would exceed max_size ([P] Sec. 3.3)."""
        scale = self.config.min_size / min(height, width)
        if max(height, width) * scale > self.config.max_size:
            scale = self.config.max_size / max(height, width)
        return scale

    def preprocess(self, images, targets=None) -> tuple[ImageBatch, list | None]:
        images = self._check_images(images)
        device = self.image_mean.device
        if targets is not None:
            if len(targets) != len(images):
                raise ValueError(f"got {len(images)} images but {len(targets)} targets")
            targets = [validate_target(t, tuple(img.shape[1:]), index=i) for i, (img, t) in enumerate(zip(images, targets))]
        resized, sizes, scales, originals, scaled_targets = [], [], [], [], []
        for i, image in enumerate(images):
            height, width = image.shape[1:]
            scale = self.rescale_factor(height, width)
            new_size = (max(1, round(height * scale)), max(1, round(width * scale)))
            image = image.to(device, torch.float32)
            if new_size != (height, width):
                image = F.interpolate(image[None], size=new_size, mode="bilinear", align_corners=False)[0]
            resized.append((image - self.image_mean) / self.image_std)
            # the exact per-axis factors, so that boxes map back precisely
            sy, sx = new_size[0] / height, new_size[1] / width
            sizes.append(new_size)
            scales.append((sy, sx))
            originals.append((height, width))
            if targets is not None:
                t = dict(targets[i])
                t["boxes"] = t["boxes"].to(device) * torch.tensor([sx, sy, sx, sy], device=device)
                t["labels"] = t["labels"].to(device)
                scaled_targets.append(t)
        div = self.config.size_divisible
        pad_h = -(-max(s[0] for s in sizes) // div) * div
        pad_w = -(-max(s[1] for s in sizes) // div) * div
        batch = resized[0].new_zeros((len(resized), 3, pad_h, pad_w))
        for b, image in enumerate(resized):
            batch[b, :, : image.shape[1], : image.shape[2]] = image
        if self.config.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return ImageBatch(batch, sizes, scales, originals), (scaled_targets if targets is not None else None)

    # ------------------------------------------------------------------------------------------
    # The forward pass
    # ------------------------------------------------------------------------------------------
    def forward(self, images, targets=None, *, proposals=None):
        """Training: dict of the four losses. Eval: list of {"boxes", "labels", "scores"}.

        proposals: optional list of (P_i, 4) boxes in original image coordinates that replace
        the RPN's (used by the 4-step alternating training); the RPN then computes no loss.
        """
        if self.training and targets is None:
            raise ValueError("in training mode FasterRCNN needs targets: model(images, targets); "
                             "call model.eval() for inference")
        batch, targets = self.preprocess(images, targets if self.training else None)
        features = self.backbone(batch.tensors)
        if proposals is None:
            proposals, _, rpn_losses = self.rpn(features, batch.image_sizes, targets,
                                                min_sizes=self._min_sizes(batch))
        else:
            proposals, rpn_losses = self._scale_boxes(proposals, batch.scales, forward=True), {}
        if self.training:
            return {**rpn_losses, **self.detector_losses(features, proposals, targets)}
        return self.detect(features, proposals, batch)

    def _min_sizes(self, batch: ImageBatch) -> list[float]:
        # rpn_min_size is in original-image pixels ([C]); the RPN works in rescaled pixels.
        return [self.config.rpn_min_size * min(s) for s in batch.scales]

    @staticmethod
    def _scale_boxes(boxes_list, scales, forward: bool):
        out = []
        for boxes, (sy, sx) in zip(boxes_list, scales):
            factor = boxes.new_tensor([sx, sy, sx, sy])
            out.append(boxes * factor if forward else boxes / factor)
        return out

    def detector_losses(self, features, proposals, targets) -> dict:
        rois, labels, regression = [], [], []
        for b, (image_proposals, target) in enumerate(zip(proposals, targets)):
            image_rois, image_labels, image_regression = sample_proposal_targets(
                image_proposals.detach(), target["boxes"], target["labels"],
                batch_size=self.config.roi_batch_size, positive_fraction=self.config.roi_positive_fraction,
                fg_iou=self.config.roi_fg_iou, bg_iou=self.config.roi_bg_iou,
                box_coder_weights=self.config.box_coder_weights, generator=self.generator)
            batch_index = image_rois.new_full((image_rois.shape[0], 1), b)
            rois.append(torch.cat([batch_index, image_rois], dim=1))
            labels.append(image_labels)
            regression.append(image_regression)
        class_logits, box_deltas = self.roi_head(features, torch.cat(rois))
        loss_cls, loss_box = fast_rcnn_loss(class_logits, box_deltas, torch.cat(labels),
                                            torch.cat(regression), lambda_=self.config.det_lambda)
        return {"loss_cls": loss_cls, "loss_box": loss_box}

    def detect(self, features, proposals, batch: ImageBatch) -> list[dict]:
        rois = torch.cat([torch.cat([p.new_full((p.shape[0], 1), b), p], dim=1)
                          for b, p in enumerate(proposals)])
        class_logits, box_deltas = self.roi_head(features, rois)
        counts = [p.shape[0] for p in proposals]
        results = []
        for b, (logits, deltas, image_proposals) in enumerate(
                zip(class_logits.split(counts), box_deltas.split(counts), proposals)):
            boxes, labels, scores = postprocess_detections(
                logits, deltas, image_proposals, batch.image_sizes[b],
                score_thresh=self.config.score_thresh, nms_iou=self.config.det_nms_iou,
                detections_per_img=self.config.detections_per_img,
                box_coder_weights=self.config.box_coder_weights, nms_impl=self.config.nms_impl)
            boxes = self._scale_boxes([boxes], [batch.scales[b]], forward=False)[0]
            height, width = batch.original_sizes[b]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            results.append({"boxes": boxes, "labels": labels, "scores": scores})
        return results

    @torch.no_grad()
    def propose(self, images) -> list[dict]:
        """The RPN's proposals for each image in original coordinates: [{"boxes", "scores"}]."""
        # Restore every submodule's own mode afterwards, not just the top one: a trainer may
        # hold a frozen backbone in eval mode (frozen BatchNorm statistics) inside a training model.
        modes = [(module, module.training) for module in self.modules()]
        self.eval()
        try:
            batch, _ = self.preprocess(images)
            features = self.backbone(batch.tensors)
            proposals, scores, _ = self.rpn(features, batch.image_sizes, min_sizes=self._min_sizes(batch))
            proposals = self._scale_boxes(proposals, batch.scales, forward=False)
        finally:
            for module, mode in modes:
                module.training = mode
        for boxes, (height, width) in zip(proposals, batch.original_sizes):
            # dividing by the scale can overshoot the border by a rounding error
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        return [{"boxes": p, "scores": s} for p, s in zip(proposals, scores)]

    def rpn_losses(self, images, targets) -> dict:
        """Only the RPN's two losses (step 1 and 3 of the 4-step alternating training)."""
        batch, targets = self.preprocess(images, targets)
        features = self.backbone(batch.tensors)
        _, _, losses = self.rpn(features, batch.image_sizes, targets, return_proposals=False)
        return losses

    def set_generator(self, generator: torch.Generator | None) -> None:
        """One random generator for all of training's sampling (anchors and RoIs)."""
        self.generator = generator
        self.rpn.generator = generator
