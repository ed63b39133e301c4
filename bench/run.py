"""frcnn_edu vs torchvision's Faster R-CNN, side by side, in one run: `make bench`.

    python -m bench.run [--device cpu|cuda] [--quick] [--out bench/RESULTS.md] [--threads N]
                        [--acc-iters N] [--acc-seeds N] [--skip SECTION ...]

Writes a Markdown report (default bench/RESULTS.md): the machine, a goals table (met / missed by
how much), then one table per section. Every comparison alternates the systems inside one loop
after a warm-up and reports medians; ratios are frcnn_edu / torchvision (< 1: frcnn_edu faster).
--quick is a smoke test (small images, one repetition, a few training iterations): its numbers
are not comparable with a full run. bench/README.md explains each section.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import functools
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field

import torch
import torchvision

import frcnn_edu
from frcnn_edu.data import ShapesDataset

from . import accuracy, flops, memory, ops, stages
from .systems import CachedDataset, frcnn_edu_model, nchw_copy, shapes_batch, to_device, torchvision_twin
from .timing import compare, make_sync, median_laps, time_call

SECTIONS = ("floor", "inference", "stages", "training", "memory", "ops", "accuracy")


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------
@dataclass
class Settings:
    vgg_size: tuple = (600, 1000)         # image given to both; min_size / max_size follow it
    vgg_quick_changes: dict = field(default_factory=dict)   # config changes for --quick only
    num_classes_vgg: int = 20             # PASCAL VOC
    warmup: int = 1
    inf_reps_vgg: int = 3
    inf_reps_tiny: int = 10
    stage_reps_vgg: int = 3
    stage_reps_tiny: int = 10
    conv_reps: int = 3
    train_batches_vgg: tuple = (2,)
    train_reps_vgg: int = 2
    train_batches_tiny: tuple = (2, 8)
    train_reps_tiny: int = 5
    train_stage_reps_vgg: int = 1
    train_stage_reps_tiny: int = 3
    train_stage_batch_tiny: int = 8
    memory_batch: int = 8
    memory_runs: int = 3
    matmul_sizes: tuple = (2048, 4096)
    svd_ranks: dict = field(default_factory=lambda: {"vgg": (1024, 256), "tiny": (64, 64)})
    acc_seeds: int = 3
    acc_iters: int = 250
    acc_batch: int = 4
    acc_warmup: int = 50
    acc_train_images: int = 1000
    acc_test_images: int = 200
    quick: bool = False
    notes: list = field(default_factory=list)

    @classmethod
    def for_run(cls, device: torch.device, quick: bool) -> Settings:
        if quick:
            return cls(vgg_size=(128, 192), vgg_quick_changes={"rpn_post_nms_top_n_test": 50,
                                                                 "rpn_post_nms_top_n_train": 200,
                                                                 "roi_batch_size": 16,
                                                                 "representation_size": 1024},
                       train_batches_tiny=(2,), memory_batch=2, memory_runs=1, matmul_sizes=(1024,),
                       inf_reps_vgg=1, inf_reps_tiny=2, stage_reps_vgg=1,
                       stage_reps_tiny=1, conv_reps=1, train_reps_vgg=1, train_reps_tiny=1,
                       train_stage_reps_tiny=1, acc_seeds=2, acc_iters=2, acc_batch=2, acc_warmup=1,
                       warmup=0, train_stage_batch_tiny=2,
                       acc_train_images=6, acc_test_images=4, quick=True,
                       notes=["--quick: VGG-16 at 128 x 192 with fc6/fc7 of 1024, 50 test proposals and "
                              "16 RoIs per image in training; no warm-up, one repetition; batch 2 for "
                              "memory and the training stages; 2 training iterations: a smoke test, "
                              "NOT comparable numbers"])
        if device.type == "cuda":
            return cls(inf_reps_vgg=20, inf_reps_tiny=30, stage_reps_vgg=10, stage_reps_tiny=20,
                       conv_reps=10, train_batches_vgg=(2, 8), train_reps_vgg=5, train_reps_tiny=10,
                       train_stage_reps_vgg=3, train_stage_reps_tiny=10, warmup=3)
        return cls()


# ----------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------
def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def goal_status(value: float, target: float, lower_is_better: bool = True, unit: str = "") -> str:
    """'met' or 'missed by X' for value vs target."""
    if value != value:   # NaN
        return "not measured"
    ok = value <= target if lower_is_better else value >= target
    if ok:
        return "met"
    return f"missed by {abs(value - target):.3g}{unit}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores (os.cpu_count)": os.cpu_count(),
        "cores usable (sched_getaffinity)": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?",
        "torch threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "frcnn_edu": frcnn_edu.__version__,
        "device": str(device),
        "load average at start (1/5/15 min)": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["TF32 matmul / cuDNN conv"] = (f"{torch.backends.cuda.matmul.allow_tf32} / "
                                            f"{torch.backends.cudnn.allow_tf32}")
    return info


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, device: torch.device, settings: Settings, threads: int | None):
        self.device, self.s, self.threads = device, settings, threads
        self.sync = make_sync(device)
        self.results: dict = {}       # numbers the goals table reads
        self.markdown: list[str] = []
        self.section_times: dict[str, float] = {}

    # -- models -----------------------------------------------------------------------------
    def vgg_changes(self) -> dict:
        h, w = self.s.vgg_size
        return {"min_size": min(h, w), "max_size": max(h, w), **self.s.vgg_quick_changes}

    def timing_pair(self, preset: str, num_classes: int, **changes):
        """(frcnn_edu, torchvision) on the device, same backbone weights, eval mode.

        Timing configuration: rpn_objectness="sigmoid" (torchvision's k logits, so the whole RPN
        head is copied) and score_thresh=0.0 for both (random weights score ~1/(C+1) per class,
        below 0.05: with 0.0 post-processing sees all 300 x C boxes, as a trained model sees its
        many low-scoring boxes).
        """
        ours = frcnn_edu_model(preset, num_classes, rpn_objectness="sigmoid", score_thresh=0.0, **changes)
        tv = torchvision_twin(ours)
        return ours.to(self.device).eval(), tv.to(self.device).eval()

    def vgg_image(self, num: int = 1, seed: int = 0):
        images, targets = shapes_batch(num, self.s.vgg_size, seed=seed)
        return to_device(images, targets, self.device)

    def tiny_image(self, num: int = 1, seed: int = 0):
        return to_device(*shapes_batch(num, (256, 256), seed=seed), self.device)

    def configs(self):
        """[(label, preset, num_classes, changes, images_fn, reps...)] of the two compared configs."""
        h, w = self.s.vgg_size
        return [
            {"label": f"VGG-16 paper ({h}x{w})", "key": "vgg", "preset": "paper_vgg16",
             "num_classes": self.s.num_classes_vgg, "changes": self.vgg_changes(), "images": self.vgg_image,
             "inf_reps": self.s.inf_reps_vgg, "stage_reps": self.s.stage_reps_vgg},
            {"label": "shapes_tiny (256x256)", "key": "tiny", "preset": "shapes_tiny", "num_classes": 5,
             "changes": {}, "images": self.tiny_image,
             "inf_reps": self.s.inf_reps_tiny, "stage_reps": self.s.stage_reps_tiny},
        ]

    def add(self, text: str) -> None:
        """Append one Markdown block (paragraph, table or heading)."""
        self.markdown.append(text.strip("\n"))

    # -- sections ---------------------------------------------------------------------------
    def section_floor(self) -> None:
        self.add("## The FLOP floor, and the conv stack's memory format\n")
        rates = [flops.matmul_gflops(self.device, n=n, reps=10 if n <= 2048 else 3, sync=self.sync)
                 for n in self.s.matmul_sizes]
        rate = max(rates, key=lambda r: r["best"])
        self.results["matmul"] = rates
        ours = frcnn_edu_model("paper_vgg16", self.s.num_classes_vgg, **self.vgg_changes())
        h, w = self.s.vgg_size
        padded = (-(-h // 16) * 16, -(-w // 16) * 16)
        nominal = flops.model_flops(ours, (h, w), ours.config.rpn_post_nms_top_n_test)
        actual = flops.model_flops(ours, padded, ours.config.rpn_post_nms_top_n_test)
        tiny = frcnn_edu_model("shapes_tiny", 5)
        tiny_flops = flops.model_flops(tiny, (256, 256), tiny.config.rpn_post_nms_top_n_test)
        self.results["flops"] = {"vgg": nominal, "vgg_padded": actual, "tiny": tiny_flops}
        best = rate["best"]
        self.results["floor_s"] = {"vgg": nominal["total"] / best, "tiny": tiny_flops["total"] / best}
        rows = []
        for label, f in ((f"VGG-16 paper, {h}x{w} (ceil-mode maps)", nominal),
                         (f"VGG-16 paper, padded input {padded[0]}x{padded[1]} (what both run)", actual),
                         ("shapes_tiny, 256x256", tiny_flops)):
            rows.append([label, "x".join(map(str, f["feature_size"])), f"{f['backbone']:.1f}",
                         f"{f['rpn_head']:.2f}", f"{f['detector']:.2f}", f"**{f['total']:.1f}**",
                         ms(f["total"] / best)])
        self.add("fp32 matmul throughput: " + "; ".join(
            f"{r['n']}x{r['n']} ({r['reps']} reps) median {r['median']:.1f}, best {r['best']:.1f} GFLOP/s"
            for r in rates) + f". The floor divides by the best: **{best:.1f} GFLOP/s**. (Where the conv "
            f"stack below runs faster than this, oneDNN's convolutions beat the matmul reference: the "
            f"floor is an estimate, not a hard bound.)\n")
        self.add(table(["configuration", "feature map", "backbone GFLOP", "RPN head GFLOP",
                        f"fc6/fc7/outputs on {nominal['num_rois']} RoIs GFLOP", "total GFLOP", "floor (ms)"], rows))
        self.add(f"\nA hand estimate gives about 449 GFLOP (366 + 11 + 72); counted here from the layer "
                 f"shapes (2 FLOPs per multiply-add, {self.s.num_classes_vgg + 1} classes): "
                 f"{nominal['total']:.1f} GFLOP at {h}x{w}, {actual['total']:.1f} on the padded input. "
                 f"The floor uses the unpadded count.\n")

        # The conv stack alone: no_grad vs inference_mode, contiguous vs channels_last.
        backbone = ours.backbone.to(self.device).eval()
        backbone_cl = copy.deepcopy(backbone).to(memory_format=torch.channels_last)
        x = torch.randn(1, 3, *padded, device=self.device)
        x_cl = x.contiguous(memory_format=torch.channels_last)

        def run(module, inp, mode):
            def f():
                with mode():
                    return module(inp)
            return f

        variants = {"no_grad, contiguous (NCHW)": run(backbone, x, torch.no_grad),
                    "inference_mode, contiguous (NCHW)": run(backbone, x, torch.inference_mode),
                    "inference_mode, channels_last (NHWC)": run(backbone_cl, x_cl, torch.inference_mode)}
        result = compare(variants, warmup=self.s.warmup, reps=self.s.conv_reps, sync=self.sync)
        gflop = actual["backbone"]
        floor = gflop / best
        base = result["no_grad, contiguous (NCHW)"]["median"]
        rows = [[name, ms(r["median"]), ms(r["min"]), f"{gflop / r['median']:.1f}", f"{r['median'] / floor:.2f}",
                 f"{r['median'] / base:.2f}"] for name, r in result.items()]
        self.results["conv_variants"] = {k: v["median"] for k, v in result.items()}
        self.add(f"\nVGG-16 conv1_1-conv5_3 alone on one {padded[0]}x{padded[1]} input ({gflop:.1f} GFLOP), "
                 f"{self.s.conv_reps} alternating reps:\n")
        self.add(table(["variant", "median (ms)", "min (ms)", "GFLOP/s", "x floor", "vs no_grad NCHW"], rows))
        del backbone, backbone_cl
        self.detector_head_svd(ours)
        del ours

    def detector_head_svd(self, ours) -> None:
        """What-if: fc6/fc7 replaced by truncated SVD (Fast R-CNN Sec. 3.1: ranks 1024 and 256)."""
        head = ours.fast_rcnn.head.to(self.device).eval()
        rois = ours.config.rpn_post_nms_top_n_test
        x = torch.randn(rois, head.fc6.in_features, device=self.device)
        r6, r7 = min(1024, head.fc6.out_features), min(256, head.fc7.out_features)
        # Random factors of the right shapes: the timing does not depend on the values.
        svd6 = torch.nn.Sequential(torch.nn.Linear(head.fc6.in_features, r6, bias=False),
                                   torch.nn.Linear(r6, head.fc6.out_features)).to(self.device)
        svd7 = torch.nn.Sequential(torch.nn.Linear(head.fc7.in_features, r7, bias=False),
                                   torch.nn.Linear(r7, head.fc7.out_features)).to(self.device)

        def run(fc6, fc7):
            def f():
                with torch.inference_mode():
                    return fc7(torch.relu(fc6(x))).relu()
            return f

        result = compare({"dense fc6/fc7": run(head.fc6, head.fc7), "truncated SVD": run(svd6, svd7)},
                         warmup=self.s.warmup, reps=self.s.conv_reps, sync=self.sync)
        dense_gflop = 2 * rois * (head.fc6.in_features * head.fc6.out_features
                                  + head.fc7.in_features * head.fc7.out_features) / 1e9
        svd_gflop = 2 * rois * sum(fc.in_features * fc.out_features for fc in (*svd6, *svd7)) / 1e9
        self.results["svd"] = {k: v["median"] for k, v in result.items()}
        self.add(f"What-if, a paper-faithful speed lever: fc6 and fc7 on {rois} RoIs, dense vs "
                 f"truncated SVD (Fast R-CNN Sec. 3.1: top {r6} singular values of fc6, top {r7} of fc7; "
                 f"random factors, timing only — the accuracy cost has to be measured on a trained model):")
        self.add(table(["variant", "GFLOP", "median (ms)", "min (ms)"],
                       [[name, f"{g:.1f}", ms(r["median"]), ms(r["min"])]
                        for (name, r), g in zip(result.items(), (dense_gflop, svd_gflop))]))

    def section_inference(self) -> None:
        self.add("## Inference latency (one image, batch 1, `torch.inference_mode()`)\n")
        self.add("Both in eval mode, `rpn_objectness=\"sigmoid\"` in frcnn_edu so the RPN head weights are "
                 "copied, `score_thresh=0.0` in both (see README). frcnn_edu runs its defaults "
                 "(`channels_last=True`: NHWC convolutions); torchvision runs as shipped (NCHW). For "
                 "context, two more variants in the same loop: frcnn_edu with `channels_last=False` "
                 "(what the default buys) and torchvision with its whole model converted to "
                 "`channels_last` (what a torchvision user could do by hand).\n")
        rows = []
        self.results["inference"] = {}
        for cfg in self.configs():
            ours, tv = self.timing_pair(cfg["preset"], cfg["num_classes"], **cfg["changes"])
            ours_nchw, tv_cl = nchw_copy(ours), copy.deepcopy(tv).to(memory_format=torch.channels_last)
            images, _ = cfg["images"](1)

            def call(model):
                def f():
                    with torch.inference_mode():
                        return model(images)
                return f

            ours_svd = copy.deepcopy(ours)
            ours_svd.fast_rcnn.head.compress(*self.s.svd_ranks[cfg["key"]])
            names = ("frcnn_edu", "torchvision", "frcnn_edu NCHW", "torchvision channels_last", "frcnn_edu SVD")
            result = compare(dict(zip(names, map(call, (ours, tv, ours_nchw, tv_cl, ours_svd)))),
                             warmup=self.s.warmup, reps=cfg["inf_reps"], sync=self.sync)
            a, b, c, d, e = (result[k]["median"] for k in names)
            floor = self.results.get("floor_s", {}).get(cfg["key"], float("nan"))
            self.results["inference"][cfg["key"]] = {"frcnn_edu": a, "torchvision": b, "nchw": c,
                                                     "torchvision_cl": d, "svd": e, "ratio": a / b,
                                                     "ratio_svd": e / b,
                                                     "last": result["frcnn_edu"]["last"]}
            dets = [len(result[k]["last"][0]["boxes"]) for k in ("frcnn_edu", "torchvision")]
            spread = " / ".join(f"{ms(min(r['times']))}-{ms(max(r['times']))}" for r in result.values())
            rows.append([cfg["label"], ms(a), ms(b), f"**{a / b:.3f}**", ms(c), ms(d), f"{a / d:.3f}",
                         f"{ms(e)} ({e / b:.3f})", f"{a / floor:.2f} / {b / floor:.2f}",
                         f"{dets[0]} / {dets[1]}", cfg["inf_reps"], spread])
            del ours, tv, ours_nchw, tv_cl, ours_svd
        self.add(table(["configuration", "frcnn_edu (ms)", "torchvision (ms)", "ratio",
                        "frcnn_edu NCHW (ms)", "torchvision channels_last (ms)", "ratio to tv channels_last",
                        "frcnn_edu + truncated SVD (ms, ratio)", "x floor (edu / tv)",
                        "detections (edu / tv)", "reps", "min-max ms (edu / tv / edu NCHW / tv CL / SVD)"], rows))
        ranks = self.s.svd_ranks
        self.add(f"\nTruncated SVD ([F] Sec. 3.1, `model.fast_rcnn.head.compress(fc6_rank, fc7_rank)`, a test-time "
                 f"option, not the default): ranks {ranks['vgg']} for VGG-16 (the paper's), {ranks['tiny']} for "
                 f"shapes_tiny. Timing only here (random weights); its accuracy cost on the trained "
                 f"shapes_tiny checkpoint is in bench/README.md.\n")

    def section_stages(self) -> None:
        self.add("## Where the time goes (frcnn_edu)\n")
        self.add("Each stage timed inside the model's own `model(images)` call: a clock with a device sync "
                 "wraps each submodule and function for the call (bench/stages.py); \"glue\" is what no "
                 "clock covers; medians over reps. The timed pass is checked against an untimed "
                 "`model(images)` (same detections).\n")
        self.results["stages"] = {}
        for cfg in self.configs():
            ours, _ = self.timing_pair(cfg["preset"], cfg["num_classes"], **cfg["changes"])
            images, _ = cfg["images"](1)
            runs, whole = [], []
            with torch.inference_mode():
                # The staged pass and the unsplit model(images) alternate, so the sum of the stages
                # can be checked against the real forward pass measured at the same time.
                for i in range(self.s.warmup + cfg["stage_reps"]):
                    for part in ((0, 1) if i % 2 == 0 else (1, 0)):
                        if part == 0:
                            times, detections = stages.staged_inference(ours, images, self.sync)
                        else:
                            seconds, reference = time_call(functools.partial(ours, images), self.sync)
                        if i >= self.s.warmup:
                            (runs.append(times) if part == 0 else whole.append(seconds))
            same = stages.same_detections(reference, detections)
            med = median_laps(runs)
            total = sum(med.values())
            forward = statistics.median(whole)
            outside = 1 - med["backbone"] / total
            self.results["stages"][cfg["key"]] = {"stages": med, "total": total, "outside": outside, "same": same,
                                                  "forward": forward}
            rows = [[name, ms(t), f"{100 * t / total:.1f}%", stages.PAPER_COLUMN[name]] for name, t in med.items()]
            rows.append(["**total** (sum of stages)", f"**{ms(total)}**", "100%", ""])
            rows.append(["model(images), unsplit, same loop", ms(forward), f"{100 * forward / total:.1f}%", ""])
            self.add(f"### Inference, {cfg['label']} (staged == model(images): {'yes' if same else '**NO**'})\n")
            self.add(table(["stage", "median (ms)", "share", "paper Table 5 column"], rows))
            if cfg["key"] == "vgg":
                cols = {}
                for name, t in med.items():
                    cols[stages.PAPER_COLUMN[name]] = cols.get(stages.PAPER_COLUMN[name], 0.0) + t
                paper = stages.PAPER_MS
                prow = [[col, ms(cols.get(col, 0.0)), f"{100 * cols.get(col, 0.0) / total:.1f}%",
                         f"{paper[col]:.0f}", f"{100 * paper[col] / paper['total']:.1f}%"]
                        for col in ("conv", "proposal", "region-wise")]
                prow.append(["preprocess (not in Table 5)", ms(cols.get("(not in the table)", 0.0)),
                             f"{100 * cols.get('(not in the table)', 0.0) / total:.1f}%", "-", "-"])
                self.add("\nNext to the paper (Table 5, VGG-16 RPN + Fast R-CNN on a K40 GPU):\n")
                self.add(table(["column", "frcnn_edu here (ms)", "share", "paper K40 (ms)", "paper share"], prow))
                self.add(f"\nShare of the time outside the backbone: **{100 * outside:.1f}%** "
                         f"(paper: (10 + 47) / 198 = 28.8%; goal <= 25%).\n")
            del ours

        # Training: one step split into stages, frcnn_edu only.
        for key, label, batch_size, reps in (
                ("vgg", self.configs()[0]["label"], 2, self.s.train_stage_reps_vgg),
                ("tiny", "shapes_tiny (256x256)", self.s.train_stage_batch_tiny, self.s.train_stage_reps_tiny)):
            cfg = next(c for c in self.configs() if c["key"] == key)
            ours, _ = self.timing_pair(cfg["preset"], cfg["num_classes"], **cfg["changes"])
            ours.train()
            optimizer = torch.optim.SGD(ours.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
            images, targets = cfg["images"](batch_size, seed=1)
            runs = []
            for i in range(self.s.warmup + reps):
                times, _ = stages.staged_training_step(ours, optimizer, images, targets, self.sync)
                if i >= self.s.warmup:
                    runs.append(times)
            med = median_laps(runs)
            total = sum(med.values())
            self.results["stages"][f"train_{key}"] = {"stages": med, "total": total}
            rows = [[name, ms(t), f"{100 * t / total:.1f}%"] for name, t in med.items()]
            rows.append(["**total**", f"**{ms(total)}**", "100%"])
            self.add(f"### One training step, {label}, batch {batch_size} ({reps} rep(s) after {self.s.warmup} "
                     f"warm-up step(s))")
            self.add(table(["stage", "median (ms)", "share"], rows))
            del ours, optimizer

    def section_training(self) -> None:
        self.add("## Training step time (forward + backward + SGD step)\n")
        self.add("SGD lr 1e-4, momentum 0.9, weight decay 5e-4 for all; same images and targets "
                 "(shapes images at the configuration's size); frcnn_edu with `rpn_objectness=\"sigmoid\"` "
                 "and the paper's dropout 0.5 (VGG), torchvision's TwoMLPHead has none. All layers are "
                 "trained (random weights: the paper freezes conv1-conv2 only when starting from ImageNet). "
                 "frcnn_edu runs its defaults (`channels_last=True`), torchvision as shipped (NCHW); for "
                 "context, frcnn_edu with `channels_last=False` and torchvision converted to "
                 "`channels_last` run in the same loop.\n")
        rows = []
        self.results["training"] = {}
        plan = [(c, b) for c in self.configs() for b in
                (self.s.train_batches_vgg if c["key"] == "vgg" else self.s.train_batches_tiny)]
        for cfg, batch_size in plan:
            ours, tv = self.timing_pair(cfg["preset"], cfg["num_classes"], **cfg["changes"])
            images, targets = cfg["images"](batch_size, seed=1)
            reps = self.s.train_reps_vgg if cfg["key"] == "vgg" else self.s.train_reps_tiny

            def step_fn(model):
                model.train()
                optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)

                def step():
                    losses = model(images, targets)
                    loss = sum(losses.values())
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    return float(loss.detach())
                return step

            ours_nchw, tv_cl = nchw_copy(ours), copy.deepcopy(tv).to(memory_format=torch.channels_last)
            names = ("frcnn_edu", "torchvision", "frcnn_edu NCHW", "torchvision channels_last")
            result = compare(dict(zip(names, map(step_fn, (ours, tv, ours_nchw, tv_cl)))),
                             warmup=self.s.warmup, reps=reps, sync=self.sync)
            a, b, c, d = (result[k]["median"] for k in names)
            self.results["training"][f"{cfg['key']}_b{batch_size}"] = {"frcnn_edu": a, "torchvision": b,
                                                                      "nchw": c, "torchvision_cl": d,
                                                                      "ratio": a / b}
            finite = all(v == v and abs(v) != float("inf") for v in (r["last"] for r in result.values()))
            spread = " / ".join(f"{ms(min(r['times']))}-{ms(max(r['times']))}" for r in result.values())
            rows.append([cfg["label"], batch_size, ms(a), ms(b), f"**{a / b:.3f}**", ms(c), ms(d),
                         f"{a / d:.3f}", reps, spread, "yes" if finite else "**NO**"])
            del ours, tv, ours_nchw, tv_cl
        self.add(table(["configuration", "batch", "frcnn_edu (ms)", "torchvision (ms)", "ratio",
                        "frcnn_edu NCHW (ms)", "torchvision channels_last (ms)", "ratio to tv channels_last",
                        "reps", "min-max ms (edu / tv / edu NCHW / tv CL)", "losses finite"], rows))
        if self.device.type == "cpu":
            self.add("\nVGG-16 batch 8 is measured on CUDA only (on a 2-core CPU one step takes minutes).\n")

    def section_memory(self) -> None:
        self.add(f"## Peak memory of a shapes_tiny training step (batch {self.s.memory_batch})\n")
        rows = []
        self.results["memory"] = {}
        runs = {"frcnn_edu": [], "torchvision": []}
        for i in range(self.s.memory_runs):
            for system in (("frcnn_edu", "torchvision") if i % 2 == 0 else ("torchvision", "frcnn_edu")):
                runs[system].append(memory.measure_in_subprocess(system, self.device, self.s.memory_batch,
                                                                 self.threads))
        for system, rs in runs.items():
            steps = sorted(r["step_mb"] for r in rs)
            median = rs[[r["step_mb"] for r in rs].index(statistics.median_low(steps))]
            self.results["memory"][system] = {**median, "all_step_mb": steps}
        a, b = (self.results["memory"][k] for k in ("frcnn_edu", "torchvision"))
        for name, r in (("frcnn_edu", a), ("torchvision", b)):
            rows.append([name, f"{r['step_mb']:.1f}", ", ".join(f"{v:.1f}" for v in r["all_step_mb"]),
                         f"{r['peak_mb']:.1f}", f"{r['before_mb']:.1f}"])
        self.add(f"Each system in its own fresh process (`python -m bench.memory`), {self.s.memory_runs} "
                 f"process(es) per system, alternating; method: {a['method']}. 'Step' = peak during two "
                 "training steps minus what was in use before them (activations, gradients, momentum "
                 "buffers, temporaries); the median run is shown.\n")
        self.add(table(["system", "step peak (MB)", "all runs (MB)", "absolute peak (MB)",
                        "before the steps (MB)"], rows))
        self.add(f"\nRatio of step peaks frcnn_edu / torchvision: **{a['step_mb'] / b['step_mb']:.3f}**\n")

    def section_ops(self) -> None:
        self.add("## Reference (readable) vs fast operations\n")
        self.add("What the readable versions the notebooks show cost next to torchvision's compiled "
                 "kernels (the model uses the fast ones). Inputs: bench/ops.py.\n")
        rows = ops.bench_ops(self.device, self.sync, quick=self.s.quick)
        self.results["ops"] = rows
        self.add(table(["operation", "size", "A", "A (ms)", "B", "B (ms)", "A / B"],
                       [[r["op"], r["size"], r["a"], ms(r["reference_s"]), r["b"], ms(r["fast_s"]),
                         f"{r['ratio']:.1f}"] for r in rows]))

    def section_accuracy(self) -> None:
        s = self.s
        self.add("## Accuracy at equal budget (shapes data, VOC07 11-point mAP@0.5)\n")
        train_set = CachedDataset(ShapesDataset(num_images=s.acc_train_images, seed=0))
        test_set = CachedDataset(ShapesDataset(num_images=s.acc_test_images, seed=1))
        runs = []
        for seed in range(s.acc_seeds):
            runs.append(accuracy.run_seed(train_set, test_set, seed=seed, iters=s.acc_iters,
                                          batch_size=s.acc_batch, warmup=s.acc_warmup, device=self.device))
        summary = accuracy.summarise(runs)
        self.results["accuracy"] = summary
        self.add(f"shapes_tiny preset for both (torchvision configured from it, RoI max pooling), "
                 f"{s.acc_iters} iterations of batch {s.acc_batch} (LR {frcnn_edu.get_preset('shapes_tiny').lr}, "
                 f"linear warm-up {s.acc_warmup}, x0.1 after 75%), momentum 0.9, weight decay 5e-4, "
                 f"flips p = 0.5 identical for both; train: ShapesDataset(seed=0, num_images="
                 f"{s.acc_train_images}), test: ShapesDataset(seed=1, num_images={s.acc_test_images}); "
                 f"seeds {list(range(s.acc_seeds))} (initial weights, batch order, flips, sampling). "
                 f"Both start from the same weights except the RPN classifier (frcnn_edu: paper's 2k "
                 f"softmax logits; torchvision: k sigmoid logits).\n")
        rows = []
        for seed, r in enumerate(runs):
            rows.append([seed, f"{r['frcnn_edu']['mAP']:.4f}", f"{r['torchvision']['mAP']:.4f}",
                         f"{r['frcnn_edu']['mAP_area']:.4f}", f"{r['torchvision']['mAP_area']:.4f}",
                         f"{r['frcnn_edu']['detections_per_image']:.1f} / "
                         f"{r['torchvision']['detections_per_image']:.1f}",
                         f"{r['frcnn_edu']['train_s']:.1f} / {r['torchvision']['train_s']:.1f}"])
        a, b = summary["frcnn_edu"], summary["torchvision"]
        rows.append(["**mean ± std**", f"**{a['mean']:.4f} ± {a['std']:.4f}**", f"**{b['mean']:.4f} ± {b['std']:.4f}**",
                     "", "", "", f"{a['train_s']:.1f} / {b['train_s']:.1f} (median)"])
        self.add(table(["seed", "frcnn_edu mAP (07)", "torchvision mAP (07)", "frcnn_edu mAP (area)",
                        "torchvision mAP (area)", "detections / image (edu / tv)", "train time s (edu / tv) *"], rows))
        self.add(f"\nRange over seeds: frcnn_edu {a['min']:.4f}-{a['max']:.4f}, torchvision "
                 f"{b['min']:.4f}-{b['max']:.4f}. At this budget both detectors are far from converged "
                 f"(`frcnn-edu demo --train` trains 3,000 iterations); the comparison is of equal budgets.\n")
        self.add("\\* Training wall times of the two systems are taken one after the other, not "
                 "interleaved: on a shared machine they are not a controlled comparison (the training "
                 "section is).")

    # -- goals --------------------------------------------------------------------------------
    def goals(self) -> str:
        r = self.results
        rows = []
        for key, label in (("vgg", "VGG-16 paper"), ("tiny", "shapes_tiny")):
            v = r.get("inference", {}).get(key, {}).get("ratio", float("nan"))
            rows.append([f"inference ratio, {label}", "<= 0.9", f"{v:.3f}", goal_status(v, 0.9)])
        for key, v in r.get("training", {}).items():
            rows.append([f"training step ratio, {key.replace('_b', ', batch ')}", "<= 0.9",
                         f"{v['ratio']:.3f}", goal_status(v["ratio"], 0.9)])
        if "accuracy" in r:
            a, b = r["accuracy"]["frcnn_edu"]["mean"], r["accuracy"]["torchvision"]["mean"]
            rows.append(["mAP (mean over seeds) >= torchvision's", f">= {b:.4f}", f"{a:.4f}",
                         goal_status(a, b, lower_is_better=False)])
        if "vgg" in r.get("stages", {}):
            v = 100 * r["stages"]["vgg"]["outside"]
            rows.append(["share outside the backbone, VGG-16 inference", "<= 25%", f"{v:.1f}%",
                         goal_status(v, 25.0, unit=" points")])
        if "memory" in r:
            a, b = r["memory"]["frcnn_edu"]["step_mb"], r["memory"]["torchvision"]["step_mb"]
            rows.append([f"peak memory of a shapes_tiny step (batch {self.s.memory_batch})", f"< {b:.1f} MB",
                         f"{a:.1f} MB",
                         "met" if a < b else f"missed by {a - b:.1f} MB"])
        if "vgg" in r.get("inference", {}) and "floor_s" in r:
            floor = r["floor_s"]["vgg"]
            v = r["inference"]["vgg"]["frcnn_edu"] / floor
            rows.append(["VGG-16 inference / FLOP floor (project aim)", "<= 1.15", f"{v:.2f}",
                         goal_status(v, 1.15)])
        return table(["goal", "target", "measured", "status"], rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="frcnn_edu vs torchvision Faster R-CNN benchmarks")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, not comparable numbers")
    parser.add_argument("--out", default="bench/RESULTS.md", help="Markdown report to write")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's default); 1 helps on an overloaded machine")
    parser.add_argument("--acc-iters", type=int, default=None, help="training iterations per system and seed")
    parser.add_argument("--acc-seeds", type=int, default=None, help="number of seeds for the accuracy section")
    parser.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections to leave out")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings.for_run(device, args.quick)
    if args.acc_iters is not None:
        settings.acc_iters = args.acc_iters
        settings.acc_warmup = min(settings.acc_warmup, max(1, args.acc_iters // 5))
    if args.acc_seeds is not None:
        settings.acc_seeds = args.acc_seeds

    started = time.perf_counter()
    info = machine_info(device)
    bench = Bench(device, settings, args.threads)
    failures = []
    for name in SECTIONS:
        if name in args.skip:
            continue
        print(f"[bench] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            getattr(bench, f"section_{name}")()
        except Exception:   # report the failure, keep the other sections
            failures.append(name)
            bench.add(f"## {name}: FAILED\n\n```\n{traceback.format_exc()}```")
            traceback.print_exc()
        bench.section_times[name] = time.perf_counter() - t0
        print(f"[bench] {name} done in {bench.section_times[name]:.1f} s", flush=True)
    wall = time.perf_counter() - started
    info["load average at end (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    info["wall time of this run"] = f"{wall:.0f} s (" + ", ".join(
        f"{k} {v:.0f} s" for k, v in bench.section_times.items()) + ")"
    info["command"] = " ".join(["python -m bench.run"] + (argv if argv is not None else sys.argv[1:]))

    parts = ["# frcnn_edu vs torchvision Faster R-CNN: benchmark results",
             "Written by `make bench` (`python -m bench.run`); see bench/README.md. Ratios are "
             "frcnn_edu / torchvision: below 1 means frcnn_edu is faster or smaller."]
    parts += [f"> **{note}**" for note in settings.notes]
    parts += ["## Machine", table(["", ""], [[k, v] for k, v in info.items()]), "## Goals", bench.goals()]
    if failures:
        parts.append(f"**Sections that failed: {', '.join(failures)}** (tracebacks below).")
    parts += bench.markdown
    text = "\n\n".join(parts) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"[bench] wrote {args.out} in {wall:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
