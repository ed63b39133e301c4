"""RoI pooling: the readable reference must agree with torchvision's kernel bit for bit."""
import time

import pytest
import torch
import torchvision

from frcnn_edu.roi import (
    RoIPool,
    _round_half_away_from_zero,
    boxes_to_rois,
    check_rois,
    roi_align,
    roi_pool,
    roi_pool_bins,
)

OUTPUT_SIZES = [7, (6, 6), (3, 5)]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def random_rois(gen, num_rois, num_images, height, width, stride, dtype=torch.float32):
    """RoIs in image pixels, many of them awkward: partly or wholly off the map, tiny, inverted
    (x2 < x1), and corners on half-cells (x * scale = k + 0.5, where the rounding rule shows)."""
    size = torch.tensor([width, height], dtype=torch.float64) * stride
    xy = (torch.rand(num_rois, 2, generator=gen, dtype=torch.float64) * 1.6 - 0.3) * size
    wh = torch.rand(num_rois, 2, generator=gen, dtype=torch.float64) * 0.8 * size
    kind = torch.randint(0, 5, (num_rois, 1), generator=gen)
    wh = torch.where(kind == 0, wh * 0.02, wh)                       # tiny: smaller than a bin
    wh = torch.where(kind == 1, -wh * 0.05, wh)                      # inverted
    boxes = torch.cat([xy, xy + wh], dim=1)
    half = torch.rand(num_rois, 1, generator=gen) < 0.3
    boxes = torch.where(half, torch.round(boxes / (stride / 2)) * (stride / 2), boxes)
    index = torch.randint(0, num_images, (num_rois, 1), generator=gen).double()
    return torch.cat([index, boxes], dim=1).to(dtype)


def pool_both(features, rois, output_size, spatial_scale, upstream_seed=0, op=roi_pool, **kw):
    """Forward and backward through the fast and the reference path with one random upstream
    gradient. Returns (fast out, ref out, fast grad, ref grad)."""
    results = []
    for impl in ("fast", "reference"):
        # A fresh leaf with the same layout (strides) as features, so views stay non-contiguous.
        f = torch.empty_strided(features.shape, features.stride(), dtype=features.dtype,
                                device=features.device).copy_(features).requires_grad_()
        out = op(f, rois, output_size, spatial_scale, impl=impl, **kw)
        gen = torch.Generator().manual_seed(upstream_seed)
        upstream = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
        out.backward(upstream)
        results.append((out.detach(), f.grad))
    (a, ga), (b, gb) = results
    return a, b, ga, gb


def assert_pool_equal(features, rois, output_size, spatial_scale, seed=0):
    a, b, ga, gb = pool_both(features, rois, output_size, spatial_scale, seed)
    assert a.shape == b.shape
    assert torch.equal(a, b), f"max forward diff {(a - b).abs().max()}"
    assert torch.equal(ga, gb), f"max gradient diff {(ga - gb).abs().max()}"


# ----------------------------------------------------------------------------------------------
# Rounding rules
# ----------------------------------------------------------------------------------------------
def test_round_half_away_from_zero():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 2.4999998, 0.49999997, -1.2, 3.0])
    expected = torch.tensor([1.0, 2.0, 3.0, -1.0, -3.0, 2.0, 0.0, -1.0, 3.0])
    assert torch.equal(_round_half_away_from_zero(x), expected)
    assert not torch.equal(torch.round(x), expected)     # why torch.round is not used


def test_roi_pool_bins_by_hand():
    # x1 = y1 = 8 px * 1/16 = 0.5 -> 1 (half away from zero); x2 = y2 = 40/16 = 2.5 -> 3.
    # Inclusive ends: RoI 3 cells wide; 2 bins of 1.5 cells: [floor 0, ceil 1.5) = [0, 2) and
    # [floor 1.5, ceil 3) = [1, 3), shifted by the start 1: starts (1, 2), ends (3, 4).
    h_starts, h_ends, w_starts, w_ends = roi_pool_bins([8.0, 8.0, 40.0, 40.0], 2, 1 / 16, (10, 10))
    assert (h_starts, h_ends, w_starts, w_ends) == ([1, 2], [3, 4], [1, 2], [3, 4])
    # Partly off the map: x from -32 px (cell -2) to 16 px (cell 1), 3 bins of 4/3 cells:
    # [-2, -1+1=0)->[-2,0) clamps to empty [0, 0); [-2+1, -2+3)=[-1, 1) -> [0, 1); [0, 2) -> [0, 2)
    _, _, w_starts, w_ends = roi_pool_bins(torch.tensor([-32.0, 0.0, 16.0, 16.0]), (1, 3),
                                           1 / 16, (4, 4))
    assert (w_starts, w_ends) == ([0, 0, 0], [0, 1, 2])
    # Inverted RoI (x2 < x1) is forced to one cell.
    h_starts, h_ends, _, _ = roi_pool_bins([0.0, 64.0, 0.0, 16.0], (2, 1), 1 / 16, (10, 10))
    assert (h_starts, h_ends) == ([4, 4], [5, 5])


def test_roi_pool_bins_describe_torchvision():
    # The bins roi_pool_bins reports (and the notebook draws) are the ones torchvision pools:
    # each output is the max over its bin's slice, 0 for an empty bin.
    gen = torch.Generator().manual_seed(13)
    height, width = 9, 11
    features = torch.randn(1, 2, height, width, generator=gen)
    rois = random_rois(gen, 20, 1, height, width, 16)
    fast = torchvision.ops.roi_pool(features, rois, (3, 5), 1 / 16)
    for k, roi in enumerate(rois):
        h_starts, h_ends, w_starts, w_ends = roi_pool_bins(roi[1:], (3, 5), 1 / 16, (height, width))
        for i in range(3):
            for j in range(5):
                window = features[0, :, h_starts[i]:h_ends[i], w_starts[j]:w_ends[j]]
                expected = window.amax(dim=(1, 2)) if window.numel() else torch.zeros(2)
                assert torch.equal(fast[k, :, i, j], expected), (k, i, j)


# ----------------------------------------------------------------------------------------------
# Reference == torchvision, values and gradients, exactly
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roi_pool_reference_matches_torchvision_random(dtype):
    gen = torch.Generator().manual_seed(1 if dtype == torch.float32 else 2)
    for case in range(50):                         # 50 cases per dtype, 100 in all
        num_images = int(torch.randint(1, 4, (1,), generator=gen))
        channels = int(torch.randint(1, 4, (1,), generator=gen))
        height, width = (int(v) for v in torch.randint(1, 14, (2,), generator=gen))
        stride = [1, 4, 8, 16][case % 4]
        features = torch.randn(num_images, channels, height, width, generator=gen, dtype=dtype)
        if case % 3 == 0:                          # few distinct values: many ties
            features = features.round()
        rois = random_rois(gen, int(torch.randint(0, 8, (1,), generator=gen)), num_images,
                           height, width, stride, dtype)
        assert_pool_equal(features, rois, OUTPUT_SIZES[case % 3], 1 / stride, seed=case)


@pytest.mark.parametrize("dtype,last_end", [(torch.float32, 29), (torch.float64, 30)])
def test_roi_pool_bin_edges_use_the_features_dtype(dtype, last_end):
    # A RoI 29 cells wide in 7 bins: 7 * (29 / 7) is 29.0 in float32 but 29.000000000000004 in
    # float64, so torchvision's last bin ends at ceil() = 29 for float32 and 30 for float64.
    # The reference does its arithmetic in the same dtype and agrees in both.
    assert roi_pool_bins(torch.tensor([0.0, 0.0, 28.0, 28.0], dtype=dtype), 7, 1.0,
                         (40, 40))[1][-1] == last_end
    features = torch.zeros(1, 1, 40, 40, dtype=dtype)
    features[0, 0, 29, 29] = 1.0                 # just outside the RoI: only float64 sees it
    rois = torch.tensor([[0, 0.0, 0.0, 28.0, 28.0]], dtype=dtype)
    a, b, ga, gb = pool_both(features, rois, 7, 1.0)
    assert torch.equal(a, b) and torch.equal(ga, gb)
    assert a[0, 0, 6, 6] == (1.0 if dtype == torch.float64 else 0.0)


def test_roi_pool_rois_outside_the_map():
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(1, 3, 6, 8, generator=gen)
    rois = torch.tensor([[0, -200.0, -100.0, -20.0, -10.0],     # wholly above-left
                         [0, 200.0, 150.0, 400.0, 300.0],       # wholly below-right
                         [0, -40.0, -40.0, 40.0, 30.0],         # partly
                         [0, 100.0, 60.0, 300.0, 200.0],        # partly
                         [0, -50.0, 10.0, 500.0, 20.0]])        # wider than the map
    for size in OUTPUT_SIZES:
        a, b, ga, gb = pool_both(features, rois, size, 1 / 16)
        assert torch.equal(a, b) and torch.equal(ga, gb)
        assert (a[:2] == 0).all()                   # no cell at all: every bin empty -> 0
        assert (a[2] == 0).any()                    # partly outside: some bins are empty


def test_roi_pool_one_pixel_and_tiny_rois():
    gen = torch.Generator().manual_seed(4)
    features = torch.randn(2, 4, 10, 12, generator=gen)
    rois = torch.tensor([[0, 33.0, 40.0, 33.0, 40.0],           # a point: one cell
                         [1, 16.0, 16.0, 17.0, 17.0],           # one pixel
                         [1, 100.0, 50.0, 103.0, 55.0],         # smaller than a cell
                         [0, 16.0, 16.0, 20.0, 60.0]])          # one cell wide
    for size in OUTPUT_SIZES:
        assert_pool_equal(features, rois, size, 1 / 16)
    # A RoI of one cell fills every bin with that cell.
    out = roi_pool(features, rois[:1], 7, 1 / 16, impl="reference")
    cell = features[0, :, 3, 2]             # y: 40/16 = 2.5 -> 3 (half away); x: 33/16 -> 2
    assert torch.equal(out[0], cell[:, None, None].expand(4, 7, 7))


def test_roi_pool_several_images_in_a_batch():
    gen = torch.Generator().manual_seed(5)
    features = torch.randn(3, 2, 9, 9, generator=gen)
    rois = random_rois(gen, 12, 3, 9, 9, 8)
    assert_pool_equal(features, rois, 7, 1 / 8)
    # The batch index is honoured: the same box on image 2 pools image 2.
    box = torch.tensor([[0, 0.0, 0.0, 40.0, 40.0], [2, 0.0, 0.0, 40.0, 40.0]])
    out = roi_pool(features, box, 3, 1 / 8, impl="reference")
    assert torch.equal(out[1], roi_pool(features[2:], box[:1], 3, 1 / 8, impl="reference")[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roi_pool_non_contiguous_features(dtype):
    gen = torch.Generator().manual_seed(6)
    base = torch.randn(2, 6, 13, 11, generator=gen, dtype=dtype)
    rois = random_rois(gen, 10, 2, 11, 13, 4, dtype)
    for features in (base.transpose(2, 3), base[:, ::2], base.permute(0, 2, 1, 3)[:, :5]
                     .transpose(1, 2)):
        assert not features.is_contiguous()
        for size in OUTPUT_SIZES:
            assert_pool_equal(features, rois, size, 1 / 4)


def test_roi_pool_ties_send_the_gradient_to_the_first_maximum():
    # Constant features: every cell of a bin ties. torchvision keeps the first in row-major
    # order (strict >), so each bin's gradient lands on its top-left cell.
    features = torch.full((1, 2, 8, 8), 3.0)
    rois = torch.tensor([[0, 0.0, 0.0, 7.0, 7.0], [0, 2.0, 1.0, 6.0, 7.0]])
    a, b, ga, gb = pool_both(features, rois, (3, 2), 1.0)
    assert torch.equal(a, b) and torch.equal(ga, gb)
    f = features.clone().requires_grad_()
    roi_pool(f, rois[:1], (3, 2), 1.0, impl="reference").sum().backward()
    # RoI 8 x 8 cells, bins of 8/3 rows and 4 columns: rows start 0, 2, 5; columns 0, 4.
    expected = torch.zeros(8, 8)
    expected[[0, 0, 2, 2, 5, 5], [0, 4, 0, 4, 0, 4]] = 1
    assert torch.equal(f.grad[0, 0], expected)
    # Ties between two maxima in one bin: the earlier one in row-major order wins.
    features = torch.zeros(1, 1, 4, 4)
    features[0, 0, 1, 3] = features[0, 0, 2, 0] = 5.0
    a, b, ga, gb = pool_both(features, torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]]), 1, 1.0)
    assert torch.equal(ga, gb) and ga[0, 0, 1, 3] != 0 and ga[0, 0, 2, 0] == 0


def test_roi_pool_overlapping_bins_accumulate_gradient():
    # Many RoIs and overlapping bins share argmaxes: the summed gradient must match exactly,
    # which needs the same summation order as torchvision (RoI, channel, row, column).
    gen = torch.Generator().manual_seed(7)
    features = torch.randn(1, 2, 5, 5, generator=gen).round()
    rois = torch.cat([torch.zeros(20, 1), torch.rand(20, 2, generator=gen) * 40,
                      40 + torch.rand(20, 2, generator=gen) * 40], dim=1)
    assert_pool_equal(features, rois, 7, 1 / 16)


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_threaded_cpu_roi_pool_is_one_kernel_call_bit_for_bit(two_threads, dtype):
    """On the CPU the fast path splits the RoIs over threads (frcnn_edu.parallel): the values and
    the gradient (many RoIs sharing argmaxes) must be exactly those of one torchvision call (which
    the tests above bind to the reference). The reference itself is not compared here: with 2
    threads, the order in which its indexing backward sums shared gradients varies."""
    gen = torch.Generator().manual_seed(11)
    features = torch.randn(2, 3, 9, 11, generator=gen, dtype=dtype).round()   # ties too
    features = features.contiguous(memory_format=torch.channels_last)        # the model's layout
    rois = random_rois(gen, 300, 2, 9, 11, 16, dtype)
    upstream = torch.randn(300, 3, 7, 7, generator=gen, dtype=dtype)
    leaf = features.clone().requires_grad_()
    out = roi_pool(leaf, rois, 7, 1 / 16)
    assert out.grad_fn.name() == "_ThreadedRoIPoolBackward"                    # the split ran
    out.backward(upstream)
    one = features.clone().requires_grad_()
    expected = torchvision.ops.roi_pool(one, rois, 7, 1 / 16)
    expected.backward(upstream)
    assert torch.equal(out, expected) and torch.equal(leaf.grad, one.grad)
    with torch.inference_mode():
        assert torch.equal(roi_pool(features, rois, 7, 1 / 16), expected.detach())


def test_few_rois_or_one_thread_skip_the_split():
    features = torch.randn(1, 2, 6, 6, requires_grad=True)
    rois = torch.tensor([[0.0, 0, 0, 50, 50]]).repeat(100, 1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert roi_pool(features, rois, 3, 1 / 16).grad_fn.name() != "_ThreadedRoIPoolBackward"
        torch.set_num_threads(2)
        assert roi_pool(features, rois[:10], 3, 1 / 16).grad_fn.name() != "_ThreadedRoIPoolBackward"
    finally:
        torch.set_num_threads(threads)


def test_roi_pool_no_rois():
    features = torch.randn(2, 3, 5, 5, requires_grad=True)
    for impl in ("fast", "reference"):
        out = roi_pool(features, torch.zeros(0, 5), (3, 5), 1 / 16, impl=impl)
        assert out.shape == (0, 3, 3, 5) and out.dtype == features.dtype
        out.sum().backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_roi_pool_module_and_boxes_to_rois():
    gen = torch.Generator().manual_seed(8)
    features = torch.randn(2, 3, 10, 10, generator=gen)
    rois = boxes_to_rois([torch.tensor([[0.0, 0.0, 50.0, 60.0]]),
                          torch.tensor([[10.0, 10.0, 70.0, 90.0], [0.0, 0.0, 16.0, 16.0]])])
    assert rois[:, 0].tolist() == [0, 1, 1]
    expected = roi_pool(features, rois, 7, 1 / 8)
    assert torch.equal(RoIPool(7, 1 / 8)(features, rois), expected)
    assert torch.equal(RoIPool((7, 7), 1 / 8, impl="reference")(features, rois), expected)
    assert torch.equal(RoIPool(7, 1 / 8, validate=False)(features, rois), expected)
    assert "impl='reference'" in repr(RoIPool(7, 1 / 8, impl="reference"))
    assert "validate=False" in repr(RoIPool(7, 1 / 8, validate=False))


def test_roi_pool_module_validate_flag(monkeypatch):
    # validate=True (the default) checks the RoIs; validate=False passes them to the kernel as
    # they are, for a model that builds its own RoIs.
    features = torch.randn(2, 3, 8, 8)
    bad = torch.tensor([[3, 0.0, 0.0, 10.0, 10.0]])                  # image 3 of a batch of 2
    for check in (lambda: RoIPool(7, 1 / 16)(features, bad), lambda: check_rois(features, bad)):
        with pytest.raises(ValueError, match=r"rois\[0, 0\] = 3.0 is not an image index"):
            check()
    calls = []
    monkeypatch.setattr("frcnn_edu.roi.check_rois", lambda *args: calls.append(args))
    good = torch.tensor([[1, 0.0, 0.0, 10.0, 10.0]])
    RoIPool(7, 1 / 16)(features, good)
    assert len(calls) == 1
    RoIPool(7, 1 / 16, validate=False)(features, good)
    assert len(calls) == 1                                          # not checked this time


@pytest.mark.slow
def test_roi_pool_speed_reference_vs_fast(capsys):
    # The size in [P]'s VGG-16 setting: 300 test-time proposals on a 38 x 63 map, 7 x 7 bins.
    gen = torch.Generator().manual_seed(9)
    features = torch.randn(1, 512, 38, 63, generator=gen)
    rois = random_rois(gen, 300, 1, 38, 63, 16)
    start = time.perf_counter()
    fast = roi_pool(features, rois, 7, 1 / 16)
    t_fast = time.perf_counter() - start
    start = time.perf_counter()
    reference = roi_pool(features, rois, 7, 1 / 16, impl="reference")
    t_ref = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nroi_pool 300 RoIs on (1, 512, 38, 63) at 7x7: fast {t_fast * 1e3:.0f} ms, "
              f"reference {t_ref * 1e3:.0f} ms")
    assert torch.equal(fast, reference)


# ----------------------------------------------------------------------------------------------
# RoIAlign: reference within 1e-5 of torchvision
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roi_align_reference_matches_torchvision(aligned, sampling_ratio, dtype):
    gen = torch.Generator().manual_seed(10 + sampling_ratio + 5 * aligned)
    for case in range(6):
        num_images = 1 + case % 2
        features = torch.randn(num_images, 3, 7 + case, 12 - case, generator=gen, dtype=dtype)
        rois = random_rois(gen, 8, num_images, 7 + case, 12 - case, 8, dtype)
        a, b, ga, gb = pool_both(features, rois, OUTPUT_SIZES[case % 3], 1 / 8, case,
                                 op=roi_align, sampling_ratio=sampling_ratio, aligned=aligned)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        torch.testing.assert_close(ga, gb, rtol=0, atol=1e-5)
        assert a.abs().max() > 0


def test_roi_align_no_rois_and_non_contiguous():
    features = torch.randn(1, 4, 6, 6).transpose(2, 3)
    for impl in ("fast", "reference"):
        assert roi_align(features, torch.zeros(0, 5), 2, 1.0, impl=impl).shape == (0, 4, 2, 2)
    rois = torch.tensor([[0, 0.5, 1.0, 4.5, 5.0]])
    torch.testing.assert_close(roi_align(features, rois, 3, 1.0, impl="reference"),
                               roi_align(features, rois, 3, 1.0), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", [roi_pool, roi_align])
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_bad_inputs_raise(op, impl):
    f = torch.randn(2, 3, 8, 8)
    good = torch.tensor([[0, 0.0, 0.0, 10.0, 10.0], [1, 5.0, 5.0, 30.0, 30.0]])
    cases = [
        (f[0], good, "features"),
        (f, good[:, 1:], "rois"),
        (f, good.long(), "floating"),
        (f, good.double(), "dtype"),
        (f, torch.tensor([[0, 0.0, 0.0, 10.0, 10.0], [1.5, 0.0, 0.0, 1.0, 1.0]]), "rois[1, 0]"),
        (f, torch.tensor([[2, 0.0, 0.0, 10.0, 10.0]]), "rois[0, 0]"),
        (f, torch.tensor([[-1, 0.0, 0.0, 10.0, 10.0]]), "rois[0, 0]"),
        (f, torch.tensor([[0, 0.0, float("nan"), 10.0, 10.0]]), "rois[0]"),
    ]
    for features, rois, message in cases:
        with pytest.raises(ValueError, match=message.replace("[", r"\[")):
            op(features, rois, 7, 1 / 16, impl=impl)
    with pytest.raises(ValueError, match="output_size"):
        op(f, good, 0, 1 / 16, impl=impl)
    with pytest.raises(ValueError, match="output_size"):
        op(f, good, (7, 7, 7), 1 / 16, impl=impl)
    with pytest.raises(ValueError, match="impl"):
        op(f, good, 7, 1 / 16, impl="slow")


def test_error_message_names_shape():
    with pytest.raises(ValueError, match=r"rois shape \(1, 5\)"):
        roi_pool(torch.randn(2, 3, 8, 8), torch.tensor([[3, 0.0, 0.0, 1.0, 1.0]]), 7, 1.0)


# ----------------------------------------------------------------------------------------------
# CUDA
# ----------------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roi_pool_cuda(dtype):
    gen = torch.Generator().manual_seed(11)
    features = torch.randn(2, 3, 12, 10, generator=gen, dtype=dtype).round().cuda()
    rois = random_rois(gen, 30, 2, 12, 10, 8, dtype).cuda()
    for size in OUTPUT_SIZES:
        a, b, ga, gb = pool_both(features, rois, size, 1 / 8)
        assert a.is_cuda and b.is_cuda and gb.is_cuda
        assert torch.equal(a, b)
        # torchvision's CUDA backward adds with atomics, in no fixed order: equal up to rounding.
        torch.testing.assert_close(ga, gb)
        # ... and the CPU kernel gives the same values.
        assert torch.equal(a.cpu(), roi_pool(features.cpu(), rois.cpu(), size, 1 / 8))


@needs_cuda
def test_roi_align_cuda():
    gen = torch.Generator().manual_seed(12)
    features = torch.randn(2, 3, 12, 10, generator=gen).cuda()
    rois = random_rois(gen, 20, 2, 12, 10, 8).cuda()
    for aligned in (False, True):
        a, b, ga, gb = pool_both(features, rois, 7, 1 / 8, op=roi_align, aligned=aligned)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        torch.testing.assert_close(ga, gb, rtol=0, atol=1e-5)
