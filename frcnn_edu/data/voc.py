"""VOCDataset: read a Pascal VOC-style folder (your own data, or ShapesDataset.write_voc's).

    root/ImageSets/Main/<split>.txt    one image id per line (spaces allowed)
    root/Annotations/<id>.xml          boxes and class names
    root/JPEGImages/<filename>         the images (any format PIL reads)

VOC coordinates are 1-based inclusive pixel indices (xmin = 1 is the first
column; a box from xmin to xmax covers xmax - xmin + 1 columns). They are read
as floats and converted once to frcnn_edu's continuous coordinates:

    x1 = xmin - 1,  y1 = ymin - 1,  x2 = xmax,  y2 = ymax

Reading them as floats matters: readers that store them in unsigned integers
turn the -1 of already 0-based user data into 65535 (py-faster-rcnn's
lib/datasets/pascal_voc.py keeps them in np.uint16,
https://github.com/rbgirshick/py-faster-rcnn).
Boxes up to 1 pixel outside the image are clipped; further out is an error
naming the file. Every annotation is parsed and checked when the dataset is
built, so a bad file fails at once, not hours into training; a split with no
images, or with no objects at all, is an error too. `check_voc` (or
`dataset.check()`) lists every problem at once and also decodes every image.

Images are used as stored: an EXIF Orientation tag is not applied, because
VOC annotations refer to the stored pixels (<size> is the stored width and
height). A file with such a tag gets an ExifOrientationWarning (loading.py).
16-bit images are scaled by 65535, grayscale and RGBA ones made RGB.
"""

import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .checking import collect, raise_problems
from .loading import load_sample, read_image
from .targets import validate_target

BORDER_TOLERANCE = 1.0  # pixels a converted box may stick out of its image before it is an error


class VOCDataset(Dataset):
    """Pascal VOC detection data; `dataset[i]` -> (image (3, H, W) float in [0, 1], target).

    Args:
        root: the folder holding Annotations/, JPEGImages/ and ImageSets/Main/.
        split: name of the image-id list ImageSets/Main/<split>.txt.
        classes: class names for labels 1..C, in order (without background). None: the
            sorted set of names found in this split's annotations.
        transforms: optional callable (image, target) -> (image, target).
        keep_difficult: keep objects marked <difficult>1</difficult> (flagged in
            target["difficult"], ignored by VOC evaluation); False drops them.

    target: {"boxes": (N, 4) float32, "labels": (N,) int64, "difficult": (N,) bool,
             "image_id": the id string}
    """

    def __init__(self, root, split="trainval", classes=None, transforms=None, keep_difficult=True):
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.keep_difficult = keep_difficult
        read = _read_voc(self.root, split, classes, keep_difficult)
        raise_problems(read["problems"], f"frcnn_edu.data.check_voc({str(self.root)!r}, {split!r})")
        self.ids, self.classes = read["ids"], read["classes"]
        self.images, self.sizes, self.targets = read["images"], read["sizes"], read["targets"]

    def check(self):
        """Every problem in this dataset's files, one string per bad file ([] = all good).

        Re-reads the split file and every annotation, and decodes every image fully
        (check_voc).
        """
        return check_voc(self.root, self.split, self.classes, self.keep_difficult)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        return load_sample(self.images[index], self.sizes[index], self.targets[index], self.transforms)


def check_voc(root, split="trainval", classes=None, keep_difficult=True):
    """Every problem in a VOC folder, one string per bad file; [] means all good.

    Unlike VOCDataset(...), which stops at the first bad file, this parses every
    annotation and decodes every image fully (a truncated JPEG is found), collecting
    all problems. Arguments as for VOCDataset.
    """
    root = Path(root)
    read = _read_voc(root, split, classes, keep_difficult)
    problems = read["problems"]
    for path, size in zip(read["images"], read["sizes"]):
        collect(problems, read_image, path, size)
    return problems


def _read_voc(root, split, classes, keep_difficult):
    """Read the split file and every annotation, collecting problems instead of stopping.

    Returns a dict: "problems" (list of messages) and the dataset's "ids", "classes",
    "images", "sizes" and "targets" (of the files that read cleanly).
    """
    problems = []
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    ids = collect(problems, _read_split, split_file, root)
    records = [] if ids is None else [collect(problems, _parse_annotation, root, i) for i in ids]
    records = [r for r in records if r is not None]

    names = sorted({obj["name"] for record in records for obj in record["objects"]})
    classes = tuple(names) if classes is None else _check_classes(classes)
    label_of = {name: i + 1 for i, name in enumerate(classes)}  # 0 is background

    read = {"problems": problems, "ids": [], "classes": classes, "images": [], "sizes": [], "targets": []}
    for record in records:
        target = collect(problems, _make_target, record, label_of, classes, keep_difficult)
        if target is not None:
            read["ids"].append(record["id"])
            read["images"].append(record["image"])
            read["sizes"].append(record["size"])
            read["targets"].append(target)

    # Empty data trains nothing and evaluates to nothing: an error, not a silent no-op.
    if ids is not None and not ids:
        problems.append(f"{split_file}: split {split!r} lists no images")
    elif not problems and not any(len(t["boxes"]) for t in read["targets"]):
        dropped = "" if keep_difficult else " (difficult objects dropped: keep_difficult=False)"
        problems.append(
            f"{root} split {split!r}: none of its {len(read['targets'])} images has an object{dropped}; "
            "there is nothing to learn or evaluate"
        )
    return read


def _make_target(record, label_of, classes, keep_difficult):
    objects = [o for o in record["objects"] if keep_difficult or not o["difficult"]]
    for obj in objects:
        if obj["name"] not in label_of:
            raise ValueError(
                f"{record['xml']}: unknown class {obj['name']!r}; known classes: {list(classes)}"
            )
    target = {
        "boxes": torch.tensor([o["box"] for o in objects], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor([label_of[o["name"]] for o in objects], dtype=torch.int64),
        "difficult": torch.tensor([o["difficult"] for o in objects], dtype=torch.bool),
        "image_id": record["id"],
    }
    # Clips the boxes within the 1-pixel tolerance; drops (with a warning) any
    # that end up with zero size.
    return validate_target(target, record["size"], source=record["xml"])


FLAGGED_LINE = re.compile(r"(\S+)\s+(-1|0|1)")  # "<id> <flag>": the per-class lists' lines


def _read_split(path, root):
    """The image ids in ImageSets/Main/<split>.txt, one per non-empty line.

    A line is one id, spaces included ("my photo 1"). Only a line of the per-class
    lists' form "<id> <-1|0|1>" is read as its first word, unless the whole line is
    itself an id with an annotation file.
    """
    if not path.is_file():
        raise ValueError(f"split file not found: {path}")
    ids = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():  # -sig: a BOM is not part of an id
        line = line.strip()
        if not line:
            continue
        flagged = FLAGGED_LINE.fullmatch(line)
        if flagged and not (root / "Annotations" / f"{line}.xml").is_file():
            line = flagged.group(1)
        ids.append(line)
    return ids


def _check_classes(classes):
    classes = tuple(str(c) for c in classes)
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes has duplicates: {list(classes)}")
    if any(c.lower() in ("__background__", "background") for c in classes):
        raise ValueError(
            f"classes must not include background (label 0 is reserved for it): {list(classes)}"
        )
    return classes


def _text(element, tag, path, where):
    """The stripped text of element's child `tag`; ValueError naming the file if missing."""
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{path}: {where} has no <{tag}>")
    return child.text.strip()


def _number(element, tag, path, where):
    text = _text(element, tag, path, where)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path}: {where}<{tag}> is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{path}: {where}<{tag}> is not finite: {text!r}")
    return value


def _parse_annotation(root, image_id):
    """Parse and check Annotations/<image_id>.xml; boxes converted to continuous (x1, y1, x2, y2)."""
    path = root / "Annotations" / f"{image_id}.xml"
    if not path.is_file():
        raise ValueError(f"annotation file not found: {path}")
    try:
        annotation = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{path}: malformed XML: {err}") from None

    size = annotation.find("size")
    if size is None:
        raise ValueError(f"{path}: annotation has no <size>")
    width, height = (_number(size, tag, path, "<size>") for tag in ("width", "height"))
    if width <= 0 or height <= 0:
        raise ValueError(f"{path}: <size> must be positive, got width={width:g} height={height:g}")

    objects = []
    for i, obj in enumerate(annotation.findall("object")):
        where = f"object {i} "
        name = _text(obj, "name", path, where)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ValueError(f"{path}: {where}has no <bndbox>")
        xmin, ymin, xmax, ymax = (
            _number(bndbox, tag, path, where + "<bndbox>") for tag in ("xmin", "ymin", "xmax", "ymax")
        )
        if xmax < xmin or ymax < ymin:
            raise ValueError(
                f"{path}: {where}({name}) has xmax < xmin or ymax < ymin: "
                f"[xmin={xmin:g}, ymin={ymin:g}, xmax={xmax:g}, ymax={ymax:g}]"
            )
        box = (xmin - 1, ymin - 1, xmax, ymax)  # 1-based inclusive -> continuous
        tol = BORDER_TOLERANCE
        if box[0] < -tol or box[1] < -tol or box[2] > width + tol or box[3] > height + tol:
            raise ValueError(
                f"{path}: {where}({name}) box {list(box)} (x1, y1, x2, y2) lies outside "
                f"the {width:g}x{height:g} (WxH) image"
            )
        has_flag = (obj.findtext("difficult") or "").strip() != ""  # optional, default 0
        is_difficult = has_flag and _number(obj, "difficult", path, where) != 0
        objects.append({"name": name, "box": box, "difficult": is_difficult})

    return {
        "id": image_id,
        "xml": path,
        "size": (int(height), int(width)),
        "image": _image_path(root, image_id, annotation.findtext("filename"), path),
        "objects": objects,
    }


def _image_path(root, image_id, filename, xml_path):
    """JPEGImages/<filename> from the XML, else JPEGImages/<id>.jpg; must exist."""
    candidates = [root / "JPEGImages" / filename.strip()] if filename and filename.strip() else []
    candidates.append(root / "JPEGImages" / f"{image_id}.jpg")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise ValueError(f"{xml_path}: image file not found (tried {tried})")
