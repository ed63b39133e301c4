"""Mixed precision and data loading, measured side by side in one run.

    python -m bench.scale [--quick] [--device cpu|cuda] [--out bench/SCALE.md]

1. Inference, one image, batch 1: frcnn_edu and its torchvision twin (bench/systems.py), each in
   fp32 and under bf16 autocast (fp16 too on CUDA), alternating in one loop; VGG-16 paper setting
   (600x1000) and shapes_tiny. The goals (on a CPU with AMX): frcnn_edu bf16 <= 0.35x torchvision
   fp32 and <= 0.6x torchvision bf16.
2. One training step (forward, backward, SGD step), frcnn_edu fp32 vs bf16, same images.
3. Accuracy: mAP of the shipped shapes_tiny checkpoint on the 200 held-out images, fp32 vs bf16.
4. The data path alone: images per second of `TrainingBatches` over a VOC-format folder of
   500x375 JPEGs with 0, 1, 2 DataLoader workers, next to the model's training-step rate.
The CPU's bfloat16 hardware (AMX, AVX512-BF16) is reported: without it bf16 is emulated.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import frcnn_edu as fe
from frcnn_edu.data.loader import TrainingBatches, batch_loader
from frcnn_edu.precision import autocast, cpu_has_bf16
from frcnn_edu.predict import evaluate_model
from frcnn_edu.samples import SHAPES_HELD_OUT, SHIPPED_CHECKPOINT

from .run import cpu_model, ms, table
from .systems import frcnn_edu_model, shapes_batch, to_device, torchvision_twin
from .timing import compare, make_sync


def cpu_flags() -> str:
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        return "unknown"
    found = sorted({f for f in flags if f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")})
    return ", ".join(found) or "none of amx_bf16 / avx512_bf16 / avx512f / avx2"


def inference_rows(device, quick: bool, precisions: list[str]) -> tuple[list, dict]:
    sync = make_sync(device)
    rows, results = [], {}
    size = (128, 192) if quick else (600, 1000)
    for label, preset, classes, changes, image_size, reps in (
            (f"VGG-16 paper ({size[0]}x{size[1]})", "paper_vgg16", 20,
             {"min_size": min(size), "max_size": max(size)}, size, 2 if quick else 3),
            ("shapes_tiny (256x256)", "shapes_tiny", 5, {}, (256, 256), 3 if quick else 10)):
        ours = frcnn_edu_model(preset, classes, rpn_objectness="sigmoid", score_thresh=0.0, **changes)
        tv = torchvision_twin(ours)
        ours, tv = ours.to(device).eval(), tv.to(device).eval()
        images, _ = to_device(*shapes_batch(1, image_size, seed=0), device)

        def call(model, precision):
            def f():
                with torch.inference_mode(), autocast(device, precision):
                    return model(images)
            return f

        fns = {f"{name} {p}": call(model, p) for p in precisions for name, model in
               (("frcnn_edu", ours), ("torchvision", tv))}
        out = compare(fns, warmup=1, reps=reps, sync=sync)
        med = {k: v["median"] for k, v in out.items()}
        results[label] = med
        tv32 = med["torchvision fp32"]
        for p in precisions:
            a, b = med[f"frcnn_edu {p}"], med[f"torchvision {p}"]
            rows.append([label, p, ms(a), ms(b), f"{a / b:.3f}", f"{a / tv32:.3f}", reps])
    return rows, results


def training_rows(device, quick: bool) -> list:
    sync = make_sync(device)
    rows = []
    size = (128, 192) if quick else (600, 1000)
    for label, preset, classes, changes, image_size, batch, reps in (
            (f"VGG-16 paper ({size[0]}x{size[1]}), batch 2", "paper_vgg16", 20,
             {"min_size": min(size), "max_size": max(size)}, size, 2, 1 if quick else 2),
            ("shapes_tiny, batch 8", "shapes_tiny", 5, {}, (256, 256), 8, 2 if quick else 5)):
        model = frcnn_edu_model(preset, classes, **changes).to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        images, targets = to_device(*shapes_batch(batch, image_size, seed=1), device)

        def step(precision):
            def f():
                with autocast(device, precision):
                    loss = sum(model(images, targets).values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            return f

        out = compare({p: step(p) for p in ("fp32", "bf16")}, warmup=1, reps=reps, sync=sync)
        a, b = out["fp32"]["median"], out["bf16"]["median"]
        rows.append([label, ms(a), ms(b), f"{b / a:.3f}", reps])
    return rows


def accuracy_row(device, quick: bool) -> list:
    model = fe.load_model(SHIPPED_CHECKPOINT, device=device)
    held_out = fe.data.ShapesDataset(**SHAPES_HELD_OUT)
    if quick:
        held_out = torch.utils.data.Subset(held_out, range(40))
        held_out.classes = model.class_names
    fp32 = evaluate_model(model, held_out)["mAP"]
    bf16 = evaluate_model(model, held_out, precision="bf16")["mAP"]
    return [len(held_out), f"{fp32:.4f}", f"{bf16:.4f}", f"{bf16 - fp32:+.4f}"]


def data_rows(quick: bool, step_seconds: float | None) -> list:
    """images/s of the data path alone over a VOC folder of 500x375 JPEGs."""
    num = 40 if quick else 200
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "VOC"
        source = fe.data.ShapesDataset(num_images=num, image_size=(375, 500), seed=5,
                                       min_object_size=40, max_object_size=200)
        source.write_voc(root, image_format="jpg")
        dataset = fe.data.VOCDataset(root, split="trainval")
        rows = []
        for workers in (0, 1, 2):
            batches = TrainingBatches(dataset, 2, seed=0, flip_prob=0.5)
            loader = batch_loader(batches, 0, num // 2, workers=workers)
            start = time.perf_counter()
            count = sum(len(images) for images, _ in loader)
            seconds = time.perf_counter() - start
            rows.append([workers, count, f"{count / seconds:.1f}",
                         f"{2 / step_seconds:.1f}" if step_seconds else "-"])
        return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small images and few reps (a smoke test)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="also write the Markdown here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    precisions = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    started = time.perf_counter()
    lines = ["# Mixed precision and data loading (bench/scale.py)\n",
             f"{time.strftime('%Y-%m-%d')}, {cpu_model()}, {torch.get_num_threads()} threads, torch "
             f"{torch.__version__}, device {device}; bfloat16 hardware: "
             f"{'yes' if cpu_has_bf16() else 'no'} (flags: {cpu_flags()}){' (quick)' if args.quick else ''}\n"]
    rows, _ = inference_rows(device, args.quick, precisions)
    lines += ["## Inference, batch 1 (medians, alternating in one loop)\n",
              table(["configuration", "precision", "frcnn_edu (ms)", "torchvision (ms)", "ratio same precision",
                     "ratio to torchvision fp32", "reps"], rows)]
    train_rows = training_rows(device, args.quick)
    lines += ["\n## One training step (forward, backward, SGD), frcnn_edu\n",
              table(["configuration", "fp32 (ms)", "bf16 (ms)", "bf16 / fp32", "reps"], train_rows)]
    lines += ["\n## Accuracy of the shipped shapes_tiny checkpoint\n",
              table(["held-out images", "mAP fp32", "mAP bf16", "difference"], [accuracy_row(device, args.quick)])]
    tiny_step = float(train_rows[1][1].replace(",", "")) / 1000 / 4   # batch 8 step -> seconds per 2 images
    lines += ["\n## The data path alone: 500x375 JPEGs in a VOC folder, batch 2\n",
              table(["workers", "images", "images/s", "model images/s (shapes_tiny training step)"],
                    data_rows(args.quick, tiny_step))]
    lines.append(f"\n{time.perf_counter() - started:.0f} s in all.\n")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
