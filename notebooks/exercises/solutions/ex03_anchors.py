"""Solution to exercise 3: the k base anchors of one position (Sec. 3.1.1)."""
import math

import torch


def my_anchors(sizes, ratios):
    """(len(ratios) * len(sizes), 4) anchors centred on (0, 0), ratios outer, sizes inner.

    An anchor of size s and ratio r (= height / width) has area s^2:
    w = s / sqrt(r), h = s * sqrt(r), so w * h = s^2 and h / w = r.
    """
    rows = []
    for r in ratios:            # ratios in the outer loop ...
        for s in sizes:         # ... sizes in the inner one
            w = s / math.sqrt(r)
            h = s * math.sqrt(r)
            rows.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(rows, dtype=torch.float32)
