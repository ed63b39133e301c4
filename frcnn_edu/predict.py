"""Running a trained model over a whole dataset: detections, proposals, and their evaluation."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .evaluate import evaluate_detections, proposal_recall
from .precision import autocast


def _chunks(dataset, batch_size: int):
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        yield [s[0] for s in samples], [s[1] for s in samples]


@torch.inference_mode()
def predict_dataset(model, dataset, batch_size: int = 8, progress: bool = False, precision: str = "fp32"):
    """Detections for every image: (detections [dict], targets [dict]), all on the CPU.

    precision: "fp32", "bf16" or "fp16" (CUDA): see frcnn_edu.precision."""
    model.eval()
    device = next(model.parameters()).device
    detections, targets = [], []
    for images, image_targets in tqdm(_chunks(dataset, batch_size), total=-(-len(dataset) // batch_size),
                                      desc="detect", disable=not progress, leave=False):
        with autocast(device, precision):
            outputs = model(images)
        for output in outputs:
            detections.append({k: v.cpu() for k, v in output.items()})
        targets.extend(image_targets)
    return detections, targets


def evaluate_model(model, dataset, batch_size: int = 8, progress: bool = False, precision: str = "fp32") -> dict:
    """VOC mAP@0.5 of `model` on `dataset` (11-point "mAP" and area "mAP_area", per-class APs)."""
    detections, targets = predict_dataset(model, dataset, batch_size, progress, precision)
    return evaluate_detections(detections, targets, model.class_names)


@torch.inference_mode()
def proposal_recall_of(model, dataset, num_proposals=(50, 100, 300, 1000), iou_thresholds=(0.5, 0.7),
                       batch_size: int = 8) -> dict:
    """Recall of the ground-truth boxes by the RPN's top-n proposals ([P] Sec. 4, Fig. 4).

    The RPN keeps max(num_proposals) proposals per image here (its test-time setting,
    rpn_post_nms_top_n_test = 300, would cap the recall at n = 300).
    """
    proposals, gt_boxes = [], []
    for images, targets in _chunks(dataset, batch_size):
        proposals += [p["boxes"].cpu() for p in model.propose(images, post_nms_top_n=max(num_proposals))]
        gt_boxes += [t["boxes"] for t in targets]
    return proposal_recall(proposals, gt_boxes, num_proposals, iou_thresholds)
