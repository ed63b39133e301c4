"""The network's input: rescale, normalise and pad images into one batch; undo it on the outputs.

    images of any size ──► rescale (shorter side s = 600) ──► normalise ──► pad ──► (B, 3, H, W)
    boxes in the network's pixels ──► divide by the scale ──► clip ──► original image's pixels

[P] Sec. 3.3 trains and tests on a single scale: each image is rescaled so that its shorter side
is s = 600 pixels, unless its longer side would then exceed 1,000 ([C] MAX_SIZE). Ground-truth
boxes are rescaled with their image; every box the model returns is mapped back, so callers
only ever see the original image's coordinates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import boxes as box_ops
from .config import FasterRCNNConfig
from .data.targets import validate_target


@dataclass
class ImageBatch:
    """Images rescaled, normalised and zero-padded into one tensor.

    tensors (B, 3, H_pad, W_pad); image_sizes [(h, w)] of each rescaled image inside the
    padding; scales [(sy, sx)] with rescaled = original * s; original_sizes [(H, W)].
    """
    tensors: torch.Tensor
    image_sizes: list
    scales: list
    original_sizes: list


class ImageTransform(nn.Module):
    """Rescale + normalise + pad on the way in (`forward`), rescale + clip on the way out.

    forward(images, targets=None) -> (ImageBatch, targets rescaled to the batch, or None)
    to_original(boxes [(N_i, 4)], batch) -> boxes [(N_i, 4)] in each original image

    num_classes: C; given, a target label above C is an error naming the image (check_targets).
    """

    image_mean: torch.Tensor   # (3, 1, 1) buffers: they follow the model to its device
    image_std: torch.Tensor

    def __init__(self, config: FasterRCNNConfig, num_classes: int | None = None):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.register_buffer("image_mean", torch.tensor(config.image_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(config.image_std).view(3, 1, 1), persistent=False)

    def rescale_factor(self, height: int, width: int) -> float:
        """Shorter side to min_size unless the longer side would exceed max_size ([P] Sec. 3.3)."""
        scale = self.config.min_size / min(height, width)
        if max(height, width) * scale > self.config.max_size:
            scale = self.config.max_size / max(height, width)
        return scale

    def forward(self, images, targets=None) -> tuple[ImageBatch, list | None]:
        images = check_images(images)
        if targets is not None:
            targets = check_targets(images, targets, self.num_classes)
        device = self.image_mean.device
        resized, sizes, scales, originals = [], [], [], []
        for image in images:
            height, width = image.shape[1:]
            scale = self.rescale_factor(height, width)
            new_size = (max(1, round(height * scale)), max(1, round(width * scale)))
            image = image.to(device, torch.float32)
            if new_size != (height, width):
                image = F.interpolate(image[None], size=new_size, mode="bilinear", align_corners=False)[0]
            resized.append((image - self.image_mean) / self.image_std)
            sizes.append(new_size)
            # the exact per-axis factors (after rounding the size), so that boxes map back precisely
            scales.append((new_size[0] / height, new_size[1] / width))
            originals.append((height, width))
        batch = ImageBatch(self.pad(resized), sizes, scales, originals)
        if targets is not None:
            targets = [self.rescale_target(t, s) for t, s in zip(targets, scales)]
        return batch, targets

    def pad(self, images: list[torch.Tensor]) -> torch.Tensor:
        """[(3, h_i, w_i)] -> (B, 3, H, W), zero-padded at the bottom and right to a multiple of 16."""
        div = self.config.size_divisible
        pad_h = -(-max(im.shape[1] for im in images) // div) * div
        pad_w = -(-max(im.shape[2] for im in images) // div) * div
        batch = images[0].new_zeros((len(images), 3, pad_h, pad_w))
        for b, image in enumerate(images):
            batch[b, :, : image.shape[1], : image.shape[2]] = image
        if self.config.channels_last:   # NHWC: faster convolution kernels (config.channels_last)
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def rescale_target(self, target: dict, scale: tuple[float, float]) -> dict:
        """Ground-truth boxes into the rescaled image; "difficult" objects dropped for training
        unless config.train_on_difficult ([C] trains without them)."""
        device = self.image_mean.device
        sy, sx = scale
        target = dict(target)
        boxes, labels = target["boxes"].to(device), target["labels"].to(device)
        difficult = target.get("difficult")
        if difficult is not None and not self.config.train_on_difficult:
            difficult = difficult.to(device).bool()
            keep = torch.where(~difficult)[0]       # indices: one host sync for all three tensors
            boxes, labels, target["difficult"] = boxes[keep], labels[keep], difficult[keep]
        target["boxes"] = boxes * boxes.new_tensor([sx, sy, sx, sy])
        target["labels"] = labels
        return target

    @staticmethod
    def to_network(boxes_list: list[torch.Tensor], batch: ImageBatch) -> list[torch.Tensor]:
        """Boxes [(N_i, 4)] in original image coordinates -> the rescaled batch's coordinates."""
        return [boxes * boxes.new_tensor([sx, sy, sx, sy]) for boxes, (sy, sx) in zip(boxes_list, batch.scales)]

    @staticmethod
    def to_original(boxes_list: list[torch.Tensor], batch: ImageBatch) -> list[torch.Tensor]:
        """Boxes [(N_i, 4)] in the batch's coordinates -> each original image's, clipped to it.

        The clip catches rounding: dividing by the scale can overshoot the border by ~1e-5 px.
        """
        return [box_ops.clip_boxes(boxes / boxes.new_tensor([sx, sy, sx, sy]), size, validate=False)
                for boxes, (sy, sx), size in zip(boxes_list, batch.scales, batch.original_sizes)]


# ----------------------------------------------------------------------------------------------
# Input checks: every image and target passes through here before any arithmetic
# ----------------------------------------------------------------------------------------------
def check_images(images) -> list[torch.Tensor]:
    """A (3, H, W) tensor, a (B, 3, H, W) tensor or a list of (3, H, W) tensors -> a list.

    Each image must be float with values in [0, 1] (the model normalises them itself with
    config.image_mean / image_std). The range test is loose (values in [-0.5, 1.5] pass, so
    resampling overshoot is fine) but catches the usual mistakes: 0-255 pixels, and images
    normalised twice. NaN or Inf pixels are an error too.
    """
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = [images]
        elif images.dim() == 4:
            images = list(images)
        else:
            raise ValueError(f"images must be a (3, H, W) tensor, a (B, 3, H, W) tensor or a list "
                             f"of (3, H, W) tensors; got a tensor of shape {tuple(images.shape)}")
    if not isinstance(images, (list, tuple)):
        raise ValueError(f"images must be a tensor or a list of tensors, got {type(images).__name__}")
    if len(images) == 0:
        raise ValueError("no images: got an empty batch (a list or tensor of 0 images)")
    for i, image in enumerate(images):
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"images[{i}] must be a float tensor of shape (3, H, W), got {shape}")
        if not image.is_floating_point():
            raise ValueError(f"images[{i}] has dtype {image.dtype}; expected float values in [0, 1] "
                             f"(convert with image.float() / 255)")
        if min(image.shape[1:]) < 1:
            raise ValueError(f"images[{i}] is empty: shape {tuple(image.shape)}")
        _check_pixel_range(image, i)
    return list(images)


def _check_pixel_range(image: torch.Tensor, i: int) -> None:
    """ValueError naming images[i] if it holds NaN/Inf or is clearly not in [0, 1]."""
    if image.device.type == "meta":   # shapes only, no values to check
        return
    # One min/max reduction per image. On a GPU, reading the two numbers back waits for the
    # device (a host sync): acceptable once per image at the model's door.
    low, high = torch.stack(torch.aminmax(image.detach())).tolist()
    if math.isnan(low) or math.isnan(high):
        raise ValueError(f"images[{i}] contains NaN pixels")
    if math.isinf(low) or math.isinf(high):
        raise ValueError(f"images[{i}] contains infinite pixels (range [{low:g}, {high:g}])")
    if low < -0.5:   # first: a normalised image usually exceeds 1.5 as well
        raise ValueError(f"images[{i}] has values in [{low:g}, {high:g}], expected [0, 1]; pass "
                         f"unnormalised pixels (the model subtracts config.image_mean itself), "
                         f"or scale 0-255 pixels with image / 255")
    if high > 1.5:
        raise ValueError(f"images[{i}] has values in [{low:g}, {high:g}], expected [0, 1]; "
                         f"0-255 pixels must be scaled: image / 255")


def check_targets(images: list[torch.Tensor], targets, num_classes: int | None = None) -> list[dict]:
    """One validated target per image (frcnn_edu.data.targets.validate_target); given
    num_classes, labels must be 1..num_classes."""
    if len(targets) != len(images):
        raise ValueError(f"got {len(images)} images but {len(targets)} targets")
    return [validate_target(t, tuple(image.shape[1:]), index=i, num_classes=num_classes)
            for i, (image, t) in enumerate(zip(images, targets))]
