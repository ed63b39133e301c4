"""Tests for frcnn_edu.rpn: the head, anchor targets (Sec. 3.1.2), eq. 1, the proposal layer.

Most cases are built by hand so that every anchor's label is known in advance. The anchor-order
test (jwyang/fpn.pytorch #6, docs/references.md) plants one high score and checks that exactly that
anchor's box comes out on top.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from frcnn_edu import boxes as box_ops
from frcnn_edu.anchors import AnchorGenerator, flatten_head_output, inside_image
from frcnn_edu.config import FasterRCNNConfig
from frcnn_edu.rpn import (
    RegionProposalNetwork,
    RPNHead,
    assign_anchor_targets,
    generate_proposals,
    objectness_logit,
    rpn_loss,
    sample_anchors,
)

# One intra-op thread for the whole module (tests/conftest.py says why).
pytestmark = pytest.mark.usefixtures("one_thread")


def T(rows):
    return torch.tensor(rows, dtype=torch.float32)


def labels_of(anchors, gt, image_size=(100, 100), **kwargs):
    kwargs.setdefault("sample", False)
    labels, matched = assign_anchor_targets(T(anchors), T(gt).reshape(-1, 4), image_size, **kwargs)
    return labels.tolist(), matched


# ----------------------------------------------------------------------------------------------
# RPNHead (Sec. 3.1)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("objectness,scores", [("softmax", 2), ("sigmoid", 1)])
def test_head_output_shapes(objectness, scores):
    head = RPNHead(16, num_anchors=9, mid_channels=8, objectness=objectness)
    cls, reg = head(torch.randn(2, 16, 5, 7))
    assert cls.shape == (2, scores * 9, 5, 7)
    assert reg.shape == (2, 4 * 9, 5, 7)
    assert head.scores_per_anchor == scores


def test_head_rejects_unknown_objectness():
    with pytest.raises(ValueError, match="objectness"):
        RPNHead(16, objectness="softmax2")


def test_head_parameter_counts_match_the_paper():
    """Sec. 3.1: 512 x (4 + 2) x 9 = 2.8e4 output-layer weights; with the 3x3 window 2.4e6."""
    head = RPNHead(512, num_anchors=9, mid_channels=512)
    output_weights = head.cls.weight.numel() + head.reg.weight.numel()
    assert output_weights == 512 * (4 + 2) * 9 == 27_648
    assert round(output_weights, -3) == 28_000                       # "2.8 x 10^4"
    output_with_bias = output_weights + head.cls.bias.numel() + head.reg.bias.numel()
    assert output_with_bias == 27_648 + 54
    total_weights = head.conv.weight.numel() + output_weights
    assert total_weights == 3 * 3 * 512 * 512 + 27_648 == 2_386_944
    assert round(total_weights / 1e6, 1) == 2.4                      # "2.4 x 10^6"
    total_params = sum(p.numel() for p in head.parameters())
    assert total_params == 2_386_944 + 512 + 18 + 36 == 2_387_510


def test_head_init_std():
    """New layers: zero-mean Gaussian with std 0.01, biases 0 (Sec. 3.1.3)."""
    torch.manual_seed(0)
    head = RPNHead(256, num_anchors=9, mid_channels=256)
    for layer in (head.conv, head.cls, head.reg):
        w = layer.weight.detach()
        assert abs(w.std().item() - 0.01) < 0.001
        assert abs(w.mean().item()) < 0.001
        assert torch.count_nonzero(layer.bias) == 0


def test_head_one_by_one_map():
    """A feature map smaller than the 3x3 window still gives one output per position."""
    head = RPNHead(8, num_anchors=3, mid_channels=4)
    cls, reg = head(torch.randn(1, 8, 1, 1))
    assert cls.shape == (1, 6, 1, 1) and reg.shape == (1, 12, 1, 1)


# ----------------------------------------------------------------------------------------------
# assign_anchor_targets (Sec. 3.1.2) on hand-built anchors
# ----------------------------------------------------------------------------------------------
GT = [0, 0, 10, 10]        # area 100: an anchor (0, 0, 10, h) inside it has IoU h / 10


def test_iou_rules_positive_negative_ignored():
    anchors = [
        [0, 0, 10, 10],    # IoU 1.0   best -> positive
        [0, 0, 10, 8],     # IoU 0.8   > 0.7 -> positive (rule 3)
        [0, 0, 10, 7],     # IoU 0.7   not > 0.7, not the best -> ignored
        [0, 0, 10, 5],     # IoU 0.5   in between -> ignored
        [0, 0, 10, 3],     # IoU 0.3   not < 0.3 -> ignored
        [0, 0, 10, 2],     # IoU 0.2   -> negative
        [50, 50, 60, 60],  # IoU 0     -> negative
    ]
    iou = box_ops.box_iou(T(anchors), T([GT]))[:, 0]
    assert iou[2] == torch.tensor(0.7) and iou[4] == torch.tensor(0.3)   # exactly at the thresholds
    labels, _ = labels_of(anchors, [GT])
    assert labels == [1, 1, -1, -1, -1, 0, 0]


def test_iou_exactly_threshold_is_positive_only_when_best():
    """0.7 fails the strict rule 3 (paper: > 0.7), but rule 4 still picks it as the best."""
    labels, _ = labels_of([[0, 0, 10, 7], [0, 0, 10, 6]], [GT])
    assert labels == [1, -1]


def test_best_anchor_is_positive_even_at_low_iou():
    labels, _ = labels_of([[0, 0, 10, 4], [0, 0, 10, 3.5], [0, 0, 10, 2], [60, 60, 70, 70]], [GT])
    assert labels == [1, -1, 0, 0]                                    # best IoU only 0.4


def test_ties_for_best_iou_are_all_positive():
    anchors = [[0, 0, 10, 5], [0, 5, 10, 10], [0, 0, 5, 10], [0, 0, 10, 4]]   # 0.5, 0.5, 0.5, 0.4
    labels, _ = labels_of(anchors, [GT])
    assert labels == [1, 1, 1, -1]


def test_best_anchor_of_each_gt_is_positive_even_if_it_matches_another_gt_better():
    gt = [[0, 0, 10, 10], [0, 0, 10, 4]]
    anchors = [[0, 0, 10, 5],    # IoU 0.5 with gt0, 0.8 with gt1: positive (rule 3), matched to gt1
               [0, 0, 10, 6],    # 0.667 with gt1, only 0.6 with gt0, but gt0's best: positive (rule 4)
               [0, 0, 10, 1]]    # 0.1, 0.25 -> negative
    labels, matched = labels_of(anchors, gt)
    assert labels == [1, 1, 0]
    # matched boxes: each anchor's highest-IoU ground truth box, not the box that made it positive
    assert torch.equal(matched, T([gt[1], gt[1], gt[1]]))


def test_matched_boxes_are_highest_iou_gt():
    gt = [[0, 0, 10, 10], [40, 40, 60, 60], [0, 0, 12, 12]]
    anchors = [[0, 0, 10, 10], [41, 41, 60, 60], [0, 0, 12, 11], [80, 80, 90, 90]]
    labels, matched = labels_of(anchors, gt)
    assert torch.equal(matched[:3], T([gt[0], gt[1], gt[2]]))
    assert labels[:3] == [1, 1, 1] and labels[3] == 0


def test_cross_boundary_anchors_ignored_even_with_high_iou():
    gt = [[0, 0, 10, 10]]
    anchors = [[-0.5, 0, 9.5, 10],   # IoU 0.905 but crosses the left border -> ignored
               [0, 0, 10, 9],        # IoU 0.9, inside -> positive
               [12, 12, 20.5, 19],   # crosses the right border (W = 20), IoU 0 -> ignored
               [12, 12, 19, 19]]     # inside, IoU 0 -> negative
    labels, _ = labels_of(anchors, gt, image_size=(20, 20))
    assert labels == [-1, 1, -1, 0]
    # allowed_border widens the rule: half a pixel of slack brings both back
    labels, _ = labels_of(anchors, gt, image_size=(20, 20), allowed_border=0.5)
    assert labels == [1, 1, 0, 0]
    labels, _ = labels_of(anchors, gt, image_size=(20, 20), allowed_border=float("inf"))
    assert labels == [1, 1, 0, 0]


def test_outside_anchor_cannot_be_the_best_anchor():
    """The best-anchor rule counts inside anchors only: an outside anchor that matches a box
    perfectly stays ignored and the best *inside* anchor becomes positive."""
    labels, _ = labels_of([[-2, 0, 8, 10], [0, 0, 10, 4]], [[-2, 0, 8, 10]], image_size=(20, 20))
    assert labels == [-1, 1]


def test_gt_overlapping_no_inside_anchor_makes_no_positive():
    """A box whose best inside IoU is 0 must not turn every zero-IoU anchor positive."""
    gt = [[0, 0, 10, 10]]
    anchors = [[-1, -1, 9, 9], [50, 50, 60, 60], [70, 70, 80, 80]]
    labels, _ = labels_of(anchors, gt)
    assert labels == [-1, 0, 0]


def test_no_gt_boxes_only_negatives_and_ignored():
    anchors = T([[0, 0, 10, 10], [-5, 0, 5, 10], [90, 90, 100, 100], [90, 90, 101, 100]])
    labels, matched = assign_anchor_targets(anchors, torch.zeros(0, 4), (100, 100), sample=False)
    assert labels.tolist() == [0, -1, 0, -1]
    assert labels.dtype == torch.int64
    assert torch.equal(matched, anchors)


def _reference_labels(iou, inside, num_gt, pos_iou=0.7, neg_iou=0.3):
    """The rules of Sec. 3.1.2 written out anchor by anchor, on the same IoU matrix (lists)."""
    num_anchors = len(iou)
    best_inside = [max([iou[i][g] for i in range(num_anchors) if inside[i]], default=0.0)
                   for g in range(num_gt)]
    labels = []
    for i in range(num_anchors):
        if not inside[i]:
            labels.append(-1)
            continue
        row = iou[i]
        best = max(row, default=0.0)
        is_best = any(row[g] == best_inside[g] and best_inside[g] > 0 for g in range(num_gt))
        if best > pos_iou or is_best:
            labels.append(1)
        elif best < neg_iou:
            labels.append(0)
        else:
            labels.append(-1)
    return labels


@st.composite
def grid_boxes(draw, n_min, n_max):
    n = draw(st.integers(n_min, n_max))
    rows = []
    for _ in range(n):
        x1, y1 = draw(st.integers(-4, 36)), draw(st.integers(-4, 36))
        w, h = draw(st.integers(1, 24)), draw(st.integers(1, 24))
        rows.append([x1, y1, x1 + w, y1 + h])
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


@settings(deadline=None, max_examples=60)
@given(anchors=grid_boxes(1, 30), gt=grid_boxes(0, 4))
def test_labels_match_an_anchor_by_anchor_reference(anchors, gt):
    labels, matched = assign_anchor_targets(anchors, gt, (32, 32), sample=False)
    inside = inside_image(anchors, (32, 32)).tolist()
    iou = box_ops.box_iou(anchors, gt).tolist() if len(gt) else [[] for _ in range(len(anchors))]
    assert labels.tolist() == _reference_labels(iou, inside, len(gt))
    if len(gt):
        # the matched box of every inside anchor is one of its highest-IoU boxes
        for i in range(len(anchors)):
            if inside[i]:
                same = [j for j in range(len(gt)) if torch.equal(gt[j], matched[i])]
                assert any(iou[i][j] == max(iou[i]) for j in same)
    else:
        assert torch.equal(matched, anchors)


# ----------------------------------------------------------------------------------------------
# Sampling the 256-anchor mini-batch (Sec. 3.1.3)
# ----------------------------------------------------------------------------------------------
def _pos_neg_anchors(num_pos, num_neg):
    """num_pos anchors equal to the gt box (all tied best -> positive) and num_neg far away."""
    pos = T([[10, 10, 30, 30]]).repeat(num_pos, 1)
    neg = T([[60, 60, 80, 80]]).repeat(num_neg, 1)
    return torch.cat([pos, neg]), T([[10, 10, 30, 30]])


def test_sampling_caps_positives_and_fills_with_negatives():
    anchors, gt = _pos_neg_anchors(300, 500)
    g = torch.Generator().manual_seed(0)
    labels, _ = assign_anchor_targets(anchors, gt, (100, 100), generator=g)
    assert (labels == 1).sum() == 128 and (labels == 0).sum() == 128
    assert (labels[:300] != 0).all() and (labels[300:] != 1).all()    # no label changes sides


def test_sampling_pads_few_positives_with_negatives():
    anchors, gt = _pos_neg_anchors(10, 500)
    labels, _ = assign_anchor_targets(anchors, gt, (100, 100), generator=torch.Generator().manual_seed(0))
    assert (labels == 1).sum() == 10 and (labels == 0).sum() == 246
    assert (labels[:10] == 1).all()


def test_sampling_keeps_everything_when_fewer_than_batch():
    anchors, gt = _pos_neg_anchors(10, 20)
    labels, _ = assign_anchor_targets(anchors, gt, (100, 100))
    assert labels.tolist() == [1] * 10 + [0] * 20


def test_sampling_other_batch_sizes_and_fractions():
    labels = torch.tensor([1] * 100 + [0] * 100 + [-1] * 50)
    out = sample_anchors(labels, batch_size=64, positive_fraction=0.25,
                         generator=torch.Generator().manual_seed(1))
    assert (out == 1).sum() == 16 and (out == 0).sum() == 48
    assert ((out == 1) <= (labels == 1)).all() and ((out == 0) <= (labels == 0)).all()
    assert (out[200:] == -1).all()


def test_sampling_is_deterministic_with_a_seeded_generator():
    anchors, gt = _pos_neg_anchors(300, 500)
    a = assign_anchor_targets(anchors, gt, (100, 100), generator=torch.Generator().manual_seed(7))[0]
    b = assign_anchor_targets(anchors, gt, (100, 100), generator=torch.Generator().manual_seed(7))[0]
    c = assign_anchor_targets(anchors, gt, (100, 100), generator=torch.Generator().manual_seed(8))[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sampling_without_gt_gives_256_negatives():
    anchors = T([[0, 0, 10, 10]]).repeat(1000, 1)
    labels, _ = assign_anchor_targets(anchors, torch.zeros(0, 4), (100, 100))
    assert (labels == 0).sum() == 256 and (labels == 1).sum() == 0


# ----------------------------------------------------------------------------------------------
# rpn_loss (eq. 1), by hand
# ----------------------------------------------------------------------------------------------
def smooth_l1(x, beta=1.0):
    return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta


LOGITS = [[0.2, 1.5], [1.0, -0.5], [3.0, -3.0], [0.0, 0.7]]     # (A, 2): background, object
LABELS = [1, 0, -1, 1]
DELTAS = [[0.1, -0.2, 0.3, 2.0], [5.0, 5.0, 5.0, 5.0], [9.0, 9.0, 9.0, 9.0], [0.0, 0.5, -1.5, 0.2]]
TARGETS = [[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]]


def _hand_loss(objectness):
    cls = 0.0
    for logits, label in zip(LOGITS, LABELS):
        if label < 0:
            continue
        if objectness == "softmax":
            log_norm = math.log(sum(math.exp(v) for v in logits))
            cls += log_norm - logits[label]
        else:   # one logit per anchor: the object logit
            p = 1 / (1 + math.exp(-logits[1]))
            cls += -math.log(p) if label == 1 else -math.log(1 - p)
    reg = sum(smooth_l1(d - t) for d_row, t_row, label in zip(DELTAS, TARGETS, LABELS)
              if label == 1 for d, t in zip(d_row, t_row))
    return cls, reg


def _loss_inputs(objectness):
    logits = T(LOGITS)[None]
    if objectness == "sigmoid":
        logits = logits[..., 1:]
    return logits, T(DELTAS)[None], torch.tensor([LABELS]), T(TARGETS)[None]


@pytest.mark.parametrize("objectness", ["softmax", "sigmoid"])
def test_rpn_loss_paper_normalization_by_hand(objectness):
    cls, reg = _hand_loss(objectness)
    loss_cls, loss_box = rpn_loss(*_loss_inputs(objectness), num_locations=40, lambda_=10.0,
                                  normalization="paper", batch_size_per_image=256)
    assert loss_cls.item() == pytest.approx(cls / 256, rel=1e-5)
    assert loss_box.item() == pytest.approx(10.0 * reg / 40, rel=1e-5)


@pytest.mark.parametrize("objectness", ["softmax", "sigmoid"])
def test_rpn_loss_sampled_normalization_by_hand(objectness):
    cls, reg = _hand_loss(objectness)
    loss_cls, loss_box = rpn_loss(*_loss_inputs(objectness), num_locations=40, lambda_=1.0,
                                  normalization="sampled")
    assert loss_cls.item() == pytest.approx(cls / 3, rel=1e-5)          # 3 sampled anchors
    assert loss_box.item() == pytest.approx(reg / 3, rel=1e-5)


def test_rpn_loss_beta():
    logits, deltas, labels, targets = _loss_inputs("softmax")
    _, loss_box = rpn_loss(logits, deltas, labels, targets, num_locations=1, lambda_=1.0, beta=1 / 9)
    reg = sum(smooth_l1(d - t, 1 / 9) for d_row, t_row, label in zip(DELTAS, TARGETS, LABELS)
              if label == 1 for d, t in zip(d_row, t_row))
    assert loss_box.item() == pytest.approx(reg, rel=1e-5)


def test_rpn_loss_ignored_and_negative_anchors():
    """Only positives reach L_reg; ignored anchors (-1) contribute nothing at all."""
    logits, deltas, labels, targets = _loss_inputs("softmax")
    logits.requires_grad_(True)
    deltas.requires_grad_(True)
    loss_cls, loss_box = rpn_loss(logits, deltas, labels, targets, num_locations=40)
    (loss_cls + loss_box).backward()
    assert torch.count_nonzero(logits.grad[0, 2]) == 0                # ignored anchor
    assert torch.count_nonzero(deltas.grad[0, 1:3]) == 0              # negative and ignored
    assert torch.count_nonzero(deltas.grad[0, 0]) == 4                # positives do regress
    # changing an ignored anchor's outputs changes nothing
    logits2, deltas2 = logits.detach().clone(), deltas.detach().clone()
    logits2[0, 2] = torch.tensor([-7.0, 11.0])
    deltas2[0, 1:3] = 100.0
    again = rpn_loss(logits2, deltas2, labels, targets, num_locations=40)
    assert again[0].item() == pytest.approx(loss_cls.item()) and again[1].item() == pytest.approx(loss_box.item())


@pytest.mark.parametrize("normalization", ["paper", "sampled"])
def test_rpn_loss_no_positives(normalization):
    logits, deltas, _, targets = _loss_inputs("softmax")
    labels = torch.tensor([[0, 0, -1, -1]])
    loss_cls, loss_box = rpn_loss(logits, deltas, labels, targets, num_locations=40,
                                  normalization=normalization)
    assert loss_box.item() == 0.0
    assert torch.isfinite(loss_cls) and loss_cls.item() > 0
    labels = torch.full((1, 4), -1)                                   # nothing sampled at all
    loss_cls, loss_box = rpn_loss(logits, deltas, labels, targets, num_locations=40,
                                  normalization=normalization)
    assert loss_cls.item() == 0.0 and loss_box.item() == 0.0


def test_rpn_loss_unknown_normalization():
    with pytest.raises(ValueError, match="normalization"):
        rpn_loss(*_loss_inputs("softmax"), num_locations=4, normalization="mean")


# ----------------------------------------------------------------------------------------------
# The proposal layer and THE ORDER TEST (jwyang/fpn.pytorch #6, docs/references.md)
# ----------------------------------------------------------------------------------------------
class StubHead(nn.Module):
    """Stands in for RPNHead: returns fixed raw maps (N, 2k|k, H, W) and (N, 4k, H, W)."""

    def __init__(self, scores, deltas, scores_per_anchor):
        super().__init__()
        self.scores, self.deltas, self.scores_per_anchor = scores, deltas, scores_per_anchor

    def forward(self, features):
        return self.scores, self.deltas


H, W, STRIDE = 5, 7, 16
SIZES, RATIOS = (16, 32), (0.5, 1.0, 2.0)
K = len(SIZES) * len(RATIOS)


def _rpn(in_channels, stride=STRIDE, **settings):
    """A RegionProposalNetwork whose config changes `settings` (FasterRCNNConfig field names);
    no minimum proposal size unless asked for."""
    settings.setdefault("rpn_min_size", 0.0)
    return RegionProposalNetwork(in_channels, stride, FasterRCNNConfig(**settings))


def _stub_rpn(scores, deltas, spa, **settings):
    rpn = _rpn(4, anchor_sizes=SIZES, anchor_ratios=RATIOS, rpn_mid_channels=4,
               rpn_pre_nms_top_n_train=1000, rpn_pre_nms_top_n_test=1000,
               rpn_post_nms_top_n_train=1000, rpn_post_nms_top_n_test=1000, **settings)
    rpn.head = StubHead(scores, deltas, spa)
    return rpn.eval()


@pytest.mark.parametrize("objectness", ["softmax", "sigmoid"])
@pytest.mark.parametrize("y,x,a", [(2, 4, 4), (0, 0, 0), (4, 6, 5), (1, 5, 2), (3, 0, 1)])
def test_planted_score_gives_that_anchors_box(objectness, y, x, a):
    spa = 2 if objectness == "softmax" else 1
    scores = torch.zeros(1, spa * K, H, W)
    scores[0, a * spa + spa - 1, y, x] = 10.0          # channel a*2+1 (object) or a
    deltas = torch.zeros(1, 4 * K, H, W)
    planted = torch.tensor([0.25, -0.125, 0.1, -0.2])
    deltas[0, a * 4: a * 4 + 4, y, x] = planted         # this anchor's own (tx, ty, tw, th)
    rpn = _stub_rpn(scores, deltas, spa)
    image_size = (H * STRIDE, W * STRIDE)
    proposals, proposal_scores, losses = rpn(torch.zeros(1, 4, H, W), [image_size])
    assert losses == {}

    anchors = AnchorGenerator(SIZES, RATIOS, STRIDE)((H, W))
    index = (y * W + x) * K + a
    expected = box_ops.clip_boxes(box_ops.decode(planted, anchors[index]), image_size)
    torch.testing.assert_close(proposals[0][0], expected)
    assert proposal_scores[0][0].item() == pytest.approx(torch.sigmoid(torch.tensor(10.0)).item())
    assert (proposal_scores[0][1:] <= 0.5 + 1e-6).all()


def test_order_test_can_tell_layouts_apart():
    """Negative control: reading the same map in Caffe's layout (channel c*k + a instead of
    a*2 + c) puts the planted score on another anchor, so the test above would catch it."""
    y, x, a = 2, 4, 4
    scores = torch.zeros(1, 2 * K, H, W)
    scores[0, a * 2 + 1, y, x] = 10.0
    right = objectness_logit(flatten_head_output(scores, 2))[0].argmax().item()
    wrong = objectness_logit(scores.view(1, 2, K, H, W).permute(0, 3, 4, 2, 1).reshape(1, -1, 2))
    assert right == (y * W + x) * K + a
    assert wrong[0].argmax().item() != right


def test_flatten_and_generate_proposals_directly():
    """The same order check without the module: flatten + objectness_logit + generate_proposals."""
    y, x, a = 3, 2, 5
    scores = torch.zeros(2, 2 * K, H, W)
    scores[1, a * 2 + 1, y, x] = 4.0
    scores[1, a * 2, y, x] = -4.0
    deltas = torch.zeros(2, 4 * K, H, W)
    anchors = AnchorGenerator(SIZES, RATIOS, STRIDE)((H, W))
    flat_scores = objectness_logit(flatten_head_output(scores, 2))
    flat_deltas = flatten_head_output(deltas, 4)
    assert flat_scores.shape == (2, H * W * K)
    sizes = [(H * STRIDE, W * STRIDE)] * 2
    boxes, probs = generate_proposals(flat_scores, flat_deltas, anchors, sizes,
                                      pre_nms_top_n=50, post_nms_top_n=10)
    index = (y * W + x) * K + a
    torch.testing.assert_close(boxes[1][0], box_ops.clip_boxes(anchors[index], sizes[1]))
    assert probs[1][0].item() == pytest.approx(torch.sigmoid(torch.tensor(8.0)).item())


def _grid_anchors_inside(size=16):
    """Square anchors tiling the image exactly: no clipping and no overlap (IoU 0)."""
    return AnchorGenerator((size,), (1.0,), STRIDE)((H, W))


def test_pre_and_post_nms_top_n():
    anchors = _grid_anchors_inside()
    a = anchors.shape[0]
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, a, generator=g)
    deltas = torch.zeros(1, a, 4)
    size = [(H * STRIDE, W * STRIDE)]
    boxes, _ = generate_proposals(logits, deltas, anchors, size, pre_nms_top_n=7, post_nms_top_n=100)
    top7 = logits[0].topk(7).indices
    assert boxes[0].shape == (7, 4)                                   # nothing overlaps: NMS keeps all
    torch.testing.assert_close(boxes[0], anchors[top7])               # exactly the 7 best, in order
    boxes, scores = generate_proposals(logits, deltas, anchors, size, pre_nms_top_n=20, post_nms_top_n=3)
    torch.testing.assert_close(boxes[0], anchors[top7[:3]])
    assert scores[0].shape == (3,)
    boxes, _ = generate_proposals(logits, deltas, anchors, size, pre_nms_top_n=10_000, post_nms_top_n=10_000)
    assert boxes[0].shape == (a, 4)                                   # pre_nms_top_n > A is fine


def test_images_of_a_batch_in_parallel_threads_give_their_own_proposals(monkeypatch):
    """On the CPU the per-image NMS of a batch runs in threads (frcnn_edu.parallel): each image's
    proposals must be exactly what it gets alone, in the batch's order."""
    import frcnn_edu.parallel as parallel

    anchors = AnchorGenerator(SIZES, RATIOS, STRIDE)((H, W))
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, anchors.shape[0], generator=g)
    deltas = torch.randn(4, anchors.shape[0], 4, generator=g) * 0.2
    sizes = [(H * STRIDE, W * STRIDE), (H * STRIDE - 30, W * STRIDE), (40, 50), (H * STRIDE, 70)]
    calls = []
    real_map = parallel.parallel_map
    monkeypatch.setattr("frcnn_edu.rpn.parallel_map", lambda *a, **k: calls.append(1) or real_map(*a, **k))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        boxes, scores = generate_proposals(logits, deltas, anchors, sizes, pre_nms_top_n=300,
                                           post_nms_top_n=50, min_sizes=[0, 4, 8, 0])
    finally:
        torch.set_num_threads(threads)
    assert calls and parallel.num_workers("cpu") == threads
    for i in range(4):
        alone, alone_scores = generate_proposals(logits[i:i + 1], deltas[i:i + 1], anchors, sizes[i:i + 1],
                                                 pre_nms_top_n=300, post_nms_top_n=50,
                                                 min_sizes=[[0, 4, 8, 0][i]])
        assert torch.equal(boxes[i], alone[0]) and torch.equal(scores[i], alone_scores[0])


def test_parallel_map_keeps_order_and_the_callers_modes():
    import threading

    from frcnn_edu.parallel import parallel_map

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert parallel_map(lambda x: x * x, range(7), "cpu") == [0, 1, 4, 9, 16, 25, 36]
        with torch.no_grad():
            assert parallel_map(lambda _: torch.is_grad_enabled(), range(4), "cpu") == [False] * 4
        with torch.inference_mode():
            assert parallel_map(lambda _: torch.is_inference_mode_enabled(), range(4), "cpu") == [True] * 4
        assert parallel_map(lambda _: torch.is_grad_enabled(), range(4), "cpu") == [True] * 4
        def names(n, **k):
            return set(parallel_map(lambda _: threading.current_thread().name, range(n), "cpu", **k))

        assert names(3, min_items=4) == {threading.current_thread().name}   # too few: inline
        assert all(name.startswith("frcnn_edu") for name in names(8))       # the pool's threads
        torch.set_num_threads(1)
        assert names(8) == {threading.current_thread().name}                # one thread: inline
    finally:
        torch.set_num_threads(threads)


def test_min_size_filter():
    anchors = AnchorGenerator((8, 32), (1.0,), STRIDE)((H, W))
    logits = torch.randn(2, anchors.shape[0], generator=torch.Generator().manual_seed(1))
    deltas = torch.zeros(2, anchors.shape[0], 4)
    size = [(H * STRIDE, W * STRIDE)] * 2
    boxes, _ = generate_proposals(logits, deltas, anchors, size, pre_nms_top_n=1000,
                                  post_nms_top_n=1000, nms_iou=1.0, min_sizes=[10.0, 0.0])
    wh0 = boxes[0][:, 2:] - boxes[0][:, :2]
    assert (wh0 >= 10).all()
    assert boxes[0].shape[0] == H * W                                 # only the 32 px anchors
    assert boxes[1].shape[0] == 2 * H * W                             # image 1 keeps the 8 px ones
    assert ((boxes[1][:, 2] - boxes[1][:, 0]) == 8).sum() == H * W


def test_nms_is_applied_at_0_7():
    # concentric squares of 16, 17, 18 px: IoU 0.89 / 0.79 -> one survives per position
    anchors = AnchorGenerator((16, 17, 18), (1.0,), STRIDE)((H, W))
    logits = torch.randn(1, anchors.shape[0], generator=torch.Generator().manual_seed(2))
    deltas = torch.zeros(1, anchors.shape[0], 4)
    size = [(200, 200)]
    boxes, scores = generate_proposals(logits, deltas, anchors, size, pre_nms_top_n=1000, post_nms_top_n=1000)
    iou = box_ops.box_iou(boxes[0], boxes[0])
    iou.fill_diagonal_(0)
    assert iou.max() <= 0.7
    assert boxes[0].shape[0] == H * W                                 # one per position
    boxes_no_nms, _ = generate_proposals(logits, deltas, anchors, size, pre_nms_top_n=1000,
                                         post_nms_top_n=1000, nms_iou=1.0)
    assert boxes_no_nms[0].shape[0] == 3 * H * W


def test_proposals_clipped_to_each_images_own_size():
    anchors = AnchorGenerator((32, 64), (0.5, 1.0, 2.0), STRIDE)((H, W))
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, anchors.shape[0], generator=g)
    deltas = 0.3 * torch.randn(2, anchors.shape[0], 4, generator=g)
    sizes = [(30, 50), (H * STRIDE, W * STRIDE)]
    boxes, scores = generate_proposals(logits, deltas, anchors, sizes, pre_nms_top_n=500, post_nms_top_n=200)
    for b, (h, w) in enumerate(sizes):
        assert boxes[b].shape[0] > 0
        assert (boxes[b] >= 0).all()
        assert (boxes[b][:, 0::2] <= w).all() and (boxes[b][:, 1::2] <= h).all()
        assert (scores[b] >= 0).all() and (scores[b] <= 1).all()
        assert (scores[b][:-1] >= scores[b][1:]).all()                # sorted, best first
        # anchors entirely outside this image clip to empty boxes, which are not proposals
        assert ((boxes[b][:, 2] > boxes[b][:, 0]) & (boxes[b][:, 3] > boxes[b][:, 1])).all()
    assert boxes[1][:, 2].max() > 50 and boxes[1][:, 3].max() > 30    # image 1 is not clipped to image 0


# ----------------------------------------------------------------------------------------------
# RegionProposalNetwork, the whole module
# ----------------------------------------------------------------------------------------------
def _small_rpn(**settings):
    torch.manual_seed(0)
    return _rpn(8, anchor_sizes=(16, 32), rpn_mid_channels=16, rpn_pre_nms_top_n_train=200,
                rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_train=50, rpn_post_nms_top_n_test=20,
                **settings)


@pytest.mark.parametrize("objectness", ["softmax", "sigmoid"])
@pytest.mark.parametrize("normalization", ["paper", "sampled"])
def test_rpn_training_returns_finite_losses_and_proposals(objectness, normalization):
    rpn = _small_rpn(rpn_objectness=objectness, rpn_loss_normalization=normalization).train()
    features = torch.randn(2, 8, H, W, requires_grad=True)
    targets = [{"boxes": T([[10, 10, 40, 30], [50, 20, 90, 70]])}, {"boxes": T([[0, 0, 20, 20]])}]
    sizes = [(H * STRIDE, W * STRIDE), (60, 70)]
    proposals, scores, losses = rpn(features, sizes, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    assert losses["loss_rpn_box"] > 0
    assert len(proposals) == 2 and all(p.shape[1] == 4 and p.shape[0] <= 50 for p in proposals)
    assert not proposals[0].requires_grad                             # approximate joint training
    sum(losses.values()).backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()
    assert rpn.head.conv.weight.grad.abs().sum() > 0


def test_rpn_eval_returns_proposals_only():
    rpn = _small_rpn().eval()
    proposals, scores, losses = rpn(torch.randn(1, 8, H, W), [(H * STRIDE, W * STRIDE)])
    assert losses == {}
    assert proposals[0].shape[0] <= 20 and scores[0].shape == proposals[0].shape[:1]


def test_rpn_training_without_targets_is_an_error():
    with pytest.raises(ValueError, match="targets"):
        _small_rpn().train()(torch.randn(1, 8, H, W), [(80, 112)])


def test_rpn_one_by_one_feature_map():
    rpn = _small_rpn().train()
    proposals, _, losses = rpn(torch.randn(1, 8, 1, 1), [(16, 16)], [{"boxes": T([[2, 2, 14, 14]])}])
    assert all(torch.isfinite(v) for v in losses.values())
    rpn.eval()
    proposals, scores, _ = rpn(torch.randn(1, 8, 1, 1), [(16, 16)])
    assert proposals[0].shape[1] == 4 and (proposals[0] <= 16).all()


def test_rpn_image_smaller_than_stride():
    """An 8x8 image: every anchor crosses the border, so nothing is sampled, and that is fine."""
    rpn = _small_rpn().train()
    features = torch.randn(1, 8, 1, 1, requires_grad=True)
    proposals, _, losses = rpn(features, [(8, 8)], [{"boxes": T([[1, 1, 7, 7]])}])
    assert losses["loss_rpn_cls"].item() == 0.0 and losses["loss_rpn_box"].item() == 0.0
    sum(losses.values()).backward()
    assert (proposals[0][:, 2:] <= 8).all()
    rpn_inf = _small_rpn(rpn_allowed_border=float("inf")).train()
    _, _, losses = rpn_inf(torch.randn(1, 8, 1, 1), [(8, 8)], [{"boxes": T([[1, 1, 7, 7]])}])
    assert losses["loss_rpn_cls"] > 0 and losses["loss_rpn_box"] > 0


def test_rpn_empty_targets():
    rpn = _small_rpn().train()
    features = torch.randn(2, 8, H, W, requires_grad=True)
    targets = [{"boxes": torch.zeros(0, 4)}, {"boxes": T([[10, 10, 40, 40]])}]
    _, _, losses = rpn(features, [(80, 112)] * 2, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert torch.isfinite(features.grad).all()
    labels, regression = rpn.targets(rpn.anchor_generator((H, W)), targets, [(80, 112)] * 2)
    assert set(labels[0].tolist()) == {0, -1}                        # only negatives (and outside)
    assert torch.count_nonzero(regression[0]) == 0
    assert (labels[1] == 1).sum() > 0


def test_rpn_generator_makes_sampling_reproducible():
    """rpn.generator, not the global RNG, draws the 256-anchor mini-batch. The map is large
    enough (3,360 anchors, ~2,000 negatives inside) that sampling really happens."""
    rpn = _small_rpn()
    anchors = rpn.anchor_generator((20, 28))
    targets = [{"boxes": T([[10, 10, 40, 30]])}]
    size = [(20 * STRIDE, 28 * STRIDE)]

    def labels(seed, global_seed):
        torch.manual_seed(global_seed)
        rpn.generator = torch.Generator().manual_seed(seed)
        return rpn.targets(anchors, targets, size)[0]

    a, b, c = labels(5, global_seed=0), labels(5, global_seed=1), labels(6, global_seed=0)
    assert (a >= 0).sum() == 256 and (a == 1).sum() >= 1
    assert torch.equal(a, b)                       # same generator seed, other global seed
    assert not torch.equal(a, c)                   # another generator seed: another mini-batch


def test_paper_anchor_counts_through_the_rpn():
    """Sec. 3.3: a 600 x 1000 image through VGG-16 (Caffe rounding) gives a 38 x 63 map:
    2,394 positions (N_reg ~ 2,400) and 21,546 anchors (the paper's "about 20,000");
    8,044 of them lie inside the image (the paper reports "about 6,000" with its own anchors)."""
    rpn = _rpn(512, 16, rpn_mid_channels=8).eval()
    features = torch.randn(1, 512, 38, 63)
    scores_map, deltas_map = rpn.head(features)
    assert flatten_head_output(scores_map, 2).shape == (1, 21_546, 2)
    assert flatten_head_output(deltas_map, 4).shape == (1, 21_546, 4)
    anchors = rpn.anchor_generator((38, 63))
    assert anchors.shape == (21_546, 4) and 38 * 63 == 2_394
    labels, _ = assign_anchor_targets(anchors, torch.zeros(0, 4), (600, 1000), sample=False)
    assert (labels == 0).sum() == 8_044
    proposals, scores, _ = rpn(features, [(600, 1000)])
    assert proposals[0].shape[0] == 300                               # the paper's test-time N
    rpn.train()
    _, _, losses = rpn(features, [(600, 1000)], [{"boxes": T([[100, 100, 300, 250]])}])
    assert all(torch.isfinite(v) for v in losses.values())


def test_parallel_map_works_in_a_forked_child():
    """A child forked after the parent used the pool gets a pool of its own (not a dead one)."""
    import multiprocessing

    from frcnn_edu.parallel import parallel_map

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert parallel_map(lambda x: x + 1, range(4), "cpu") == [1, 2, 3, 4]   # the parent's pool
        with multiprocessing.get_context("fork").Pool(1) as pool:
            assert pool.apply_async(_double_in_threads, (5,)).get(timeout=15) == [0, 2, 4, 6, 8]
    finally:
        torch.set_num_threads(threads)


def _double_in_threads(n):
    from frcnn_edu.parallel import parallel_map

    torch.set_num_threads(2)
    return parallel_map(lambda x: 2 * x, range(n), "cpu")
