"""Properties every attack has: a sample's result depends on its id only (not on its batch), and on the seed."""

from __future__ import annotations

import pytest
from analytic import class_zero_batch, make_model
from attack_checks import assert_batch_invariant, assert_seeded

from hf_sparse_attack import SparsePGD, SparseRS, kernels


@pytest.fixture(scope="module")
def model():
    return make_model()


#: Attack configs with k=3 < 4 needed: every sample runs all its steps (sPGD with restarts).
BATCH_ATTACKS = {
    "spgd": SparsePGD(k=3, steps=40, seed=5),
    "rs-pixels": SparseRS(k=3, queries=120, seed=5),
    "rs-patch": SparseRS(k=4, queries=120, seed=5, mode="patch"),
    "rs-kernel": SparseRS(k=3, queries=120, seed=5, kernel=kernels.square(2), stride=1),
}


@pytest.mark.parametrize("name", BATCH_ATTACKS)
def test_same_sample_same_result_whatever_the_batch(model, name):
    x, y = class_zero_batch(model, 4, 6, seed=11)
    assert_batch_invariant(BATCH_ATTACKS[name], model, x, y, list(range(10, 16)))


@pytest.mark.parametrize("make", [lambda seed: SparsePGD(k=2, steps=15, seed=seed),
                                  lambda seed: SparseRS(k=2, queries=30, seed=seed)], ids=["spgd", "rs"])
def test_deterministic_and_seed_dependent(model, make):
    x, y = class_zero_batch(model, 4, 5, seed=3)  # not fooled with k=2: the search runs throughout
    assert_seeded(make, model, x, y)
