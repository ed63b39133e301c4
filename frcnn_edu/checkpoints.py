"""Saving and loading models: plain tensors and Python values only, read with weights_only=True.

A checkpoint is a dict:
    format        "frcnn_edu/2" ("frcnn_edu/1" files are read too: their detector weights were
                  stored under "roi_head." and are renamed to "fast_rcnn.head." on loading)
    num_classes   object classes (without background)
    class_names   their names, for labels 1..num_classes
    config        FasterRCNNConfig.to_dict(): the box coder weights and every other setting
                  travel with the weights (a model decoded with other box-coder stds than it
                  was trained with gives wrong boxes; py-faster-rcnn issue #365)
    model         the state dict
    training      optional: optimizer state, iteration, schedule stage, RNG state, ...
"""
from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import torch

from .config import FasterRCNNConfig
from .faster_rcnn import FasterRCNN

FORMAT = "frcnn_edu/2"
READABLE_FORMATS = ("frcnn_edu/1", FORMAT)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cuda" without a GPU is a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu or auto")
    return device


def save_checkpoint(path, model: FasterRCNN, training: dict | None = None) -> Path:
    """Write `path` atomically and durably: whoever reads it sees the old file or the new one.

    The payload goes to a uniquely named temporary file in the same folder, is flushed and
    fsync'ed, and replaces `path` with os.replace (then the folder is fsync'ed too). When the
    write fails (a full disk, a read-only folder) the temporary file is removed, `path` keeps
    its previous contents, and an OSError names the path.
    """
    path = Path(path)
    if not isinstance(model.fast_rcnn.head.fc6, torch.nn.Linear):
        raise ValueError(f"not saving {path}: fc6/fc7 were compressed with truncated SVD, a "
                         f"test-time transformation; save the model before compressing it")
    payload = {
        "format": FORMAT,
        "num_classes": model.num_classes,
        "class_names": list(model.class_names),
        "config": model.config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if training is not None:
        payload["training"] = training
    prepare_folder(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, (OSError, RuntimeError)):   # torch reports a failed write as RuntimeError
            raise OSError(f"could not write checkpoint {path}: {_reason(error)}; the previous "
                          f"checkpoint there, if any, is unchanged") from error
        raise
    _fsync_folder(path.parent)
    return path


def prepare_folder(path) -> None:
    """Create the folder of `path` (and its parents); an OSError naming it if that fails."""
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(f"cannot create the folder {folder} for {Path(path).name}: {_reason(error)}") from error
    if not folder.is_dir():
        raise OSError(f"cannot write {path}: {folder} is not a folder")


def _reason(error: BaseException) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointLock:
    """`<checkpoint>.lock`, holding the PID and host of the one process training into it.

    A second process that tries to train into the same checkpoint is refused with a message
    naming the holder. A lock left by a process that no longer runs (killed with kill -9) is
    stale: it is taken over. Creating the lock also proves the folder is writable.
    """

    def __init__(self, checkpoint):
        self.path = Path(str(checkpoint) + ".lock")
        self.held = False

    def acquire(self) -> CheckpointLock:
        prepare_folder(self.path)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None:
                    raise OSError(f"{self.path.with_suffix('')} is being written by another training run "
                                  f"(process {holder[0]} on {holder[1]}, lock file {self.path}); wait for "
                                  f"it to finish or choose another --out") from None
                self.path.unlink(missing_ok=True)   # stale: its process is gone
                continue
            except OSError as error:
                raise OSError(f"cannot write to {self.path.parent}: {_reason(error)}") from error
            with os.fdopen(fd, "w") as file:
                file.write(f"{os.getpid()} {socket.gethostname()}\n")
            self.held = True
            return self
        raise OSError(f"could not take the lock {self.path}")

    def _holder(self) -> tuple[int, str] | None:
        """(pid, host) of a live holder, or None when the lock is stale or unreadable."""
        try:
            pid_text, host = self.path.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        if host != socket.gethostname():
            return pid, host           # another machine's process: cannot check, assume alive
        if pid == os.getpid():
            return pid, host
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid, host           # alive, owned by someone else
        return pid, host

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def read_checkpoint(path) -> dict:
    """The raw checkpoint dict, loaded with weights_only=True; clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise ValueError(f"checkpoint {path} could not be read ({type(error).__name__}: {error}); "
                         f"is it a frcnn_edu checkpoint?") from error
    if not isinstance(payload, dict) or payload.get("format") not in READABLE_FORMATS:
        raise ValueError(f"checkpoint {path} is not a frcnn_edu checkpoint (format {FORMAT!r} expected)")
    if payload["format"] == "frcnn_edu/1":
        payload = _upgrade_from_format_1(payload)
    return payload


def _upgrade_from_format_1(payload: dict) -> dict:
    """Format 1 stored the detector head under "roi_head."; it now lives in model.fast_rcnn.head."""
    def rename(state: dict | None) -> dict | None:
        if state is None:
            return None
        return {("fast_rcnn.head." + k[len("roi_head."):] if k.startswith("roi_head.") else k): v
                for k, v in state.items()}

    payload = {**payload, "format": FORMAT, "model": rename(payload["model"])}
    if isinstance(payload.get("training"), dict):
        training = dict(payload["training"])
        training["step1_network"] = rename(training.pop("helper", None))   # the 4-step schedule's step-1 net
        payload["training"] = training
    return payload


def model_from_checkpoint(payload: dict, path="checkpoint", device="cpu") -> FasterRCNN:
    """The FasterRCNN a checkpoint describes, its weights loaded strictly (every shape checked)."""
    config = FasterRCNNConfig.from_dict(payload["config"])
    check_class_count(payload, path)
    model = FasterRCNN(payload["num_classes"], config=config, class_names=payload["class_names"])
    try:
        model.load_state_dict(payload["model"], strict=True)
    except RuntimeError as error:
        details = "; ".join(line.strip() for line in str(error).splitlines()[1:4])
        raise ValueError(f"checkpoint {path} does not fit a {config.backbone} FasterRCNN with "
                         f"{payload['num_classes']} classes: {details}") from None
    return model.to(resolve_device(device))


def check_class_count(payload: dict, path, expected: int | None = None) -> None:
    """ValueError naming the file and both counts when the header's class count disagrees with
    the classifier's weights, or (expected=) with the model it is to be loaded into."""
    header = payload["num_classes"]
    weight = payload["model"].get("fast_rcnn.head.cls_score.weight")
    if weight is not None and weight.shape[0] != header + 1:
        raise ValueError(f"checkpoint {path} is inconsistent: its header says {header} classes but its "
                         f"classifier has weights for {weight.shape[0] - 1} (plus background)")
    if expected is not None and header != expected:
        raise ValueError(f"checkpoint {path} holds a model of {header} classes, but the model here has "
                         f"{expected}; train a new model (another --out) for another class set")


def load_model(path, device="auto", class_names=None) -> FasterRCNN:
    """A FasterRCNN rebuilt from a checkpoint, in eval mode.

    class_names: when given (e.g. a dataset's classes), they must equal the checkpoint's —
    a model trained on another class set would silently mislabel everything.
    """
    payload = read_checkpoint(path)
    model = model_from_checkpoint(payload, path, device)
    if class_names is not None and tuple(class_names) != tuple(model.class_names):
        raise ValueError(f"checkpoint {path} was trained on classes {list(model.class_names)}, "
                         f"but the dataset has classes {list(class_names)}")
    return model.eval()
