"""Host syncs of Sparse-RS, counted on CPU as a GPU would pay them (``evaluation/benchmarks/host_syncs.py``).

Budget: one sync per query step (the look at how many samples still search), whatever the batch size and the mode,
samples leaving the batch included; one per ``check_every`` steps with a sparser cadence. Outside the steps a run
pays a fixed number of one-off syncs: the checks of the inputs, the clean check, the audit of the result.
"""

import pytest
import torch
from analytic import make_model, needing_exactly
from attack_checks import assert_valid_result

from hf_sparse_attack import kernels
from hf_sparse_attack.evaluation.benchmarks.host_syncs import HostSyncCounter
from hf_sparse_attack.objective import ClassifierObjective, Measurement
from hf_sparse_attack.rs import SparseRS

torch.set_num_threads(1)

SETTINGS = {"pixels": {"k": 3}, "patch": {"k": 4, "mode": "patch"}, "kernel": {"k": 2, "kernel": kernels.square(2)}}
ONE_OFF = 24  # measured: 13 (pixels), 14 (patch), 22 (kernel: the kernel's pixels and the audit of the cover)


class NeverFooled:
    """The analytic classifier's margin loss, with a goal no query reaches: every sample spends every query."""

    def __init__(self, model):
        self.inner = ClassifierObjective(model, "margin")

    def loss_success_score(self, x, targets):
        loss, success, score = self.inner.loss_success_score(x, targets)
        return Measurement(loss, torch.zeros_like(success), score)

    def loss(self, x, targets):
        return self.loss_success_score(x, targets).loss

    def success(self, x, targets):
        return self.loss_success_score(x, targets).success


def count_syncs(attack, objective, x, targets):
    """The host syncs of one attack call, and its result (audited independently)."""
    with HostSyncCounter() as syncs:
        result = attack(objective, x, targets)
    return syncs.count, assert_valid_result(result, x, attack.k, attack.kernel, attack.stride)


@pytest.mark.parametrize("mode", SETTINGS)
@pytest.mark.parametrize("batch", [1, 16])
def test_at_most_one_sync_per_query_step(mode, batch):
    x = torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(batch))
    objective, y = NeverFooled(make_model()), torch.zeros(batch, dtype=torch.long)
    short, _ = count_syncs(SparseRS(queries=40, **SETTINGS[mode]), objective, x, y)
    long, result = count_syncs(SparseRS(queries=100, **SETTINGS[mode]), objective, x, y)
    assert (result.iterations == 100).all()
    assert (long - short) / 60 <= 1  # per query step
    assert long <= 100 + ONE_OFF


@pytest.mark.parametrize("mode", SETTINGS)
def test_samples_leaving_the_batch_cost_no_sync(mode):
    model = make_model()
    x = torch.cat([needing_exactly(model, 2, 8, seed=1), needing_exactly(model, 4, 8, seed=2)])
    syncs, result = count_syncs(SparseRS(queries=300, **SETTINGS[mode]), model, x, torch.zeros(16, dtype=torch.long))
    assert result.success.any() and (result.iterations < 300).any()  # some left early, at different steps
    assert len(result.iterations.unique()) > 3
    assert syncs <= result.iterations.max() + ONE_OFF


@pytest.mark.parametrize("mode", SETTINGS)
def test_sparser_looks_sync_less_and_change_nothing(mode):
    model = make_model()
    x = torch.cat([needing_exactly(model, 2, 8, seed=3), needing_exactly(model, 4, 8, seed=4)])
    y = torch.zeros(16, dtype=torch.long)
    every, reference = count_syncs(SparseRS(queries=200, **SETTINGS[mode]), model, x, y)
    sparse, result = count_syncs(SparseRS(queries=200, check_every=8, **SETTINGS[mode]), model, x, y)
    assert sparse <= 200 / 8 + ONE_OFF < every
    for name in ("adversarial", "success", "iterations", "loss", "score", "groups"):
        sparse_value, every_value = getattr(result, name), getattr(reference, name)
        assert (sparse_value is None and every_value is None) or torch.equal(sparse_value, every_value), name
