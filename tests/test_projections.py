"""Property tests of the projections used by the attacks (hypothesis)."""

import torch
from attack_checks import assert_valid_result
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_sparse_attack import SparsePGD, Structure, kernels
from hf_sparse_attack.spgd import quantize_8bit, topk_mask

torch.set_num_threads(1)

dims = st.integers(1, 9)
seeds = st.integers(0, 2**31 - 1)


@settings(max_examples=60, deadline=None)
@given(b=st.integers(1, 4), h=dims, w=dims, data=st.data(), seed=seeds)
def test_topk_mask_keeps_exactly_k_largest(b, h, w, data, seed):
    k = data.draw(st.integers(1, h * w))
    scores = torch.randn(b, 1, h, w, generator=torch.Generator().manual_seed(seed))
    mask = topk_mask(scores, k)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (mask.flatten(1).sum(1) == k).all()
    kept_min = torch.where(mask.bool(), scores, torch.inf).flatten(1).amin(1)
    dropped_max = torch.where(mask.bool(), -torch.inf, scores).flatten(1).amax(1)
    assert (kept_min >= dropped_max).all()


@settings(max_examples=60, deadline=None)
@given(kh=st.integers(1, 4), kw=st.integers(1, 4), stride=st.integers(1, 3), h=st.integers(4, 10),
       w=st.integers(4, 10), data=st.data(), seed=seeds)
def test_group_projection_stays_within_budget_and_box(kh, kw, stride, h, w, data, seed):
    gen = torch.Generator().manual_seed(seed)
    kernel = (torch.rand(kh, kw, generator=gen) > 0.4).float()
    kernel[0, 0] = 1
    s = Structure(kernel, stride, h, w)
    k = data.draw(st.integers(1, s.placements))
    groups = topk_mask(torch.randn(2, 1, *s.grid_shape, generator=gen), k)
    pixels = s.to_pixels(groups)
    assert pixels.shape == (2, 1, h, w)
    assert ((pixels == 0) | (pixels == 1)).all()
    assert (pixels.flatten(1).sum(1) <= k * kernel.sum()).all()
    # the adjoint really is the adjoint of the (unclamped) transposed convolution
    g = torch.randn(2, 1, h, w, generator=gen)
    raw = torch.nn.functional.conv_transpose2d(groups, kernel[None, None], stride=stride)
    lhs = (g[..., : raw.shape[-2], : raw.shape[-1]] * raw).sum()
    assert torch.allclose(lhs, (s.to_grid(g) * groups).sum(), atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(seed=seeds)
def test_quantization_is_on_the_8bit_grid_and_in_the_box(seed):
    values = torch.rand(500, generator=torch.Generator().manual_seed(seed))
    q = quantize_8bit(values)
    assert q.min() >= 0 and q.max() <= 1
    assert torch.equal(q, (q * 255).round() / 255)
    assert ((q - values).abs() <= 0.5 / 255 + 1e-7).all()


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), c=st.sampled_from([1, 3]), h=st.integers(2, 6), data=st.data(), seed=seeds,
       eps=st.sampled_from([0.05, 0.5, 1.0]), unprojected=st.booleans(), quantize=st.booleans())
def test_any_run_is_within_budget_and_box(b, c, h, data, seed, eps, unprojected, quantize):
    k = data.draw(st.integers(1, h * h))
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c * h * h, 4))
    torch.nn.init.normal_(net[1].weight, generator=gen)
    x = torch.rand(b, c, h, h, generator=gen)
    y = torch.randint(0, 4, (b,), generator=gen)
    result = SparsePGD(k=k, steps=5, epsilon=eps, unprojected=unprojected, quantize=quantize, seed=seed)(net, x, y)
    assert_valid_result(result, x, k)
    assert ((result.adversarial - x).abs() <= eps + 1 / 255).all()


@settings(max_examples=15, deadline=None)
@given(name=st.sampled_from(sorted(kernels.SHAPES)), size=st.integers(3, 9), stride=st.integers(1, 3), seed=seeds)
def test_structured_run_with_any_shape_is_audited(name, size, stride, seed):
    kernel = kernels.shape(name, size)
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(seed))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 144, 3))
    result = SparsePGD(k=2, steps=4, kernel=kernel, stride=stride, seed=seed)(net, x, torch.tensor([0, 1]))
    assert_valid_result(result, x, 2, kernel=kernel, stride=stride)
