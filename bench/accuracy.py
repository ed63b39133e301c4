"""Accuracy at equal budget: both systems trained the same way on the shapes data, then VOC07 mAP.

Per seed, both start from the same weights (torchvision's twin gets copies of frcnn_edu's
backbone, RPN conv/reg and detector layers; only the RPN classifier differs in shape: frcnn_edu's
shapes_tiny preset keeps the paper's 2-class softmax), read the same mini-batches in the same
order with the same flips (frcnn_edu.data.loader.TrainingBatches), and use the same SGD
(momentum, weight decay), base LR, warm-up and step schedule (frcnn_edu.train.learning_rate).
frcnn_edu trains with its own `frcnn_edu.train.train`; torchvision with the minimal loop below.
"""
from __future__ import annotations

import math
import statistics
import time

import torch

from frcnn_edu.config import get_preset
from frcnn_edu.data.loader import TrainingBatches
from frcnn_edu.evaluate import evaluate_detections
from frcnn_edu.faster_rcnn import FasterRCNN
from frcnn_edu.train import learning_rate, train

from .systems import torchvision_twin


def train_torchvision(model, dataset, *, iters: int, batch_size: int, lr: float, config, seed: int,
                      warmup: int, device) -> float:
    """The same loop as frcnn_edu.train.train(schedule="joint"), for torchvision's model. Returns seconds."""
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    torch.manual_seed(seed)
    data = TrainingBatches(dataset, batch_size, seed, config.flip_prob)   # frcnn_edu's batches and flips
    start = time.perf_counter()
    for iteration in range(iters):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(lr, iteration, iters, config.lr_drop_at, config.lr_drop_factor, warmup)
        images, targets = data[iteration]
        images = [i.to(device) for i in images]
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        losses = model(images, targets)
        loss = sum(losses.values())
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"torchvision training diverged at iteration {iteration}: {losses}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


@torch.inference_mode()
def detect_all(model, dataset, device, batch_size: int = 8) -> tuple[list, list]:
    model.eval()
    detections, targets = [], []
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        for output in model([s[0].to(device) for s in samples]):
            detections.append({k: output[k].cpu() for k in ("boxes", "labels", "scores")})
        targets += [s[1] for s in samples]
    return detections, targets


def run_seed(train_set, test_set, *, seed: int, iters: int, batch_size: int, warmup: int, device) -> dict:
    """Train both systems from the same initial weights; return {system: {"mAP", "train_s"}}."""
    config = get_preset("shapes_tiny")
    torch.manual_seed(seed)
    ours = FasterRCNN(len(train_set.classes), config=config, class_names=train_set.classes)
    tv = torchvision_twin(ours)
    out = {}
    start = time.perf_counter()
    train(ours, train_set, iters=iters, batch_size=batch_size, seed=seed, warmup=warmup, device=device,
          progress=False, workers=0)   # loading in the training process, as torchvision's loop does
    out["frcnn_edu"] = {"train_s": time.perf_counter() - start}
    out["torchvision"] = {"train_s": train_torchvision(
        tv, train_set, iters=iters, batch_size=batch_size, lr=config.lr,
        config=config, seed=seed, warmup=warmup, device=device)}
    for name, model in (("frcnn_edu", ours), ("torchvision", tv)):
        detections, targets = detect_all(model, test_set, device)
        result = evaluate_detections(detections, targets, train_set.classes)
        out[name].update(mAP=result["mAP"], mAP_area=result["mAP_area"],
                         detections_per_image=sum(len(d["boxes"]) for d in detections) / len(detections))
    return out


def summarise(runs: list[dict]) -> dict:
    """{system: {"mean", "std", "min", "max", "values", "train_s"}} over seeds."""
    summary = {}
    for name in runs[0]:
        values = [r[name]["mAP"] for r in runs]
        summary[name] = {"values": values, "mean": statistics.fmean(values),
                         "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                         "min": min(values), "max": max(values),
                         "train_s": statistics.median(r[name]["train_s"] for r in runs)}
    return summary
