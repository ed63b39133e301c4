"""COCODataset: category mapping, bbox conversion, iscrowd, empty images and bad input."""

import copy
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn_edu.data import COCODataset
from frcnn_edu.data.targets import DegenerateBoxWarning

COCO = {
    "images": [
        {"id": 42, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 7, "file_name": "sub/b.png", "width": 20, "height": 10},
    ],
    "annotations": [
        {"id": 1, "image_id": 42, "bbox": [10, 5, 20, 15], "category_id": 18, "iscrowd": 0},
        {"id": 2, "image_id": 42, "bbox": [0.5, 1.5, 3, 4], "category_id": 3},
        {"id": 3, "image_id": 42, "bbox": [1, 1, 30, 25], "category_id": 90, "iscrowd": 1},
    ],
    "categories": [
        {"id": 90, "name": "toothbrush"},
        {"id": 3, "name": "car"},
        {"id": 18, "name": "dog"},
    ],
}


def write(tmp_path, data):
    (tmp_path / "images" / "sub").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image in COCO["images"]:
        pixels = rng.integers(0, 256, size=(image["height"], image["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "images" / image["file_name"])
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return tmp_path / "images", path


def test_reads_mapping_boxes_and_crowd(tmp_path):
    images_dir, path = write(tmp_path, COCO)
    dataset = COCODataset(images_dir, path)
    # category ids 3, 18, 90 -> labels 1, 2, 3 (sorted-id order)
    assert dataset.classes == ("car", "dog", "toothbrush")
    assert dataset.category_ids == (3, 18, 90)
    assert len(dataset) == 2
    image, target = dataset[0]
    expected = np.array(Image.open(images_dir / "a.png"))
    assert torch.equal(image, torch.from_numpy(expected).permute(2, 0, 1).float() / 255)
    # [x, y, w, h] -> (x, y, x + w, y + h)
    assert target["boxes"].tolist() == [[10, 5, 30, 20], [0.5, 1.5, 3.5, 5.5], [1, 1, 31, 26]]
    assert target["boxes"].dtype == torch.float32
    assert target["labels"].tolist() == [2, 1, 3]
    assert target["difficult"].tolist() == [False, False, True]  # iscrowd=1 -> difficult
    assert target["image_id"] == 42


def test_image_without_annotations(tmp_path):
    dataset = COCODataset(*write(tmp_path, COCO))
    image, target = dataset[1]
    assert image.shape == (3, 10, 20) and target["image_id"] == 7
    assert target["boxes"].shape == (0, 4) and target["labels"].dtype == torch.int64
    assert target["difficult"].shape == (0,)


def test_zero_size_box_dropped_with_warning_and_clipping(tmp_path):
    data = copy.deepcopy(COCO)
    data["annotations"].append({"image_id": 7, "bbox": [3, 3, 0, 4], "category_id": 3})
    data["annotations"].append({"image_id": 7, "bbox": [15, 2, 10, 4], "category_id": 18})
    with pytest.warns(DegenerateBoxWarning, match=r"image id 7.*box 0"):
        dataset = COCODataset(*write(tmp_path, data))
    _, target = dataset[1]
    assert target["boxes"].tolist() == [[15, 2, 20, 6]]  # clipped to the 20-px-wide image
    assert target["labels"].tolist() == [2]


def delete(path):
    def edit(data):
        *parents, key = path
        node = data
        for p in parents:
            node = node[p]
        del node[key]

    return edit


def setitem(path, value):
    def edit(data):
        *parents, key = path
        node = data
        for p in parents:
            node = node[p]
        node[key] = value

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (delete(["annotations", 1, "bbox"]), "annotations[1] has no 'bbox'"),
        (delete(["annotations", 0, "image_id"]), "annotations[0] has no 'image_id'"),
        (delete(["annotations", 2, "category_id"]), "annotations[2] has no 'category_id'"),
        (delete(["images", 1, "file_name"]), "images[1] has no 'file_name'"),
        (delete(["images", 0, "height"]), "images[0] has no 'height'"),
        (delete(["categories", 2, "name"]), "categories[2] has no 'name'"),
        (delete(["images"]), "no 'images'"),
        (delete(["annotations"]), "no 'annotations'"),
        (delete(["categories"]), "no 'categories'"),
        (setitem(["annotations", 0, "image_id"], 999), "annotations[0] refers to unknown image id 999"),
        (setitem(["annotations", 1, "category_id"], 4), "annotations[1] has unknown category_id 4"),
        (setitem(["annotations", 1, "bbox"], [1, 2, 3]), "annotations[1] 'bbox' must be 4"),
        (setitem(["annotations", 1, "bbox"], [1, 2, "3", 4]), "annotations[1] 'bbox' must be 4"),
        (setitem(["annotations", 2, "iscrowd"], "yes"), "annotations[2] 'iscrowd' must be 0 or 1"),
        (setitem(["images", 1, "id"], 42), "images[1] repeats image id 42"),
        (setitem(["categories", 1, "id"], 90), "categories[1] repeats category id 90"),
        (setitem(["images", 0, "file_name"], "missing.png"), "image file not found"),
    ],
)
def test_bad_json_names_file_and_key(tmp_path, edit, message):
    data = copy.deepcopy(COCO)
    edit(data)
    images_dir, path = write(tmp_path, data)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        COCODataset(images_dir, path)
    assert str(path) in str(info.value)


def test_invalid_json_and_missing_file(tmp_path):
    images_dir, path = write(tmp_path, COCO)
    path.write_text('{"images": [')
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*not valid JSON"):
        COCODataset(images_dir, path)
    with pytest.raises(ValueError, match="not found"):
        COCODataset(images_dir, tmp_path / "nope.json")


def test_undecodable_image(tmp_path):
    images_dir, path = write(tmp_path, COCO)
    (images_dir / "a.png").write_bytes(b"not a png")
    dataset = COCODataset(images_dir, path)
    with pytest.raises(ValueError, match=re.escape(str(images_dir / "a.png")) + ".*cannot decode"):
        dataset[0]
