"""Tests for frcnn_edu.boxes: geometry, the eq. 2 coder, and NMS (reference == torchvision)."""

import math

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from frcnn_edu import boxes as B


def make_boxes(n, seed=0, dtype=torch.float32, max_xy=100.0, max_wh=50.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * max_xy
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * max_wh
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


# ---------------------------------------------------------------------------
# hypothesis strategies
# ---------------------------------------------------------------------------


@st.composite
def box_sets(draw, max_n=40, grid=False):
    """(boxes (N, 4) float32, scores (N,) float32) with duplicated boxes and scores.

    grid=True puts coordinates on a 1/8-pixel grid in [0, 64]: exact in float32
    even after torchvision's per-class coordinate offsets, and it produces many
    IoUs exactly at thresholds like 0.5.
    """
    n = draw(st.integers(0, max_n))
    if grid:
        coord = st.integers(0, 256).map(lambda v: v / 8.0)
        size = st.integers(0, 256).map(lambda v: v / 8.0)
    else:
        coord = st.floats(0, 100, allow_nan=False, width=32)
        size = st.floats(0, 50, allow_nan=False, width=32) | st.just(0.0)
    rows = []
    for _ in range(n):
        if rows and draw(st.integers(0, 4)) == 0:  # 1 in 5: a copy of an earlier box
            rows.append(rows[draw(st.integers(0, len(rows) - 1))])
        else:
            x, y, w, h = draw(coord), draw(coord), draw(size), draw(size)
            rows.append([x, y, x + w, y + h])
    boxes = torch.tensor(rows, dtype=torch.float32).reshape(n, 4)
    if draw(st.booleans()):  # scores from a small set: many ties
        values = st.sampled_from([0.1, 0.5, 0.5, 0.9, 1.0])
    else:
        values = st.floats(0, 1, allow_nan=False, width=32)
    scores = torch.tensor(draw(st.lists(values, min_size=n, max_size=n)), dtype=torch.float32)
    return boxes, scores


thresholds = st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]) | st.floats(0, 1, allow_nan=False)


# ---------------------------------------------------------------------------
# NMS: reference == torchvision
# ---------------------------------------------------------------------------


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(data=box_sets(), threshold=thresholds)
def test_nms_reference_equals_torchvision(data, threshold):
    boxes, scores = data
    fast = B.nms(boxes, scores, threshold, impl="fast")
    ref = B.nms(boxes, scores, threshold, impl="reference")
    assert fast.dtype == ref.dtype == torch.int64
    assert torch.equal(ref, fast)
    assert torch.equal(fast, torchvision.ops.nms(boxes, scores, threshold))


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(data=box_sets(grid=True), threshold=thresholds)
def test_nms_reference_equals_torchvision_on_grid(data, threshold):
    boxes, scores = data
    assert torch.equal(B.nms(boxes, scores, threshold, impl="reference"), B.nms(boxes, scores, threshold))


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(data=box_sets(grid=True), threshold=thresholds, num_classes=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_batched_nms_reference_equals_torchvision(data, threshold, num_classes, seed):
    boxes, scores = data
    idxs = torch.randint(0, num_classes, (boxes.shape[0],), generator=torch.Generator().manual_seed(seed))
    fast = B.batched_nms(boxes, scores, idxs, threshold, impl="fast")
    ref = B.batched_nms(boxes, scores, idxs, threshold, impl="reference")
    assert fast.dtype == ref.dtype == torch.int64
    assert torch.equal(ref, fast)
    # same set as torchvision's own result, and sorted by decreasing score
    assert torch.equal(fast.sort().values, torchvision.ops.batched_nms(boxes, scores, idxs, threshold).sort().values)
    assert bool((scores[fast][:-1] >= scores[fast][1:]).all())
    # nothing is suppressed across categories: each category's keep is plain NMS on it
    for c in idxs.unique():
        members = torch.where(idxs == c)[0]
        kept_here = fast[idxs[fast] == c]
        assert torch.equal(kept_here, members[B.nms(boxes[members], scores[members], threshold)])


def test_nms_large_realistic_and_ties():
    # 1,500 overlapping boxes, scores with many ties; float32 and float64.
    boxes = make_boxes(1500, seed=1, max_xy=200.0, max_wh=120.0)
    scores = (torch.rand(1500, generator=torch.Generator().manual_seed(2)) * 20).round() / 20
    for dtype, t in ((torch.float32, 0.3), (torch.float32, 0.7), (torch.float64, 0.5)):
        b, s = boxes.to(dtype), scores.to(dtype)
        assert torch.equal(B.nms(b, s, t, impl="reference"), B.nms(b, s, t))


def test_batched_nms_large_uses_torchvision_loop_and_agrees():
    # > 1,000 boxes: torchvision switches to its per-class loop (unstable final sort);
    # frcnn_edu re-sorts so that ties come out in index order, like the reference.
    boxes = make_boxes(2500, seed=3, max_xy=300.0, max_wh=100.0)
    scores = (torch.rand(2500, generator=torch.Generator().manual_seed(4)) * 10).round() / 10
    idxs = torch.randint(1, 21, (2500,), generator=torch.Generator().manual_seed(5))
    ref = B.batched_nms(boxes, scores, idxs, 0.3, impl="reference")
    fast = B.batched_nms(boxes, scores, idxs, 0.3)
    assert torch.equal(ref, fast)
    assert torch.equal(fast.sort().values, torchvision.ops.batched_nms(boxes, scores, idxs, 0.3).sort().values)


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_nms_edge_cases(impl):
    empty = torch.zeros(0, 4)
    keep = B.nms(empty, torch.zeros(0), 0.5, impl=impl)
    assert keep.shape == (0,) and keep.dtype == torch.int64
    keep = B.batched_nms(empty, torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5, impl=impl)
    assert keep.shape == (0,) and keep.dtype == torch.int64
    one = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert B.nms(one, torch.tensor([0.3]), 0.5, impl=impl).tolist() == [0]
    # identical boxes: only the best survives; among equal scores the lowest index
    same = one.repeat(4, 1)
    assert B.nms(same, torch.tensor([1.0, 2.0, 2.0, 1.0]), 0.5, impl=impl).tolist() == [1]
    assert B.nms(same, torch.tensor([0.5, 0.5, 0.5, 0.5]), 0.5, impl=impl).tolist() == [0]
    # ... but at threshold 1.0 nothing is suppressed (IoU 1 is not > 1); ties in index order
    assert B.nms(same, torch.tensor([1.0, 2.0, 2.0, 1.0]), 1.0, impl=impl).tolist() == [1, 2, 0, 3]
    # zero-area identical boxes have IoU 0: none suppresses another
    dots = torch.tensor([[1.0, 1.0, 1.0, 1.0]] * 3)
    assert B.nms(dots, torch.tensor([1.0, 2.0, 3.0]), 0.0, impl=impl).tolist() == [2, 1, 0]
    # strict '>': IoU exactly 0.5 is kept at threshold 0.5, suppressed just below
    pair = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    assert B.nms(pair, torch.tensor([2.0, 1.0]), 0.5, impl=impl).tolist() == [0, 1]
    assert B.nms(pair, torch.tensor([2.0, 1.0]), 0.49, impl=impl).tolist() == [0]
    # the same two boxes in different categories never suppress each other
    assert B.batched_nms(same[:2], torch.tensor([1.0, 2.0]), torch.tensor([0, 1]), 0.5, impl=impl).tolist() == [1, 0]


def test_nms_threshold_compared_in_double():
    # IoU 0.3 in float32 is 0.30000001192...; torchvision compares with the double 0.3.
    iou_f32 = torch.tensor(0.3, dtype=torch.float32)
    assert float(iou_f32) > 0.3
    # boxes with IoU exactly float32(0.3): 3 / 10 area ratio
    boxes = torch.tensor([[0.0, 0.0, 10.0, 1.0], [0.0, 0.0, 3.0, 1.0]])
    assert B.box_iou(boxes, boxes)[0, 1] == iou_f32
    for impl in ("fast", "reference"):
        assert B.nms(boxes, torch.tensor([1.0, 0.5]), 0.3, impl=impl).tolist() == [0]


# ---------------------------------------------------------------------------
# area and IoU
# ---------------------------------------------------------------------------


def test_box_area():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0]])
    assert B.box_area(boxes).tolist() == [6.0, 0.0]
    assert B.box_area(torch.zeros(0, 4)).shape == (0,)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(a=box_sets(max_n=12), b=box_sets(max_n=12))
def test_box_iou_equals_torchvision_and_in_unit_interval(a, b):
    boxes1, boxes2 = a[0], b[0]
    iou = B.box_iou(boxes1, boxes2)
    assert iou.shape == (boxes1.shape[0], boxes2.shape[0])
    assert not torch.isnan(iou).any()
    assert bool(((iou >= 0) & (iou <= 1)).all())
    expected = torchvision.ops.box_iou(boxes1, boxes2)
    # torchvision gives 0/0 = NaN for two zero-area boxes; frcnn_edu gives 0
    both_empty = torch.isnan(expected)
    assert bool((iou[both_empty] == 0).all())
    assert torch.equal(iou[~both_empty], expected[~both_empty])


def test_box_iou_values_float64_and_gradients():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]], dtype=torch.float64)
    iou = B.box_iou(a, b)
    assert iou.dtype == torch.float64
    assert torch.allclose(iou, torch.tensor([[1 / 7, 1.0, 0.0]], dtype=torch.float64))
    dots = torch.tensor([[1.0, 1.0, 1.0, 1.0]] * 2, requires_grad=True)
    B.box_iou(dots, dots).sum().backward()
    assert torch.isfinite(dots.grad).all()


# ---------------------------------------------------------------------------
# encode / decode (eq. 2)
# ---------------------------------------------------------------------------


def test_encode_matches_eq2_by_hand():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), size 10 x 20
    box = torch.tensor([[2.0, 4.0, 22.0, 14.0]])  # centre (12, 9), size 20 x 10
    t = B.encode(box, anchor)
    expected = torch.tensor([[(12 - 5) / 10, (9 - 10) / 20, math.log(20 / 10), math.log(10 / 20)]])
    assert torch.allclose(t, expected)
    tw = B.encode(box, anchor, weights=(10, 10, 5, 5))
    assert torch.allclose(tw, expected * torch.tensor([10.0, 10.0, 5.0, 5.0]))


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**16), weights=st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_encode_decode_roundtrip(seed, weights, dtype):
    g = torch.Generator().manual_seed(seed)

    def positive_boxes(n):
        xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
        wh = 1 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 49  # sizes in [1, 50]
        return torch.cat([xy, xy + wh], 1).to(dtype)

    boxes, anchors = positive_boxes(30), positive_boxes(30)
    deltas = B.encode(boxes, anchors, weights)
    assert deltas.shape == (30, 4) and deltas.dtype == dtype
    assert torch.allclose(B.decode(deltas, anchors, weights), boxes, atol=1e-4, rtol=0)


def test_encode_decode_broadcast_per_class():
    anchors = make_boxes(5, seed=7) + torch.tensor([0.0, 0.0, 1.0, 1.0])
    deltas = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(8))
    out = B.decode(deltas, anchors[:, None, :])
    assert out.shape == (5, 3, 4)
    for c in range(3):
        assert torch.allclose(out[:, c], B.decode(deltas[:, c], anchors))
    back = B.encode(out, anchors[:, None, :])
    assert torch.allclose(back, deltas, atol=1e-4)
    assert B.encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    assert B.decode(torch.zeros(0, 3, 4), torch.zeros(0, 1, 4)).shape == (0, 3, 4)


def test_decode_clamps_huge_dw():
    anchors = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    out = B.decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), anchors)
    assert torch.isfinite(out).all()
    # clamped at log(1000 / 16): the box is 1000 px wide and tall
    assert torch.allclose(out[0, 2] - out[0, 0], torch.tensor(1000.0))
    assert torch.allclose(out[0, 3] - out[0, 1], torch.tensor(1000.0))


# ---------------------------------------------------------------------------
# clip and small boxes
# ---------------------------------------------------------------------------


def test_clip_boxes():
    boxes = torch.tensor([[-5.0, -3.0, 50.0, 20.0], [10.0, 10.0, 120.0, 90.0]])
    out = B.clip_boxes(boxes, (60, 100))  # H = 60, W = 100
    assert out.tolist() == [[0.0, 0.0, 50.0, 20.0], [10.0, 10.0, 100.0, 60.0]]
    batched = B.clip_boxes(boxes[None].repeat(2, 1, 1), (60, 100))
    assert batched.shape == (2, 2, 4) and torch.equal(batched[1], out)
    assert B.clip_boxes(torch.zeros(0, 4), (60, 100)).shape == (0, 4)


def test_remove_small_boxes():
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 15.9, 30.0], [0.0, 0.0, 30.0, 15.0], [0, 0, 40.0, 20]])
    keep = B.remove_small_boxes(boxes, 16)
    assert keep.dtype == torch.int64 and keep.tolist() == [0, 3]
    empty = B.remove_small_boxes(torch.zeros(0, 4), 16)
    assert empty.shape == (0,) and empty.dtype == torch.int64


def test_float64_throughout():
    boxes = make_boxes(50, seed=9, dtype=torch.float64)
    scores = torch.rand(50, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert B.box_iou(boxes, boxes).dtype == torch.float64
    assert B.clip_boxes(boxes, (50, 50)).dtype == torch.float64
    assert torch.equal(B.nms(boxes, scores, 0.5, impl="reference"), B.nms(boxes, scores, 0.5))


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


def test_check_boxes_messages():
    good = make_boxes(5)
    B.check_boxes(good)
    B.check_boxes(torch.zeros(0, 4))
    bad = good.clone()
    bad[3, 2] = bad[3, 0] - 1
    with pytest.raises(ValueError, match=r"boxes\[3\] has x2 < x1: tensor\(.*\); boxes has shape \(5, 4\)"):
        B.check_boxes(bad)
    bad = good.clone()
    bad[1, 3] = bad[1, 1] - 1
    bad[4, 0] = float("nan")
    with pytest.raises(ValueError, match=r"gt_boxes\[1\] has y2 < y1.*gt_boxes has shape \(5, 4\)"):
        B.check_boxes(bad, name="gt_boxes")
    bad = good.clone()
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"boxes\[2\] is not finite"):
        B.check_boxes(bad)
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 4\), got shape \(5, 3\)"):
        B.check_boxes(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"boxes must be a floating-point tensor, got torch.int64"):
        B.check_boxes(torch.zeros(5, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"boxes must be a torch.Tensor, got list"):
        B.check_boxes([[0, 0, 1, 1]])


def test_validation_errors_in_public_functions():
    good = make_boxes(4)
    bad = good.clone()
    bad[2, 0] = bad[2, 2] + 1
    scores = torch.rand(4)
    with pytest.raises(ValueError, match=r"boxes2\[2\] has x2 < x1"):
        B.box_iou(good, bad)
    with pytest.raises(ValueError, match=r"boxes1 must have shape \(N, 4\)"):
        B.box_iou(good[None], good)
    with pytest.raises(ValueError, match=r"boxes\[2\] has x2 < x1"):
        B.box_area(bad)
    with pytest.raises(ValueError, match=r"boxes\[2\] has x2 < x1"):
        B.nms(bad, scores, 0.5)
    with pytest.raises(ValueError, match=r"scores must have shape \(N,\) = \(4,\).*got shape \(3,\)"):
        B.nms(good, scores[:3], 0.5)
    with pytest.raises(ValueError, match=r"scores \(torch.float64\) must have the same dtype as boxes"):
        B.nms(good, scores.double(), 0.5)
    with pytest.raises(ValueError, match=r"scores must be a floating-point tensor"):
        B.nms(good, torch.ones(4, dtype=torch.int64), 0.5)
    nan_scores = scores.clone()
    nan_scores[1] = float("nan")
    with pytest.raises(ValueError, match=r"scores\[1\] is not finite"):
        B.nms(good, nan_scores, 0.5)
    with pytest.raises(ValueError, match=r"iou_threshold must be a number in \[0, 1\], got 1.5"):
        B.nms(good, scores, 1.5)
    with pytest.raises(ValueError, match=r"impl must be 'fast' or 'reference', got 'cuda'"):
        B.nms(good, scores, 0.5, impl="cuda")
    with pytest.raises(ValueError, match=r"impl must be 'fast' or 'reference'"):
        B.batched_nms(good, scores, torch.zeros(4, dtype=torch.int64), 0.5, impl="slow")
    with pytest.raises(ValueError, match=r"idxs must be an integer tensor.*torch.float32"):
        B.batched_nms(good, scores, torch.zeros(4), 0.5)
    with pytest.raises(ValueError, match=r"idxs must have shape \(N,\) = \(4,\).*got shape \(2,\)"):
        B.batched_nms(good, scores, torch.zeros(2, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match=r"anchors\[1\] has x2 <= x1 \(width must be positive here\)"):
        flat = good.clone()
        flat[1, 2] = flat[1, 0]
        B.encode(good, flat)
    with pytest.raises(ValueError, match=r"boxes\[0\] has y2 <= y1 \(height must be positive here\)"):
        flat = good.clone()
        flat[0, 3] = flat[0, 1]
        B.encode(flat, good)
    with pytest.raises(ValueError, match=r"boxes of shape \(4, 4\) and anchors of shape \(3, 4\) do not broadcast"):
        B.encode(good, good[:3])
    with pytest.raises(ValueError, match=r"weights\[2\] must be positive"):
        B.decode(torch.zeros(4, 4), good, weights=(1, 1, 0, 1))
    with pytest.raises(ValueError, match=r"weights must be 4 positive numbers"):
        B.encode(good, good, weights=(1, 1, 1))
    with pytest.raises(ValueError, match=r"deltas\[1, 0\] is not finite"):
        d = torch.zeros(4, 2, 4)
        d[1, 0, 3] = float("inf")
        B.decode(d, good[:, None])
    with pytest.raises(ValueError, match=r"deltas must have shape \(\.\.\., 4\), got shape \(4, 5\)"):
        B.decode(torch.zeros(4, 5), good)
    with pytest.raises(ValueError, match=r"deltas must be a floating-point tensor"):
        B.decode(torch.zeros(4, 4, dtype=torch.int32), good)
    with pytest.raises(ValueError, match=r"image_size\[1\] \(W\) must be a non-negative number, got -3"):
        B.clip_boxes(good, (10, -3))
    with pytest.raises(ValueError, match=r"image_size must be \(H, W\)"):
        B.clip_boxes(good, (10, 20, 3))
    with pytest.raises(ValueError, match=r"boxes\[2\] has x2 < x1"):
        B.clip_boxes(bad, (10, 10))
    with pytest.raises(ValueError, match=r"boxes\[2\] has x2 < x1"):
        B.remove_small_boxes(bad, 1)


def test_device_mismatch_names_both_devices():
    cpu = make_boxes(3)
    meta = torch.empty(3, 4, device="meta")
    with pytest.raises(ValueError, match=r"boxes1 is on device cpu but boxes2 is on device meta"):
        B.box_iou(cpu, meta)
    with pytest.raises(ValueError, match=r"boxes is on device cpu but anchors is on device meta"):
        B.encode(cpu, meta)
    with pytest.raises(ValueError, match=r"deltas is on device meta but anchors is on device cpu"):
        B.decode(meta, cpu)
    with pytest.raises(ValueError, match=r"boxes is on device cpu but scores is on device meta"):
        B.nms(cpu, torch.empty(3, device="meta"), 0.5)
    with pytest.raises(ValueError, match=r"boxes is on device cpu but idxs is on device meta"):
        B.batched_nms(cpu, torch.rand(3), torch.zeros(3, dtype=torch.int64, device="meta"), 0.5)


def test_validate_false_skips_value_checks():
    bad = torch.tensor([[5.0, 5.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])  # x2 < x1 and y2 < y1
    with pytest.raises(ValueError):
        B.box_iou(bad, bad)
    B.box_iou(bad, bad, validate=False)
    B.box_area(bad, validate=False)
    B.clip_boxes(bad, (10, 10), validate=False)
    B.remove_small_boxes(bad, 1, validate=False)
    B.nms(bad, torch.tensor([1.0, 0.5]), 0.5, validate=False)
    B.batched_nms(bad, torch.tensor([1.0, 0.5]), torch.tensor([0, 0]), 0.5, validate=False)
    B.decode(torch.zeros(2, 4), bad, validate=False)
    zero_width = torch.tensor([[1.0, 1.0, 1.0, 3.0]])
    with pytest.raises(ValueError):
        B.encode(zero_width, zero_width)
    assert torch.isnan(B.encode(zero_width, zero_width, validate=False)).any()  # log(0/0): why we validate
    # shapes are still checked (cheap, no sync)
    with pytest.raises(ValueError, match=r"boxes must have shape"):
        B.box_area(torch.zeros(3, 5), validate=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nms_cuda_matches_reference_on_distinct_scores():
    boxes = make_boxes(2000, seed=11, max_xy=300.0, max_wh=100.0).cuda()
    scores = torch.randperm(2000, generator=torch.Generator().manual_seed(12)).float().cuda()
    for t in (0.3, 0.7):
        ref = B.nms(boxes, scores, t, impl="reference")
        assert ref.device == boxes.device
        assert torch.equal(ref, B.nms(boxes, scores, t))
        assert torch.equal(ref.cpu(), B.nms(boxes.cpu(), scores.cpu(), t))
