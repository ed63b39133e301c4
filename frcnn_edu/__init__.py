"""frcnn_edu — Faster R-CNN (Ren, He, Girshick, Sun, 2015) from scratch, in readable PyTorch.

    import frcnn_edu as fe
    model = fe.FasterRCNN.from_preset("shapes_tiny", num_classes=5)

Modules, in the order data flows through the network: boxes, anchors, transform, backbones,
rpn, roi, fast_rcnn, faster_rcnn; then data, train (with session and checkpoints), evaluate,
viz, widgets, cli.
"""
from importlib import metadata as _metadata

from . import anchors, backbones, boxes, config, data, evaluate, fast_rcnn, roi, rpn  # noqa: F401
from .checkpoints import load_model, save_checkpoint  # noqa: F401
from .config import FasterRCNNConfig, get_preset  # noqa: F401
from .faster_rcnn import FasterRCNN  # noqa: F401

try:  # pyproject.toml's `version` is the one source; an installed package carries it in its metadata
    __version__ = _metadata.version("frcnn_edu")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never pip-installed
    __version__ = "0+unknown"


def __getattr__(name):
    # Modules that pull in matplotlib, ipywidgets or tqdm load on first use: `fe.widgets` works
    # after a plain `import frcnn_edu as fe` without slowing that import down.
    if name in ("checkpoints", "cli", "exercises", "predict", "samples", "train", "viz", "widgets"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
