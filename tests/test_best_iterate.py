"""The loss steers, the score judges: every attack returns, per sample, its best-score iterate (success first).

The objectives here are scripted so that loss and score disagree on purpose, and they record every image they are
asked about, so the tests can check the returned image against everything the attack actually tried.
"""

import pytest
import torch
from analytic import make_model
from attack_checks import assert_valid_result

from hf_sparse_attack import Measurement, SparseAutoAttack, SparsePGD, SparseRS, rng
from hf_sparse_attack.spgd import quantize_8bit


class Disagreeing:
    """Loss ``w . x`` (the attacks climb it); score ``v . x`` for an unrelated ``v``; never a success.

    ``targets`` are the samples' ids, so the recorder knows whose image each row is whatever the batch.
    """

    def __init__(self, shape, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.w = torch.randn(shape, generator=gen)
        self.v = torch.randn(shape, generator=gen)
        self.seen: dict[int, list[tuple[float, torch.Tensor]]] = {}

    def score_of(self, x):
        return (x * self.v).flatten(1).sum(1)

    def loss_success_score(self, x, targets):
        score = self.score_of(x.detach())
        for sample, value, image in zip(targets.tolist(), score.tolist(), x.detach()):
            self.seen.setdefault(sample, []).append((value, image.clone()))
        loss = (x * self.w).flatten(1).sum(1)
        return Measurement(loss, torch.zeros(len(x), dtype=torch.bool), score)

    def loss(self, x, targets):
        return self.loss_success_score(x, targets).loss

    def success(self, x, targets):
        return self.loss_success_score(x, targets).success


def check_best_of_everything_tried(objective, result, x, k):
    assert_valid_result(result, x, k)
    for i in range(len(x)):
        best_seen = max(value for value, _ in objective.seen[i])
        assert result.score[i].item() == pytest.approx(best_seen, abs=1e-5)
        assert objective.score_of(result.adversarial[i : i + 1]).item() == pytest.approx(best_seen, abs=1e-4)
    assert not result.success.any()


@pytest.mark.parametrize("attack", [SparsePGD(k=4, steps=30), SparsePGD(k=4, steps=30, unprojected=False),
                                    SparseRS(k=4, queries=60), SparseRS(k=9, queries=60, mode="patch")],
                         ids=["spgd", "spgd-projected", "rs", "rs-patch"])
def test_attacks_return_the_best_score_iterate_not_the_highest_loss(attack):
    torch.set_num_threads(1)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    objective = Disagreeing(x.shape[1:])
    result = attack(objective, x, torch.arange(3))
    check_best_of_everything_tried(objective, result, x, attack.k)
    # The highest-loss image the attack saw is not what it returned (the two disagree on purpose).
    highest_loss = [max(seen, key=lambda s: (objective.w * s[1]).sum().item())[1] for seen in objective.seen.values()]
    assert any(not torch.equal(h, a) for h, a in zip(highest_loss, result.adversarial))


class StrongGradientWeakSearch(Disagreeing):
    """Linear loss = score: sPGD (a gradient attack) finds far better images than a short random search."""

    def __init__(self, shape, seed=0):
        super().__init__(shape, seed)
        self.v = self.w


def test_the_cascade_keeps_the_best_stage_image_of_a_sample_no_stage_fools():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    k = 4
    cascade = SparseAutoAttack(k=k, version="custom", attacks=(SparsePGD(k=k, steps=20), SparseRS(k=k, queries=5)))
    objective = StrongGradientWeakSearch(x.shape[1:])
    result = cascade(objective, x, torch.arange(4))
    assert_valid_result(result, x, k)
    stages = [assert_valid_result(attack(StrongGradientWeakSearch(x.shape[1:]), x, torch.arange(4)), x, k)
              for attack in cascade.stages]
    assert (stages[1].score < stages[0].score).all()  # the later stage is worse on every sample
    assert torch.equal(result.adversarial, stages[0].adversarial)
    assert torch.allclose(result.score, stages[0].score)
    assert (result.stage == -1).all() and result.robust_accuracy_per_stage == (1.0, 1.0, 1.0)


def test_the_cascade_takes_a_later_stage_image_when_it_scores_better():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    k = 4
    cascade = SparseAutoAttack(k=k, version="custom", attacks=(SparsePGD(k=k, steps=1), SparsePGD(k=k, steps=40)))
    result = assert_valid_result(cascade(StrongGradientWeakSearch(x.shape[1:]), x, torch.arange(2)), x, k)
    stages = [assert_valid_result(attack(StrongGradientWeakSearch(x.shape[1:]), x, torch.arange(2)), x, k)
              for attack in cascade.stages]
    assert (stages[1].score > stages[0].score).all()
    assert torch.equal(result.adversarial, stages[1].adversarial)


def test_projected_mode_never_moves_the_magnitude_outside_the_mask():
    """With the projected gradient, a pixel entering the mask for the first time carries its initial random
    magnitude (whenever it enters); with the unprojected gradient the magnitude moved everywhere meanwhile."""
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    ids = [11, 12]
    gens = rng.sample_generators(0, ids, "cpu")
    p0 = torch.clamp((rng.rand(gens, x.shape[1:]) * 2 - 1), -x, 1 - x)
    start = quantize_8bit(x + p0)
    late_entries = {}
    for unprojected in (False, True):
        objective = Disagreeing(x.shape[1:])
        objective.v = objective.w
        attack = SparsePGD(k=3, steps=25, patience=100, unprojected=unprojected)
        assert_valid_result(attack(objective, x, torch.arange(2), ids=ids), x, 3)
        matches = late = 0
        for i in range(2):
            entered = torch.zeros(8, 8, dtype=torch.bool)
            for step, (_, image) in enumerate(objective.seen[i][1:]):  # [0] is the clean check
                now = (image != x[i]).any(0)
                new = now & ~entered
                if step > 0 and new.any():
                    late += int(new.sum())
                    matches += int(torch.isclose(image[:, new], start[i][:, new], atol=1e-6).all(0).sum())
                entered |= now
        late_entries[unprojected] = (matches, late)
    matches, late = late_entries[False]
    assert late > 0 and matches == late
    matches, late = late_entries[True]
    assert late > 0 and matches < late


def test_sparse_pgd_randomness_follows_sample_ids_not_batch_positions():
    model = make_model(size=8)
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(6)).expand(2, -1, -1, -1).contiguous()
    y = torch.zeros(2, dtype=torch.long)
    attack = SparsePGD(k=2, steps=1)
    pair = assert_valid_result(attack(model, x, y, ids=[7, 8]), x, 2)
    assert not torch.equal(pair.adversarial[0], pair.adversarial[1])  # same image, two ids: two draws
    alone = assert_valid_result(attack(model, x[:1], y[:1], ids=[8]), x[:1], 2)
    assert torch.equal(alone.adversarial[0], pair.adversarial[1])


class EveryOtherStep(Disagreeing):
    """Loss ``w . x`` on odd calls and a flat 0 on even ones: the mask moves on every other iteration only, so
    (for this seed, in the first iterations) its support is often unchanged but never three times in a row."""

    def __init__(self, shape, seed=0):
        super().__init__(shape, seed)
        self.calls = 0

    def loss_success_score(self, x, targets):
        measured = super().loss_success_score(x, targets)
        self.calls += 1
        return measured._replace(loss=measured.loss * (self.calls % 2))


def test_unchanged_supports_count_since_the_last_restart_not_consecutively():
    """The authors' rule: a support that keeps coming back to rest restarts after ``patience`` unchanged iterations
    in all, even when they are never consecutive."""
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    runs = {}
    for patience in (3, 10**6):
        objective = EveryOtherStep(x.shape[1:])
        assert_valid_result(SparsePGD(k=3, steps=7, patience=patience)(objective, x, torch.arange(1)), x, 3)
        runs[patience] = [(image != x[0]).any(0) for _, image in objective.seen[0][1:]]  # [0]: the clean check
    unchanged = [torch.equal(a, b) for a, b in zip(runs[10**6], runs[10**6][1:])]
    assert sum(unchanged) >= 3 and not any(all(unchanged[i : i + 3]) for i in range(len(unchanged) - 2))
    assert any(not torch.equal(a, b) for a, b in zip(runs[3], runs[10**6]))  # yet the patience-3 run restarted
