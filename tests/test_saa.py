import json

import pytest
import torch
from analytic import make_model, needing_exactly
from attack_checks import assert_valid_result

from hf_sparse_attack import SparsePGD, kernels
from hf_sparse_attack.config import to_dict
from hf_sparse_attack.rs import SparseRS
from hf_sparse_attack.saa import PRESETS, CascadeResult, SparseAutoAttack

torch.set_num_threads(1)


def small_cascade(k, seed=0, **structure):
    return SparseAutoAttack(
        k=k,
        version="custom",
        seed=seed,
        attacks=[
            SparsePGD(k=k, steps=100, **structure),
            SparsePGD(k=k, steps=100, unprojected=False, **structure),
            SparseRS(k=k, queries=300, **structure),
        ],
        **structure,
    )


def assert_valid_cascade(result, x, k, stages, **structure):
    assert isinstance(result, CascadeResult)
    assert_valid_result(result, x, k, **structure)
    assert len(result.robust_accuracy_per_stage) == stages + 1
    for i, accuracy in enumerate(result.robust_accuracy_per_stage):
        still_robust = (result.stage == -1) | (result.stage > i)
        assert accuracy == pytest.approx(still_robust.float().mean().item())
    assert ((result.stage >= -1) & (result.stage <= stages)).all()


def test_at_least_as_strong_as_each_stage_alone(digits):
    cnn, x, y = digits
    saa = small_cascade(k=2)
    result = saa(cnn, x, y)
    assert_valid_cascade(result, x, 2, stages=3)
    assert torch.equal(result.success, cnn(result.adversarial).argmax(1) != y)
    alone = [attack(cnn, x, y) for attack in saa.stages]
    for single in alone:
        assert_valid_result(single, x, 2)
    assert result.robust_accuracy <= min(single.robust_accuracy for single in alone)
    assert result.robust_accuracy < result.robust_accuracy_per_stage[1]  # the later stages add something here
    # each sample went through the stages with its own seeds: its row is that of the stage that fooled it, or for a
    # robust sample that of the stage whose image scored best on it
    scores = torch.stack([single.score for single in alone])  # (stages, B)
    chosen = torch.where(result.stage == -1, scores.argmax(0) + 1, result.stage)
    assert (result.stage == -1).any()
    for number, single in enumerate(alone, 1):
        rows = chosen == number
        assert torch.equal(result.adversarial[rows], single.adversarial[rows])
    robust = result.stage == -1
    assert torch.equal(result.score[robust], scores.amax(0)[robust])


def test_records_which_stage_fooled_each_sample():
    model = make_model()
    x = torch.cat((needing_exactly(model, 2, 4, seed=1), needing_exactly(model, 4, 3, seed=2)))
    y = torch.tensor([0, 0, 1, 0, 0, 0, 0])  # sample 2 is misclassified from the start
    result = small_cascade(k=2)(model, x, y)
    assert_valid_cascade(result, x, 2, stages=3)
    assert result.stage[2] == 0 and result.iterations[2] == 0 and torch.equal(result.adversarial[2], x[2])
    assert (result.stage[[0, 1, 3]] >= 1).all()
    assert (result.stage[4:] == -1).all()  # they need 4 pixels
    assert result.robust_accuracy_per_stage[0] == pytest.approx(6 / 7)
    assert result.robust_accuracy == pytest.approx(3 / 7)
    assert (result.iterations[4:] == 100 + 100 + 300).all()  # every stage spent its whole budget on them


def test_deterministic_for_a_seed(digits):
    cnn, x, y = digits
    x, y = x[:30], y[:30]
    a, b = small_cascade(k=1)(cnn, x, y), small_cascade(k=1)(cnn, x, y)
    for result in (a, b):
        assert_valid_cascade(result, x, 1, stages=3)
    assert torch.equal(a.adversarial, b.adversarial) and torch.equal(a.stage, b.stage)
    assert a.robust_accuracy_per_stage == b.robust_accuracy_per_stage
    seeds = [attack.seed for attack in small_cascade(k=1, seed=1).stages]
    assert len(set(seeds)) == 3 and seeds != [attack.seed for attack in small_cascade(k=1).stages]


def test_presets_share_budget_and_goal():
    saa = SparseAutoAttack(k=7, loss="margin", targeted=True, kernel=kernels.square(2), stride=2)
    stages = saa.stages
    assert [type(a) for a in stages] == [SparsePGD, SparsePGD, SparseRS]
    assert stages[0].unprojected and not stages[1].unprojected
    assert (stages[0].steps, stages[1].steps, stages[2].queries) == (10000, 10000, 10000)
    for attack in stages:
        assert (attack.k, attack.kernel, attack.stride, attack.targeted, attack.loss) == (
            7, saa.kernel, 2, True, "margin")
    fast = SparseAutoAttack(k=7, version="fast").stages
    assert (fast[0].steps, fast[1].steps, fast[2].queries) == (300, 300, 1000)
    assert set(PRESETS) == {"standard", "fast"}
    json.dumps(to_dict(small_cascade(k=3)))  # a cascade is a serialisable config


def test_fast_preset_on_digits(digits):
    cnn, x, y = digits
    result = SparseAutoAttack(k=4, version="fast")(cnn, x[:20], y[:20], ids=range(100, 120))
    assert_valid_cascade(result, x[:20], 4, stages=3)
    assert result.robust_accuracy <= 0.05


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_fast_preset_on_detection_and_segmentation(tiny_tasks, task):
    objective, x, targets = tiny_tasks[task]
    result = SparseAutoAttack(k=10, version="fast")(objective, x, targets)
    assert_valid_cascade(result, x, 10, stages=3)
    assert torch.equal(result.success, objective.success(result.adversarial, targets))


def test_structured_cascade_is_audited():
    model = make_model()
    x = needing_exactly(model, 4, 6, seed=2)
    kernel = kernels.square(2)
    result = small_cascade(k=2, kernel=kernel, stride=2)(model, x, torch.zeros(6, dtype=torch.long))
    assert_valid_cascade(result, x, 2, stages=3, kernel=kernel, stride=2)
    assert result.groups.shape == (6, 1, 4, 4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"attacks": [SparseRS(k=2)]}, "pass version='custom'"),
        ({"version": "strong"}, r"unknown version 'strong'; allowed: \['standard', 'fast', 'custom'\]"),
        ({"version": "custom"}, "non-empty list"),
        ({"version": "custom", "attacks": []}, "non-empty list"),
        ({"version": "custom", "attacks": [SparseRS(k=3)]}, "stage 1 has k=3"),
        ({"version": "custom", "attacks": [SparseRS(k=2), SparseRS(k=2, targeted=True)]}, "stage 2 has targeted"),
        ({"version": "custom", "attacks": [SparseRS(k=2, kernel=torch.ones(2, 2))]}, "stage 1 has kernel"),
        ({"version": "custom", "attacks": ["rs"]}, "SparsePGD or SparseRS"),
        ({"version": "custom", "attacks": [SparseRS(k=2)], "loss": "ce"}, "takes each loss from its configs"),
        ({"loss": "hinge"}, "unknown loss"),
        ({"k": 0}, "k must be a positive integer"),
        ({"seed": "0"}, "seed"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseAutoAttack(**{"k": 2, **kwargs})
