"""The detector learns: trained on four images, it finds the objects in those same images.

The cheapest end-to-end check that the losses, their gradients and post-processing fit together
(a sign error in eq. 2, a swapped target or a detached loss leaves mAP near 0). Public API only.

Measured on a loaded 2-core CPU, one thread, 80 iterations of batch 2 (13-20 s), seeds 0-6:
    mAP before training        0.00-0.09   (seed 0: 0.000)
    mAP after training         0.67-0.89   (seed 0: 0.741)
    last / first logged loss   0.31-0.48   (seed 0: 0.479)
so the thresholds below (mAP < 0.2 before, > 0.5 after, loss ratio < 0.6) leave a clear margin
for every seed tried. Marked slow: with it, `make test-fast` would no longer fit in a minute.
"""
import pytest
import torch

import frcnn_edu as fe
from frcnn_edu.predict import evaluate_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

SEED, NUM_IMAGES, ITERS = 0, 4, 80


def test_overfits_four_images():
    dataset = fe.data.ShapesDataset(seed=SEED, num_images=NUM_IMAGES)
    torch.manual_seed(SEED)   # the initial weights; train(seed=...) seeds the sampling
    model = fe.FasterRCNN.from_preset("shapes_tiny", num_classes=len(dataset.classes),
                                      class_names=dataset.classes)
    before = evaluate_model(model, dataset)["mAP"]

    # On the CPU, where the margins were measured, also on a machine with a GPU.
    history = fe.train.train(model, dataset, iters=ITERS, batch_size=2, progress=False, seed=SEED, device="cpu")
    after = evaluate_model(model, dataset)["mAP"]

    first, last = history[0]["loss"], history[-1]["loss"]
    assert before < 0.2, f"an untrained model already has mAP {before:.3f}"
    assert last < 0.6 * first, f"loss went from {first:.3f} to only {last:.3f} in {ITERS} iterations"
    assert after > 0.5, f"mAP on the training images is {after:.3f} after {ITERS} iterations (was {before:.3f})"
