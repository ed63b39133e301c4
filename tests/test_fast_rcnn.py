"""Tests for frcnn_edu.fast_rcnn: RoI sampling, the detector head, its loss, post-processing."""

import math

import pytest
import torch

from frcnn_edu import boxes as box_ops
from frcnn_edu.fast_rcnn import FastRCNNHead, fast_rcnn_loss, postprocess_detections, sample_proposal_targets

WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def T(rows):
    return torch.tensor(rows, dtype=torch.float32)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _max_iou(rois, gt):
    return box_ops.box_iou(rois, gt).max(dim=1).values


def _proposals_with_iou(gt_box, ious, seed=0):
    """Boxes (x1, y1, x2, y1 + h) sharing gt_box's top edge, with IoU = h / gt height exactly-ish."""
    x1, y1, x2, y2 = gt_box
    h = torch.tensor(ious) * (y2 - y1)
    n = len(ious)
    return torch.stack([torch.full((n,), float(x1)), torch.full((n,), float(y1)),
                        torch.full((n,), float(x2)), y1 + h], dim=1)


# ----------------------------------------------------------------------------------------------
# sample_proposal_targets ([F] Sec. 2.3)
# ----------------------------------------------------------------------------------------------
def test_gt_boxes_are_appended_to_zero_proposals():
    gt, labels = T([[10, 10, 50, 60], [70, 20, 90, 90]]), torch.tensor([3, 1])
    rois, roi_labels, targets = sample_proposal_targets(torch.zeros(0, 4), gt, labels, generator=gen())
    assert rois.shape == (2, 4)
    order = rois[:, 0].argsort()
    assert torch.equal(rois[order], gt)
    assert roi_labels[order].tolist() == [3, 1]
    assert torch.count_nonzero(targets) == 0          # a gt box is its own perfect RoI


def test_at_most_25_percent_foreground_of_128():
    gt, labels = T([[20, 20, 80, 80]]), torch.tensor([2])
    fg = _proposals_with_iou([20, 20, 80, 80], [0.5 + 0.5 * i / 200 for i in range(200)])
    bg = _proposals_with_iou([20, 20, 80, 80], [0.1 + 0.35 * i / 200 for i in range(200)])
    rois, roi_labels, _ = sample_proposal_targets(torch.cat([fg, bg]), gt, labels, generator=gen())
    assert rois.shape == (128, 4)
    assert (roi_labels == 2).sum() == 32 and (roi_labels == 0).sum() == 96
    iou = _max_iou(rois, gt)
    assert (iou[roi_labels > 0] >= 0.5).all() and (iou[roi_labels == 0] < 0.5).all()
    # other batch sizes and fractions
    rois, roi_labels, _ = sample_proposal_targets(torch.cat([fg, bg]), gt, labels, batch_size=64,
                                                  positive_fraction=0.5, generator=gen())
    assert (roi_labels > 0).sum() == 32 and rois.shape[0] == 64


def test_few_foreground_all_kept_and_rest_background():
    gt, labels = T([[20, 20, 80, 80]]), torch.tensor([1])
    fg = _proposals_with_iou([20, 20, 80, 80], [0.6, 0.7, 0.8])
    bg = _proposals_with_iou([20, 20, 80, 80], [0.2 + 0.2 * i / 300 for i in range(300)])
    rois, roi_labels, _ = sample_proposal_targets(torch.cat([fg, bg]), gt, labels, generator=gen())
    assert (roi_labels == 1).sum() == 4                                # 3 proposals + the gt box
    assert (roi_labels == 0).sum() == 124


def test_background_prefers_0_1_to_0_5_then_falls_back_to_below_0_1():
    gt, labels = T([[20, 20, 80, 80]]), torch.tensor([1])
    fg = _proposals_with_iou([20, 20, 80, 80], [0.9] * 10)
    mid = _proposals_with_iou([20, 20, 80, 80], [0.15 + 0.3 * i / 50 for i in range(50)])
    low = T([[100, 100, 120, 120]]).repeat(200, 1) + torch.rand(200, 1, generator=gen(1))
    proposals = torch.cat([fg, mid, low])
    rois, roi_labels, _ = sample_proposal_targets(proposals, gt, labels, generator=gen())
    iou = _max_iou(rois, gt)
    bg = roi_labels == 0
    assert (roi_labels > 0).sum() == 11 and bg.sum() == 117
    assert ((iou >= 0.1) & (iou < 0.5) & bg).sum() == 50              # every one of [0.1, 0.5)
    assert ((iou < 0.1) & bg).sum() == 67                              # then the fallback
    # with enough RoIs in [0.1, 0.5), none below 0.1 is taken
    mid = _proposals_with_iou([20, 20, 80, 80], [0.12 + 0.3 * i / 300 for i in range(300)])
    rois, roi_labels, _ = sample_proposal_targets(torch.cat([fg, mid, low]), gt, labels, generator=gen())
    iou = _max_iou(rois, gt)
    assert (iou[roi_labels == 0] >= 0.1).all() and (roi_labels == 0).sum() == 117


def test_no_gt_boxes_gives_only_background():
    proposals = T([[0, 0, 10, 10], [5, 5, 30, 40], [50, 50, 60, 70]])
    rois, labels, targets = sample_proposal_targets(proposals, torch.zeros(0, 4),
                                                    torch.zeros(0, dtype=torch.int64), generator=gen())
    assert rois.shape == (3, 4) and labels.tolist() == [0, 0, 0] and labels.dtype == torch.int64
    assert targets.shape == (3, 4)
    many = T([[0, 0, 10, 10]]).repeat(300, 1)
    rois, labels, _ = sample_proposal_targets(many, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    assert rois.shape == (128, 4) and (labels == 0).all()


def test_regression_targets_use_one_box_coder_both_ways():
    """Targets = encode(matched gt, roi, (10, 10, 5, 5)); decode with the same weights recovers
    the gt box (py-faster-rcnn #365, docs/references.md: normalised in training but not at test time)."""
    gt = T([[20, 20, 80, 80], [100, 30, 140, 110]])
    labels = torch.tensor([1, 4])
    jitter = torch.randn(40, 4, generator=gen(2)) * 4
    proposals = torch.cat([gt[0] + jitter[:20], gt[1] + jitter[20:]])
    rois, roi_labels, targets = sample_proposal_targets(proposals, gt, labels, generator=gen())
    fg = roi_labels > 0
    assert fg.sum() > 10
    matched = gt[box_ops.box_iou(rois[fg], gt).argmax(dim=1)]
    assert torch.equal(roi_labels[fg], labels[box_ops.box_iou(rois[fg], gt).argmax(dim=1)])
    torch.testing.assert_close(targets[fg], box_ops.encode(matched, rois[fg], WEIGHTS))
    torch.testing.assert_close(targets[fg], box_ops.encode(matched, rois[fg]) * torch.tensor(WEIGHTS))
    torch.testing.assert_close(box_ops.decode(targets[fg], rois[fg], WEIGHTS), matched, atol=1e-4, rtol=0)


def test_sampling_is_deterministic_with_a_generator():
    gt, labels = T([[20, 20, 80, 80]]), torch.tensor([1])
    proposals = torch.rand(500, 2, generator=gen(3)) * 100
    proposals = torch.cat([proposals, proposals + 30], dim=1)
    a = sample_proposal_targets(proposals, gt, labels, generator=gen(9))
    b = sample_proposal_targets(proposals, gt, labels, generator=gen(9))
    c = sample_proposal_targets(proposals, gt, labels, generator=gen(10))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


# ----------------------------------------------------------------------------------------------
# FastRCNNHead
# ----------------------------------------------------------------------------------------------
def test_head_shapes_and_init():
    torch.manual_seed(0)
    head = FastRCNNHead(8, num_classes=3, roi_output_size=2, spatial_scale=1 / 16,
                        representation_size=16, dropout=0.0)
    features = torch.randn(2, 8, 6, 6)
    rois = T([[0, 0, 0, 40, 40], [1, 10, 20, 90, 80], [1, 0, 0, 96, 96]])
    logits, deltas = head(features, rois)
    assert logits.shape == (3, 4) and deltas.shape == (3, 16)
    empty_logits, empty_deltas = head(features, torch.zeros(0, 5))
    assert empty_logits.shape == (0, 4) and empty_deltas.shape == (0, 16)
    assert head.fc6.in_features == 8 * 2 * 2
    assert torch.count_nonzero(head.cls_score.bias) == 0 and torch.count_nonzero(head.bbox_pred.bias) == 0
    big = FastRCNNHead(8, num_classes=20, roi_output_size=2, representation_size=512)
    assert abs(big.cls_score.weight.std().item() - 0.01) < 0.002       # [F]: std 0.01
    assert abs(big.bbox_pred.weight.std().item() - 0.001) < 0.0002     # and 0.001


def test_head_paper_sizes():
    with torch.device("meta"):                                          # 120M parameters: no memory
        head = FastRCNNHead(512, num_classes=20, roi_output_size=7, representation_size=4096)
    assert head.fc6.in_features == 512 * 7 * 7 and head.fc7.out_features == 4096
    assert head.cls_score.out_features == 21 and head.bbox_pred.out_features == 84


# ----------------------------------------------------------------------------------------------
# fast_rcnn_loss ([F] eq. 1)
# ----------------------------------------------------------------------------------------------
def _smooth_l1(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def test_fast_rcnn_loss_by_hand():
    logits = T([[0.1, 0.2, 2.0], [1.5, -0.3, 0.0], [0.0, 1.0, -1.0]])      # R = 3, C = 2
    labels = torch.tensor([2, 0, 1])
    deltas = torch.arange(36, dtype=torch.float32).reshape(3, 12) / 10
    targets = T([[0.5, 0.5, 0.5, 0.5], [9.0, 9.0, 9.0, 9.0], [0.0, 0.2, 0.4, 2.0]])
    loss_cls, loss_box = fast_rcnn_loss(logits, deltas, labels, targets)

    cls = 0.0
    for row, u in zip(logits.tolist(), labels.tolist()):
        cls += math.log(sum(math.exp(v) for v in row)) - row[u]
    box = sum(_smooth_l1(d - t) for d, t in zip(deltas[0, 8:12].tolist(), targets[0].tolist()))
    box += sum(_smooth_l1(d - t) for d, t in zip(deltas[2, 4:8].tolist(), targets[2].tolist()))
    assert loss_cls.item() == pytest.approx(cls / 3, rel=1e-5)
    assert loss_box.item() == pytest.approx(box / 3, rel=1e-5)       # fg only, divided by R
    lam = fast_rcnn_loss(logits, deltas, labels, targets, lambda_=2.5)[1]
    assert lam.item() == pytest.approx(2.5 * box / 3, rel=1e-5)


def test_fast_rcnn_loss_uses_only_the_true_class_deltas():
    logits = torch.zeros(3, 3)
    labels = torch.tensor([2, 0, 1])
    deltas = torch.zeros(3, 12, requires_grad=True)
    targets = torch.ones(3, 4)
    _, loss_box = fast_rcnn_loss(logits, deltas, labels, targets)
    loss_box.backward()
    nonzero = (deltas.grad != 0).nonzero().tolist()
    assert nonzero == [[0, 8], [0, 9], [0, 10], [0, 11], [2, 4], [2, 5], [2, 6], [2, 7]]


def test_fast_rcnn_loss_background_only_and_empty():
    logits = torch.randn(4, 3, generator=gen())
    loss_cls, loss_box = fast_rcnn_loss(logits, torch.randn(4, 12), torch.zeros(4, dtype=torch.int64),
                                        torch.randn(4, 4))
    assert torch.isfinite(loss_cls) and loss_box.item() == 0.0
    loss_cls, loss_box = fast_rcnn_loss(torch.zeros(0, 3, requires_grad=True), torch.zeros(0, 12),
                                        torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4))
    assert loss_cls.item() == 0.0 and loss_box.item() == 0.0       # not NaN
    loss_cls.backward()


# ----------------------------------------------------------------------------------------------
# postprocess_detections ([C] test.py)
# ----------------------------------------------------------------------------------------------
def _logits(probs):
    return torch.tensor(probs, dtype=torch.float32).log()


def test_postprocess_per_class_nms_and_background():
    proposals = T([[10, 10, 50, 50], [12, 12, 52, 52], [11, 11, 51, 51], [60, 60, 90, 90]])
    assert box_ops.box_iou(proposals[:1], proposals[1:3]).min() > 0.3
    logits = _logits([[0.08, 0.90, 0.02],     # class 1, best
                      [0.20, 0.78, 0.02],     # class 1, overlaps the first: suppressed
                      [0.10, 0.02, 0.88],     # class 2, overlaps the first: kept (other class)
                      [0.97, 0.02, 0.01]])    # background: nothing
    deltas = torch.zeros(4, 12)
    boxes, labels, scores = postprocess_detections(logits, deltas, proposals, (100, 100))
    assert labels.tolist() == [1, 2] and labels.dtype == torch.int64
    torch.testing.assert_close(scores, T([0.90, 0.88]))
    torch.testing.assert_close(boxes, proposals[[0, 2]])
    # the same overlap in one class with a looser NMS survives
    boxes, labels, _ = postprocess_detections(logits, deltas, proposals, (100, 100), nms_iou=0.9)
    assert labels.tolist() == [1, 2, 1]


def test_postprocess_score_threshold():
    proposals = T([[10, 10, 50, 50], [60, 60, 90, 90]])
    logits = _logits([[0.2, 0.7, 0.1], [0.5, 0.04, 0.46]])
    _, labels, scores = postprocess_detections(logits, torch.zeros(2, 12), proposals, (100, 100))
    assert labels.tolist() == [1, 2, 2] and (scores > 0.05).all()   # 0.04 dropped, 0.1 kept
    torch.testing.assert_close(scores, T([0.7, 0.46, 0.1]))
    _, labels, scores = postprocess_detections(logits, torch.zeros(2, 12), proposals, (100, 100),
                                               score_thresh=0.5)
    assert labels.tolist() == [1]


def test_postprocess_detections_per_img_sorted():
    proposals = torch.stack([torch.tensor([20.0 * i, 0, 20.0 * i + 10, 10]) for i in range(30)])
    probs = torch.rand(30, 4, generator=gen(4)) + 0.1
    probs = probs / probs.sum(1, keepdim=True)
    boxes, labels, scores = postprocess_detections(probs.log(), torch.zeros(30, 16), proposals, (10, 600),
                                                   detections_per_img=5)
    assert boxes.shape == (5, 4) and labels.shape == (5,) and scores.shape == (5,)
    assert (scores[:-1] >= scores[1:]).all()
    assert torch.allclose(scores, probs[:, 1:].flatten().topk(5).values)


def test_postprocess_clips_and_applies_the_box_coder_weights():
    proposals = T([[10, 10, 30, 30], [80, 80, 120, 130]])              # the second crosses (100, 100)
    logits = _logits([[0.1, 0.9], [0.1, 0.9]])
    deltas = torch.zeros(2, 8)
    deltas[0, 4] = 1.0                                                  # class 1 tx: 1 / 10 of the width
    boxes, labels, _ = postprocess_detections(logits, deltas, proposals, (100, 100))
    order = boxes[:, 0].argsort()
    torch.testing.assert_close(boxes[order], T([[12, 10, 32, 30], [80, 80, 100, 100]]))
    assert (labels == 1).all()


def test_postprocess_empty():
    boxes, labels, scores = postprocess_detections(torch.zeros(0, 3), torch.zeros(0, 12),
                                                   torch.zeros(0, 4), (50, 50))
    assert boxes.shape == (0, 4) and labels.shape == (0,) and scores.shape == (0,)
    assert labels.dtype == torch.int64


# ---------------------------------------------------------------------------------------------
# Truncated SVD of fc6 / fc7 ([F] Sec. 3.1)
# ---------------------------------------------------------------------------------------------
def test_truncated_svd_at_full_rank_is_the_same_layer():
    from frcnn_edu.fast_rcnn import truncated_svd

    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 20)
    compressed = truncated_svd(layer, 20)
    x = torch.randn(7, 48)
    torch.testing.assert_close(compressed(x), layer(x), atol=1e-5, rtol=1e-5)
    assert compressed[0].bias is None and compressed[1].bias is not None


def test_truncated_svd_parameter_count_and_error_shrink_with_rank():
    from frcnn_edu.fast_rcnn import truncated_svd

    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 32)
    x = torch.randn(50, 64)
    errors = []
    for rank in (4, 8, 16, 32):
        compressed = truncated_svd(layer, rank)
        weights = sum(m.weight.numel() for m in compressed)
        assert weights == rank * (64 + 32)   # t (u + v) instead of u v
        errors.append((compressed(x) - layer(x)).norm().item())
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3 < errors[0]
    # The best rank-t approximation: the error is the norm of the dropped singular values.
    s = torch.linalg.svdvals(layer.weight.double())
    rank8 = truncated_svd(layer, 8)
    w8 = (rank8[1].weight @ rank8[0].weight).double()
    assert math.isclose((w8 - layer.weight.double()).norm().item(), s[8:].norm().item(), rel_tol=1e-4)


def test_truncated_svd_rejects_bad_ranks_and_double_compression():
    from frcnn_edu.fast_rcnn import truncated_svd

    layer = torch.nn.Linear(10, 6)
    for rank in (0, 7):
        with pytest.raises(ValueError, match=r"rank must lie in \[1, 6\]"):
            truncated_svd(layer, rank)
    head = FastRCNNHead(8, 3, roi_output_size=2, representation_size=16).compress(8, 4)
    with pytest.raises(ValueError, match="compressed already"):
        head.compress(8, 4)


@pytest.mark.slow
def test_compressed_head_keeps_the_detections_of_a_model_and_cannot_be_saved(tmp_path):
    from frcnn_edu import FasterRCNN
    from frcnn_edu.checkpoints import save_checkpoint

    torch.manual_seed(0)
    model = FasterRCNN.from_preset("shapes_tiny", num_classes=3).eval()
    image = torch.rand(3, 96, 128)
    with torch.no_grad():
        features = torch.rand(1, model.backbone.out_channels, 6, 8)
        rois = T([[0, 4, 4, 60, 50], [0, 10, 20, 90, 80]])
        dense = model.fast_rcnn.head(features, rois)
        fc6 = model.fast_rcnn.head.fc6
        model.fast_rcnn.head.compress(min(fc6.weight.shape), model.config.representation_size)   # full rank
        exact = model.fast_rcnn.head(features, rois)
        assert set(model([image])[0]) == {"boxes", "labels", "scores"}
    for a, b in zip(dense, exact):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="truncated SVD"):
        save_checkpoint(tmp_path / "m.pt", model)
