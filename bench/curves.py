"""Accuracy against training time on the shapes data: the numbers the RPN and detector issues ask for.

    python -m bench.curves rpn         [--minutes 5]  [--iters 2000]
    python -m bench.curves joint       [--minutes 10] [--iters 2000]
    python -m bench.curves alternating [--minutes 10] [--iters 2000]
    ... [--chunk 120] [--out runs/curves] [--json FILE] [--precision bf16]

Trains the `shapes_tiny` preset from scratch exactly as `frcnn-edu train --dataset shapes` does
(same training images, batch 4, lr 0.02, 100 warm-up iterations, seed 0), but in chunks of
`--chunk` seconds: `train(..., resume=True, time_limit=chunk)` stops, checkpoints and returns, the
checkpoint is evaluated on the 200 held-out images, and training resumes. Only the seconds spent
inside `train` count as training time; evaluation is not counted. `--minutes` caps the total.
`--precision bf16` trains (and evaluates) under bfloat16 autocast, as `frcnn-edu train --precision
bf16` does: the time-to-mAP of mixed precision. On a CPU without bf16 hardware (no AMX /
AVX512-BF16 in `lscpu`) bf16 is emulated and slower than fp32; compare iterations there, not seconds.

  rpn:          the RPN alone ([P] Sec. 3.1.3); proposal recall at IoU 0.5 / 0.7 with
                50 / 100 / 300 / 1000 proposals (the RPN keeps 1000 for this measurement).
  joint:        approximate joint training; VOC07 11-point and area mAP@0.5.
  alternating:  the 4-step schedule; mAP once step 3 has finished (before that the model's
                RPN and detector sit on different conv layers and are not one detector).
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from frcnn_edu.checkpoints import load_model, read_checkpoint
from frcnn_edu.config import get_preset
from frcnn_edu.data import ShapesDataset
from frcnn_edu.faster_rcnn import FasterRCNN
from frcnn_edu.predict import evaluate_model, proposal_recall_of
from frcnn_edu.samples import SHAPES_HELD_OUT, SHAPES_TRAIN
from frcnn_edu.train import SCHEDULES, train


def fresh_model(classes) -> FasterRCNN:
    return FasterRCNN(len(classes), config=get_preset("shapes_tiny"), class_names=classes)


def evaluate(kind: str, checkpoint: Path, held_out, precision: str = "fp32") -> dict | None:
    payload = read_checkpoint(checkpoint)
    stage = payload["training"]["stage"]
    model = load_model(checkpoint, device="cpu")
    if kind == "rpn":
        recall = proposal_recall_of(model, held_out)
        return {"recall": recall}
    if kind == "alternating" and stage < 3:
        return None
    results = evaluate_model(model, held_out, precision=precision)
    return {"mAP": results["mAP"], "mAP_area": results["mAP_area"], "ap": results["ap"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("rpn", "joint", "alternating"))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--chunk", type=float, default=120.0, help="seconds of training between evaluations")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", default="runs/curves")
    parser.add_argument("--json", default=None)
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / f"{args.kind}.pt"
    for stale in (checkpoint, checkpoint.with_suffix(".jsonl")):
        stale.unlink(missing_ok=True)
    train_set, held_out = ShapesDataset(**SHAPES_TRAIN), ShapesDataset(**SHAPES_HELD_OUT)
    torch.manual_seed(0)
    model = fresh_model(train_set.classes)
    steps = SCHEDULES[args.kind]   # 4 for alternating, 1 otherwise; iters split equally

    rows, trained, finished = [], 0.0, False
    while not finished and trained < args.minutes * 60:
        limit = min(args.chunk, args.minutes * 60 - trained)
        started = time.perf_counter()
        train(model, train_set, iters=args.iters, batch_size=args.batch_size, schedule=args.kind,
              checkpoint=checkpoint, checkpoint_every=10 ** 9, resume=True, seed=0, warmup=100,
              log=checkpoint.with_suffix(".jsonl"), progress=False, time_limit=limit,
              precision=args.precision)
        trained += time.perf_counter() - started
        state = read_checkpoint(checkpoint)["training"]
        finished = state["stage"] >= steps
        done = state["iters"] if finished else state["stage"] * (args.iters // steps) + state["iteration"]
        shutil.copy(checkpoint, out / f"{args.kind}_{round(trained)}s.pt")
        row = {"train_s": round(trained, 1), "iterations": done, "stage": state["stage"],
               **(evaluate(args.kind, checkpoint, held_out, args.precision) or {})}
        rows.append(row)
        print(json.dumps(row), flush=True)
        model = fresh_model(train_set.classes)   # train(resume=True) reloads the checkpoint into it
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
