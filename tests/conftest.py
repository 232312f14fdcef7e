"""Fixtures shared by several test modules (session-scoped: built once for the whole suite)."""

import pytest
import torch
from tiny_models import photo_crops, tiny_detr, tiny_segformer

from hf_sparse_attack.evaluation.testdata.digits import digits_split, train_digits_cnn
from hf_sparse_attack.tasks import load_task


@pytest.fixture(autouse=True)
def _one_thread_after_each_test():
    """Scripts run in-process set torch's threads to the cores available; the next test starts with one again."""
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_model():
    """The digits CNN trained on scikit-learn's digits: ``(model, test accuracy)``."""
    torch.set_num_threads(1)
    return train_digits_cnn()


@pytest.fixture(scope="session")
def digits(digits_model):
    """``(cnn, x_test[:100], y_test[:100])``."""
    cnn, accuracy = digits_model
    assert accuracy > 0.97
    (_, _), (x_test, y_test) = digits_split()
    return cnn, x_test[:100], y_test[:100]


@pytest.fixture(scope="session")
def tiny_tasks(tmp_path_factory):
    return tiny_task_batches(tmp_path_factory.mktemp("tiny_tasks"))


def tiny_task_batches(root):
    """A tiny DETR and a tiny SegFormer loaded with ``tasks.load_task``, each with 3 prepared images and the clean
    predictions as targets, at thresholds where the attacks have some work to do: ``{task: (objective, x, y)}``."""
    images = photo_crops(3, 64)
    detr = tiny_detr(root)
    x, _ = load_task(detr).prepare(images)
    top = min(p["scores"].max().item() for p in load_task(detr).predict(x, score_threshold=0.0))
    threshold = round(0.7 * top, 4)  # every image keeps a clean detection
    detector = load_task(detr, score_threshold=threshold, target_threshold=threshold)
    segmenter = load_task(tiny_segformer(root), adv_threshold=0.1)
    return {name: (objective, *objective.prepare(images))
            for name, objective in (("detection", detector), ("segmentation", segmenter))}
