"""Backbones: the shared convolutional layers of Faster R-CNN.

The RPN and the Fast R-CNN detector share one stack of conv layers (Sec. 3.1,
Sec. 3.2). The paper uses two: ZF (5 conv layers, 256 channels) and VGG-16
(13 conv layers, 512 channels); both have a total stride of 16 (Sec. 3.3).
For the built-in data there is also a `tiny` backbone that trains on a laptop
CPU in minutes.

Every backbone is a plain `nn.Sequential` with three extra attributes:

    out_channels   channels C of the feature map
    stride         total stride (16): one feature cell covers 16x16 pixels
    name           "zf", "vgg16" or "tiny"

and maps images `(N, 3, H, W)` to features `(N, C, H', W')` with H' about H/16.

Input: RGB float images. The model (not the backbone) normalises them; for
ImageNet-pretrained weights (`pretrained=True`) the expected input is RGB in
[0, 1] normalised with the ImageNet mean (0.485, 0.456, 0.406) and std
(0.229, 0.224, 0.225), which is what torchvision's weights were trained on.
(py-faster-rcnn used Caffe weights on BGR 0-255 images minus a mean instead.)
"""

import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from http.client import HTTPException

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

BACKBONE_NAMES = ("zf", "vgg16", "tiny")


# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------


class LocalResponseNormWithinChannel(nn.Module):
    """Caffe's LRN with `norm_region: WITHIN_CHANNEL`, as used by ZF.

    Each value is divided by the mean of the squares in its `size x size`
    spatial neighbourhood (same channel):

        y = x / (k + alpha * mean_{3x3}(x^2)) ** beta

    PyTorch's `nn.LocalResponseNorm` only normalises ACROSS channels, so this
    is written out. Like Caffe, the mean divides by size*size also at the
    border (zero padding counts), hence `count_include_pad=True`.
    Shapes: `(N, C, H, W) -> (N, C, H, W)`.
    """

    def __init__(self, size: int = 3, alpha: float = 5e-5, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_sq = F.avg_pool2d(
            x * x, self.size, stride=1, padding=self.size // 2, count_include_pad=True
        )
        return x / (self.k + self.alpha * mean_sq) ** self.beta

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


def init_weights(module: nn.Module) -> None:
    """Initialise for training from scratch: Kaiming-normal convs, BN at identity."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------
# ZF net (Zeiler & Fergus), the 5 shareable conv layers of py-faster-rcnn's
# models/pascal_voc/ZF prototxt
# --------------------------------------------------------------------------


class ZF(nn.Sequential):
    """ZF conv1-conv5: 256 channels, stride 16, receptive field 139 px.

    With the RPN's 3x3 window the receptive field is 171 px (Sec. 3.1).
    Every layer here maps a size h to ceil(h / 2), so an H x W image gives a
    ceil(H/16) x ceil(W/16) map (600 x 1000 -> 38 x 63), the same rule as our
    VGG-16. Caffe rounds pooling up, which for ZF's padded 3x3 pools adds one
    more row and column (39 x 64) whose centres lie outside the image; PyTorch's
    default floor rounding (used here) leaves them out.
    """

    frozen_layers: tuple[str, ...] = ()  # Sec. 3.1.3: for ZF all layers are fine-tuned

    def __init__(self) -> None:
        # Caffe LRN defaults k = 1; local_size 3, alpha 5e-5, beta 0.75 from the prototxt
        super().__init__(OrderedDict([
            ("conv1", nn.Conv2d(3, 96, kernel_size=7, stride=2, padding=3)),
            ("relu1", nn.ReLU(inplace=True)),
            ("norm1", LocalResponseNormWithinChannel(3, alpha=5e-5, beta=0.75, k=1.0)),
            ("pool1", nn.MaxPool2d(3, stride=2, padding=1)),
            ("conv2", nn.Conv2d(96, 256, kernel_size=5, stride=2, padding=2)),
            ("relu2", nn.ReLU(inplace=True)),
            ("norm2", LocalResponseNormWithinChannel(3, alpha=5e-5, beta=0.75, k=1.0)),
            ("pool2", nn.MaxPool2d(3, stride=2, padding=1)),
            ("conv3", nn.Conv2d(256, 384, kernel_size=3, padding=1)),
            ("relu3", nn.ReLU(inplace=True)),
            ("conv4", nn.Conv2d(384, 384, kernel_size=3, padding=1)),
            ("relu4", nn.ReLU(inplace=True)),
            ("conv5", nn.Conv2d(384, 256, kernel_size=3, padding=1)),
            ("relu5", nn.ReLU(inplace=True)),
        ]))
        self.out_channels, self.stride, self.name = 256, 16, "zf"
        init_weights(self)


# --------------------------------------------------------------------------
# VGG-16 up to conv5_3 (Simonyan & Zisserman), no pool5
# --------------------------------------------------------------------------

# (block, number of 3x3 convs, channels); a 2x2 max-pool follows blocks 1-4
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


class VGG16(nn.Sequential):
    """VGG-16 conv1_1-conv5_3 + ReLU: 512 channels, stride 16, receptive field 196 px.

    With the RPN's 3x3 window the receptive field is 228 px (Sec. 3.1).
    The 30 layers sit in the same order as torchvision's `vgg16().features[:30]`
    (conv, ReLU, ..., pool), so position i here is `features.{i}` there.
    Max-pools round up like Caffe (`ceil_mode=True`, Sec. 3.3): a 600 x 1000
    image gives a 38 x 63 map (2,394 positions, the paper's N_reg ~ 2,400).
    """

    # Sec. 3.1.3: when fine-tuning from ImageNet only conv3_1 and up are trained
    frozen_layers: tuple[str, ...] = ("conv1_1", "conv1_2", "conv2_1", "conv2_2")

    def __init__(self) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels = 3
        for block, num_convs, channels in VGG16_BLOCKS:
            for i in range(1, num_convs + 1):
                layers[f"conv{block}_{i}"] = nn.Conv2d(in_channels, channels, 3, padding=1)
                layers[f"relu{block}_{i}"] = nn.ReLU(inplace=True)
                in_channels = channels
            if block < 5:  # no pool5: conv5_3 is the last shared layer
                layers[f"pool{block}"] = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        super().__init__(layers)
        self.out_channels, self.stride, self.name = 512, 16, "vgg16"
        init_weights(self)


# --------------------------------------------------------------------------
# A tiny backbone for CPU training on the built-in data
# --------------------------------------------------------------------------


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    """3x3 conv (no bias: BN adds one) -> BatchNorm -> ReLU."""
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class Tiny(nn.Sequential):
    """A small BatchNorm backbone: 128 channels, stride 16.

    Not from the paper. Stages of 3x3 conv-BN-ReLU (`widths` channels): a
    stride-2 conv and three 3x3 max-pools bring the stride to 16, stage 4
    adds one more conv. Max-pools downsample for free and widen the receptive
    field: 119 px alone, 151 px with the RPN's 3x3 window -- enough for
    objects up to about 128 px in a 256 x 256 image. About 0.38 GFLOP
    (2 x 0.19 G multiply-adds) for one 256 x 256 image.
    """

    frozen_layers: tuple[str, ...] = ()

    def __init__(self, widths: Sequence[int] = (24, 64, 96, 128)) -> None:
        w1, w2, w3, w4 = widths
        super().__init__(OrderedDict([
            ("stage1", nn.Sequential(*conv_bn_relu(3, w1, stride=2),        # /2
                                     nn.MaxPool2d(3, stride=2, padding=1))),  # /4
            ("stage2", nn.Sequential(*conv_bn_relu(w1, w2),
                                     nn.MaxPool2d(3, stride=2, padding=1))),  # /8
            ("stage3", nn.Sequential(*conv_bn_relu(w2, w3),
                                     nn.MaxPool2d(3, stride=2, padding=1))),  # /16
            ("stage4", nn.Sequential(*conv_bn_relu(w3, w4),
                                     *conv_bn_relu(w4, w4))),
        ]))
        self.out_channels, self.stride, self.name = w4, 16, "tiny"
        init_weights(self)


# What build_backbone returns: each has out_channels, stride, name and frozen_layers.
Backbone = ZF | VGG16 | Tiny


# --------------------------------------------------------------------------
# Freezing, receptive field
# --------------------------------------------------------------------------


def freeze_early_layers(backbone: Backbone) -> list[str]:
    """Freeze the layers the paper does not fine-tune (Sec. 3.1.3).

    VGG-16: conv1_1 to conv2_2 ("conv3_1 and up" are trained); ZF and tiny:
    nothing. Only meaningful with pretrained weights: frozen random layers
    would never learn. Sets `requires_grad=False`; returns the names of the
    frozen parameters.
    """
    frozen = []
    for layer_name in backbone.frozen_layers:
        for param_name, param in getattr(backbone, layer_name).named_parameters():
            param.requires_grad_(False)
            frozen.append(f"{layer_name}.{param_name}")
    return frozen


def _square(value: int | tuple[int, ...] | list[int], layer: nn.Module, what: str) -> int:
    """kernel_size / stride / dilation as one int; non-square layers are not supported."""
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise ValueError(f"receptive_field: layer {layer} has non-square {what} {value}")
        value = value[0]
    return int(value)


def receptive_field(module: nn.Module, extra: Iterable[nn.Module] = ()) -> tuple[int, int]:
    """Receptive field size and total stride (in input pixels) of `module`.

    Walks the leaf layers in registration order (the forward order for
    `nn.Sequential`), then the layers in `extra`; only Conv2d, MaxPool2d and
    AvgPool2d change the field. Each layer with kernel k, stride s and
    dilation d grows the field by (d * (k - 1)) * (current stride) and
    multiplies the stride by s. Padding shifts the field but does not change
    its size; LRN's 3x3 averaging is not counted, as in the paper's numbers.

        receptive_field(build_backbone("zf"), extra=[nn.Conv2d(256, 256, 3)])
        -> (171, 16)   # Sec. 3.1: ZF + the RPN's 3x3 window
    """
    layers = [m for m in module.modules() if not list(m.children())]
    layers += [m for layer in extra for m in layer.modules() if not list(m.children())]
    size, stride = 1, 1
    for layer in layers:
        if not isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            continue
        k = _square(layer.kernel_size, layer, "kernel_size")
        s = _square(layer.stride, layer, "stride")
        d = _square(getattr(layer, "dilation", 1), layer, "dilation")
        size += d * (k - 1) * stride
        stride *= s
    return size, stride


# --------------------------------------------------------------------------
# ImageNet weights and the factory
# --------------------------------------------------------------------------


def load_torchvision_vgg16_weights(backbone: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Copy torchvision's VGG-16 conv weights into our `VGG16`, in order.

    `state_dict` is torchvision's `vgg16().state_dict()` (or the ImageNet file);
    its 13 `features.{i}.weight/bias` pairs, sorted by i, go onto our 13 convs
    (conv1_1, ..., conv5_3); the classifier is ignored. Raises ValueError when
    the count or a shape does not match. Returns `backbone`.
    """
    conv_ids = sorted(
        int(key.split(".")[1])
        for key in state_dict
        if key.startswith("features.") and key.endswith(".weight")
    )
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    if len(conv_ids) != len(convs):
        raise ValueError(
            f"state_dict has {len(conv_ids)} conv layers under 'features.', "
            f"the backbone has {len(convs)}"
        )
    with torch.no_grad():
        for i, conv in zip(conv_ids, convs):
            for param_name in ("weight", "bias"):
                key = f"features.{i}.{param_name}"
                source, target = state_dict[key], getattr(conv, param_name)
                if source.shape != target.shape:
                    raise ValueError(
                        f"state_dict[{key!r}] has shape {tuple(source.shape)}, "
                        f"expected {tuple(target.shape)}"
                    )
                target.copy_(source)
    return backbone


def _imagenet_vgg16_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet VGG-16 weights, from the torch hub cache or the network."""
    weights = torchvision.models.VGG16_Weights.IMAGENET1K_V1
    cache_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    try:
        return weights.get_state_dict(progress=True, map_location="cpu", weights_only=True)
    except (OSError, HTTPException) as error:  # URLError is an OSError
        raise RuntimeError(
            f"could not download ImageNet VGG-16 weights ({error}); pretrained "
            f"backbones need the network, or put the file vgg16-397923af.pth in "
            f"{cache_dir}; use pretrained=False to train from scratch"
        ) from error


def build_backbone(name: str, pretrained: bool = False) -> Backbone:
    """Build a backbone by name: "zf", "vgg16" or "tiny".

    pretrained=True (VGG-16 only) loads torchvision's ImageNet weights
    (`VGG16_Weights.IMAGENET1K_V1`) from the torch hub cache, downloading them
    there if missing; RuntimeError when that fails. Inputs must then be
    ImageNet-normalised (see the module docstring). Freezing conv1/conv2 as in
    Sec. 3.1.3 is a separate step: `freeze_early_layers(backbone)`.
    """
    builders: dict[str, type[Backbone]] = {"zf": ZF, "vgg16": VGG16, "tiny": Tiny}
    if name not in builders:
        raise ValueError(f"unknown backbone name {name!r}; valid names: {', '.join(BACKBONE_NAMES)}")
    if pretrained and name != "vgg16":
        raise ValueError(
            f"pretrained=True is only available for 'vgg16': torchvision has no "
            f"ImageNet weights for {name!r} (there are no public ImageNet ZF weights "
            f"in torchvision); use pretrained=False"
        )
    backbone = builders[name]()
    if pretrained:
        load_torchvision_vgg16_weights(backbone, _imagenet_vgg16_state_dict())
    return backbone
