"""Each task's options (the ``options`` of :func:`~hf_sparse_attack.tasks.load_task`) and the names of its
losses, torch-free: the command line shows them in ``--help`` without importing torch, and a bad option is
reported before any model loads.

>>> DetectionOptions(iou_threshold=0.7).loss
'hungarian+targets'
>>> SegmentationOptions(loss="dice")
Traceback (most recent call last):
    ...
ValueError: unknown segmentation loss 'dice'; allowed: ['ce_balanced', 'ce', 'ce_correct', 'segpgd', 'margin']
"""

from __future__ import annotations

from dataclasses import dataclass

from hf_sparse_attack.value_checks import check_choice, check_flag, check_loss_name, check_range

DETECTION_LOSSES = ("hungarian+targets", "hungarian", "targets", "vanish")
SEGMENTATION_LOSSES = ("ce_balanced", "ce", "ce_correct", "segpgd", "margin")
#: The lowest score of a detection that counts for success and score by default: what mAP sees (it ranks every
#: detection of the top :data:`MAX_DETECTIONS`; one below 0.001 adds next to nothing to any AP).
METRIC_FLOOR = 0.001


@dataclass(frozen=True)
class ClassificationOptions:
    """``loss``: ``"ce"``, ``"margin"`` or ``"dlr"``; ``targeted``: targets are target classes."""

    loss: str = "ce"
    targeted: bool = False

    def __post_init__(self) -> None:
        check_loss_name(self.loss)
        check_flag("targeted", self.targeted)


@dataclass(frozen=True)
class DetectionOptions:
    """``loss``: one of :data:`DETECTION_LOSSES`. A target counts as detected by a prediction among the top
    :data:`~hf_sparse_attack.tasks.detection.MAX_DETECTIONS` with score ``>= score_threshold``, the same label and IoU ``>= iou_threshold``; the
    default threshold is the metric's floor, so an attack stops early only when mAP cannot count the target any
    more (raise it when you report detections at a threshold). ``target_threshold``: the score from which a clean
    detection is taken as a target when there is no ground truth, and drawn in pictures."""

    loss: str = "hungarian+targets"
    score_threshold: float = METRIC_FLOOR
    iou_threshold: float = 0.5
    target_threshold: float = 0.5

    def __post_init__(self) -> None:
        check_choice("detection loss", self.loss, DETECTION_LOSSES)
        check_range("score_threshold", self.score_threshold, 0.0, 1.0)
        check_range("iou_threshold", self.iou_threshold, 0.0, 1.0, low_open=True)
        check_range("target_threshold", self.target_threshold, 0.0, 1.0)


@dataclass(frozen=True)
class SegmentationOptions:
    """``loss``: one of :data:`SEGMENTATION_LOSSES`; ``targeted``: targets are target maps; ``adv_threshold``:
    fraction of labelled pixels to fool (or to turn into the target) for success; ``ignore_index``: label of
    unlabelled pixels."""

    loss: str = "ce_balanced"
    targeted: bool = False
    adv_threshold: float = 0.99
    ignore_index: int = 255

    def __post_init__(self) -> None:
        check_flag("targeted", self.targeted)
        check_choice("segmentation loss", self.loss, SEGMENTATION_LOSSES)
        check_range("adv_threshold", self.adv_threshold, 0.0, 1.0, low_open=True)
        if not isinstance(self.ignore_index, int) or isinstance(self.ignore_index, bool):
            raise ValueError(f"ignore_index must be an integer, got {self.ignore_index!r}")
