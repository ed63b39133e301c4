"""Tests for frcnn_edu.backbones: shapes, receptive fields, weights, freezing."""

import math
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from frcnn_edu.backbones import (
    BACKBONE_NAMES,
    LocalResponseNormWithinChannel,
    build_backbone,
    freeze_early_layers,
    load_torchvision_vgg16_weights,
    receptive_field,
)

META = torch.device("meta")  # shapes propagate, no compute: big inputs for free


def build_on_meta(name):
    with META:
        return build_backbone(name)


def num_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def torchvision_vgg16():
    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None).eval()


# ----------------------------------------------------------------- attributes


@pytest.mark.parametrize(
    "name, channels", [("zf", 256), ("vgg16", 512), ("tiny", 128)]
)
def test_attributes(name, channels):
    backbone = build_on_meta(name)
    assert isinstance(backbone, nn.Module)
    assert (backbone.name, backbone.out_channels, backbone.stride) == (name, channels, 16)


def test_names_constant():
    assert BACKBONE_NAMES == ("zf", "vgg16", "tiny")


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"'resnet50'.*zf, vgg16, tiny"):
        build_backbone("resnet50")


@pytest.mark.parametrize("name", ["zf", "tiny"])
def test_pretrained_only_for_vgg16(name):
    with pytest.raises(ValueError, match="no public ImageNet ZF weights"):
        build_backbone(name, pretrained=True)


# --------------------------------------------------------------------- shapes


def test_vgg16_600x1000_gives_38x63_like_caffe():
    # Sec. 3.3: Caffe rounds pooling up, 600 x 1000 -> 38 x 63 = 2,394 positions
    backbone = build_on_meta("vgg16")
    out = backbone(torch.empty(1, 3, 600, 1000, device=META))
    assert out.shape == (1, 512, 38, 63)


def test_zf_600x1000_shape():
    backbone = build_on_meta("zf")
    out = backbone(torch.empty(1, 3, 600, 1000, device=META))
    assert out.shape == (1, 256, 38, 63)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
@pytest.mark.parametrize("size", [(600, 1000), (256, 256), (37, 53), (17, 250), (1, 1)])
def test_feature_size_is_ceil_of_size_over_16(name, size):
    backbone = build_on_meta(name)
    out = backbone(torch.empty(2, 3, *size, device=META))
    expected = (math.ceil(size[0] / 16), math.ceil(size[1] / 16))
    assert out.shape == (2, backbone.out_channels, *expected)


@pytest.mark.parametrize("name", ["zf", "tiny"])
def test_real_forward_and_backward_on_cpu(name):
    torch.manual_seed(0)
    backbone = build_backbone(name).train()
    out = backbone(torch.rand(2, 3, 64, 80))
    assert out.shape == (2, backbone.out_channels, 4, 5)
    assert torch.isfinite(out).all() and (out >= 0).all() and out.abs().sum() > 0
    out.mean().backward()
    assert all(p.grad is not None for p in backbone.parameters())


# ---------------------------------------------------------- receptive fields


def rpn_window(channels):
    return nn.Conv2d(channels, channels, 3, padding=1)


@pytest.mark.parametrize(
    "name, alone, with_window",
    [("zf", 139, 171), ("vgg16", 196, 228), ("tiny", 119, 151)],
)
def test_receptive_fields(name, alone, with_window):
    # Sec. 3.1: the 3x3 window sees 171 px on ZF and 228 px on VGG-16
    backbone = build_on_meta(name)
    window = rpn_window(backbone.out_channels).to(META)
    assert receptive_field(backbone) == (alone, 16)
    assert receptive_field(backbone, extra=[window]) == (with_window, 16)
    assert receptive_field(nn.Sequential(backbone, window)) == (with_window, 16)


def test_receptive_field_by_hand():
    # conv 3x3 dilation 2: 1 + 2*2 = 5; maxpool 2/2: 5 + 1 = 6, stride 2;
    # conv 3x3 stride 2: 6 + 2*2 = 10, stride 4; avgpool 3/1: 10 + 2*4 = 18
    net = nn.Sequential(
        nn.Conv2d(1, 1, 3, dilation=2),
        nn.ReLU(),
        nn.Sequential(nn.MaxPool2d(2), nn.BatchNorm2d(1)),
        nn.Conv2d(1, 1, 3, stride=2),
        nn.AvgPool2d(3, stride=1),
    )
    assert receptive_field(net) == (18, 4)
    assert receptive_field(nn.Identity()) == (1, 1)


def test_receptive_field_rejects_non_square_layers():
    with pytest.raises(ValueError, match="kernel_size"):
        receptive_field(nn.Conv2d(1, 1, (3, 5)))


# ------------------------------------------------------------ parameters, init


def test_parameter_counts():
    # VGG-16 13 conv layers: the well-known 14,714,688
    assert num_params(build_on_meta("vgg16")) == 14_714_688
    # ZF by hand: conv1 96*3*7*7+96 = 14,208; conv2 256*96*5*5+256 = 614,656;
    # conv3 384*256*9+384 = 885,120; conv4 384*384*9+384 = 1,327,488;
    # conv5 256*384*9+256 = 884,992; total 3,726,464
    assert num_params(build_on_meta("zf")) == 3_726_464
    assert num_params(build_on_meta("tiny")) < 500_000


def test_from_scratch_init():
    torch.manual_seed(0)
    vgg = build_backbone("vgg16")
    conv = vgg.conv5_3  # fan_out = 512 * 3 * 3: Kaiming std sqrt(2 / 4608)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 4608), rel=0.02)
    assert torch.all(conv.bias == 0)
    tiny = build_backbone("tiny")
    norms = [m for m in tiny.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)


# ------------------------------------------------------------------------ LRN


def test_lrn_within_channel_on_constant_input():
    # Caffe WITHIN_CHANNEL: x / (1 + alpha * mean_3x3(x^2))^beta, zero padding counted
    alpha, beta, c = 0.5, 0.75, 2.0
    lrn = LocalResponseNormWithinChannel(3, alpha=alpha, beta=beta, k=1.0)
    x = torch.full((1, 2, 4, 5), c)
    y = lrn(x)
    assert y[0, 1, 1, 1].item() == pytest.approx(c / (1 + alpha * c * c) ** beta)
    # a corner sees 4 of 9 values
    assert y[0, 0, 0, 0].item() == pytest.approx(c / (1 + alpha * 4 * c * c / 9) ** beta)
    # channels do not mix
    x[0, 0] = 0
    assert torch.equal(lrn(x)[0, 1], y[0, 1]) and torch.all(lrn(x)[0, 0] == 0)


# ------------------------------------------------------------------- freezing


def test_freeze_early_layers_vgg16():
    vgg = build_on_meta("vgg16")
    frozen = freeze_early_layers(vgg)
    assert len(frozen) == 8 and frozen[0] == "conv1_1.weight" and frozen[-1] == "conv2_2.bias"
    trainable = [n for n, p in vgg.named_parameters() if p.requires_grad]
    assert trainable[0] == "conv3_1.weight" and len(trainable) == 26 - 8


@pytest.mark.parametrize("name", ["zf", "tiny"])
def test_freeze_early_layers_noop(name):
    backbone = build_on_meta(name)
    assert freeze_early_layers(backbone) == []
    assert all(p.requires_grad for p in backbone.parameters())


# ------------------------------------------------------- torchvision weights


@pytest.mark.slow
def test_torchvision_weights_give_torchvision_features(torchvision_vgg16):
    backbone = build_backbone("vgg16").eval()
    load_torchvision_vgg16_weights(backbone, torchvision_vgg16.state_dict())
    assert torch.equal(backbone.conv5_3.weight, torchvision_vgg16.features[28].weight)
    x = torch.rand(1, 3, 64, 96)  # divisible by 16: ceil and floor pooling agree
    with torch.no_grad():
        ours, theirs = backbone(x), torchvision_vgg16.features[:30](x)
    assert ours.shape == (1, 512, 4, 6) and ours.abs().sum() > 0
    torch.testing.assert_close(ours, theirs)


@pytest.mark.slow
def test_torchvision_weights_shape_mismatch(torchvision_vgg16):
    state = dict(torchvision_vgg16.state_dict())
    state["features.5.weight"] = torch.zeros(128, 64, 5, 5)
    with pytest.raises(ValueError, match=r"features\.5\.weight.*\(128, 64, 5, 5\).*\(128, 64, 3, 3\)"):
        load_torchvision_vgg16_weights(build_on_meta("vgg16"), state)
    del state["features.28.weight"]
    with pytest.raises(ValueError, match="12 conv layers"):
        load_torchvision_vgg16_weights(build_on_meta("vgg16"), state)


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """An empty torch hub cache and a download that fails like an offline machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    calls = []

    def offline_download(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline_download)
    return tmp_path / "hub" / "checkpoints", calls


def test_pretrained_offline_raises_clear_error(no_network):
    cache_dir, calls = no_network
    with pytest.raises(RuntimeError) as info:
        build_backbone("vgg16", pretrained=True)
    message = str(info.value)
    assert message.startswith("could not download ImageNet VGG-16 weights (")
    assert "no network in tests" in message
    assert f"vgg16-397923af.pth in {cache_dir}" in message
    assert "pretrained=False" in message
    assert calls == ["https://download.pytorch.org/models/vgg16-397923af.pth"]


@pytest.mark.slow
def test_pretrained_loads_from_hub_cache_without_network(no_network, torchvision_vgg16):
    cache_dir, calls = no_network
    cache_dir.mkdir(parents=True)
    # only the conv part, to keep the file small; the loader ignores the classifier
    features = {k: v for k, v in torchvision_vgg16.state_dict().items() if k.startswith("features.")}
    torch.save(features, cache_dir / "vgg16-397923af.pth")
    backbone = build_backbone("vgg16", pretrained=True)
    assert calls == []
    assert torch.equal(backbone.conv1_1.weight, torchvision_vgg16.features[0].weight)
    assert torch.equal(backbone.conv5_3.bias, torchvision_vgg16.features[28].bias)
