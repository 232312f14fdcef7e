"""Detection adapter on tiny random-weight DETR (softmax head) and Conditional DETR (sigmoid head) loaded by path."""

import pytest
import torch
from accelerate import PartialState
from attack_checks import assert_valid_result
from tiny_models import DETECTORS, photo_crops, random_sparse_noise

from hf_sparse_attack import SparsePGD
from hf_sparse_attack.tasks import DetectionObjective, DetectionOptions, load_task
from hf_sparse_attack.tasks.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh
from hf_sparse_attack.tasks.matching import assign, match_queries, matching_costs
from hf_sparse_attack.tasks.options import DETECTION_LOSSES

torch.set_num_threads(1)

FAMILIES = sorted(DETECTORS)
SIZES = [(50, 80), (70, 40)]  # two aspect ratios: the processor resizes them differently and pads the batch
ANNOTATIONS = [
    {"boxes": [[5.0, 4.0, 30.0, 40.0], [20.0, 10.0, 79.0, 49.0], [60.0, 30.0, 95.0, 60.0]], "labels": [0, 2, 1]},
    {"boxes": [[1.0, 2.0, 10.0, 12.0]], "labels": [1]},
]
CLIPPED = [[[5.0, 4.0, 30.0, 40.0], [20.0, 10.0, 79.0, 49.0], [60.0, 30.0, 80.0, 50.0]], [[1.0, 2.0, 10.0, 12.0]]]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("detectors")
    return {name: build(root) for name, build in DETECTORS.items()}


@pytest.fixture(scope="module")
def images():
    return photo_crops(8, 64)


@pytest.fixture(scope="module")
def mixed():
    return [photo_crops(1, h, w, seed=i)[0] for i, (h, w) in enumerate(SIZES)]


def iou_by_hand(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union


def removed_by_hand(prediction, target, iou_threshold):
    """True when no target box is matched by a prediction of its label with IoU >= iou_threshold."""
    for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
        for other, other_label in zip(prediction["boxes"].tolist(), prediction["labels"].tolist()):
            if other_label == label and iou_by_hand(box, other) >= iou_threshold:
                return False
    return True


def hf_labels(targets):
    """Targets in the format of the model's own loss: class_labels and cxcywh boxes normalised by the image size."""
    out = []
    for t in targets:
        scale = t["size"].flip(0).repeat(2).float()
        out.append({"class_labels": t["labels"], "boxes": xyxy_to_cxcywh(t["boxes"] / scale)})
    return out


def threshold_with_detections(objective, x):
    """A score threshold at which every image of ``x`` has at least one clean detection."""
    top = torch.stack([p["scores"].max() for p in objective.predict(x, score_threshold=0.0)])
    return round(0.95 * top.min().item(), 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_prepare_pads_like_the_processor_and_scales_boxes_like_it(model_dirs, mixed, family):
    objective = load_task(model_dirs[family])
    assert isinstance(objective, DetectionObjective) and objective.task == "detection"
    x, targets = objective.prepare(mixed, ANNOTATIONS)
    coco = [
        {
            "image_id": i,
            "annotations": [
                {"bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": c, "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
                for (x0, y0, x1, y1), c in zip(a["boxes"], a["labels"])
            ],
        }
        for i, a in enumerate(ANNOTATIONS)
    ]
    reference = objective.processor(images=mixed, annotations=coco, do_convert_annotations=False, return_tensors="pt")
    mask = reference["pixel_mask"].bool()
    assert x.shape == reference["pixel_values"].shape and x.min() >= 0 and x.max() <= 1
    assert torch.allclose(objective.normalize(x) * mask[:, None], reference["pixel_values"], atol=1e-5)
    for target, ref, m in zip(targets, reference["labels"], mask):
        assert target["size"].tolist() == [int(m.any(1).sum()), int(m.any(0).sum())]
        assert torch.allclose(target["boxes"], ref["boxes"], atol=1e-4)
        assert torch.equal(target["labels"], ref["class_labels"])


@pytest.mark.parametrize("family", FAMILIES)
def test_boxes_round_trip_and_predictions_match_post_processing(model_dirs, mixed, family):
    objective = load_task(model_dirs[family], score_threshold=0.0)
    x, targets = objective.prepare(mixed, ANNOTATIONS)
    back = objective.to_original(targets, SIZES)
    for original, clipped, size in zip(back, CLIPPED, SIZES):
        assert torch.allclose(original["boxes"], torch.tensor(clipped), atol=1e-4)
        assert original["size"].tolist() == list(size)
    sizes = [t["size"] for t in targets]
    mine = objective.to_original(objective.predict(x, sizes), SIZES)
    with torch.no_grad():
        outputs = objective.model(**objective.processor(images=mixed, return_tensors="pt"))
    reference = objective.processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=SIZES)
    for m, r in zip(mine, reference):
        order_m, order_r = m["scores"].argsort(descending=True), r["scores"].argsort(descending=True)
        assert torch.allclose(m["scores"][order_m], r["scores"][order_r], atol=1e-5)
        assert torch.equal(m["labels"][order_m], r["labels"][order_r])
        assert torch.allclose(m["boxes"][order_m], r["boxes"][order_r], atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_hungarian_loss_equals_the_models_own_loss(model_dirs, images, family):
    objective = load_task(model_dirs[family])
    x, targets = objective.prepare(images[:2], ANNOTATIONS)
    assert PartialState._shared_state == {}, "the reference loss must be computed outside any Accelerator"
    with torch.no_grad():
        for i in range(2):  # batch of one: the per-image loss is the model's loss
            reference = objective.model(
                pixel_values=objective.normalize(x[i : i + 1]), labels=hf_labels(targets[i : i + 1])
            )
            assert objective.loss(x[i : i + 1], targets[i : i + 1]).item() == pytest.approx(
                reference.loss.item(), rel=1e-5
            )
        reference = objective.model(pixel_values=objective.normalize(x), labels=hf_labels(targets)).loss
        terms = objective.hungarian_terms(x, targets)
    config = objective.model.config
    boxes = terms.num_boxes.sum().clamp(min=1)
    class_norm = terms.class_norm.sum() if not objective.sigmoid else boxes
    pooled = (
        terms.class_sum.sum() / class_norm
        + config.bbox_loss_coefficient * terms.l1_sum.sum() / boxes
        + config.giou_loss_coefficient * terms.giou_sum.sum() / boxes
    )
    assert pooled.item() == pytest.approx(reference.item(), rel=1e-5)
    per_image = terms.class_sum / terms.class_norm + (
        config.bbox_loss_coefficient * terms.l1_sum + config.giou_loss_coefficient * terms.giou_sum
    ) / terms.num_boxes.clamp(min=1)
    assert torch.allclose(objective.loss(x, targets), per_image, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("loss", DETECTION_LOSSES)
def test_losses_are_per_sample_finite_and_reach_the_pixels(model_dirs, mixed, family, loss):
    objective = load_task(model_dirs[family], loss=loss)
    x, targets = objective.prepare(mixed + mixed[:1], ANNOTATIONS + [{"boxes": [], "labels": []}])
    x.requires_grad_(True)
    values, success = objective.loss_and_success(x, targets)
    assert values.shape == (3,) and torch.isfinite(values).all()
    assert success[2]  # no targets: vacuously successful
    for i, target in enumerate(targets):
        (grad,) = torch.autograd.grad(values[i], x, retain_graph=True)
        h, w = target["size"].tolist()
        assert torch.isfinite(grad).all()
        if loss != "targets" or values[i] != 0:  # "targets" is 0, and flat, when no query finds a target
            assert grad[i].abs().sum() > 0
        assert grad[i, :, h:].abs().sum() == 0 and grad[i, :, :, w:].abs().sum() == 0  # padding is inert
        assert grad[[j for j in range(3) if j != i]].abs().sum() == 0  # no cross-sample coupling
    assert objective.loss(x[1:2].detach(), targets[1:2]).item() == pytest.approx(values[1].item(), rel=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_success_agrees_with_predict(model_dirs, images, family):
    objective = load_task(model_dirs[family])
    x, _ = objective.prepare(images)
    threshold = threshold_with_detections(objective, x)
    objective = load_task(model_dirs[family], score_threshold=threshold, target_threshold=threshold, iou_threshold=0.3)
    clean = objective.prepare(images)[1]
    relabelled = [{**t, "labels": (t["labels"] + i % 2) % 3} for i, t in enumerate(clean)]  # odd images: wrong labels
    outcomes = []
    for targets in (clean, relabelled):
        for batch in [x] + [random_sparse_noise(x, 200, seed) for seed in range(3)]:
            predictions = objective.predict(batch, [t["size"] for t in targets])
            expected = torch.tensor([removed_by_hand(p, t, 0.3) for p, t in zip(predictions, targets)])
            assert torch.equal(objective.success(batch, targets), expected)
            outcomes.append(expected)
    assert not outcomes[0].any()  # the clean detections are detected on the clean images
    assert torch.cat(outcomes).any() and not torch.cat(outcomes).all()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("loss", DETECTION_LOSSES)
def test_sparse_pgd_beats_random_noise_of_the_same_budget(model_dirs, images, family, loss):
    objective = load_task(model_dirs[family])
    x, _ = objective.prepare(images)
    threshold = threshold_with_detections(objective, x)
    objective = load_task(model_dirs[family], loss=loss, score_threshold=threshold, target_threshold=threshold)
    x, targets = objective.prepare(images)  # targets: the clean detections, at least one per image
    assert all(len(t["labels"]) for t in targets) and not objective.success(x, targets).any()
    k = 20  # 0.5% of the pixels
    result = assert_valid_result(SparsePGD(k=k, steps=50)(objective, x, targets), x, k)
    noise = torch.stack([objective.success(random_sparse_noise(x, k, seed), targets) for seed in range(4)])
    assert result.success.float().mean() >= noise.float().mean() + 0.25


@pytest.fixture(scope="module")
def shapes_detector():
    """The embedded Conditional DETR (trained, so its detections mean something) and two held-out images with
    their ground truth, the first with at least two objects."""
    from hf_sparse_attack.evaluation.embedded import load
    from hf_sparse_attack.evaluation.testdata.shapes import shapes_batch

    objective = load("detector")
    images, annotations = shapes_batch(12)
    chosen = [i for i, a in enumerate(annotations) if len(a["labels"]) >= 2][:2]
    truth = [{"boxes": annotations[i]["boxes"], "labels": annotations[i]["labels"]} for i in chosen]
    x, targets = objective.prepare([images[i] for i in chosen], truth)
    return objective, x, targets


def test_success_needs_every_target_removed(shapes_detector):
    objective, x, targets = shapes_detector
    first = {**targets[0], "boxes": targets[0]["boxes"][:2], "labels": targets[0]["labels"][:2]}
    assert (objective.found(x[:1], [first]) > 0.5).all()  # both objects detected on the clean image
    nowhere = torch.tensor([0.0, 0.0, 3.0, 3.0])  # a target no detection overlaps: already removed
    for kept in (0, 1):
        boxes = first["boxes"].clone()
        boxes[1 - kept] = nowhere
        one_left = {**first, "boxes": boxes}
        found = objective.found(x[:1], [one_left])[0]
        assert found[kept] > 0.5 and found[1 - kept] == 0
        assert not objective.success(x[:1], [one_left]).item()
    assert objective.success(x[:1], [{**first, "boxes": nowhere.expand(2, 4)}]).item()


def test_found_is_the_best_matching_detection_score_from_the_floor(shapes_detector):
    """``found`` by hand from every detection: same label, IoU >= the threshold, score >= the floor."""
    objective, x, targets = shapes_detector
    floor, iou = objective.options.score_threshold, objective.options.iou_threshold
    for batch in (x, random_sparse_noise(x, 200, 0)):
        found = objective.found(batch, targets)
        everything = objective.predict(batch, [t["size"] for t in targets], score_threshold=0.0)
        for i, (target, detections) in enumerate(zip(targets, everything)):
            for j, (box, label) in enumerate(zip(target["boxes"].tolist(), target["labels"].tolist())):
                scores = [s for b, s, l in zip(detections["boxes"].tolist(), detections["scores"].tolist(),
                                               detections["labels"].tolist())
                          if l == label and s >= floor and iou_by_hand(box, b) >= iou]
                assert found[i, j].item() == pytest.approx(max(scores, default=0.0), abs=1e-6)
        measured = objective.loss_success_score(batch, targets)
        assert torch.allclose(measured.score, -found.sum(1))
        assert torch.equal(measured.success, (found == 0).all(1))


def test_a_success_at_the_floor_leaves_no_counted_detection_on_any_target(shapes_detector):
    objective, x, targets = shapes_detector
    objective = load_task(objective.name_or_path, loss="hungarian", score_threshold=0.2)  # reachable in a test
    result = assert_valid_result(SparsePGD(k=60, steps=60)(objective, x, targets), x, 60)
    assert result.success.any()
    everything = objective.predict(result.adversarial, [t["size"] for t in targets], score_threshold=0.2)
    for fooled, target, detections in zip(result.success.tolist(), targets, everything):
        assert fooled == removed_by_hand(detections, target, objective.options.iou_threshold)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_targets_loss_pushes_down_only_the_queries_that_find_a_target(model_dirs, mixed, family):
    objective = load_task(model_dirs[family], loss="targets", iou_threshold=0.1)
    x, targets = objective.prepare(mixed, ANNOTATIONS)
    sizes = torch.stack([t["size"] for t in targets])
    with torch.no_grad():
        logits, boxes = objective.outputs(x, sizes)
        loss = objective.loss(x, targets)
    pixel = cxcywh_to_xyxy(boxes) * sizes.flip(1).repeat(1, 2)[:, None]
    for i, target in enumerate(targets):
        total = 0.0
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            for q in range(logits.shape[1]):
                if iou_by_hand(box, pixel[i, q].tolist()) >= 0.1:
                    p = logits[i, q].sigmoid()[label] if objective.sigmoid else logits[i, q].softmax(-1)[label]
                    total += torch.log1p(-p).item()
        assert loss[i].item() == pytest.approx(total / len(target["labels"]), rel=1e-4, abs=1e-6)


def test_bad_options_name_the_value_and_what_is_allowed():
    allowed = r"\['hungarian\+targets', 'hungarian', 'targets', 'vanish'\]"
    with pytest.raises(ValueError, match=rf"unknown detection loss 'ce'; allowed: {allowed}"):
        DetectionOptions(loss="ce")
    with pytest.raises(ValueError, match=r"iou_threshold must be in \(0.0, 1.0\], got 0"):
        DetectionOptions(iou_threshold=0)


def test_batch_matching_pairs_each_image_as_if_alone():
    """Targets padded per batch (0, 1, several and more than the queries): the pairs of one batched assignment are
    those of each image's own assignment, image by image."""
    gen = torch.Generator().manual_seed(0)
    counts, queries = [3, 0, 7, 1], 5
    pred = xyxy_to_cxcywh(torch.rand(4, queries, 4, generator=gen).sort(-1).values)
    target = xyxy_to_cxcywh(torch.rand(4, max(counts), 4, generator=gen).sort(-1).values)
    class_cost = torch.rand(4, queries, max(counts), generator=gen)
    weights = {"class_weight": 1, "bbox_weight": 5, "giou_weight": 2}
    pairs = assign(matching_costs(class_cost, pred, target, **weights), counts)
    expected = []
    for i, n in enumerate(counts):
        rows, cols = match_queries(class_cost[i, :, :n], pred[i], target[i, :n], **weights)
        expected.append(torch.stack((torch.full_like(rows, i), rows, cols)))
    assert torch.equal(pairs, torch.cat(expected, 1))
    assert pairs.shape[1] == 3 + 0 + queries + 1  # more targets than queries: every query is matched


@pytest.mark.parametrize("family", FAMILIES)
def test_a_batch_with_more_targets_than_queries_scores_each_image_as_alone(model_dirs, images, family):
    objective = load_task(model_dirs[family], score_threshold=0.0)
    x, _ = objective.prepare(images[:3])
    gen = torch.Generator().manual_seed(1)
    corners = torch.rand(13, 2, generator=gen) * 40
    crowd = {"labels": torch.randint(0, 3, (13,), generator=gen),
             "boxes": torch.cat((corners, corners + 4 + torch.rand(13, 2, generator=gen) * 20), 1)}
    found = objective.predict(x[2:], score_threshold=0.0)[0]
    targets = [crowd, {"labels": crowd["labels"][:0], "boxes": crowd["boxes"][:0]},
               {"labels": found["labels"][:2], "boxes": found["boxes"][:2]}]  # 13 > 10 queries, none, 2 found
    measured = objective.loss_success_score(x, targets)
    assert torch.isfinite(measured.loss).all() and measured.success[1]
    assert not measured.success[2] and measured.score[2] < 0
    for i in range(3):  # images of one size: no padding, so each image alone gives the same numbers
        alone = objective.loss_success_score(x[i : i + 1], targets[i : i + 1])
        assert alone.loss.item() == pytest.approx(measured.loss[i].item(), rel=1e-4, abs=1e-6)
        assert alone.success.item() == measured.success[i].item()
        assert alone.score.item() == pytest.approx(measured.score[i].item(), abs=1e-5)
