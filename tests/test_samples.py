"""Tests for frcnn_edu.samples and the photos in frcnn_edu/assets/images."""

import pytest
import torch
from PIL import Image

from frcnn_edu import samples

EXPECTED = {  # name: (H, W)
    "astronaut": (512, 512),
    "camera": (512, 512),
    "chelsea": (300, 451),
    "coffee": (400, 600),
    "rocket": (427, 640),
}


def test_list_sample_images():
    assert samples.list_sample_images() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_load_sample_image(name):
    image = samples.load_sample_image(name)
    assert image.dtype == torch.float32 and image.shape == (3, *EXPECTED[name])
    assert image.min() >= 0 and image.max() <= 1 and image.std() > 0.05
    assert image.is_contiguous()


def test_grey_photo_has_three_equal_channels():
    image = samples.load_sample_image("camera")
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_colour_photo_has_colour():
    image = samples.load_sample_image("astronaut")
    assert (image[0] - image[2]).abs().mean() > 0.05


def test_name_with_suffix_and_unknown_name():
    assert torch.equal(samples.load_sample_image("chelsea.jpg"), samples.load_sample_image("chelsea"))
    with pytest.raises(ValueError, match=r"'dog'.*astronaut, camera, chelsea, coffee, rocket"):
        samples.load_sample_image("dog")


def test_files_small_and_documented():
    readme = (samples.SAMPLE_DIR.parent / "README.md").read_text()
    section = readme.split("## Sample images", 1)[1].split("\n## ", 1)[0]
    for path in sorted(samples.SAMPLE_DIR.iterdir()):
        assert path.stat().st_size <= 200 * 1024, path
        with Image.open(path) as image:
            assert max(image.size) <= 640, path
        assert f"`{path.name}`" in section, f"{path.name} is not documented in frcnn_edu/assets/README.md"
