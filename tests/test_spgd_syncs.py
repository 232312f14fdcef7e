"""Sparse-PGD's host synchronisations, counted on the CPU as a GPU would pay them (see ``host_syncs``).

The loop syncs once per iteration (the success and restart flags) and once more on an iteration where samples
finish (the kept rows' index); best tracking and restarts stay on the device. The setup and the result's audit add
a fixed handful, whatever the batch size.
"""

import pytest
import torch
from analytic import make_model, needing_exactly
from attack_checks import assert_valid_result
from torch import nn

from hf_sparse_attack import SparsePGD, kernels
from hf_sparse_attack.evaluation.benchmarks.host_syncs import HostSyncCounter

torch.set_num_threads(1)

STEPS = 100
ATTACKS = {
    "unprojected": SparsePGD(k=3, steps=STEPS),
    "projected": SparsePGD(k=3, steps=STEPS, unprojected=False),
    "unquantized": SparsePGD(k=3, steps=STEPS, quantize=False),
    "kernel": SparsePGD(k=1, steps=STEPS, kernel=kernels.square(2)),
}


@pytest.fixture(scope="module")
def model():
    return make_model()


def count_syncs(attack, model, x, targets, **kwargs):
    """The attack's result (audited, outside the count) and the syncs of the call."""
    with HostSyncCounter() as syncs:
        result = attack(model, x, targets, **kwargs)
    return assert_valid_result(result, x, attack.k, attack.kernel, attack.stride), syncs


@pytest.mark.parametrize("name", ATTACKS)
def test_one_sync_per_iteration_when_nothing_finishes(model, name):
    counts = {}
    for batch in (1, 16):
        x = needing_exactly(model, 4, batch, seed=1)  # 4 pixels needed: k=3 (one 2x2 patch) never succeeds
        result, syncs = count_syncs(ATTACKS[name], model, x, torch.zeros(batch, dtype=torch.long),
                                    ids=list(range(100, 100 + batch)))
        assert not result.success.any() and (result.iterations == STEPS).all()
        assert syncs.count / STEPS <= 1.2, dict(syncs.by_name)
        counts[batch] = syncs.count
    assert counts[1] == counts[16]  # restarts of some rows only cost no sync


@pytest.mark.parametrize("name", ATTACKS)
def test_at_most_two_syncs_per_iteration_when_samples_finish(model, name):
    x = torch.cat([needing_exactly(model, 2, 8, seed=1), needing_exactly(model, 4, 8, seed=2)])
    result, syncs = count_syncs(ATTACKS[name], model, x, torch.zeros(16, dtype=torch.long))
    finished = result.iterations < STEPS
    assert finished.any() and not finished.all()
    assert syncs.count / STEPS <= 2, dict(syncs.by_name)


def test_a_conv_classifier_pays_at_most_two_syncs_per_iteration_at_any_batch_size():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    for batch in (1, 16):
        x = torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(batch))
        y = net(x).argmax(1)
        result, syncs = count_syncs(SparsePGD(k=2, steps=STEPS), net, x, y)
        _, fixed = count_syncs(SparsePGD(k=2, steps=1), net, x, y)  # setup and audit: no iteration syncs yet
        iterations = result.iterations.max().item()
        assert 1 < iterations
        assert (syncs.count - fixed.count) / (iterations - 1) <= 2, dict(syncs.by_name)


class ListTargets:
    """The analytic model behind an objective whose targets are a list (the core then selects with host lists)."""

    def __init__(self, model):
        self.model = model

    def loss(self, x, targets):
        return self.model(x)[:, 1] - self.model(x)[:, 0]

    def success(self, x, targets):
        return self.model(x).argmax(1) == torch.tensor([t["label"] for t in targets])


def test_list_targets_compact_without_extra_syncs(model):
    x = torch.cat([needing_exactly(model, 2, 4, seed=1), needing_exactly(model, 4, 4, seed=2)])
    targets = [{"label": 1} for _ in range(8)]
    objective = ListTargets(model)
    with HostSyncCounter() as syncs:
        result = SparsePGD(k=3, steps=STEPS)(objective, x, targets)
    assert_valid_result(result, x, 3)
    assert result.success[:4].all() and not result.success[4:].any()
    assert syncs.count / STEPS <= 1.3, dict(syncs.by_name)
