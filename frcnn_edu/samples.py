"""Sample photographs and the shipped checkpoint, for notebooks, demos and benchmarks.

The files live inside the package, in `frcnn_edu/assets/` (ASSETS), so they
travel in the wheel: `images/` holds public-domain / CC0 photos from
scikit-image's data set, `checkpoints/` the shipped checkpoint, and
`README.md` their provenance and licences. The same lookup works in a source
checkout (plain or editable install) and in an installed wheel. Nothing is
downloaded.

    import frcnn_edu.samples as samples
    samples.list_sample_images()          # ['astronaut', 'camera', ...]
    image = samples.load_sample_image("chelsea")   # (3, H, W) float32 in [0, 1]

The constants SHIPPED_CHECKPOINT, SHAPES_TRAIN and SHAPES_HELD_OUT name the
model and the built-in data the notebooks, the benchmarks and the `frcnn-edu`
command share.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

PACKAGE = Path(__file__).resolve().parent
"""The frcnn_edu package folder (in the repository, or in site-packages when installed)."""

REPO = PACKAGE.parent
"""The folder that holds the package: the repository in a source checkout, site-packages in an
installed wheel. No packaged file is looked up through it: the shipped files are in ASSETS."""

ASSETS = PACKAGE / "assets"
"""The files shipped inside the package (and its wheel): images/, checkpoints/, README.md."""

SAMPLE_DIR = ASSETS / "images"
"""The sample photos."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

SHIPPED_CHECKPOINT = ASSETS / "checkpoints" / "shapes_tiny.pt"
"""The checkpoint shipped with the package: the shapes_tiny preset trained on SHAPES_TRAIN
(how, and its mAP: frcnn_edu/assets/README.md)."""

# The built-in data: training images come from seed 0, held-out images from seed 1, so the two
# never share an image.
SHAPES_TRAIN = {"seed": 0, "num_images": 10000}
"""ShapesDataset(**SHAPES_TRAIN): the built-in training images."""

SHAPES_HELD_OUT = {"seed": 1, "num_images": 200}
"""ShapesDataset(**SHAPES_HELD_OUT): the built-in held-out images, for evaluation."""


def _sample_files():
    """{name: path} for every image in SAMPLE_DIR, name = file name without suffix."""
    if not SAMPLE_DIR.is_dir():
        return {}
    return {
        path.stem: path
        for path in sorted(SAMPLE_DIR.iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    }


def list_sample_images():
    """Names of the sample images, sorted (e.g. 'astronaut', 'chelsea')."""
    return sorted(_sample_files())


def load_sample_image(name):
    """Load a sample photo as an RGB `(3, H, W)` float32 tensor in [0, 1].

    `name` is a name from `list_sample_images()`, with or without its file
    suffix ("chelsea" or "chelsea.jpg"). Grey-scale photos are repeated over
    the three channels. Unknown name: ValueError listing the available names.
    """
    files = _sample_files()
    stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name
    if stem not in files:
        raise ValueError(
            f"unknown sample image name {name!r}; available in {SAMPLE_DIR}: "
            f"{', '.join(sorted(files)) or '(none)'}"
        )
    with Image.open(files[stem]) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1))  # (3, H, W)
    return torch.from_numpy(chw).float().div_(255.0)
