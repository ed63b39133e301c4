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
    """Write atomically (temporary file, then rename): an interrupted save never corrupts `path`."""
    path = Path(path)
    if not isinstance(model.fast_rcnn.head.fc6, torch.nn.Linear):
        raise ValueError(f"not saving {path}: fc6/fc7 were compressed with truncated SVD, a "
                         f"test-time transformation; save the model before compressing it")
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "num_classes": model.num_classes,
        "class_names": list(model.class_names),
        "config": model.config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if training is not None:
        payload["training"] = training
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


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
    config = FasterRCNNConfig.from_dict(payload["config"])
    model = FasterRCNN(payload["num_classes"], config=config, class_names=payload["class_names"])
    missing, unexpected = model.load_state_dict(payload["model"], strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit a {config.backbone} FasterRCNN with "
                         f"{payload['num_classes']} classes: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(resolve_device(device))


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
