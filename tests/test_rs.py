import pytest
import torch
import torch.nn.functional as F
from analytic import (
    LinearTwoClass,
    assert_no_cheaper_attack,
    best_placements_gain,
    make_model,
    needing_exactly,
)
from attack_checks import assert_valid_result

from hf_sparse_attack import kernels
from hf_sparse_attack.objective import ClassifierObjective
from hf_sparse_attack.rs import SparseRS, resample_fraction

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return make_model()


class CountingObjective:
    """A classifier objective whose targets are ``(label, sample id)`` rows; counts evaluations per sample id."""

    def __init__(self, model, samples):
        self.inner = ClassifierObjective(model, "margin")
        self.counts = torch.zeros(samples, dtype=torch.long)

    def loss_and_success(self, x, targets):
        self.counts += torch.bincount(targets[:, 1], minlength=len(self.counts))
        return self.inner.loss_and_success(x, targets[:, 0])

    def loss(self, x, targets):
        return self.loss_and_success(x, targets)[0]

    def success(self, x, targets):
        return self.loss_and_success(x, targets)[1]


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("k", [2, 4])
def test_finds_the_optimal_support(model, batch, k):
    x = needing_exactly(model, k, batch, seed=batch + 10 * k)
    assert_no_cheaper_attack(model, x, k)
    result = SparseRS(k=k, queries=3000)(model, x, torch.zeros(batch, dtype=torch.long))
    assert_valid_result(result, x, k)
    assert result.success.all()
    assert (result.l0 == k).all()  # no attack with fewer pixels exists
    assert (model(result.adversarial).argmax(1) == 1).all()
    assert (result.iterations <= 3000).all()


def test_targeted_reaches_the_target(model):
    x = needing_exactly(model, 3, 4, seed=7)
    target = torch.ones(4, dtype=torch.long)
    result = SparseRS(k=3, queries=3000, targeted=True, loss="margin")(model, x, target)
    assert_valid_result(result, x, 3)
    assert result.success.all()
    assert torch.equal(model(result.adversarial).argmax(1), target)


def test_perturbed_pixels_sit_at_corners_of_the_colour_cube(model):
    x = needing_exactly(model, 4, 6, seed=2)
    result = SparseRS(k=3, queries=100)(model, x, torch.zeros(6, dtype=torch.long))  # 3 < 4: nothing succeeds
    assert_valid_result(result, x, 3)
    assert not result.success.any() and (result.l0 == 3).all()  # a new pixel always changes its value
    values = result.adversarial[result.mask.expand_as(x)]
    assert ((values == 0) | (values == 1)).all()


def test_digits_cnn_robust_accuracy_drops(digits):
    cnn, x, y = digits
    result = SparseRS(k=4, queries=500)(cnn, x, y)
    assert_valid_result(result, x, 4)
    assert result.robust_accuracy <= 0.05
    assert torch.equal(result.success, cnn(result.adversarial).argmax(1) != y)
    assert (result.iterations <= 500).all()


def test_query_counts_are_honest(digits):
    cnn, x, y = digits
    x, y = x[:40], y[:40].clone()
    y[:3] = (y[:3] + 1) % 10  # wrong labels: already "fooled", one query (the clean check) each
    objective = CountingObjective(cnn, 40)
    result = SparseRS(k=1, queries=150)(objective, x, torch.stack((y, torch.arange(40)), 1))
    assert_valid_result(result, x, 1)
    assert torch.equal(objective.counts, result.iterations)
    assert (result.iterations[:3] == 1).all()
    assert result.success.any() and (~result.success).any()
    assert (result.iterations[result.success] < 150).all() and (result.iterations[~result.success] == 150).all()


def test_succeeded_samples_stop_querying(model):
    x = torch.cat([needing_exactly(model, 2, 4, seed=1), needing_exactly(model, 4, 4, seed=2)])
    y = torch.zeros(8, dtype=torch.long)
    short = SparseRS(k=3, queries=400)(model, x, y)
    long = SparseRS(k=3, queries=900)(model, x, y)
    for result in (short, long):
        assert_valid_result(result, x, 3)
    done = short.success
    assert done[:4].all() and not done[4:].any()
    assert torch.equal(short.adversarial[done], long.adversarial[done])
    assert torch.equal(short.iterations[done], long.iterations[done])
    assert (short.iterations[~done] == 400).all() and (long.iterations[~long.success] == 900).all()


def test_structured_placements_mostly_reach_the_exhaustive_optimum(model):
    kernel, harder = kernels.square(2), LinearTwoClass(model.weight, bias=6.0)
    x = torch.randint(0, 256, (300, 3, 8, 8), generator=torch.Generator().manual_seed(3)).float() / 255
    x = x[harder.margin(x) > 0]
    slack = best_placements_gain(harder, x, kernel, k=2) - harder.margin(x)
    x, feasible = x[slack.abs() > 0.05][:24], (slack > 0)[slack.abs() > 0.05][:24]
    assert 10 <= feasible.sum() < 24
    result = SparseRS(k=2, queries=1500, kernel=kernel, stride=1)(harder, x, torch.zeros(24, dtype=torch.long))
    assert_valid_result(result, x, 2, kernel=kernel, stride=1)
    assert not (result.success & ~feasible).any()
    assert result.success[feasible].float().mean() >= 0.8  # a random search, not an exhaustive one


@pytest.mark.parametrize("kernel", [kernels.line(3, "vertical"), kernels.shape("cross", 3)])
def test_structured_with_stride_is_audited(model, kernel):
    x = needing_exactly(model, 4, 4, seed=5)  # clean class 0: every sample is attacked, none fooled for free
    result = SparseRS(k=2, queries=40, kernel=kernel, stride=2)(model, x, torch.zeros(4, dtype=torch.long))
    assert_valid_result(result, x, 2, kernel=kernel, stride=2)
    assert (result.l0 == 2).all()


def test_patch_finds_clearly_feasible_patches():
    dense = make_model(sensitive=64)
    x = torch.randint(0, 256, (300, 3, 8, 8), generator=torch.Generator().manual_seed(0)).float() / 255
    margin = dense.margin(x)
    best = F.conv2d(dense.gains(x)[:, None], torch.ones(1, 1, 3, 3)).flatten(1).amax(1)  # best 3x3 patch
    easy, impossible = (margin > 0) & (best > margin + 1), (margin > 0) & (best < margin)
    x = torch.cat((x[easy][:16], x[impossible][:8]))
    result = SparseRS(k=10, queries=600, mode="patch")(dense, x, torch.zeros(24, dtype=torch.long))
    assert_valid_result(result, x, 9)  # side floor(sqrt(10)) = 3
    changed = result.mask[:, 0]
    rows, cols = changed.any(2), changed.any(1)
    assert (rows.sum(1) <= 3).all() and (cols.sum(1) <= 3).all()  # one square, not scattered pixels
    assert result.success[:16].float().mean() >= 0.75 and not result.success[16:].any()  # a local search


def test_opaque_list_targets():
    class ListObjective:  # targets: one dict per sample, as a detection task would pass
        def __init__(self, model):
            self.inner = ClassifierObjective(model)

        def loss(self, x, targets):
            return self.inner.loss(x, torch.tensor([t["label"] for t in targets]))

        def success(self, x, targets):
            return self.inner.success(x, torch.tensor([t["label"] for t in targets]))

    model = make_model()
    x = torch.cat((needing_exactly(model, 2, 3, seed=4), needing_exactly(model, 4, 2, seed=4)))
    result = SparseRS(k=2, queries=3000)(ListObjective(model), x, [{"label": 0}] * 5)
    assert_valid_result(result, x, 2)
    assert result.success[:3].all() and not result.success[3:].any()


def test_schedule_follows_the_paper_rescaled_to_the_budget():
    assert resample_fraction(0, 10000, 0.8) == 0.8
    assert resample_fraction(50, 10000, 0.8) == 0.4 and resample_fraction(51, 10000, 0.8) == 0.2
    assert resample_fraction(8001, 10000, 0.8) == pytest.approx(0.04)
    assert resample_fraction(5, 1000, 0.8) == 0.4  # 5 of 1000 queries is step 50 of 10000
    assert resample_fraction(10, 10000, 0.8, "patch") == 0.8 and resample_fraction(11, 10000, 0.8, "patch") == 0.4
    fractions = [resample_fraction(s, 1000, 0.5) for s in range(1000)]
    assert all(a >= b for a, b in zip(fractions, fractions[1:]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": 0}, "k must be a positive integer"),
        ({"queries": 0}, "queries"),
        ({"queries": 10.5}, "queries"),
        ({"p_init": 0.0}, "p_init"),
        ({"p_init": 1.5}, "p_init"),
        ({"loss": "hinge"}, "unknown loss 'hinge'"),
        ({"mode": "frame"}, "unknown mode 'frame'"),
        ({"mode": "patch", "kernel": torch.ones(2, 2)}, "no kernel"),
        ({"kernel": torch.zeros(2, 2)}, "at least one 1"),
        ({"stride": 0}, "stride"),
        ({"seed": 1.0}, "seed"),
        ({"targeted": 1}, "targeted"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparseRS(**kwargs)


@pytest.mark.parametrize(
    "attack, x, match",
    [
        (SparseRS(k=64), torch.rand(2, 3, 8, 8), "must be below the 64 pixels"),
        (SparseRS(k=16, kernel=torch.ones(2, 2), stride=2), torch.rand(2, 3, 8, 8), "16 kernel placements"),
        (SparseRS(k=100, mode="patch"), torch.rand(2, 3, 8, 8), "does not fit"),
        (SparseRS(k=2), torch.rand(2, 17, 8, 8), "at most 16"),
        (SparseRS(k=2), torch.rand(2, 3, 8, 8) + 1, r"values in \[0, 1\]"),
    ],
)
def test_bad_inputs_raise(model, attack, x, match):
    with pytest.raises(ValueError, match=match):
        attack(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(2)), x, torch.zeros(2, dtype=torch.long))


def test_objective_with_classifier_settings_raises(model):
    with pytest.raises(ValueError, match="defines its own loss"):
        SparseRS(k=2, loss="margin")(ClassifierObjective(model), torch.rand(1, 3, 8, 8), torch.zeros(1).long())


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_detection_and_segmentation_objectives(tiny_tasks, task):
    objective, x, targets = tiny_tasks[task]
    assert not objective.success(x, targets).any()
    result = SparseRS(k=10, queries=100)(objective, x, targets)
    assert_valid_result(result, x, 10)
    assert torch.equal(result.success, objective.success(result.adversarial, targets))
    assert result.success.any() and (result.iterations <= 100).all()


class OffsetMargin:
    """The margin loss plus a constant, as a loss summed over many outputs (most of them untouched) would be; its
    changes are then far below the resolution of float16 (0.5 at 1000) and bfloat16 (4 at 1000)."""

    def __init__(self, model, offset):
        self.inner, self.offset = ClassifierObjective(model, "margin"), offset

    def loss_and_success(self, x, targets):
        loss, success = self.inner.loss_and_success(x, targets)
        return loss + self.offset, success

    def loss(self, x, targets):
        return self.loss_and_success(x, targets)[0]

    def success(self, x, targets):
        return self.loss_and_success(x, targets)[1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_images_are_attacked_as_in_float32(dtype):
    weights = make_model(size=112, sensitive=2000).weight
    x = torch.randint(0, 256, (64, 3, 112, 112), generator=torch.Generator().manual_seed(0)) / 255
    x = x.to(dtype).float()  # values that both dtypes hold exactly
    model = LinearTwoClass(weights, bias=float((x * weights).flatten(1).sum(1).median()) + 12)
    margin = model.margin(x)
    x = x[(margin > 10) & (margin < 14)][:6]  # about 10 of the 20 pixels must be well placed
    y, attack = torch.zeros(6, dtype=torch.long), SparseRS(k=20, queries=300)
    reference = attack(OffsetMargin(model, 20000.0), x, y)
    result = attack(OffsetMargin(model, 20000.0), x.to(dtype), y)
    assert_valid_result(reference, x, 20)
    assert reference.success.all()
    assert result.adversarial.dtype == dtype and result.loss.dtype == torch.float32
    assert_valid_result(result, x.to(dtype), 20)
    assert torch.equal(result.success, reference.success) and torch.equal(result.iterations, reference.iterations)
    assert torch.equal(result.adversarial.float(), reference.adversarial)


def test_sparser_looks_return_the_same_but_send_finished_samples_again(digits):
    cnn, x, y = digits
    x, y = x[:40], y[:40]
    targets = torch.stack((y, torch.arange(40)), 1)
    every, sparse = CountingObjective(cnn, 40), CountingObjective(cnn, 40)
    reference = SparseRS(k=1, queries=150)(every, x, targets)
    result = SparseRS(k=1, queries=150, check_every=5)(sparse, x, targets)
    for audited in (reference, result):
        assert_valid_result(audited, x, 1)
    assert torch.equal(result.adversarial, reference.adversarial)
    assert torch.equal(result.iterations, reference.iterations) and torch.equal(every.counts, reference.iterations)
    extra = sparse.counts - result.iterations  # evaluations after success, until the next look: discarded
    assert (extra >= 0).all() and (extra <= 4).all() and extra.any()


def test_check_every_must_be_positive():
    with pytest.raises(ValueError, match="check_every must be a positive integer"):
        SparseRS(check_every=0)
