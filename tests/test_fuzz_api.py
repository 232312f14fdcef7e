"""Hypothesis fuzzing of the public attack API: every bad argument is a ValueError that says what is wrong.

Configs get arbitrary values for one field at a time (ints, floats incl. NaN/Inf/negative, bools, strings, None,
lists): the result is a valid config or a ``ValueError`` naming the field. Calls get arbitrary image shapes, dtypes
and value ranges, targets and ids: the result is an audited :class:`AttackResult` (re-checked independently) or a
``ValueError`` - never a ``TypeError``/``IndexError``/``RuntimeError`` from deep inside. Bounded: few examples,
tiny tensors, few steps.
"""

import dataclasses

import torch
from attack_checks import assert_valid_result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from hf_sparse_attack import SparseAutoAttack, SparsePGD, SparseRS

torch.set_num_threads(1)

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["ce", "margin", "dlr", "patch", "pixels", "fast", "custom", "standard"]),
    st.lists(st.integers(-1, 2), max_size=3),
    st.lists(st.lists(st.integers(0, 1), min_size=1, max_size=3), min_size=1, max_size=3),
)


def _config_field(cls):
    names = [f.name for f in dataclasses.fields(cls)]
    return st.tuples(st.sampled_from(names), ANY_VALUE)


def _check_config(cls, name, value, **required):
    try:
        config = cls(**{**required, name: value})
    except ValueError as err:
        assert name in str(err), f"{cls.__name__}({name}={value!r}): {err}"
        return
    assert isinstance(config.k, int) and config.k >= 1
    assert isinstance(config.seed, int)


@FUZZ
@given(_config_field(SparsePGD))
def test_sparse_pgd_config(field):
    _check_config(SparsePGD, *field)


@FUZZ
@given(_config_field(SparseRS))
def test_sparse_rs_config(field):
    _check_config(SparseRS, *field)


@FUZZ
@given(_config_field(SparseAutoAttack))
def test_sparse_auto_attack_config(field):
    _check_config(SparseAutoAttack, *field, k=2)


class ShapeFree(nn.Module):
    """A 3-class model that accepts any ``(B, C, H, W)``: logits from the mean, max and min of each image."""

    def forward(self, x):
        z = x.flatten(1).float()
        return torch.stack((z.mean(1), z.amax(1) - 0.5, 0.5 - z.amin(1)), dim=1).mul(10).to(x.dtype)


FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DTYPES = FLOATS + [torch.int64, torch.uint8, torch.bool, torch.complex64]


@st.composite
def batches(draw, wellformed: bool):
    """Images, targets and ids. ``wellformed``: floating ``(B, C, H, W)`` in ``[0, 1]`` with labels in range
    (all dtypes and small shapes, so most attacks must run); otherwise any shape, dtype, range, targets and ids.
    """
    if wellformed:
        shape, dtype, low, high = draw(st.lists(st.integers(1, 5), min_size=4, max_size=4)), draw(
            st.sampled_from(FLOATS)), 0.0, 1.0
    else:
        shape = draw(st.lists(st.integers(0, 5), min_size=1, max_size=5))
        dtype = draw(st.sampled_from(DTYPES))
        low, high = draw(st.sampled_from([0.0, -1.0, 0.5])), draw(st.sampled_from([1.0, 2.0, 0.5]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = (torch.rand(shape, generator=gen) * (high - low) + low).to(dtype)
    b = shape[0]
    if wellformed:
        targets = torch.randint(0, 3, (b,), generator=gen)
        ids = draw(st.one_of(st.none(), st.lists(st.integers(-(2**70), 2**70), min_size=b, max_size=b)))
        return x, targets, ids
    if dtype.is_floating_point and x.numel() and draw(st.booleans()):
        x.view(-1)[0] = draw(st.sampled_from([float("nan"), float("inf"), 0.5]))
    targets = draw(st.one_of(
        st.builds(lambda v: torch.full((b,), v, dtype=torch.long), st.integers(-2, 4)),
        st.builds(lambda v: torch.full((b,), v), st.floats(width=32)),
        st.builds(lambda n: torch.zeros(n, dtype=torch.long), st.integers(0, 6)),
        st.builds(lambda: torch.zeros(b, 2, dtype=torch.long)),
        st.builds(lambda: torch.zeros(b, dtype=torch.int32)),
        st.builds(lambda: torch.zeros(b, dtype=torch.bool)),
        st.builds(lambda: torch.tensor(1)),
        st.lists(st.integers(0, 2), min_size=b, max_size=b),
        st.none(),
        st.text(max_size=3),
    ))
    ids = draw(st.one_of(
        st.none(),
        st.lists(st.integers(0, 9), max_size=4),
        st.lists(st.floats(), min_size=b, max_size=b),
        st.builds(lambda: torch.arange(b)),
        st.builds(lambda: torch.zeros(b)),
    ))
    return x, targets, ids


ATTACKS = st.one_of(
    st.builds(SparsePGD, k=st.integers(1, 30), steps=st.integers(1, 3), unprojected=st.booleans(),
              quantize=st.booleans(), loss=st.sampled_from([None, "margin", "dlr"])),
    st.builds(SparseRS, k=st.integers(1, 30), queries=st.integers(1, 6), mode=st.sampled_from(["pixels", "patch"])),
    st.builds(SparsePGD, k=st.integers(1, 4), steps=st.integers(1, 3), kernel=st.just(((1, 1), (1, 1))),
              stride=st.integers(1, 2)),
    st.builds(SparseRS, k=st.integers(1, 4), queries=st.integers(1, 6), kernel=st.just(((1, 1), (1, 1))),
              stride=st.integers(1, 2)),
    st.builds(lambda k: SparseAutoAttack(k=k, version="custom", attacks=(SparsePGD(k=k, steps=2),
                                                                         SparseRS(k=k, queries=4))),
              st.integers(1, 30)),
)


def _attack_or_value_error(attack, x, targets, ids):
    """Run ``attack``: a ``ValueError`` with a message, or a result passing the independent checks."""
    try:
        result = attack(ShapeFree(), x, targets, ids=ids)
    except ValueError as err:
        assert str(err)
        return None
    assert_valid_result(result, x, attack.k, kernel=attack.kernel, stride=attack.stride)
    assert torch.isfinite(result.loss).all()
    return result


@settings(FUZZ, max_examples=60)
@given(ATTACKS, batches(wellformed=True))
def test_attack_calls_on_wellformed_batches(attack, batch):
    _attack_or_value_error(attack, *batch)


@settings(FUZZ, max_examples=100)
@given(ATTACKS, batches(wellformed=False))
def test_attack_calls_on_arbitrary_batches(attack, batch):
    _attack_or_value_error(attack, *batch)
