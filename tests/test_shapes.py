"""ShapesDataset: determinism, box validity and tightness, class/size/ratio coverage, VOC export."""

import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from frcnn_edu.data import ShapesDataset, VOCDataset

N = 200


@pytest.fixture(scope="module")
def dataset():
    return ShapesDataset(num_images=N, seed=0)


@pytest.fixture(scope="module")
def samples(dataset):
    return [dataset[i] for i in range(N)]


def assert_same(a, b):
    assert torch.equal(a[0], b[0])
    for key in ("boxes", "labels", "difficult"):
        assert torch.equal(a[1][key], b[1][key])
    assert a[1]["image_id"] == b[1]["image_id"]


def test_deterministic_and_order_independent(dataset, samples):
    fresh = ShapesDataset(num_images=N, seed=0)
    for i in (17, 3, 150, 3, 0):  # any access order, any instance
        assert_same(fresh[i], samples[i])
    assert not torch.equal(samples[0][0], samples[1][0])
    other_seed = ShapesDataset(num_images=N, seed=1)[0]
    assert not torch.equal(other_seed[0], samples[0][0])
    assert_same(dataset[-1], samples[N - 1])


def test_index_out_of_range(dataset):
    with pytest.raises(IndexError):
        dataset[N]
    with pytest.raises(IndexError):
        dataset[-N - 1]
    assert len(dataset) == N


def test_image_and_target_format(samples):
    for image, _ in samples:
        assert image.shape == (3, 256, 256) and image.dtype == torch.float32
    for image, _ in samples[::10]:  # uint8 / 255 by construction; a few suffice
        assert image.min() >= 0.0 and image.max() <= 1.0 and image.std() > 0.05
    for i, (_, target) in enumerate(samples):
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (len(target["labels"]), 4)
        assert target["labels"].dtype == torch.int64 and target["image_id"] == i
        assert target["difficult"].dtype == torch.bool and target["difficult"].shape == target["labels"].shape
    boxes = torch.cat([t["boxes"] for _, t in samples])
    labels = torch.cat([t["labels"] for _, t in samples])
    assert not torch.cat([t["difficult"] for _, t in samples]).any()
    assert torch.equal(boxes, boxes.round())  # integer-valued
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 256).all() and (boxes[:, 3] <= 256).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert ((labels >= 1) & (labels <= 5)).all()


def test_some_images_are_empty(samples):
    empty = [t for _, t in samples if len(t["labels"]) == 0]
    assert 2 <= len(empty) <= 25  # about 5% of 200
    assert empty[0]["boxes"].shape == (0, 4) and empty[0]["labels"].shape == (0,)
    assert max(len(t["labels"]) for _, t in samples) == 5


def test_classes_ratios_and_sizes(samples, dataset):
    assert dataset.classes == ShapesDataset.CLASSES == (
        "circle", "square", "triangle", "wide_rectangle", "tall_rectangle"
    )
    boxes = torch.cat([t["boxes"] for _, t in samples])
    labels = torch.cat([t["labels"] for _, t in samples])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    ratio = h / w  # the anchors' convention: height / width
    expected = {1: 1.0, 2: 1.0, 3: 1.0, 4: 0.5, 5: 2.0}
    for label, target_ratio in expected.items():
        r = ratio[labels == label]
        assert len(r) >= 50, f"class {label} appears only {len(r)} times"
        assert abs(r.median().item() - target_ratio) < 0.05 * target_ratio
    size = (w * h).sqrt()
    assert size.min() < 1.2 * 24 and size.max() > 0.85 * 128
    assert size.max() <= 128 * 1.02 and (size >= 24 * 0.97).float().mean() > 0.9
    # log-uniform: about as many objects in [24, 55) as in [55, 128]
    small = (size < (24 * 128) ** 0.5).float().mean().item()
    assert 0.35 < small < 0.65


def test_occlusion_is_limited(samples):
    from torchvision.ops import box_iou

    for _, target in samples:
        iou = box_iou(target["boxes"], target["boxes"])
        iou.fill_diagonal_(0)
        assert iou.numel() == 0 or iou.max() <= 0.5


def test_boxes_are_tight_on_plain_background():
    """On a flat background every drawn pixel is inside a box, and every box edge touches one."""
    dataset = ShapesDataset(num_images=40, seed=3, background="plain")
    for i in range(len(dataset)):
        pixels, boxes, _ = dataset.render(i)
        in_box = np.zeros(pixels.shape[:2], dtype=bool)
        for x1, y1, x2, y2 in boxes:
            in_box[y1:y2, x1:x2] = True
        background = pixels[~in_box][0]  # any pixel outside all boxes
        drawn = (pixels != background).any(axis=2)
        assert not drawn[~in_box].any(), f"image {i}: drawn pixels outside the boxes"
        for x1, y1, x2, y2 in boxes:
            assert drawn[y1, x1:x2].any() and drawn[y2 - 1, x1:x2].any(), f"image {i}: box not tight"
            assert drawn[y1:y2, x1].any() and drawn[y1:y2, x2 - 1].any(), f"image {i}: box not tight"
        single = len(boxes) == 1
        if single:  # one object: its box is exactly the bounding box of the drawn pixels
            ys, xs = np.nonzero(drawn)
            assert boxes[0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_write_voc_png_round_trip(tmp_path, samples):
    dataset = ShapesDataset(num_images=N, seed=0)
    indices = [0, 5, 9] + [i for i, (_, t) in enumerate(samples) if len(t["labels"]) == 0][:1]
    root = dataset.write_voc(tmp_path / "voc", split="train", image_format="png", indices=indices)
    assert root == tmp_path / "voc"
    voc = VOCDataset(root, split="train", classes=ShapesDataset.CLASSES)
    assert len(voc) == len(indices)
    for k, i in enumerate(indices):
        image, target = voc[k]
        assert target["image_id"] == dataset.image_name(i) == f"0000_{i:06d}"
        assert torch.equal(image, samples[i][0])  # bit-identical pixels
        assert torch.equal(target["boxes"], samples[i][1]["boxes"])
        assert torch.equal(target["labels"], samples[i][1]["labels"])
    # the XML holds VOC's 1-based inclusive coordinates
    xml = ET.parse(root / "Annotations" / "0000_000000.xml").getroot()
    first = xml.find("object/bndbox")
    x1, y1, x2, y2 = samples[0][1]["boxes"][0].int().tolist()
    assert [int(first.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")] == [x1 + 1, y1 + 1, x2, y2]
    assert xml.findtext("size/width") == "256" and xml.findtext("filename") == "0000_000000.png"


def test_write_voc_jpg(tmp_path, samples):
    dataset = ShapesDataset(num_images=N, seed=0)
    root = dataset.write_voc(tmp_path, indices=[1, 2])
    assert (root / "JPEGImages" / "0000_000001.jpg").is_file()
    assert (root / "ImageSets" / "Main" / "trainval.txt").read_text() == "0000_000001\n0000_000002\n"
    voc = VOCDataset(root, classes=ShapesDataset.CLASSES)
    image, target = voc[0]
    assert (image - samples[1][0]).abs().mean() < 0.02  # JPEG quality 95: close, not exact
    assert torch.equal(target["boxes"], samples[1][1]["boxes"])
    with pytest.raises(ValueError, match="image_format"):
        dataset.write_voc(tmp_path, image_format="bmp")


def test_transforms_and_options():
    flipped = ShapesDataset(num_images=3, transforms=lambda im, t: (im.flip(-1), t))
    plain = ShapesDataset(num_images=3)
    assert torch.equal(flipped[1][0], plain[1][0].flip(-1))
    small = ShapesDataset(num_images=20, image_size=(64, 96), min_object_size=8, max_object_size=48)
    for image, target in (small[i] for i in range(20)):
        assert image.shape == (3, 64, 96)
        assert (target["boxes"][:, 2] <= 96).all() and (target["boxes"][:, 3] <= 64).all()
    with pytest.raises(ValueError, match="min_object_size"):
        ShapesDataset(min_object_size=50, max_object_size=20)
    with pytest.raises(ValueError, match="background"):
        ShapesDataset(background="stripes")
