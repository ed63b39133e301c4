"""The model compiles with torch.compile (backend "aot_eager" on the CPU), graph breaks allowed."""
import pytest
import torch
from _models import make_model  # tests/_models.py (pytest puts tests/ on sys.path)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

IMAGES = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
TARGETS = [{"boxes": torch.tensor([[5.0, 5.0, 40.0, 40.0]]), "labels": torch.tensor([1])},
           {"boxes": torch.tensor([[10.0, 20.0, 60.0, 50.0]]), "labels": torch.tensor([3])}]


def test_compiled_inference_equals_eager():
    model = make_model().eval()
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        eager, out = model(IMAGES), compiled(IMAGES)
    for a, b in zip(eager, out):
        assert a["boxes"].shape == b["boxes"].shape
        torch.testing.assert_close(b["boxes"], a["boxes"])
        torch.testing.assert_close(b["scores"], a["scores"])


def test_compiled_training_step_equals_eager():
    losses = {}
    for name in ("eager", "compiled"):
        model = make_model().train()
        model.set_generator(torch.Generator().manual_seed(0))
        run = torch.compile(model, backend="aot_eager") if name == "compiled" else model
        out = run(IMAGES, TARGETS)
        sum(out.values()).backward()
        losses[name] = {k: v.detach() for k, v in out.items()}
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    for k, v in losses["eager"].items():
        torch.testing.assert_close(losses["compiled"][k], v, msg=k)
