"""Box-aware transforms, collate_fn, image conversion and validate_target."""

import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from frcnn_edu.data import Compose, RandomHorizontalFlip, collate_fn, validate_target
from frcnn_edu.data.targets import DegenerateBoxWarning
from frcnn_edu.data.transforms import to_float_image


def make_target(boxes, labels=None):
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    if labels is None:
        labels = torch.ones(len(boxes), dtype=torch.int64)
    return {"boxes": boxes, "labels": torch.as_tensor(labels, dtype=torch.int64), "image_id": 7}


# ---- RandomHorizontalFlip ---------------------------------------------------------------


def test_flip_moves_box_and_pixels():
    image = torch.rand(3, 50, 100)
    target = make_target([[10, 20, 30, 40]])
    flipped, out = RandomHorizontalFlip(p=1.0)(image, target)
    assert out["boxes"].tolist() == [[70.0, 20.0, 90.0, 40.0]]
    assert type(out["boxes"]) is torch.Tensor  # no tv_tensors leak out
    assert torch.equal(flipped, image.flip(-1))
    assert torch.equal(out["labels"], target["labels"]) and out["image_id"] == 7
    assert target["boxes"].tolist() == [[10.0, 20.0, 30.0, 40.0]]  # input not modified


def test_flip_twice_is_identity():
    image = torch.rand(3, 33, 47)
    target = make_target([[0, 0, 47, 33], [5.5, 1.25, 20, 30]], [1, 2])
    flip = RandomHorizontalFlip(p=1.0)
    image2, target2 = flip(*flip(image, target))
    assert torch.equal(image2, image)
    assert torch.equal(target2["boxes"], target["boxes"])


@settings(deadline=None, max_examples=50)
@given(
    width=st.integers(1, 500),
    coords=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), max_size=8),
)
@example(width=340, coords=[(0.0, 1.192092896e-07)])  # float32 rounding of W - x
def test_flip_keeps_widths_and_mirrors_centres(width, coords):
    xs = [sorted((a * width, b * width)) for a, b in coords]
    boxes = torch.tensor([[x1, 0.0, x2, 1.0] for x1, x2 in xs], dtype=torch.float32).reshape(-1, 4)
    image = torch.zeros(3, 2, width)
    _, out = RandomHorizontalFlip(p=1.0)(image, make_target(boxes))
    widths = boxes[:, 2] - boxes[:, 0]
    atol = 4 * torch.finfo(torch.float32).eps * width  # W - x rounds at the scale of W
    torch.testing.assert_close(out["boxes"][:, 2] - out["boxes"][:, 0], widths, atol=atol, rtol=0)
    torch.testing.assert_close(out["boxes"][:, 0], width - boxes[:, 2], atol=0, rtol=0)


def test_flip_empty_boxes():
    image = torch.rand(3, 10, 20)
    _, out = RandomHorizontalFlip(p=1.0)(image, make_target(torch.zeros(0, 4)))
    assert out["boxes"].shape == (0, 4) and out["boxes"].dtype == torch.float32


def test_flip_probability():
    image, target = torch.rand(3, 4, 6), make_target([[1, 1, 2, 2]])
    assert RandomHorizontalFlip(p=0.0)(image, target)[1]["boxes"].tolist() == [[1, 1, 2, 2]]
    torch.manual_seed(0)
    flip = RandomHorizontalFlip(p=0.5)
    flips = sum(flip(image, target)[1]["boxes"][0, 0].item() == 4.0 for _ in range(400))
    assert 150 < flips < 250
    with pytest.raises(ValueError, match="p must be"):
        RandomHorizontalFlip(p=1.5)


def test_compose_applies_in_order():
    calls = []

    def step(name):
        def transform(image, target):
            calls.append(name)
            return image + 1, target

        return transform

    image, _ = Compose([step("a"), step("b")])(torch.zeros(1), {})
    assert calls == ["a", "b"] and image.item() == 2


def test_collate_keeps_lists():
    batch = [(torch.zeros(3, 10, 12), make_target([[1, 1, 5, 5]])), (torch.zeros(3, 7, 9), make_target([]))]
    images, targets = collate_fn(batch)
    assert isinstance(images, list) and isinstance(targets, list)
    assert [tuple(i.shape) for i in images] == [(3, 10, 12), (3, 7, 9)]
    assert targets[1]["boxes"].shape == (0, 4)


def test_to_float_image_is_exact():
    pixels = np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)
    image = to_float_image(pixels)
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and image.is_contiguous()
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    with pytest.raises(ValueError, match="uint8"):
        to_float_image(pixels.astype(np.float32))


# ---- validate_target ------------------------------------------------------------------


def test_label_zero_is_rejected():
    with pytest.raises(ValueError, match="label 0 is reserved for background; real classes start at 1"):
        validate_target(make_target([[0, 0, 5, 5]], [0]), (10, 10), index=3)


def test_negative_label_is_rejected():
    with pytest.raises(ValueError, match="negative label"):
        validate_target(make_target([[0, 0, 5, 5]], [-1]), (10, 10))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_box_is_rejected(bad):
    # inf must not be clipped into a finite box
    with pytest.raises(ValueError, match=r"image 4.*box 1 has non-finite"):
        validate_target(make_target([[0, 0, 5, 5], [1, 1, bad, 3]], [1, 2]), (10, 10), index=4)


def test_degenerate_box_dropped_with_warning():
    target = make_target([[0, 0, 5, 5], [3, 3, 3, 8], [6, 6, 4, 8], [1, 2, 9, 9]], [1, 2, 3, 4])
    target["difficult"] = torch.tensor([False, True, False, True])
    with pytest.warns(DegenerateBoxWarning) as record:
        out = validate_target(target, (10, 10), index=12, source="a/b.xml")
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert all("a/b.xml" in m and "image 12" in m for m in messages)
    assert "box 1 [3.0, 3.0, 3.0, 8.0]" in messages[0] and "box 2" in messages[1]
    assert out["boxes"].tolist() == [[0, 0, 5, 5], [1, 2, 9, 9]]
    assert out["labels"].tolist() == [1, 4]
    assert out["difficult"].tolist() == [False, True]  # dropped consistently with the boxes
    assert out["image_id"] == 7
    assert len(target["boxes"]) == 4  # input untouched


def test_clipping_and_box_wholly_outside():
    target = make_target([[-3, -2, 5, 12], [12, 0, 15, 5]], [1, 2])
    with pytest.warns(DegenerateBoxWarning, match="box 1"):
        out = validate_target(target, (10, 11))  # H=10, W=11
    assert out["boxes"].tolist() == [[0, 0, 5, 10]]
    assert target["boxes"][0].tolist() == [-3, -2, 5, 12]
    kept = validate_target(make_target([[-3, -2, 5, 12]]), (10, 11), clip=False)
    assert kept["boxes"].tolist() == [[-3, -2, 5, 12]]


def test_types_and_defaults():
    target = {"boxes": torch.tensor([[1, 2, 3, 4]]), "labels": torch.tensor([2], dtype=torch.int32)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = validate_target(target, (10, 10))
    assert out["boxes"].dtype == torch.float32 and out["labels"].dtype == torch.int64
    assert out["difficult"].dtype == torch.bool and out["difficult"].tolist() == [False]
    assert out is not target and "difficult" not in target
    assert validate_target(target | {"difficult": torch.tensor([1])}, (10, 10))["difficult"].tolist() == [True]


def test_empty_target_is_valid():
    out = validate_target(make_target(torch.zeros(0, 4)), (10, 10))
    assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,) and out["difficult"].shape == (0,)


@pytest.mark.parametrize(
    "target, message",
    [
        ({"boxes": torch.zeros(2, 3), "labels": torch.ones(2, dtype=torch.int64)}, r"shape \(N, 4\).*\(2, 3\)"),
        ({"boxes": torch.zeros(2, 4), "labels": torch.ones(3, dtype=torch.int64)}, r"labels.*\(2,\).*\(3,\)"),
        ({"boxes": torch.zeros(1, 4), "labels": torch.ones(1)}, "labels.*int64"),
        ({"boxes": torch.zeros(1, 4)}, "no 'labels'"),
        ({"boxes": torch.zeros(1, 4), "labels": torch.ones(1, dtype=torch.int64), "difficult": torch.ones(2)},
         "difficult"),
    ],
)
def test_bad_targets_name_the_source(target, message):
    with pytest.raises(ValueError, match=message) as info:
        validate_target(target, (10, 10), source="img_3.xml")
    assert "img_3.xml" in str(info.value)


def test_bad_image_size():
    with pytest.raises(ValueError, match=re.escape("image_size")):
        validate_target(make_target([[0, 0, 1, 1]]), (0, 10))
