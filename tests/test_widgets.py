"""The explorers of frcnn_edu.widgets, without a browser or a kernel.

Setting a control's `.value` fires its observers exactly as dragging the slider does in
JupyterLab; each test checks the numbers (`.state`) and the drawing (patches on the axes, the PNG).
"""
import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

import frcnn_edu as fe  # noqa: E402
from frcnn_edu import widgets as W  # noqa: E402
from frcnn_edu.widgets._base import MIN_FONT_PT, RATIO_COLOURS, count_boxes  # noqa: E402


@pytest.fixture(scope="module")
def small_image():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 200, 300, generator=g)


def _widget_names(explorer):
    """Every control must be inside the displayed container."""
    names = set()
    stack = [explorer.widget]
    while stack:
        w = stack.pop()
        names.add(id(w))
        stack.extend(getattr(w, "children", ()))
    return names


# ----------------------------------------------------------------------------------------------
# The computations
# ----------------------------------------------------------------------------------------------
def test_anchors_at_matches_anchor_generator():
    sizes, ratios, stride = (32, 64), (0.5, 1.0, 2.0), 16
    grid = fe.anchors.AnchorGenerator(sizes, ratios, stride)((5, 7))
    k = len(sizes) * len(ratios)
    for x, y in [(0, 0), (3, 2), (6, 4)]:
        row = (y * 7 + x) * k
        torch.testing.assert_close(W.anchors_at((x, y), sizes, ratios, stride), grid[row:row + k])


def test_window_box_and_receptive_field():
    assert W.window_box((0, 0), 16).tolist() == [-16, -16, 32, 32]          # 3 x 3 cells, 48 px
    assert W.window_box((2, 1), 8).tolist() == [8, 0, 32, 24]
    assert W.rpn_receptive_field("zf") == (171, 16)                         # Sec. 3.1
    assert W.rpn_receptive_field("vgg16") == (228, 16)
    box = W.receptive_field_box((1, 2), 16, 171)
    assert box.tolist() == pytest.approx([24 - 85.5, 40 - 85.5, 24 + 85.5, 40 + 85.5])
    assert W.feature_map_size((600, 1000), 16) == (38, 63)


def test_label_anchors_is_assign_without_sampling():
    anchors = fe.anchors.AnchorGenerator((32, 64), (0.5, 1.0, 2.0), 16)((8, 8))
    gt = torch.tensor([[20.0, 30.0, 70.0, 90.0]])
    labels = W.label_anchors(anchors, gt, (128, 128))
    ref, _ = fe.rpn.assign_anchor_targets(anchors, gt, (128, 128), sample=False)
    assert torch.equal(labels, ref)
    # without sampling every inside anchor is labelled: -1 only for border or in-between IoU
    inside = fe.anchors.inside_image(anchors, (128, 128))
    best = fe.boxes.box_iou(anchors, gt).max(dim=1).values
    assert bool(((labels == -1) == (~inside | ((best >= 0.3) & (labels != 1)))).all())
    assert int((labels == 1).sum()) >= 1


def test_kept_proposals_is_nms_then_top_n():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(50, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 10 + torch.rand(50, 2, generator=g) * 40], dim=1)
    scores = torch.rand(50, generator=g)
    kept = W.kept_proposals(boxes, scores, 0.5, 1000)
    assert 5 < len(kept) < 50
    assert bool((scores[kept][:-1] >= scores[kept][1:]).all())              # best first
    iou = fe.boxes.box_iou(boxes, boxes)
    assert iou[kept][:, kept].triu(diagonal=1).max() <= 0.5                 # no two kept overlap > 0.5
    for i in sorted(set(range(50)) - set(kept.tolist())):                   # each dropped box: covered
        assert ((iou[i, kept] > 0.5) & (scores[kept] >= scores[i])).any(), i  # by a better kept one
    assert torch.equal(W.kept_proposals(boxes, scores, 0.5, 5), kept[:5])   # NMS first, then top 5
    assert len(W.kept_proposals(boxes, scores, 1.0, 1000)) == 50              # IoU > 1: none suppressed


def test_pooling_bins_and_pool_one_roi():
    features = torch.randn(2, 8, 8)
    bins = W.pooling_bins((16, 16, 79, 63), 3, 1 / 16, (8, 8))
    # snapped RoI: columns round(16/16) = 1 .. round(79/16) = 5 (5 cells), rows 1 .. 4 (4 cells);
    # bin j of 3 spans 1 + floor(j * n / 3) up to 1 + ceil((j + 1) * n / 3)
    assert (bins["w_starts"], bins["w_ends"]) == ([1, 2, 4], [3, 5, 6])
    assert (bins["h_starts"], bins["h_ends"]) == ([1, 2, 3], [3, 4, 5])
    assert bins["cells"] == (1, 1, 6, 5) and bins["empty"] == 0               # cells 1..5, rows 1..4
    off = W.pooling_bins((96, 96, 180, 180), 3, 1 / 16, (8, 8))              # cells 6..11 on an 8-map
    assert off["empty"] == 8 and off["cells"] == (6, 6, 8, 8)                # 1 of 3 x 3 bins left
    pooled = W.pool_one_roi(features, (16, 16, 79, 63), (3, 3), 1 / 16)
    assert pooled.shape == (2, 3, 3)
    for i in range(3):                                                        # each output: its bin's max
        for j in range(3):
            window = features[:, bins["h_starts"][i]:bins["h_ends"][i], bins["w_starts"][j]:bins["w_ends"][j]]
            assert torch.equal(pooled[:, i, j], window.amax(dim=(1, 2)))


def test_jittered_proposals_cover_the_ground_truth():
    gt = torch.tensor([[40.0, 40.0, 100.0, 120.0], [150.0, 20.0, 200.0, 60.0]])
    boxes, scores = W.jittered_proposals(gt, (256, 256))
    assert boxes.shape[1] == 4 and len(boxes) == len(scores) > 100
    assert bool((scores[:-1] >= scores[1:]).all())                          # best first
    assert bool((boxes >= 0).all()) and bool((boxes[:, 2] <= 256).all())
    assert W.recall_of(boxes, gt) == {0.5: 1.0, 0.7: 1.0}


# ----------------------------------------------------------------------------------------------
# The explorers
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_anchor_explorer(small_image):
    ex = W.anchor_explorer(small_image, sizes=(32, 64, 128), position=(5, 4))
    assert set(ex.controls) == {"size1", "size2", "size3", "ratios", "stride", "x", "y", "backbone"}
    assert {id(c) for c in ex.controls.values()} <= _widget_names(ex)
    s = ex.state
    assert s["feature_size"] == (13, 19) and s["k"] == 9 and s["total_anchors"] == 13 * 19 * 9
    assert s["receptive_field"] == 171
    assert count_boxes(ex.ax) == 9 + 2                                      # anchors, window, field
    anchors_before, png_before, count = s["anchors"].clone(), ex.png, ex.redraw_count

    ex.controls["x"].value = 7                                              # move 2 cells right
    assert ex.redraw_count == count + 1 and ex.png != png_before
    assert ex.state["position"] == (7, 4)
    torch.testing.assert_close(ex.state["anchors"], anchors_before + torch.tensor([32.0, 0, 32, 0]))

    ex.controls["ratios"].value = (1.0, 2.0)                                # k = 6
    assert ex.state["k"] == 6 and count_boxes(ex.ax) == 6 + 2
    ex.controls["backbone"].value = None                                    # no receptive field
    assert ex.state["receptive_field"] is None and count_boxes(ex.ax) == 6 + 1
    ex.controls["backbone"].value = "vgg16"
    assert ex.state["receptive_field"] == 228 and count_boxes(ex.ax) == 6 + 2

    ex.controls["size3"].value = 512                                        # huge anchor: crosses
    assert ex.state["sizes"] == (32, 64, 512) and ex.state["cross_boundary"] >= 2

    ex.controls["stride"].value = 32                                        # map shrinks, x follows
    assert ex.state["feature_size"] == (7, 10)
    assert ex.controls["x"].max == 9 and ex.controls["y"].max == 6
    x, y = ex.state["position"]
    assert 0 <= x <= 9 and 0 <= y <= 6
    assert ex.state["centre"] == ((x + 0.5) * 32, (y + 0.5) * 32)

    ex.controls["ratios"].value = ()                                        # nothing selected
    assert ex.state["k"] == 0 and count_boxes(ex.ax) == 2


def test_anchor_explorer_default_photo_and_display():
    ex = W.anchor_explorer()
    assert ex.image.shape[-2:] == (600, 902)                                # shorter side 600
    assert ex.state["feature_size"] == (38, 57) and ex.state["k"] == 9
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert ex.png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_assignment_explorer():
    ex = W.assignment_explorer()
    c = ex.controls
    counts = ex.state["counts"]
    assert sum(counts.values()) == len(ex.anchors) == 16 * 16 * 9
    assert counts["positive"] >= 1                                          # the highest-IoU rule
    assert count_boxes(ex.ax) == counts["positive"] + 1                     # positives + the box

    c["pos_iou"].value = 0.35                                               # more positives
    assert ex.state["counts"]["positive"] > counts["positive"]
    assert count_boxes(ex.ax) == ex.state["counts"]["positive"] + 1
    assert set(ex.state["by_best_rule"]) <= set(ex.state["positive"])

    c["neg_iou"].value = 0.6                                                # above pos: pos follows
    assert c["pos_iou"].value == pytest.approx(0.6)
    ex.set(pos_iou=0.7, neg_iou=0.3)
    with pytest.raises(ValueError, match="unknown control"):
        ex.set(iou=0.5)

    before = ex.state["counts"]["ignored"]
    c["cross_boundary"].value = "use"                                       # border anchors count
    assert ex.state["counts"]["ignored"] < before

    count = ex.redraw_count
    ex.set(x=104, y=104, w=64, h=64)                                        # one redraw for four
    assert ex.redraw_count == count + 1
    gt = ex.state["gt_box"].tolist()
    assert gt == [104, 104, 168, 168]
    labels, _ = fe.rpn.assign_anchor_targets(ex.anchors, ex.state["gt_box"][None], (256, 256),
                                             allowed_border=float("inf"), sample=False)
    assert torch.equal(ex.state["labels"], labels)
    # a 64 x 64 box on the stride-16 grid matches a 64 x 64 anchor exactly: IoU 1, no rule (i) needed
    assert 1.0 in ex.state["max_iou"].tolist() and ex.state["by_best_rule"] == []


def test_proposal_explorer_given_boxes(small_image):
    gt = torch.tensor([[10.0, 10.0, 60.0, 60.0], [150.0, 100.0, 250.0, 180.0]])
    boxes = torch.tensor([[10.0, 10.0, 60.0, 60.0],      # 0: gt 0 exactly
                          [12.0, 12.0, 62.0, 62.0],      # 1: IoU 0.85 with box 0
                          [20.0, 20.0, 70.0, 70.0],      # 2: IoU 0.47 with box 0
                          [160.0, 100.0, 250.0, 180.0],  # 3: IoU 0.9 with gt 1
                          [0.0, 150.0, 30.0, 190.0]])    # 4: background
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    ex = W.proposal_explorer(small_image, gt, boxes, scores, top_n=5)
    assert ex.state["source"] == "given proposals"
    assert ex.state["kept"] == [0, 2, 3, 4] and ex.state["num_after_nms"] == 4
    assert ex.state["recall"] == {0.5: 1.0, 0.7: 1.0}
    assert count_boxes(ex.ax) == 4 + 2                                      # kept + ground truth

    ex.controls["nms_iou"].value = 0.4                                      # box 2 goes too
    assert ex.state["kept"] == [0, 3, 4] and count_boxes(ex.ax) == 3 + 2
    ex.controls["nms_iou"].value = 0.9                                      # nothing suppressed
    assert ex.state["kept"] == [0, 1, 2, 3, 4]
    ex.controls["top_n"].value = 2                                          # gt 1 is lost
    assert ex.state["kept"] == [0, 1] and ex.state["recall"] == {0.5: 0.5, 0.7: 0.5}
    assert count_boxes(ex.ax) == 2 + 2


def test_proposal_explorer_defaults_without_checkpoint(tmp_path):
    ex = W.proposal_explorer(checkpoint=tmp_path / "missing.pt")
    assert ex.state["source"].startswith("random boxes jittered")
    n_before = len(ex.state["kept"])
    ex.controls["nms_iou"].value = 0.3                                      # stricter NMS
    assert ex.state["num_after_nms"] < ex.state["num_proposals"]
    assert len(ex.state["kept"]) <= n_before
    assert count_boxes(ex.ax) == len(ex.state["kept"]) + len(ex.gt_boxes)


@pytest.mark.slow
def test_proposal_explorer_from_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = fe.FasterRCNN.from_preset("shapes_tiny", num_classes=5).eval()
    image, _ = W.shapes_sample()
    # proposals_before_nms switches the RPN's NMS off for its own call only
    config = model.config
    boxes, scores = W.proposals_before_nms(model, image)
    assert model.config == config and config.rpn_nms_iou == 0.7 and config.rpn_post_nms_top_n_test == 300
    after = model.propose([image])[0]
    assert len(after["boxes"]) <= 300 < len(boxes)
    keep = fe.boxes.nms(boxes, scores, 0.7)[:300]
    torch.testing.assert_close(boxes[keep], after["boxes"])
    # the explorer loads a checkpoint file (by default the shipped frcnn_edu/assets/checkpoints/shapes_tiny.pt)
    path = fe.save_checkpoint(tmp_path / "tiny.pt", model)
    ex = W.proposal_explorer(checkpoint=path, top_n=1000)
    assert ex.state["source"] == "RPN of tiny.pt, before NMS"
    torch.testing.assert_close(ex.boxes, boxes)
    assert ex.state["kept"] == fe.boxes.nms(boxes, scores, 0.7)[:1000].tolist()
    ex.controls["nms_iou"].value = 0.5
    assert ex.state["kept"] == fe.boxes.nms(boxes, scores, 0.5)[:1000].tolist()


@pytest.mark.slow
def test_roi_pool_explorer(small_image):
    ex = W.roi_pool_explorer(small_image, roi=(32, 32, 111, 95), output_size=3)
    s = ex.state
    assert s["feature_size"] == (13, 19) and s["pooled"].shape == (1, 3, 3)
    assert s["bins"]["cells"] == (2, 2, 8, 7) and s["empty_bins"] == 0
    assert count_boxes(ex.ax) == 9 + 2                                      # bins, snapped, RoI
    torch.testing.assert_close(s["pooled"], W.pool_one_roi(ex.features, s["roi"], 3, 1 / 16))

    ex.controls["output_size"].value = 7
    assert ex.state["pooled"].shape == (1, 7, 7) and count_boxes(ex.ax) == 49 + 2
    ex.controls["x2"].value = 300                                           # to the right border
    ex.controls["x1"].value = 250                                           # RoI cells 16..19: 19 is off
    assert ex.state["empty_bins"] > 0
    assert count_boxes(ex.ax) == 49 - ex.state["empty_bins"] + 2
    empty = [(i, j) for i in range(7) for j in range(7)
             if ex.state["bins"]["w_ends"][j] <= ex.state["bins"]["w_starts"][j]]
    assert empty and all(float(ex.state["pooled"][0, i, j]) == 0.0 for i, j in empty)


def test_roi_pool_explorer_with_own_features(small_image):
    features = torch.randn(4, 13, 19)
    ex = W.roi_pool_explorer(small_image, features=features, output_size=2)
    assert "channel" in ex.controls and ex.state["pooled"].shape == (4, 2, 2)
    png, frame = ex.png, ex.frame
    ex.controls["channel"].value = (ex.controls["channel"].value + 1) % 4
    assert ex.png != png and ex.frame != frame
    with pytest.raises(ValueError, match="features must be"):
        W.roi_pool_explorer(small_image, features=torch.randn(13, 19))
    with pytest.raises(ValueError, match="image must be"):
        W.anchor_explorer(torch.rand(200, 300))


def test_roi_pool_explorer_opens_on_a_channel_that_responds(small_image):
    features = torch.zeros(5, 13, 19)
    features[1] = 0.2                                                        # weak everywhere
    features[3, 4:6, 5:8] = 3.0                                              # strong inside the RoI
    ex = W.roi_pool_explorer(small_image, features=features, roi=(64, 48, 160, 112), output_size=2)
    assert ex.controls["channel"].value == 3
    assert float(ex.state["pooled"][3].abs().max()) == 3.0
    assert "<table" in ex.legend.value and "3.00" in ex.legend.value         # the values, as text


# ----------------------------------------------------------------------------------------------
# Rendering, legibility, encoding, layout
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def explorers(small_image):
    return {"anchor": W.anchor_explorer(small_image, sizes=(32, 64, 128)),
            "assignment": W.assignment_explorer(),
            "proposal": W.proposal_explorer(small_image, torch.tensor([[10.0, 10.0, 60.0, 60.0]]),
                                            torch.tensor([[12.0, 12.0, 62.0, 62.0]]), torch.tensor([0.9])),
            "roi": W.roi_pool_explorer(small_image, output_size=3)}


def test_first_frames_are_png_and_legible(explorers):
    for name, ex in explorers.items():
        assert ex.frame[:8] == ex.png[:8] == b"\x89PNG\r\n\x1a\n", name      # from code: PNG
        assert ex.output.outputs[0]["data"].keys() == {"image/png", "text/plain"}
        # Shown at its own size (the Output is as wide as the picture): 1 pt = 1 CSS pt at dpi 96.
        assert ex.fig.dpi == 96 and ex.output.layout.min_width == f"{round(ex.fig.get_figwidth() * 96)}px"
        texts = [t for t in ex.fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]
        small = [(t.get_text(), t.get_fontsize()) for t in texts if t.get_fontsize() < MIN_FONT_PT]
        assert not small, f"{name}: text below {MIN_FONT_PT} pt: {small}"
        assert ex.caption.value and ex.legend.value                           # titles and legends: HTML


def test_controls_update_while_dragging_and_keep_their_readouts(explorers):
    for name, ex in explorers.items():
        sliders = [c for c in ex.controls.values() if hasattr(c, "continuous_update")]
        assert sliders and all(c.continuous_update for c in sliders), name
        assert all(c.readout for c in sliders if hasattr(c, "readout")), name
        assert all(int(c.style.description_width[:-2]) >= 120 for c in ex.controls.values()), name
        assert "frcnn-edu-explorer" in ex.widget._dom_classes
        controls = ex.widget.children[1]
        assert controls.layout.flex == "0 0 auto" and controls.layout.min_width   # never shrinks
        assert ex.widget.layout.flex_flow == "row wrap"                       # wraps when narrow


def test_kernel_restart_message_is_in_the_page(explorers):
    style = explorers["anchor"].widget.children[0].value
    assert "jupyter-widgets-disconnected" in style and "Kernel restarted" in style


def test_anchor_colours_are_ratios_and_styles_are_sizes(explorers):
    ex = explorers["anchor"]
    rects = [p for p in ex.ax.patches if p.get_linewidth() == 1.8]            # the k anchors
    k_sizes = len(ex.state["sizes"])
    for a, patch in enumerate(rects):
        ratio = ex.state["ratios"][a // k_sizes]
        assert matplotlib.colors.to_hex(patch.get_edgecolor()) == RATIO_COLOURS[ratio]
    styles = {p.get_linestyle() for p in rects[:k_sizes]}
    assert len(styles) == k_sizes                                             # one style per size


def test_browser_changes_are_coalesced(small_image):
    """A drag sends many values; the explorer draws at most one frame per interval and always
    ends on the last value (no backlog)."""
    import asyncio
    ex = W.anchor_explorer(small_image, sizes=(32, 64, 128), position=(2, 4))
    x = ex.controls["x"]

    async def drag():
        for value in range(3, 13):                                            # 10 values, no pause
            with x._lock_property(value=value):                               # as a browser update
                x.value = value
        await asyncio.sleep(0.5)

    count = ex.redraw_count
    asyncio.run(drag())
    assert ex.state["position"] == (12, 4)
    assert 1 <= ex.redraw_count - count < 10
    assert ex.frame[:3] == b"\xff\xd8\xff" and ex.frame_format == "jpeg"   # the browser gets JPEG
    assert ex.output.outputs[0]["data"].keys() == {"image/jpeg", "text/plain"}
    assert ex.png[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------
# The student's own functions
# ----------------------------------------------------------------------------------------------
def _swapped_anchors(sizes, ratios):                                        # a classic mistake
    return fe.anchors.generate_base_anchors(sizes, ratios)[:, [1, 0, 3, 2]]


def test_anchor_explorer_with_the_students_anchors(small_image):
    ex = W.anchor_explorer(small_image, sizes=(32, 64, 128), anchors_fn=fe.anchors.generate_base_anchors)
    assert ex.state["differing"] == [] and "match" in ex.message.value
    assert count_boxes(ex.ax) == 9 + 2

    wrong = W.anchor_explorer(small_image, sizes=(32, 64, 128), anchors_fn=_swapped_anchors)
    differing = wrong.state["differing"]
    assert len(differing) == 6                                                # the squares are right
    assert f"{len(differing)} of 9 boxes" in wrong.message.value
    assert count_boxes(wrong.ax) == 9 + 2 + len(differing)                    # + the expected boxes
    torch.testing.assert_close(wrong.state["reference"], ex.state["anchors"])

    def broken(sizes, ratios):
        raise ZeroDivisionError("oops")
    failing = W.anchor_explorer(small_image, anchors_fn=broken)
    assert "ZeroDivisionError: oops" in failing.message.value and failing.state["k"] == 0
    short = W.anchor_explorer(small_image, anchors_fn=lambda sizes, ratios: torch.zeros(3, 4))
    assert "(3, 4)" in short.message.value and "(9, 4)" in short.message.value
    failing.controls["x"].value = 3                                           # still moves, no traceback
    assert failing.state["position"][0] == 3


def _reference_assign(anchors, gt_boxes, image_size, pos_iou, neg_iou):
    return W.label_anchors(anchors, gt_boxes, image_size, pos_iou, neg_iou)


def _no_best_rule(anchors, gt_boxes, image_size, pos_iou, neg_iou):     # forgets rule (i)
    iou = fe.boxes.box_iou(anchors, gt_boxes).max(dim=1).values
    labels = torch.full((len(anchors),), -1)
    labels[iou < neg_iou] = 0
    labels[iou >= pos_iou] = 1
    labels[~fe.anchors.inside_image(anchors, image_size)] = -1
    return labels


def test_assignment_explorer_with_the_students_assign():
    ex = W.assignment_explorer(assign_fn=_reference_assign)
    assert ex.state["differing"] == [] and "match" in ex.message.value
    assert ex.controls["cross_boundary"].disabled

    wrong = W.assignment_explorer(assign_fn=_no_best_rule)
    assert len(wrong.state["differing"]) > 0
    assert f"{len(wrong.state['differing'])} of" in wrong.message.value
    rings = [c for c in wrong.ax.collections if c.get_sizes().tolist() == [90.0]]
    assert len(rings) == 1 and len(rings[0].get_offsets()) == len(wrong.state["differing"])

    failing = W.assignment_explorer(assign_fn=lambda *args: torch.zeros(5))
    assert "shape (5,)" in failing.message.value
    assert torch.equal(failing.state["labels"], failing.state["reference"])   # the package's, drawn


def test_moving_across_the_map_rarely_redraws_the_background():
    """The view is sticky: large anchors crossing the border widen it now and then, not every step
    (a full redraw costs ten times a blitted frame)."""
    ex = W.anchor_explorer()
    before = ex.background_count
    for _ in range(20):
        ex.controls["x"].value += 1                                          # out across the right border
    assert ex.background_count - before <= 4
