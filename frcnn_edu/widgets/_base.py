"""What the explorers share: the default pictures, a slider, and _Explorer, the plumbing from
controls to compute() to draw() to a PNG shown in an ipywidgets.Output.

The figure is a plain matplotlib Figure rendered to PNG bytes (no ipympl needed); an explorer
subclass builds its controls, then calls self._build(controls, figsize), and implements
compute() -> state dict and draw() (using self.state, self.ax / self.axes).
"""
from __future__ import annotations

import base64
import contextlib
import io

import ipywidgets as widgets
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

POSITIVE, NEGATIVE, IGNORED, GROUND_TRUTH = "#3cb44b", "#4363d8", "#a9a9a9", "#e6194b"


# ----------------------------------------------------------------------------------------------
# Default pictures
# ----------------------------------------------------------------------------------------------
def resize_shorter_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """Rescale (3, H, W) so that the shorter side is `size` ([P] Sec. 3.3 uses 600)."""
    height, width = image.shape[-2:]
    scale = size / min(height, width)
    new_size = (round(height * scale), round(width * scale))
    return F.interpolate(image[None], size=new_size, mode="bilinear", align_corners=False,
                         antialias=True)[0].clamp(0, 1)


def sample_photo(name: str = "chelsea", shorter_side: int | None = 600) -> torch.Tensor:
    """A shipped photo (frcnn_edu.samples), rescaled like the paper's input (shorter side 600)."""
    from ..samples import load_sample_image
    image = load_sample_image(name)
    return image if shorter_side is None else resize_shorter_side(image, shorter_side)


def shapes_sample(index: int = 0, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """One 256 x 256 image of the built-in shapes data and its target."""
    from ..data import ShapesDataset
    return ShapesDataset(num_images=index + 1, seed=seed)[index]


def _check_image(image) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a (3, H, W) float tensor in [0, 1], got {shape}")
    return image.detach().float().cpu()


# ----------------------------------------------------------------------------------------------
# The explorers' plumbing
# ----------------------------------------------------------------------------------------------
def _slider(kind, description, value, minimum, maximum, step=1, **kwargs):
    return kind(value=value, min=minimum, max=maximum, step=step, description=description,
                continuous_update=False, style={"description_width": "90px"},
                layout=widgets.Layout(width="310px"), **kwargs)


def _png_output(png: bytes) -> dict:
    """A display_data output holding `png`, as an Output widget's `outputs` state stores it."""
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(png).decode("ascii"),
                     "text/plain": "<IPython.core.display.Image object>"}}


class _Explorer:
    """Plumbing shared by the explorers: controls -> compute() -> draw() -> PNG in an Output."""

    dpi = 72

    def _build(self, controls: dict, figsize, ncols: int = 1):
        self.controls = controls
        self.fig = Figure(figsize=figsize)
        self.fig.subplots_adjust(left=0.07, right=0.98, bottom=0.05, top=0.88, wspace=0.15)
        FigureCanvasAgg(self.fig)
        axes = self.fig.subplots(1, ncols, squeeze=False)[0]
        self.ax = axes[0]
        self.axes = list(axes)
        self.state: dict = {}
        self.png = b""
        self.redraw_count = 0
        self._quiet = False
        self.output = widgets.Output(layout=widgets.Layout(min_width=f"{int(figsize[0] * self.dpi)}px"))
        for control in controls.values():
            control.observe(self._on_change, names="value")
        self.widget = widgets.HBox([widgets.VBox(list(controls.values())), self.output])
        self.redraw()

    @contextlib.contextmanager
    def _hold(self):
        """Change controls without a redraw for each change."""
        self._quiet, before = True, self._quiet
        try:
            yield
        finally:
            self._quiet = before

    def _on_change(self, change):
        if self._quiet:
            return
        with self._hold():
            self._constrain(change)
        self.redraw()

    def _constrain(self, change):
        """Keep the controls consistent after `change` (e.g. neg_iou <= pos_iou)."""

    def compute(self) -> dict:
        raise NotImplementedError

    def draw(self):
        raise NotImplementedError

    def redraw(self) -> dict:
        """Recompute the state from the controls, redraw the figure and show it."""
        self.state = self.compute()
        for ax in self.axes:
            ax.clear()
        self.draw()
        buffer = io.BytesIO()
        self.fig.savefig(buffer, format="png", dpi=self.dpi)
        self.png = buffer.getvalue()
        self.redraw_count += 1
        # Replace the Output's content by setting its `outputs` state (one comm update), rather
        # than `with self.output: clear_output(wait=True); display(...)`. The browser shows the
        # same thing, but nbclient (jupyter execute, Jupyter Book, papermill) answers every output
        # captured by an Output widget with a comm message on the shell channel while it waits
        # there for the cell's execute_reply, and now and then misses that reply until the cell
        # timeout has passed (jupyter/nbclient#312): a whole cell timeout lost per explorer.
        self.output.outputs = (_png_output(self.png),)
        return self.state

    def set(self, **values) -> dict:
        """Set several controls at once with a single redraw: ex.set(x=10, y=4). Returns .state."""
        unknown = sorted(set(values) - set(self.controls))
        if unknown:
            raise ValueError(f"unknown control(s) {unknown}; this explorer has {sorted(self.controls)}")
        with self._hold():
            for name, value in values.items():
                old = self.controls[name].value
                self.controls[name].value = value
                self._constrain({"owner": self.controls[name], "old": old, "new": value})
        return self.redraw()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _fit_view(self, ax, image_size, boxes):
        """Show the image and everything drawn around it (large anchors cross the border)."""
        height, width = image_size
        x1, y1, x2, y2 = 0.0, 0.0, float(width), float(height)
        for box in boxes:
            bx1, by1, bx2, by2 = (float(v) for v in box)
            x1, y1, x2, y2 = min(x1, bx1), min(y1, by1), max(x2, bx2), max(y2, by2)
        margin = 0.02 * max(x2 - x1, y2 - y1)
        ax.set_xlim(x1 - margin, x2 + margin)
        ax.set_ylim(y2 + margin, y1 - margin)
