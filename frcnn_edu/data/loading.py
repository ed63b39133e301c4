"""What the VOC and COCO readers share when a sample is fetched.

Both read and check every annotation when the dataset is built, but decode an
image only when it is asked for; `load_sample` does that decoding, checks the
image against the size its annotation gives, and hands a copy of the stored
target to the transforms.
"""

import torch
from PIL import Image

from .transforms import to_float_image


def load_sample(path, size, target, transforms=None, described_by="its annotation"):
    """(image (3, H, W) float in [0, 1], target) for one annotated image file.

    path: the image file. size: (H, W) its annotation gives. target: the stored target;
    its tensors are cloned, so transforms cannot change it. transforms: optional callable
    (image, target) -> (image, target). described_by: what gave `size`, for the error
    message ("its annotation", the json file).

    ValueError naming the file if it does not decode or its size is not `size` (the boxes
    would not match).
    """
    try:
        with Image.open(path) as pil:
            pil = pil.convert("RGB")  # also forces the full decode inside the try
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ValueError(f"{path}: cannot decode image: {err}") from None
    height, width = size
    if (pil.height, pil.width) != (height, width):
        raise ValueError(
            f"{path}: image is {pil.height}x{pil.width} (HxW) but {described_by} "
            f"says {height}x{width}; the boxes would not match"
        )
    image = to_float_image(pil)
    target = {k: v.clone() if torch.is_tensor(v) else v for k, v in target.items()}
    if transforms is not None:
        image, target = transforms(image, target)
    return image, target
