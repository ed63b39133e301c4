"""fe.widgets.window_explorer: notebook 03's movable 3x3 window (its numbers, its pictures)."""
import pytest
import torch

from frcnn_edu.widgets.window import cell_colours, inside_share, window_explorer


def test_cell_colours_average_each_stride_patch():
    image = torch.zeros(3, 40, 50)
    image[:, :16, :16] = 1.0                       # the patch of cell (0, 0) is white
    cells = cell_colours(image, 16)
    assert tuple(cells.shape) == (3, 4, 3)         # ceil(40 / 16) x ceil(50 / 16) cells, RGB last
    assert torch.allclose(cells[0, 0], torch.ones(3))
    assert torch.allclose(cells[1, 1], torch.zeros(3))


@pytest.mark.parametrize("box, share", [((0, 0, 10, 10), 1.0), ((-10, 0, 10, 10), 0.5),
                                        ((-20, -20, -10, -10), 0.0), ((90, 90, 110, 110), 0.25)])
def test_inside_share(box, share):
    assert inside_share(torch.tensor(box, dtype=torch.float32), (100, 100)) == pytest.approx(share)


def test_the_window_follows_the_sliders_and_sees_the_papers_field():
    image = torch.rand(3, 600, 900)
    explorer = window_explorer(image)
    assert explorer.state["feature_size"] == (38, 57)                 # 600 x 900 / 16, rounded up
    assert explorer.state["receptive_field"] == 228                   # VGG-16 + 3x3 ([P] Sec. 3.1)
    state = explorer.set(x=20, y=15)
    assert state["window"].tolist() == [304, 224, 352, 272]           # cells 19..21 x 14..16, 16 px each
    assert state["cell"].tolist() == [320, 240, 336, 256]
    cx, cy = 328, 248                                                  # the centre cell's centre
    assert state["receptive_field_box"].tolist() == [cx - 114, cy - 114, cx + 114, cy + 114]
    assert state["field_inside"] == 1.0
    corner = explorer.set(x=0, y=0)
    assert 0 < corner["field_inside"] < 0.5                           # most of it is zero padding
    assert explorer.set(backbone="zf")["receptive_field"] == 171


def test_moving_the_window_changes_the_picture_and_the_caption():
    explorer = window_explorer(torch.rand(3, 256, 320), position=(3, 3))
    first_frame, first_caption = explorer.frame, explorer.caption.value
    explorer.controls["x"].value = 12
    assert explorer.frame != first_frame
    assert "x=12" in explorer.caption.value and explorer.caption.value != first_caption
    assert explorer.controls["x"].max == 320 // 16 - 1


def test_bad_image_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        window_explorer(torch.rand(600, 900))
