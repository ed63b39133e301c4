"""VOC AP, mAP and proposal recall: hand-computed cases and an independent devkit transcription."""
import math

import numpy as np
import pytest
import torch

from frcnn_edu.evaluate import (
    evaluate_detections,
    match_detections,
    precision_recall,
    proposal_recall,
    recall_vs_iou,
    voc_ap,
)


def det(boxes, scores, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.ones(len(boxes), dtype=torch.int64) if labels is None else torch.tensor(labels)
    return {"boxes": boxes, "scores": torch.tensor(scores, dtype=torch.float32), "labels": labels}


def tgt(boxes, labels=None, difficult=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    out = {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64)
           if labels is None else torch.tensor(labels)}
    if difficult is not None:
        out["difficult"] = torch.tensor(difficult)
    return out


A = [0.0, 0.0, 10.0, 10.0]
B = [20.0, 20.0, 30.0, 30.0]
FAR = [50.0, 50.0, 60.0, 60.0]


def aps(detections, targets, names=("a",)):
    result = evaluate_detections(detections, targets, names)
    return result["ap"][names[0]], result["ap_area"][names[0]]


# ----------------------------------------------------------------------------------------------
# voc_ap
# ----------------------------------------------------------------------------------------------
def test_voc_ap_by_hand():
    # Points (recall, precision): (0.5, 1), (0.5, 0.5), (1, 2/3) -- TP, FP, TP on 2 boxes.
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    # 11-point: t = 0 .. 0.5 (6 points) see precision 1; t = 0.6 .. 1 (5 points) see 2/3.
    # AP = (6 * 1 + 5 * 2/3) / 11 = 28/33.
    assert voc_ap(recall, precision) == pytest.approx(28 / 33, abs=1e-12)
    # Area: 0.5 * 1 + 0.5 * 2/3 = 5/6: the two metrics differ.
    assert voc_ap(recall, precision, use_07_metric=False) == pytest.approx(5 / 6, abs=1e-12)
    # torch input works too.
    assert voc_ap(torch.tensor(recall), torch.tensor(precision)) == pytest.approx(28 / 33)


def test_voc_ap_edges():
    assert voc_ap([], []) == 0 and voc_ap([], [], use_07_metric=False) == 0
    # Recall exactly 3/10 counts at t = 0.3 (np.arange(0, 1.1, 0.1)[3] would be 0.30000000000000004).
    assert voc_ap(np.array([3]) / 10, [1.0]) == pytest.approx(4 / 11, abs=1e-12)
    assert math.isnan(voc_ap([math.nan], [0.0]))
    with pytest.raises(ValueError, match="shapes"):
        voc_ap([0.1, 0.2], [1.0])


# ----------------------------------------------------------------------------------------------
# Hand-computed detection cases
# ----------------------------------------------------------------------------------------------
def test_perfect_detections():
    detections = [det([A, B], [0.9, 0.8]), det([A], [0.3])]
    targets = [tgt([A, B]), tgt([A])]
    assert aps(detections, targets) == (1.0, 1.0)


def test_false_positive_ranked_above_true_positive():
    # One box. Ranked: FP (0.9) -> precision 0, recall 0; TP (0.8) -> precision 1/2, recall 1.
    # 11-point: every t in 0..1 has max precision 1/2 at recall >= t -> AP 0.5.
    # Area: the envelope is 1/2 on (0, 1] -> AP 0.5.
    detections = [det([FAR, A], [0.9, 0.8])]
    assert aps(detections, [tgt([A])]) == (pytest.approx(0.5), pytest.approx(0.5))
    pr = precision_recall(detections, [tgt([A])], label=1)
    np.testing.assert_allclose(pr["precision"], [0.0, 0.5])
    np.testing.assert_allclose(pr["recall"], [0.0, 1.0])
    assert pr["tp"].tolist() == [False, True] and pr["fp"].tolist() == [True, False]
    np.testing.assert_allclose(pr["scores"], [0.9, 0.8])
    assert pr["num_positives"] == 1


def test_eleven_point_and_area_differ():
    # Two boxes; TP (0.9), FP (0.8), TP (0.7): the curve of test_voc_ap_by_hand.
    detections = [det([A, FAR, B], [0.9, 0.8, 0.7])]
    ap07, ap_area = aps(detections, [tgt([A, B])])
    assert ap07 == pytest.approx(28 / 33) and ap_area == pytest.approx(5 / 6)


def test_duplicate_detection_is_false_positive():
    detections = [det([A, A], [0.9, 0.8])]
    pr = precision_recall(detections, [tgt([A])], label=1)
    assert pr["tp"].tolist() == [True, False]
    np.testing.assert_allclose(pr["precision"], [1.0, 0.5])
    # Devkit rule: a detection whose best box is taken is a FP even if it also overlaps a free
    # box by >= 0.5. Second box A2 = [2, 0, 12, 10]; the duplicate [0.5, 0, 10.5, 10] has IoU
    # 95/105 with A and 85/115 with A2: it goes to A (taken) -> FP, and A2 stays missed.
    a2 = [2.0, 0.0, 12.0, 10.0]
    pr = precision_recall([det([A, [0.5, 0.0, 10.5, 10.0]], [0.9, 0.8])], [tgt([A, a2])], 1)
    assert pr["tp"].tolist() == [True, False]
    np.testing.assert_allclose(pr["recall"], [0.5, 0.5])


def test_difficult_boxes_ignored_both_ways():
    targets = [tgt([A, B], difficult=[False, True])]
    # Found difficult box: the detection on it is ignored, not a FP; AP stays 1.
    detections = [det([B, A], [0.95, 0.9])]
    assert aps(detections, targets) == (1.0, 1.0)
    pr = precision_recall(detections, targets, label=1)
    assert pr["num_positives"] == 1 and pr["tp"].tolist() == [True]
    # Missed difficult box: not a miss; AP stays 1.
    assert aps([det([A], [0.9])], targets) == (1.0, 1.0)
    # Without the difficult flag, the same detections lose the missed box: recall 1/2.
    ap07, _ = aps([det([A], [0.9])], [tgt([A, B])])
    assert ap07 == pytest.approx(6 / 11)        # precision 1 for t = 0 .. 0.5, 0 beyond


def test_iou_exactly_at_threshold():
    # IoU([0,0,10,10], [0,0,10,5]) = 50 / 100 = 0.5 exactly: a hit (devkit: ovmax >= 0.5).
    assert aps([det([[0.0, 0.0, 10.0, 5.0]], [0.9])], [tgt([A])]) == (1.0, 1.0)
    assert aps([det([[0.0, 0.0, 10.0, 4.9]], [0.9])], [tgt([A])]) == (0.0, 0.0)
    tp, ignored = match_detections(torch.tensor([[0.0, 0.0, 10.0, 5.0]]), torch.tensor([1.0]),
                                   torch.tensor([A]), iou_threshold=0.5)
    assert tp.tolist() == [True] and ignored.tolist() == [False]


def test_class_without_ground_truth_is_nan_and_left_out():
    detections = [det([A, B], [0.9, 0.8], labels=[1, 2])]
    targets = [tgt([A], labels=[1])]
    result = evaluate_detections(detections, targets, ["a", "b"])
    assert result["ap"]["a"] == 1.0 and math.isnan(result["ap"]["b"])
    assert math.isnan(result["ap_area"]["b"])
    assert result["mAP"] == 1.0 and result["mAP_area"] == 1.0 and result["num_images"] == 1
    assert math.isnan(evaluate_detections([det([], [])], [tgt([])], ["a"])["mAP"])


def test_empty_detections_give_ap_zero():
    empty = det([], [])
    assert empty["boxes"].shape == (0, 4)
    result = evaluate_detections([empty, empty], [tgt([A]), tgt([B, A])], ["a"])
    assert result["ap"]["a"] == 0.0 and result["ap_area"]["a"] == 0.0 and result["mAP"] == 0.0
    assert evaluate_detections([], [], ["a"])["num_images"] == 0


def test_classes_do_not_match_each_other():
    # A detection of class 2 on a class-1 box is a false positive of class 2, not a TP.
    detections = [det([A, A], [0.9, 0.8], labels=[2, 1])]
    result = evaluate_detections(detections, [tgt([A, B], labels=[1, 2])], ["a", "b"])
    assert result["ap"]["a"] == 1.0
    assert result["ap"]["b"] == 0.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="one entry per image"):
        evaluate_detections([det([A], [0.9])], [], ["a"])
    with pytest.raises(ValueError, match=r"detections\[0\]\['labels'\]\[0\] = 3"):
        evaluate_detections([det([A], [0.9], labels=[3])], [tgt([A])], ["a", "b"])
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\]\[0\] = 0"):
        evaluate_detections([det([], []), det([], [])], [tgt([A]), tgt([A], labels=[0])], ["a"])
    with pytest.raises(ValueError, match=r"detections\[0\]\['scores'\] must have shape \(1,\)"):
        evaluate_detections([det([A], [0.9, 0.8])], [tgt([A])], ["a"])
    with pytest.raises(ValueError, match="scores"):
        evaluate_detections([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}],
                            [tgt([])], ["a"])
    with pytest.raises(ValueError, match=r"detections\[0\]\['boxes'\]"):
        evaluate_detections([det([[0.0, 0.0, -1.0, 5.0]], [0.9])], [tgt([A])], ["a"])
    with pytest.raises(ValueError, match="distinct"):
        evaluate_detections([], [], ["a", "a"])


# ----------------------------------------------------------------------------------------------
# An independent transcription of the VOC devkit's evaluation (VOCevaldet.m / voc_eval.py), in
# numpy, one detection at a time, written from the devkit's description rather than from
# frcnn_edu. Differences from the original, on purpose: IoU without the +1 pixel; ties in score
# kept in input order (a stable sort); the 11 recall thresholds are i / 10.
# ----------------------------------------------------------------------------------------------
def devkit_ap(rec, prec, use_07_metric):
    if use_07_metric:
        ap = 0.0
        for t in [i / 10 for i in range(11)]:
            p = prec[rec >= t].max() if np.sum(rec >= t) > 0 else 0.0
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def devkit_eval(detections, targets, label, ovthresh=0.5):
    records, npos = [], 0
    for t in targets:
        keep = t["labels"].numpy() == label
        difficult = t.get("difficult", torch.zeros(len(keep), dtype=torch.bool)).numpy()[keep]
        records.append({"bbox": t["boxes"].double().numpy()[keep], "difficult": difficult,
                        "det": [False] * int(keep.sum())})
        npos += int((~difficult).sum())
    image_ids, confidence, boxes = [], [], []
    for i, d in enumerate(detections):
        keep = d["labels"].numpy() == label
        image_ids += [i] * int(keep.sum())
        confidence += d["scores"].double().numpy()[keep].tolist()
        boxes += d["boxes"].double().numpy()[keep].tolist()
    order = np.argsort(-np.array(confidence), kind="stable")
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for d, k in enumerate(order):
        R = records[image_ids[k]]
        bb = np.array(boxes[k])
        ovmax, BBGT = -np.inf, R["bbox"]
        if BBGT.size > 0:
            iw = np.maximum(np.minimum(BBGT[:, 2], bb[2]) - np.maximum(BBGT[:, 0], bb[0]), 0.0)
            ih = np.maximum(np.minimum(BBGT[:, 3], bb[3]) - np.maximum(BBGT[:, 1], bb[1]), 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0]) * (bb[3] - bb[1])
                   + (BBGT[:, 2] - BBGT[:, 0]) * (BBGT[:, 3] - BBGT[:, 1]) - inters)
            overlaps = inters / uni
            ovmax, jmax = np.max(overlaps), np.argmax(overlaps)
        if ovmax >= ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos) if npos else None
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if rec is None:
        return None
    return devkit_ap(rec, prec, True), devkit_ap(rec, prec, False), tp[-1:], fp[-1:]


def random_boxes(rng, n):
    xy = rng.integers(0, 40, size=(n, 2))
    wh = rng.integers(1, 25, size=(n, 2))
    return torch.tensor(np.concatenate([xy, xy + wh], axis=1), dtype=torch.float64)


def test_matches_devkit_transcription_on_random_data():
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    for case in range(50):
        detections, targets = [], []
        for _ in range(rng.integers(1, 5)):
            num_gt, num_det = rng.integers(0, 6), rng.integers(0, 10)
            gt_boxes = random_boxes(rng, num_gt)
            # Detections: jittered copies of ground truth (so there are hits, duplicates and
            # IoUs near 0.5) plus random boxes; scores with ties.
            near = gt_boxes[rng.integers(0, max(num_gt, 1), size=num_det)] if num_gt else \
                random_boxes(rng, num_det)
            near = near + torch.tensor(rng.integers(-3, 4, size=(num_det, 4)), dtype=torch.float64)
            near[:, 2:] = torch.maximum(near[:, 2:], near[:, :2] + 1)
            det_boxes = torch.where(torch.tensor(rng.random((num_det, 1)) < 0.3),
                                    random_boxes(rng, num_det), near)
            detections.append({"boxes": det_boxes,
                               "labels": torch.tensor(rng.integers(1, 4, size=num_det)),
                               "scores": torch.tensor(rng.integers(0, 8, size=num_det) / 8.0)})
            targets.append({"boxes": gt_boxes,
                            "labels": torch.tensor(rng.integers(1, 4, size=num_gt)),
                            "difficult": torch.tensor(rng.random(num_gt) < 0.2)})
        threshold = [0.5, 0.7][case % 2]
        result = evaluate_detections(detections, targets, classes, iou_threshold=threshold)
        for label, name in enumerate(classes, start=1):
            expected = devkit_eval(detections, targets, label, threshold)
            if expected is None:
                assert math.isnan(result["ap"][name])
                continue
            ap07, ap_area, tp, fp = expected
            assert result["ap"][name] == pytest.approx(ap07, abs=1e-12), (case, name)
            assert result["ap_area"][name] == pytest.approx(ap_area, abs=1e-12), (case, name)
            pr = precision_recall(detections, targets, label, threshold)
            assert pr["tp"].sum() == tp.sum() and pr["fp"].sum() == fp.sum(), (case, name)


# ----------------------------------------------------------------------------------------------
# Proposal recall
# ----------------------------------------------------------------------------------------------
def proposal_case():
    # Image 0: boxes A and B. Proposals, best first: A (IoU 1 with A), the top half of B (IoU 0.5
    # with B), B (IoU 1). Image 1: box A and no proposals at all.
    proposals = [torch.tensor([A, [20.0, 20.0, 30.0, 25.0], B]), torch.zeros(0, 4)]
    gt_boxes = [torch.tensor([A, B]), torch.tensor([A])]
    return proposals, gt_boxes


def test_proposal_recall_by_hand():
    proposals, gt_boxes = proposal_case()
    recall = proposal_recall(proposals, gt_boxes, num_proposals=(1, 2, 3, 1000),
                             iou_thresholds=(0.5, 0.7))
    # top-1: only A found. top-2: B at IoU 0.5 (counts at 0.5, not at 0.7). top-3: B at IoU 1.
    # The box of image 1 is never found: recall is out of 3.
    assert recall[0.5] == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 2 / 3, 1000: 2 / 3})
    assert recall[0.7] == pytest.approx({1: 1 / 3, 2: 1 / 3, 3: 2 / 3, 1000: 2 / 3})


def test_recall_vs_iou_by_hand():
    proposals, gt_boxes = proposal_case()
    ious, recalls = recall_vs_iou(proposals, gt_boxes, num_proposals=2,
                                  iou_thresholds=[0.5, 0.75, 1.0])
    np.testing.assert_allclose(ious, [0.5, 0.75, 1.0])
    np.testing.assert_allclose(recalls, [2 / 3, 1 / 3, 1 / 3])
    ious, recalls = recall_vs_iou(proposals, gt_boxes)          # defaults: 300, 0.5 .. 1.0
    assert len(ious) == len(recalls) == 11 and ious[0] == 0.5 and ious[-1] == pytest.approx(1.0)
    np.testing.assert_allclose(recalls, 2 / 3)


def test_proposal_recall_edges():
    assert math.isnan(proposal_recall([torch.zeros(0, 4)], [torch.zeros(0, 4)])[0.5][300])
    with pytest.raises(ValueError, match="one entry per image"):
        proposal_recall([torch.zeros(0, 4)], [])
    with pytest.raises(ValueError, match="num_proposals"):
        proposal_recall([torch.zeros(0, 4)], [torch.zeros(0, 4)], num_proposals=(0,))
    with pytest.raises(ValueError, match=r"proposals\[0\]"):
        proposal_recall([torch.zeros(3, 5)], [torch.zeros(0, 4)])
