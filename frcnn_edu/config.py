"""Every hyper-parameter of Faster R-CNN in one place, each beside its value's source.

Sources:
  [P] Ren, He, Girshick, Sun, "Faster R-CNN: Towards Real-Time Object Detection with Region
      Proposal Networks", NIPS 2015 / TPAMI 2017 (https://arxiv.org/abs/1506.01497); section
      numbers are the TPAMI version's.
  [F] Girshick, "Fast R-CNN", ICCV 2015 (https://arxiv.org/abs/1504.08083).
  [C] py-faster-rcnn, the authors' released code (https://github.com/rbgirshick/py-faster-rcnn):
      lib/fast_rcnn/config.py, experiments/cfgs/*.yml and the prototxts.

Defaults are the paper's VGG-16 setting. `PRESETS` holds the three named configurations;
`shapes_tiny` scales the paper to 256x256 synthetic images and a tiny backbone, and its
docstring lists every number it changes and why. The modules read their settings from this
object under these names (`config.rpn_nms_iou` is the RPN's NMS threshold everywhere).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class FasterRCNNConfig:
    """Hyper-parameters of Faster R-CNN; each field's comment gives its source."""

    backbone: str = "vgg16"            # "vgg16" | "zf" (the paper's two nets) | "tiny" (CPU course net)

    # --- Images ---------------------------------------------------------------------------------
    min_size: int = 600                # shorter side rescaled to s = 600 ([P] Sec. 3.3) ...
    max_size: int = 1000               # ... unless the longer side would exceed 1000 ([C] TEST.MAX_SIZE)
    # ImageNet RGB statistics (what torchvision's pretrained VGG-16 expects). [C] subtracts a BGR
    # pixel mean and does not divide by a std; here images are RGB in [0, 1].
    image_mean: tuple = (0.485, 0.456, 0.406)
    image_std: tuple = (0.229, 0.224, 0.225)
    size_divisible: int = 16           # the batch is padded to a multiple of the backbone stride

    # --- Anchors ([P] Sec. 3.1.1) ----------------------------------------------------------------
    anchor_sizes: tuple = (128, 256, 512)      # box areas 128^2, 256^2, 512^2
    anchor_ratios: tuple = (0.5, 1.0, 2.0)     # height / width 1:2, 1:1, 2:1; k = 3 x 3 = 9

    # --- RPN head ([P] Sec. 3.1) -----------------------------------------------------------------
    rpn_mid_channels: int = 512        # the 3x3 window's output: 512-d for VGG-16, 256-d for ZF
    # "softmax": a two-class softmax, 2k scores (footnote 4); "sigmoid": k logistic scores (the
    # footnote's alternative, torchvision's choice)
    rpn_objectness: str = "softmax"

    # --- RPN training targets ([P] Sec. 3.1.2, 3.1.3, 3.3) ----------------------------------------
    rpn_pos_iou: float = 0.7           # positive: IoU > 0.7 with a ground-truth box ([C]: >= 0.7)
    rpn_neg_iou: float = 0.3           # negative: IoU < 0.3 with every ground-truth box
    rpn_batch_size: int = 256          # anchors sampled per image (Sec. 3.1.3) ...
    rpn_positive_fraction: float = 0.5  # ... positives : negatives up to 1:1
    # Anchors crossing the image boundary are ignored in training (Sec. 3.3: otherwise "training
    # does not converge"); pixels of slack, float("inf") keeps them all.
    rpn_allowed_border: float = 0.0

    # --- RPN loss, eq. 1 ([P] Sec. 3.1.2) ---------------------------------------------------------
    rpn_lambda: float = 10.0           # balances the terms; insensitive over 0.1-100 (Table 9)
    # "paper": N_cls = rpn_batch_size, N_reg = number of anchor locations (~2,400);
    # "sampled": both terms divided by the number of sampled anchors ([C], with lambda = 1)
    rpn_loss_normalization: str = "paper"
    # Smooth L1 of [F] eq. 3 (quadratic below beta). [C] uses sigma = 3, i.e. beta = 1/9, because
    # its RPN targets are not normalised (discussed in py-faster-rcnn issue #89).
    rpn_smooth_l1_beta: float = 1.0

    # --- Proposal layer ([P] Sec. 3.3, [C]) ------------------------------------------------------
    rpn_pre_nms_top_n_train: int = 12000    # best-scoring boxes kept before NMS [C]
    rpn_post_nms_top_n_train: int = 2000    # kept after NMS ([P] Sec. 3.3)
    rpn_pre_nms_top_n_test: int = 6000      # [C]
    rpn_post_nms_top_n_test: int = 300      # ([P] Sec. 4)
    rpn_nms_iou: float = 0.7                # ([P] Sec. 3.3)
    # Proposals smaller than 16 px at the original image's scale are removed [C]. Order: this
    # package takes the pre-NMS top-n first and then drops the small boxes among them; [C] drops
    # small boxes first and then takes the top-n. The two differ only when small boxes rank among
    # the top-n: [C] then reaches further down the ranking (rpn.generate_proposals).
    rpn_min_size: float = 16.0

    # --- Fast R-CNN detector ([F], [C]) ----------------------------------------------------------
    roi_output_size: int = 7           # RoI pooling grid: 7x7 for VGG-16, 6x6 for ZF [C]
    roi_pool_impl: str = "fast"        # "fast" (torchvision's kernel) | "reference" (plain PyTorch)
    representation_size: int = 4096    # fc6 and fc7 [C]
    dropout: float = 0.5               # after fc6 and fc7 [C]
    roi_batch_size: int = 128          # RoIs per image [C] ([F]: 2 images x 64)
    roi_positive_fraction: float = 0.25    # up to 25% foreground ([F] Sec. 2.3)
    roi_fg_iou: float = 0.5            # foreground: IoU >= 0.5 with a ground-truth box ([F] Sec. 2.3)
    # Background: max IoU in [0.1, 0.5) ([F] Sec. 2.3 and [C]'s config.py default), topped up from
    # [0, 0.1) when there are too few. [C]'s Faster R-CNN configs (faster_rcnn_end2end.yml,
    # faster_rcnn_alt_opt.yml) set BG_THRESH_LO = 0, i.e. (0.0, 0.5): set that to follow them. We
    # keep [F]'s rule because it is the one the papers state and explain (hard-negative mining).
    roi_bg_iou: tuple = (0.1, 0.5)
    # The detector's regression targets are divided by the stds (0.1, 0.1, 0.2, 0.2) [C]; one box
    # coder owns these weights in both directions (encode in training, decode at test).
    box_coder_weights: tuple = (10.0, 10.0, 5.0, 5.0)
    det_lambda: float = 1.0            # L = L_cls + lambda [u >= 1] L_loc ([F] eq. 1)
    # Objects marked "difficult" (VOC) are left out of training, as in [C] (USE_DIFF = False),
    # and ignored by evaluation either way. True trains on them too.
    train_on_difficult: bool = False

    # --- Test-time post-processing [C] ------------------------------------------------------------
    score_thresh: float = 0.05         # detections scoring at most this are dropped
    det_nms_iou: float = 0.3           # NMS per class
    detections_per_img: int = 100      # the best 100 detections per image are kept

    # --- Training ([P] Sec. 3.1.3, [F] Sec. 2.3) ----------------------------------------------
    lr: float = 0.001                  # for 60k mini-batches on VOC, then x 0.1 for 20k ...
    lr_drop_at: float = 0.75           # ... i.e. after 3/4 of the iterations
    lr_drop_factor: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0005
    flip_prob: float = 0.5             # horizontal flips ([F] Sec. 2.3)
    init_std: float = 0.01             # new layers: zero-mean Gaussian, std 0.01 ([P] Sec. 3.1.3)
    bbox_init_std: float = 0.001       # the detector's box regression layer [C]
    freeze_early_vgg: bool = True      # VGG-16 with ImageNet weights tunes conv3_1 and up ([P] Sec. 3.1.3)

    # --- Speed (no effect on the maths) ------------------------------------------------------------
    nms_impl: str = "fast"             # "fast" (torchvision's kernel) | "reference" (plain PyTorch)
    # NHWC memory layout for the convolutions, which CPU and cuDNN kernels run faster
    # (bench/: VGG-16 inference 0.86x the time of NCHW)
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

    def replace(self, **changes) -> FasterRCNNConfig:
        """A copy with some fields changed (unknown names raise TypeError naming them)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain dict of Python scalars and lists: safe for checkpoints read with weights_only=True."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FasterRCNNConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown FasterRCNNConfig fields {unknown}")
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**fields)


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
