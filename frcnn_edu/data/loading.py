"""What the VOC and COCO readers share when a sample is fetched.

Both read and check every annotation when the dataset is built, but decode an
image only when it is asked for; `read_image` does that decoding and checks the
image against the size its annotation gives; `load_sample` adds a copy of the
stored target and the transforms.

EXIF orientation: phone cameras often store the pixels sideways plus an EXIF
Orientation tag telling viewers to rotate them. VOC and COCO annotations are
made on the stored pixels (their width/height are the stored ones), so the
pixels are used as stored, never rotated; a file whose tag asks for a rotation
gets one ExifOrientationWarning, in case its annotations were drawn on the
rotated view instead.
"""

import warnings

import torch
from PIL import Image

from .transforms import to_float_image

EXIF_ORIENTATION = 0x0112  # the EXIF tag; 1 = "stored upright", 2..8 = mirror and/or rotate to display


class ExifOrientationWarning(UserWarning):
    """An image file asks viewers to rotate it; its stored pixels are used unrotated."""


# what PIL raises for a bad file (a decompression bomb: a header claiming a gigantic image)
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
_warned_orientation = set()  # files already warned about: one warning per file, not per epoch


def read_image(path, size=None, described_by="its annotation"):
    """Decode an image file completely -> (3, H, W) float32 in [0, 1].

    size: (H, W) the annotation gives, or None. described_by: what gave `size`, for the
    error message ("its annotation", the json file). ValueError naming the file if it
    does not decode (a truncated file included), cannot be converted, or its size is not
    `size` (the boxes would not match).
    """
    try:
        pil = Image.open(path)
    except DECODE_ERRORS as err:
        raise ValueError(f"{path}: cannot decode image: {err}") from None
    with pil:
        try:
            pil.load()  # the full decode: a truncated file fails here, not in the middle of training
            orientation = pil.getexif().get(EXIF_ORIENTATION, 1)
        except DECODE_ERRORS as err:
            raise ValueError(f"{path}: cannot decode image: {err}") from None
        if size is not None and (pil.height, pil.width) != tuple(size):
            height, width = size
            raise ValueError(
                f"{path}: image is {pil.height}x{pil.width} (HxW) but {described_by} "
                f"says {height}x{width}; the boxes would not match"
            )
        try:
            image = to_float_image(pil)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    if orientation != 1 and str(path) not in _warned_orientation:
        _warned_orientation.add(str(path))
        warnings.warn(
            f"{path}: EXIF Orientation is {orientation} (viewers show the image rotated or mirrored); "
            "its stored pixels are used unrotated and its annotations are taken to refer to them",
            ExifOrientationWarning,
            stacklevel=2,
        )
    return image


def load_sample(path, size, target, transforms=None, described_by="its annotation"):
    """(image (3, H, W) float in [0, 1], target) for one annotated image file.

    path: the image file. size: (H, W) its annotation gives. target: the stored target;
    its tensors are cloned, so transforms cannot change it. transforms: optional callable
    (image, target) -> (image, target). described_by: what gave `size`, for the error
    message ("its annotation", the json file).

    ValueError naming the file if it does not decode or its size is not `size` (read_image).
    """
    image = read_image(path, size, described_by)
    target = {k: v.clone() if torch.is_tensor(v) else v for k, v in target.items()}
    if transforms is not None:
        image, target = transforms(image, target)
    return image, target
