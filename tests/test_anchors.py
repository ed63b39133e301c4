"""Tests for frcnn_edu.anchors: base anchors, the legacy table, shifting, order, cache, inside-image."""

import math

import pytest
import torch

from frcnn_edu import anchors as A

LEGACY_TABLE = [
    [-84.0, -40.0, 99.0, 55.0],
    [-176.0, -88.0, 191.0, 103.0],
    [-360.0, -184.0, 375.0, 199.0],
    [-56.0, -56.0, 71.0, 71.0],
    [-120.0, -120.0, 135.0, 135.0],
    [-248.0, -248.0, 263.0, 263.0],
    [-36.0, -80.0, 51.0, 95.0],
    [-80.0, -168.0, 95.0, 183.0],
    [-168.0, -344.0, 183.0, 359.0],
]


# ---------------------------------------------------------------------------
# base anchors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_base_anchors_area_ratio_centre_and_order(dtype):
    sizes, ratios = (128, 256, 512), (0.5, 1.0, 2.0)
    base = A.generate_base_anchors(sizes, ratios, dtype=dtype)
    assert base.shape == (9, 4) and base.dtype == dtype
    w = base[:, 2] - base[:, 0]
    h = base[:, 3] - base[:, 1]
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    for a in range(9):
        r, s = ratios[a // 3], sizes[a % 3]  # ratios outer, sizes inner
        assert math.isclose(float(w[a] * h[a]), s * s, rel_tol=rtol)  # area size^2
        assert math.isclose(float(h[a] / w[a]), r, rel_tol=rtol)  # ratio = height / width
    # centred on (0, 0)
    assert torch.allclose(base[:, 0] + base[:, 2], torch.zeros(9, dtype=dtype), atol=1e-4)
    assert torch.allclose(base[:, 1] + base[:, 3], torch.zeros(9, dtype=dtype), atol=1e-4)
    # ratio 0.5 is wide, 2 is tall
    assert w[0] > h[0] and h[6] > w[6]


def test_base_anchors_errors():
    with pytest.raises(ValueError, match=r"sizes\[1\] must be positive and finite, got 0.0"):
        A.generate_base_anchors(sizes=(128, 0, 512))
    with pytest.raises(ValueError, match=r"ratios\[2\] must be positive and finite, got -1.0"):
        A.generate_base_anchors(ratios=(0.5, 1.0, -1.0))
    with pytest.raises(ValueError, match=r"sizes must not be empty"):
        A.generate_base_anchors(sizes=())
    with pytest.raises(ValueError, match=r"ratios must not be empty"):
        A.generate_base_anchors(ratios=[])


def test_legacy_anchors_exact_table():
    legacy = A.generate_base_anchors_legacy()
    assert legacy.dtype == torch.float32
    assert legacy.tolist() == LEGACY_TABLE
    # inclusive-pixel boxes centred at 7.5: width x2 - x1 + 1, centre x1 + (width - 1) / 2
    widths = legacy[:, 2] - legacy[:, 0] + 1
    assert torch.equal(legacy[:, 0] + (widths - 1) / 2, torch.full((9,), 7.5))
    assert widths[:3].tolist() == [184.0, 368.0, 736.0]  # 23 px * (8, 16, 32): np.round(sqrt(512)) = 23


# ---------------------------------------------------------------------------
# shifting and the anchor order
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("feature_size", [(0, 0), (0, 5), (1, 1), (3, 5), (38, 63)])
@pytest.mark.parametrize("stride, offset", [(16, 0.5), (16, 0.0), (7.3, 0.3)])
def test_shift_reference_equals_fast(feature_size, stride, offset):
    base = A.generate_base_anchors()
    ref = A.shift_anchors(base, feature_size, stride, offset, impl="reference")
    fast = A.shift_anchors(base, feature_size, stride, offset, impl="fast")
    h, w = feature_size
    assert fast.shape == ref.shape == (h * w * 9, 4)
    assert fast.dtype == ref.dtype == torch.float32
    assert torch.equal(ref, fast)


def test_shift_float64_and_errors():
    base = A.generate_base_anchors(dtype=torch.float64)
    out = A.shift_anchors(base, (4, 6), 16)
    assert out.dtype == torch.float64
    assert torch.equal(out, A.shift_anchors(base, (4, 6), 16, impl="reference"))
    with pytest.raises(ValueError, match=r"impl must be 'fast' or 'reference'"):
        A.shift_anchors(base, (4, 6), 16, impl="loop")
    with pytest.raises(ValueError, match=r"stride must be a positive number, got 0"):
        A.shift_anchors(base, (4, 6), 0)
    with pytest.raises(ValueError, match=r"feature_size must be \(H, W\) with H, W >= 0"):
        A.shift_anchors(base, (-1, 6), 16)
    with pytest.raises(ValueError, match=r"base_anchors must have shape \(N, 4\)"):
        A.shift_anchors(base[:, :3], (4, 6), 16)


def test_anchor_generator_order():
    sizes, ratios, stride = (32, 64), (0.5, 1.0, 2.0), 16
    gen = A.AnchorGenerator(sizes, ratios, stride)
    k = gen.num_anchors
    assert k == 6 and gen.base_anchors.shape == (6, 4)
    H, W = 5, 7
    anchors = gen((H, W))
    assert anchors.shape == (H * W * k, 4)
    base = gen.base_anchors
    for y in range(H):
        for x in range(W):
            for a in range(k):
                box = anchors[(y * W + x) * k + a]
                centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
                assert math.isclose(float(centre[0]), (x + 0.5) * stride, abs_tol=1e-4)
                assert math.isclose(float(centre[1]), (y + 0.5) * stride, abs_tol=1e-4)
                size = box[2:] - box[:2]
                assert torch.allclose(size, base[a, 2:] - base[a, :2])


def test_flatten_head_output_order():
    N, k, H, W = 2, 9, 4, 5
    for v in (4, 2, 1):
        for (n, a, c, y, x) in [(0, 0, 0, 0, 0), (1, 3, v - 1, 2, 4), (0, 8, 0, 3, 1), (1, 5, v // 2, 1, 0)]:
            head = torch.zeros(N, k * v, H, W)
            head[n, a * v + c, y, x] = 1.0
            flat = A.flatten_head_output(head, v)
            assert flat.shape == (N, H * W * k, v)
            row = (y * W + x) * k + a
            assert flat[n, row, c] == 1.0
            assert flat.sum() == 1.0
            # the same via channels_last memory layout
            flat_cl = A.flatten_head_output(head.to(memory_format=torch.channels_last), v)
            assert torch.equal(flat_cl, flat)
    # ... and the row lines up with the AnchorGenerator's anchor of (y, x, a)
    gen = A.AnchorGenerator(stride=16)
    anchors = gen((H, W))
    y, x, a = 2, 3, 7
    box = anchors[(y * W + x) * k + a]
    assert torch.allclose((box[:2] + box[2:]) / 2, torch.tensor([(x + 0.5) * 16, (y + 0.5) * 16]))


def test_flatten_head_output_errors():
    with pytest.raises(ValueError, match=r"x has 10 channels, not a multiple of values_per_anchor = 4"):
        A.flatten_head_output(torch.zeros(1, 10, 3, 3), 4)
    with pytest.raises(ValueError, match=r"x must be a tensor of shape \(N, k\*v, H, W\), got \(36, 3, 3\)"):
        A.flatten_head_output(torch.zeros(36, 3, 3), 4)
    with pytest.raises(ValueError, match=r"values_per_anchor must be positive"):
        A.flatten_head_output(torch.zeros(1, 36, 3, 3), 0)


# ---------------------------------------------------------------------------
# AnchorGenerator cache and errors
# ---------------------------------------------------------------------------


def test_anchor_generator_cache_reuse_keys_and_bound():
    gen = A.AnchorGenerator()
    first = gen((3, 4))
    assert gen((3, 4)) is first  # reused, not rebuilt
    assert gen((3, 4), device="cpu") is first
    as64 = gen((3, 4), dtype=torch.float64)
    assert as64 is not first and as64.dtype == torch.float64
    assert torch.equal(as64.float(), first)
    meta = gen((3, 4), device="meta")  # another device: a different cache entry
    assert meta is not first and meta.device.type == "meta" and meta.shape == first.shape
    assert gen((4, 3)) is not first
    # bounded: many sizes never grow the cache past max_cache_size (LRU)
    for s in range(1, 60):
        gen((s, 2))
        assert len(gen._cache) <= gen.max_cache_size
    assert len(gen._cache) == gen.max_cache_size == 32
    assert gen((59, 2)) is gen((59, 2))
    # least recently used entries were dropped, recent ones kept
    assert (3, 4, torch.device("cpu"), torch.float32) not in gen._cache
    key = lambda h: (h, 2, torch.device("cpu"), torch.float32)  # noqa: E731
    assert key(28) in gen._cache and key(27) not in gen._cache  # (28, 2) is now the oldest
    oldest = gen((28, 2))  # using it makes it the most recent ...
    gen((100, 1))  # ... so this insertion evicts (29, 2) instead
    assert key(29) not in gen._cache
    assert gen((28, 2)) is oldest
    assert A.AnchorGenerator()((3, 4)) is not first  # caches are per generator
    # the maths without the cache: the same anchors, a new tensor
    fresh = gen.grid_anchors((3, 4))
    assert fresh is not first and torch.equal(fresh, first)
    assert torch.equal(fresh, A.shift_anchors(gen.base_anchors, (3, 4), gen.stride, gen.offset))


def test_anchor_generator_empty_map_and_errors():
    gen = A.AnchorGenerator()
    for size in [(0, 0), (0, 5), (5, 0)]:
        out = gen(size)
        assert out.shape == (0, 4) and out.dtype == torch.float32
    with pytest.raises(ValueError, match=r"stride must be a positive number, got -16"):
        A.AnchorGenerator(stride=-16)
    with pytest.raises(ValueError, match=r"stride must be a positive number, got 0"):
        A.AnchorGenerator(stride=0)
    with pytest.raises(ValueError, match=r"sizes\[0\] must be positive"):
        A.AnchorGenerator(sizes=(0, 256))
    with pytest.raises(ValueError, match=r"ratios\[1\] must be positive"):
        A.AnchorGenerator(ratios=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"feature_size must be \(H, W\)"):
        gen((3,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_anchor_generator_cuda():
    gen = A.AnchorGenerator()
    on_gpu = gen((5, 6), device="cuda")
    assert on_gpu.is_cuda and gen((5, 6), device="cuda:0") is on_gpu
    assert torch.equal(on_gpu.cpu(), gen((5, 6)))


# ---------------------------------------------------------------------------
# inside_image and the paper's anchor count (Sec. 3.3)
# ---------------------------------------------------------------------------


def test_inside_image_rule():
    anchors = torch.tensor([
        [0.0, 0.0, 100.0, 60.0],  # exactly the image: inside
        [-1.0, 0.0, 50.0, 50.0],  # 1 px over the left edge
        [0.0, 0.0, 100.5, 50.0],  # over the right edge
        [10.0, 10.0, 20.0, 61.0],  # over the bottom edge
    ])
    assert A.inside_image(anchors, (60, 100)).tolist() == [True, False, False, False]
    assert A.inside_image(anchors, (60, 100), allowed_border=1).tolist() == [True, True, True, True]
    assert A.inside_image(anchors, (60, 100), allowed_border=float("inf")).all()
    assert A.inside_image(anchors, (60, 100), allowed_border=-1).tolist() == [False] * 4
    empty = A.inside_image(torch.zeros(0, 4), (60, 100))
    assert empty.shape == (0,) and empty.dtype == torch.bool
    with pytest.raises(ValueError, match=r"allowed_border must be a number"):
        A.inside_image(anchors, (60, 100), allowed_border=float("nan"))
    with pytest.raises(ValueError, match=r"anchors\[0\] has x2 < x1"):
        A.inside_image(torch.tensor([[5.0, 0.0, 1.0, 1.0]]), (60, 100))


def test_paper_anchor_count_1000x600():
    # Sec. 3.3: a 1000 x 600 image has "roughly 20,000" anchors (60 x 40 x 9 = 21,600);
    # VGG-16 with Caffe's ceil-rounded pooling gives a 38 x 63 map.
    gen = A.AnchorGenerator()  # 128, 256, 512 x 0.5, 1, 2; stride 16
    anchors = gen((38, 63))
    assert anchors.shape[0] == 38 * 63 * 9 == 21546
    inside = int(A.inside_image(anchors, (600, 1000), allowed_border=0).sum())
    # py-faster-rcnn's own rule (legacy anchors at x * 16, x1 >= 0, y1 >= 0, x2 < W, y2 < H)
    legacy = A.shift_anchors(A.generate_base_anchors_legacy(), (38, 63), 16, offset=0.0)
    legacy_inside = int(((legacy[:, :2] >= 0).all(1) & (legacy[:, 2] < 1000) & (legacy[:, 3] < 600)).sum())
    print(f"\n1000x600 image, 38x63 map: {anchors.shape[0]} anchors, {inside} inside the image "
          f"(py-faster-rcnn's legacy anchors and rule: {legacy_inside}); the paper says about 6,000")
    assert inside == 8044
    assert legacy_inside == 8151
    # The paper's "about 6,000" matches a typical PASCAL image rescaled to 600 x 800 better:
    typical = int(A.inside_image(gen((38, 50)), (600, 800)).sum())
    assert 4000 <= typical <= 8000
