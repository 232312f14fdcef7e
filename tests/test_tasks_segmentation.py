"""Segmentation adapter on a tiny random-weight SegFormer loaded by path."""

import numpy as np
import pytest
import torch
from attack_checks import assert_valid_result
from tiny_models import RESOLUTION, photo_crops, random_sparse_noise, tiny_segformer

from hf_sparse_attack import SparsePGD
from hf_sparse_attack.tasks import SegmentationObjective, SegmentationOptions, load_task
from hf_sparse_attack.tasks.options import SEGMENTATION_LOSSES

torch.set_num_threads(1)

SIDE = RESOLUTION["segformer"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_segformer(tmp_path_factory.mktemp("segmenters"))


@pytest.fixture(scope="module")
def images():
    return photo_crops(8, 64)


def quadrant_map(height, width, ignore_band=True):
    """Classes 0..3 in the four quadrants, and an unlabelled (255) band down the middle."""
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[: height // 2, width // 2 :] = 1
    labels[height // 2 :, : width // 2] = 2
    labels[height // 2 :, width // 2 :] = 3
    if ignore_band:
        labels[:, width // 2 - 2 : width // 2 + 2] = 255
    return labels


def test_prepare_resizes_images_and_label_maps_like_the_processor(model_dir):
    objective = load_task(model_dir)
    assert isinstance(objective, SegmentationObjective) and objective.task == "segmentation"
    images = photo_crops(2, 48, 40)
    maps = [quadrant_map(48, 40), quadrant_map(48, 40, ignore_band=False)]
    x, labels = objective.prepare(images, maps)
    assert x.shape == (2, 3, SIDE, SIDE) and labels.shape == (2, SIDE, SIDE) and labels.dtype == torch.long
    reference = objective.processor(images=images, segmentation_maps=maps, return_tensors="pt")
    assert torch.allclose(objective.normalize(x), reference["pixel_values"], atol=1e-5)
    assert torch.equal(labels, reference["labels"])
    assert set(labels.unique().tolist()) == {0, 1, 2, 3, 255}
    back = objective.to_original(labels, [(48, 40), (48, 40)])
    assert [tuple(m.shape) for m in back] == [(48, 40), (48, 40)]
    assert (back[1].numpy() == maps[1]).mean() > 0.97  # nearest neighbour there and back: only borders move


def test_predict_matches_post_processing_and_loss_matches_the_models_loss(model_dir, images):
    objective = load_task(model_dir, loss="ce")
    maps = [quadrant_map(64, 64)] * 2
    x, labels = objective.prepare(images[:2], maps)
    with torch.no_grad():
        outputs = objective.model(pixel_values=objective.normalize(x))
        reference = objective.processor.post_process_semantic_segmentation(outputs, target_sizes=[(SIDE, SIDE)] * 2)
        assert torch.equal(objective.predict(x), torch.stack(reference))
        for i in range(2):
            own = objective.model(pixel_values=objective.normalize(x[i : i + 1]), labels=labels[i : i + 1]).loss
            assert objective.loss(x[i : i + 1], labels[i : i + 1]).item() == pytest.approx(own.item(), rel=1e-5)
    predicted = objective.predict(x)
    back = objective.to_original(predicted, [(64, 64), (32, 32)])
    assert torch.equal(back[0], predicted[0]) and back[1].shape == (32, 32)


@pytest.mark.parametrize("loss", SEGMENTATION_LOSSES)
@pytest.mark.parametrize("targeted", [False, True])
def test_losses_are_per_sample_finite_and_reach_the_pixels(model_dir, images, targeted, loss):
    objective = load_task(model_dir, targeted=targeted, loss=loss)
    unlabelled = np.full((64, 64), 255, dtype=np.uint8)
    x, labels = objective.prepare(images[:3], [quadrant_map(64, 64), quadrant_map(64, 64), unlabelled])
    x.requires_grad_(True)
    values, success = objective.loss_and_success(x, labels)
    assert values.shape == (3,) and torch.isfinite(values).all()
    assert values[2] == 0 and success[2]  # nothing labelled: vacuously successful
    (grad,) = torch.autograd.grad(values[0], x)
    assert torch.isfinite(grad).all() and grad[0].abs().sum() > 0 and grad[1:].abs().sum() == 0
    assert objective.loss(x[1:2].detach(), labels[1:2]).item() == pytest.approx(values[1].item(), rel=1e-5)
    if loss == "ce":
        untargeted = load_task(model_dir, loss="ce").loss(x.detach(), labels)
        assert torch.allclose(values, -untargeted if targeted else untargeted)


def by_hand(loss, logits, labels, targeted):
    """Each loss from its definition, pixel by pixel (module docstring of tasks.segmentation), and the score."""
    losses, scores = [], []
    for z, t in zip(logits, labels):
        z, t = z.flatten(1).T, t.flatten()  # (pixels, classes), (pixels,)
        keep = t != 255
        z, t = z[keep], t[keep]
        ce = torch.nn.functional.cross_entropy(z, t, reduction="none")
        hit = z.argmax(1) == t
        done = hit if targeted else ~hit
        signed = -ce if targeted else ce
        chosen = z.gather(1, t[:, None]).squeeze(1)
        others = z.scatter(1, t[:, None], float("-inf")).amax(1)
        if loss == "ce":
            value = signed.mean()
        elif loss == "ce_correct":
            value = (signed * ~done).sum() / len(t)
        elif loss == "ce_balanced":
            value = torch.stack([(signed * ~done)[t == c].sum() / (t == c).sum() for c in t.unique()]).mean()
        elif loss == "segpgd":
            value = (signed * torch.where(done, 0.25, 0.75)).sum() / len(t)
        else:
            value = ((chosen - others) if targeted else (others - chosen)).clamp(max=0).mean()
        losses.append(value)
        scores.append(done.float().mean())
    return torch.stack(losses), torch.stack(scores)


def uneven_map(height, width):
    """Classes of very different sizes (as background and small objects are): 0 almost everywhere, a 6x6 square
    of 1, a 3-pixel-high band of 2, a 12x12 square of 3 and an unlabelled corner."""
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[5:11, 5:11] = 1
    labels[30:33, :] = 2
    labels[40:52, 40:52] = 3
    labels[:4, -4:] = 255
    return labels


@pytest.mark.parametrize("loss", SEGMENTATION_LOSSES)
@pytest.mark.parametrize("targeted", [False, True])
def test_each_loss_and_the_score_follow_their_definition(model_dir, images, loss, targeted):
    objective = load_task(model_dir, targeted=targeted, loss=loss, adv_threshold=0.5)
    x, labels = objective.prepare(images[:3], [uneven_map(64, 64), quadrant_map(64, 64), uneven_map(64, 64)])
    batch = random_sparse_noise(x, 300, 0)
    with torch.no_grad():
        measured = objective.loss_success_score(batch, labels)
        expected_loss, expected_score = by_hand(loss, objective.logits(batch), labels, targeted)
    assert torch.allclose(measured.loss, expected_loss, atol=1e-5)
    assert torch.allclose(measured.score, expected_score, atol=1e-6)
    assert torch.equal(measured.success, expected_score >= 0.5)


@pytest.mark.parametrize("targeted", [False, True])
def test_success_agrees_with_predict(model_dir, images, targeted):
    threshold = 0.3
    objective = load_task(model_dir, targeted=targeted, adv_threshold=threshold)
    maps = [quadrant_map(64, 64)] * 8
    x, targets = objective.prepare(images, maps if targeted else None)
    if not targeted:
        targets[:, :, 30:34] = 255
    outcomes = []
    for batch in [x] + [random_sparse_noise(x, 400, seed) for seed in range(3)]:
        predicted = objective.predict(batch)
        labelled = targets != 255
        goal = (predicted == targets) if targeted else (predicted != targets)
        fraction = (goal & labelled).flatten(1).sum(1) / labelled.flatten(1).sum(1)
        expected = fraction >= threshold
        assert torch.equal(objective.success(batch, targets), expected)
        outcomes.append(expected)
    assert torch.cat(outcomes).any() and not torch.cat(outcomes).all()


def test_sparse_pgd_beats_random_noise_of_the_same_budget(model_dir, images):
    objective = load_task(model_dir, adv_threshold=0.5)
    x, labels = objective.prepare(images)  # targets: the clean label maps
    assert not objective.success(x, labels).any()
    k = 40  # 1% of the pixels
    result = assert_valid_result(SparsePGD(k=k, steps=50)(objective, x, labels), x, k)
    noise = torch.stack([objective.success(random_sparse_noise(x, k, seed), labels) for seed in range(4)])
    assert result.success.float().mean() >= noise.float().mean() + 0.25


def test_bad_options_name_the_value_and_what_is_allowed():
    allowed = r"\['ce_balanced', 'ce', 'ce_correct', 'segpgd', 'margin'\]"
    with pytest.raises(ValueError, match=rf"unknown segmentation loss 'hungarian'; allowed: {allowed}"):
        SegmentationOptions(loss="hungarian")
    with pytest.raises(ValueError, match="targeted must be True or False, got 'yes'"):
        SegmentationOptions(targeted="yes")
