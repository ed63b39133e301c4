"""The `frcnn-edu` command: every subcommand end to end on tiny data, and its bad-input exits."""
import json

import pytest
import torch

from frcnn_edu import FasterRCNN, get_preset, load_model, save_checkpoint
from frcnn_edu.cli import build_parser, main
from frcnn_edu.data import ShapesDataset
from frcnn_edu.data.transforms import to_float_image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A shapes_tiny model with a few training steps: enough to produce detections."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    assert main(["train", "--dataset", "shapes:0:16", "--iters", "2", "--batch-size", "2",
                 "--out", str(path), "--quiet", "--device", "cpu"]) == 0
    return path


def test_every_subcommand_has_help(capsys):
    for command in ("train", "eval", "detect", "demo"):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: frcnn-edu " + command in capsys.readouterr().out


def test_train_writes_checkpoint_and_loss_log(checkpoint):
    assert checkpoint.exists()
    records = [json.loads(line) for line in checkpoint.with_suffix(".jsonl").read_text().splitlines()]
    assert records[-1]["iter"] == 2 and all(k in records[-1] for k in ("loss_rpn_cls", "loss_cls"))


@pytest.mark.slow
def test_voc_copy_on_disk_gives_the_same_map_as_in_memory(tmp_path, checkpoint, capsys):
    """The readers lose nothing: the same images written as VOC (PNG) evaluate identically."""
    ShapesDataset(seed=1, num_images=6).write_voc(tmp_path / "voc", split="test", image_format="png")
    in_memory, on_disk = tmp_path / "mem.json", tmp_path / "disk.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--dataset", "shapes:1:6",
                 "--json", str(in_memory), "--quiet", "--device", "cpu"]) == 0
    assert main(["eval", "--checkpoint", str(checkpoint), "--dataset", f"voc:{tmp_path / 'voc'}:test",
                 "--json", str(on_disk), "--quiet", "--device", "cpu"]) == 0
    a, b = json.loads(in_memory.read_text()), json.loads(on_disk.read_text())
    assert a["ap"] == b["ap"] and a["mAP"] == b["mAP"] and a["mAP_area"] == b["mAP_area"]
    assert "mAP" in capsys.readouterr().out


@pytest.mark.slow
def test_detect_writes_pictures_and_json(tmp_path, checkpoint):
    image = tmp_path / "shape.png"
    from PIL import Image
    Image.fromarray(ShapesDataset(seed=5, num_images=1).render(0)[0]).save(image)
    out = tmp_path / "out"
    assert main(["detect", "--checkpoint", str(checkpoint), str(image), "--out", str(out),
                 "--score-thresh", "0.0", "--device", "cpu"]) == 0
    assert (out / "shape_detections.png").stat().st_size > 0
    report = json.loads((out / "detections.json").read_text())
    # --score-thresh 0: every detection of the model on that image, in its order
    model = load_model(checkpoint, device="cpu")
    with torch.no_grad():
        expected = model([to_float_image(Image.open(image))])[0]
    entries = report[str(image)]
    assert len(entries) == len(expected["scores"]) > 0
    assert [e["label"] for e in entries] == [model.class_names[i - 1] for i in expected["labels"].tolist()]
    assert [e["score"] for e in entries] == pytest.approx(expected["scores"].tolist(), abs=1e-4)
    torch.testing.assert_close(torch.tensor([e["box"] for e in entries]), expected["boxes"], atol=0.01, rtol=0)


@pytest.mark.slow
def test_demo_runs_on_a_given_checkpoint(tmp_path, checkpoint):
    out = tmp_path / "demo"
    assert main(["demo", "--checkpoint", str(checkpoint), "--num-images", "4", "--num-pictures", "2",
                 "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["anchors_on_photo.png", "demo_00.png", "demo_01.png"]


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "shapes", "--preset", "nope", "--iters", "1", "--out", "x.pt"], "unknown preset"),
    (["train", "--dataset", "pascal", "--iters", "1", "--out", "x.pt"], "unknown dataset"),
    (["eval", "--checkpoint", "missing.pt", "--dataset", "shapes"], "does not exist"),
    (["detect", "--checkpoint", "missing.pt", "a.jpg", "--out", "o"], "does not exist"),
])
def test_bad_input_exits_with_code_2_and_names_the_problem(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_eval_refuses_a_checkpoint_for_another_class_set(tmp_path, capsys):
    model = FasterRCNN(2, config=get_preset("shapes_tiny"), class_names=("cat", "dog"))
    path = save_checkpoint(tmp_path / "other.pt", model)
    assert main(["eval", "--checkpoint", str(path), "--dataset", "shapes:1:2", "--quiet", "--device", "cpu"]) == 2
    assert "trained on classes" in capsys.readouterr().err


def test_voc_errors_name_the_file(tmp_path, checkpoint, capsys):
    root = ShapesDataset(seed=1, num_images=2).write_voc(tmp_path / "voc", split="test")
    xml = sorted((root / "Annotations").glob("*.xml"))[0]
    xml.write_text(xml.read_text()[:40])   # truncated
    assert main(["eval", "--checkpoint", str(checkpoint), "--dataset", f"voc:{root}:test", "--quiet",
                 "--device", "cpu"]) == 2
    assert xml.name in capsys.readouterr().err


def test_unreadable_checkpoint_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["eval", "--checkpoint", str(bad), "--dataset", "shapes:1:2"]) == 2
    assert "could not be read" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_with_truncated_svd(tmp_path, checkpoint, capsys):
    """--svd at full rank gives the dense model's mAP; an impossible rank exits 2."""
    dense, svd = tmp_path / "dense.json", tmp_path / "svd.json"
    common = ["--dataset", "shapes:1:4", "--quiet", "--device", "cpu"]
    assert main(["eval", "--checkpoint", str(checkpoint), "--json", str(dense), *common]) == 0
    rank = get_preset("shapes_tiny").representation_size
    assert main(["eval", "--checkpoint", str(checkpoint), "--svd", f"{rank},{rank}", "--json", str(svd), *common]) == 0
    a, b = json.loads(dense.read_text()), json.loads(svd.read_text())
    assert a["mAP"] == pytest.approx(b["mAP"], abs=1e-3)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(checkpoint), "--svd", "0,8", *common]) == 2
    assert "rank must lie in" in capsys.readouterr().err
