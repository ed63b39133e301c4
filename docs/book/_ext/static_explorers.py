"""The notebooks' explorers on a static page: their first picture and a note, no JavaScript.

An explorer (fe.widgets.anchor_explorer(), ...) is an ipywidgets container: sliders wired to
Python callbacks, and an Output widget holding the figure as a PNG. On a static page there is no
kernel to run the callbacks, and the ipywidgets JavaScript that myst-nb would load to draw the
widgets comes from a CDN (its default nb_ipywidgets_js), which an offline site cannot use. So
conf.py sets nb_ipywidgets_js = {} and this extension replaces each widget view in a notebook's
output by

  * a note: the explorer is interactive in a live kernel (`make lab`), static here;
  * the controls at their default values, as text ("anchor size 1: 128", ...);
  * the explorer's readouts and legends (its HTML widgets) and the picture(s) it drew at those
    defaults, taken from the widget state that nbclient stores in the executed notebook (the
    Output widget's `outputs`: a PNG or JPEG).

It also drops the page's embedded widget state (the whole state as JSON, only useful to the
JavaScript we do not load). Runs on `doctree-read`, after myst-nb has parsed the notebook.
"""
from __future__ import annotations

import json
import re
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx

VIEW_SCRIPT = re.compile(r'<script type="application/vnd\.jupyter\.widget-view\+json">(.*?)</script>', re.S)
MODEL_REF = "IPY_MODEL_"
CONTROL_MODELS = {"IntSliderModel", "FloatSliderModel", "DropdownModel", "CheckboxModel", "ToggleButtonsModel",
                  "SelectionSliderModel", "IntRangeSliderModel", "FloatRangeSliderModel", "RadioButtonsModel",
                  "SelectMultipleModel"}
IMAGE_TYPES = ("image/png", "image/jpeg")
NOTE = ("Interactive explorer: its sliders run Python, so they need a live kernel. Open this notebook in "
        "JupyterLab (`make lab`), or the explorer as a web app (`make apps`), to use them. Shown here: "
        "the explorer at its default settings.")


def widget_state(app: Sphinx, docname: str) -> dict[str, Any]:
    """The notebook's widget state {model_id: {"model_name", "state", ...}}; removed from the page."""
    from myst_nb.sphinx_ import NbMetadataCollector

    js_files = NbMetadataCollector.get_js_files(app.env, docname)  # type: ignore[arg-type]
    entry = js_files.pop("ipywidgets_state", None)
    if entry is None:
        return {}
    return json.loads(entry[1]["body"]).get("state", {})


def descendants(model_id: str, state: dict[str, Any]) -> list[dict[str, Any]]:
    """The model and every model it refers to (children, outputs' layout...), depth first, once each."""
    seen: list[str] = []
    stack = [model_id]
    while stack:
        current = stack.pop()
        if current in seen or current not in state:
            continue
        seen.append(current)
        refs = re.findall(MODEL_REF + r"([0-9a-f]+)", json.dumps(state[current].get("state", {})))
        stack.extend(reversed(refs))
    return [state[model] for model in seen]


def control_text(model: dict[str, Any]) -> str | None:
    """`description: value` of a slider, dropdown, checkbox...; None for anything else."""
    if model.get("model_name") not in CONTROL_MODELS:
        return None
    widget = model["state"]
    value = widget.get("value", widget.get("index"))
    labels, index = widget.get("_options_labels"), widget.get("index")
    if labels and isinstance(index, int):
        value = labels[index]
    elif labels and isinstance(index, list):              # SelectMultiple: the chosen options
        value = ", ".join(labels[i] for i in index)
    label = widget.get("description") or "(unnamed)"
    return f"{label} {value}" if label[-1] in "<>=" else f"{label}: {value}"   # "positive IoU > 0.7"


def pictures(models: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(mime type, base64 data) of each PNG or JPEG held by the Output widgets among `models`."""
    found = []
    for model in models:
        if model.get("model_name") != "OutputModel":
            continue
        for output in model["state"].get("outputs", []):
            data = output.get("data", {})
            mime = next((kind for kind in IMAGE_TYPES if data.get(kind)), None)
            if mime:
                found.append((mime, "".join(data[mime]) if isinstance(data[mime], list) else data[mime]))
    return found


def readouts(models: list[dict[str, Any]]) -> list[str]:
    """The HTML the explorer's HTML widgets show (counts, legends); not their <style> blocks."""
    texts = [model["state"].get("value") or "" for model in models if model.get("model_name") == "HTMLModel"]
    return [text for text in texts if text.strip() and "<style" not in text and "<script" not in text]


def static_explorer(model_id: str, state: dict[str, Any]) -> list[nodes.Node]:
    """The note, the controls and the pictures that replace one widget view."""
    models = descendants(model_id, state)
    parts = NOTE.split("`")                                   # odd parts are code: `make lab`
    note = nodes.note("", nodes.paragraph("", "", *[nodes.literal(text=part) if i % 2 else nodes.Text(part)
                                                    for i, part in enumerate(parts)]))
    controls = [text for text in map(control_text, models) if text]
    if controls:
        note += nodes.paragraph(text="Default settings: " + "; ".join(controls) + ".")
    shown = [nodes.raw("", f'<div class="static-explorer-readout">{html}</div>', format="html")
             for html in readouts(models)]
    shown += [nodes.raw("", f'<img src="data:{mime};base64,{data.strip()}" alt="the explorer at its default '
                        'settings" class="static-explorer"/>', format="html")
              for mime, data in pictures(models)]
    return [note, *shown]


def replace_widget_views(app: Sphinx, doctree: nodes.document) -> None:
    """doctree-read: swap each widget-view output of a notebook for its static rendering."""
    views = [node for node in doctree.findall(nodes.raw) if VIEW_SCRIPT.search(node.astext())]
    if not views:
        return
    state = widget_state(app, app.env.docname)
    for node in views:
        model_id = json.loads(VIEW_SCRIPT.search(node.astext()).group(1))["model_id"]
        node.replace_self(static_explorer(model_id, state))


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("doctree-read", replace_widget_views)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
