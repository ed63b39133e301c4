"""COCODataset: read COCO-style detection annotations (one json file + an image folder).

The json holds three lists:

    images:      {"id", "file_name", "width", "height"}
    annotations: {"image_id", "bbox": [x, y, w, h], "category_id", "iscrowd" (optional, 0)}
    categories:  {"id", "name"}

COCO category ids are not contiguous (1..90 for 80 classes in COCO itself), so
they are mapped to labels 1..C in sorted-id order; label 0 stays background and
`dataset.classes` lists the names in label order. A bbox [x, y, w, h] becomes
(x, y, x + w, y + h) in continuous pixel coordinates (COCO boxes already are).

Crowd annotations (iscrowd = 1: one box around a group of objects) are kept with
target["difficult"] = True, the VOC name for "neither reward nor punish a
detection here": evaluation ignores them, as COCO's own evaluation does.
Everything is read and checked when the dataset is built.
"""

import json
import math
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .loading import load_sample
from .targets import validate_target


class COCODataset(Dataset):
    """COCO detection data; `dataset[i]` -> (image (3, H, W) float in [0, 1], target).

    Args:
        images_dir: folder the images' file_name entries are relative to.
        annotation_json: the COCO annotation file.
        transforms: optional callable (image, target) -> (image, target).

    target: {"boxes": (N, 4) float32, "labels": (N,) int64 in 1..C,
             "difficult": (N,) bool (the crowd boxes), "image_id": the COCO image id}
    Images are in the order of the json's "images" list; images without
    annotations are valid (N = 0).
    """

    def __init__(self, images_dir, annotation_json, transforms=None):
        self.images_dir = Path(images_dir)
        self.annotation_json = Path(annotation_json)
        self.transforms = transforms
        data = _load_json(self.annotation_json)
        where = str(self.annotation_json)  # starts every error message
        images = _list(data, "images", where)
        annotations = _list(data, "annotations", where)
        categories = _list(data, "categories", where)

        names = {}
        for k, category in enumerate(categories):
            cat_id = _field(category, "id", where, f"categories[{k}]")
            if not isinstance(cat_id, int) or isinstance(cat_id, bool):
                raise ValueError(f"{where}: categories[{k}] 'id' must be an integer, got {cat_id!r}")
            if cat_id in names:
                raise ValueError(f"{where}: categories[{k}] repeats category id {cat_id!r}")
            names[cat_id] = str(_field(category, "name", where, f"categories[{k}]"))
        label_of = {cat_id: i + 1 for i, cat_id in enumerate(sorted(names))}  # 0 is background
        self.classes = tuple(names[cat_id] for cat_id in sorted(names))
        self.category_ids = tuple(sorted(names))  # label l <-> category_ids[l - 1]

        self.image_ids, self.images, self.sizes = [], [], []
        row_of = {}
        for k, image in enumerate(images):
            image_id, path, size = self._read_image_entry(image, where, f"images[{k}]")
            if image_id in row_of:
                raise ValueError(f"{where}: images[{k}] repeats image id {image_id!r}")
            row_of[image_id] = k
            self.image_ids.append(image_id)
            self.images.append(path)
            self.sizes.append(size)

        boxes = [[] for _ in images]
        labels = [[] for _ in images]
        crowd = [[] for _ in images]
        for k, annotation in enumerate(annotations):
            name = f"annotations[{k}]"
            image_id = _field(annotation, "image_id", where, name)
            category_id = _field(annotation, "category_id", where, name)
            if image_id not in row_of:
                raise ValueError(f"{where}: {name} refers to unknown image id {image_id!r}")
            if category_id not in label_of:
                raise ValueError(
                    f"{where}: {name} has unknown category_id {category_id!r}; "
                    f"known: {list(self.category_ids)}"
                )
            x, y, w, h = _bbox(_field(annotation, "bbox", where, name), where, name)
            is_crowd = annotation.get("iscrowd", 0)
            if is_crowd not in (0, 1):
                raise ValueError(f"{where}: {name} 'iscrowd' must be 0 or 1, got {is_crowd!r}")
            row = row_of[image_id]
            boxes[row].append((x, y, x + w, y + h))
            labels[row].append(label_of[category_id])
            crowd[row].append(bool(is_crowd))

        self.targets = []
        for row, image_id in enumerate(self.image_ids):
            target = {
                "boxes": torch.tensor(boxes[row], dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels[row], dtype=torch.int64),
                "difficult": torch.tensor(crowd[row], dtype=torch.bool),
                "image_id": image_id,
            }
            # Clips boxes to the image; drops zero-size ones with a warning.
            source = f"{self.annotation_json} (image id {image_id}, {self.images[row].name})"
            self.targets.append(validate_target(target, self.sizes[row], source=source))

    def _read_image_entry(self, image, where, name):
        image_id = _field(image, "id", where, name)
        file_name = _field(image, "file_name", where, name)
        width, height = (_field(image, key, where, name) for key in ("width", "height"))
        if not all(isinstance(v, (int, float)) and v > 0 for v in (width, height)):
            raise ValueError(f"{where}: {name} width/height must be positive numbers, got {width!r}, {height!r}")
        path = self.images_dir / str(file_name)
        if not path.is_file():
            raise ValueError(f"{where}: {name} image file not found: {path}")
        return image_id, path, (int(height), int(width))

    def __len__(self):
        return len(self.image_ids)

    def __getitem__(self, index):
        return load_sample(self.images[index], self.sizes[index], self.targets[index], self.transforms,
                           described_by=str(self.annotation_json))


def _load_json(path):
    if not path.is_file():
        raise ValueError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None


def _list(data, key, where):
    if not isinstance(data, dict):
        raise ValueError(f"{where}: top level must be a JSON object, got {type(data).__name__}")
    if key not in data:
        raise ValueError(f"{where}: has no {key!r} list")
    if not isinstance(data[key], list):
        raise ValueError(f"{where}: {key!r} must be a list, got {type(data[key]).__name__}")
    return data[key]


def _field(entry, key, where, name):
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: {name} must be an object, got {type(entry).__name__}")
    if key not in entry:
        raise ValueError(f"{where}: {name} has no {key!r}")
    return entry[key]


def _bbox(bbox, where, name):
    ok = isinstance(bbox, (list, tuple)) and len(bbox) == 4
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
    if not ok or not all(math.isfinite(v) for v in bbox):
        raise ValueError(f"{where}: {name} 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}")
    return bbox
