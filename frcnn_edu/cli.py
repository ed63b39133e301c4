"""The `frcnn-edu` command: train, eval, detect, demo.

    frcnn-edu train --dataset shapes --preset shapes_tiny --iters 3000 --out runs/shapes.pt
    frcnn-edu eval --checkpoint runs/shapes.pt --dataset shapes --json results.json
    frcnn-edu detect --checkpoint runs/shapes.pt photo.jpg --out detections/
    frcnn-edu demo [--train]

Datasets: `shapes` (the built-in synthetic data: training images for `train`, the 200 held-out
images for `eval`), `voc:ROOT[:SPLIT]` (Pascal VOC layout; split trainval for train, test for
eval by default) and `coco:IMAGES_DIR:ANNOTATIONS_JSON`. Bad input exits with code 2 and a
message naming the file and what is wrong.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# Defined in frcnn_edu.samples; still importable from here.
from .samples import REPO, SHAPES_HELD_OUT, SHAPES_TRAIN, SHIPPED_CHECKPOINT  # noqa: F401


class UsageError(Exception):
    """Bad input from the user: printed without a traceback, exit code 2."""


def load_dataset(spec: str, purpose: str, classes=None):
    """Dataset from a --dataset string; purpose "train" or "eval" picks the default split."""
    from .data import COCODataset, ShapesDataset, VOCDataset

    kind, _, rest = spec.partition(":")
    if kind == "shapes":
        params = dict(SHAPES_TRAIN if purpose == "train" else SHAPES_HELD_OUT)
        if rest:   # shapes:SEED:NUM_IMAGES
            parts = rest.split(":")
            try:
                params["seed"] = int(parts[0])
                if len(parts) > 1:
                    params["num_images"] = int(parts[1])
            except ValueError:
                raise UsageError(f"--dataset {spec!r}: expected shapes[:SEED[:NUM_IMAGES]]") from None
        return ShapesDataset(**params)
    if kind == "voc":
        if not rest:
            raise UsageError("--dataset voc needs a directory: voc:ROOT[:SPLIT]")
        root, _, split = rest.partition(":")
        return VOCDataset(root, split or ("trainval" if purpose == "train" else "test"), classes=classes)
    if kind == "coco":
        images_dir, _, annotations = rest.partition(":")
        if not images_dir or not annotations:
            raise UsageError("--dataset coco needs coco:IMAGES_DIR:ANNOTATIONS_JSON")
        return COCODataset(images_dir, annotations)
    raise UsageError(f"unknown dataset {spec!r}: use shapes, voc:ROOT[:SPLIT] or coco:IMAGES_DIR:ANNOTATIONS_JSON")


def _print_results(results: dict, class_names) -> None:
    print(f"{'class':<20} {'AP (VOC07 11-pt)':>17} {'AP (area)':>10}")
    for name in class_names:
        ap, ap_area = results["ap"][name], results["ap_area"][name]
        print(f"{name:<20} {ap:>17.4f} {ap_area:>10.4f}")
    print(f"{'mAP':<20} {results['mAP']:>17.4f} {results['mAP_area']:>10.4f}")


def cmd_train(args) -> int:
    import torch

    from . import distributed
    from .config import get_preset
    from .faster_rcnn import FasterRCNN
    from .train import TrainingInterrupted, train

    out = Path(args.out)
    log = out.with_suffix(".jsonl")
    distributed.init_from_env()          # under torchrun: join the other ranks
    _check_run_folder(out, log, args)    # every rank decides alike, before any rank writes
    if distributed.is_distributed():
        torch.distributed.barrier()
    config = get_preset(args.preset)
    dataset = load_dataset(args.dataset, "train")
    if args.check_data:
        from .data import check_dataset

        print(f"checking every image and annotation of {args.dataset} ({len(dataset)} images) ...")
        problems = check_dataset(dataset)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        if problems:
            raise UsageError(f"{len(problems)} bad file(s) in {args.dataset} (listed above); fix or remove them")
        print("all images and annotations read")
    torch.manual_seed(args.seed)
    # ImageNet weights are only fetched for a new run: a resumed one reads its own from --out.
    try:
        model = FasterRCNN(len(dataset.classes), config=config, class_names=dataset.classes,
                           pretrained=args.pretrained and not args.resume)
    except RuntimeError as error:      # ImageNet weights could not be fetched (offline)
        raise UsageError(str(error)) from None
    if args.pretrained and args.resume:
        model.pretrained = True
        if config.backbone == "vgg16" and config.freeze_early_vgg:
            from .backbones import freeze_early_layers

            freeze_early_layers(model.backbone)     # conv1-conv2 stay fixed ([P] Sec. 3.1.3)
    if args.overwrite and distributed.rank() == 0:
        for path in (out, log):
            path.unlink(missing_ok=True)
    print(f"training {args.preset} ({args.schedule}) on {args.dataset}: {len(dataset)} images, "
          f"{len(dataset.classes)} classes, {args.iters} iterations")
    started = time.perf_counter()
    try:
        train(model, dataset, iters=args.iters, batch_size=args.batch_size, lr=args.lr,
              schedule=args.schedule, checkpoint=out, checkpoint_every=args.checkpoint_every,
              resume=args.resume, device=args.device, seed=args.seed, log=log, warmup=args.warmup,
              progress=not args.quiet, precision="fp16" if args.amp else args.precision,
              workers=args.workers)
    except TrainingInterrupted as stop:
        if distributed.rank() == 0:
            print(f"frcnn-edu train: {stop}; resume with: {_resume_command()}", file=sys.stderr)
        return stop.exit_code
    if distributed.rank() == 0:
        print(f"trained in {time.perf_counter() - started:.0f} s; checkpoint {out}, losses {log}")
    return 0


def _check_run_folder(out: Path, log: Path, args) -> None:
    """Never start over a run by accident, never resume from nothing."""
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other; choose one")
    if args.resume and not out.is_file():
        raise UsageError(f"--resume: there is no checkpoint at {out} to resume; leave out --resume "
                         f"to start a new run there")
    existing = [str(path) for path in (out, log) if path.exists()]
    if existing and not (args.resume or args.overwrite):
        raise UsageError(f"{out} already holds a run ({', '.join(existing)}); pass --resume to continue it "
                         f"or --overwrite to start a new one in its place")


def _resume_command() -> str:
    """The command line that continues this run: the same arguments plus --resume."""
    import shlex

    args = [a for a in sys.argv[1:] if a != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["frcnn-edu", *args])


def cmd_eval(args) -> int:
    from .checkpoints import load_model
    from .predict import evaluate_model

    model = load_model(args.checkpoint, device=args.device)
    if args.svd:
        try:
            fc6_rank, fc7_rank = (int(r) for r in args.svd.split(","))
            model.fast_rcnn.head.compress(fc6_rank, fc7_rank)
        except ValueError as error:
            raise UsageError(f"--svd {args.svd!r}: {error} (expected FC6_RANK,FC7_RANK, e.g. 1024,256)") from None
    dataset = load_dataset(args.dataset, "eval", classes=model.class_names if args.dataset.startswith("voc") else None)
    if tuple(dataset.classes) != tuple(model.class_names):
        raise UsageError(f"checkpoint {args.checkpoint} was trained on classes {list(model.class_names)} "
                         f"but {args.dataset} has classes {list(dataset.classes)}")
    results = evaluate_model(model, dataset, batch_size=args.batch_size, progress=not args.quiet,
                             precision=args.precision)
    _print_results(results, model.class_names)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


def cmd_detect(args) -> int:
    import torch
    from PIL import Image, UnidentifiedImageError

    from .checkpoints import load_model
    from .data.transforms import to_float_image
    from .precision import autocast
    from .viz import draw_detections, save_figure

    model = load_model(args.checkpoint, device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {}
    for path in map(Path, args.images):
        try:
            image = to_float_image(Image.open(path))
        except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
            raise UsageError(f"cannot read image {path}: {error}") from None
        with torch.inference_mode(), autocast(next(model.parameters()).device, args.precision):
            detections = {k: v.cpu() for k, v in model([image])[0].items()}
        ax = draw_detections(image, detections, model.class_names, args.score_thresh, title=path.name)
        png = out / f"{path.stem}_detections.png"
        save_figure(ax.figure, png)
        report[str(path)] = [
            {"box": [round(v, 2) for v in box], "label": model.class_names[label - 1], "score": round(score, 4)}
            for box, label, score in zip(detections["boxes"].tolist(), detections["labels"].tolist(),
                                         detections["scores"].tolist()) if score >= args.score_thresh]
        print(f"{path}: {len(report[str(path)])} detections -> {png}")
    (out / "detections.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'detections.json'}")
    return 0


def cmd_demo(args) -> int:
    import torch

    from .checkpoints import load_model
    from .config import get_preset
    from .data import ShapesDataset
    from .faster_rcnn import FasterRCNN
    from .predict import evaluate_model
    from .train import train
    from .viz import draw_detections, save_figure

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"wrote {draw_anchor_picture(out / 'anchors_on_photo.png')}")
    checkpoint = Path(args.checkpoint)
    if args.train:
        checkpoint = out / "shapes_tiny.pt"
        dataset = ShapesDataset(**SHAPES_TRAIN)
        model = FasterRCNN(len(dataset.classes), config=get_preset("shapes_tiny"), class_names=dataset.classes)
        print(f"training shapes_tiny from scratch for {args.iters} iterations ...")
        train(model, dataset, iters=args.iters, batch_size=4, checkpoint=checkpoint, device=args.device,
              warmup=100)
    model = load_model(checkpoint, device=args.device)
    held_out = ShapesDataset(seed=SHAPES_HELD_OUT["seed"], num_images=args.num_images)
    print(f"detecting on {len(held_out)} held-out shapes images with {checkpoint} ...")
    results = evaluate_model(model, held_out, batch_size=8, progress=True)
    _print_results(results, model.class_names)
    for i in range(min(args.num_pictures, len(held_out))):
        image, _ = held_out[i]
        with torch.inference_mode():
            detections = {k: v.cpu() for k, v in model([image])[0].items()}
        ax = draw_detections(image, detections, model.class_names, 0.5, title=f"held-out image {i}")
        save_figure(ax.figure, out / f"demo_{i:02d}.png")
    print(f"wrote {min(args.num_pictures, len(held_out))} pictures to {out}/")
    return 0


def draw_anchor_picture(path, photo: str = "astronaut", stride: int = 16) -> Path:
    """The 9 paper anchors at one feature-map position, over the sliding-window grid of a photo."""
    import torch
    from matplotlib.patches import Rectangle

    from .anchors import AnchorGenerator
    from .samples import load_sample_image
    from .viz import draw_boxes, save_figure, show_image

    image = load_sample_image(photo)
    height, width = image.shape[1:]
    grid = (-(-height // stride), -(-width // stride))
    generator = AnchorGenerator((128, 256, 512), (0.5, 1.0, 2.0), stride)
    anchors = generator(grid).view(grid[0], grid[1], generator.num_anchors, 4)
    y, x = grid[0] // 2, grid[1] // 2
    ax = show_image(image, title=f"9 anchors at feature position (y={y}, x={x}); stride {stride} grid")
    centres = torch.arange(grid[1]) * stride + stride / 2, torch.arange(grid[0]) * stride + stride / 2
    cx, cy = torch.meshgrid(*centres, indexing="xy")
    ax.scatter(cx.flatten(), cy.flatten(), s=1, c="white", alpha=0.6)
    draw_boxes(ax, anchors[y, x], labels=torch.tensor([1, 1, 1, 2, 2, 2, 3, 3, 3]), linewidth=1.5,
               class_names=["h/w 0.5", "h/w 1", "h/w 2"])
    window = stride * 3
    # the 3x3 sliding window's footprint on the feature grid, in image pixels
    ax.add_patch(Rectangle((x * stride - stride, y * stride - stride), window, window, fill=False,
                           edgecolor="yellow", linewidth=2))
    ax.set_xlim(-300, width + 300)
    ax.set_ylim(height + 300, -300)
    save_figure(ax.figure, path)
    return Path(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frcnn-edu", description="Faster R-CNN from scratch: train, "
                                     "evaluate and run detectors.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    def precision(p):
        p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                       help="fp32 (default), bf16 (CPU and CUDA) or fp16 (CUDA): mixed precision "
                            "for convolutions and matrix products; boxes and losses stay float32")

    p = sub.add_parser("train", help="train a detector",
                       description="Train Faster R-CNN; the checkpoint at --out is rewritten as training goes.")
    p.add_argument("--dataset", required=True, help="shapes | voc:ROOT[:SPLIT] | coco:IMAGES_DIR:ANNOTATIONS_JSON")
    p.add_argument("--preset", default="shapes_tiny", help="shapes_tiny | paper_vgg16 | paper_zf")
    p.add_argument("--iters", type=int, required=True, help="training iterations (mini-batches)")
    p.add_argument("--out", required=True, help="checkpoint path (.pt); losses go to the same name .jsonl")
    p.add_argument("--schedule", default="joint", choices=["joint", "alternating"],
                   help="approximate joint training or the paper's 4-step alternating training")
    p.add_argument("--pretrained", action="store_true",
                   help="start VGG-16 from torchvision's ImageNet weights (downloaded once into the torch "
                        "hub cache; the paper's setting). Without it the backbone starts from scratch")
    p.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is --out")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run at --out, replacing the checkpoint and loss log there")
    p.add_argument("--check-data", action="store_true",
                   help="first decode every image and parse every annotation, and list every bad file")
    p.add_argument("--batch-size", type=int, default=4, help="images per mini-batch")
    p.add_argument("--lr", type=float, default=None, help="base learning rate (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up iterations")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--amp", action="store_true", help="the same as --precision fp16 (CUDA only)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes (default: up to 4, one fewer than the CPU cores; "
                        "0 loads in the training process); batches are the same for any number")
    precision(p)
    common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="VOC mAP of a checkpoint on a dataset",
                       description="Per-class AP and mAP at IoU 0.5, VOC07 11-point and area under the curve.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", required=True, help="shapes | voc:ROOT[:SPLIT] | coco:IMAGES_DIR:ANNOTATIONS_JSON")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--svd", metavar="FC6_RANK,FC7_RANK",
                   help="compress fc6/fc7 by truncated SVD first (Fast R-CNN Sec. 3.1; paper: 1024,256)")
    precision(p)
    common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("detect", help="detect objects in image files",
                       description="Write an annotated PNG per image and detections.json to --out.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--score-thresh", type=float, default=0.5)
    precision(p)
    common(p)
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("demo", help="the shipped detector on held-out shapes (or --train first)",
                       description="Load the shipped shapes_tiny checkpoint, detect on held-out shapes, "
                                   "print mAP and write annotated PNGs.")
    p.add_argument("--train", action="store_true", help="first train from scratch (minutes on a CPU)")
    p.add_argument("--iters", type=int, default=3000, help="iterations for --train")
    p.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT))
    p.add_argument("--num-images", type=int, default=200, help="held-out images to evaluate on")
    p.add_argument("--num-pictures", type=int, default=6, help="annotated PNGs to write")
    p.add_argument("--out", default="outputs/demo")
    common(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, ValueError, OSError, FloatingPointError) as error:
        # A user's mistake or the machine's state (a missing file, a full disk, a diverged run):
        # one line, exit 2. Anything else is a bug and keeps its traceback.
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"frcnn-edu {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:   # Ctrl-C outside training's own handling (loading data, evaluating)
        print(f"frcnn-edu {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
