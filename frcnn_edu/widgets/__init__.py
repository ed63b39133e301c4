"""Interactive explorers for the notebooks: the sliding window, anchors, anchor labels, proposals and RoI pooling.

Each explorer opens with one line, on a default picture or on your own image (3, H, W):

    fe.widgets.window_explorer()             # the 3x3 window on the feature map and what it sees
    fe.widgets.anchor_explorer()             # the 3x3 window, its receptive field, the k anchors
    fe.widgets.assignment_explorer()         # positive / negative / ignored anchors (Sec. 3.1.2)
    fe.widgets.anchor_explorer(anchors_fn=my_anchors)      # your ex03 function, and where it differs
    fe.widgets.assignment_explorer(assign_fn=my_assign)    # your ex05 function, and where it differs
    fe.widgets.proposal_explorer()           # NMS threshold and top-N vs recall (Sec. 3.3)
    fe.widgets.roi_pool_explorer()           # RoI -> feature grid -> bins -> pooled output ([F])

Put the call last in a cell (or `display(...)` it). The numbers come from small functions that
call the package's own code -- `anchors_at`, `window_box`, `rpn_receptive_field`,
`label_anchors`, `kept_proposals`, `pooling_bins`, `pool_one_roi` -- which you can import and test
on their own. The explorer classes only wire sliders to them and draw. Every explorer has

    .widget     the ipywidgets container (what is displayed)
    .controls   {name: slider}; setting `.controls["x"].value = 5` redraws, as dragging does
    .fig, .ax   the matplotlib figure and its main axes
    .state      the numbers of the last redraw (counts, kept indices, bins, ...)
    .frame      the last drawing as the JPEG bytes the browser got (.png: the same as PNG)
    .redraw()   recompute and redraw; the sliders' observers call it
    .set(**values)  set several controls with one redraw, e.g. .set(x=10, y=4)

The figure is a plain matplotlib `Figure` rendered to a JPEG inside an `ipywidgets.Output`
(set as the Output's `outputs` state, not written into it with display: see _Explorer.redraw),
so the explorers work with the inline backend and need no ipympl.

One module per explorer, each with its plain computations first, then the explorer class and its
one-line opener: window, anchors, assignment, proposals, roi_pool. _base holds what they share (the
default pictures, the sliders, and the controls -> compute -> draw -> PNG plumbing).
"""
from ..samples import REPO  # defined in frcnn_edu.samples; still importable from here
from ._base import (
    GROUND_TRUTH,
    IGNORED,
    NEGATIVE,
    POSITIVE,
    RATIO_COLOURS,
    SIZE_STYLES,
    resize_shorter_side,
    sample_photo,
    shapes_sample,
)
from .anchors import (
    RATIO_OPTIONS,
    RATIO_STYLES,
    AnchorExplorer,
    anchor_explorer,
    anchors_at,
    feature_map_size,
    receptive_field_box,
    rpn_receptive_field,
    window_box,
)
from .assignment import AssignmentExplorer, assignment_explorer, label_anchors
from .proposals import (
    DEFAULT_CHECKPOINT,
    ProposalExplorer,
    jittered_proposals,
    kept_proposals,
    proposal_explorer,
    proposals_before_nms,
    recall_of,
)
from .roi_pool import RoIPoolExplorer, brightness_features, pool_one_roi, pooling_bins, roi_pool_explorer
from .window import WindowExplorer, cell_colours, inside_share, window_explorer

__all__ = [
    "window_explorer", "anchor_explorer", "assignment_explorer", "proposal_explorer", "roi_pool_explorer",
    "WindowExplorer", "AnchorExplorer", "AssignmentExplorer", "ProposalExplorer", "RoIPoolExplorer",
    "cell_colours", "inside_share",
    "feature_map_size", "anchors_at", "window_box", "rpn_receptive_field", "receptive_field_box",
    "label_anchors", "kept_proposals", "recall_of", "jittered_proposals", "proposals_before_nms",
    "brightness_features", "pooling_bins", "pool_one_roi",
    "resize_shorter_side", "sample_photo", "shapes_sample",
    "REPO", "DEFAULT_CHECKPOINT", "POSITIVE", "NEGATIVE", "IGNORED", "GROUND_TRUTH",
    "RATIO_OPTIONS", "RATIO_STYLES", "RATIO_COLOURS", "SIZE_STYLES",
]
