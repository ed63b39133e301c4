"""Every hyper-parameter of Faster R-CNN in one place, with the paper's value and where it comes from.

Sources (see ../shared/PAPER.md):
  [P] Ren et al., Faster R-CNN (NIPS 2015 / TPAMI 2017) — section numbers of the TPAMI version.
  [F] Girshick, Fast R-CNN (ICCV 2015).
  [C] py-faster-rcnn, the authors' released code (lib/fast_rcnn/config.py and the prototxts).

Defaults are the paper's VGG-16 setting. `PRESETS` holds the three named configurations;
`shapes_tiny` scales the paper to 256x256 synthetic images and a tiny backbone, and its
docstring lists every number it changes and why.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class FasterRCNNConfig:
    """Hyper-parameters of Faster R-CNN. Field comments give the value's source.

    Images
      min_size: 600 — images are rescaled so the shorter side is s = 600 ([P] Sec. 3.3).
      max_size: 1000 — ... unless the longer side would exceed 1000 ([C] TEST.MAX_SIZE).
      image_mean, image_std: ImageNet RGB statistics (torchvision's pretrained VGG-16 expects
        them). [C] subtracts a BGR pixel mean and does not divide by a std; we use RGB in [0, 1].
      size_divisible: pad the batch to a multiple of 16, the backbone stride ([P] Sec. 3.3).

    Anchors ([P] Sec. 3.1.1)
      anchor_sizes: (128, 256, 512) — box areas 128^2, 256^2, 512^2.
      anchor_ratios: (0.5, 1.0, 2.0) — aspect ratios 1:2, 1:1, 2:1 as height / width; k = 9.

    RPN head ([P] Sec. 3.1)
      rpn_mid_channels: 512 for VGG-16, 256 for ZF — the n x n (n = 3) sliding window's output.
      rpn_objectness: "softmax" — two-class softmax, 2k scores (footnote 4); "sigmoid" gives k
        logistic scores (the alternative in footnote 4, torchvision's choice).

    RPN training targets ([P] Sec. 3.1.2, 3.1.3, 3.3)
      rpn_pos_iou: 0.7 — positive if IoU > 0.7 with any ground-truth box (plus the best anchor
        of every ground-truth box). [C] uses >= 0.7.
      rpn_neg_iou: 0.3 — negative if IoU < 0.3 with every ground-truth box.
      rpn_batch_size: 256 anchors sampled per image ([P] Sec. 3.1.3) ...
      rpn_positive_fraction: 0.5 — ... with positives : negatives up to 1:1.
      rpn_allowed_border: 0 — anchors crossing the image boundary are ignored in training
        ([P] Sec. 3.3: otherwise "training does not converge"). float("inf") keeps them all.

    RPN loss (eq. 1)
      rpn_lambda: 10 — balances the two terms; the result is insensitive to it ([P] Table 9).
      rpn_loss_normalization: "paper" — N_cls = rpn_batch_size, N_reg = number of anchor
        locations (about 2,400); "sampled" divides both terms by the number of sampled anchors
        (what [C] does, with lambda = 1).
      rpn_smooth_l1_beta: 1.0 — smooth L1 of [F] eq. 3 (quadratic below 1). [C] uses sigma = 3,
        i.e. beta = 1/9, because RPN targets are not normalised (PITFALLS: py-faster-rcnn #89).

    Proposal layer ([P] Sec. 3.3, [C])
      rpn_pre_nms_top_n_train / _test: 12000 / 6000 best-scoring boxes kept before NMS [C].
      rpn_post_nms_top_n_train / _test: 2000 / 300 kept after NMS ([P] Sec. 3.3, Sec. 4).
      rpn_nms_iou: 0.7 ([P] Sec. 3.3).
      rpn_min_size: 16 — proposals smaller than 16 px at the original image scale are removed [C].

    Fast R-CNN detector ([F], [C])
      roi_output_size: 7 for VGG-16, 6 for ZF — the RoI pooling grid [C].
      roi_pool_impl: "fast" (torchvision's kernel) or "reference" (plain PyTorch).
      representation_size: 4096 — fc6 and fc7 [C].
      dropout: 0.5 after fc6 and fc7 [C].
      roi_batch_size: 128 RoIs per image [C] ([F]: 2 images x 64).
      roi_positive_fraction: 0.25 — up to 25% foreground ([F] Sec. 2.3).
      roi_fg_iou: 0.5 — foreground if IoU >= 0.5 with a ground-truth box ([F] Sec. 2.3).
      roi_bg_iou: (0.1, 0.5) — background if the max IoU is in [0.1, 0.5) ([F] Sec. 2.3);
        when there are too few, background is drawn from [0, 0.1) too.
      box_coder_weights: (10, 10, 5, 5) — the detector's regression targets are divided by
        the stds (0.1, 0.1, 0.2, 0.2) [C]; one box coder owns them in both directions.
      det_lambda: 1 — L = L_cls + lambda [u >= 1] L_loc ([F] eq. 1).

    Test-time post-processing [C]
      score_thresh: 0.05; det_nms_iou: 0.3 (per class); detections_per_img: 100.

    Training ([P] Sec. 3.1.3)
      lr: 0.001 for 60k mini-batches, then 0.0001 for 20k: lr_drop_at = 0.75 of the iterations,
        lr_drop_factor = 0.1. momentum 0.9, weight_decay 0.0005. flip_prob 0.5 ([F] Sec. 2.3).
      init_std: 0.01 for new layers ([P] Sec. 3.1.3), bbox_init_std: 0.001 for the detector's
        box regression layer [C].
      freeze_early_vgg: True — VGG-16 fine-tunes conv3_1 and up ([P] Sec. 3.1.3).

    Speed (no effect on the maths)
      channels_last: True — convolutions run in NHWC memory layout, which PyTorch's CPU and
        cuDNN kernels execute faster (bench/: VGG-16 inference 0.86x the time of NCHW).
      nms_impl: "fast" (torchvision's kernel) or "reference" (plain PyTorch).
    """

    backbone: str = "vgg16"

    # images
    min_size: int = 600
    max_size: int = 1000
    image_mean: tuple = (0.485, 0.456, 0.406)
    image_std: tuple = (0.229, 0.224, 0.225)
    size_divisible: int = 16

    # anchors
    anchor_sizes: tuple = (128, 256, 512)
    anchor_ratios: tuple = (0.5, 1.0, 2.0)

    # RPN
    rpn_mid_channels: int = 512
    rpn_objectness: str = "softmax"
    rpn_pos_iou: float = 0.7
    rpn_neg_iou: float = 0.3
    rpn_batch_size: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_allowed_border: float = 0.0
    rpn_lambda: float = 10.0
    rpn_loss_normalization: str = "paper"
    rpn_smooth_l1_beta: float = 1.0
    rpn_pre_nms_top_n_train: int = 12000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 6000
    rpn_post_nms_top_n_test: int = 300
    rpn_nms_iou: float = 0.7
    rpn_min_size: float = 16.0

    # Fast R-CNN
    roi_output_size: int = 7
    roi_pool_impl: str = "fast"
    representation_size: int = 4096
    dropout: float = 0.5
    roi_batch_size: int = 128
    roi_positive_fraction: float = 0.25
    roi_fg_iou: float = 0.5
    roi_bg_iou: tuple = (0.1, 0.5)
    box_coder_weights: tuple = (10.0, 10.0, 5.0, 5.0)
    det_lambda: float = 1.0
    score_thresh: float = 0.05
    det_nms_iou: float = 0.3
    detections_per_img: int = 100

    # training
    lr: float = 0.001
    lr_drop_at: float = 0.75
    lr_drop_factor: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0005
    flip_prob: float = 0.5
    init_std: float = 0.01
    bbox_init_std: float = 0.001
    freeze_early_vgg: bool = True
    nms_impl: str = "fast"
    channels_last: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value cannot work."""
        positive = ["min_size", "max_size", "size_divisible", "rpn_mid_channels", "rpn_batch_size",
                    "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train",
                    "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test", "roi_output_size",
                    "representation_size", "roi_batch_size", "detections_per_img", "lr"]
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"FasterRCNNConfig.{name} must be positive, got {getattr(self, name)!r}")
        for name in ["rpn_positive_fraction", "roi_positive_fraction", "rpn_nms_iou", "det_nms_iou",
                     "rpn_pos_iou", "rpn_neg_iou", "roi_fg_iou", "dropout", "flip_prob", "lr_drop_at"]:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"FasterRCNNConfig.{name} must lie in [0, 1], got {getattr(self, name)!r}")
        if self.rpn_neg_iou > self.rpn_pos_iou:
            raise ValueError(f"FasterRCNNConfig.rpn_neg_iou ({self.rpn_neg_iou}) must not exceed "
                             f"rpn_pos_iou ({self.rpn_pos_iou})")
        choices = {"rpn_objectness": ("softmax", "sigmoid"),
                   "rpn_loss_normalization": ("paper", "sampled"),
                   "roi_pool_impl": ("fast", "reference"), "nms_impl": ("fast", "reference"),
                   "backbone": ("vgg16", "zf", "tiny")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"FasterRCNNConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ["anchor_sizes", "anchor_ratios"]:
            values = getattr(self, name)
            if len(values) == 0 or any(not v > 0 for v in values):
                raise ValueError(f"FasterRCNNConfig.{name} must be non-empty and positive, got {values!r}")

    def replace(self, **changes) -> "FasterRCNNConfig":
        """A copy with some fields changed (unknown names raise TypeError naming them)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain dict of Python scalars and lists: safe for checkpoints read with weights_only=True."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "FasterRCNNConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown FasterRCNNConfig fields {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def paper_vgg16() -> FasterRCNNConfig:
    """The paper's main setting: VGG-16, s = 600, 9 anchors, 2000/300 proposals ([P] Sec. 3.3, 4)."""
    return FasterRCNNConfig()


def paper_zf() -> FasterRCNNConfig:
    """The paper's ZF setting: 256-d sliding window ([P] Sec. 3.1), 6x6 RoI pooling [C]."""
    return FasterRCNNConfig(backbone="zf", rpn_mid_channels=256, roi_output_size=6)


def shapes_tiny() -> FasterRCNNConfig:
    """The built-in data on a laptop CPU: 256x256 shapes, the tiny BatchNorm backbone.

    What differs from the paper, and why:
      - min_size = max_size = 256: the shapes images are 256 x 256, not ~600 x 1000.
      - anchor_sizes (32, 64, 128): the objects are 24-128 px; the paper's 128-512 px anchors
        would be larger than most objects. The 3 ratios (k = 9) are kept.
      - rpn_mid_channels 128, representation_size 256, roi_output_size 7: a small head
        for a small backbone (the paper's fc6/fc7 of 4096 would dominate the cost).
      - rpn_lambda stays at the paper's 10 although a 16 x 16 map has 256 anchor locations, not
        ~2,400 (so 10 / N_reg is ten times the paper's weight): the shapes images have only
        ~3.6 positive anchors each, and the regression term needs the weight. Measured after
        400 RPN-only iterations: recall at IoU 0.7 with 300 proposals 0.33 with lambda = 1,
        0.47 with lambda = 5, 0.64 with lambda = 10 (100 held-out images).
      - proposals 1000 / 600 before / after NMS in training and 1000 / 300 at test: a 16 x 16 map
        has only 2,304 anchors in all (and NMS over 2,000 boxes was a fifth of a training step).
      - rpn_min_size = 4: the objects are small.
      - roi_batch_size 64: fewer objects per image than PASCAL VOC.
      - lr = 0.02 with dropout 0: a BatchNorm backbone trained from scratch tolerates and needs
        a larger step; dropout slows convergence of a small head on easy data.
      - rpn_smooth_l1_beta = 1/9 as in [C] (unnormalised RPN targets are small).
    """
    return FasterRCNNConfig(
        backbone="tiny", min_size=256, max_size=256,
        anchor_sizes=(32, 64, 128), rpn_mid_channels=128,
        rpn_smooth_l1_beta=1.0 / 9.0,
        rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=600,
        rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=300, rpn_min_size=4.0,
        roi_output_size=7, representation_size=256, dropout=0.0, roi_batch_size=64,
        lr=0.02, weight_decay=0.0005, freeze_early_vgg=False,
    )


PRESETS = {"paper_vgg16": paper_vgg16, "paper_zf": paper_zf, "shapes_tiny": shapes_tiny}


def get_preset(name: str) -> FasterRCNNConfig:
    """The named configuration; an unknown name raises ValueError listing the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
