"""Evaluation: PASCAL VOC average precision, mean AP, and proposal recall ([P] Sec. 4).

Detection quality ([P] Tables 2-4) is the mean over classes of the average precision (AP) at
IoU 0.5, with the rules of the PASCAL VOC development kit:

  1. Per class, sort all detections of the whole test set by score, highest first.
  2. Walk down that list. A detection goes to the ground-truth box of its image it overlaps most
     (same class, highest IoU), whether or not that box is already taken. If that IoU >= 0.5 and
     the box is not yet taken, the detection is a true positive and takes it; if the box is
     already taken, the detection is a duplicate: a FALSE positive. Below 0.5: a false positive.
  3. Boxes marked "difficult" count neither way: they are not misses when nobody finds them,
     and a detection that goes to one is ignored (neither true nor false positive).
  4. Precision and recall after each detection give the PR curve; AP summarises it.

AP, two ways (`voc_ap`): VOC2007's 11-point interpolated AP, what the paper reports, and the
area under the monotone PR curve used from VOC2010 on. Differences in "difficult" handling and in
the AP formula explain most gaps between reported mAPs.

IoU is computed in continuous coordinates (width = x2 - x1), the package's convention. The VOC
devkit reads boxes as 1-based inclusive pixel indices and adds 1 pixel to widths, heights and
intersections (width = xmax - xmin + 1). VOCDataset maps a VOC box to (xmin - 1, ymin - 1, xmax,
ymax), so its continuous widths, heights and intersections equal the devkit's +1 ones exactly:
the IoUs, and so the matches and APs, are identical, nothing differs. (Detections given to the
devkit itself need the same mapping the other way: (x1 + 1, y1 + 1, x2, y2).)

Proposal recall ([P] Sec. 4, Fig. 4): the fraction of ground-truth boxes that the top-N
proposals cover at a given IoU, e.g. 300 vs 2000 proposals.

[P] Ren et al., Faster R-CNN, https://arxiv.org/abs/1506.01497
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .boxes import box_iou, check_boxes


# ----------------------------------------------------------------------------------------------
# Average precision from a PR curve
# ----------------------------------------------------------------------------------------------
def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
    return np.asarray(x, dtype=np.float64)


def voc_ap(recall, precision, use_07_metric: bool = True) -> float:
    """Average precision from a PR curve: (D,) recall and (D,) precision -> float.

    recall, precision: after each of the D detections in score order (numpy or torch).
    use_07_metric=True: VOC2007's 11-point interpolated AP, what [P] reports: the mean over
        t = 0, 0.1, ..., 1 of the highest precision at any recall >= t (0 if there is none).
        The thresholds are i / 10 exactly, so a recall of 3/10 counts at t = 0.3 (the Python
        port in py-faster-rcnn uses np.arange(0, 1.1, 0.1), whose 0.30000000000000004 misses it).
    use_07_metric=False: VOC2010+: the area under the PR curve after making precision monotone
        (each precision replaced by the highest precision at equal or higher recall).
    No detections (D = 0) gives 0. A NaN recall (no ground truth to find) gives NaN.
    """
    recall, precision = _as_numpy(recall), _as_numpy(precision)
    if recall.ndim != 1 or recall.shape != precision.shape:
        raise ValueError(f"recall and precision must be 1-D of the same length, got shapes "
                         f"{recall.shape} and {precision.shape}")
    if np.isnan(recall).any():
        return math.nan
    if use_07_metric:
        best = [precision[recall >= t].max() if (recall >= t).any() else 0.0
                for t in (i / 10 for i in range(11))]
        return float(sum(best) / 11)        # (the devkit adds p / 11 eleven times: same to 1e-16)
    # Sentinels: the curve starts at recall 0 and ends at recall 1 with precision 0.
    r = np.concatenate(([0.0], recall, [1.0]))
    p = np.concatenate(([0.0], precision, [0.0]))
    p = np.maximum.accumulate(p[::-1])[::-1]            # monotone envelope, right to left
    steps = np.nonzero(r[1:] != r[:-1])[0]               # where recall moves
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


# ----------------------------------------------------------------------------------------------
# Matching detections to ground truth
# ----------------------------------------------------------------------------------------------
def match_detections(det_boxes: torch.Tensor, det_scores: torch.Tensor, gt_boxes: torch.Tensor,
                     gt_difficult: torch.Tensor | None = None, iou_threshold: float = 0.5, *,
                     det_labels: torch.Tensor | None = None, gt_labels: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """VOC matching in ONE image: which detections are true positives, which are ignored.

    det_boxes (D, 4), det_scores (D,), gt_boxes (G, 4), gt_difficult (G,) bool or None.
    With det_labels (D,) and gt_labels (G,), a detection can only match a box of its own label
    (all classes at once); without them, everything is one class.
    Returns (is_tp, is_ignored), both (D,) bool in the input order. A detection that is neither
    is a false positive. Rules (module docstring): each detection goes to its highest-IoU box
    (first one on ties), taken or not; IoU >= iou_threshold is a hit (the devkit's
    VOCevaldet.m uses >=; py-faster-rcnn's voc_eval.py uses >); the highest-scoring hit on a
    box is the true positive, later hits on it are duplicates; hits on difficult boxes are
    ignored.
    """
    num_dets, num_gts = len(det_boxes), len(gt_boxes)
    is_tp = torch.zeros(num_dets, dtype=torch.bool, device=det_boxes.device)
    if num_dets == 0 or num_gts == 0:
        return is_tp, is_tp.clone()
    if gt_difficult is None:
        gt_difficult = torch.zeros(num_gts, dtype=torch.bool, device=gt_boxes.device)

    iou = box_iou(det_boxes, gt_boxes, validate=False)                  # (D, G)
    if det_labels is not None and gt_labels is not None:
        iou = torch.where(det_labels[:, None] == gt_labels[None, :], iou, -1.0)
    best_gt = iou.argmax(dim=1)                                         # first max on ties
    best_iou = iou.gather(1, best_gt[:, None])[:, 0]
    hit = best_iou >= iou_threshold
    is_ignored = hit & gt_difficult.bool()[best_gt]
    candidate = hit & ~is_ignored

    # Greedy by score without a loop: a box is taken by the first candidate, in score order,
    # whose best box it is. (Ties in score keep the input order: a stable sort.)
    order = torch.sort(det_scores, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(num_dets, device=order.device)
    first_rank = torch.full((num_gts,), num_dets, dtype=rank.dtype, device=rank.device)
    first_rank.scatter_reduce_(0, best_gt[candidate], rank[candidate], reduce="amin")
    is_tp = candidate & (rank == first_rank[best_gt])
    return is_tp, is_ignored


def _check_image_dicts(dicts: Sequence[dict], name: str, keys: tuple[str, ...],
                       num_classes: int | None) -> None:
    """Raise ValueError unless every dict has the keys with shapes (D, 4) and (D,)."""
    for i, d in enumerate(dicts):
        for key in keys + ("boxes", "labels"):
            if key not in d:
                raise ValueError(f"{name}[{i}] has no {key!r} (keys: {sorted(d)})")
        check_boxes(d["boxes"], name=f"{name}[{i}]['boxes']")
        n = len(d["boxes"])
        for key in keys + ("labels",) + (("difficult",) if "difficult" in d else ()):
            if tuple(d[key].shape) != (n,):
                raise ValueError(f"{name}[{i}][{key!r}] must have shape ({n},) like its boxes "
                                 f"{tuple(d['boxes'].shape)}, got shape {tuple(d[key].shape)}")
        labels = d["labels"]
        if num_classes is not None and n > 0 and ((labels < 1) | (labels > num_classes)).any():
            j = int(((labels < 1) | (labels > num_classes)).nonzero()[0])
            raise ValueError(f"{name}[{i}]['labels'][{j}] = {int(labels[j])} is not a class label "
                             f"in 1..{num_classes} (0 is background); labels has shape ({n},)")


def _match_dataset(detections: Sequence[dict], targets: Sequence[dict], iou_threshold: float,
                   num_classes: int | None = None) -> dict:
    """Match every image (all classes at once), then concatenate: per-detection scores, labels,
    is_tp, is_ignored, and the labels of the non-difficult ground-truth boxes. All on the CPU:
    evaluation is bookkeeping, and detections and targets often live on different devices."""
    if len(detections) != len(targets):
        raise ValueError(f"detections and targets must have one entry per image, got "
                         f"{len(detections)} detections and {len(targets)} targets")
    _check_image_dicts(detections, "detections", ("scores",), num_classes)
    _check_image_dicts(targets, "targets", (), num_classes)
    parts: dict[str, list[torch.Tensor]] = {"scores": [], "labels": [], "is_tp": [], "is_ignored": [],
                                            "positive_labels": []}
    for det, tgt in zip(detections, targets):
        det = {k: v.detach().cpu() for k, v in det.items() if k in ("boxes", "labels", "scores")}
        gt_boxes, gt_labels = tgt["boxes"].detach().cpu(), tgt["labels"].detach().cpu()
        difficult = tgt.get("difficult")
        difficult = (torch.zeros(len(gt_boxes), dtype=torch.bool) if difficult is None
                     else difficult.detach().cpu().bool())
        is_tp, is_ignored = match_detections(
            det["boxes"], det["scores"], gt_boxes, difficult, iou_threshold,
            det_labels=det["labels"], gt_labels=gt_labels)
        parts["scores"].append(det["scores"].double())
        parts["labels"].append(det["labels"].long())
        parts["is_tp"].append(is_tp)
        parts["is_ignored"].append(is_ignored)
        parts["positive_labels"].append(gt_labels[~difficult].long())
    if not detections:
        return {"scores": torch.zeros(0, dtype=torch.float64),
                "labels": torch.zeros(0, dtype=torch.long),
                "is_tp": torch.zeros(0, dtype=torch.bool),
                "is_ignored": torch.zeros(0, dtype=torch.bool),
                "positive_labels": torch.zeros(0, dtype=torch.long)}
    return {k: torch.cat(v) for k, v in parts.items()}


def _pr_curve(matches: dict, label: int) -> dict:
    """Precision/recall of one class from `_match_dataset`'s output."""
    keep = (matches["labels"] == label) & ~matches["is_ignored"]
    scores, is_tp = matches["scores"][keep], matches["is_tp"][keep]
    order = torch.sort(scores, descending=True, stable=True).indices
    scores, is_tp = scores[order].numpy(), is_tp[order].numpy()
    num_positives = int((matches["positive_labels"] == label).sum())
    tp_cum = np.cumsum(is_tp, dtype=np.float64)
    fp_cum = np.cumsum(~is_tp, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp_cum / num_positives if num_positives > 0 else np.full(len(scores), np.nan)
    precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
    return {"precision": precision, "recall": recall, "scores": scores, "tp": is_tp,
            "fp": ~is_tp, "num_positives": num_positives}


def precision_recall(detections: Sequence[dict], targets: Sequence[dict], label: int,
                     iou_threshold: float = 0.5) -> dict:
    """The PR curve of one class over a data set (VOC rules, module docstring).

    detections: one dict per image with "boxes" (D, 4), "labels" (D,), "scores" (D,);
    targets: one dict per image with "boxes" (G, 4), "labels" (G,), optional "difficult" (G,).
    Returns numpy arrays over this class's detections sorted by score (highest first; ties in
    image order), detections ignored for hitting a difficult box left out:
      "precision", "recall" (D',) float64 after each detection (recall NaN if no positives),
      "scores" (D',), "tp", "fp" (D',) bool per detection (cumsum them for the devkit's tp/fp),
      and "num_positives": the number of non-difficult ground-truth boxes of the class.
    """
    return _pr_curve(_match_dataset(detections, targets, iou_threshold), label)


def evaluate_detections(detections: Sequence[dict], targets: Sequence[dict],
                        class_names: Sequence[str], iou_threshold: float = 0.5) -> dict:
    """VOC evaluation of a detector over a data set: per-class AP and mAP ([P] Sec. 4).

    detections, targets: as in `precision_recall`, one dict per image, in the same order.
    class_names: names of labels 1..C (label 0 is background, never listed).
    Returns {"mAP": VOC07 11-point mAP (what [P] reports), "ap": {name: 11-point AP},
             "mAP_area": area mAP (VOC2010+), "ap_area": {name: area AP}, "num_images": n}.
    A class with no non-difficult ground truth in the set has AP = NaN (recall is 0/0) and is
    left out of both means, as the devkit does not define it; mAP is NaN if no class has any.
    A class with ground truth but no detections has AP 0.
    """
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be distinct, got {list(class_names)}")
    matches = _match_dataset(detections, targets, iou_threshold, num_classes=len(class_names))
    ap, ap_area = {}, {}
    for label, name in enumerate(class_names, start=1):
        curve = _pr_curve(matches, label)
        ap[name] = voc_ap(curve["recall"], curve["precision"], use_07_metric=True)
        ap_area[name] = voc_ap(curve["recall"], curve["precision"], use_07_metric=False)
        if curve["num_positives"] == 0:
            ap[name] = ap_area[name] = math.nan

    def mean(values) -> float:
        values = [v for v in values if not math.isnan(v)]
        return float(np.mean(values)) if values else math.nan

    return {"mAP": mean(ap.values()), "ap": ap, "mAP_area": mean(ap_area.values()),
            "ap_area": ap_area, "num_images": len(detections)}


# ----------------------------------------------------------------------------------------------
# Proposal recall ([P] Sec. 4, Fig. 4)
# ----------------------------------------------------------------------------------------------
def _best_iou_of_top_n(proposals: Sequence[torch.Tensor], gt_boxes: Sequence[torch.Tensor],
                       num_proposals: Sequence[int]) -> torch.Tensor:
    """(len(num_proposals), total G): each ground-truth box's best IoU with the top-n proposals
    of its image, for each n. One IoU matrix per image; no loop over boxes."""
    if len(proposals) != len(gt_boxes):
        raise ValueError(f"proposals and gt_boxes must have one entry per image, got "
                         f"{len(proposals)} and {len(gt_boxes)}")
    for n in num_proposals:
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"num_proposals must be positive ints, got {list(num_proposals)}")
    best = []
    for i, (props, gts) in enumerate(zip(proposals, gt_boxes)):
        check_boxes(props, name=f"proposals[{i}]")
        check_boxes(gts, name=f"gt_boxes[{i}]")
        props, gts = props.detach().cpu(), gts.detach().cpu()
        if len(gts) == 0:
            continue
        if len(props) == 0:
            best.append(torch.zeros(len(num_proposals), len(gts), dtype=gts.dtype))
            continue
        iou = box_iou(props, gts, validate=False)                      # (P, G)
        # Row p of the running max = best IoU over proposals 0..p, i.e. over the top p + 1.
        best_so_far = iou.cummax(dim=0).values
        rows = torch.tensor([min(int(n), len(props)) - 1 for n in num_proposals])
        best.append(best_so_far[rows])
    if not best:
        return torch.zeros(len(num_proposals), 0)
    return torch.cat(best, dim=1)


def _recall(best_iou: torch.Tensor, threshold: float) -> float:
    """Fraction of boxes (last dim) whose best IoU reaches threshold; NaN if there are none."""
    if best_iou.shape[-1] == 0:
        return math.nan
    # Compare in the IoU's dtype: an IoU of exactly 0.7 in float32 is 0.699999988 in float64.
    reached = best_iou >= torch.tensor(float(threshold), dtype=best_iou.dtype)
    return float(reached.double().mean())


def proposal_recall(proposals: Sequence[torch.Tensor], gt_boxes: Sequence[torch.Tensor],
                    num_proposals: Sequence[int] = (50, 100, 300, 1000),
                    iou_thresholds: Sequence[float] = (0.5, 0.7)) -> dict:
    """Recall of the top-n proposals: {iou: {n: recall}} ([P] Sec. 4, Fig. 4).

    proposals: one (P_i, 4) tensor per image, sorted by decreasing score (as the RPN returns
        them); gt_boxes: one (G_i, 4) tensor per image.
    recall = (ground-truth boxes, over all images, whose best IoU with one of their image's top
    n proposals is >= iou) / (all ground-truth boxes). An image with fewer than n proposals uses
    all of them. NaN if there are no ground-truth boxes at all.
    """
    best = _best_iou_of_top_n(proposals, gt_boxes, list(num_proposals))
    return {float(t): {int(n): _recall(best[row], t) for row, n in enumerate(num_proposals)}
            for t in iou_thresholds}


def recall_vs_iou(proposals: Sequence[torch.Tensor], gt_boxes: Sequence[torch.Tensor],
                  num_proposals: int = 300,
                  iou_thresholds: Sequence[float] = tuple(np.arange(0.5, 1.0001, 0.05).tolist())
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Recall of the top `num_proposals` proposals at each IoU threshold: [P] Fig. 4's curve.

    Returns (iou_thresholds, recalls), two float64 arrays of the same length.
    """
    best = _best_iou_of_top_n(proposals, gt_boxes, [num_proposals])[0]
    thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    return thresholds, np.array([_recall(best, t) for t in thresholds])
