"""Faster R-CNN: one network of shared conv layers, an RPN and a Fast R-CNN detector ([P] Fig. 2).

    images ──► transform (s = 600) ──► backbone ──► feature map ──► rpn ──► proposals
                                                        │                         │
                                                        └──► fast_rcnn ◄──────────┘
                                                   (RoI pooling, fc6, fc7, cls + box) ──► detections

Four modules, each reading its settings from one FasterRCNNConfig:
    transform   rescale, normalise, pad; map boxes back to the original images  (transform.py)
    backbone    the shared conv layers                                           (backbones.py)
    rpn         anchors, RPN head, anchor targets, RPN loss, proposal layer       (rpn.py)
    fast_rcnn   RoI sampling, RoI pooling + head, detector loss, post-processing (fast_rcnn.py)

Calling convention (the same as torchvision's, so users can switch):
    model.train(); losses = model(images, targets)  # loss_rpn_cls, loss_rpn_box, loss_cls, loss_box
    model.eval();  detections = model(images)       # [{"boxes", "labels", "scores"}] per image
Images are float tensors (3, H, W) in [0, 1] of any size; every output is in the original
image's coordinates (rescaling happens inside, in `model.transform`, and is undone on the way out).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .backbones import build_backbone, freeze_early_layers
from .config import FasterRCNNConfig, get_preset
from .fast_rcnn import FastRCNN
from .rpn import RegionProposalNetwork
from .transform import ImageBatch, ImageTransform

__all__ = ["FasterRCNN", "ImageBatch"]


class FasterRCNN(nn.Module):
    """The unified detector.

    num_classes: the number of object classes, *not* counting background (the classifier
    has num_classes + 1 outputs, label 0 being background; torchvision counts background in
    its num_classes). config: a FasterRCNNConfig (default: the paper's VGG-16 setting with the
    backbone replaced by `backbone`). class_names: optional names for labels 1..num_classes,
    stored in checkpoints. pretrained: ImageNet weights for the backbone (downloads; opt-in).
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
        self.pretrained = pretrained

        self.transform = ImageTransform(config, num_classes)
        self.backbone = build_backbone(config.backbone, pretrained=pretrained)
        if config.backbone == "vgg16" and config.freeze_early_vgg and pretrained:
            freeze_early_layers(self.backbone)   # conv1-conv2 stay fixed ([P] Sec. 3.1.3)
        stride, channels = self.backbone.stride, self.backbone.out_channels
        self.rpn = RegionProposalNetwork(channels, stride, config)
        self.fast_rcnn = FastRCNN(channels, stride, num_classes, config)
        if config.channels_last:   # NHWC: faster conv kernels on CPU and GPU (config.channels_last)
            self.backbone.to(memory_format=torch.channels_last)
            self.rpn.head.to(memory_format=torch.channels_last)

    @classmethod
    def from_preset(cls, name: str, num_classes: int, **kwargs) -> FasterRCNN:
        """FasterRCNN with a named configuration: "paper_vgg16", "paper_zf" or "shapes_tiny"."""
        return cls(num_classes, config=get_preset(name), **kwargs)

    def forward(self, images, targets=None, *, proposals=None):
        """Training: dict of the four losses. Eval: list of {"boxes", "labels", "scores"}.

        proposals: optional list of (P_i, 4) boxes in original image coordinates that replace
        the RPN's (used by the 4-step alternating training); the RPN then computes no loss.
        """
        if self.training and targets is None:
            raise ValueError("in training mode FasterRCNN needs targets: model(images, targets); "
                             "call model.eval() for inference")
        batch, targets = self.transform(images, targets if self.training else None)
        features = self.backbone(batch.tensors)
        if proposals is None:
            proposals, _, rpn_losses = self.rpn(features, batch.image_sizes, targets,
                                                min_sizes=self.min_proposal_sizes(batch))
        else:
            proposals, rpn_losses = self.transform.to_network(proposals, batch), {}
        if self.training:
            return {**rpn_losses, **self.fast_rcnn(features, proposals, batch.image_sizes, targets)}
        detections = self.fast_rcnn(features, proposals, batch.image_sizes)
        boxes = self.transform.to_original([d["boxes"] for d in detections], batch)
        return [{**d, "boxes": b} for d, b in zip(detections, boxes)]

    @torch.no_grad()
    def propose(self, images, *, pre_nms_top_n: int | None = None, post_nms_top_n: int | None = None,
                nms_iou: float | None = None) -> list[dict]:
        """The RPN's proposals for each image in original coordinates: [{"boxes", "scores"}].

        The proposal layer runs with the test-time settings of the config unless overridden
        here, for this call only (e.g. nms_iou=1.0 to see the proposals before NMS).
        """
        with _eval_mode(self):
            batch, _ = self.transform(images)
            features = self.backbone(batch.tensors)
            proposals, scores, _ = self.rpn(features, batch.image_sizes, min_sizes=self.min_proposal_sizes(batch),
                                            pre_nms_top_n=pre_nms_top_n, post_nms_top_n=post_nms_top_n,
                                            nms_iou=nms_iou)
        proposals = self.transform.to_original(proposals, batch)
        return [{"boxes": p, "scores": s} for p, s in zip(proposals, scores)]

    def rpn_losses(self, images, targets) -> dict:
        """Only the RPN's two losses (steps 1 and 3 of the 4-step alternating training)."""
        batch, targets = self.transform(images, targets)
        features = self.backbone(batch.tensors)
        _, _, losses = self.rpn(features, batch.image_sizes, targets, return_proposals=False)
        return losses

    def min_proposal_sizes(self, batch: ImageBatch) -> list[float]:
        """config.rpn_min_size is in original-image pixels ([C]); the RPN works in rescaled ones."""
        return [self.config.rpn_min_size * min(scale) for scale in batch.scales]

    def set_generator(self, generator: torch.Generator | None) -> None:
        """One random generator for all of training's sampling (anchors and RoIs)."""
        self.rpn.generator = generator
        self.fast_rcnn.generator = generator


@contextmanager
def _eval_mode(model: nn.Module):
    """model.eval() inside the block; afterwards every submodule gets its own mode back (a
    trainer may hold a frozen backbone in eval mode, with frozen BatchNorm statistics, inside a
    model in training mode)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode
