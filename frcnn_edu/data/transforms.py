"""Box-aware transforms, image conversion and the DataLoader collate function.

A transform here is a callable `(image, target) -> (image, target)`: whatever
changes the image geometry must change the boxes the same way. The box
arithmetic is torchvision.transforms.v2's (boxes wrapped as
`tv_tensors.BoundingBoxes` for the call), so it is the same code many users
already rely on.

The only augmentation used in training is horizontal flipping with probability
0.5 (Fast R-CNN, Sec. 2.3 "Mini-batch sampling": "No other data augmentation is
used"), which Faster R-CNN's detector training inherits.
"""

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F


def to_float_image(image):
    """PIL image or (H, W, 3) uint8/uint16 array -> float32 tensor (3, H, W) in [0, 1].

    Every dataset in frcnn_edu.data converts images with this one function, so an
    image that goes through a lossless file (PNG) comes back bit-identical.
    8-bit values are divided by 255, 16-bit ones by 65535 (their real range: PIL's
    own convert("RGB") would clip them at 255). Grayscale, palette, RGBA (the alpha
    channel is dropped) and CMYK images become RGB.
    """
    if isinstance(image, Image.Image):
        image = _pil_to_array(image)
    array = np.ascontiguousarray(image)
    if array.dtype not in (np.uint8, np.uint16) or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8 or uint16, got {array.shape} {array.dtype}")
    # In numpy rather than torch: single-threaded, so it is not slowed down by
    # torch's intra-op thread pool when called from the main process.
    chw = array.transpose(2, 0, 1).astype(np.float32, order="C")
    chw /= np.float32(np.iinfo(array.dtype).max)  # 255 or 65535
    return torch.from_numpy(chw)


def _pil_to_array(image):
    """PIL image -> (H, W, 3) uint8, or uint16 for 16-bit images (PIL modes "I;16*" and "I")."""
    if image.mode.startswith("I;16") or image.mode == "I":
        gray = np.asarray(image)  # uint16 (">u2" for big-endian "I;16B"), or int32 for "I"
        if image.mode == "I":  # how some PIL versions open 16-bit PNGs
            low, high = (int(gray.min()), int(gray.max())) if gray.size else (0, 0)
            if low < 0 or high > 65535:
                raise ValueError(
                    f"32-bit integer image (PIL mode 'I') has values in [{low}, {high}], "
                    "outside the 16-bit range 0..65535 this reader scales from"
                )
        gray = gray.astype(np.uint16)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":  # 32-bit float: no fixed range to scale from
        raise ValueError("32-bit float images (PIL mode 'F') are not supported: save it as 8- or 16-bit")
    return np.asarray(image.convert("RGB"))


class Compose:
    """Apply transforms in order, each `(image, target) -> (image, target)`."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self):
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class RandomHorizontalFlip:
    """Flip image (3, H, W) and its target's boxes left-right with probability p.

    A box (x1, y1, x2, y2) becomes (W - x2, y1, W - x1, y2). Uses torch's global
    random generator (seed it with torch.manual_seed; DataLoader seeds each worker).
    The target is returned as a new dict; the input dict is not modified.
    """

    def __init__(self, p=0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        self.p = p

    def __call__(self, image, target):
        if torch.rand(()).item() >= self.p:
            return image, target
        height, width = image.shape[-2:]
        boxes = tv_tensors.BoundingBoxes(
            target["boxes"], format="XYXY", canvas_size=(height, width), clamping_mode=None
        )
        target = dict(target)
        target["boxes"] = F.horizontal_flip(boxes).as_subclass(torch.Tensor)
        return F.horizontal_flip(image), target

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


def collate_fn(batch):
    """[(image, target), ...] -> ([image, ...], [target, ...]).

    Images may have different sizes (the model resizes and pads them itself), so
    they are kept as a list instead of being stacked into one tensor.
    """
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets
