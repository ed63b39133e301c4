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
Everything is read and checked when the dataset is built; a set with no images,
or with no objects at all, is an error. `check_coco` (or `dataset.check()`)
lists every problem at once and also decodes every image.

Images are used as stored: an EXIF Orientation tag is not applied, because COCO
annotations refer to the stored pixels (width/height are the stored ones). A
file with such a tag gets an ExifOrientationWarning (loading.py). 16-bit images
are scaled by 65535, grayscale and RGBA ones made RGB.
"""

import json
import math
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .checking import collect, raise_problems
from .loading import load_sample, read_image
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
        read = _read_coco(self.images_dir, self.annotation_json)
        lister = f"frcnn_edu.data.check_coco({str(self.images_dir)!r}, {str(self.annotation_json)!r})"
        raise_problems(read["problems"], lister)
        self.classes = read["classes"]
        self.category_ids = read["category_ids"]  # label l <-> category_ids[l - 1]
        self.image_ids, self.images, self.sizes = read["image_ids"], read["images"], read["sizes"]
        self.targets = read["targets"]

    def check(self):
        """Every problem in the json and the images, one string each ([] = all good).

        Re-reads the json and decodes every image fully (check_coco).
        """
        return check_coco(self.images_dir, self.annotation_json)

    def __len__(self):
        return len(self.image_ids)

    def __getitem__(self, index):
        return load_sample(self.images[index], self.sizes[index], self.targets[index], self.transforms,
                           described_by=str(self.annotation_json))


def check_coco(images_dir, annotation_json):
    """Every problem in a COCO set, one string each; [] means all good.

    Unlike COCODataset(...), which stops at the first bad entry, this checks every
    entry of the json and decodes every image fully (a truncated JPEG is found),
    collecting all problems.
    """
    read = _read_coco(Path(images_dir), Path(annotation_json))
    problems = read["problems"]
    for path, size in zip(read["images"], read["sizes"]):
        if path.is_file():  # a missing file is reported already
            collect(problems, read_image, path, size, str(annotation_json))
    return problems


def _read_coco(images_dir, annotation_json):
    """Read and check the json, collecting problems instead of stopping at the first.

    Returns a dict: "problems" (list of messages, each starting with the json's path) and
    the dataset's "classes", "category_ids", "image_ids", "images", "sizes", "targets".
    """
    where = str(annotation_json)  # starts every message
    problems = []
    read = {"problems": problems, "classes": (), "category_ids": (),
            "image_ids": [], "images": [], "sizes": [], "targets": []}
    try:
        data = _load_json(annotation_json)
        images = _list(data, "images", where)
        annotations = _list(data, "annotations", where)
        categories = _list(data, "categories", where)
    except ValueError as err:
        problems.append(str(err))  # nothing more can be read
        return read

    names = {}
    for k, category in enumerate(categories):
        entry = collect(problems, _read_category, category, names, where, f"categories[{k}]")
        if entry is not None:
            names[entry[0]] = entry[1]
    label_of = {cat_id: i + 1 for i, cat_id in enumerate(sorted(names))}  # 0 is background
    read["classes"] = tuple(names[cat_id] for cat_id in sorted(names))
    read["category_ids"] = tuple(sorted(names))

    row_of = {}
    for k, image in enumerate(images):
        entry = collect(problems, _read_image_entry, image, row_of, images_dir, where, f"images[{k}]")
        if entry is not None:
            image_id, path, size = entry
            row_of[image_id] = len(read["image_ids"])
            read["image_ids"].append(image_id)
            read["images"].append(path)
            read["sizes"].append(size)
            if not path.is_file():  # still registered: its annotations are checked all the same
                problems.append(f"{where}: images[{k}] image file not found: {path}")

    objects = [[] for _ in read["image_ids"]]  # per image: (box, label, crowd)
    for k, annotation in enumerate(annotations):
        entry = collect(problems, _read_annotation, annotation, row_of, label_of, where, f"annotations[{k}]")
        if entry is not None:
            row, *obj = entry
            objects[row].append(obj)

    for row, image_id in enumerate(read["image_ids"]):
        target = {
            "boxes": torch.tensor([box for box, _, _ in objects[row]], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([label for _, label, _ in objects[row]], dtype=torch.int64),
            "difficult": torch.tensor([crowd for _, _, crowd in objects[row]], dtype=torch.bool),
            "image_id": image_id,
        }
        # Clips boxes to the image; drops zero-size ones with a warning.
        source = f"{annotation_json} (image id {image_id}, {read['images'][row].name})"
        read["targets"].append(collect(problems, validate_target, target, read["sizes"][row], None, source))

    # Empty data trains nothing and evaluates to nothing: an error, not a silent no-op.
    if not images:
        problems.append(f"{where}: 'images' is empty: the set has no images")
    elif not annotations:
        problems.append(f"{where}: 'annotations' is empty: the set has no objects")
    elif not problems and not any(len(t["boxes"]) for t in read["targets"]):
        problems.append(f"{where}: none of its {len(annotations)} annotations left a box; the set has no objects")
    return read


def _read_category(category, names, where, name):
    """(category id, name) of categories[k]; its id must be a new integer."""
    cat_id = _field(category, "id", where, name)
    if not isinstance(cat_id, int) or isinstance(cat_id, bool):
        raise ValueError(f"{where}: {name} 'id' must be an integer, got {cat_id!r}")
    if cat_id in names:
        raise ValueError(f"{where}: {name} repeats category id {cat_id!r}")
    return cat_id, str(_field(category, "name", where, name))


def _read_image_entry(image, row_of, images_dir, where, name):
    """(image id, path, (H, W)) of images[k]; its id must be new."""
    image_id = _field(image, "id", where, name)
    file_name = _field(image, "file_name", where, name)
    width, height = (_field(image, key, where, name) for key in ("width", "height"))
    if not all(isinstance(v, (int, float)) and v > 0 for v in (width, height)):
        raise ValueError(f"{where}: {name} width/height must be positive numbers, got {width!r}, {height!r}")
    if image_id in row_of:
        raise ValueError(f"{where}: {name} repeats image id {image_id!r}")
    return image_id, images_dir / str(file_name), (int(height), int(width))


def _read_annotation(annotation, row_of, label_of, where, name):
    """(image row, box (x1, y1, x2, y2), label, crowd) of annotations[k]."""
    image_id = _field(annotation, "image_id", where, name)
    category_id = _field(annotation, "category_id", where, name)
    if image_id not in row_of:
        raise ValueError(f"{where}: {name} refers to unknown image id {image_id!r}")
    if category_id not in label_of:
        raise ValueError(f"{where}: {name} has unknown category_id {category_id!r}; known: {list(label_of)}")
    x, y, w, h = _bbox(_field(annotation, "bbox", where, name), where, name)
    is_crowd = annotation.get("iscrowd", 0)
    if is_crowd not in (0, 1):
        raise ValueError(f"{where}: {name} 'iscrowd' must be 0 or 1, got {is_crowd!r}")
    return row_of[image_id], (x, y, x + w, y + h), label_of[category_id], bool(is_crowd)


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
