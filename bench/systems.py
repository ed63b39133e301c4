"""The two systems under comparison, built to compute the same thing.

frcnn_edu: `frcnn_edu.FasterRCNN` with a named preset (paper_vgg16 or shapes_tiny).
torchvision: `torchvision.models.detection.FasterRCNN` configured from the same
`FasterRCNNConfig` by `torchvision_twin`: the SAME backbone (a deep copy of frcnn_edu's
module, so the same weights, in torchvision's default NCHW layout), a single feature map,
the same 9 anchors, proposal counts,
NMS thresholds, RoI max pooling (`RoIPoolAdapter`, torchvision.ops.roi_pool at 1/16), fc6/fc7
(`TwoMLPHead`) of the same width, the same image size, mean/std and padding, and the
detector's sampling and test-time numbers. Weights of the RPN head and the detector are
copied where the shapes agree (with rpn_objectness="sigmoid" the RPN classifier too).

Remaining differences (torchvision's own design, not configurable):
  - anchors centred at x * 16 (top-left of the cell) with rounded base anchors; frcnn_edu
    centres them at (x + 0.5) * 16, unrounded;
  - torchvision keeps cross-boundary anchors in training and uses its own loss
    normalisation / smooth-L1 beta; no 16-px minimum proposal size;
  - torchvision always resizes with F.interpolate (even at scale 1);
  - frcnn_edu's paper preset has dropout 0.5 after fc6/fc7 in training, TwoMLPHead has none.
"""
from __future__ import annotations

import copy

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN as TVFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead as TVRPNHead
from torchvision.ops import MultiScaleRoIAlign

import frcnn_edu as fe
from frcnn_edu.data import ShapesDataset


class RoIPoolAdapter(nn.Module):
    """RoI max pooling with MultiScaleRoIAlign's call signature, for torchvision's RoIHeads.

    forward(features {"0": (N, C, H, W)}, proposals [(P_i, 4)], image_shapes) -> (sum P_i, C, s, s),
    calling torchvision.ops.roi_pool with a fixed spatial_scale (1 / stride): the same kernel
    frcnn_edu uses with roi_pool_impl="fast".
    """

    def __init__(self, output_size: int, spatial_scale: float, featmap_name: str = "0"):
        super().__init__()
        self.output_size = (output_size, output_size)
        self.spatial_scale = spatial_scale
        self.featmap_name = featmap_name

    def forward(self, features, proposals, image_shapes):
        x = features[self.featmap_name]
        if x.dtype in (torch.float16, torch.bfloat16):   # under autocast: the CPU kernel has no
            x = x.float()                                # bf16 version (frcnn_edu does the same)
            proposals = [p.float() for p in proposals]
        return torchvision.ops.roi_pool(x, proposals, self.output_size, self.spatial_scale)


def frcnn_edu_model(preset: str, num_classes: int, **changes) -> fe.FasterRCNN:
    """frcnn_edu's FasterRCNN with a preset, some fields replaced (e.g. rpn_objectness)."""
    config = fe.get_preset(preset).replace(**changes)
    return fe.FasterRCNN(num_classes, config=config, class_names=None)


def nchw_copy(model: fe.FasterRCNN) -> fe.FasterRCNN:
    """The same model (same weights, same mode) with channels_last=False: plain NCHW convolutions."""
    twin = fe.FasterRCNN(model.num_classes, config=model.config.replace(channels_last=False),
                         class_names=model.class_names)
    twin.load_state_dict(model.state_dict())
    return twin.to(next(model.parameters()).device).train(model.training)


def torchvision_twin(model: fe.FasterRCNN, copy_weights: bool = True) -> TVFasterRCNN:
    """torchvision's FasterRCNN configured like `model` (see the module docstring)."""
    cfg = model.config
    # torchvision as shipped runs NCHW; frcnn_edu's backbone is channels_last by default, and a
    # deep copy would keep its NHWC weights (PyTorch then runs the convolutions NHWC).
    backbone = copy.deepcopy(model.backbone).to(memory_format=torch.contiguous_format)
    channels, stride = backbone.out_channels, backbone.stride
    if cfg.rpn_mid_channels != channels:
        raise ValueError(f"torchvision's RPNHead uses mid channels = in channels ({channels}); "
                         f"config has rpn_mid_channels={cfg.rpn_mid_channels}")
    num_anchors = len(cfg.anchor_sizes) * len(cfg.anchor_ratios)
    size = cfg.roi_output_size
    tv = TVFasterRCNN(
        backbone, num_classes=None,
        min_size=cfg.min_size, max_size=cfg.max_size,
        image_mean=list(cfg.image_mean), image_std=list(cfg.image_std),
        size_divisible=cfg.size_divisible,
        rpn_anchor_generator=TVAnchorGenerator(sizes=(tuple(cfg.anchor_sizes),),
                                               aspect_ratios=(tuple(cfg.anchor_ratios),)),
        rpn_head=TVRPNHead(channels, num_anchors),
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_nms_thresh=cfg.rpn_nms_iou,
        rpn_fg_iou_thresh=cfg.rpn_pos_iou, rpn_bg_iou_thresh=cfg.rpn_neg_iou,
        rpn_batch_size_per_image=cfg.rpn_batch_size, rpn_positive_fraction=cfg.rpn_positive_fraction,
        box_roi_pool=MultiScaleRoIAlign(["0"], size, sampling_ratio=2),   # replaced below
        box_head=TwoMLPHead(channels * size * size, cfg.representation_size),
        box_predictor=FastRCNNPredictor(cfg.representation_size, model.num_classes + 1),
        box_score_thresh=cfg.score_thresh, box_nms_thresh=cfg.det_nms_iou,
        box_detections_per_img=cfg.detections_per_img,
        box_fg_iou_thresh=cfg.roi_fg_iou, box_bg_iou_thresh=cfg.roi_bg_iou[1],
        box_batch_size_per_image=cfg.roi_batch_size, box_positive_fraction=cfg.roi_positive_fraction,
        bbox_reg_weights=tuple(cfg.box_coder_weights),
    )
    # FasterRCNN's constructor accepts only MultiScaleRoIAlign; swap in RoI max pooling after it.
    tv.roi_heads.box_roi_pool = RoIPoolAdapter(size, 1.0 / stride)
    if copy_weights:
        copy_head_weights(model, tv)
    return tv


def copy_head_weights(model: fe.FasterRCNN, tv: TVFasterRCNN) -> list[str]:
    """Copy frcnn_edu's RPN head and detector weights into torchvision's; returns what was copied.

    The RPN classifier is copied only when the shapes agree (objectness="sigmoid": k logits).
    """
    pairs = [
        (model.rpn.head.conv, tv.rpn.head.conv[0][0], "rpn.conv"),
        (model.rpn.head.cls, tv.rpn.head.cls_logits, "rpn.cls"),
        (model.rpn.head.reg, tv.rpn.head.bbox_pred, "rpn.reg"),
        (model.fast_rcnn.head.fc6, tv.roi_heads.box_head.fc6, "fc6"),
        (model.fast_rcnn.head.fc7, tv.roi_heads.box_head.fc7, "fc7"),
        (model.fast_rcnn.head.cls_score, tv.roi_heads.box_predictor.cls_score, "cls_score"),
        (model.fast_rcnn.head.bbox_pred, tv.roi_heads.box_predictor.bbox_pred, "bbox_pred"),
    ]
    copied = []
    with torch.no_grad():
        for source, target, name in pairs:
            if source.weight.shape == target.weight.shape:
                target.weight.copy_(source.weight)
                target.bias.copy_(source.bias)
                copied.append(name)
    return copied


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
class CachedDataset(torch.utils.data.Dataset):
    """A ShapesDataset rendered once and kept as uint8 (rendering is not what we time).

    Returns exactly what the wrapped dataset returns (pixels / 255 round-trip exactly).
    """

    def __init__(self, dataset):
        self.classes = dataset.classes
        self.images, self.targets = [], []
        for i in range(len(dataset)):
            image, target = dataset[i]
            self.images.append((image * 255).round().to(torch.uint8))
            self.targets.append(target)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index].numpy().transpose(1, 2, 0)
        return fe.data.transforms.to_float_image(image), dict(self.targets[index])


def shapes_batch(num: int, image_size=(256, 256), seed: int = 0, **kwargs):
    """`num` shapes images and targets (lists). Larger images get larger objects."""
    if "max_object_size" not in kwargs and min(image_size) > 256:
        kwargs.update(min_object_size=48, max_object_size=min(image_size) * 2 // 3)
    dataset = ShapesDataset(num_images=num, image_size=image_size, seed=seed, empty_fraction=0.0, **kwargs)
    samples = [dataset[i] for i in range(num)]
    return [s[0] for s in samples], [{"boxes": s[1]["boxes"], "labels": s[1]["labels"]} for s in samples]


def to_device(images, targets, device):
    images = [i.to(device) for i in images]
    targets = None if targets is None else [{k: v.to(device) for k, v in t.items()} for t in targets]
    return images, targets
