"""Training: approximate joint training, the 4-step alternating schedule, RPN-only training.

[P] Sec. 3.2 describes both ways of training one network with shared conv layers:

  joint (default): one network, the RPN loss and the detector loss summed, one backward pass.
      The gradient with respect to the proposal boxes is ignored ("approximate"); the paper
      reports close results and 25-50% less training time than alternating training.
  alternating: the 4 steps of [P] Sec. 3.2,
      1. train the RPN (backbone + RPN head);
      2. train a separate Fast R-CNN detector, with its own fresh backbone, on step-1 proposals;
      3. take the detector's backbone, freeze it, and fine-tune only the RPN-specific layers;
      4. keep the backbone frozen and fine-tune only the detector-specific layers on step-3
         proposals. Now both share the same conv layers: one unified network.

Both use SGD with momentum 0.9 and weight decay 5e-4, horizontal flips (p = 0.5) and the
paper's learning-rate drop (x 0.1 after 3/4 of the iterations: 60k of 80k on VOC, Sec. 3.1.3).
Each stage is one call of `run_stage` (a StageRunner): which modules it trains, whether the shared conv layers
stay fixed, and what loss it minimises. The bookkeeping (loss log, checkpoints every
`checkpoint_every` iterations, `resume=True`) lives in frcnn_edu.session.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .checkpoints import resolve_device
from .data.loader import TrainingBatches, batch_loader, default_workers
from .faster_rcnn import FasterRCNN
from .precision import autocast, check_precision
from .session import TimeLimitReached, TrainingInterrupted, TrainingSession  # noqa: F401 (re-exported)

SCHEDULES = {"joint": 1, "alternating": 4, "rpn": 1}   # number of stages of each schedule


def train(model: FasterRCNN, dataset, *, iters: int, batch_size: int = 2, lr: float | None = None,
          schedule: str = "joint", checkpoint=None, checkpoint_every: int = 500, resume: bool = False,
          device="auto", seed: int = 0, log=None, progress: bool = True, warmup: int = 0,
          log_every: int = 10, time_limit: float | None = None, amp: bool = False,
          precision: str = "fp32", workers: int | None = None) -> list[dict]:
    """Train `model` in place on `dataset` ((image, target) pairs). Returns the loss history.

    schedule: "joint" (approximate joint training), "alternating" (the 4 steps; `iters` is
    split equally between them) or "rpn" (the RPN alone, [P] Sec. 3.1.3).
    checkpoint: path rewritten every checkpoint_every iterations and at the end (with the
    optimizer, iteration and RNG state); resume=True continues from it. log: path of a JSON
    lines file with the averaged losses every log_every iterations. time_limit: stop early
    (and checkpoint) after that many seconds.
    precision: "fp32" (default), "bf16" (CPU and CUDA) or "fp16" (CUDA, with a gradient scaler
    against underflow): convolutions and matrix products under torch.autocast, box arithmetic
    and losses in float32 (frcnn_edu.precision). amp=True is the old name of precision="fp16".
    workers: DataLoader worker processes loading the batches (default: a few, by the CPU count;
    0 loads in this process). Batch k and its flips are the same for any number of workers.
    Under torchrun (frcnn_edu.distributed) every rank trains on its batch_size images of each
    global batch and DistributedDataParallel averages the gradients; rank 0 writes.
    Parameters that are frozen when train() is called (VGG-16's conv1-conv2 with ImageNet
    weights, [P] Sec. 3.1.3) stay frozen through every stage and afterwards.

    Nothing is lost (frcnn_edu.session): Ctrl-C / SIGTERM finish the iteration, checkpoint and
    raise session.TrainingInterrupted; a diverged run raises FloatingPointError without
    overwriting the last good checkpoint; a second process training into the same checkpoint
    is refused. resume=True without an existing checkpoint starts a new run.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    if iters < 1 or batch_size < 1:
        raise ValueError(f"iters and batch_size must be positive, got {iters} and {batch_size}")
    classes = getattr(dataset, "classes", None)
    if classes is not None and len(classes) > model.num_classes:
        raise ValueError(f"the dataset has {len(classes)} classes {list(classes)} but the model only "
                         f"{model.num_classes}: build the model with num_classes={len(classes)}")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: there is nothing to train on")
    device = distributed.local_device(resolve_device(device))
    if amp and device.type != "cuda":
        raise ValueError(f"amp=True (mixed precision) needs a CUDA device, got {device}")
    precision = check_precision("fp16" if amp else precision, device)
    model.to(device)
    fixed = {p for p in model.parameters() if not p.requires_grad}
    session = TrainingSession(model, schedule=schedule, num_stages=SCHEDULES[schedule], iters=iters,
                              checkpoint=checkpoint, checkpoint_every=checkpoint_every, log=log,
                              log_every=log_every, resume=resume, seed=seed, device=device,
                              time_limit=time_limit)
    run_stage = StageRunner(model, dataset, session, fixed, batch_size=batch_size, seed=seed, warmup=warmup,
                            lr=lr if lr is not None else model.config.lr, device=device, precision=precision,
                            progress=progress and session.writer,
                            workers=default_workers() if workers is None else workers)
    model.set_generator(session.generator)
    session.signals.catch()
    try:
        if schedule == "joint":
            joint_training(model, run_stage)
        elif schedule == "alternating":
            alternating_training(model, run_stage, session)
        else:   # the RPN alone ([P] Sec. 3.1.3)
            run_stage(0, "rpn", trains=[model.backbone, model.rpn], losses=model.rpn_losses)
        session.finish()
    except TimeLimitReached:
        pass
    finally:
        for p in model.parameters():   # also when interrupted: the model is usable as it is
            p.requires_grad_(p not in fixed)
        model.eval()
        model.set_generator(None)
        session.close()
    return session.history


def joint_training(model: FasterRCNN, run_stage: StageRunner) -> None:
    """Approximate joint training ([P] Sec. 3.2): RPN loss + detector loss, one backward pass."""
    run_stage(0, "joint", trains=[model], losses=model)


def alternating_training(model: FasterRCNN, run_stage: StageRunner, session: TrainingSession) -> None:
    """The 4-step alternating training of [P] Sec. 3.2, one `run_stage` call per step."""
    # Step 1: train the RPN, initialised like the whole network (ImageNet, or from scratch).
    run_stage(0, "rpn", trains=[model.backbone, model.rpn], losses=model.rpn_losses)

    # Step 2: train a separate Fast R-CNN detector on step 1's proposals. It has its own conv
    # layers, initialised as step 1's were; step 1's network only proposes (and keeps its RPN
    # head for step 3).
    step1_network = None
    if session.first_iteration(1) == 0 and session.step1_network is None:
        step1_network = _new_like(model, model.state_dict())
        fresh = _new_like(model)
        _reinitialise(model.backbone, fresh.backbone, keep=run_stage.fixed)
        _reinitialise(model.fast_rcnn, fresh.fast_rcnn, keep=run_stage.fixed)
        session.step1_network = {k: v.detach().cpu() for k, v in step1_network.state_dict().items()}
    elif session.step1_network is not None:      # resumed during step 2
        step1_network = _new_like(model, session.step1_network)
    if step1_network is not None:
        run_stage(1, "detector", trains=[model.backbone, model.fast_rcnn],
                  losses=detector_losses(model, proposals_from=step1_network))

    # Step 3: the detector's conv layers, now fixed, under step 1's RPN head: fine-tune only the
    # layers unique to the RPN.
    if step1_network is not None:
        model.rpn.load_state_dict(step1_network.rpn.state_dict())
        session.step1_network = None
    run_stage(2, "rpn_finetune", trains=[model.rpn], fixed_backbone=True, losses=model.rpn_losses)

    # Step 4: conv layers still fixed, fine-tune only the layers unique to Fast R-CNN, on step
    # 3's proposals. Both now share the same conv layers: one unified network.
    run_stage(3, "detector_finetune", trains=[model.fast_rcnn], fixed_backbone=True,
              losses=detector_losses(model, proposals_from=model))


def detector_losses(model: FasterRCNN, proposals_from: FasterRCNN) -> Callable:
    """The detector's two losses on another network's (or the model's own) fixed proposals."""
    def losses(images, targets) -> dict:
        proposals = [p["boxes"] for p in proposals_from.propose(images)]
        all_losses = model(images, targets, proposals=proposals)
        return {k: all_losses[k] for k in ("loss_cls", "loss_box")}
    return losses


class StageRunner:
    """run_stage: SGD on the `trains` modules for one stage, the rest of the model fixed.

    run_stage(index, name, trains=[modules], losses=fn(images, targets) -> dict, fixed_backbone=False)
    A stage finished before a resume is skipped; the one resumed continues where it stopped.
    """

    def __init__(self, model: FasterRCNN, dataset, session: TrainingSession, fixed: set, *,
                 batch_size: int, seed: int, lr: float, warmup: int, device, precision: str,
                 progress: bool, workers: int):
        self.model, self.dataset, self.session, self.fixed = model, dataset, session, fixed
        self.batch_size, self.seed, self.lr, self.warmup = batch_size, seed, lr, warmup
        self.device, self.precision, self.progress, self.workers = device, precision, progress, workers
        # fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not.
        self.scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
        session.scaler = self.scaler
        if session.scaler_state is not None:
            self.scaler.load_state_dict(session.scaler_state)

    def __call__(self, index: int, name: str, *, trains: list[nn.Module], losses: Callable,
                 fixed_backbone: bool = False) -> None:
        first = self.session.first_iteration(index)
        if first is None:
            return
        model, config, n = self.model, self.model.config, self.session.stage_iters[index]
        optimizer = torch.optim.SGD(self._trainable(trains), lr=self.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
        self.session.restore_optimizer(optimizer)
        batches = TrainingBatches(self.dataset, self.batch_size, self.seed + 1000 * index,
                                  config.flip_prob, distributed.rank(), distributed.world_size())
        data = batch_loader(batches, first, n, workers=self.workers, pin_memory=self.device.type == "cuda")
        loss_of = distributed.wrap_for_ranks(model, losses, self.device)   # losses itself in one process
        bar = tqdm(zip(range(first, n), data), initial=first, total=n, desc=f"train [{name}]",
                   disable=not self.progress, leave=False)
        for iteration, (images, targets) in bar:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(self.lr, iteration, n, config.lr_drop_at,
                                            config.lr_drop_factor, self.warmup)
            model.train()
            if fixed_backbone:
                model.backbone.eval()   # frozen BatchNorm statistics too
            with autocast(self.device, self.precision):
                loss_terms = loss_of(images, targets)
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(sum(loss_terms.values())).backward()   # fp32 / bf16: a plain backward
            self.scaler.step(optimizer)
            self.scaler.update()
            self.session.check_losses(name, iteration, loss_terms)
            self.session.record(name, index, iteration, loss_terms, optimizer.param_groups[0]["lr"])
            if self.session.history:
                bar.set_postfix(loss=f"{self.session.history[-1]['loss']:.3f}")
            self.session.end_iteration(index, name, iteration, optimizer)
        self.session.end_stage(index)

    def _trainable(self, modules: list[nn.Module]) -> list[nn.Parameter]:
        """Freeze everything but `modules` (whose fixed parameters stay fixed); return the rest."""
        trained = {p for module in modules for p in module.parameters()} - self.fixed
        for p in self.model.parameters():
            p.requires_grad_(p in trained)
        return [p for p in self.model.parameters() if p.requires_grad]   # in the model's order


def _new_like(model: FasterRCNN, state: dict | None = None) -> FasterRCNN:
    """A fresh network of the same design (ImageNet weights if the model started from them)."""
    network = FasterRCNN(model.num_classes, config=model.config, class_names=model.class_names,
                         pretrained=model.pretrained)
    if state is not None:
        network.load_state_dict(state)
    return network.to(next(model.parameters()).device)


def _reinitialise(module: nn.Module, fresh: nn.Module, keep: set) -> None:
    """module's weights <- fresh's, except the fixed parameters in `keep` (never trained, so
    still at their initial values: e.g. VGG-16's conv1-conv2 from ImageNet)."""
    state = fresh.state_dict()
    for name, p in module.named_parameters():
        if p in keep:
            state[name] = p.detach()
    module.load_state_dict(state)


def learning_rate(base_lr: float, iteration: int, iters: int, drop_at: float, factor: float,
                  warmup: int = 0) -> float:
    """The paper's step schedule (x factor after drop_at of the iterations), optional warm-up."""
    lr = base_lr * (factor if iteration >= int(drop_at * iters) else 1.0)
    if warmup and iteration < warmup:
        lr *= (iteration + 1) / warmup
    return lr


def train_rpn(model: FasterRCNN, dataset, *, iters: int, **kwargs) -> list[dict]:
    """Train the backbone and RPN alone ([P] Sec. 3.1.3): step 1 of alternating training."""
    return train(model, dataset, iters=iters, schedule="rpn", **kwargs)
