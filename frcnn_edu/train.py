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
Losses are written as JSON lines for plotting; the checkpoint at `checkpoint` is rewritten every
`checkpoint_every` iterations and at the end, and `resume=True` continues from it.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoints import read_checkpoint, resolve_device, save_checkpoint
from .data.transforms import RandomHorizontalFlip
from .faster_rcnn import FasterRCNN

STAGES = {
    "joint": ["joint"],
    "alternating": ["rpn", "detector", "rpn_finetune", "detector_finetune"],
    "rpn": ["rpn"],
}


def batches(dataset, batch_size: int, seed: int, start: int = 0):
    """Endless mini-batches from a reshuffled dataset: epoch e uses permutation seed + e.

    Yields (images, targets) lists; `start` skips that many batches (for resuming) without
    loading them.
    """
    per_epoch = max(1, len(dataset) // batch_size)
    step = start
    while True:
        epoch, offset = divmod(step, per_epoch)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + epoch))
        chunk = order[offset * batch_size: (offset + 1) * batch_size].tolist()
        samples = [dataset[i] for i in chunk]
        yield [s[0] for s in samples], [s[1] for s in samples]
        step += 1


def learning_rate(base_lr: float, iteration: int, iters: int, drop_at: float, factor: float,
                  warmup: int = 0) -> float:
    """The paper's step schedule (x factor after drop_at of the iterations), optional warm-up."""
    lr = base_lr * (factor if iteration >= int(drop_at * iters) else 1.0)
    if warmup and iteration < warmup:
        lr *= (iteration + 1) / warmup
    return lr


def _set_frozen(module: torch.nn.Module, frozen: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(not frozen)


class _Stage:
    """What one training stage optimises and how it computes its loss."""

    def __init__(self, name: str, model: FasterRCNN, proposal_model: FasterRCNN | None = None):
        self.name, self.model, self.proposal_model = name, model, proposal_model

    def prepare(self) -> list:
        """Freeze what the stage keeps fixed; return the parameters it trains."""
        model = self.model
        _set_frozen(model, False)
        if self.name in ("rpn_finetune", "detector_finetune"):
            _set_frozen(model.backbone, True)
        if self.name == "detector_finetune":
            _set_frozen(model.rpn, True)
        if self.name in ("rpn", "rpn_finetune"):
            _set_frozen(model.roi_head, True)
        if self.name == "detector":
            _set_frozen(model.rpn, True)
        return [p for p in model.parameters() if p.requires_grad]

    def set_mode(self) -> None:
        self.model.train()
        if self.name in ("rpn_finetune", "detector_finetune"):
            self.model.backbone.eval()   # frozen BatchNorm statistics too

    def losses(self, images, targets) -> dict:
        if self.name in ("rpn", "rpn_finetune"):
            return self.model.rpn_losses(images, targets)
        if self.name in ("detector", "detector_finetune"):
            source = self.proposal_model if self.name == "detector" else self.model
            proposals = [p["boxes"] for p in source.propose(images)]
            losses = self.model(images, targets, proposals=proposals)
            return {k: v for k, v in losses.items() if k in ("loss_cls", "loss_box")}
        return self.model(images, targets)


def train(model: FasterRCNN, dataset, *, iters: int, batch_size: int = 2, lr: float | None = None,
          schedule: str = "joint", checkpoint=None, checkpoint_every: int = 500, resume: bool = False,
          device="auto", seed: int = 0, log=None, progress: bool = True, warmup: int = 0,
          log_every: int = 10, time_limit: float | None = None, amp: bool = False) -> list[dict]:
    """Train `model` in place on `dataset` ((image, target) pairs). Returns the loss history.

    schedule: "joint" (approximate joint training), "alternating" (the 4 steps; `iters` is
    split equally between them) or "rpn" (the RPN alone, [P] Sec. 3.1.3).
    checkpoint: path rewritten every checkpoint_every iterations and at the end (with the
    optimizer, iteration and RNG state); resume=True continues from it. log: path of a JSON
    lines file with the averaged losses every log_every iterations. time_limit: stop early
    (and checkpoint) after that many seconds. amp: mixed precision on CUDA (float16 convolutions
    and matrix products under torch.autocast, a gradient scaler against underflow; box
    arithmetic and losses stay float32).
    """
    if schedule not in STAGES:
        raise ValueError(f"schedule must be one of {sorted(STAGES)}, got {schedule!r}")
    if iters < 1 or batch_size < 1:
        raise ValueError(f"iters and batch_size must be positive, got {iters} and {batch_size}")
    device = resolve_device(device)
    if amp and device.type != "cuda":
        raise ValueError(f"amp=True (mixed precision) needs a CUDA device, got {device}")
    model.to(device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    base_lr = lr if lr is not None else model.config.lr
    stage_names = STAGES[schedule]
    stage_iters = [iters // len(stage_names) + (1 if i < iters % len(stage_names) else 0)
                   for i in range(len(stage_names))]

    state = {"schedule": schedule, "stage": 0, "iteration": 0, "iters": iters, "history": []}
    helper = None   # step 1's separate RPN network, used for step 2's proposals
    optimizer_state = None
    if resume and checkpoint is not None and Path(checkpoint).exists():
        payload = read_checkpoint(checkpoint)
        saved = payload.get("training")
        if saved is None or saved["schedule"] != schedule:
            raise ValueError(f"cannot resume from {checkpoint}: it was not written by "
                             f"train(schedule={schedule!r})")
        model.load_state_dict(payload["model"])
        state = {k: saved[k] for k in ("schedule", "stage", "iteration", "iters", "history")}
        optimizer_state = saved.get("optimizer")
        torch.set_rng_state(saved["rng"])
        generator_state = saved.get("generator")
        if state["stage"] >= len(stage_names) and iters > state["iters"]:
            # A finished run asked for more iterations: extend its (single) stage.
            if len(stage_names) > 1:
                raise ValueError(f"{checkpoint} is a finished {schedule} run of {state['iters']} "
                                 f"iterations; an alternating schedule cannot be extended, start a new one")
            state.update(stage=0, iteration=state["iters"], iters=iters)
        elif iters != state["iters"]:
            raise ValueError(f"{checkpoint} was written by a run of {state['iters']} iterations; "
                             f"resume it with the same iters (or more, once it has finished)")
        if saved.get("helper") is not None:
            helper = FasterRCNN(model.num_classes, config=model.config, class_names=model.class_names).to(device)
            helper.load_state_dict(saved["helper"])
    else:
        torch.manual_seed(seed)
        generator_state = None
    generator = torch.Generator(device=device).manual_seed(seed + 1)
    if generator_state is not None:
        generator.set_state(generator_state)
    model.set_generator(generator)

    flip = RandomHorizontalFlip(model.config.flip_prob)
    log_file = open(log, "a") if log is not None else None
    history = state["history"]
    started = time.perf_counter()
    try:
        for stage_index in range(state["stage"], len(stage_names)):
            name = stage_names[stage_index]
            if name == "detector":
                # Step 2: the detector gets its own, fresh conv layers; step 1's network only
                # provides proposals. The trained step-1 RPN head is kept for step 3.
                if helper is None:
                    helper = FasterRCNN(model.num_classes, config=model.config,
                                        class_names=model.class_names).to(device)
                    helper.load_state_dict(model.state_dict())
                    fresh = FasterRCNN(model.num_classes, config=model.config,
                                       class_names=model.class_names).to(device)
                    model.backbone.load_state_dict(fresh.backbone.state_dict())
                    model.roi_head.load_state_dict(fresh.roi_head.state_dict())
            if name == "rpn_finetune" and helper is not None:
                # Step 3: the detector's conv layers with step 1's RPN head on top.
                model.rpn.load_state_dict(helper.rpn.state_dict())
                helper = None
            stage = _Stage(name, model, helper)
            params = stage.prepare()
            optimizer = torch.optim.SGD(params, lr=base_lr, momentum=model.config.momentum,
                                        weight_decay=model.config.weight_decay)
            if optimizer_state is not None:
                optimizer.load_state_dict(optimizer_state)
                optimizer_state = None
            n = stage_iters[stage_index]
            first = state["iteration"] if stage_index == state["stage"] else 0
            data = batches(dataset, batch_size, seed + 1000 * stage_index, start=first)
            bar = tqdm(range(first, n), desc=f"train [{name}]", disable=not progress, leave=False)
            sums, count = {}, 0
            for iteration in bar:
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(base_lr, iteration, n, model.config.lr_drop_at,
                                                model.config.lr_drop_factor, warmup)
                images, targets = next(data)
                images, targets = zip(*[flip(img, tgt) for img, tgt in zip(images, targets)])
                stage.set_mode()
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    losses = stage.losses(list(images), list(targets))
                loss = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()   # without amp: loss.backward(), optimizer.step()
                scaler.step(optimizer)
                scaler.update()

                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v.detach()
                count += 1
                if count == log_every or iteration == n - 1:
                    record = {"stage": name, "iter": iteration + 1, "lr": optimizer.param_groups[0]["lr"],
                              **{k: float(v) / count for k, v in sums.items()},
                              "time": round(time.perf_counter() - started, 2)}
                    record["loss"] = sum(record[k] for k in sums)
                    if not math.isfinite(record["loss"]):
                        raise FloatingPointError(
                            f"training diverged at {name} iteration {iteration + 1}: losses {record}; "
                            f"try a smaller learning rate (--lr)")
                    history.append(record)
                    if log_file:
                        log_file.write(json.dumps(record) + "\n")
                        log_file.flush()
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                    sums, count = {}, 0
                state.update(stage=stage_index, iteration=iteration + 1)
                out_of_time = time_limit is not None and time.perf_counter() - started > time_limit
                if checkpoint is not None and ((iteration + 1) % checkpoint_every == 0 or out_of_time):
                    _save(checkpoint, model, optimizer, state, helper, generator)
                if out_of_time:
                    return history
            state.update(stage=stage_index + 1, iteration=0)
        state["iters"] = iters
        if checkpoint is not None:
            _save(checkpoint, model, None, state, None, generator)
    finally:
        _set_frozen(model, False)   # also when interrupted: the model is usable as it is
        model.eval()
        if log_file:
            log_file.close()
        model.set_generator(None)
    return history


def _save(path, model, optimizer, state, helper, generator) -> None:
    training = {**state, "rng": torch.get_rng_state(), "generator": generator.get_state(),
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "helper": ({k: v.detach().cpu() for k, v in helper.state_dict().items()}
                           if helper is not None else None)}
    save_checkpoint(path, model, training)


def train_rpn(model: FasterRCNN, dataset, *, iters: int, **kwargs) -> list[dict]:
    """Train the backbone and RPN alone ([P] Sec. 3.1.3): step 1 of alternating training."""
    return train(model, dataset, iters=iters, schedule="rpn", **kwargs)
