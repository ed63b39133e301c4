"""Datasets and data plumbing: the built-in shapes, Pascal VOC and COCO readers,
box-aware transforms, the DataLoader collate function and target validation.

Every dataset returns (image (3, H, W) float32 in [0, 1], target dict with
"boxes" (N, 4) float32 (x1, y1, x2, y2), "labels" (N,) int64 in 1..C,
"difficult" (N,) bool and "image_id").

check_dataset(dataset) lists every problem in a dataset (undecodable or
truncated images, bad annotations) at once, before a long training run.
"""

from .checking import check_dataset
from .coco import COCODataset, check_coco
from .loading import ExifOrientationWarning
from .shapes import ShapesDataset
from .targets import DegenerateBoxWarning, validate_target
from .transforms import Compose, RandomHorizontalFlip, collate_fn
from .voc import VOCDataset, check_voc

__all__ = [
    "ShapesDataset",
    "VOCDataset",
    "COCODataset",
    "collate_fn",
    "Compose",
    "RandomHorizontalFlip",
    "validate_target",
    "DegenerateBoxWarning",
    "ExifOrientationWarning",
    "check_dataset",
    "check_voc",
    "check_coco",
]
