"""Host synchronisations of one measurement plus its backward pass, per task adapter, counted on CPU as on a GPU.

An attack iteration measures the batch (``hf_sparse_attack.objective.measure``: loss, success, score) and
back-propagates the loss; every sync there makes a GPU wait once per iteration. The adapters' own budget: none
for classification and segmentation, at most 1 for detection (its Hungarian matching: the batch's cost matrices
to the host; the matched indices go back in a non-blocking copy from pinned memory, which the host does not wait
for), whatever the batch size: with the attack loop's one, 2 per iteration for every task. Syncs made inside transformers' own code are the
model's and are counted apart: the DETR-family forward checks its attention masks on the host
(``padding_mask.all()``), which no adapter can avoid; they must not grow with the batch either.
"""

import os
import sys

import pytest
import torch
import transformers
from tiny_models import photo_crops, tiny_conditional_detr, tiny_detr, tiny_segformer, tiny_vit

from hf_sparse_attack.evaluation.benchmarks.host_syncs import HostSyncCounter, is_host_sync
from hf_sparse_attack.objective import measure
from hf_sparse_attack.tasks import load_task
from hf_sparse_attack.tasks.options import DETECTION_LOSSES

torch.set_num_threads(1)

BATCHES = (1, 4)
SHAPES = [(50, 80), (70, 40), (64, 64), (60, 90)]  # different sizes: the detection batch is padded
TARGETS_PER_IMAGE = [3, 1, 0, 2]  # 0, 1 and several targets: the matching pads them per batch
HUNGARIAN = ("hungarian", "hungarian+targets")
_TRANSFORMERS = os.path.dirname(transformers.__file__) + os.sep


class SyncsByOrigin(HostSyncCounter):
    """:class:`HostSyncCounter` that also counts, in ``model``, the syncs made from inside transformers' code."""

    def __init__(self) -> None:
        super().__init__()
        self.model = 0

    @property
    def adapter(self) -> int:
        return self.count - self.model

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if is_host_sync(getattr(func, "__name__", ""), args, kwargs or {}) and _called_from_transformers():
            self.model += 1
        return super().__torch_function__(func, types, args, kwargs)


def _called_from_transformers() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(_TRANSFORMERS):
            return True
        frame = frame.f_back
    return False


def syncs_of_a_step(objective, x, targets) -> SyncsByOrigin:
    """The syncs of ``measure`` plus the backward pass of its loss (after one warm-up call)."""
    x = x.clone().requires_grad_(True)
    measure(objective, x, targets)
    with SyncsByOrigin() as syncs:
        measurement = measure(objective, x, targets)
        measurement.loss.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    return syncs


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sync_models")
    builders = {"vit": tiny_vit, "segformer": tiny_segformer, "detr": tiny_detr,
                "conditional_detr": tiny_conditional_detr}
    return {name: build(root) for name, build in builders.items()}


def detection_batch(objective, batch):
    """Images of different sizes, and as targets each image's top clean detections (3, 1, 0, 2 of them)."""
    images = [photo_crops(1, h, w, seed=i)[0] for i, (h, w) in enumerate(SHAPES[:batch])]
    x, _ = objective.prepare(images)
    found = objective.predict(x, score_threshold=0.0)
    targets = [{"labels": d["labels"][:n], "boxes": d["boxes"][:n], "size": d["size"]}
               for d, n in zip(found, TARGETS_PER_IMAGE)]
    return x, targets


@pytest.mark.parametrize("family", ["vit", "segformer"])
def test_classification_and_segmentation_measure_without_a_sync(model_dirs, family):
    objective = load_task(model_dirs[family])
    for batch in BATCHES:
        x, targets = objective.prepare(photo_crops(batch, 64, seed=batch))
        syncs = syncs_of_a_step(objective, x, targets)
        assert syncs.count == 0, dict(syncs.by_name)


@pytest.mark.parametrize("family", ["detr", "conditional_detr"])  # softmax and sigmoid heads
@pytest.mark.parametrize("loss", DETECTION_LOSSES)
def test_detection_measures_with_at_most_one_sync_whatever_the_batch(model_dirs, family, loss):
    objective = load_task(model_dirs[family], loss=loss)
    counts = []
    for batch in BATCHES:
        syncs = syncs_of_a_step(objective, *detection_batch(objective, batch))
        assert syncs.adapter <= (1 if loss in HUNGARIAN else 0), dict(syncs.by_name)
        counts.append((syncs.adapter, syncs.model))
    assert counts[0] == counts[1]


@pytest.mark.parametrize("family", ["detr", "conditional_detr"])
def test_hungarian_matching_without_targets_transfers_nothing(model_dirs, family):
    objective = load_task(model_dirs[family], loss="hungarian+targets")
    x, targets = detection_batch(objective, 2)
    empty = [{**t, "labels": t["labels"][:0], "boxes": t["boxes"][:0]} for t in targets]
    syncs = syncs_of_a_step(objective, x, empty)
    assert syncs.adapter == 0, dict(syncs.by_name)
