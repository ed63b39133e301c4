"""The bookkeeping around a training run: where it stands, its loss log, its checkpoints, resuming.

train.py says *what* each stage trains; a TrainingSession remembers *how far* the run has got
and makes it survive: every `checkpoint_every` iterations (and at the end) it writes the model,
the optimizer, the position in the schedule and every random state, so that `resume=True`
continues the run exactly where it stopped.

What it guarantees, so that no work is lost:
  - a checkpoint is never written from non-finite losses or weights: a diverged run stops with
    FloatingPointError and the last good checkpoint stays as it was;
  - SIGINT (Ctrl-C) and SIGTERM finish the current iteration, write the checkpoint and raise
    TrainingInterrupted (a KeyboardInterrupt) saying where it is; a second Ctrl-C stops at once;
  - one process at a time trains into a checkpoint (a lock file beside it, see CheckpointLock);
  - checkpoint writes are atomic and durable (checkpoints.save_checkpoint).
"""
from __future__ import annotations

import hashlib
import json
import math
import signal
import threading
import time
from pathlib import Path

import torch

from . import distributed
from .checkpoints import CheckpointLock, check_class_count, prepare_folder, read_checkpoint, save_checkpoint


class TimeLimitReached(Exception):
    """Raised after the checkpoint of a run that used up its time_limit has been written."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training after a finished iteration (and its checkpoint).

    signum: the signal; checkpoint: the file written (None without one); stage, iteration:
    where the run stopped; exit_code: 130 for SIGINT, 143 for SIGTERM (128 + the signal).
    """

    def __init__(self, signum: int, checkpoint, stage: str, iteration: int, iters: int):
        self.signum, self.checkpoint, self.stage, self.iteration = signum, checkpoint, stage, iteration
        self.exit_code = 128 + signum
        where = f"checkpoint written to {checkpoint}" if checkpoint else "no checkpoint path was given"
        super().__init__(f"training stopped by {signal.Signals(signum).name} after iteration {iteration} "
                         f"of {iters} ({stage}); {where}")


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
        self.device = torch.device(device if device is not None else "cpu")
        self.rank = distributed.rank()
        self.writer = self.rank == 0          # only rank 0 writes checkpoints and the loss log
        self.scaler: torch.amp.GradScaler | None = None     # set by the trainer (fp16)
        self.scaler_state: dict | None = None
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_every, self.log_every, self.time_limit = checkpoint_every, log_every, time_limit
        self.stage_iters = [iters // num_stages + (1 if i < iters % num_stages else 0) for i in range(num_stages)]
        self.stage, self.iteration = 0, 0
        self.history: list[dict] = []
        self.step1_network: dict | None = None
        self.optimizer_state: dict | None = None
        self.generator = torch.Generator(device=device).manual_seed(seed + 1)
        self.lock = CheckpointLock(self.checkpoint) if self.checkpoint is not None and self.writer else None
        self.log_file = None
        self.signals = StopSignals()
        try:
            if self.lock is not None:
                self.lock.acquire()      # also proves the checkpoint's folder is writable
            if resume and self.checkpoint is not None and self.checkpoint.exists():
                self._restore(num_stages)
            else:
                torch.manual_seed(seed + self.rank)   # own dropout masks per rank
            if log is not None and self.writer:
                prepare_folder(log)
                self.log_file = open(log, "a")
        except BaseException:
            self.close()
            raise
        self.started = time.perf_counter()
        self._sums: dict = {}
        self._count = 0
        self._last_losses: dict = {}

    # -- resuming ---------------------------------------------------------------------------------
    def _restore(self, num_stages: int) -> None:
        payload = read_checkpoint(self.checkpoint)
        saved = payload.get("training")
        if saved is None or saved["schedule"] != self.schedule:
            raise ValueError(f"cannot resume from {self.checkpoint}: it was not written by "
                             f"train(schedule={self.schedule!r})")
        check_class_count(payload, self.checkpoint, expected=self.model.num_classes)
        try:
            self.model.load_state_dict(payload["model"])
        except RuntimeError as error:
            raise ValueError(f"cannot resume from {self.checkpoint}: its weights do not fit this model "
                             f"({str(error).splitlines()[-1].strip()})") from None
        self.stage, self.iteration, self.history = saved["stage"], saved["iteration"], saved["history"]
        self.optimizer_state = saved.get("optimizer")
        self.scaler_state = saved.get("scaler")
        self.step1_network = saved.get("step1_network")
        ranks = saved.get("rank_states")
        restore_random_states(ranks[self.rank] if ranks and len(ranks) == distributed.world_size() else saved,
                              self.generator, self.device)
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
        self._last_losses, self._lr = losses, lr
        if self._count == self.log_every or iteration == self.stage_iters[stage] - 1:
            self.flush_record(stage_name, iteration)

    def flush_record(self, stage_name: str, iteration: int) -> None:
        """Write the averaged losses of the iterations since the last record (if any)."""
        if self._count:
            means = {k: float(v) / self._count for k, v in self._sums.items()}
            record: dict = {"stage": stage_name, "iter": iteration + 1, "lr": self._lr, **means,
                            "time": round(time.perf_counter() - self.started, 2), "loss": sum(means.values())}
            if not math.isfinite(record["loss"]):
                raise FloatingPointError(
                    f"training diverged at {stage_name} iteration {iteration + 1}: losses {record}; "
                    f"try a smaller learning rate (--lr)")
            self.history.append(record)
            if self.log_file:
                self.log_file.write(json.dumps(record) + "\n")
                self.log_file.flush()
            self._sums, self._count = {}, 0

    def end_iteration(self, stage: int, stage_name: str, iteration: int, optimizer) -> None:
        """Checkpoint every checkpoint_every iterations, on a stop signal and when time is up."""
        self.stage, self.iteration = stage, iteration + 1
        out_of_time = self.time_limit is not None and time.perf_counter() - self.started > self.time_limit
        # Under torchrun every rank must stop (and save) at the same iteration.
        stop, out_of_time = distributed.agree(self.signals.received is not None, out_of_time, device=self.device)
        if stop and self.signals.received is None:
            self.signals.received = signal.SIGTERM     # another rank was told to stop
        if out_of_time or stop:   # the iterations since the last record are not lost from the log
            self.flush_record(stage_name, iteration)
        if self.checkpoint is not None and (self.iteration % self.checkpoint_every == 0 or out_of_time or stop):
            self._check_finite(stage_name)
            self.save(optimizer)
        if self.signals.received is not None:
            raise TrainingInterrupted(self.signals.received, self.checkpoint, stage_name, self.iteration,
                                      self.stage_iters[stage])
        if out_of_time:
            raise TimeLimitReached

    def check_losses(self, stage_name: str, iteration: int, losses: dict) -> None:
        """Under torchrun: if any rank's losses are not finite, every rank raises, at once (one
        rank raising alone would leave the others waiting for it). One process: checked when
        the losses are logged and before every checkpoint."""
        if not distributed.is_distributed():
            return
        finite = all(bool(torch.isfinite(v.detach()).all()) for v in losses.values())
        (diverged,) = distributed.agree(not finite, device=self.device)
        if diverged:
            raise FloatingPointError(f"training diverged at {stage_name} iteration {iteration + 1}: losses not "
                                     f"finite on at least one rank; try a smaller learning rate (--lr)")

    def _check_finite(self, stage_name: str) -> None:
        """Never write a checkpoint from a diverged step: losses and weights must be finite."""
        bad_losses = {k: float(v.detach()) for k, v in self._last_losses.items() if not torch.isfinite(v).all()}
        bad_weights = [k for k, v in self.model.state_dict().items()
                       if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad_losses or bad_weights:
            what = f"losses {bad_losses}" if bad_losses else f"non-finite weights in {bad_weights[:3]}"
            kept = f"; the last good checkpoint {self.checkpoint} is unchanged" if self.checkpoint else ""
            raise FloatingPointError(f"training diverged at {stage_name} iteration {self.iteration}: {what}"
                                     f"{kept}; try a smaller learning rate (--lr)")

    def end_stage(self, stage: int) -> None:
        self.stage, self.iteration = stage + 1, 0

    def finish(self) -> None:
        """The final checkpoint of a completed run (no optimizer state: nothing left to resume)."""
        self.step1_network = None
        if self.checkpoint is not None:
            self._check_finite("final")
            self.save(None)

    def save(self, optimizer) -> None:
        """Write the checkpoint (rank 0; every rank calls this, to hand over its random states)."""
        rank_states = distributed.gather_objects(random_states(self.generator, self.device))
        if not self.writer:
            return
        scaler = self.scaler if self.scaler is not None and self.scaler.is_enabled() else None
        training = {"schedule": self.schedule, "stage": self.stage, "iteration": self.iteration,
                    "iters": self.iters, "history": self.history, **rank_states[0],
                    "rank_states": rank_states if len(rank_states) > 1 else None,
                    "optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "step1_network": self.step1_network}
        save_checkpoint(self.checkpoint, self.model, training)

    def close(self) -> None:
        """Restore the signal handlers, close the loss log, release the lock."""
        self.signals.restore()
        if self.log_file:
            self.log_file.close()
            self.log_file = None
        if self.lock is not None:
            self.lock.release()


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM ask training to stop after the current iteration.

    catch() installs the handlers (main thread only: Python delivers signals there), restore()
    puts the previous ones back. `received` holds the signal until the trainer acts on it; a
    second Ctrl-C raises KeyboardInterrupt at once (checkpoint writes are atomic).
    """

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def catch(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def random_states(generator: torch.Generator, device: torch.device) -> dict:
    """This process's random states: torch's CPU one (initialisation, CPU dropout), CUDA's (GPU
    dropout) and the sampling generator's, with the kind of device it lives on."""
    return {"rng": torch.get_rng_state(), "generator": generator.get_state(),
            "generator_device": generator.device.type,
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}


def restore_random_states(states: dict, generator: torch.Generator, device: torch.device) -> None:
    """Put back what `random_states` saved, on this device or another kind of device."""
    torch.set_rng_state(states["rng"])
    if states.get("cuda_rng") is not None and device.type == "cuda":
        if len(states["cuda_rng"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda_rng"])
    generator_state = states.get("generator")
    if generator_state is None:
        return
    if states.get("generator_device", "cpu") == generator.device.type:
        generator.set_state(generator_state)
    else:
        # A CPU generator's state cannot seed a CUDA one (5,056 bytes vs 16): resuming on another
        # kind of device continues with a sampling stream derived from the saved one.
        digest = hashlib.sha256(bytes(generator_state.tolist())).digest()
        generator.manual_seed(int.from_bytes(digest[:8], "little") % (2 ** 63))
