"""Classification adapter on tiny random-weight ViT, ResNet, ConvNeXt and Swin models loaded by path."""

import pytest
import torch
import torch.nn.functional as F
from attack_checks import assert_valid_result
from tiny_models import CLASSIFIERS, RESOLUTION, photo_crops, random_sparse_noise

from hf_sparse_attack import SparsePGD
from hf_sparse_attack.tasks import ClassificationObjective, load_task

torch.set_num_threads(1)

FAMILIES = sorted(CLASSIFIERS)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifiers")
    return {name: build(root) for name, build in CLASSIFIERS.items()}


@pytest.fixture(scope="module")
def images():
    return photo_crops(16, 48)


@pytest.mark.parametrize("family", FAMILIES)
def test_prepare_gives_the_pixels_the_processor_normalises(model_dirs, images, family):
    objective = load_task(model_dirs[family])
    assert isinstance(objective, ClassificationObjective) and objective.task == "classification"
    x, labels = objective.prepare(images[:4])
    side = RESOLUTION[family]
    assert x.shape == (4, 3, side, side) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1 and torch.allclose(x * 255, (x * 255).round(), atol=1e-4)
    reference = objective.processor(images=images[:4], return_tensors="pt")["pixel_values"]
    assert torch.allclose(objective.normalize(x), reference, atol=1e-5)
    with torch.no_grad():
        logits = objective.model(pixel_values=reference).logits
    assert torch.equal(labels, logits.argmax(1)) and torch.equal(objective.predict(x), labels)
    assert torch.equal(objective.to_original(labels, [(48, 48)] * 4), labels)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("loss", ["ce", "margin", "dlr"])
def test_losses_are_per_sample_finite_and_reach_the_pixels(model_dirs, images, family, loss):
    objective = load_task(model_dirs[family], loss=loss)
    x, labels = objective.prepare(images[:4])
    x.requires_grad_(True)
    values = objective.loss(x, labels)
    assert values.shape == (4,) and torch.isfinite(values).all()
    (grad,) = torch.autograd.grad(values[1], x)
    assert torch.isfinite(grad).all() and grad[1].abs().sum() > 0
    assert grad[[0, 2, 3]].abs().sum() == 0  # no cross-sample coupling
    alone = objective.loss(x[2:3].detach(), labels[2:3])
    assert alone.item() == pytest.approx(values[2].item(), rel=1e-4, abs=1e-5)
    if loss == "ce":
        with torch.no_grad():
            logits = objective.model(pixel_values=objective.normalize(x)).logits
        assert torch.allclose(values, F.cross_entropy(logits, labels, reduction="none"), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("targeted", [False, True])
def test_success_agrees_with_predict(model_dirs, images, family, targeted):
    objective = load_task(model_dirs[family], targeted=targeted)
    x, targets = objective.prepare(images[:8], annotations=list(range(8)) if targeted else None)
    for batch in [x] + [random_sparse_noise(x, 100, seed) for seed in range(3)]:
        predicted = objective.predict(batch)
        expected = predicted == targets if targeted else predicted != targets
        loss, success = objective.loss_and_success(batch, targets)
        assert torch.equal(success, expected) and torch.equal(objective.success(batch, targets), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_sparse_pgd_beats_random_noise_of_the_same_budget(model_dirs, images, family):
    objective = load_task(model_dirs[family], loss="margin")
    x, labels = objective.prepare(images)  # targets: the clean predictions
    assert not objective.success(x, labels).any()
    k = 32  # 3% of the pixels
    result = assert_valid_result(SparsePGD(k=k, steps=60)(objective, x, labels), x, k)
    assert torch.equal(result.success, objective.predict(result.adversarial) != labels)
    noise = torch.stack([objective.success(random_sparse_noise(x, k, seed), labels) for seed in range(4)])
    assert result.success.float().mean() >= noise.float().mean() + 0.25
