"""The bookkeeping around a training run: where it stands, its loss log, its checkpoints, resuming.

train.py says *what* each stage trains; a TrainingSession remembers *how far* the run has got
and makes it survive: every `checkpoint_every` iterations (and at the end) it writes the model,
the optimizer, the position in the schedule and every random state, so that `resume=True`
continues the run exactly where it stopped.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from .checkpoints import read_checkpoint, save_checkpoint


class TimeLimitReached(Exception):
    """Raised after the checkpoint of a run that used up its time_limit has been written."""


class TrainingSession:
    """Position in the schedule, loss history, loss log and checkpoints of one training run.

    stage, iteration: the stage being trained and the iterations done in it; stage_iters: the
    iterations of each stage; history: the logged loss records; step1_network: the state of the
    4-step schedule's step-1 network while step 2 still needs its proposals.
    """

    def __init__(self, model, *, schedule: str, num_stages: int, iters: int, checkpoint=None,
                 checkpoint_every: int = 500, log=None, log_every: int = 10, resume: bool = False,
                 seed: int = 0, device=None, time_limit: float | None = None):
        self.model, self.schedule, self.iters = model, schedule, iters
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_every, self.log_every, self.time_limit = checkpoint_every, log_every, time_limit
        self.stage_iters = [iters // num_stages + (1 if i < iters % num_stages else 0) for i in range(num_stages)]
        self.stage, self.iteration, self.history = 0, 0, []
        self.step1_network: dict | None = None
        self.optimizer_state: dict | None = None
        self.generator = torch.Generator(device=device).manual_seed(seed + 1)
        if resume and self.checkpoint is not None and self.checkpoint.exists():
            self._restore(num_stages)
        else:
            torch.manual_seed(seed)
        self.log_file = open(log, "a") if log is not None else None
        self.started = time.perf_counter()
        self._sums: dict = {}
        self._count = 0

    # -- resuming ---------------------------------------------------------------------------------
    def _restore(self, num_stages: int) -> None:
        payload = read_checkpoint(self.checkpoint)
        saved = payload.get("training")
        if saved is None or saved["schedule"] != self.schedule:
            raise ValueError(f"cannot resume from {self.checkpoint}: it was not written by "
                             f"train(schedule={self.schedule!r})")
        self.model.load_state_dict(payload["model"])
        self.stage, self.iteration, self.history = saved["stage"], saved["iteration"], saved["history"]
        self.optimizer_state = saved.get("optimizer")
        self.step1_network = saved.get("step1_network")
        torch.set_rng_state(saved["rng"])
        if saved.get("generator") is not None:
            self.generator.set_state(saved["generator"])
        if self.stage >= num_stages and self.iters > saved["iters"]:
            # A finished run asked for more iterations: extend its (single) stage.
            if num_stages > 1:
                raise ValueError(f"{self.checkpoint} is a finished {self.schedule} run of {saved['iters']} "
                                 f"iterations; an alternating schedule cannot be extended, start a new one")
            self.stage, self.iteration = 0, saved["iters"]
            self.stage_iters = [self.iters]
        elif self.iters != saved["iters"]:
            raise ValueError(f"{self.checkpoint} was written by a run of {saved['iters']} iterations; "
                             f"resume it with the same iters (or more, once it has finished)")

    def first_iteration(self, stage: int) -> int | None:
        """Where `stage` starts: 0, the resumed iteration, or None when it finished already."""
        if stage < self.stage:
            return None
        return self.iteration if stage == self.stage else 0

    def restore_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """The resumed stage's optimizer continues with its saved momentum buffers."""
        if self.optimizer_state is not None:
            optimizer.load_state_dict(self.optimizer_state)
            self.optimizer_state = None

    # -- after every iteration --------------------------------------------------------------------
    def record(self, stage_name: str, stage: int, iteration: int, losses: dict, lr: float) -> None:
        """Average the losses over log_every iterations; log them; stop on NaN / inf."""
        for k, v in losses.items():
            self._sums[k] = self._sums.get(k, 0.0) + v.detach()
        self._count += 1
        if self._count == self.log_every or iteration == self.stage_iters[stage] - 1:
            record = {"stage": stage_name, "iter": iteration + 1, "lr": lr,
                      **{k: float(v) / self._count for k, v in self._sums.items()},
                      "time": round(time.perf_counter() - self.started, 2)}
            record["loss"] = sum(record[k] for k in self._sums)
            if not math.isfinite(record["loss"]):
                raise FloatingPointError(
                    f"training diverged at {stage_name} iteration {iteration + 1}: losses {record}; "
                    f"try a smaller learning rate (--lr)")
            self.history.append(record)
            if self.log_file:
                self.log_file.write(json.dumps(record) + "\n")
                self.log_file.flush()
            self._sums, self._count = {}, 0

    def end_iteration(self, stage: int, iteration: int, optimizer) -> None:
        """Checkpoint every checkpoint_every iterations; raise TimeLimitReached when time is up."""
        self.stage, self.iteration = stage, iteration + 1
        out_of_time = self.time_limit is not None and time.perf_counter() - self.started > self.time_limit
        if self.checkpoint is not None and (self.iteration % self.checkpoint_every == 0 or out_of_time):
            self.save(optimizer)
        if out_of_time:
            raise TimeLimitReached

    def end_stage(self, stage: int) -> None:
        self.stage, self.iteration = stage + 1, 0

    def finish(self) -> None:
        """The final checkpoint of a completed run (no optimizer state: nothing left to resume)."""
        self.step1_network = None
        if self.checkpoint is not None:
            self.save(None)

    def save(self, optimizer) -> None:
        training = {"schedule": self.schedule, "stage": self.stage, "iteration": self.iteration,
                    "iters": self.iters, "history": self.history, "rng": torch.get_rng_state(),
                    "generator": self.generator.get_state(),
                    "optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "step1_network": self.step1_network}
        save_checkpoint(self.checkpoint, self.model, training)

    def close(self) -> None:
        if self.log_file:
            self.log_file.close()
