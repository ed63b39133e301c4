"""Reference (readable) vs fast implementations of the operations the notebooks teach.

Inputs look like what the model sees in the paper's VGG-16 setting: a 38 x 63 feature map with
9 anchors per position (21,546 anchors), proposals from those anchors nudged by small random
deltas (so they overlap like real RPN output), RoIs of 16-500 px in a 600 x 1000 image.
"""
from __future__ import annotations

import torch
import torchvision

from frcnn_edu import anchors as fe_anchors
from frcnn_edu import boxes as fe_boxes
from frcnn_edu import roi as fe_roi
from frcnn_edu.rpn import generate_proposals

from .timing import compare


def proposal_like_boxes(num: int, device, image_size=(600, 1000), feature_size=(38, 63), seed: int = 0):
    """`num` boxes and scores that overlap like RPN proposals: anchors + small random deltas."""
    g = torch.Generator().manual_seed(seed)
    base = fe_anchors.generate_base_anchors()
    anchors = fe_anchors.shift_anchors(base, feature_size, 16)
    deltas = torch.randn(anchors.shape, generator=g) * torch.tensor([0.1, 0.1, 0.2, 0.2])
    boxes = fe_boxes.clip_boxes(fe_boxes.decode(deltas, anchors), image_size)
    keep = fe_boxes.remove_small_boxes(boxes, 1.0)
    boxes = boxes[keep]
    scores = torch.rand(boxes.shape[0], generator=g)
    top = scores.topk(min(num, boxes.shape[0])).indices
    return boxes[top].to(device), scores[top].to(device)


def random_rois(num: int, device, image_size=(600, 1000), seed: int = 0):
    """(num, 5) RoIs on image 0: sizes 16-500 px inside a 600 x 1000 image."""
    g = torch.Generator().manual_seed(seed)
    height, width = image_size
    wh = torch.exp(torch.empty(num, 2).uniform_(torch.log(torch.tensor(16.)).item(),
                                                torch.log(torch.tensor(500.)).item(), generator=g))
    wh = torch.minimum(wh, torch.tensor([width - 1.0, height - 1.0]))
    xy = torch.rand(num, 2, generator=g) * (torch.tensor([width, height]) - wh)
    rois = torch.cat([torch.zeros(num, 1), xy, xy + wh], dim=1)
    return rois.to(device)


def bench_ops(device, sync, *, quick: bool) -> list[dict]:
    """Rows {"op", "size", "reference_s", "fast_s", "ratio"}; "fast" is torchvision's kernel."""
    rows = []
    reps = 1 if quick else 3
    cheap = 2 if quick else 10      # repetitions of the millisecond-scale operations

    def add(op, size, fns, reps=reps):
        result = compare(fns, warmup=1, reps=reps, sync=sync)
        names = list(fns)
        ref, fast = result[names[0]]["median"], result[names[1]]["median"]
        rows.append({"op": op, "size": size, "a": names[0], "b": names[1],
                     "reference_s": ref, "fast_s": fast, "ratio": ref / fast})
        return result

    # IoU: frcnn_edu has one implementation (broadcasting); compare with torchvision's.
    for n, m in ((21546, 8), (2000, 2000)):
        a, _ = proposal_like_boxes(n, device)
        b, _ = proposal_like_boxes(m, device, seed=1)
        add("box_iou (frcnn_edu, validate=False vs torchvision.ops.box_iou)", f"{a.shape[0]} x {b.shape[0]}",
            {"frcnn_edu": lambda a=a, b=b: fe_boxes.box_iou(a, b, validate=False),
             "torchvision": lambda a=a, b=b: torchvision.ops.box_iou(a, b)}, reps=cheap)
    a, _ = proposal_like_boxes(2000, device)
    add("box_iou validate=True vs validate=False", "2000 x 2000",
        {"validate=True": lambda: fe_boxes.box_iou(a, a),
         "validate=False": lambda: fe_boxes.box_iou(a, a, validate=False)},
        reps=cheap)

    # NMS at the test (2,000 after top-6,000) and training (12,000) sizes of the proposal layer.
    for n in ((500, 2000) if quick else (2000, 12000)):
        boxes, scores = proposal_like_boxes(n, device)
        result = add("nms @ 0.7", f"{boxes.shape[0]} boxes",
                     {"reference": lambda b=boxes, s=scores: fe_boxes.nms(b, s, 0.7, impl="reference", validate=False),
                      "fast": lambda b=boxes, s=scores: fe_boxes.nms(b, s, 0.7, impl="fast", validate=False)},
                     reps=1 if quick else (2 if n > 5000 else reps))
        rows[-1]["size"] += f" ({result['fast']['last'].numel()} kept)"

    # The whole proposal layer on the 21,546 anchors of a 600 x 1000 image, test and training
    # settings (pre-NMS top 6,000 -> 300 and 12,000 -> 2,000), with either NMS.
    g = torch.Generator().manual_seed(0)
    anchors = fe_anchors.shift_anchors(fe_anchors.generate_base_anchors(), (38, 63), 16).to(device)
    logits = torch.randn(1, anchors.shape[0], generator=g).to(device)
    deltas = (torch.randn(1, anchors.shape[0], 4, generator=g) * torch.tensor([0.1, 0.1, 0.2, 0.2])).to(device)
    for pre, post in (((500, 50),) if quick else ((6000, 300), (12000, 2000))):
        add("proposal layer (21,546 anchors, 600x1000)", f"top {pre} -> NMS 0.7 -> {post}",
            {impl: lambda impl=impl, pre=pre, post=post: generate_proposals(
                logits, deltas, anchors, [(600, 1000)], pre_nms_top_n=pre, post_nms_top_n=post,
                min_sizes=16.0, nms_impl=impl) for impl in ("reference", "fast")},
            reps=1 if quick else 2)

    # RoI max pooling: 300 RoIs (the test-time proposal count) on a VGG-16 conv5_3 map.
    features = torch.randn(1, 512, 38, 63, device=device)
    rois = random_rois(30 if quick else 300, device)
    add("roi_pool 7x7 forward", f"{rois.shape[0]} RoIs on (1, 512, 38, 63)",
        {"reference": lambda: fe_roi.roi_pool(features, rois, 7, 1 / 16, impl="reference", validate=False),
         "fast": lambda: fe_roi.roi_pool(features, rois, 7, 1 / 16, impl="fast", validate=False)},
        reps=1)

    # Anchor shifting: every anchor of a 38 x 63 map (21,546).
    base = fe_anchors.generate_base_anchors().to(device)
    add("shift_anchors", "38 x 63 x 9",
        {"reference": lambda: fe_anchors.shift_anchors(base, (38, 63), 16, impl="reference"),
         "fast": lambda: fe_anchors.shift_anchors(base, (38, 63), 16, impl="fast")}, reps=cheap)
    return rows
