"""ShapesDataset: the built-in synthetic detection dataset.

Offline, deterministic and fast, so every notebook and test can train a real
detector on a laptop CPU without downloading anything. Each image holds up to
`max_objects` filled shapes of five classes on a textured, noisy background:

    label  class            box height / width
      1    circle           1
      2    square           1
      3    triangle         1
      4    wide_rectangle   1/2
      5    tall_rectangle   2

The three aspect ratios are the paper's anchor ratios 1:2, 1:1, 2:1 (Sec. 3.1.1;
ratio = height / width), and object sizes are log-uniform between
`min_object_size` and `max_object_size` (size = sqrt(box area), the anchors'
"scale"), so every anchor shape has work to do. Label 0 is background.

Image `index` is drawn from `np.random.default_rng([seed, index])` alone, so it
is the same whatever the access order, the DataLoader worker or the machine.

Boxes are the tight boxes of each shape's *visible* pixels (the VOC convention),
integer-valued, x2/y2 exclusive: a shape covering pixel columns 10..29 has
x1 = 10, x2 = 30. Later shapes are drawn on top of earlier ones, but a placement
is rejected if it would cover more than 40% of an earlier object's box or
overlap it with IoU > 0.5, so every object stays recognisable. About 5% of the
images have no objects at all: valid input that the model must handle.
"""

import math
import operator
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from .transforms import to_float_image

CLASSES = ("circle", "square", "triangle", "wide_rectangle", "tall_rectangle")
# Box height / width per class (the anchors' ratio convention, Sec. 3.1.1).
ASPECT_RATIOS = (1.0, 1.0, 1.0, 0.5, 2.0)

MAX_COVERED = 0.4  # at most this fraction of an earlier object's box may be covered
MAX_IOU = 0.5  # and no two objects may overlap more than this
MIN_CONTRAST = 100.0  # Euclidean RGB distance (0..441) of a fill colour to what lies under it
PLACEMENT_TRIES = 30


class ShapesDataset(Dataset):
    """Synthetic shapes for detection; `dataset[i]` -> (image (3, H, W) float in [0, 1], target).

    Args:
        num_images: dataset length.
        image_size: (H, W).
        seed: with the index, fully determines each image.
        min_object_size, max_object_size: range of sqrt(box area) in pixels (log-uniform).
        max_objects: objects per image are uniform in 1..max_objects ...
        empty_fraction: ... except this fraction of images, which have none.
        background: "textured" (gradient + low-frequency blobs + pixel noise) or "plain"
            (one flat colour, no noise: handy for a first look and for exact tests).
        transforms: optional callable (image, target) -> (image, target).

    target: {"boxes": (N, 4) float32, "labels": (N,) int64 in 1..5,
             "difficult": (N,) bool (all False), "image_id": int index}
    """

    CLASSES = CLASSES

    def __init__(
        self,
        num_images=1000,
        image_size=(256, 256),
        seed=0,
        min_object_size=24,
        max_object_size=128,
        max_objects=5,
        empty_fraction=0.05,
        background="textured",
        transforms=None,
    ):
        height, width = (int(s) for s in image_size)
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if height < 8 or width < 8:
            raise ValueError(f"image_size must be at least (8, 8), got {tuple(image_size)}")
        if not 4 <= min_object_size <= max_object_size:
            raise ValueError(
                f"need 4 <= min_object_size <= max_object_size, got {min_object_size}, {max_object_size}"
            )
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")
        if not 0.0 <= empty_fraction <= 1.0:
            raise ValueError(f"empty_fraction must be in [0, 1], got {empty_fraction}")
        if background not in ("textured", "plain"):
            raise ValueError(f"background must be 'textured' or 'plain', got {background!r}")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_images = int(num_images)
        self.image_size = (height, width)
        self.seed = int(seed)
        self.min_object_size = min_object_size
        self.max_object_size = max_object_size
        self.max_objects = int(max_objects)
        self.empty_fraction = empty_fraction
        self.background = background
        self.transforms = transforms
        self.classes = CLASSES

    def __len__(self):
        return self.num_images

    def __getitem__(self, index):
        index = self._check_index(index)
        pixels, boxes, labels = self.render(index)
        image = to_float_image(pixels)
        target = {
            "boxes": torch.from_numpy(boxes.astype(np.float32)),
            "labels": torch.from_numpy(labels),
            "difficult": torch.zeros(len(labels), dtype=torch.bool),
            "image_id": index,
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def check(self):
        """Problems in the data (frcnn_edu.data.check_dataset): none, images are generated, not read."""
        return []

    def _check_index(self, index):
        index = operator.index(index)
        if index < 0:
            index += self.num_images
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for ShapesDataset of length {self.num_images}")
        return index

    def image_name(self, index):
        """File stem used by write_voc, e.g. "0000_000042" (seed 0, index 42)."""
        return f"{self.seed:04d}_{index:06d}"

    # ---- rendering -------------------------------------------------------------------

    def render(self, index):
        """Draw image `index`: (H, W, 3) uint8 pixels, boxes (N, 4) int64, labels (N,) int64."""
        rng = np.random.default_rng([self.seed, index])
        height, width = self.image_size
        canvas = self._draw_background(rng)
        background = np.asarray(canvas)
        classes, boxes = self._place_objects(rng)

        # Objects are drawn twice: in colour, and as their index into a label map
        # from which each object's visible pixels (hence its tight box) are read.
        label_map = Image.new("L", (width, height), 0)
        draw, draw_ids = ImageDraw.Draw(canvas), ImageDraw.Draw(label_map)
        colours = []
        for k, (cls, box) in enumerate(zip(classes, boxes)):
            under = [background[box[1] : box[3], box[0] : box[2]].reshape(-1, 3).mean(0)]
            under += [colours[j] for j in range(k) if _intersection(box, boxes[j]) > 0]
            colours.append(_contrasting_colour(rng, under))
            shape = _shape_coords(rng, cls, box)
            _draw_shape(draw, cls, shape, tuple(int(c) for c in colours[-1]))
            _draw_shape(draw_ids, cls, shape, k + 1)

        canvas = _jitter_brightness_contrast(rng, canvas)
        pixels = np.array(canvas)  # a writable copy
        if self.background == "textured":
            noise = rng.integers(-10, 11, size=pixels.shape, dtype=np.int16)
            pixels = np.clip(pixels + noise, 0, 255).astype(np.uint8)

        ids = np.asarray(label_map)
        visible_boxes, labels = [], []
        for k, (cls, box) in enumerate(zip(classes, boxes)):
            visible = _visible_box(ids, box, k + 1)
            if visible is not None:  # cannot happen with MAX_COVERED < 1, but never emit an empty box
                visible_boxes.append(visible)
                labels.append(cls + 1)  # label 0 is background
        boxes = np.array(visible_boxes, dtype=np.int64).reshape(-1, 4)
        return pixels, boxes, np.array(labels, dtype=np.int64)

    def _draw_background(self, rng):
        height, width = self.image_size
        if self.background == "plain":
            return Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(0, 256, 3)))
        # A base colour, a linear gradient and random low-frequency blobs, all on a
        # coarse 6x6 grid and upsampled bicubically: smooth, varied and fast.
        grid = 6
        ramp = np.linspace(-1.0, 1.0, grid)
        base = rng.uniform(40, 215, size=3)
        slope_y, slope_x = rng.uniform(-40, 40, size=(2, 3))
        blobs = rng.normal(0.0, 20.0, size=(grid, grid, 3))
        coarse = base + ramp[:, None, None] * slope_y + ramp[None, :, None] * slope_x + blobs
        coarse = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8))
        return coarse.resize((width, height), Image.BICUBIC)

    def _sample_size(self, rng, cls):
        """(w, h) in integer pixels with sqrt(w * h) log-uniform and h / w = the class's ratio."""
        height, width = self.image_size
        size = math.exp(rng.uniform(math.log(self.min_object_size), math.log(self.max_object_size)))
        ratio = ASPECT_RATIOS[cls]
        w, h = size / math.sqrt(ratio), size * math.sqrt(ratio)
        shrink = min(1.0, width / w, height / h)  # objects never exceed the image
        return max(2, int(round(w * shrink))), max(2, int(round(h * shrink)))

    def _place_objects(self, rng):
        """Classes (K,) 0-based and boxes [(x1, y1, x2, y2)] of the shapes to draw, in drawing order."""
        height, width = self.image_size
        if rng.random() < self.empty_fraction:
            return [], []
        num_objects = int(rng.integers(1, self.max_objects + 1))
        classes, boxes, covered = [], [], []
        for _ in range(num_objects):
            for _ in range(PLACEMENT_TRIES):
                cls = int(rng.integers(len(CLASSES)))
                w, h = self._sample_size(rng, cls)
                x1, y1 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
                box = (x1, y1, x1 + w, y1 + h)
                overlaps = [_intersection(box, other) for other in boxes]
                if _occlusion_ok(box, boxes, covered, overlaps):
                    covered = [c + o for c, o in zip(covered, overlaps)]
                    classes.append(cls)
                    boxes.append(box)
                    covered.append(0)
                    break
        return classes, boxes

    # ---- Pascal VOC export -----------------------------------------------------------

    def write_voc(self, root, split="trainval", image_format="jpg", indices=None):
        """Write images `indices` (default: all) in Pascal VOC layout under `root`; return root.

        root/JPEGImages/<id>.jpg|png, root/Annotations/<id>.xml, root/ImageSets/Main/<split>.txt
        with <id> = image_name(index). JPEG at quality 95, or lossless PNG (reads back
        bit-identical). VOC coordinates are 1-based inclusive pixel indices, so a box
        (x1, y1, x2, y2) is written as xmin = x1 + 1, ymin = y1 + 1, xmax = x2, ymax = y2,
        which VOCDataset converts back exactly. VOC files hold no class list: read back
        with VOCDataset(root, classes=ShapesDataset.CLASSES) to keep these label numbers
        (inferred classes are sorted by name). `transforms` are not applied.
        """
        if image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
        root = Path(root)
        for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        indices = range(self.num_images) if indices is None else [self._check_index(i) for i in indices]
        names = []
        for index in indices:
            pixels, boxes, labels = self.render(index)
            name = self.image_name(index)
            filename = f"{name}.{image_format}"
            save_options = {"quality": 95} if image_format == "jpg" else {}
            Image.fromarray(pixels).save(root / "JPEGImages" / filename, **save_options)
            xml = _voc_annotation(filename, pixels.shape, boxes, labels)
            xml.write(root / "Annotations" / f"{name}.xml", encoding="utf-8")
            names.append(name)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(n + "\n" for n in names))
        return root


# ---- helpers ---------------------------------------------------------------------------


def _intersection(a, b):
    """Overlap area of two integer boxes (x1, y1, x2, y2)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0)


def _area(box):
    return (box[2] - box[0]) * (box[3] - box[1])


def _occlusion_ok(box, earlier, covered, overlaps):
    """May `box` be drawn on top of the `earlier` boxes (already `covered` that much)?

    The sum of overlaps bounds the covered area from above, so the 40% limit holds
    however many later objects land on an earlier one.
    """
    for other, already, overlap in zip(earlier, covered, overlaps):
        if overlap == 0:
            continue
        iou = overlap / (_area(box) + _area(other) - overlap)
        if iou > MAX_IOU or already + overlap > MAX_COVERED * _area(other):
            return False
    return True


def _contrasting_colour(rng, under, tries=50):
    """A random RGB colour at least MIN_CONTRAST away from every colour in `under`."""
    under = np.asarray(under, dtype=np.float64)
    for _ in range(tries):
        colour = rng.integers(0, 256, size=3)
        if np.linalg.norm(under - colour, axis=1).min() >= MIN_CONTRAST:
            return colour
    return np.where(under[0] < 128, 255, 0)  # the cube corner opposite the background


def _shape_coords(rng, cls, box):
    """PIL drawing coordinates of a shape filling `box` (PIL's bounds are inclusive)."""
    x1, y1, x2, y2 = box[0], box[1], box[2] - 1, box[3] - 1
    if CLASSES[cls] == "triangle":
        apex_x = (x1 + x2) / 2
        if rng.random() < 0.5:  # pointing up or down
            return [(x1, y2), (x2, y2), (apex_x, y1)]
        return [(x1, y1), (x2, y1), (apex_x, y2)]
    return [x1, y1, x2, y2]


def _draw_shape(draw, cls, coords, fill):
    name = CLASSES[cls]
    if name == "circle":
        draw.ellipse(coords, fill=fill)
    elif name == "triangle":
        draw.polygon(coords, fill=fill)
    else:
        draw.rectangle(coords, fill=fill)


def _jitter_brightness_contrast(rng, image):
    """Per-image contrast x[0.8, 1.2] around mid-grey and brightness +-20, via a lookup table."""
    contrast, brightness = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
    table = np.clip(np.round((np.arange(256) - 128) * contrast + 128 + brightness), 0, 255)
    return image.point(table.astype(np.uint8).tolist() * 3)


def _visible_box(ids, box, object_id):
    """Tight (x1, y1, x2, y2) of the pixels of `ids` equal to object_id inside `box`, or None."""
    inside = ids[box[1] : box[3], box[0] : box[2]] == object_id
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        return None
    return (box[0] + cols[0], box[1] + rows[0], box[0] + cols[-1] + 1, box[1] + rows[-1] + 1)


def _voc_annotation(filename, shape, boxes, labels):
    """ElementTree of one VOC annotation (1-based inclusive coordinates)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "frcnn_edu ShapesDataset"
    size = ET.SubElement(root, "size")
    for tag, value in zip(("width", "height", "depth"), (shape[1], shape[0], shape[2])):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist()):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = CLASSES[label - 1]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (x1 + 1, y1 + 1, x2, y2)):
            ET.SubElement(bndbox, tag).text = str(value)
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree
