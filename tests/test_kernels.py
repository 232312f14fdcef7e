import numpy as np
import pytest
import torch
from PIL import Image

from hf_sparse_attack import kernels


def test_squares_and_lines():
    assert torch.equal(kernels.square(3), torch.ones(3, 3))
    assert kernels.line(4, "vertical").shape == (4, 1)
    assert torch.equal(kernels.line(3, "antidiagonal"), torch.eye(3).flip(1))


@pytest.mark.parametrize("name", sorted(kernels.SHAPES))
@pytest.mark.parametrize("size", [5, 9, 15])
def test_shapes_are_binary_symmetric_and_fill_part_of_the_box(name, size):
    k = kernels.shape(name, size)
    assert set(k.unique().tolist()) == {0.0, 1.0}
    assert max(k.shape) <= size
    assert torch.equal(k, k.flip(1))  # every drawn shape is left-right symmetric
    assert 0.2 < k.mean() <= 1.0


def test_heart_is_wider_at_the_top_than_at_the_bottom():
    heart = kernels.shape("heart", 15)
    assert heart[2].sum() > heart[-1].sum()


def test_letter_from_default_font():
    t = kernels.letter("T", 16)
    assert t[0].sum() > t[-1].sum()  # the bar of the T is on top
    assert set(t.unique().tolist()) == {0.0, 1.0}


def test_from_image_accepts_paths_arrays_and_crops(tmp_path):
    array = np.zeros((10, 10), dtype=np.uint8)
    array[2:5, 3:8] = 255
    Image.fromarray(array).save(tmp_path / "k.png")
    for source in (str(tmp_path / "k.png"), array, torch.from_numpy(array.astype(np.float32) / 255)):
        assert torch.equal(kernels.from_image(source), torch.ones(3, 5))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: kernels.square(0), "size"),
        (lambda: kernels.line(3, "sideways"), "orientation"),
        (lambda: kernels.shape("moon", 5), "unknown shape 'moon'"),
        (lambda: kernels.letter("AB", 8), "one visible character"),
        (lambda: kernels.from_image(np.zeros((4, 4))), "no pixel above"),
        (lambda: kernels.from_image(np.zeros((2, 4, 4))), "2-D"),
    ],
)
def test_bad_kernel_requests_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
