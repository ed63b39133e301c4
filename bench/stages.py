"""Where the time goes: frcnn_edu's forward pass split into its stages.

`staged_inference` and `staged_training_step` call the model's submodules in the order
FasterRCNN.forward (and RegionProposalNetwork.forward, FastRCNNHead.forward,
FasterRCNN.detector_losses / detect) call them, with a device sync and a clock reading between
stages. `check_staged_inference` proves the split computes what model(images) computes, so
these numbers stay honest when the package changes (a mismatch is reported in RESULTS.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from frcnn_edu.anchors import flatten_head_output
from frcnn_edu.fast_rcnn import fast_rcnn_loss, postprocess_detections, sample_proposal_targets
from frcnn_edu.roi import roi_pool
from frcnn_edu.rpn import generate_proposals, objectness_logit, rpn_loss

from .timing import Laps

# Stage -> the paper's Table 5 column (K40, VGG-16: conv 141 / proposal 10 / region-wise 47 ms).
PAPER_COLUMN = {
    "preprocess": "(not in the table)",
    "backbone": "conv",
    "rpn head": "proposal",
    "anchors": "proposal",
    "proposal layer": "proposal",
    "roi pool": "region-wise",
    "detector head (fc6, fc7, cls, bbox)": "region-wise",
    "post-processing": "region-wise",
}
PAPER_MS = {"conv": 141.0, "proposal": 10.0, "region-wise": 47.0, "total": 198.0}


def _head_fc(head, pooled):
    x = head.dropout(F.relu(head.fc6(pooled.flatten(1))))
    x = head.dropout(F.relu(head.fc7(x)))
    return head.cls_score(x), head.bbox_pred(x)


def staged_inference(model, images, sync) -> tuple[dict, list[dict]]:
    """({stage: seconds}, detections) for one eval forward pass. Call under inference_mode."""
    laps = Laps(sync)
    batch, _ = model.preprocess(images)
    laps.lap("preprocess")
    features = model.backbone(batch.tensors)
    laps.lap("backbone")
    rpn = model.rpn
    scores_map, deltas_map = rpn.head(features)
    laps.lap("rpn head")
    height, width = features.shape[-2:]
    anchors = rpn.anchor_generator((height, width), device=features.device, dtype=features.dtype)
    laps.lap("anchors")
    scores = flatten_head_output(scores_map, rpn.head.scores_per_anchor)
    deltas = flatten_head_output(deltas_map, 4)
    proposals, _ = generate_proposals(
        objectness_logit(scores), deltas, anchors, batch.image_sizes,
        pre_nms_top_n=rpn.pre_nms_top_n["test"], post_nms_top_n=rpn.post_nms_top_n["test"],
        nms_iou=rpn.nms_iou, min_sizes=model._min_sizes(batch), nms_impl=rpn.nms_impl)
    laps.lap("proposal layer")
    head = model.roi_head
    rois = torch.cat([torch.cat([p.new_full((p.shape[0], 1), b), p], dim=1) for b, p in enumerate(proposals)])
    pooled = roi_pool(features, rois, head.roi_output_size, head.spatial_scale, impl=head.roi_pool_impl)
    laps.lap("roi pool")
    class_logits, box_deltas = _head_fc(head, pooled)
    laps.lap("detector head (fc6, fc7, cls, bbox)")
    cfg = model.config
    counts = [p.shape[0] for p in proposals]
    results = []
    for b, (logits, deltas_b, image_proposals) in enumerate(
            zip(class_logits.split(counts), box_deltas.split(counts), proposals)):
        boxes, labels, det_scores = postprocess_detections(
            logits, deltas_b, image_proposals, batch.image_sizes[b], score_thresh=cfg.score_thresh,
            nms_iou=cfg.det_nms_iou, detections_per_img=cfg.detections_per_img,
            box_coder_weights=cfg.box_coder_weights, nms_impl=cfg.nms_impl)
        boxes = model._scale_boxes([boxes], [batch.scales[b]], forward=False)[0]
        h, w = batch.original_sizes[b]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        results.append({"boxes": boxes, "labels": labels, "scores": det_scores})
    laps.lap("post-processing")
    return laps.times, results


def same_detections(a: list[dict], b: list[dict]) -> bool:
    """True when two lists of detections are equal (to float round-off)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        for key in ("boxes", "labels", "scores"):
            if x[key].shape != y[key].shape:
                return False
            if not torch.allclose(x[key].float().cpu(), y[key].float().cpu(), atol=1e-4, rtol=1e-4):
                return False
    return True


def staged_training_step(model, optimizer, images, targets, sync) -> tuple[dict, dict]:
    """({stage: seconds}, losses) of one training step (forward, backward, SGD step) in train mode."""
    laps = Laps(sync)
    batch, targets = model.preprocess(images, targets)
    laps.lap("preprocess (+ target checks)")
    features = model.backbone(batch.tensors)
    laps.lap("backbone")
    rpn = model.rpn
    scores_map, deltas_map = rpn.head(features)
    laps.lap("rpn head")
    height, width = features.shape[-2:]
    anchors = rpn.anchor_generator((height, width), device=features.device, dtype=features.dtype)
    laps.lap("anchors")
    scores = flatten_head_output(scores_map, rpn.head.scores_per_anchor)
    deltas = flatten_head_output(deltas_map, 4)
    with torch.no_grad():
        proposals, _ = generate_proposals(
            objectness_logit(scores.detach()), deltas.detach(), anchors, batch.image_sizes,
            pre_nms_top_n=rpn.pre_nms_top_n["train"], post_nms_top_n=rpn.post_nms_top_n["train"],
            nms_iou=rpn.nms_iou, min_sizes=model._min_sizes(batch), nms_impl=rpn.nms_impl)
    laps.lap("proposal layer")
    labels, regression_targets = rpn.targets(anchors, targets, batch.image_sizes)
    laps.lap("anchor targets")
    loss_rpn_cls, loss_rpn_box = rpn_loss(
        scores, deltas, labels, regression_targets, num_locations=height * width, lambda_=rpn.lambda_,
        normalization=rpn.loss_normalization, batch_size_per_image=rpn.batch_size, beta=rpn.smooth_l1_beta)
    laps.lap("rpn loss")
    cfg = model.config
    rois, roi_labels, roi_regression = [], [], []
    for b, (image_proposals, target) in enumerate(zip(proposals, targets)):
        image_rois, image_labels, image_regression = sample_proposal_targets(
            image_proposals.detach(), target["boxes"], target["labels"], batch_size=cfg.roi_batch_size,
            positive_fraction=cfg.roi_positive_fraction, fg_iou=cfg.roi_fg_iou, bg_iou=cfg.roi_bg_iou,
            box_coder_weights=cfg.box_coder_weights, generator=model.generator)
        rois.append(torch.cat([image_rois.new_full((image_rois.shape[0], 1), b), image_rois], dim=1))
        roi_labels.append(image_labels)
        roi_regression.append(image_regression)
    rois = torch.cat(rois)
    laps.lap("proposal targets (RoI sampling)")
    head = model.roi_head
    pooled = roi_pool(features, rois, head.roi_output_size, head.spatial_scale, impl=head.roi_pool_impl)
    laps.lap("roi pool")
    class_logits, box_deltas = _head_fc(head, pooled)
    laps.lap("detector head (fc6, fc7, cls, bbox)")
    loss_cls, loss_box = fast_rcnn_loss(class_logits, box_deltas, torch.cat(roi_labels),
                                        torch.cat(roi_regression), lambda_=cfg.det_lambda)
    laps.lap("detector loss")
    loss = loss_rpn_cls + loss_rpn_box + loss_cls + loss_box
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    laps.lap("backward")
    optimizer.step()
    laps.lap("SGD step")
    losses = {"loss_rpn_cls": float(loss_rpn_cls.detach()), "loss_rpn_box": float(loss_rpn_box.detach()),
              "loss_cls": float(loss_cls.detach()), "loss_box": float(loss_box.detach())}
    return laps.times, losses
