"""tasks: Hugging Face vision models as attack objectives (classification, DETR-family detection, segmentation).

``load_task(name_or_path, task=None, **options)`` reads the config, picks the adapter and returns an objective
that the attacks of :mod:`hf_sparse_attack` accept. Every objective offers ``prepare`` (images to pixels in
``[0, 1]`` at model resolution plus targets), ``loss``/``success``/``loss_and_success`` (per sample), ``predict``,
``clean_targets`` and ``to_original``; see :mod:`tasks.base` and each adapter's module for the target formats.

This package imports :mod:`hf_sparse_attack`, never the other way round.

The names below load on first use (PEP 562): importing this package does not import torch or transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hf_sparse_attack.lazy import attach

#: Submodule -> the public names it defines (a submodule named after itself is the submodule).
_EXPORTS = {
    "base": ("TaskObjective",),
    "classification": ("ClassificationObjective",),
    "options": ("ClassificationOptions", "DetectionOptions", "SegmentationOptions"),
    "detection": ("DETECTION_HEADS", "DetectionObjective", "SetLossTerms"),
    "loading": ("SUPPORTED", "CheckedModel", "TaskLoadError", "check_model", "infer_task", "load_task"),
    "segmentation": ("SegmentationObjective",),
}
__all__, __getattr__, __dir__ = attach(__name__, _EXPORTS)

if TYPE_CHECKING:  # what the names are, for type checkers and IDEs
    from .base import TaskObjective
    from .classification import ClassificationObjective
    from .detection import DETECTION_HEADS, DetectionObjective, SetLossTerms
    from .loading import SUPPORTED, CheckedModel, TaskLoadError, check_model, infer_task, load_task
    from .options import ClassificationOptions, DetectionOptions, SegmentationOptions
    from .segmentation import SegmentationObjective
