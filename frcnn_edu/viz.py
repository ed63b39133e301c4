"""Matplotlib drawing used by the CLI, the notebooks and the explorers.

Every function draws onto a given `ax` (or makes a figure when ax is None) and returns it, so
notebooks can compose pictures. Boxes are (x1, y1, x2, y2) in image pixels.
"""
from __future__ import annotations

import matplotlib

matplotlib.use(matplotlib.get_backend())  # respect the caller's backend (Agg when headless)
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
           "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324"]


def to_numpy_image(image: torch.Tensor):
    """(3, H, W) float in [0, 1] -> (H, W, 3) array for imshow."""
    return image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy()


def show_image(image: torch.Tensor, ax=None, title: str | None = None):
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(to_numpy_image(image))
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def draw_boxes(ax, boxes, labels=None, scores=None, class_names=None, color=None,
               linewidth: float = 2.0, linestyle: str = "-", alpha: float = 1.0):
    """Rectangles for boxes (N, 4), coloured by label, captioned with class name and score."""
    boxes = torch.as_tensor(boxes).detach().cpu().reshape(-1, 4)
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        label = int(labels[i]) if labels is not None else None
        c = color or PALETTE[(label or 0) % len(PALETTE)]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=c,
                               linewidth=linewidth, linestyle=linestyle, alpha=alpha))
        caption = []
        if label is not None:
            caption.append(class_names[label - 1] if class_names and 0 < label <= len(class_names) else str(label))
        if scores is not None:
            caption.append(f"{float(scores[i]):.2f}")
        if caption:
            ax.text(x1, y1 - 2, " ".join(caption), color="white", fontsize=7,
                    bbox=dict(facecolor=c, alpha=0.8, pad=1, edgecolor="none"))
    return ax


def draw_detections(image: torch.Tensor, detections: dict, class_names=None, score_thresh: float = 0.5,
                    ax=None, title: str | None = None):
    """An image with its detections above score_thresh."""
    ax = show_image(image, ax, title)
    keep = detections["scores"] >= score_thresh
    draw_boxes(ax, detections["boxes"][keep], detections["labels"][keep], detections["scores"][keep],
               class_names)
    return ax


def save_figure(fig, path) -> None:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# Helpers shared by the explorers (frcnn_edu.widgets) and the notebooks
# ------------------------------------------------------------------------------------------------
def draw_feature_grid(ax, feature_size, stride: float, color: str = "white", linewidth: float = 0.5,
                      alpha: float = 0.4):
    """The cells of an (H', W') feature map drawn over the image: a line every `stride` pixels.

    Feature cell (y, x) covers pixels [x * stride, (x + 1) * stride) x [y * stride, (y + 1) * stride).
    Lines are drawn as two LineCollections (no patches), so they do not count as boxes.
    """
    height, width = (int(v) for v in feature_size)
    xs = [x * stride for x in range(width + 1)]
    ys = [y * stride for y in range(height + 1)]
    ax.vlines(xs, 0, height * stride, colors=color, linewidth=linewidth, alpha=alpha)
    ax.hlines(ys, 0, width * stride, colors=color, linewidth=linewidth, alpha=alpha)
    return ax


def draw_box_outline(ax, box, color: str = "red", linewidth: float = 2.0, linestyle: str = "-",
                     label: str | None = None, fill_alpha: float = 0.0):
    """One (x1, y1, x2, y2) box as a Rectangle patch (optionally lightly filled); returns the patch."""
    x1, y1, x2, y2 = (float(v) for v in torch.as_tensor(box).reshape(4).tolist())
    patch = Rectangle((x1, y1), x2 - x1, y2 - y1, fill=fill_alpha > 0, edgecolor=color,
                      facecolor=(color if fill_alpha > 0 else "none"), linewidth=linewidth,
                      linestyle=linestyle, label=label)
    if fill_alpha > 0:
        patch.set_facecolor(matplotlib.colors.to_rgba(color, fill_alpha))
    ax.add_patch(patch)
    return patch
