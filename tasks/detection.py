"""Object detection adapter for the DETR family: set prediction with ``logits (B, Q, K)`` and ``pred_boxes``.

Two kinds of class heads are supported (:data:`DETECTION_HEADS`): *softmax* heads (DETR, Table Transformer, YOLOS)
with ``K = C + 1`` logits, the last one "no object", and *sigmoid* heads (Conditional, Deformable and DAB-DETR)
with ``K = C`` independent logits. Scores and detections follow each family's Hugging Face post-processing:
softmax — one detection per query, its best real class; sigmoid — the best ``(query, class)`` pairs, at most
:data:`MAX_DETECTIONS`; a detection is kept when its score is ``>= score_threshold`` (Hugging Face: ``>``).

Frames and formats (the same for targets and predictions, so both round-trip through :meth:`to_original`):

- ``x (B, 3, H, W)`` holds the processor's resized images padded bottom/right to a common size (zeros). A
  target/prediction dict holds ``"labels"`` ``LongTensor (n,)``, ``"boxes"`` ``FloatTensor (n, 4)`` pixel xyxy in
  the resized image (origin top-left, so the same numbers in the padded frame) and ``"size"`` ``LongTensor (2,)``,
  the ``(height, width)`` of the resized image inside the padding; predictions add ``"scores"`` ``(n,)``.
- In the forward pass the pixels outside each ``size`` are zero after normalisation and masked with
  ``pixel_mask``: the model gets exactly what the processor gives it for the padded batch. (As with Hugging
  Face's own batched inference, features near the padding border, hence predictions, can differ slightly from
  those of the image alone.) The model's normalised boxes are relative to ``size`` (DETR's convention with a
  pixel mask, and the one of ``post_process_object_detection(target_sizes=...)``).
- Padded pixels get no gradient, but an attack may still place budget on them; attack images of one size (or
  batches of one) when the exact budget on real pixels matters.

Losses, per image and without any collective (``outputs.loss`` is never used):

- ``"hungarian"``: DETR's set loss. Queries are matched to targets per image with the config's matching costs
  (:mod:`tasks.matching`: the batch's cost matrices on the device at once, over targets padded to the batch's
  most, then each image's assignment on the host, one host wait per batch); then class loss +
  ``bbox_loss_coefficient`` * L1 + ``giou_loss_coefficient`` * (1 - GIoU), the box terms summed over matched
  pairs and divided by ``max(n, 1)``. Class loss: softmax heads, the cross-entropy over all queries with weight
  ``eos_coefficient`` on "no object", a weighted mean; sigmoid heads, the sigmoid focal loss (``focal_alpha``,
  gamma 2) summed over queries and classes, divided by ``max(n, 1)`` and weighted 1, as Hugging Face's loss does.
  Auxiliary decoder outputs are not used. For one image this equals the model's own ``outputs.loss`` (with
  ``auxiliary_loss=False``); :meth:`DetectionObjective.hungarian_terms` gives the sums behind it.
- ``"vanish"``: the mean over queries of ``log P(no object)`` — ``log softmax`` of the no-object logit, or
  ``sum_c log(1 - sigmoid(z_c))`` for sigmoid heads. Maximising it drives every query's object probability down;
  its gradient is dominated by the queries still confident about an object.
- ``"targets"``: targets-only vanishing, ``log(1 - p(target's class))`` summed over the queries whose box finds a
  target (IoU >= ``iou_threshold``), per target: false positives are left alone (they cost the metric nothing).
- ``"hungarian+targets"`` (default): the sum of the two. Measured on the embedded detector (64 held-out images,
  k = 0.5% of the pixels, sPGD 100 steps), mAP@50 falls from 0.93 to 0.02 with it, to 0.06 with ``"hungarian"``,
  0.04 with ``"targets"`` and 0.19 with ``"vanish"`` (``evaluation/benchmarks/bench_dense.py``).

Success: no target is still detected, i.e. no detection among the top :data:`MAX_DETECTIONS` with score
``>= score_threshold`` (default :data:`METRIC_FLOOR`, what mAP sees), the target's label and IoU
``>= iou_threshold`` with it. An image without targets is vacuously successful (nothing to remove). The score
(what the attacks keep the best of) is minus the sum over targets of the highest score of such a detection.
Success and score are tensor ops over the batch's padded detections and targets, with no host synchronisation; a
measurement with a Hungarian loss costs the adapter two transfers (the costs to the host, the matched indices
back, non-blocking on CUDA), the others none, whatever the batch size (``tests/test_task_syncs.py``).

>>> import numpy as np, transformers as hf
>>> backbone = hf.ResNetConfig(embedding_size=8, hidden_sizes=[8] * 4, depths=[1] * 4, layer_type="basic",
...                            out_features=["stage4"])
>>> config = hf.DetrConfig(use_timm_backbone=False, backbone_config=backbone, d_model=16, encoder_layers=1,
...                        decoder_layers=1, encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=5, num_labels=2)
>>> objective = DetectionObjective(
...     hf.DetrForObjectDetection(config).eval().requires_grad_(False),
...     hf.DetrImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 64}),
... )
>>> images = [np.zeros((40, 60, 3), np.uint8), np.zeros((60, 40, 3), np.uint8)]
>>> x, targets = objective.prepare(images, [{"boxes": [[6, 4, 30, 20]], "labels": [1]}, {"boxes": [], "labels": []}])
>>> tuple(x.shape), [t["size"].tolist() for t in targets], targets[0]["boxes"]
((2, 3, 48, 48), [[32, 48], [48, 32]], tensor([[ 4.8000,  3.2000, 24.0000, 16.0000]]))
>>> objective.loss(x, targets).shape
torch.Size([2])
>>> objective.to_original(targets, [(40, 60), (60, 40)])[0]["boxes"]
tensor([[ 6.,  4., 30., 20.]])
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from hf_sparse_attack.objective import Measurement

from .base import TaskObjective
from .boxes import box_iou, cxcywh_to_xyxy, generalized_box_iou, xyxy_to_cxcywh
from .matching import assign, matching_costs
from .options import DetectionOptions
from .pixels import image_list, image_size, processor_pixels

#: Model types of the DETR family and how their class logits score objects.
DETECTION_HEADS = {
    "detr": "softmax",
    "table-transformer": "softmax",
    "yolos": "softmax",
    "conditional_detr": "sigmoid",
    "deformable_detr": "sigmoid",
    "dab-detr": "sigmoid",
}
#: At most this many detections per image (Hugging Face's ``top_k`` for sigmoid heads).
MAX_DETECTIONS = 100
_FOCAL_GAMMA = 2.0
_MATCHER_FOCAL_ALPHA = 0.25  # fixed in the sigmoid matcher's class cost, as in Deformable DETR


class SetLossTerms(NamedTuple):
    """Per-image sums behind the Hungarian loss, each ``(B,)``.

    The loss of image ``i`` is ``class_sum/class_norm + bbox_coef * l1_sum/max(n, 1) + giou_coef *
    giou_sum/max(n, 1)``. A batch-pooled loss (as ``outputs.loss`` computes it) divides the sums over the batch by
    the pooled normalisers instead.
    """

    class_sum: Tensor  # weighted cross-entropy (softmax heads) or focal loss (sigmoid heads) over all queries
    class_norm: Tensor  # sum of the cross-entropy weights (softmax heads) or max(n, 1) (sigmoid heads)
    l1_sum: Tensor  # L1 distance of matched normalised cxcywh boxes
    giou_sum: Tensor  # 1 - GIoU of matched boxes
    num_boxes: Tensor  # n, the number of targets


class _Truth(NamedTuple):
    """Targets padded to the batch's most: ``labels (B, T)`` (-1 for padding), pixel xyxy ``boxes (B, T, 4)``
    (zeros for padding), and ``counts``, each image's number of targets, known on the host (no sync)."""

    labels: Tensor
    boxes: Tensor
    counts: list[int]

    @classmethod
    def pad(cls, targets: list[dict], device: torch.device) -> _Truth:
        labels = [torch.as_tensor(t["labels"], device=device).long().reshape(-1) for t in targets]
        boxes = [torch.as_tensor(t["boxes"], device=device).float().reshape(-1, 4) for t in targets]
        return cls(
            pad_sequence(labels, batch_first=True, padding_value=-1),
            pad_sequence(boxes, batch_first=True),
            [len(t) for t in labels],
        )


class DetectionObjective(TaskObjective):
    """DETR-family detector objective over pixels in ``[0, 1]`` (see the module docstring for formats)."""

    task = "detection"
    options_class = DetectionOptions

    def __init__(self, model: Any, processor: Any, name_or_path: str = "", options: Any = None) -> None:
        super().__init__(model, processor, name_or_path, options)
        model_type = model.config.model_type
        if model_type not in DETECTION_HEADS:
            raise ValueError(f"{model_type!r} is not a supported detector; supported: {sorted(DETECTION_HEADS)}")
        self.sigmoid = DETECTION_HEADS[model_type] == "sigmoid"
        self._takes_pixel_mask = "pixel_mask" in inspect.signature(model.forward).parameters

    def outputs(self, x: Tensor, sizes: Any = None) -> tuple[Tensor, Tensor]:
        """``(logits (B, Q, K), boxes (B, Q, 4))`` in float32; boxes normalised cxcywh relative to ``sizes``."""
        sizes = self._sizes(x, sizes)
        h, w = x.shape[-2:]
        rows = torch.arange(h, device=x.device)[None, :, None] < sizes[:, 0, None, None]
        cols = torch.arange(w, device=x.device)[None, None, :] < sizes[:, 1, None, None]
        valid = rows & cols
        pixels = self.normalize(x) * valid[:, None].to(self.normalize.dtype)
        extra = {"pixel_mask": valid.long()} if self._takes_pixel_mask else {}
        out = self.model(pixel_values=pixels, **extra)
        return out.logits.float(), out.pred_boxes.float()

    def loss_success_score(self, x: Tensor, targets: list[dict]) -> Measurement:
        """Loss (:attr:`DetectionOptions.loss`), success (no target still detected) and score: minus the sum over
        targets of the highest score of a detection that still finds the target (same label, IoU >=
        ``iou_threshold``, score >= ``score_threshold``), 0 when none does. AP ranks every detection, so this is
        what an attack must drive down for mAP to fall: the true positives' scores."""
        logits, boxes, truth, sizes = self._forward(x, targets)
        name = self.options.loss
        loss = logits.new_zeros(x.shape[0])
        if name == "vanish":
            loss = self._vanish(logits)
        if name in ("hungarian", "hungarian+targets"):
            loss = loss + self._combine(self._set_loss_terms(logits, boxes, truth, sizes))
        if name in ("targets", "hungarian+targets"):
            loss = loss + self._vanish_targets(logits, boxes, truth, sizes)
        with torch.no_grad():
            found = self._found(logits, boxes, truth, sizes)
        return Measurement(loss, ~found.any(1), -found.sum(1))

    def found(self, x: Tensor, targets: list[dict]) -> Tensor:
        """``(B, T)``: per target (padded with zeros), the highest score of a detection that still finds it."""
        with torch.no_grad():
            logits, boxes, truth, sizes = self._forward(x, targets)
            return self._found(logits, boxes, truth, sizes)

    def hungarian_terms(self, x: Tensor, targets: list[dict]) -> SetLossTerms:
        """The per-image sums behind the ``"hungarian"`` loss (to compare with a batch-pooled reference)."""
        logits, boxes, truth, sizes = self._forward(x, targets)
        return self._set_loss_terms(logits, boxes, truth, sizes)

    def predict(self, x: Tensor, sizes: Any = None, score_threshold: float | None = None) -> list[dict]:
        """Detections per image: dicts of ``boxes`` (pixel xyxy), ``scores``, ``labels`` and ``size``.

        ``sizes``: ``(height, width)`` of each resized image inside the padding (the targets' ``"size"``), default
        the whole of ``x``. ``score_threshold``: default the objective's (e.g. pass 0 for mAP).
        """
        threshold = self.options.score_threshold if score_threshold is None else score_threshold
        sizes = self._sizes(x, sizes)
        with torch.no_grad():
            logits, boxes = self.outputs(x, sizes)
            return self._detections(logits, boxes, sizes, threshold)

    def clean_targets(self, x: Tensor, sizes: Any = None) -> list[dict]:
        """The clean detections from ``target_threshold``, as targets (``labels``, ``boxes``, ``size``)."""
        found = self.predict(x, sizes, score_threshold=self.options.target_threshold)
        return [{key: d[key] for key in ("labels", "boxes", "size")} for d in found]

    def prepare(self, images: Any, annotations: Any = None) -> tuple[Tensor, list[dict]]:
        """Resized and padded pixels ``(B, 3, H, W)`` in ``[0, 1]`` and one target dict per image.

        ``annotations``: per image a dict with ``"boxes"`` ``(n, 4)`` pixel xyxy in the *original* image and
        ``"labels"`` ``(n,)``; boxes are clipped to the image, empty ones dropped, then scaled with the image.
        Without annotations the targets are :meth:`clean_targets`.
        """
        images = image_list(images)
        batch = processor_pixels(self.processor, images)
        x = batch["pixel_values"].to(self.device)
        if "pixel_mask" in batch:
            mask = batch["pixel_mask"].bool()
            sizes = torch.stack((mask.any(2).sum(1), mask.any(1).sum(1)), dim=1).to(self.device)
        else:
            sizes = self._sizes(x, None)
        if annotations is None:
            return x, self.clean_targets(x, sizes)
        annotations = [annotations] if isinstance(annotations, dict) else list(annotations)
        if len(annotations) != len(images):
            raise ValueError(f"got {len(annotations)} annotations for {len(images)} images")
        targets = [
            self._resize_annotation(a, image_size(image), size) for a, image, size in zip(annotations, images, sizes)
        ]
        return x, targets

    def to_original(self, predictions: list[dict], original_sizes: Sequence) -> list[dict]:
        """Boxes scaled from each dict's ``size`` to ``original_sizes[i] = (height, width)``; other keys kept."""
        out = []
        for prediction, original in zip(predictions, original_sizes, strict=True):
            boxes = torch.as_tensor(prediction["boxes"], dtype=torch.float32)
            size = torch.as_tensor(prediction["size"]).to(boxes)
            original = torch.as_tensor(original).to(boxes)
            scale = (original / size).flip(0).repeat(2)
            out.append({**prediction, "boxes": boxes * scale, "size": original.long()})
        return out

    def _forward(self, x: Tensor, targets: list[dict]) -> tuple[Tensor, Tensor, _Truth, Tensor]:
        """:meth:`outputs` at the targets' sizes, the padded targets and those sizes ``(B, 2)``."""
        sizes = self._sizes(x, [t.get("size") for t in targets])
        return *self.outputs(x, sizes), _Truth.pad(targets, x.device), sizes

    def _sizes(self, x: Tensor, sizes: Any) -> Tensor:
        """``(B, 2)`` long ``(height, width)`` per image; ``None`` entries (or ``sizes=None``) mean all of ``x``.

        Built on the device without a host-to-device copy (and returned as it is when already a long tensor there).
        """
        if isinstance(sizes, Tensor):
            return (sizes if sizes.device == x.device else sizes.to(x.device)).long().reshape(x.shape[0], 2)
        full = torch.full((x.shape[0], 2), x.shape[-1], dtype=torch.long, device=x.device)
        full[:, 0] = x.shape[-2]
        if sizes is None:
            return full
        return torch.stack([full[i] if s is None else torch.as_tensor(s, device=x.device).long()
                            for i, s in enumerate(sizes)])

    def _resize_annotation(self, annotation: dict, original: tuple[int, int], size: Tensor) -> dict:
        boxes = torch.as_tensor(annotation["boxes"], dtype=torch.float32).reshape(-1, 4)
        labels = torch.as_tensor(annotation["labels"], dtype=torch.long).reshape(-1)
        if len(labels) != len(boxes):
            raise ValueError(f"an annotation has {len(boxes)} boxes but {len(labels)} labels")
        num_labels = self.model.config.num_labels
        if len(labels) and (labels.min() < 0 or labels.max() >= num_labels):
            raise ValueError(f"labels must be class ids in [0, {num_labels}), got {labels.tolist()}")
        height, width = original
        boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([width, height, width, height], dtype=torch.float32))
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        scale = (size.float().cpu() / torch.tensor([height, width], dtype=torch.float32)).flip(0).repeat(2)
        return {
            "labels": labels[keep].to(self.device),
            "boxes": (boxes[keep] * scale).to(self.device),
            "size": size.to(self.device),
        }

    def _ranked(self, logits: Tensor, boxes: Tensor, sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The top detections of each image, as Hugging Face's post-processing ranks them: ``scores``,
        ``labels``, ``queries`` ``(B, D)`` by decreasing score and every query's pixel xyxy box ``(B, Q, 4)``."""
        if self.sigmoid:
            probs = logits.sigmoid().flatten(1)
            scores, index = probs.topk(min(MAX_DETECTIONS, probs.shape[1]), dim=1)
            labels, queries = index % logits.shape[-1], index // logits.shape[-1]
        else:
            scores, labels = logits.softmax(-1)[..., :-1].max(-1)
            queries = scores.argsort(dim=1, descending=True)[:, :MAX_DETECTIONS]
            scores, labels = scores.gather(1, queries), labels.gather(1, queries)
        return scores, labels, queries, _pixel_boxes(boxes, sizes)

    def _found(self, logits: Tensor, boxes: Tensor, truth: _Truth, sizes: Tensor) -> Tensor:
        """``(B, T)``: each target's highest score of a detection that finds it (0 for none, and for padding)."""
        scores, labels, queries, pixel_boxes = self._ranked(logits, boxes, sizes)
        detected = pixel_boxes.gather(1, queries[..., None].expand(-1, -1, 4))  # (B, D, 4)
        iou = box_iou(truth.boxes[:, :, None], detected[:, None])  # (B, T, D)
        match = (iou >= self.options.iou_threshold) & (truth.labels[:, :, None] == labels[:, None])
        match &= (scores >= self.options.score_threshold)[:, None]
        return (scores[:, None] * match).amax(-1)

    def _detections(self, logits: Tensor, boxes: Tensor, sizes: Tensor, threshold: float) -> list[dict]:
        scores, labels, queries, pixel_boxes = self._ranked(logits, boxes, sizes)
        out = []
        for i in range(logits.shape[0]):
            keep = scores[i] >= threshold
            out.append(
                {
                    "boxes": pixel_boxes[i, queries[i, keep]],
                    "scores": scores[i, keep],
                    "labels": labels[i, keep],
                    "size": sizes[i],
                }
            )
        return out

    def _vanish_targets(self, logits: Tensor, boxes: Tensor, truth: _Truth, sizes: Tensor) -> Tensor:
        """Targets-only vanishing (in the spirit of TOG-vanishing and DAG): ``sum log(1 - p(target's class))``
        over the (query, target) pairs whose box finds the target (IoU >= ``iou_threshold``), per target. False
        positives and other classes are left alone, so the gradient is spent where the metric counts."""
        pixel_boxes = _pixel_boxes(boxes, sizes)
        with torch.no_grad():
            iou = box_iou(pixel_boxes[:, :, None], truth.boxes[:, None])  # (B, Q, T)
            pairs = (iou >= self.options.iou_threshold) & (truth.labels >= 0)[:, None]
        index = truth.labels.clamp(min=0)[:, None].expand(-1, logits.shape[1], -1)  # (B, Q, T)
        if self.sigmoid:
            log_absent = -F.softplus(logits.gather(2, index))  # log(1 - sigmoid(z))
        else:
            log_absent = torch.log1p(-logits.softmax(-1).gather(2, index).clamp(max=1 - 1e-6))
        count = (truth.labels >= 0).sum(1).clamp(min=1)
        return (log_absent * pairs).flatten(1).sum(1) / count

    def _vanish(self, logits: Tensor) -> Tensor:
        if self.sigmoid:
            return -F.softplus(logits).sum(-1).mean(1)
        return logits.log_softmax(-1)[..., -1].mean(1)

    def _set_loss_terms(self, logits: Tensor, boxes: Tensor, truth: _Truth, sizes: Tensor) -> SetLossTerms:
        """DETR's set-loss sums per image, after matching the whole batch at once (:mod:`tasks.matching`)."""
        config = self.model.config
        b, q, k = logits.shape
        normalised = xyxy_to_cxcywh(truth.boxes / sizes.flip(1).repeat(1, 2)[:, None].to(truth.boxes))  # (B, T, 4)
        with torch.no_grad():
            probs = logits.sigmoid() if self.sigmoid else logits.softmax(-1)
            class_cost = self._class_cost(probs, truth.labels.clamp(min=0))
            costs = matching_costs(class_cost, boxes, normalised, config.class_cost, config.bbox_cost, config.giou_cost)
        image, query, target = assign(costs, truth.counts)
        target_boxes, target_labels = normalised[image, target], truth.labels[image, target]
        num_boxes = (truth.labels >= 0).sum(1).float()

        matched = boxes[image, query]
        l1 = (matched - target_boxes).abs().sum(1)
        giou = 1 - generalized_box_iou(cxcywh_to_xyxy(matched), cxcywh_to_xyxy(target_boxes))
        l1_sum = boxes.new_zeros(b).index_add(0, image, l1)
        giou_sum = boxes.new_zeros(b).index_add(0, image, giou)

        if self.sigmoid:
            onehot = torch.zeros_like(logits)
            onehot[image, query, target_labels] = 1.0
            focal = _sigmoid_focal(logits, onehot, config.focal_alpha)
            class_sum, class_norm = focal.sum((1, 2)), num_boxes.clamp(min=1)
        else:
            classes = torch.full((b, q), k - 1, dtype=torch.long, device=logits.device)
            classes[image, query] = target_labels
            weight = logits.new_ones(k)
            weight[-1] = config.eos_coefficient
            nll = F.cross_entropy(logits.transpose(1, 2), classes, reduction="none")
            per_query = weight[classes]
            class_sum, class_norm = (per_query * nll).sum(1), per_query.sum(1)
        return SetLossTerms(class_sum, class_norm, l1_sum, giou_sum, num_boxes)

    def _combine(self, terms: SetLossTerms) -> Tensor:
        config = self.model.config
        boxes = terms.num_boxes.clamp(min=1)
        return (
            terms.class_sum / terms.class_norm
            + config.bbox_loss_coefficient * terms.l1_sum / boxes
            + config.giou_loss_coefficient * terms.giou_sum / boxes
        )

    def _class_cost(self, probs: Tensor, labels: Tensor) -> Tensor:
        """``(B, Q, T)`` matching cost of each query for each target label ``labels (B, T)`` (lower is better)."""
        probs = probs.gather(2, labels[:, None].expand(-1, probs.shape[1], -1))
        if not self.sigmoid:
            return -probs
        alpha = _MATCHER_FOCAL_ALPHA
        negative = (1 - alpha) * probs**_FOCAL_GAMMA * -(1 - probs + 1e-8).log()
        positive = alpha * (1 - probs) ** _FOCAL_GAMMA * -(probs + 1e-8).log()
        return positive - negative


def _pixel_boxes(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Normalised cxcywh boxes ``(B, Q, 4)`` to pixel xyxy in each image's ``(height, width)`` of ``sizes``."""
    return cxcywh_to_xyxy(boxes) * sizes.flip(1).repeat(1, 2)[:, None].to(boxes)


def _sigmoid_focal(logits: Tensor, onehot: Tensor, alpha: float) -> Tensor:
    """Elementwise sigmoid focal loss (Lin et al., 2017) with gamma 2, as in Deformable DETR."""
    probs = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    p_t = probs * onehot + (1 - probs) * (1 - onehot)
    alpha_t = alpha * onehot + (1 - alpha) * (1 - onehot)
    return alpha_t * ce * (1 - p_t) ** _FOCAL_GAMMA
