"""VOCDataset: coordinate conversion, classes, difficult, empty images and every bad-input error."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn_edu.data import VOCDataset
from frcnn_edu.data.targets import DegenerateBoxWarning


def object_xml(name, xmin, ymin, xmax, ymax, difficult=0):
    return (
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


def write_voc(root, images, split="trainval", width=40, height=30):
    """images: {id: [object tuples]}; writes PNG images and XML annotations; returns root."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id, objects in images.items():
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.png")
        xml = (
            f"<annotation><filename>{image_id}.png</filename>"
            f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            + "".join(object_xml(*obj) for obj in objects)
            + "</annotation>"
        )
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
    return root


@pytest.fixture
def voc(tmp_path):
    return write_voc(
        tmp_path,
        {
            "a": [("dog", 11, 21, 30, 30), ("cat", 1, 1, 5, 5, 1)],
            "b": [],
            "c": [("bird", 2, 3, 40, 30), ("dog", 5, 5, 5, 5)],  # 1 px wide: valid in VOC
        },
    )


def test_reads_boxes_classes_and_images(voc):
    dataset = VOCDataset(voc)
    assert dataset.classes == ("bird", "cat", "dog")  # inferred, sorted
    assert len(dataset) == 3 and dataset.ids == ["a", "b", "c"]
    image, target = dataset[0]
    expected = np.array(Image.open(voc / "JPEGImages" / "a.png"))
    assert torch.equal(image, torch.from_numpy(expected).permute(2, 0, 1).float() / 255)
    # 1-based inclusive -> continuous: x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax
    assert target["boxes"].tolist() == [[10, 20, 30, 30], [0, 0, 5, 5]]
    assert target["boxes"].dtype == torch.float32
    assert target["labels"].tolist() == [3, 2]
    assert target["difficult"].tolist() == [False, True]
    assert target["image_id"] == "a"
    assert dataset[2][1]["boxes"].tolist() == [[1, 2, 40, 30], [4, 4, 5, 5]]


def test_empty_image(voc):
    _, target = VOCDataset(voc)[1]
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["difficult"].shape == (0,)


def test_given_classes_and_keep_difficult(voc):
    dataset = VOCDataset(voc, classes=["dog", "cat", "bird", "horse"], keep_difficult=False)
    assert dataset.classes == ("dog", "cat", "bird", "horse")
    _, target = dataset[0]
    assert target["labels"].tolist() == [1] and target["difficult"].tolist() == [False]
    with pytest.raises(ValueError, match="background"):
        VOCDataset(voc, classes=["__background__", "bird", "cat", "dog"])


def test_targets_are_copies_and_transforms_apply(voc):
    dataset = VOCDataset(voc, transforms=lambda image, target: (image * 0, target))
    image, target = dataset[0]
    assert image.abs().sum() == 0
    target["boxes"] += 100
    assert dataset[0][1]["boxes"][0].tolist() == [10, 20, 30, 30]


def test_zero_based_data_is_clipped_not_wrapped(tmp_path):
    # 0-based user data gives x1 = -1: within the 1 px tolerance, clipped to 0 (no 65535 wrap)
    root = write_voc(tmp_path, {"z": [("dog", 0, 0, 40, 31)]})
    assert VOCDataset(root)[0][1]["boxes"].tolist() == [[0, 0, 40, 30]]


def test_degenerate_after_clipping_warns_with_file(tmp_path):
    root = write_voc(tmp_path, {"d": [("dog", 41, 5, 41, 9), ("cat", 1, 1, 4, 4)]})
    with pytest.warns(DegenerateBoxWarning, match=re.escape(str(root / "Annotations" / "d.xml"))):
        dataset = VOCDataset(root)
    assert dataset[0][1]["labels"].tolist() == [dataset.classes.index("cat") + 1]


def test_filename_fallback_to_id_jpg(tmp_path):
    root = write_voc(tmp_path, {"j": [("dog", 1, 1, 4, 4)]})
    Image.open(root / "JPEGImages" / "j.png").save(root / "JPEGImages" / "j.jpg", quality=95)
    (root / "JPEGImages" / "j.png").unlink()
    image, _ = VOCDataset(root)[0]
    assert image.shape == (3, 30, 40)


# ---- every bad input names the file -----------------------------------------------------


def expect_error(match_file, make):
    """Run make(); it must raise ValueError naming match_file. Returns the message."""
    with pytest.raises(ValueError) as info:
        make()
    assert str(match_file) in str(info.value), str(info.value)
    return str(info.value)


def test_missing_split_file(voc):
    message = expect_error(voc / "ImageSets" / "Main" / "val.txt", lambda: VOCDataset(voc, split="val"))
    assert "not found" in message


def test_missing_annotation_file(voc):
    (voc / "Annotations" / "b.xml").unlink()
    expect_error(voc / "Annotations" / "b.xml", lambda: VOCDataset(voc))


def test_missing_image(voc):
    (voc / "JPEGImages" / "c.png").unlink()
    message = expect_error(voc / "Annotations" / "c.xml", lambda: VOCDataset(voc))
    assert "image file not found" in message and "c.png" in message


def test_malformed_xml(voc):
    (voc / "Annotations" / "a.xml").write_text("<annotation><size><width>4</width></annotation>")
    message = expect_error(voc / "Annotations" / "a.xml", lambda: VOCDataset(voc))
    assert "malformed XML" in message and "mismatched tag" in message


def test_truncated_xml(voc):
    path = voc / "Annotations" / "c.xml"
    path.write_text(path.read_text()[:120])
    message = expect_error(path, lambda: VOCDataset(voc))
    assert "malformed XML" in message


@pytest.mark.parametrize(
    "bad_object, what",
    [
        ("<object><name>dog</name></object>", "object 0 has no <bndbox>"),
        ("<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax></bndbox></object>",
         "<ymax>"),
        ("<object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax><ymax>3</ymax></bndbox></object>",
         "<name>"),
        (object_xml("dog", "one", 1, 3, 3), "not a number"),
        (object_xml("dog", 1, 1, 3, "nan"), "not finite"),
    ],
)
def test_missing_or_bad_elements(voc, bad_object, what):
    path = voc / "Annotations" / "b.xml"
    path.write_text(path.read_text().replace("</annotation>", bad_object + "</annotation>"))
    message = expect_error(path, lambda: VOCDataset(voc))
    assert what in message


def test_missing_size(voc):
    path = voc / "Annotations" / "b.xml"
    path.write_text(re.sub("<size>.*</size>", "", path.read_text()))
    assert "<size>" in expect_error(path, lambda: VOCDataset(voc))


def test_unknown_class(voc):
    message = expect_error(voc / "Annotations" / "a.xml", lambda: VOCDataset(voc, classes=["dog", "bird"]))
    assert "'cat'" in message and "['dog', 'bird']" in message


@pytest.mark.parametrize(
    "box, what",
    [((1, 1, 43, 5), "outside"), ((1, -2, 5, 5), "outside"), ((10, 1, 5, 5), "xmax < xmin")],
)
def test_bad_box(tmp_path, box, what):
    root = write_voc(tmp_path, {"x": [("dog", 1, 1, 2, 2), ("cat", *box)]})
    message = expect_error(root / "Annotations" / "x.xml", lambda: VOCDataset(root))
    assert what in message and "object 1" in message


def test_undecodable_image(voc):
    path = voc / "JPEGImages" / "b.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    dataset = VOCDataset(voc)  # existence is checked at construction, decoding on access
    assert "cannot decode" in expect_error(path, lambda: dataset[1])


def test_image_size_mismatch(voc):
    Image.new("RGB", (10, 10)).save(voc / "JPEGImages" / "a.png")
    message = expect_error(voc / "JPEGImages" / "a.png", lambda: VOCDataset(voc)[0])
    assert "10x10" in message and "30x40" in message
