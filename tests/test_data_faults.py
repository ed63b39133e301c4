"""Data is never silently wrong: every bad input is an error (or a warning) naming what and where.

Pixel range and NaN at the model's door, labels above num_classes, 16-bit / grayscale / RGBA /
EXIF-rotated image files, VOC ids with spaces, the pre-flight check that lists every problem at
once, and empty datasets.
"""

import io
import json
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import frcnn_edu.data.voc as voc_module
from frcnn_edu import FasterRCNN, get_preset
from frcnn_edu.data import (
    COCODataset,
    ExifOrientationWarning,
    ShapesDataset,
    VOCDataset,
    check_coco,
    check_dataset,
    check_voc,
    validate_target,
)
from frcnn_edu.data.transforms import to_float_image
from frcnn_edu.transform import ImageTransform, check_images, check_targets

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTH, HEIGHT = 40, 30


def noise(seed=0, height=HEIGHT, width=WIDTH):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def annotation_xml(filename, objects, width=WIDTH, height=HEIGHT):
    return (
        f"<annotation><filename>{filename}</filename>"
        f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
        + "".join(
            f"<object><name>{name}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
            for name, x1, y1, x2, y2 in objects
        )
        + "</annotation>"
    )


def write_voc(root, images, split="trainval"):
    """images: {id: (PIL image, [(name, xmin, ymin, xmax, ymax)], file extension)}; returns root.

    The annotation's <size> is the stored image's size.
    """
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for image_id, (image, objects, ext) in images.items():
        filename = f"{image_id}.{ext}"
        image.save(root / "JPEGImages" / filename)
        xml = annotation_xml(filename, objects, image.width, image.height)
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
    return root


DOG = [("dog", 2, 3, 20, 25)]


def rgb(seed=0):
    return Image.fromarray(noise(seed))


def jpeg_bytes(seed=0, exif=None):
    buffer = io.BytesIO()
    rgb(seed).save(buffer, "JPEG", quality=95, **({"exif": exif} if exif is not None else {}))
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------
# 1. Pixel range at the model's door
# ----------------------------------------------------------------------------------------------
def test_0_255_pixels_name_the_image_the_range_and_the_fix():
    good = torch.rand(3, 8, 8)
    with pytest.raises(ValueError, match=r"images\[1\] has values in \[0, 255\].*image / 255"):
        check_images([good, torch.linspace(0, 255, 192).reshape(3, 8, 8)])


def test_normalised_twice_is_caught_by_the_minimum():
    image = torch.rand(3, 8, 8)
    image[:, 0, 0], image[:, 0, 1] = 0.0, 1.0
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    normalised = (image - mean.view(3, 1, 1)) / std.view(3, 1, 1)   # what the model does itself
    low, high = normalised.min().item(), normalised.max().item()
    assert low < -2 and high > 2.5
    with pytest.raises(ValueError, match=re.escape(f"images[0] has values in [{low:g}, {high:g}]")
                       + ".*unnormalised pixels"):
        check_images([normalised])


@pytest.mark.parametrize("bad, what", [(float("nan"), "NaN"), (float("inf"), "infinite"), (-float("inf"), "infinite")])
def test_nan_and_inf_pixels_name_the_image(bad, what):
    image = torch.rand(3, 8, 8)
    image[1, 2, 3] = bad
    with pytest.raises(ValueError, match=rf"images\[2\] contains {what}"):
        check_images(torch.stack([torch.rand(3, 8, 8), torch.rand(3, 8, 8), image]))


def test_in_range_images_and_small_overshoot_pass():
    overshoot = torch.rand(3, 8, 8) * 1.2 - 0.1   # bilinear resampling may leave [0, 1] a little
    images = check_images([torch.rand(3, 8, 8), overshoot, torch.rand(3, 5, 7, dtype=torch.float16)])
    assert len(images) == 3
    assert len(check_images(torch.zeros(2, 3, 4, 4))) == 2   # all-black is fine


def test_the_model_refuses_0_255_pixels():
    model = FasterRCNN(5, config=get_preset("shapes_tiny").replace(min_size=32, max_size=32)).eval()
    with pytest.raises(ValueError, match=r"images\[0\].*image / 255"):
        model([torch.rand(3, 32, 32) * 255])


def test_no_images_is_an_error():
    with pytest.raises(ValueError, match="no images"):
        check_images([])
    with pytest.raises(ValueError, match="no images"):
        check_images(torch.zeros(0, 3, 8, 8))


# ----------------------------------------------------------------------------------------------
# 2. Labels above num_classes
# ----------------------------------------------------------------------------------------------
def boxes_and_labels(labels):
    return {"boxes": torch.tensor([[1.0, 1.0, 5.0, 5.0]] * len(labels)),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def test_label_above_num_classes_names_image_box_and_label():
    validate_target(boxes_and_labels([1, 3]), (10, 10), num_classes=3)   # 3 of 3 is fine
    validate_target(boxes_and_labels([1, 9]), (10, 10))                  # not checked without C
    with pytest.raises(ValueError, match=r"image 4: box 1 has label 4, but there are only 3 classes; "
                                         r"labels must be 1\.\.3"):
        validate_target(boxes_and_labels([2, 4]), (10, 10), index=4, num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        validate_target(boxes_and_labels([1]), (10, 10), num_classes=0)


def test_check_targets_and_image_transform_pass_num_classes_on():
    images = [torch.rand(3, 10, 10), torch.rand(3, 10, 10)]
    targets = [boxes_and_labels([1]), boxes_and_labels([2, 6])]
    assert len(check_targets(images, targets)) == 2
    with pytest.raises(ValueError, match="image 1: box 1 has label 6"):
        check_targets(images, targets, num_classes=5)
    transform = ImageTransform(get_preset("shapes_tiny"), num_classes=5)
    with pytest.raises(ValueError, match="image 1: box 1 has label 6"):
        transform(images, targets)
    ImageTransform(get_preset("shapes_tiny"))(images, targets)   # no num_classes: not checked


def test_the_model_refuses_a_label_it_has_no_output_for():
    model = FasterRCNN(2, config=get_preset("shapes_tiny").replace(min_size=32, max_size=32)).train()
    with pytest.raises(ValueError, match="image 0: box 0 has label 3, but there are only 2 classes"):
        model([torch.rand(3, 32, 32)], [boxes_and_labels([3])])


# ----------------------------------------------------------------------------------------------
# 3. Image files: 16-bit, grayscale, RGBA, palette, EXIF orientation; ids with spaces
# ----------------------------------------------------------------------------------------------
def test_16_bit_png_is_scaled_by_65535_not_clipped(tmp_path):
    gray = np.random.default_rng(1).integers(0, 65536, size=(HEIGHT, WIDTH), dtype=np.uint16)
    gray[0, :3] = (0, 1000, 65535)
    root = write_voc(tmp_path, {"deep": (Image.fromarray(gray), DOG, "png")})
    assert Image.open(root / "JPEGImages" / "deep.png").mode.startswith("I")   # really 16-bit on disk
    image, _ = VOCDataset(root)[0]
    expected = torch.from_numpy(gray.astype(np.float32) / 65535)
    assert image.shape == (3, HEIGHT, WIDTH)
    for channel in image:
        torch.testing.assert_close(channel, expected, rtol=0, atol=1e-7)
    assert image[0, 0, :3].tolist() == pytest.approx([0, 1000 / 65535, 1])


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_bit_pil_modes(mode):
    values = np.array([[0, 1000, 65535]], dtype=np.uint16)
    if mode == "I;16B":
        pil = Image.frombytes(mode, (3, 1), values.astype(">u2").tobytes())
    else:
        pil = Image.fromarray(values).convert(mode) if mode == "I" else Image.fromarray(values)
    assert pil.mode == mode
    image = to_float_image(pil)
    assert image.shape == (3, 1, 3)
    assert image[:, 0].tolist() == [pytest.approx([0, 1000 / 65535, 1])] * 3


def test_32_bit_image_outside_16_bit_range_is_an_error():
    pil = Image.fromarray(np.array([[0, 70000]], dtype=np.int32), mode="I")
    with pytest.raises(ValueError, match=r"\[0, 70000\].*0\.\.65535"):
        to_float_image(pil)
    with pytest.raises(ValueError, match="mode 'F'"):
        to_float_image(Image.new("F", (2, 2)))


def test_grayscale_rgba_and_palette_become_rgb(tmp_path):
    pixels = noise(2)
    gray = Image.fromarray(pixels).convert("L")
    rgba = Image.fromarray(np.dstack([pixels, np.full(pixels.shape[:2], 128, np.uint8)]))
    palette = Image.fromarray(pixels).convert("P")
    root = write_voc(tmp_path, {"gray": (gray, DOG, "png"), "rgba": (rgba, DOG, "png"),
                                "palette": (palette, DOG, "png")})
    dataset = VOCDataset(root)
    gray_image, rgba_image, palette_image = (dataset[i][0] for i in range(3))
    assert all(im.shape == (3, HEIGHT, WIDTH) for im in (gray_image, rgba_image, palette_image))
    expected_gray = torch.from_numpy(np.array(gray)).float() / 255
    assert all(torch.equal(channel, expected_gray) for channel in gray_image)
    assert torch.equal(rgba_image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)   # alpha dropped
    expected_palette = np.array(palette.convert("RGB"))
    assert torch.equal(palette_image, torch.from_numpy(expected_palette).permute(2, 0, 1).float() / 255)


def test_exif_orientation_warns_once_and_keeps_the_stored_pixels(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6   # "rotate 90 degrees clockwise to display"
    stored = Image.new("RGB", (WIDTH, HEIGHT), (200, 10, 10))   # stored landscape, 40 wide
    root = write_voc(tmp_path, {"phone": (stored, DOG, "png"), "plain": (rgb(), DOG, "png")})
    path = root / "JPEGImages" / "phone.jpg"
    stored.save(path, quality=95, exif=exif)
    (root / "JPEGImages" / "phone.png").unlink()
    xml = root / "Annotations" / "phone.xml"
    xml.write_text(xml.read_text().replace("phone.png", "phone.jpg"))

    dataset = VOCDataset(root)
    with pytest.warns(ExifOrientationWarning) as record:
        image, target = dataset[0]
        dataset[0]                            # the same file again: no second warning
        dataset[1]                            # no EXIF: no warning
    messages = [str(w.message) for w in record if issubclass(w.category, ExifOrientationWarning)]
    assert len(messages) == 1
    assert str(path) in messages[0] and "Orientation is 6" in messages[0]
    assert "annotations are taken to refer to them" in messages[0]
    assert image.shape == (3, HEIGHT, WIDTH)   # not rotated to (3, 40, 30)
    assert target["boxes"].tolist() == [[1, 2, 20, 25]]
    assert "EXIF Orientation tag is not applied" in " ".join(voc_module.__doc__.split())   # the rule


def test_voc_ids_with_spaces_are_read_whole(tmp_path):
    root = write_voc(tmp_path, {"my photo 1": (rgb(), DOG, "png"), "plain": (rgb(1), DOG, "png"),
                                "cat 1": (rgb(2), DOG, "png")})
    split = root / "ImageSets" / "Main" / "trainval.txt"
    split.write_text("\ufeffmy photo 1\r\n  plain 1 \n\ncat 1\n")   # BOM, CRLF, a "<id> <flag>" line
    dataset = VOCDataset(root)
    # "plain 1" has no annotation file of its own: the per-class list form, id "plain";
    # "cat 1" has one: read whole
    assert dataset.ids == ["my photo 1", "plain", "cat 1"]
    assert dataset[0][1]["image_id"] == "my photo 1"


# ----------------------------------------------------------------------------------------------
# 4. The pre-flight check lists every problem at once
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def voc_with_faults(tmp_path):
    """Six images; four of them broken in different ways after the annotations were written."""
    root = write_voc(tmp_path, {f"im{k}": (rgb(k), DOG, "png") for k in range(6)})
    images = root / "JPEGImages"
    full = jpeg_bytes(0)
    (images / "im1.jpg").write_bytes(full[: len(full) // 2])          # truncated JPEG
    (images / "im1.png").unlink()
    xml = root / "Annotations" / "im1.xml"
    xml.write_text(xml.read_text().replace("im1.png", "im1.jpg"))
    (images / "im2.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")   # undecodable
    Image.new("RGB", (10, 10)).save(images / "im3.png")                 # wrong size
    return root


def test_check_voc_lists_every_bad_image(voc_with_faults):
    root = voc_with_faults
    dataset = VOCDataset(root)   # annotations are fine: builds; images are decoded on access
    problems = dataset.check()
    assert problems == check_voc(root) == check_dataset(dataset)
    assert len(problems) == 3, problems
    truncated, undecodable, wrong_size = problems
    assert str(root / "JPEGImages" / "im1.jpg") in truncated and "truncated" in truncated
    assert str(root / "JPEGImages" / "im2.png") in undecodable and "cannot decode" in undecodable
    assert str(root / "JPEGImages" / "im3.png") in wrong_size and "10x10" in wrong_size
    with pytest.raises(ValueError, match="truncated"):
        dataset[1]   # the truncated JPEG is never half-read as data


def test_check_voc_lists_every_bad_annotation_where_construction_stops(voc_with_faults):
    root = voc_with_faults
    (root / "Annotations" / "im4.xml").write_text("<annotation><size>")
    (root / "Annotations" / "im5.xml").unlink()
    problems = check_voc(root)
    assert len(problems) == 5, problems   # the two annotations, then the three bad images
    assert str(root / "Annotations" / "im4.xml") in problems[0] and "malformed XML" in problems[0]
    assert str(root / "Annotations" / "im5.xml") in problems[1] and "not found" in problems[1]
    assert all(name in problems[k] for k, name in enumerate(["im4", "im5", "im1.jpg", "im2.png", "im3.png"]))
    # building the dataset stops at the first, says how many more there are and how to list them
    with pytest.raises(ValueError, match=re.escape(problems[0]) + r" \(and 1 more problem: .*check_voc"):
        VOCDataset(root)


def test_check_coco_lists_every_bad_entry_and_image(tmp_path):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    for k in range(3):
        rgb(k).save(images_dir / f"{k}.png")
    data = {
        "images": [{"id": k, "file_name": f"{k}.png", "width": WIDTH, "height": HEIGHT} for k in range(3)]
                  + [{"id": 3, "file_name": "missing.png", "width": WIDTH, "height": HEIGHT}],
        "annotations": [{"image_id": 0, "bbox": [1, 1, 5, 5], "category_id": 1},
                        {"image_id": 9, "bbox": [1, 1, 5, 5], "category_id": 1},
                        {"image_id": 1, "bbox": [1, 1, 5], "category_id": 1}],
        "categories": [{"id": 1, "name": "dog"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    full = jpeg_bytes(2)
    (images_dir / "2.png").write_bytes(full[: len(full) // 2])   # truncated (PIL reads by content)
    problems = check_coco(images_dir, path)
    assert len(problems) == 4, problems
    assert all(p.startswith(str(path)) or str(images_dir) in p for p in problems)
    assert "images[3] image file not found" in problems[0]
    assert "annotations[1] refers to unknown image id 9" in problems[1]
    assert "annotations[2] 'bbox' must be 4" in problems[2]
    assert str(images_dir / "2.png") in problems[3] and "truncated" in problems[3]
    with pytest.raises(ValueError, match=r"images\[3\] image file not found.*and 2 more problems"):
        COCODataset(images_dir, path)

    data["images"].pop()
    data["annotations"][1:] = []
    path.write_text(json.dumps(data))
    dataset = COCODataset(images_dir, path)
    assert dataset.check() == check_dataset(dataset) == [problems[3]]


def test_check_dataset_on_shapes_and_on_any_dataset():
    assert check_dataset(ShapesDataset(num_images=3, image_size=(32, 32))) == []

    class Mine(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            if i == 1:
                raise OSError("disk on fire")
            image = torch.rand(3, 8, 8) * (255 if i == 2 else 1)
            labels = [0] if i == 3 else [1]
            return image, boxes_and_labels(labels)

    problems = check_dataset(Mine())
    assert len(problems) == 3, problems
    assert problems[0] == "Mine[1]: OSError: disk on fire"
    assert problems[1].startswith("Mine[2]: ValueError:") and "image / 255" in problems[1]
    assert problems[2].startswith("Mine[3]: ValueError:") and "label 0" in problems[2]


# ----------------------------------------------------------------------------------------------
# 5. Empty datasets
# ----------------------------------------------------------------------------------------------
def test_voc_split_without_images(tmp_path):
    root = write_voc(tmp_path, {"a": (rgb(), DOG, "png")})
    split = root / "ImageSets" / "Main" / "val.txt"
    split.write_text("\n  \n")
    with pytest.raises(ValueError, match=re.escape(f"{split}: split 'val' lists no images")):
        VOCDataset(root, "val")


def test_voc_without_objects(tmp_path):
    root = write_voc(tmp_path, {"a": (rgb(), [], "png"), "b": (rgb(1), [], "png")})
    with pytest.raises(ValueError, match=re.escape(f"{root} split 'trainval': none of its 2 images has an object")):
        VOCDataset(root)
    assert any("has an object" in p for p in check_voc(root))
    # a set with some empty images is fine
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_voc(tmp_path, {"a": (rgb(), [], "png"), "b": (rgb(1), DOG, "png")})
        assert len(VOCDataset(root)) == 2


@pytest.mark.parametrize("empty, message", [
    ("annotations", "'annotations' is empty: the set has no objects"),
    ("images", "'images' is empty: the set has no images"),
])
def test_coco_without_images_or_objects(tmp_path, empty, message):
    rgb().save(tmp_path / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "width": WIDTH, "height": HEIGHT}],
            "annotations": [], "categories": [{"id": 1, "name": "dog"}]}
    data[empty] = []
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
        COCODataset(tmp_path, path)
