"""Sparse-PGD in every floating dtype: the attack's state is float32 whatever the images' or the model's dtype.

On a linear two-class model at 3x112x112 where a 6-pixel attack always exists, float16 images used to fool nothing
(the mask logits' steps underflowed in the images' dtype) and bfloat16 images fell short too; a bfloat16 model raised
on float32 images.
"""

import pytest
import torch
from analytic import LinearTwoClass, make_model, needing_exactly
from attack_checks import assert_valid_result
from torch import nn

from hf_sparse_attack import SparsePGD
from hf_sparse_attack.spgd import quantize_8bit

torch.set_num_threads(1)

HALF = (torch.float16, torch.bfloat16)


def six_pixel_problem(n: int, size: int = 112, k: int = 6, sensitive: int = 12, seed: int = 0):
    """A linear two-class model on ``3 x size x size`` images and ``n`` clean images (class 0, 8-bit grid) that a
    k-pixel attack flips but no (k-1)-pixel one does (checked on the float32 images).

    :func:`analytic.needing_exactly` draws whole images until one fits, too slow at this size: here only the
    ``sensitive`` pixels (the only ones with weight) are drawn until they fit, the rest is random.
    """
    model = LinearTwoClass(make_model(channels=3, size=size, sensitive=sensitive, seed=seed).weight, bias=12.0)
    positions = model.weight.abs().sum(0).flatten().nonzero().flatten()
    w = model.weight.flatten(1)[:, positions]
    gen = torch.Generator().manual_seed(seed)
    found = []
    while sum(len(f) for f in found) < n:
        patch = torch.randint(0, 256, (4096, 3, sensitive), generator=gen).float() / 255
        margin = model.bias - (patch * w).sum((1, 2))
        top = torch.maximum(w * (1 - patch), -w * patch).sum(1).topk(k, dim=1).values
        found.append(patch[(margin > 0) & (top.sum(1) > margin + 0.05) & (top[:, : k - 1].sum(1) < margin - 0.05)])
    x = torch.randint(0, 256, (n, 3, size * size), generator=gen).float() / 255
    x[:, :, positions] = torch.cat(found)[:n]
    return model, x.view(n, 3, size, size)


@pytest.fixture(scope="module")
def problem():
    return six_pixel_problem(8)


def as_linear(model: LinearTwoClass, dtype: torch.dtype) -> nn.Module:
    """The same classifier as a plain ``nn.Linear`` in ``dtype`` (which, unlike the analytic model, refuses inputs
    of another dtype)."""
    linear = nn.Linear(model.weight.numel(), 2)
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[1] = model.weight.flatten()
        linear.bias.copy_(torch.tensor([0.0, -model.bias]))
    return nn.Sequential(nn.Flatten(), linear).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF], ids=str)
def test_every_dtype_finds_the_six_pixels(problem, dtype):
    model, x32 = problem
    x = x32.to(dtype)
    y = torch.zeros(len(x), dtype=torch.long)
    result = SparsePGD(k=6, steps=100)(model, x, y)
    assert_valid_result(result, x, 6)  # unperturbed pixels bit-identical to the images, values in [0, 1]
    assert result.success.all()
    assert result.adversarial.dtype == dtype and result.loss.dtype == torch.float32
    assert (model(result.adversarial).argmax(1) == 1).all()
    perturbed = result.adversarial[result.mask.expand_as(x)]
    assert torch.equal(quantize_8bit(perturbed.float()).to(dtype), perturbed)  # the dtype's 8-bit grid


@pytest.mark.parametrize("unprojected", [True, False])
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_images_small_model_both_gradients(dtype, unprojected):
    model = make_model()
    x = needing_exactly(model, 4, 16, seed=5).to(dtype)
    result = SparsePGD(k=4, steps=150, unprojected=unprojected)(model, x, torch.zeros(16, dtype=torch.long))
    assert_valid_result(result, x, 4)
    assert result.success.all()


@pytest.mark.parametrize("images", [torch.float32, torch.bfloat16], ids=str)
def test_a_bfloat16_model_takes_images_of_any_dtype(problem, images):
    model, x32 = problem
    net = as_linear(model, torch.bfloat16)
    x = x32.to(images)
    result = SparsePGD(k=6, steps=100)(net, x, torch.zeros(len(x), dtype=torch.long))
    assert_valid_result(result, x, 6)
    assert result.success.all() and result.adversarial.dtype == images


def test_float64_images_keep_a_float64_state():
    model = make_model().double()
    x = needing_exactly(model.float(), 3, 4, seed=2).double()
    result = SparsePGD(k=3, steps=60)(model.double(), x, torch.zeros(4, dtype=torch.long))
    assert_valid_result(result, x, 3)
    assert result.success.all()
    assert result.adversarial.dtype == torch.float64 and result.loss.dtype == torch.float64


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_the_8bit_grid_survives_half_precision(dtype):
    grid = torch.arange(256, dtype=torch.float32)
    values = quantize_8bit(grid / 255).to(dtype)
    assert values.unique().numel() == 256 and values.min() == 0 and values.max() == 1
    assert torch.equal((values.float() * 255).round(), grid)  # a PNG written from them holds the intended bytes
