"""Tests for frcnn_edu.faster_rcnn, checkpoints and train(): the whole detector, end to end.

Everything runs the tiny backbone on 64 x 64 inputs with small heads, so the file stays fast
on a CPU; the paper presets are only constructed (on the meta device) and their numbers checked.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from frcnn_edu import FasterRCNN, get_preset, load_model, save_checkpoint
from frcnn_edu.backbones import Tiny
from frcnn_edu.checkpoints import FORMAT, read_checkpoint
from frcnn_edu.data import ShapesDataset
from frcnn_edu.session import TrainingSession
from frcnn_edu.train import train

LOSS_KEYS = {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"}
CFG = get_preset("shapes_tiny").replace(
    min_size=64, max_size=64, rpn_mid_channels=32, representation_size=64,
    rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=50, roi_batch_size=32)


def make_model(seed=0, **changes):
    torch.manual_seed(seed)
    return FasterRCNN(5, config=CFG.replace(**changes) if changes else CFG)


def image(h=64, w=64, seed=0):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64)}


# One intra-op thread for the whole module (tests/conftest.py says why).
pytestmark = pytest.mark.usefixtures("one_thread")


TARGETS = [target([[5, 5, 30, 25], [35, 15, 60, 55]], [1, 4]), target([[10, 10, 45, 50]], [2])]


@pytest.fixture(scope="module")
def dataset():
    return ShapesDataset(num_images=16, image_size=(64, 64), min_object_size=12, max_object_size=40, seed=3)


# ----------------------------------------------------------------------------------------------
# torchvision's calling convention
# ----------------------------------------------------------------------------------------------
def test_training_returns_the_four_losses_and_backward_works():
    model = make_model().train()
    losses = model([image(seed=1), image(seed=2)], TARGETS)
    assert set(losses) == LOSS_KEYS
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for part in (model.backbone, model.rpn.head, model.fast_rcnn.head):
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


def test_eval_returns_one_dict_per_image():
    model = make_model().eval()
    with torch.no_grad():
        out = model([image(seed=1), image(50, 75, seed=2)])
    assert isinstance(out, list) and len(out) == 2
    for det, (h, w) in zip(out, [(64, 64), (50, 75)]):
        assert set(det) == {"boxes", "labels", "scores"}
        d = det["boxes"].shape[0]
        assert d > 0 and det["boxes"].shape == (d, 4) and det["boxes"].dtype == torch.float32
        assert det["labels"].dtype == torch.int64 and det["labels"].shape == (d,)
        assert ((det["labels"] >= 1) & (det["labels"] <= 5)).all()
        assert det["scores"].shape == (d,) and ((det["scores"] > 0.05) & (det["scores"] <= 1)).all()
        assert (det["boxes"] >= 0).all() and (det["boxes"][:, 0::2] <= w).all() and (det["boxes"][:, 1::2] <= h).all()
        assert d <= CFG.detections_per_img


def test_images_of_different_sizes_train_together():
    model = make_model().train()
    images = [image(48, 64, seed=1), image(64, 40, seed=2)]
    targets = [target([[5, 5, 30, 25]], [1]), target([[3, 10, 35, 50]], [3])]
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_batched_tensor_input_equals_list_input():
    model = make_model().eval()
    batch = torch.stack([image(seed=1), image(seed=2)])
    with torch.no_grad():
        from_tensor = model(batch)
        from_list = model([batch[0], batch[1]])
        single = model(batch[1])                                        # one (3, H, W) tensor
    assert len(from_tensor) == 2
    for a, b in zip(from_tensor, from_list):
        assert all(torch.equal(a[k], b[k]) for k in a)
    # batch 1 vs 2 may pick different conv kernels: equal up to rounding
    torch.testing.assert_close(single[0]["boxes"], from_list[1]["boxes"], atol=1e-3, rtol=1e-4)


def test_outputs_are_in_original_image_coordinates():
    """mmdetection #3683 (docs/references.md): a 128 x 128 image is rescaled to 64 inside the model; its
    detections and proposals must be exactly twice those of the already-rescaled image."""
    model = make_model().eval()
    big = image(128, 128, seed=4)
    small = F.interpolate(big[None], size=(64, 64), mode="bilinear", align_corners=False)[0]
    with torch.no_grad():
        det_big, det_small = model([big])[0], model([small])[0]
    assert det_big["boxes"].shape[0] > 0
    torch.testing.assert_close(det_big["boxes"], 2 * det_small["boxes"])
    assert torch.equal(det_big["labels"], det_small["labels"])
    assert (det_big["boxes"] >= 0).all() and (det_big["boxes"] <= 128).all()

    prop_big, prop_small = model.propose([big])[0], model.propose([small])[0]
    torch.testing.assert_close(prop_big["boxes"], 2 * prop_small["boxes"])
    assert (prop_big["boxes"] >= 0).all() and (prop_big["boxes"] <= 128).all()
    assert prop_big["boxes"].max() > 64                                # not the resized image's frame
    assert ((prop_big["scores"] >= 0) & (prop_big["scores"] <= 1)).all()


def test_propose_stays_inside_odd_sized_images_and_keeps_submodule_modes():
    model = make_model()
    model.train()
    model.backbone.eval()                        # what the trainer does with a frozen backbone
    props = model.propose([image(61, 160, seed=5)])[0]["boxes"]     # 64 / 61 = 1.049...
    assert (props[:, 0::2] <= 160).all() and (props[:, 1::2] <= 61).all() and (props >= 0).all()
    assert model.training and model.rpn.training and not model.backbone.training


def test_preprocess_scales_targets_by_exactly_the_factor():
    model = make_model()
    boxes = [[10, 20, 50, 90], [0, 0, 90, 200]]
    batch, targets = model.transform([image(200, 90)], [target(boxes, [1, 2])])
    # shorter side 90 -> 64 would make the longer 142 > 64, so the longer side goes to 64
    assert batch.image_sizes == [(64, 29)]                             # 90 * 0.32 = 28.8
    sy, sx = batch.scales[0]
    assert sy == 64 / 200 and sx == 29 / 90
    expected = torch.tensor(boxes, dtype=torch.float32) * torch.tensor([sx, sy, sx, sy])
    assert torch.equal(targets[0]["boxes"], expected)
    assert batch.tensors.shape == (1, 3, 64, 32)                        # padded to a multiple of 16
    assert batch.original_sizes == [(200, 90)]
    assert torch.count_nonzero(batch.tensors[0, :, :, 29:]) == 0        # zero padding


def test_rescale_factor_paper_rule():
    """Sec. 3.3: shorter side to 600 unless the longer side would exceed 1000."""
    model = make_model(min_size=600, max_size=1000)
    batch, _ = model.transform([image(375, 500), image(500, 1500)])
    assert batch.image_sizes == [(600, 800), (333, 1000)]
    assert model.transform.rescale_factor(375, 500) == pytest.approx(1.6)
    assert model.transform.rescale_factor(500, 1500) == pytest.approx(1000 / 1500)
    with torch.device("meta"):
        paper = FasterRCNN.from_preset("paper_vgg16", 20)
    assert paper.transform.rescale_factor(375, 500) == pytest.approx(1.6)
    assert paper.transform.rescale_factor(600, 1000) == 1.0


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------
def test_label_zero_is_rejected_as_background():
    model = make_model().train()
    with pytest.raises(ValueError, match="background"):
        model([image()], [target([[10, 10, 50, 50]], [0])])


def test_nan_box_is_rejected():
    model = make_model().train()
    with pytest.raises(ValueError, match="image 1"):
        model([image(), image()], [TARGETS[0], target([[10, float("nan"), 50, 50]], [1])])


def test_non_float_image_is_rejected():
    model = make_model().eval()
    with pytest.raises(ValueError, match=r"images\[0\].*uint8"):
        model([(image() * 255).to(torch.uint8)])


def test_wrong_channels_name_the_image():
    model = make_model().eval()
    with pytest.raises(ValueError, match=r"images\[1\].*\(1, 32, 32\)"):
        model([image(), torch.rand(1, 32, 32)])
    with pytest.raises(ValueError, match="images"):
        model(torch.rand(2, 2, 3, 32, 32))


def test_training_needs_targets():
    model = make_model().train()
    with pytest.raises(ValueError, match="targets"):
        model([image()])
    with pytest.raises(ValueError, match="targets"):
        model([image(), image()], TARGETS[:1])


def test_images_without_boxes_are_valid_training_input():
    model = make_model().train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model([image(seed=1), image(seed=2)], [empty, empty])
    assert set(losses) == LOSS_KEYS and all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_rpn_box"].item() == 0.0 and losses["loss_box"].item() == 0.0
    assert losses["loss_rpn_cls"] > 0 and losses["loss_cls"] > 0
    sum(losses.values()).backward()
    losses = model([image(seed=1), image(seed=2)], [empty, TARGETS[1]])   # mixed batch
    assert all(torch.isfinite(v) for v in losses.values())


# ----------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------
def test_paper_presets_build_with_the_papers_numbers():
    with torch.device("meta"):                      # VGG-16's fc6 alone has 102M weights
        vgg = FasterRCNN.from_preset("paper_vgg16", 20)
        zf = FasterRCNN.from_preset("paper_zf", 20)
    assert vgg.config.rpn_mid_channels == 512 and vgg.config.roi_output_size == 7
    assert vgg.rpn.head.conv.out_channels == 512 and vgg.fast_rcnn.head.fc6.in_features == 512 * 7 * 7
    assert zf.config.rpn_mid_channels == 256 and zf.config.roi_output_size == 6
    assert zf.rpn.head.conv.out_channels == 256 and zf.fast_rcnn.head.fc6.in_features == 256 * 6 * 6
    for model in (vgg, zf):
        assert model.rpn.head.num_anchors == 9 and model.backbone.stride == 16
        assert model.fast_rcnn.head.cls_score.out_features == 21
        assert model.config.min_size == 600 and model.config.max_size == 1000
        assert model.config.rpn_post_nms_top_n_test == 300 and model.config.box_coder_weights == (10, 10, 5, 5)


def test_shapes_tiny_preset_runs():
    model = FasterRCNN.from_preset("shapes_tiny", 5).eval()
    assert model.config.backbone == "tiny" and model.rpn.head.conv.out_channels == 128
    with torch.no_grad():
        out = model([image(48, 48)])                                   # rescaled to 256 inside
    assert out[0]["boxes"].shape[1] == 4 and (out[0]["boxes"] <= 48).all()


def test_unknown_preset_lists_the_names():
    with pytest.raises(ValueError) as info:
        FasterRCNN.from_preset("paper_resnet", 5)
    for name in ("paper_vgg16", "paper_zf", "shapes_tiny"):
        assert name in str(info.value)


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model = make_model(box_coder_weights=(5.0, 5.0, 2.0, 2.0), score_thresh=0.1)
    model.class_names = ("a", "b", "c", "d", "e")
    model.train()
    with torch.no_grad():
        model([image(seed=7)], [TARGETS[0]])                           # move BatchNorm statistics
    model.eval()
    with torch.no_grad():
        expected = model([image(seed=8), image(45, 60, seed=9)])
    path = save_checkpoint(tmp_path / "sub" / "model.pt", model)
    loaded = load_model(path, device="cpu")
    assert not loaded.training
    # the config travels with the weights (py-faster-rcnn #365, docs/references.md)
    assert loaded.config == model.config and loaded.config.box_coder_weights == (5.0, 5.0, 2.0, 2.0)
    assert loaded.class_names == ("a", "b", "c", "d", "e")
    with torch.no_grad():
        got = loaded([image(seed=8), image(45, 60, seed=9)])
    for a, b in zip(expected, got):
        assert all(torch.equal(a[k], b[k]) for k in a)
    matching = load_model(path, device="cpu", class_names=["a", "b", "c", "d", "e"])   # accepted
    assert matching.class_names == ("a", "b", "c", "d", "e") and matching.config == model.config
    with pytest.raises(ValueError, match="classes"):
        load_model(path, device="cpu", class_names=["a", "b", "c", "d", "x"])


def test_checkpoints_are_read_with_weights_only(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "model.pt", make_model())
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_model(path, device="cpu")
    assert calls and all(c.get("weights_only") is True for c in calls)
    monkeypatch.undo()
    # and an arbitrary pickled object is refused, not executed
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": _Pickled()}, evil)
    with pytest.raises(ValueError, match="evil.pt"):
        load_model(evil, device="cpu")


class _Pickled:
    pass


def test_non_checkpoint_files_are_value_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.txt"):
        load_model(text, device="cpu")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match="not a frcnn_edu checkpoint"):
        load_model(other, device="cpu")
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "missing.pt", device="cpu")


# ----------------------------------------------------------------------------------------------
# train(): joint, resume, alternating, RPN only
# ----------------------------------------------------------------------------------------------
def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b, prefix):
    keys = [k for k in a if k.startswith(prefix)]
    assert keys
    return all(torch.equal(a[k], b[k]) for k in keys)


def test_joint_training_logs_and_checkpoints(tmp_path, dataset):
    model = make_model()
    before = _state(model)
    ckpt, log = tmp_path / "joint.pt", tmp_path / "log.jsonl"
    history = train(model, dataset, iters=4, batch_size=2, checkpoint=ckpt, checkpoint_every=2,
                    log=log, log_every=2, device="cpu", progress=False)
    assert [r["iter"] for r in history] == [2, 4]
    for record in history:
        assert LOSS_KEYS <= set(record) and record["stage"] == "joint"
        assert all(math.isfinite(record[k]) for k in LOSS_KEYS | {"loss"})
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines == history
    assert not model.training
    after = _state(model)
    for prefix in ("backbone.", "rpn.", "fast_rcnn."):
        assert not _same(before, after, prefix)
    loaded = load_model(ckpt, device="cpu")
    assert all(torch.equal(v, after[k]) for k, v in loaded.state_dict().items())
    saved = read_checkpoint(ckpt)["training"]
    assert saved["history"] == history and saved["schedule"] == "joint"


def test_resume_continues_an_interrupted_run(tmp_path, dataset):
    ckpt = tmp_path / "resume.pt"
    first = train(make_model(), dataset, iters=4, batch_size=2, checkpoint=ckpt, log_every=1,
                  time_limit=0, device="cpu", progress=False)
    assert [r["iter"] for r in first] == [1]                           # stopped after one iteration
    saved = read_checkpoint(ckpt)["training"]
    assert saved["iteration"] == 1 and saved["optimizer"] is not None
    interrupted = read_checkpoint(ckpt)["model"]

    model = make_model(seed=123)                                      # a different fresh model
    history = train(model, dataset, iters=4, batch_size=2, checkpoint=ckpt, log_every=1,
                    resume=True, device="cpu", progress=False)
    assert [r["iter"] for r in history] == [1, 2, 3, 4]
    assert history[0] == first[0]
    assert all(math.isfinite(r["loss"]) for r in history)
    final = read_checkpoint(ckpt)
    assert final["training"]["history"] == history
    assert all(torch.equal(v, final["model"][k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, interrupted[k]) for k, v in final["model"].items())
    with pytest.raises(ValueError, match="resume"):
        train(make_model(), dataset, iters=6, checkpoint=ckpt, resume=True, schedule="rpn",
              device="cpu", progress=False)


def test_alternating_training_shares_one_backbone(tmp_path, dataset, monkeypatch):
    """[P] Sec. 3.2, 4 steps; snapshots at the end of every step show what each step changed."""
    snapshots = {}
    real_save = TrainingSession.save

    def spy(session, optimizer):
        snapshots[session.stage] = _state(session.model)
        real_save(session, optimizer)

    monkeypatch.setattr(TrainingSession, "save", spy)
    model = make_model()
    initial = _state(model)
    history = train(model, dataset, iters=8, batch_size=2, schedule="alternating",
                    checkpoint=tmp_path / "alt.pt", checkpoint_every=2, log_every=2,
                    device="cpu", progress=False)
    assert [r["stage"] for r in history] == ["rpn", "detector", "rpn_finetune", "detector_finetune"]
    assert all(math.isfinite(r["loss"]) for r in history)
    assert set(history[0]) >= {"loss_rpn_cls", "loss_rpn_box"} and "loss_cls" not in history[0]
    assert set(history[1]) >= {"loss_cls", "loss_box"} and "loss_rpn_cls" not in history[1]
    s1, s2, s3, s4 = (snapshots[i] for i in range(4))
    # step 1 trains backbone + RPN only
    assert not _same(initial, s1, "backbone.") and not _same(initial, s1, "rpn.")
    assert _same(initial, s1, "fast_rcnn.")
    # step 2: a separate detector with its own fresh conv layers; the RPN is untouched
    assert not _same(s1, s2, "backbone.") and not _same(s1, s2, "fast_rcnn.")
    assert _same(s1, s2, "rpn.")
    # step 3: shared conv layers frozen (BatchNorm statistics too), only the RPN moves
    assert _same(s2, s3, "backbone.") and _same(s2, s3, "fast_rcnn.")
    assert not _same(s2, s3, "rpn.")
    # step 4: still frozen, only the detector-specific layers move
    assert _same(s3, s4, "backbone.") and _same(s3, s4, "rpn.")
    assert not _same(s3, s4, "fast_rcnn.")
    # one unified network: a single backbone, nothing left trainable-frozen, and it detects
    assert sum(isinstance(m, Tiny) for m in model.modules()) == 1
    assert all(p.requires_grad for p in model.parameters())
    assert read_checkpoint(tmp_path / "alt.pt")["training"]["step1_network"] is None
    with torch.no_grad():
        out = model([dataset[0][0]])
    assert not model.training and out[0]["boxes"].shape[1] == 4 and out[0]["labels"].dtype == torch.int64


def test_rpn_schedule_trains_only_the_rpn(dataset):
    model = make_model()
    before = _state(model)
    history = train(model, dataset, iters=2, batch_size=2, schedule="rpn", log_every=2,
                    device="cpu", progress=False)
    assert set(history[0]) >= {"loss_rpn_cls", "loss_rpn_box"} and "loss_cls" not in history[0]
    after = _state(model)
    assert _same(before, after, "fast_rcnn.")
    assert not _same(before, after, "rpn.") and not _same(before, after, "backbone.")


def test_train_rejects_bad_arguments(dataset):
    with pytest.raises(ValueError, match="schedule"):
        train(make_model(), dataset, iters=2, schedule="four_step", device="cpu", progress=False)
    with pytest.raises(ValueError, match="iters"):
        train(make_model(), dataset, iters=0, device="cpu", progress=False)


def test_resume_extends_a_finished_joint_run_and_refuses_a_mismatch(tmp_path, dataset):
    path = tmp_path / "run.pt"
    train(make_model(), dataset, iters=2, batch_size=2, checkpoint=path, device="cpu",
          progress=False, log_every=1)
    history = train(make_model(), dataset, iters=4, batch_size=2, checkpoint=path, device="cpu",
                    progress=False, log_every=1, resume=True)
    assert [h["iter"] for h in history] == [1, 2, 3, 4]
    assert read_checkpoint(path)["training"]["iters"] == 4
    with pytest.raises(ValueError, match="alternating|was not written"):
        train(make_model(), dataset, iters=8, batch_size=2, checkpoint=path, device="cpu",
              progress=False, schedule="alternating", resume=True)


# ----------------------------------------------------------------------------------------------
# CUDA: the same model on the GPU (skipped without one)
# ----------------------------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
def test_cuda_inference_matches_cpu(monkeypatch):
    # cuDNN's default TF32 convolutions round to 10 mantissa bits: near-tied detections could
    # then swap places. Full float32 on the GPU makes the comparison with the CPU meaningful.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = make_model().eval()
    images = [image(seed=1), image(48, 80, seed=2)]
    with torch.no_grad():
        on_cpu = model(images)
        on_gpu = model.to("cuda")(images)   # CPU images: the transform moves them to the model
    for a, b in zip(on_cpu, on_gpu):
        assert b["boxes"].is_cuda
        assert a["boxes"].shape == b["boxes"].cpu().shape
        torch.testing.assert_close(b["scores"].cpu(), a["scores"], atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(b["boxes"].cpu(), a["boxes"], atol=1e-2, rtol=1e-3)


@needs_cuda
def test_cuda_training_step_and_train(tmp_path, dataset):
    model = make_model().to("cuda").train()
    losses = model([image(seed=1), image(seed=2)], TARGETS)
    assert set(losses) == LOSS_KEYS and all(v.is_cuda and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    history = train(make_model(), dataset, iters=4, batch_size=2, device="cuda", progress=False,
                    log_every=2, checkpoint=tmp_path / "gpu.pt")
    assert len(history) == 2 and all(math.isfinite(r["loss"]) for r in history)
    assert next(load_model(tmp_path / "gpu.pt", device="cpu").parameters()).device.type == "cpu"


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_inference_runs(dtype):
    model = make_model().to("cuda").eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        out = model([image(seed=1)])
    assert torch.isfinite(out[0]["scores"]).all() and out[0]["boxes"].dtype == torch.float32


@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_mixed_precision_training(dataset, precision, tmp_path):
    history = train(make_model(), dataset, iters=4, batch_size=2, device="cuda", precision=precision,
                    progress=False, log_every=2, checkpoint=tmp_path / "amp.pt", time_limit=0)
    assert len(history) >= 1 and all(math.isfinite(r["loss"]) for r in history)
    saved = read_checkpoint(tmp_path / "amp.pt")["training"]
    assert (saved["scaler"] is not None) == (precision == "fp16")      # the GradScaler's state resumes
    resumed = train(make_model(), dataset, iters=4, batch_size=2, device="cuda", precision=precision,
                    progress=False, log_every=2, checkpoint=tmp_path / "amp.pt", resume=True)
    assert resumed[-1]["iter"] == 4


@needs_cuda
def test_a_cpu_checkpoint_resumes_on_cuda(dataset, tmp_path):
    """The sampling generator's CPU state cannot seed a CUDA generator: resume still works."""
    train(make_model(), dataset, iters=4, batch_size=2, device="cpu", checkpoint=tmp_path / "x.pt",
          time_limit=0, progress=False, workers=0)
    history = train(make_model(), dataset, iters=4, batch_size=2, device="cuda", checkpoint=tmp_path / "x.pt",
                    resume=True, progress=False, log_every=1)
    assert history[-1]["iter"] == 4


def test_mixed_precision_needs_cuda(dataset):
    with pytest.raises(ValueError, match="amp=True .* needs a CUDA device"):
        train(make_model(), dataset, iters=1, device="cpu", amp=True, progress=False)


# ----------------------------------------------------------------------------------------------
# Fixed layers, proposal settings per call, difficult objects, old checkpoints
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["joint", "alternating"])
def test_layers_frozen_before_training_stay_frozen_through_every_stage(schedule, dataset):
    """Like VGG-16's conv1-conv2 with ImageNet weights ([P] Sec. 3.1.3): train() must neither
    update nor unfreeze them, in any stage, nor after training."""
    model = make_model()
    first_conv = next(model.backbone.parameters())
    first_conv.requires_grad_(False)
    before = first_conv.detach().clone()
    train(model, dataset, iters=4, batch_size=2, schedule=schedule, log_every=1, device="cpu",
          progress=False)
    assert not first_conv.requires_grad
    assert torch.equal(first_conv.detach(), before)
    assert all(p.requires_grad for p in model.parameters() if p is not first_conv)


def test_propose_takes_settings_per_call_without_changing_the_model():
    model = make_model().eval()
    images = [image(seed=1), image(seed=2)]
    default = model.propose(images)
    wide = model.propose(images, nms_iou=1.0, post_nms_top_n=300)
    assert all(len(d["boxes"]) <= CFG.rpn_post_nms_top_n_test for d in default)
    assert all(len(w["boxes"]) > len(d["boxes"]) for w, d in zip(wide, default))
    again = model.propose(images)
    assert all(torch.equal(a["boxes"], d["boxes"]) for a, d in zip(again, default))
    assert model.config == CFG


def test_difficult_objects_are_left_out_of_training_unless_asked():
    """[C] trains without VOC's "difficult" objects (USE_DIFF = False); evaluation ignores them."""
    difficult_target = dict(target([[5, 5, 30, 25], [35, 15, 60, 55]], [1, 4]),
                            difficult=torch.tensor([False, True]))
    _, (kept,) = make_model().transform([image()], [difficult_target])
    assert kept["labels"].tolist() == [1] and kept["boxes"].shape == (1, 4)
    _, (kept,) = make_model(train_on_difficult=True).transform([image()], [difficult_target])
    assert kept["labels"].tolist() == [1, 4]


def test_format_1_checkpoints_load_into_the_new_layout(tmp_path):
    """Checkpoints written before the detector moved to model.fast_rcnn ("roi_head." keys)."""
    model = make_model().eval()
    path = save_checkpoint(tmp_path / "new.pt", model)
    payload = torch.load(path, weights_only=True)
    payload["format"] = "frcnn_edu/1"
    payload["model"] = {k.replace("fast_rcnn.head.", "roi_head."): v for k, v in payload["model"].items()}
    assert any(k.startswith("roi_head.") for k in payload["model"])
    torch.save(payload, tmp_path / "old.pt")
    old = load_model(tmp_path / "old.pt", device="cpu")
    assert read_checkpoint(tmp_path / "old.pt")["format"] == FORMAT
    with torch.no_grad():
        a, b = model([image(seed=4)]), old([image(seed=4)])
    assert torch.equal(a[0]["boxes"], b[0]["boxes"]) and torch.equal(a[0]["scores"], b[0]["scores"])


def test_bench_stages_time_the_models_own_forward_pass():
    """bench/stages.py wraps the model's parts with clocks: same detections, every stage timed."""
    from bench import stages

    model = make_model().eval()
    images = [image(seed=1), image(50, 75, seed=2)]
    with torch.inference_mode():
        reference = model(images)
        times, detections = stages.staged_inference(model, images, sync=lambda: None)
        after = model(images)
    assert stages.same_detections(reference, detections) and stages.same_detections(reference, after)
    assert set(times) == set(stages.PAPER_COLUMN) and all(t >= 0 for t in times.values())
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    times, losses = stages.staged_training_step(model, optimizer, images, TARGETS, sync=lambda: None)
    assert set(losses) == LOSS_KEYS and {"anchor targets", "backward", "SGD step"} <= set(times)
    assert "forward" not in vars(model.backbone)        # the clocks are gone after the call
