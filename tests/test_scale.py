"""Beyond one fp32 process: mixed precision, DataLoader workers, torchrun data parallelism."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _models import make_model  # tests/_models.py (pytest puts tests/ on sys.path)

from frcnn_edu import load_model
from frcnn_edu.checkpoints import read_checkpoint
from frcnn_edu.data import ShapesDataset
from frcnn_edu.data.loader import TrainingBatches
from frcnn_edu.predict import evaluate_model
from frcnn_edu.samples import SHAPES_HELD_OUT, SHIPPED_CHECKPOINT
from frcnn_edu.train import train

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset():
    return ShapesDataset(num_images=12, image_size=(64, 64), min_object_size=12, max_object_size=40, seed=3)


# ----------------------------------------------------------------------------------------------
# Mixed precision
# ----------------------------------------------------------------------------------------------
def test_bf16_inference_on_the_shipped_checkpoint_is_close_to_fp32():
    """Under the caller's torch.autocast (bf16, CPU): mAP within 0.01 of fp32 on 60 held-out
    images, and the best detection of each image within 2 px and 0.02 in score."""
    model = load_model(SHIPPED_CHECKPOINT, device="cpu")
    held_out = torch.utils.data.Subset(ShapesDataset(**SHAPES_HELD_OUT), range(60))
    held_out.classes = model.class_names
    fp32 = evaluate_model(model, held_out)["mAP"]
    bf16 = evaluate_model(model, held_out, precision="bf16")["mAP"]
    assert abs(fp32 - bf16) <= 0.01, (fp32, bf16)
    images = [held_out[i][0] for i in range(4)]
    with torch.inference_mode():
        a = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b = model(images)
    for x, y in zip(a, b):
        assert y["boxes"].dtype == torch.float32 and y["scores"].dtype == torch.float32
        torch.testing.assert_close(y["boxes"][0], x["boxes"][0], atol=2.0, rtol=0)
        torch.testing.assert_close(y["scores"][0], x["scores"][0], atol=0.02, rtol=0)


def test_a_bf16_training_run_has_finite_losses_and_float32_weights(dataset):
    model = make_model()
    history = train(model, dataset, iters=3, batch_size=2, precision="bf16", log_every=1, device="cpu",
                    progress=False, workers=0)
    assert len(history) == 3 and all(math.isfinite(r["loss"]) for r in history)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_anchors_stay_float32_under_autocast():
    model = make_model().eval()
    seen = []
    real = model.rpn.anchor_generator.__class__.__call__

    def spy(self, *args, **kwargs):
        anchors = real(self, *args, **kwargs)
        seen.append(anchors.dtype)
        return anchors

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        type(model.rpn.anchor_generator).__call__ = spy
        try:
            model([torch.rand(3, 64, 64)])
        finally:
            type(model.rpn.anchor_generator).__call__ = real
    assert seen == [torch.float32]


def test_precision_errors_are_clear(dataset):
    with pytest.raises(ValueError, match="precision must be one of"):
        train(make_model(), dataset, iters=1, precision="int8", device="cpu", progress=False)
    with pytest.raises(ValueError, match="'fp16' .* needs a CUDA device"):
        train(make_model(), dataset, iters=1, precision="fp16", device="cpu", progress=False)


def test_a_generator_on_another_device_is_a_clear_error():
    """A CPU generator handed to a model on CUDA (or the reverse) fails with a message, not deep
    inside torch.rand; checked without a GPU through the check itself."""
    from types import SimpleNamespace

    from frcnn_edu.rpn import check_generator_device

    on_cuda = SimpleNamespace(device=torch.device("cuda", 0))
    with pytest.raises(ValueError, match="generator is on cuda:0 but the model runs on cpu"):
        check_generator_device(on_cuda, torch.device("cpu"))
    check_generator_device(torch.Generator(), torch.device("cpu"))
    check_generator_device(None, torch.device("cpu"))


# ----------------------------------------------------------------------------------------------
# Data loading: the same batches for any number of workers or ranks
# ----------------------------------------------------------------------------------------------
def test_batches_do_not_depend_on_the_number_of_ranks(dataset):
    one = TrainingBatches(dataset, 4, seed=7, flip_prob=0.5)
    halves = [TrainingBatches(dataset, 2, seed=7, flip_prob=0.5, rank=r, world_size=2) for r in range(2)]
    for k in (0, 1, 5):
        images, targets = one[k]
        split = [halves[r][k] for r in range(2)]
        assert all(torch.equal(a, b) for a, b in zip(images, split[0][0] + split[1][0]))
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(targets, split[0][1] + split[1][1]))
    flipped = [torch.equal(one[k][0][i], dataset[one.global_indices(k)[i]][0].flip(-1))
               for k in range(6) for i in range(4)]
    assert 0 < sum(flipped) < len(flipped)                              # flips happen, not always


@pytest.mark.slow
def test_two_workers_give_the_same_loss_history_as_none(dataset):
    runs = {}
    for workers in (0, 2):
        runs[workers] = train(make_model(), dataset, iters=4, batch_size=2, log_every=1, device="cpu",
                              progress=False, workers=workers)
    assert [r["loss"] for r in runs[0]] == [r["loss"] for r in runs[2]]


def test_resume_from_a_generator_of_another_device_kind(tmp_path, dataset):
    """A checkpoint written on a GPU holds a CUDA generator state (16 bytes), which a CPU
    generator cannot take: resuming derives a sampling stream from it instead of crashing."""
    ckpt = tmp_path / "run.pt"
    train(make_model(), dataset, iters=4, checkpoint=ckpt, time_limit=0, device="cpu", progress=False,
          workers=0)
    payload = torch.load(ckpt, weights_only=True)
    payload["training"]["generator"] = torch.arange(16, dtype=torch.uint8)   # a CUDA-sized state
    payload["training"]["generator_device"] = "cuda"
    torch.save(payload, ckpt)
    history = train(make_model(), dataset, iters=4, checkpoint=ckpt, resume=True, log_every=1,
                    device="cpu", progress=False, workers=0)
    assert history[-1]["iter"] == 4 and all(math.isfinite(r["loss"]) for r in history)


# ----------------------------------------------------------------------------------------------
# torchrun: DistributedDataParallel on CPU with gloo
# ----------------------------------------------------------------------------------------------
WORKER = r"""
import json, os, sys, torch, torch.distributed as dist
sys.path.insert(0, {repo!r})
from frcnn_edu import distributed
from frcnn_edu.data.loader import TrainingBatches
sys.path.insert(0, {tests!r})
from _models import make_model
from frcnn_edu.data import ShapesDataset
torch.set_num_threads(1)
distributed.init_from_env()
dataset = ShapesDataset(num_images=12, image_size=(64, 64), min_object_size=12, max_object_size=40, seed=3)
model = make_model().train()
batches = TrainingBatches(dataset, 2, seed=0, flip_prob=0.5, rank=distributed.rank(), world_size=2)
images, targets = batches[0]
model.set_generator(torch.Generator().manual_seed(11))
ddp = distributed.wrap_for_ranks(model, model, torch.device("cpu"))
losses = ddp(images, targets)
sum(losses.values()).backward()
if distributed.rank() == 0:
    grads = {{k: p.grad.tolist() for k, p in model.named_parameters() if p.grad is not None}}
    json.dump(grads, open({out!r}, "w"))
dist.destroy_process_group()
"""


def _torchrun(args, tmp_path, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(29500 + os.getpid() % 1000), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_two_ranks_average_the_gradients_of_their_halves(tmp_path):
    """DDP semantics: the gradient on every rank is the mean of the ranks' gradients, each rank's
    loss computed on its share of the global batch (same sampling generator state on each)."""
    out = tmp_path / "grads.json"
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=str(REPO), tests=str(REPO / "tests"), out=str(out)))
    result = _torchrun([str(script)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp_grads = json.loads(out.read_text())

    dataset = ShapesDataset(num_images=12, image_size=(64, 64), min_object_size=12, max_object_size=40, seed=3)
    expected = {}
    for rank in range(2):
        model = make_model().train()
        images, targets = TrainingBatches(dataset, 2, seed=0, flip_prob=0.5, rank=rank, world_size=2)[0]
        model.set_generator(torch.Generator().manual_seed(11))
        sum(model(images, targets).values()).backward()
        for k, p in model.named_parameters():
            if p.grad is not None:
                expected[k] = expected.get(k, 0) + p.grad / 2
    assert set(ddp_grads) == set(expected)
    for k, g in expected.items():
        torch.testing.assert_close(torch.tensor(ddp_grads[k]), g, atol=1e-5, rtol=1e-4, msg=k)
    # and the halves really differ: without the all-reduce, rank 0 would keep its own gradient
    model = make_model().train()
    images, targets = TrainingBatches(dataset, 2, seed=0, flip_prob=0.5, rank=0, world_size=2)[0]
    model.set_generator(torch.Generator().manual_seed(11))
    sum(model(images, targets).values()).backward()
    own = model.fast_rcnn.head.cls_score.weight.grad
    assert not torch.allclose(own, expected["fast_rcnn.head.cls_score.weight"], atol=1e-5)


@pytest.mark.slow
def test_cli_train_under_torchrun_writes_one_checkpoint_and_one_log(tmp_path):
    out = tmp_path / "ddp.pt"
    result = _torchrun(["-m", "frcnn_edu.cli", "train", "--dataset", "shapes:0:16", "--iters", "4",
                        "--batch-size", "1", "--out", str(out), "--quiet", "--device", "cpu",
                        "--workers", "0", "--checkpoint-every", "2"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.jsonl", "ddp.pt"]
    log = [json.loads(line) for line in (tmp_path / "ddp.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [4]                           # log_every 10: one record, once
    saved = read_checkpoint(out)
    assert saved["training"]["iteration"] == 0 and saved["training"]["stage"] == 1   # finished
    assert len(saved["training"]["history"]) == 1
    load_model(out, device="cpu")
