"""What the explorers share: the default pictures, the colour and line-style encoding, the
controls, and _Explorer, the plumbing from controls to compute() to draw() to a picture shown in
an ipywidgets.Output.

The figure is a plain matplotlib Figure (no ipympl needed). An explorer subclass builds its
controls, calls self._build(controls, figsize), and implements
    setup()    the artists that never change (the photo): drawn once, into a cached background;
    compute()  -> state dict (the numbers);
    draw()     the artists of one frame (boxes, dots, legend, titles), from self.state.
A frame is rendered by blitting: the cached background is restored and only the artists that
draw() added are drawn over it, then the pixels are encoded (JPEG for a slider move in the browser,
PNG otherwise). Rebuilding and re-encoding
the whole figure cost 200-300 ms a frame on a 2-core machine; this costs a few ms.
"""
from __future__ import annotations

import base64
import contextlib
import io
import time

import ipywidgets as widgets
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

# ----------------------------------------------------------------------------------------------
# One encoding per concept, for every explorer and the notebooks' figures (import them from here)
# ----------------------------------------------------------------------------------------------
POSITIVE, NEGATIVE, IGNORED, GROUND_TRUTH = "#3cb44b", "#4363d8", "#a9a9a9", "#e6194b"
GROUND_TRUTH_STYLE = dict(color=GROUND_TRUTH, linewidth=2.5, linestyle="-")
FEATURE_CELLS = "#ffe119"        # cells of the feature map: the 3x3 window, the cells a RoI snaps to
RECEPTIVE_FIELD = "#42d4f4"      # drawn dashed
BINS = "#42d4f4"                 # RoI pooling bins, thin and lightly filled
ROI = "#e6194b"                  # a region of interest (notebook 08 draws it red; never next to ground truth)
DIFFERENT = "#000000"            # where the student's function differs from the package's (white halo)
# An anchor's aspect ratio (height / width) is its colour; its size (sqrt of the area) its line style.
RATIO_COLOURS = {0.25: "#911eb4", 0.5: "#4363d8", 1.0: "#3cb44b", 2.0: "#e6194b", 4.0: "#f032e6"}
SIZE_STYLES = ("-", "--", ":", "-.", (0, (1, 3)))
MIN_FONT_PT = 9                  # the smallest text in a picture; at dpi 96 one matplotlib point is one CSS point
HALO = [patheffects.withStroke(linewidth=4, foreground="white")]   # keeps a line visible on any colour


def ratio_colour(ratio: float) -> str:
    """The colour of anchors of aspect ratio `ratio` (other ratios: grey)."""
    return RATIO_COLOURS.get(float(ratio), "#808080")


def size_style(index: int):
    """The line style of the index-th anchor size (sizes in increasing order: solid, dashed, ...)."""
    return SIZE_STYLES[index % len(SIZE_STYLES)]


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


def show_background_image(ax, image: torch.Tensor, max_side: int = 700):
    """imshow (3, H, W) in image-pixel coordinates, downsampled first to at most max_side pixels:
    the axes are smaller than that on screen, and resampling a large photo is what makes a full
    redraw slow."""
    height, width = image.shape[-2:]
    shown = image
    if max(height, width) > max_side:
        scale = max_side / max(height, width)
        shown = F.interpolate(image[None], size=(round(height * scale), round(width * scale)),
                              mode="bilinear", align_corners=False, antialias=True)[0]
    ax.imshow(shown.permute(1, 2, 0).clamp(0, 1).numpy(), extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    ax.set_axis_off()


# ----------------------------------------------------------------------------------------------
# Controls and the style that keeps them readable
# ----------------------------------------------------------------------------------------------
CONTROL_WIDTH = "330px"
DESCRIPTION_WIDTH = "125px"
EXPLORER_CLASS = "frcnn-edu-explorer"

# Shown by the browser only: a widget whose kernel is gone gets the class jupyter-widgets-disconnected
# (ipywidgets marks every view when the kernel restarts); the explorer then says so instead of
# showing the default broken-link icons, and its controls stop pretending to work.
EXPLORER_CSS = f"""<style>
.{EXPLORER_CLASS} {{ flex-wrap: wrap; align-items: flex-start; gap: 4px 12px; max-width: 100%; overflow-x: auto; }}
.{EXPLORER_CLASS} > .frcnn-edu-controls {{ flex: none; min-width: {CONTROL_WIDTH}; }}
.{EXPLORER_CLASS} > .frcnn-edu-picture {{ flex: none; }}
.{EXPLORER_CLASS} .frcnn-edu-picture img {{ max-width: none; }}
.{EXPLORER_CLASS} .widget-readout {{ min-width: 4em; overflow: visible; }}
.{EXPLORER_CLASS} .frcnn-edu-caption {{ font-size: 14px; line-height: 1.35; }}
.{EXPLORER_CLASS} .frcnn-edu-legend {{ font-size: 13px; line-height: 1.5; }}
.{EXPLORER_CLASS} .jupyter-widgets-disconnected::before {{ content: none; display: none; }}
.{EXPLORER_CLASS}.jupyter-widgets-disconnected::before {{
  content: "Kernel restarted: re-run this cell to use the explorer again.";
  display: block; flex: 0 0 100%; padding: 6px 10px; font-size: 14px; font-weight: bold;
  font-family: var(--jp-ui-font-family, sans-serif);
  color: #8a1c1c; background: #fde8e8; border: 1px solid #e6194b; border-radius: 4px; }}
.{EXPLORER_CLASS}.jupyter-widgets-disconnected .frcnn-edu-controls,
.{EXPLORER_CLASS}.jupyter-widgets-disconnected .frcnn-edu-picture {{ opacity: 0.35; pointer-events: none; }}
</style>"""


def add_box(ax, box, color: str, linewidth: float = 2.0, linestyle="-", fill_alpha: float = 0.0,
            halo: bool = False) -> Rectangle:
    """One (x1, y1, x2, y2) box as a Rectangle patch on ax (like viz.draw_box_outline), added
    without updating the data limits: the explorers set their views themselves, and the limit
    update was a third of a frame's time."""
    x1, y1, x2, y2 = (float(v) for v in box)
    face = to_rgba(color, fill_alpha) if fill_alpha > 0 else "none"
    patch = Rectangle((x1, y1), x2 - x1, y2 - y1, fill=fill_alpha > 0, edgecolor=color, facecolor=face,
                      linewidth=linewidth, linestyle=linestyle)
    if halo:
        patch.set_path_effects(HALO)
    ax.add_artist(patch)
    return patch


def add_boxes(ax, boxes, colors, linewidth: float = 1.0, linestyle="-", fill_alpha: float = 0.0):
    """Many (x1, y1, x2, y2) boxes, (N, 4), as one PolyCollection (gid "boxes"): one artist to draw,
    where N patches cost a millisecond each. colors: one colour or one per box."""
    import matplotlib.collections as mcoll
    corners = [[(x1, y1), (x2, y1), (x2, y2), (x1, y2)] for x1, y1, x2, y2 in
               (tuple(float(v) for v in box) for box in boxes)]
    if isinstance(colors, str):
        edges = np.tile(to_rgba(colors), (len(corners), 1))
    else:
        edges = np.asarray(colors, dtype=float).reshape(-1, 4)
    faces = np.concatenate([edges[:, :3], np.full((len(edges), 1), fill_alpha)], axis=1) if fill_alpha > 0 else "none"
    collection = mcoll.PolyCollection(corners, closed=True, edgecolors=edges, facecolors=faces,
                                      linewidths=linewidth, linestyles=linestyle)
    collection.set_gid("boxes")
    ax.add_artist(collection)
    return collection


def count_boxes(ax) -> int:
    """How many boxes are drawn on ax: Rectangle patches plus the boxes of add_boxes collections."""
    return len(ax.patches) + sum(len(c.get_paths()) for c in ax.collections if c.get_gid() == "boxes")


def _slider(kind, description, value, minimum, maximum, step=1, tooltip=None, **kwargs):
    """A slider that updates while it is dragged (the explorer coalesces the updates)."""
    return kind(value=value, min=minimum, max=maximum, step=step, description=description,
                continuous_update=True, style={"description_width": DESCRIPTION_WIDTH},
                layout=widgets.Layout(width=CONTROL_WIDTH), description_allow_html=False,
                tooltip=tooltip or description, **kwargs)


def _image_output(data: bytes, mime: str) -> dict:
    """A display_data output holding an image, as an Output widget's `outputs` state stores it."""
    return {"output_type": "display_data", "metadata": {},
            "data": {mime: base64.b64encode(data).decode("ascii"),
                     "text/plain": "<IPython.core.display.Image object>"}}


def _encode(rgba: np.ndarray, image_format: str, **options) -> bytes:
    """(H, W, 4) uint8 RGBA pixels -> image file bytes (RGB; PIL converts without a numpy copy)."""
    from PIL import Image
    height, width = rgba.shape[:2]
    image = Image.frombuffer("RGBA", (width, height), rgba, "raw", "RGBA", 0, 1).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


@contextlib.contextmanager
def _one_torch_thread():
    """Run torch single-threaded: the explorers' tensors are small (thousands of anchors), and on
    a busy 2-core machine torch's thread pool made a 2 ms computation take 50 ms."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _from_frontend(change) -> bool:
    """True when the browser made this change: ipywidgets locks the property while it applies
    a state update that came from the frontend."""
    return bool(getattr(change.get("owner"), "_property_lock", None))


def _running_loop():
    import asyncio
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# ----------------------------------------------------------------------------------------------
# The explorers' plumbing
# ----------------------------------------------------------------------------------------------
class _Explorer:
    """Plumbing shared by the explorers: controls -> compute() -> draw() -> a picture in an Output."""

    dpi = 96                 # one matplotlib point = one CSS point, when shown at 100 %
    jpeg_quality = 90
    min_interval_s = 0.03    # browser-driven redraws: at most one per this interval, the last value wins

    def _build(self, controls: dict, figsize, ncols: int = 1, readout: bool = False):
        self.controls = controls
        self.fig = Figure(figsize=figsize, dpi=self.dpi)
        self.fig.subplots_adjust(left=0.08, right=0.98, bottom=0.06, top=0.98, wspace=0.15)
        self.canvas = FigureCanvasAgg(self.fig)
        axes = self.fig.subplots(1, ncols, squeeze=False)[0]
        self.ax = axes[0]
        self.axes = list(axes)
        self.state: dict = {}
        self.frame = b""
        self.frame_format = "jpeg"
        self.redraw_count = 0
        self.background_count = 0
        self._quiet = False
        self._background = None
        self._background_key = None
        self._last_redraw = 0.0
        self._pending = None
        self.live: list = []         # artists made once by setup(), updated by draw(), drawn every frame
        self.setup()
        self._static = {ax: set(ax.get_children()) for ax in self.axes}
        width_px = int(round(figsize[0] * self.dpi))
        self.output = widgets.Output(layout=widgets.Layout(width=f"{width_px}px", min_width=f"{width_px}px"))
        # Titles, legends and tables are HTML, not matplotlib text: crisp at any zoom, and
        # rendering text with Agg was the largest cost of a frame.
        self.caption = widgets.HTML(layout=widgets.Layout(width=f"{width_px}px"))
        self.caption.add_class("frcnn-edu-caption")
        self.legend = widgets.HTML(layout=widgets.Layout(width=f"{width_px}px"))
        self.message = widgets.HTML(layout=widgets.Layout(width=CONTROL_WIDTH))
        for control in controls.values():
            control.observe(self._on_change, names="value")
        column = widgets.VBox(list(controls.values()) + [self.message],
                              layout=widgets.Layout(min_width=CONTROL_WIDTH, flex="0 0 auto"))
        column.add_class("frcnn-edu-controls")
        picture = widgets.VBox([self.caption, self.output, self.legend],
                               layout=widgets.Layout(min_width=f"{width_px}px", flex="0 0 auto"))
        picture.add_class("frcnn-edu-picture")
        self.widget = widgets.HBox([widgets.HTML(EXPLORER_CSS, layout=widgets.Layout(display="none")),
                                    column, picture],
                                   layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start"))
        self.widget.add_class(EXPLORER_CLASS)
        self.redraw()

    # -- controls -----------------------------------------------------------------------------
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
        browser = _from_frontend(change)
        loop = _running_loop() if browser else None
        if loop is None:                 # code in a cell, or tests: redraw now
            self.redraw(for_browser=browser)
            return
        # From the browser (a drag sends a value per mouse move): draw at once when the last
        # frame is old enough, else once, later, with whatever the controls hold then. Never a
        # backlog of stale frames, always ending on the last value.
        wait = self._last_redraw + self.min_interval_s - time.perf_counter()
        if wait <= 0 and self._pending is None:
            self.redraw(for_browser=True)
        elif self._pending is None:
            self._pending = loop.call_later(max(wait, 0.0), self._redraw_pending)

    def _redraw_pending(self):
        self._pending = None
        self.redraw(for_browser=True)

    def _constrain(self, change):
        """Keep the controls consistent after `change` (e.g. neg_iou <= pos_iou)."""

    # -- what a subclass implements --------------------------------------------------------------
    def setup(self):
        """Draw the artists that never change (e.g. the photo) on self.axes. Artists that are made
        here but change with the controls (cheaper to update than to make anew: a scatter of
        thousands of dots) go into self.live; draw() updates them."""

    def compute(self) -> dict:
        raise NotImplementedError

    def draw(self):
        raise NotImplementedError

    # -- one frame ------------------------------------------------------------------------------
    def _clear_frame(self):
        """Remove what the last draw() added; keep setup()'s artists (cheaper than ax.clear())."""
        for ax in self.axes:
            for artist in ax.get_children():
                if artist not in self._static[ax]:
                    artist.remove()
            ax.set_title("")

    def _frame_artists(self) -> list:
        """The artists of this frame, in matplotlib's drawing order (zorder, then insertion)."""
        artists = []
        for ax in self.axes:
            mine = [a for a in ax.get_children() if a not in self._static[ax] or a in self.live]
            artists += sorted(mine, key=lambda a: a.get_zorder()) + [ax.title]
        return artists

    def _render(self) -> np.ndarray:
        """Blit this frame's artists over the cached background; (H, W, 4) RGBA pixels."""
        artists = self._frame_artists()
        for artist in artists:
            artist.set_animated(True)              # skipped by a full draw: not in the background
        key = tuple((ax.get_xlim(), ax.get_ylim(), tuple(ax.get_xticks()), tuple(ax.get_yticks()))
                    for ax in self.axes)
        if key != self._background_key:           # the view changed: draw the background again
            self.canvas.draw()
            self._background = self.canvas.copy_from_bbox(self.fig.bbox)
            self._background_key = key
            self.background_count += 1
        else:
            self.canvas.restore_region(self._background)
        for artist in artists:
            self.fig.draw_artist(artist)
        return np.asarray(self.canvas.buffer_rgba())

    def redraw(self, for_browser: bool = False) -> dict:
        """Recompute the state from the controls, redraw the figure and show it.

        for_browser: the redraw answers a slider move in the browser: the picture is sent as JPEG
        (a few ms to encode, a third of the bytes). Otherwise (the first picture, code in a cell)
        it is PNG, which is what saved notebooks, nbclient and the static course pages keep."""
        if self._pending is not None:              # this redraw supersedes a scheduled one
            self._pending.cancel()
            self._pending = None
        with _one_torch_thread():
            self.state = self.compute()
            self._clear_frame()
            self.draw()
        pixels = self._render()
        if for_browser:
            self.frame_format, self.frame = "jpeg", _encode(pixels, "JPEG", quality=self.jpeg_quality, subsampling=0)
        else:
            self.frame_format, self.frame = "png", _encode(pixels, "PNG", compress_level=6)
        self.redraw_count += 1
        self._last_redraw = time.perf_counter()
        # Replace the Output's content by setting its `outputs` state (one comm update), rather
        # than `with self.output: clear_output(wait=True); display(...)`. The browser shows the
        # same thing, but nbclient (jupyter execute, Jupyter Book, papermill) answers every output
        # captured by an Output widget with a comm message on the shell channel while it waits
        # there for the cell's execute_reply, and now and then misses that reply until the cell
        # timeout has passed (jupyter/nbclient#312): a whole cell timeout lost per explorer.
        self.output.outputs = (_image_output(self.frame, f"image/{self.frame_format}"),)
        return self.state

    @property
    def png(self) -> bytes:
        """The last drawing as PNG bytes (encoded on request when the browser got a JPEG)."""
        if self.frame_format == "png":
            return self.frame
        return _encode(np.asarray(self.canvas.buffer_rgba()), "PNG")

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

    def _fit_view(self, ax, image_size, boxes, slack: float = 0.1):
        """Show the image and everything drawn around it (large anchors cross the border).

        The view is sticky: it changes only when something would fall outside it or when it is
        much larger than needed, so that a slider move rarely forces a full redraw."""
        height, width = image_size
        x1, y1, x2, y2 = 0.0, 0.0, float(width), float(height)
        for box in boxes:
            bx1, by1, bx2, by2 = (float(v) for v in box)
            x1, y1, x2, y2 = min(x1, bx1), min(y1, by1), max(x2, bx2), max(y2, by2)
        margin = 0.02 * max(x2 - x1, y2 - y1)
        need = (x1 - margin, x2 + margin, y1 - margin, y2 + margin)
        (cx1, cx2), (cy2, cy1) = ax.get_xlim(), ax.get_ylim()
        inside = cx1 <= x1 and x2 <= cx2 and cy1 <= y1 and y2 <= cy2        # the boxes, without the margin
        area = (need[1] - need[0]) * (need[3] - need[2])
        if inside and (cx2 - cx1) * (cy2 - cy1) <= 1.6 * area:
            return
        if (x1, y1, x2, y2) != (0.0, 0.0, float(width), float(height)):   # beyond the image: leave room
            pad = slack * max(x2 - x1, y2 - y1)
            need = (need[0] - pad * (x1 < 0), need[1] + pad * (x2 > width),
                    need[2] - pad * (y1 < 0), need[3] + pad * (y2 > height))
        ax.set_xlim(need[0], need[1])
        ax.set_ylim(need[3], need[2])


def error_message(what: str, error: Exception | str) -> str:
    """One short HTML line for a failing student function (no traceback flood)."""
    import html
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    text = text if len(text) < 300 else text[:297] + "..."
    return f"<b style='color:#b00020'>{html.escape(what)}</b>: {html.escape(text)}"


def _svg_sample(color: str, style="-", width: float = 2.0, marker: str | None = None, halo: bool = False) -> str:
    """A 30 x 12 px inline-SVG sample of a line (or a dot) in a legend."""
    dashes = {"-": "", "--": "6,3", ":": "1.5,3", "-.": "6,3,1.5,3"}.get(style, "1,4") if style else ""
    dash = f' stroke-dasharray="{dashes}"' if dashes else ""
    if marker:
        ring = ' stroke="black" stroke-width="0.6"'
        shape = f'<circle cx="15" cy="6" r="4" fill="{color}"{ring}/>'
        if marker == "ring":
            shape = f'<circle cx="15" cy="6" r="5" fill="none" stroke="{color}" stroke-width="2"/>'
    else:
        under = (f'<line x1="1" y1="6" x2="29" y2="6" stroke="white" stroke-width="{width + 3}"/>'
                 if halo else "")
        shape = under + f'<line x1="1" y1="6" x2="29" y2="6" stroke="{color}" stroke-width="{width}"{dash}/>'
    return f'<svg width="30" height="12" style="vertical-align:middle">{shape}</svg>'


def legend_html(entries) -> str:
    """HTML legend: entries are dicts (label, color, style="-", width=2, marker=None, halo=False)."""
    import html
    items = []
    for e in entries:
        sample = _svg_sample(e["color"], e.get("style", "-"), e.get("width", 2.0), e.get("marker"),
                             e.get("halo", False))
        items.append(f'<span style="white-space:nowrap;margin-right:14px">{sample} {html.escape(e["label"])}</span>')
    return '<div class="frcnn-edu-legend">' + " ".join(items) + "</div>"


def caption_html(*lines: str) -> str:
    """The picture's title, as HTML lines (already escaped or plain text)."""
    return "<br>".join(lines)
