"""Training never destroys work: divergence, signals, a second run, a full disk, wrong checkpoints.

Each test names the behaviour it proves. The signal and disk-full tests run `frcnn-edu train` in
a subprocess (`python -m frcnn_edu.cli`), as a user would.
"""
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _models import make_model  # tests/_models.py (pytest puts tests/ on sys.path)

from frcnn_edu import FasterRCNN, get_preset, load_model, save_checkpoint
from frcnn_edu.checkpoints import CheckpointLock, read_checkpoint
from frcnn_edu.cli import main
from frcnn_edu.data import ShapesDataset
from frcnn_edu.session import TrainingInterrupted, TrainingSession
from frcnn_edu.train import train

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset():
    return ShapesDataset(num_images=8, image_size=(64, 64), min_object_size=12, max_object_size=40, seed=3)


def _snapshots(monkeypatch):
    """Record the bytes of the checkpoint file after every save."""
    saved = []
    real_save = TrainingSession.save

    def spy(session, optimizer):
        real_save(session, optimizer)
        saved.append(session.checkpoint.read_bytes())

    monkeypatch.setattr(TrainingSession, "save", spy)
    return saved


# ----------------------------------------------------------------------------------------------
# Divergence: no checkpoint from non-finite losses or weights
# ----------------------------------------------------------------------------------------------
def test_a_nan_loss_on_a_saving_iteration_keeps_the_last_good_checkpoint(tmp_path, dataset, monkeypatch):
    saved = _snapshots(monkeypatch)
    calls = {"n": 0}
    real_forward = FasterRCNN.forward

    def forward(self, *args, **kwargs):
        losses = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        if self.training and calls["n"] == 4:            # iteration 4 diverges
            losses["loss_box"] = losses["loss_box"] * float("nan")
        return losses

    monkeypatch.setattr(FasterRCNN, "forward", forward)
    ckpt = tmp_path / "run.pt"
    # log_every=100: the loss is not logged at iteration 4, it is checked because 4 saves
    with pytest.raises(FloatingPointError, match="iteration 4.*unchanged"):
        train(make_model(), dataset, iters=8, batch_size=2, checkpoint=ckpt, checkpoint_every=2,
              log_every=100, device="cpu", progress=False)
    assert len(saved) == 1 and ckpt.read_bytes() == saved[0]      # iteration 2's, byte for byte
    assert read_checkpoint(ckpt)["training"]["iteration"] == 2
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_non_finite_weights_are_never_written(tmp_path, dataset, monkeypatch):
    saved = _snapshots(monkeypatch)
    real_step = torch.optim.SGD.step
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:                              # a finite loss, but the update blows up
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    ckpt = tmp_path / "run.pt"
    with pytest.raises(FloatingPointError, match="non-finite weights"):
        train(make_model(), dataset, iters=8, batch_size=2, checkpoint=ckpt, checkpoint_every=2,
              log_every=100, device="cpu", progress=False)
    assert len(saved) == 1 and ckpt.read_bytes() == saved[0]


# ----------------------------------------------------------------------------------------------
# One run per checkpoint; atomic, durable writes
# ----------------------------------------------------------------------------------------------
def test_a_second_run_into_the_same_checkpoint_is_refused(tmp_path, dataset):
    ckpt = tmp_path / "run.pt"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = CheckpointLock(ckpt)
        lock.path.write_text(f"{holder.pid} {os.uname().nodename}\n")
        with pytest.raises(OSError, match=f"another training run \\(process {holder.pid}"):
            train(make_model(), dataset, iters=1, checkpoint=ckpt, device="cpu", progress=False)
        assert lock.path.exists() and not ckpt.exists()       # the holder's lock is left alone
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and taken over, and released at the end
    train(make_model(), dataset, iters=1, checkpoint=ckpt, device="cpu", progress=False)
    assert ckpt.exists() and not CheckpointLock(ckpt).path.exists()


def test_a_failed_write_leaves_no_temporary_file_and_the_old_checkpoint(tmp_path, monkeypatch):
    model = make_model()
    path = save_checkpoint(tmp_path / "m.pt", model)
    before = path.read_bytes()
    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match=f"could not write checkpoint {path}: No space left on device"):
        save_checkpoint(path, model)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


@pytest.mark.slow
def test_cli_on_a_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path):
    """RLIMIT_FSIZE stands in for a full disk: writes beyond 1 MB fail with EFBIG."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    out = tmp_path / "runs" / "full.pt"
    result = subprocess.run(
        [sys.executable, "-m", "frcnn_edu.cli", "train", "--dataset", "shapes:0:8", "--iters", "1",
         "--batch-size", "2", "--out", str(out), "--quiet", "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("frcnn-edu train: error:")]
    assert len(error_lines) == 1 and f"could not write checkpoint {out}" in error_lines[0]
    assert sorted(p.name for p in out.parent.iterdir()) == ["full.jsonl"]   # no checkpoint, no .tmp, no lock


def test_an_output_path_under_a_file_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    code = main(["train", "--dataset", "shapes:0:4", "--iters", "1", "--out", str(blocker / "run.pt"),
                 "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and str(blocker) in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------
# The CLI never starts over a run by accident
# ----------------------------------------------------------------------------------------------
def _train_cli(out, *extra, iters=2):
    return main(["train", "--dataset", "shapes:0:8", "--iters", str(iters), "--batch-size", "2",
                 "--out", str(out), "--quiet", "--device", "cpu", "--checkpoint-every", "1", *extra])


def test_cli_refuses_an_existing_run_without_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run.pt"
    assert _train_cli(out) == 0
    checkpoint, log = out.read_bytes(), out.with_suffix(".jsonl").read_text()
    capsys.readouterr()
    assert _train_cli(out) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--resume" in err and "--overwrite" in err
    assert out.read_bytes() == checkpoint and out.with_suffix(".jsonl").read_text() == log
    assert _train_cli(out, "--overwrite") == 0                      # explicit: a new run
    assert out.with_suffix(".jsonl").read_text().count("\n") == log.count("\n")


def test_cli_resume_without_a_checkpoint_says_so(tmp_path, capsys):
    assert _train_cli(tmp_path / "none.pt", "--resume") == 2
    err = capsys.readouterr().err
    assert "no checkpoint at" in err and "none.pt" in err
    assert not (tmp_path / "none.jsonl").exists()


# ----------------------------------------------------------------------------------------------
# Wrong checkpoints: class counts
# ----------------------------------------------------------------------------------------------
def test_resuming_into_a_model_with_other_classes_names_both_counts(tmp_path, dataset):
    ckpt = tmp_path / "run.pt"
    train(make_model(), dataset, iters=2, checkpoint=ckpt, checkpoint_every=1, time_limit=0,
          device="cpu", progress=False)
    with pytest.raises(ValueError, match=f"{ckpt} holds a model of 5 classes, but the model here has 7"):
        train(make_model(num_classes=7), dataset, iters=2, checkpoint=ckpt, resume=True, device="cpu",
              progress=False)


def test_cli_resume_with_a_dataset_of_other_classes_is_exit_2(tmp_path, dataset, capsys):
    out = tmp_path / "run.pt"
    torch.manual_seed(0)
    seven = FasterRCNN(7, config=get_preset("shapes_tiny"))
    train(seven, dataset, iters=2, checkpoint=out, time_limit=0, device="cpu", progress=False)
    code = main(["train", "--dataset", "shapes:0:8", "--iters", "2", "--out", str(out), "--resume",
                 "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"{out} holds a model of 7 classes, but the model here has 5" in err


def test_a_checkpoint_whose_header_disagrees_with_its_weights(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", make_model())
    payload = torch.load(path, weights_only=True)
    payload["num_classes"], payload["class_names"] = 3, ["a", "b", "c"]
    torch.save(payload, path)
    with pytest.raises(ValueError, match=f"{path} is inconsistent: its header says 3 classes but its "
                                         f"classifier has weights for 5"):
        load_model(path, device="cpu")


def test_load_model_checks_every_shape(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", make_model())
    payload = torch.load(path, weights_only=True)
    payload["model"]["rpn.head.conv.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(payload, path)
    with pytest.raises(ValueError, match="does not fit .*rpn.head.conv.weight"):
        load_model(path, device="cpu")


def test_a_dataset_with_more_classes_than_the_model(dataset):
    with pytest.raises(ValueError, match="dataset has 5 classes .* model only 3"):
        train(make_model(num_classes=3), dataset, iters=1, device="cpu", progress=False)


# ----------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM: finish the iteration, checkpoint, say how to resume, exit 130 / 143
# ----------------------------------------------------------------------------------------------
def test_sigint_in_the_api_checkpoints_and_raises_training_interrupted(tmp_path, dataset, monkeypatch):
    real_forward = FasterRCNN.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        calls["n"] += 1
        if self.training and calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)          # arrives during iteration 3
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(FasterRCNN, "forward", forward)
    ckpt = tmp_path / "run.pt"
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as stop:
        train(make_model(), dataset, iters=50, checkpoint=ckpt, checkpoint_every=100, log_every=100,
              device="cpu", progress=False)
    assert stop.value.exit_code == 130 and stop.value.iteration == 3
    saved = read_checkpoint(ckpt)["training"]
    assert saved["iteration"] == 3 and [r["iter"] for r in saved["history"]] == [3]   # none lost
    assert signal.getsignal(signal.SIGINT) is handler and not CheckpointLock(ckpt).path.exists()


def _wait_for_log_lines(log: Path, count: int, process, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().count("\n") >= count:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"{log} did not reach {count} lines")


@pytest.mark.slow
def test_cli_sigint_then_resume_then_sigterm(tmp_path):
    out = tmp_path / "run.pt"
    log = out.with_suffix(".jsonl")
    command = [sys.executable, "-m", "frcnn_edu.cli", "train", "--dataset", "shapes:0:16", "--iters", "5000",
               "--batch-size", "1", "--out", str(out), "--quiet", "--device", "cpu", "--warmup", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for_log_lines(log, 1, first)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"checkpoint written to {out}" in err and "by SIGINT" in err
    resume = shlex.split(err.split("resume with: ")[1])
    assert resume[0] == "frcnn-edu" and resume[-1] == "--resume"
    stopped_at = read_checkpoint(out)["training"]["iteration"]
    assert stopped_at >= 10 and not CheckpointLock(out).path.exists()

    second = subprocess.Popen([sys.executable, "-m", "frcnn_edu.cli", *resume[1:]], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = log.read_text().count("\n")
    _wait_for_log_lines(log, lines + 1, second)
    second.send_signal(signal.SIGTERM)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 143 and "by SIGTERM" in err and "Traceback" not in err, err
    saved = read_checkpoint(out)["training"]
    assert saved["iteration"] > stopped_at
    logged = [int(line.split('"iter": ')[1].split(",")[0]) for line in log.read_text().splitlines()]
    assert logged == sorted(set(logged)) and logged[-1] == saved["iteration"]   # each iteration once


def test_cli_check_data_lists_every_bad_file_before_training(tmp_path, capsys):
    root = tmp_path / "VOC"
    ShapesDataset(num_images=4, image_size=(64, 64), min_object_size=12, max_object_size=40,
                  seed=2).write_voc(root, image_format="jpg")
    jpegs = sorted((root / "JPEGImages").glob("*.jpg"))
    for jpeg in jpegs[:2]:                                   # two truncated JPEGs
        jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    out = tmp_path / "run.pt"
    code = main(["train", "--dataset", f"voc:{root}", "--iters", "1", "--out", str(out), "--check-data",
                 "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "2 bad file(s)" in err
    assert all(jpeg.name in err for jpeg in jpegs[:2]) and jpegs[2].name not in err
    assert not out.exists()
