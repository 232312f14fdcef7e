"""tasks: Hugging Face vision models as attack objectives (classification, DETR-family detection, segmentation).

``load_task(name_or_path, task=None, **options)`` reads the config, picks the adapter and returns an objective
that the attacks of :mod:`hf_sparse_attack` accept. Every objective offers ``prepare`` (images to pixels in
``[0, 1]`` at model resolution plus targets), ``loss``/``success``/``loss_and_success`` (per sample), ``predict``,
``clean_targets`` and ``to_original``; see :mod:`tasks.base` and each adapter's module for the target formats.

This package imports :mod:`hf_sparse_attack`, never the other way round.
"""

from .base import TaskObjective
from .classification import ClassificationObjective, ClassificationOptions
from .detection import DETECTION_HEADS, DetectionObjective, DetectionOptions, SetLossTerms
from .loading import SUPPORTED, CheckedModel, TaskLoadError, check_model, infer_task, load_task
from .segmentation import SegmentationObjective, SegmentationOptions

__all__ = [
    "DETECTION_HEADS",
    "SUPPORTED",
    "CheckedModel",
    "ClassificationObjective",
    "ClassificationOptions",
    "DetectionObjective",
    "DetectionOptions",
    "SegmentationObjective",
    "SegmentationOptions",
    "SetLossTerms",
    "TaskLoadError",
    "TaskObjective",
    "check_model",
    "infer_task",
    "load_task",
]
