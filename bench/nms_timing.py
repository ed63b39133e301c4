"""Time NMS: the readable reference loop against torchvision's compiled kernel.

Boxes are realistic RPN proposals: random anchors of a 1000 x 600 image
(38 x 63 map, 9 anchors per position) moved by small random deltas and clipped
to the image; scores are random. 2,000 boxes is the size of the proposal set
after NMS in training, 12,000 the number py-faster-rcnn feeds to NMS in
training (Sec. 3.3 and its config). Usage:

    python bench/nms_timing.py [--runs 5] [--threshold 0.7] [--device cpu]
"""

import argparse
import statistics
import time

import torch

from frcnn_edu import anchors as A
from frcnn_edu import boxes as B


def proposals(n: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    anchors = A.AnchorGenerator()((38, 63))
    picked = anchors[torch.randint(0, anchors.shape[0], (n,), generator=g)]
    deltas = 0.2 * torch.randn(n, 4, generator=g)
    boxes = B.clip_boxes(B.decode(deltas, picked), (600, 1000))
    scores = torch.rand(n, generator=g)
    return boxes.to(device), scores.to(device)


def median_ms(fn, runs: int, device: torch.device) -> float:
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 12000])
    args = parser.parse_args()
    device = torch.device(args.device)

    print(f"NMS at IoU {args.threshold} on {device} ({torch.get_num_threads()} threads), "
          f"median of {args.runs} runs")
    print(f"{'boxes':>7} {'kept':>6} {'reference ms':>13} {'fast ms':>9} {'ratio':>7}")
    for n in args.sizes:
        boxes, scores = proposals(n, device)
        keep = B.nms(boxes, scores, args.threshold, impl="fast", validate=False)
        same = torch.equal(keep, B.nms(boxes, scores, args.threshold, impl="reference", validate=False))
        ref = median_ms(lambda: B.nms(boxes, scores, args.threshold, impl="reference", validate=False),
                        args.runs, device)
        fast = median_ms(lambda: B.nms(boxes, scores, args.threshold, impl="fast", validate=False),
                         args.runs, device)
        flag = "" if same else "  (results differ!)"
        print(f"{n:>7} {keep.numel():>6} {ref:>13.1f} {fast:>9.2f} {ref / fast:>6.0f}x{flag}")


if __name__ == "__main__":
    main()
