"""Every formula the notebooks' prose states, checked against the package's code.

Textbooks get formulas wrong for years (d2l-en PR #442, the anchor width formula; docs/references.md); here
each formula a notebook states is a test. One test per formula; its docstring quotes the prose and
names the notebook(s). To add one: copy a test, quote the sentence, compute the claim with the
package (never with a re-implementation of what the package does), assert.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import frcnn_edu as fe
from frcnn_edu import anchors as A
from frcnn_edu import backbones as B
from frcnn_edu import boxes as BX
from frcnn_edu import roi as R
from frcnn_edu import rpn as RPN

PAPER_SIZES, PAPER_RATIOS = (128, 256, 512), (0.5, 1.0, 2.0)


def _wh(boxes):
    return boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]


def _meta_backbone(name):
    """A backbone on the meta device: shapes only, no memory, no compute."""
    with torch.device("meta"):
        return B.build_backbone(name)


# ----------------------------------------------------------------------------------------------
# Boxes (01_boxes, ex01, ex04)
# ----------------------------------------------------------------------------------------------
def test_box_width_height_area_centre():
    """01_boxes: "width w = x2 - x1, height h = y2 - y1, area w * h; centre x = x1 + w/2,
    y = y1 + h/2" (continuous coordinates, no "+1")."""
    box = torch.tensor([[1.0, 2.0, 5.0, 5.0]])
    assert BX.box_area(box).item() == (5 - 1) * (5 - 2)
    # the centre as eq. 2 uses it: box centre (3, 3.5), anchor centre (2, 1.5), both 4 x 3
    moved = torch.tensor([[0.0, 0.0, 4.0, 3.0]])          # centre (2, 1.5) vs (3, 3.5)
    t = BX.encode(box, moved)[0]
    assert t[0].item() == pytest.approx((3 - 2) / 4) and t[1].item() == pytest.approx((3.5 - 1.5) / 3)


def test_iou_definition():
    """01_boxes, ex01: "IoU(A, B) = area(A ∩ B) / area(A ∪ B) = I / (area(A) + area(B) - I)";
    separate or touching boxes have IoU 0; two zero-area boxes have IoU 0 (not NaN)."""
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 5.0, 15.0, 15.0]])
    inter = 5 * 5
    assert BX.box_iou(a, b).item() == pytest.approx(inter / (100 + 100 - inter))
    assert BX.box_iou(a, torch.tensor([[10.0, 0.0, 20.0, 10.0]])).item() == 0.0
    zero = torch.tensor([[3.0, 3.0, 3.0, 3.0]])
    assert BX.box_iou(zero, zero).item() == 0.0


def test_iou_of_a_shifted_box():
    """01_boxes: "a w x h box shifted sideways by a fraction d of its width has
    IoU = (1 - d) / (1 + d)"."""
    for d in (0.1, 0.25, 0.5):
        box = torch.tensor([[0.0, 0.0, 40.0, 30.0]])
        shifted = box + torch.tensor([40.0 * d, 0.0, 40.0 * d, 0.0])
        assert BX.box_iou(box, shifted).item() == pytest.approx((1 - d) / (1 + d))


def test_iou_of_a_grown_box():
    """01_boxes: "a box grown by a factor s about its own centre (both sides) has IoU = 1 / s²:
    IoU 0.7 tolerates s ≈ 1.20, IoU 0.5 s = √2 ≈ 1.41"."""
    box = torch.tensor([[40.0, 40.0, 60.0, 70.0]])
    for s in (1.2, math.sqrt(2), 2.0):
        w, h = 20 * s, 30 * s
        grown = torch.tensor([[50 - w / 2, 55 - h / 2, 50 + w / 2, 55 + h / 2]])
        assert BX.box_iou(box, grown).item() == pytest.approx(1 / s ** 2, rel=1e-5)
    assert 1 / 1.2 ** 2 == pytest.approx(0.7, abs=0.01) and 1 / math.sqrt(2) ** 2 == pytest.approx(0.5)


def test_eq2_offsets():
    """01_boxes, ex04 (eq. 2): "tx = (x - xa) / wa, ty = (y - ya) / ha"."""
    anchors = torch.tensor([[10.0, 20.0, 50.0, 80.0]])      # xa = 30, ya = 50, wa = 40, ha = 60
    boxes = torch.tensor([[22.0, 41.0, 62.0, 101.0]])       # x = 42, y = 71, same size
    tx, ty, tw, th = BX.encode(boxes, anchors)[0].tolist()
    assert tx == pytest.approx((42 - 30) / 40) and ty == pytest.approx((71 - 50) / 60)
    assert tw == pytest.approx(0.0) and th == pytest.approx(0.0)


def test_eq2_log_sizes():
    """01_boxes, ex04 (eq. 2): "tw = log(w / wa), th = log(h / ha)"; a box twice as wide with the
    same centre gives tw = log 2 = 0.693."""
    anchors = torch.tensor([[10.0, 0.0, 30.0, 10.0]])
    boxes = torch.tensor([[0.0, -5.0, 40.0, 15.0]])         # w = 2 wa, h = 2 ha, same centre
    tx, ty, tw, th = BX.encode(boxes, anchors)[0].tolist()
    assert (tx, ty) == (0.0, 0.0)
    assert tw == pytest.approx(math.log(2)) and th == pytest.approx(math.log(2))
    assert math.log(2) == pytest.approx(0.693, abs=5e-4)


def test_eq2_inverse():
    """01_boxes, 07_proposals, ex04: "Decoding inverts it: x = xa + tx·wa, w = wa·exp(tw)"
    (likewise y, h); decode(encode(b, a), a) = b."""
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(20, 2, generator=g) * 100
    anchors = torch.cat([xy, xy + 5 + torch.rand(20, 2, generator=g) * 50], dim=1).double()
    xy = torch.rand(20, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(20, 2, generator=g) * 50], dim=1).double()
    torch.testing.assert_close(BX.decode(BX.encode(boxes, anchors), anchors), boxes)
    t = torch.tensor([[0.5, -0.25, math.log(1.5), 0.0]], dtype=torch.float64)
    a = anchors[:1]
    xa, ya = (a[0, 0] + a[0, 2]) / 2, (a[0, 1] + a[0, 3]) / 2
    wa, ha = a[0, 2] - a[0, 0], a[0, 3] - a[0, 1]
    x, y, w, h = xa + 0.5 * wa, ya - 0.25 * ha, wa * 1.5, ha
    expected = torch.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2])[None]
    torch.testing.assert_close(BX.decode(t, a), expected)


def test_decode_clamps_at_log_1000_over_16():
    """01_boxes: "decode therefore clamps tw and th at BBOX_XFORM_CLIP = log(1000/16) ≈ 4.135
    before exp"."""
    assert BX.BBOX_XFORM_CLIP == pytest.approx(math.log(1000 / 16))
    assert BX.BBOX_XFORM_CLIP == pytest.approx(4.135, abs=5e-4)
    anchor = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    huge = BX.decode(torch.tensor([[0.0, 0.0, 50.0, 50.0]]), anchor)
    assert _wh(huge)[0].item() == pytest.approx(1000.0, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# NMS (01_boxes, 07_proposals, ex02)
# ----------------------------------------------------------------------------------------------
def test_nms_suppresses_only_above_the_threshold():
    """ex02, 01_boxes: "keep it unless a box kept before it overlaps it with IoU > iou_threshold"
    (strictly greater: a box at exactly the threshold stays); only kept boxes suppress."""
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]])   # IoU exactly 0.5
    scores = torch.tensor([0.9, 0.8])
    for impl in ("fast", "reference"):
        assert BX.nms(boxes, scores, 0.5, impl=impl).tolist() == [0, 1]
        assert BX.nms(boxes, scores, 0.49, impl=impl).tolist() == [0]
    chain = torch.tensor([[0.0, 0, 10, 10], [4.0, 0, 14, 10], [8.0, 0, 18, 10]])
    assert BX.nms(chain, torch.tensor([0.9, 0.8, 0.7]), 0.3).tolist() == [0, 2]


def test_nms_ties_lower_index_first():
    """ex02: "sort the boxes by score, highest first (equal scores: lower index first)"."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 11, 11], [40.0, 40, 50, 50]])
    for impl in ("fast", "reference"):
        assert BX.nms(boxes, torch.full((3,), 0.5), 0.5, impl=impl).tolist() == [0, 2]


def test_nms_thresholds_of_the_paper():
    """ex02, 07_proposals (Sec. 3.3): "NMS at IoU 0.7 on the proposals ... the detector's
    per-class NMS uses 0.3"; 300 proposals at test, 2,000 in training."""
    config = fe.FasterRCNNConfig()
    assert config.rpn_nms_iou == 0.7 and config.det_nms_iou == 0.3
    assert (config.rpn_post_nms_top_n_test, config.rpn_post_nms_top_n_train) == (300, 2000)


# ----------------------------------------------------------------------------------------------
# Receptive field and feature-map size (02_backbone)
# ----------------------------------------------------------------------------------------------
def _recursion(module, extra=()):
    """The prose's recursion, written out: r_out = r_in + (k - 1) j_in, j_out = j_in s."""
    r, j = 1, 1
    layers = [m for m in list(module.modules()) + list(extra) if not list(m.children())]
    for layer in layers:
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k = layer.kernel_size if isinstance(layer.kernel_size, int) else layer.kernel_size[0]
            s = layer.stride if isinstance(layer.stride, int) else layer.stride[0]
            r, j = r + (k - 1) * j, j * s
    return r, j


@pytest.mark.parametrize("name", ["zf", "vgg16", "tiny"])
def test_receptive_field_recursion(name):
    """02_backbone: "r_out = r_in + (k - 1) j_in, j_out = j_in s, starting from r = 1, j = 1 at
    the input. fe.backbones.receptive_field(module) does exactly this"."""
    net = _meta_backbone(name)
    window = nn.Conv2d(1, 1, 3, padding=1)
    assert B.receptive_field(net) == _recursion(net)
    assert B.receptive_field(net, extra=[window]) == _recursion(net, [window])


def test_receptive_field_zf_171_vgg_228():
    """02_backbone (Sec. 3.1): "The RPN adds its own 3 x 3 conv ... with j = 16: that adds
    2 x 16 = 32 pixels. This gives the paper's numbers: 171 px for ZF and 228 px for VGG-16"
    (ZF alone 139, VGG-16 alone 196; stride 16)."""
    window = nn.Conv2d(1, 1, 3, padding=1)
    assert B.receptive_field(_meta_backbone("zf")) == (139, 16)
    assert B.receptive_field(_meta_backbone("vgg16")) == (196, 16)
    assert B.receptive_field(_meta_backbone("zf"), extra=[window]) == (139 + 2 * 16, 16) == (171, 16)
    assert B.receptive_field(_meta_backbone("vgg16"), extra=[window]) == (196 + 2 * 16, 16) == (228, 16)


def test_feature_map_600x1000_is_38x63():
    """02_backbone (Sec. 3.3): "a 38 x 63 map, 2,394 positions: the paper's N_reg ≈ 2,400 ...
    PyTorch's MaxPool2d rounds down by default and gives 37 x 62; our VGG-16 uses ceil_mode=True"."""
    with torch.device("meta"):
        x = torch.empty(1, 3, 600, 1000)
        assert tuple(_meta_backbone("vgg16")(x).shape[-2:]) == (38, 63)
        assert tuple(_meta_backbone("zf")(x).shape[-2:]) == (38, 63)
        floor_vgg = nn.Sequential(*[nn.MaxPool2d(2, 2) if isinstance(m, nn.MaxPool2d) else m
                                    for m in _meta_backbone("vgg16")])
        assert tuple(floor_vgg(x).shape[-2:]) == (37, 62)
    assert 38 * 63 == 2394


# ----------------------------------------------------------------------------------------------
# The RPN head (03_sliding_window)
# ----------------------------------------------------------------------------------------------
def test_rpn_output_layer_parameters():
    """03_sliding_window (Sec. 3.1.1): "output layers: 512 x (4 + 2) x 9 = 2.8 x 10⁴"
    (27,648 weights)."""
    head = RPN.RPNHead(512, num_anchors=9, mid_channels=512)
    weights = head.cls.weight.numel() + head.reg.weight.numel()
    assert weights == 512 * (4 + 2) * 9 == 27_648
    assert round(weights / 1e4, 1) == 2.8


def test_rpn_parameters_with_the_3x3_conv():
    """03_sliding_window (Sec. 3.1.1): "3·3·512·512 + 512·6·9 ≈ 2.4 x 10⁶" weights with the
    3 x 3 projection layer."""
    head = RPN.RPNHead(512, num_anchors=9, mid_channels=512)
    weights = sum(m.weight.numel() for m in (head.conv, head.cls, head.reg))
    assert weights == 3 * 3 * 512 * 512 + 512 * 6 * 9 == 2_386_944
    assert round(weights / 1e6, 1) == 2.4


def test_rpn_outputs_2k_and_4k_per_position():
    """03_sliding_window: "At one position (y, x), scores[:, :, y, x] holds 2k = 18 numbers and
    deltas[:, :, y, x] 4k = 36"."""
    head = RPN.RPNHead(8, num_anchors=9, mid_channels=4)
    scores, deltas = head(torch.zeros(1, 8, 3, 5))
    assert scores.shape == (1, 18, 3, 5) and deltas.shape == (1, 36, 3, 5)


def test_objectness_is_the_softmax_of_two_logits():
    """07_proposals: "p = softmax(l)[1] = σ(l₁ − l₀): the difference of the logits
    (fe.rpn.objectness_logit) ranks anchors exactly as the softmax probability does"."""
    logits = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.sigmoid(RPN.objectness_logit(logits)), logits.softmax(dim=1)[:, 1])


# ----------------------------------------------------------------------------------------------
# Anchors (04_anchors, ex03)
# ----------------------------------------------------------------------------------------------
def test_anchor_width_and_height():
    """04_anchors, ex03: "ratio r = h / w, w = s / √r, h = s √r"."""
    for s in (32, 128, 512):
        for r in (0.25, 0.5, 1.0, 2.0):
            w, h = _wh(A.generate_base_anchors((s,), (r,)))
            assert w.item() == pytest.approx(s / math.sqrt(r), rel=1e-6)
            assert h.item() == pytest.approx(s * math.sqrt(r), rel=1e-6)


def test_anchor_area_is_size_squared():
    """04_anchors, ex03: "(so w h = s², h / w = r)": areas 128², 256², 512² whatever the ratio."""
    anchors = A.generate_base_anchors(PAPER_SIZES, PAPER_RATIOS)
    areas = BX.box_area(anchors).reshape(3, 3)               # ratios x sizes
    for i, s in enumerate(PAPER_SIZES):
        assert areas[:, i].tolist() == pytest.approx([s ** 2] * 3, rel=1e-6)


def test_anchor_ratio_is_height_over_width():
    """04_anchors, ex03: "ratio = height / width ... ratio 2 is a tall box"."""
    anchors = A.generate_base_anchors((100,), (0.5, 1.0, 2.0))
    w, h = _wh(anchors)
    assert (h / w).tolist() == pytest.approx([0.5, 1.0, 2.0], rel=1e-6)
    assert h[2] > w[2] and h[0] < w[0]


def test_anchor_order_ratios_outer_sizes_inner():
    """04_anchors, ex03: "k = 9 anchors (3 sizes x 3 aspect ratios)", rows "[r0 s0, r0 s1, r0 s2,
    r1 s0, ...]": ratios outer, sizes inner."""
    anchors = A.generate_base_anchors(PAPER_SIZES, PAPER_RATIOS)
    assert anchors.shape == (9, 4)
    for a in range(9):
        r, s = PAPER_RATIOS[a // 3], PAPER_SIZES[a % 3]
        torch.testing.assert_close(anchors[a], A.generate_base_anchors((s,), (r,))[0])


def test_legacy_anchor_areas_and_centre():
    """04_anchors: "The rounding moves the legacy areas up to 8% away from the nominal ones
    (184 x 96 = 17,664 instead of 128² = 16,384), and their centre 7.5 means 'pixel 7.5' in the
    inclusive convention, i.e. 8.0 in continuous coordinates" — where frcnn_edu centres the
    anchors of cell (0, 0). (The legacy table itself is pinned in tests/test_anchors.py.)"""
    legacy = A.generate_base_anchors_legacy()
    areas = (legacy[:, 2] - legacy[:, 0] + 1) * (legacy[:, 3] - legacy[:, 1] + 1)   # inclusive pixels
    nominal = torch.tensor([float(s * s) for _ in PAPER_RATIOS for s in PAPER_SIZES])
    deviation = (areas / nominal - 1).abs()
    assert areas[0].item() == 184 * 96 == 17_664 and nominal[0].item() == 128 ** 2 == 16_384
    assert deviation.max().item() == pytest.approx(17_664 / 16_384 - 1) and deviation.max() < 0.08
    centres = (legacy[:, :2] + legacy[:, 2:]) / 2
    assert torch.equal(centres, torch.full((9, 2), 7.5))
    cell = A.AnchorGenerator(PAPER_SIZES, PAPER_RATIOS, 16)((1, 1))
    assert torch.equal((cell[:, :2] + cell[:, 2:]) / 2, centres + 0.5)        # 8.0: cell (0, 0)


def test_legacy_anchor_rounding():
    """04_anchors: "for ratio 0.5, w = round(√(256 / 0.5)) = round(22.6) = 23 and
    h = round(23 x 0.5) = 12, then x 8 gives" 184 x 96 (inclusive pixels: width x2 - x1 + 1)."""
    assert round(math.sqrt(256 / 0.5)) == 23 and round(23 * 0.5) == 12
    first = A.generate_base_anchors_legacy()[0]
    assert (first[2] - first[0] + 1).item() == 23 * 8 and (first[3] - first[1] + 1).item() == 12 * 8


def test_anchor_count_1000x600():
    """04_anchors (Sec. 3.3): "An H x W map has H · W · k anchors: 21,546 for a 1000 x 600 image
    (38 x 63 map)" with Caffe-style ceil rounding; the paper's "about 20,000 (≈ 60 x 40 x 9)"."""
    anchors = A.AnchorGenerator(PAPER_SIZES, PAPER_RATIOS, 16)((38, 63))
    assert len(anchors) == 38 * 63 * 9 == 21_546
    assert math.ceil(600 / 16) == 38 and math.ceil(1000 / 16) == 63
    assert 60 * 40 * 9 == 21_600


def test_cross_boundary_counts():
    """04_anchors (Sec. 3.3): "the cross-boundary rule keeps 8,044 of them for training (5,834 of
    17,100 for an 800 x 600 image — the paper's 'about 6,000')"."""
    gen = A.AnchorGenerator(PAPER_SIZES, PAPER_RATIOS, 16)
    assert int(A.inside_image(gen((38, 63)), (600, 1000)).sum()) == 8_044
    anchors = gen((38, 50))                                   # 600 x 800: ceil(600/16), ceil(800/16)
    assert len(anchors) == 17_100
    assert int(A.inside_image(anchors, (600, 800)).sum()) == 5_834


def test_anchor_index_order():
    """04_anchors: "index = (y · W + x) · k + a"; the anchor is centred on
    ((x + 0.5) · stride, (y + 0.5) · stride)."""
    k, H, W = 9, 4, 6
    anchors = A.AnchorGenerator(PAPER_SIZES, PAPER_RATIOS, 16)((H, W))
    base = A.generate_base_anchors(PAPER_SIZES, PAPER_RATIOS)
    for y, x, a in [(0, 0, 0), (1, 2, 5), (3, 5, 8)]:
        shift = torch.tensor([(x + 0.5) * 16, (y + 0.5) * 16] * 2)
        torch.testing.assert_close(anchors[(y * W + x) * k + a], base[a] + shift)


def test_shapes_map_has_2304_anchors():
    """07_proposals: "a 16 x 16 map has only 2,304 anchors, not ~20,000" (shapes_tiny, k = 9)."""
    config = fe.get_preset("shapes_tiny")
    gen = A.AnchorGenerator(config.anchor_sizes, config.anchor_ratios, 16)
    assert len(gen((256 // 16, 256 // 16))) == 16 * 16 * 9 == 2_304


# ----------------------------------------------------------------------------------------------
# Anchor labels and the loss (05, 06, ex05)
# ----------------------------------------------------------------------------------------------
def test_anchor_label_rules():
    """ex05 (Sec. 3.1.2): "positive if its IoU with some ground-truth box is > pos_iou (0.7) ... or
    the anchor with the highest IoU for some ground-truth box (ties: all of them) ... negative if
    ... its IoU with every ground-truth box is < neg_iou (0.3) ... everything else is ignored";
    cross-boundary anchors are ignored."""
    gt = torch.tensor([[0.0, 0.0, 10.0, 9.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0],     # IoU 0.9   -> 1
                            [0.0, 0.0, 10.0, 5.0],      # IoU 0.556 -> -1
                            [40.0, 40.0, 50.0, 50.0],   # IoU 0     -> 0
                            [-1.0, 0.0, 9.0, 9.0]])     # crosses the border -> -1
    labels, _ = RPN.assign_anchor_targets(anchors, gt, (60, 60), sample=False)
    assert labels.tolist() == [1, -1, 0, -1]
    below = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0], [40.0, 40, 50, 50]])
    labels, _ = RPN.assign_anchor_targets(below, torch.tensor([[5.0, 0.0, 15.0, 10.0]]), (60, 60), sample=False)
    assert labels.tolist() == [1, 1, 0]                  # a tie at IoU 1/3: both best, positive


def test_smooth_l1_definition():
    """06 / [F] eq. 3: "smooth_L1(x) = 0.5 x² if |x| < 1, else |x| − 0.5", and with β (σ = 3 in
    the released code, β = 1/σ² = 1/9): 0.5 x² / β if |x| < β, else |x| − 0.5 β — as rpn_loss uses it."""
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    by_hand = torch.where(x.abs() < 1, 0.5 * x ** 2, x.abs() - 0.5)
    torch.testing.assert_close(F.smooth_l1_loss(x, torch.zeros_like(x), reduction="none", beta=1.0), by_hand)
    beta = 1 / 9
    by_hand = torch.where(x.abs() < beta, 0.5 * x ** 2 / beta, x.abs() - 0.5 * beta)
    torch.testing.assert_close(F.smooth_l1_loss(x, torch.zeros_like(x), reduction="none", beta=beta), by_hand)
    # rpn_loss: lambda / N_reg times the smooth L1 summed over the 4 coordinates of the positives
    deltas = torch.tensor([[[0.5, -2.0, 0.0, 1.5], [9.0, 9.0, 9.0, 9.0]]])
    targets = torch.zeros(1, 2, 4)
    labels = torch.tensor([[1, 0]])
    _, loss_box = RPN.rpn_loss(torch.zeros(1, 2, 2), deltas, labels, targets, num_locations=2400,
                               lambda_=10.0)
    expected = 10.0 / 2400 * (0.5 * 0.5 ** 2 + (2.0 - 0.5) + 0.0 + (1.5 - 0.5))
    assert loss_box.item() == pytest.approx(expected)


def test_eq1_normalisation_balances_the_terms():
    """06 (Sec. 3.1.2): "N_cls = 256 (the mini-batch), N_reg ≈ 2,400 ... λ = 10 so both terms weigh
    about the same": 10 / 2,400 ≈ 1 / 256 — and the config's defaults are these."""
    config = fe.FasterRCNNConfig()
    assert config.rpn_lambda == 10 and config.rpn_batch_size == 256
    assert 10 / 2400 == pytest.approx(1 / 256, rel=0.1)


# ----------------------------------------------------------------------------------------------
# RoI pooling (08, ex06)
# ----------------------------------------------------------------------------------------------
def test_roi_pool_bin_edges():
    """08_roi_pooling, ex06 ([F] Sec. 2.1): "bin i of h covers rows y1 + floor(i * roi_h / h) up to
    y1 + ceil((i + 1) * roi_h / h) (end excluded), clamped"; the RoI's end cell is included."""
    for roi_h in range(1, 15):
        for pooled in range(1, 8):
            # a RoI of roi_h cells starting at row 2 and column 3 (spatial_scale 1)
            roi = torch.tensor([3.0, 2.0, 3.0 + 4 - 1, 2.0 + roi_h - 1])
            h_starts, h_ends, w_starts, w_ends = R.roi_pool_bins(roi, (pooled, 1), 1.0, (100, 100))
            exact_starts = [2 + math.floor(i * roi_h / pooled) for i in range(pooled)]
            exact_ends = [2 + math.ceil((i + 1) * roi_h / pooled) for i in range(pooled)]
            assert h_starts == exact_starts and h_ends == exact_ends, (roi_h, pooled)
            assert (w_starts, w_ends) == ([3], [7])           # 4 cells wide, one bin


def test_roi_pool_rounds_half_away_from_zero():
    """ex06: "Snap each corner to a feature cell: round(x * spatial_scale), rounding halves away
    from zero (2.5 -> 3, like C's round; Python's round and torch.round give 2)"."""
    h_starts, h_ends, w_starts, w_ends = R.roi_pool_bins(torch.tensor([5.0, 1.0, 13.0, 9.0]), (1, 1), 0.5, (20, 20))
    assert (w_starts[0], w_ends[0] - 1) == (3, 7)            # 2.5 -> 3, 6.5 -> 7
    assert (h_starts[0], h_ends[0] - 1) == (1, 5)            # 0.5 -> 1, 4.5 -> 5
    assert round(2.5) == 2 and torch.round(torch.tensor(2.5)).item() == 2.0


def test_roi_pool_output_sizes_of_the_paper():
    """ex06, 08_roi_pooling: "7 x 7 for VGG-16, 6 x 6 for ZF"."""
    assert fe.get_preset("paper_vgg16").roi_output_size == 7
    assert fe.get_preset("paper_zf").roi_output_size == 6


def test_roi_pool_is_the_max_of_each_bin():
    """08_roi_pooling, ex06: "each output value is the maximum of its bin, per channel; an empty
    bin gives 0"."""
    features = torch.arange(36, dtype=torch.float32).reshape(1, 1, 6, 6)
    rois = torch.tensor([[0.0, 1.0, 1.0, 4.0, 4.0], [0.0, 3.0, 3.0, 11.0, 11.0]])
    out = R.roi_pool(features, rois, 2, 1.0)
    assert out[0, 0].tolist() == [[14.0, 16.0], [26.0, 28.0]]
    assert out[1, 0, 1, 1].item() == 0.0                     # a bin entirely off the map


# ----------------------------------------------------------------------------------------------
# Truncated SVD (09_fast_rcnn)
# ----------------------------------------------------------------------------------------------
def test_truncated_svd_parameter_count_and_factors():
    """09_fast_rcnn: "W ≈ U_t Σ_t V_tᵀ ... first Σ_t V_tᵀ (t × v, no bias), then U_t (u × t, with
    the original bias). The parameter count drops from u·v to t(u + v)"."""
    from frcnn_edu.fast_rcnn import truncated_svd

    torch.manual_seed(0)
    layer = nn.Linear(40, 24)     # v = 40 inputs, u = 24 outputs
    first, second = truncated_svd(layer, 5)
    assert first.weight.shape == (5, 40) and first.bias is None
    assert second.weight.shape == (24, 5) and torch.equal(second.bias, layer.bias)
    assert first.weight.numel() + second.weight.numel() == 5 * (24 + 40)
    u, s, vh = torch.linalg.svd(layer.weight.detach().double(), full_matrices=False)
    torch.testing.assert_close(second.weight.double() @ first.weight.double(),
                               u[:, :5] @ torch.diag(s[:5]) @ vh[:5], atol=1e-6, rtol=1e-5)


def test_vgg16_fc6_fc7_cost_about_72_gflop_on_300_rois():
    """09_fast_rcnn: "In the paper's VGG-16 setting fc6 (25,088 → 4,096) and fc7 (4,096 → 4,096)
    cost about 72 GFLOP per image" (300 RoIs, 2 FLOPs per multiply-add)."""
    with torch.device("meta"):
        head = fe.fast_rcnn.FastRCNNHead(512, 20, roi_output_size=7, representation_size=4096)
    assert (head.fc6.in_features, head.fc6.out_features, head.fc7.out_features) == (25088, 4096, 4096)
    gflop = 2 * 300 * (head.fc6.weight.numel() + head.fc7.weight.numel()) / 1e9
    assert round(gflop) == 72


def _conv_gflop(module, x):
    """GFLOP of the Conv2d layers of `module` on input `x` (meta device: shapes only), 2 FLOPs per
    multiply-add, counted from each layer's output shape and kernel."""
    flops = []

    def count(layer, _inputs, output):
        k = layer.kernel_size[0] * layer.kernel_size[1] * layer.in_channels // layer.groups
        flops.append(2 * output.numel() * k)

    handles = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        module(x)
    finally:
        for handle in handles:
            handle.remove()
    return sum(flops) / 1e9


def test_vgg16_fc6_fc7_are_a_sixth_of_the_network():
    """09_fast_rcnn: fc6 and fc7 on 300 RoIs "cost about 72 GFLOP per image, a sixth of the whole
    network's arithmetic" (VGG-16 on a 600 x 1000 image: conv layers, the RPN head, fc6/fc7 and the
    two outputs; about 72 of 451 GFLOP, as bench/RESULTS.md also counts)."""
    with torch.device("meta"):
        x = torch.empty(1, 3, 600, 1000)
        backbone = B.build_backbone("vgg16")
        features = backbone(x)
        conv = _conv_gflop(backbone, x) + _conv_gflop(RPN.RPNHead(512, 9, 512), features)
        head = fe.fast_rcnn.FastRCNNHead(512, 20, roi_output_size=7, representation_size=4096)
    fc67 = 2 * 300 * (head.fc6.weight.numel() + head.fc7.weight.numel()) / 1e9
    outputs = 2 * 300 * (head.cls_score.weight.numel() + head.bbox_pred.weight.numel()) / 1e9
    share = fc67 / (conv + fc67 + outputs)
    assert 1 / 7 < share < 1 / 5, share


def test_truncated_svd_of_vgg16_fc6_fc7_cuts_72_to_19_gflop():
    """09_fast_rcnn: "Fast R-CNN keeps t = 1024 for fc6 and t = 256 for fc7 (about 19 GFLOP instead of
    72)" on 300 RoIs: t(u + v) weights instead of u·v."""
    with torch.device("meta"):
        head = fe.fast_rcnn.FastRCNNHead(512, 20, roi_output_size=7, representation_size=4096)
        head.compress(1024, 256)
    weights = sum(p.numel() for layer in (head.fc6, head.fc7) for p in layer.parameters() if p.dim() == 2)
    assert weights == 1024 * (25088 + 4096) + 256 * (4096 + 4096)
    assert round(2 * 300 * weights / 1e9) == 19
