"""Real data: a small CNN trained here on scikit-learn's bundled digits, attacked with sPGD."""

import pytest
import torch
from attack_checks import assert_valid_result

from hf_sparse_attack import SparsePGD
from hf_sparse_attack.evaluation.testdata.digits import digits_split

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(digits_model):
    model, accuracy = digits_model
    (_, _), (x, y) = digits_split()
    return model, accuracy, x, y


def exhaustive_k1_fooled(model, x, y):
    """True optimum on the {0, 1} grid at k=1: try every pixel at both extremes."""
    fooled = torch.zeros(len(y), dtype=torch.bool)
    with torch.no_grad():
        for position in range(x[0].numel()):
            for value in (0.0, 1.0):
                candidate = x.clone()
                candidate.flatten(1)[:, position] = value
                fooled |= model(candidate).argmax(1) != y
    return fooled


def test_accuracy_and_k4_robust_accuracy(trained):
    model, accuracy, x, y = trained
    assert accuracy >= 0.97
    result = SparsePGD(k=4, steps=100)(model, x, y)
    assert_valid_result(result, x, 4)
    assert result.robust_accuracy < 0.10
    assert torch.equal(result.success, model(result.adversarial).argmax(1) != y)


def test_k1_reaches_the_exhaustive_optimum_in_100_steps(trained):
    model, _, x, y = trained
    optimum = 1 - exhaustive_k1_fooled(model, x, y).float().mean().item()
    result = SparsePGD(k=1, steps=100, loss="margin")(model, x, y)
    assert_valid_result(result, x, 1)
    print(f"k=1: exhaustive robust accuracy {optimum:.4f}, sPGD(100 steps) {result.robust_accuracy:.4f}")
    assert result.robust_accuracy <= optimum + 1 / len(y)
