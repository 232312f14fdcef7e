"""The flags that set options of the model's task (``tasks.load_task`` keywords of the same names), shared by the
evaluation scripts and ``hf-sparse-attack attack``. Each defaults to ``None``: unset, the task's own default applies
(``all_results.json`` and ``summary.json`` record the options used).

>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> add_task_arguments(parser, ("segmentation",))
>>> task_options(parser.parse_args(["--adv_threshold", "0.5"]))
{'adv_threshold': 0.5}
"""

from __future__ import annotations

import argparse

from hf_sparse_attack.tasks.options import (
    DETECTION_LOSSES,
    SEGMENTATION_LOSSES,
    ClassificationOptions,
    DetectionOptions,
    SegmentationOptions,
)
from hf_sparse_attack.vocabulary import CLASSIFICATION_LOSS_NAMES

#: Task -> the option flags it takes besides ``--loss``.
TASK_OPTION_FLAGS = {
    "classification": (),
    "detection": ("score_threshold", "iou_threshold", "target_threshold"),
    "segmentation": ("adv_threshold",),
}


def loss_help(tasks=tuple(TASK_OPTION_FLAGS)) -> str:
    """The losses of each of ``tasks`` and their defaults, for ``--loss`` help texts."""
    losses = {"classification": (CLASSIFICATION_LOSS_NAMES, ClassificationOptions),
              "detection": (DETECTION_LOSSES, DetectionOptions),
              "segmentation": (SEGMENTATION_LOSSES, SegmentationOptions)}
    return "; ".join(f"{task}: {', '.join(losses[task][0])} (default {losses[task][1]().loss})" for task in tasks)


def add_task_arguments(group: argparse._ArgumentGroup, tasks=tuple(TASK_OPTION_FLAGS)) -> None:
    """``--loss`` and the option flags of ``tasks``, each helped with its default (and its task if several)."""
    detection = DetectionOptions()
    helps = {
        "score_threshold": "a target still counts as detected by a detection of its label with IoU >= "
        f"--iou_threshold and a score from this one (default {detection.score_threshold}, the lowest score mAP "
        "counts; raise it if you report detections at a threshold)",
        "iou_threshold": f"the IoU from which a detection finds a target (default {detection.iou_threshold})",
        "target_threshold": "the clean detections from this score are the objects to remove when the data has no "
        f"ground truth, and the ones drawn and reported (default {detection.target_threshold})",
        "adv_threshold": "the fraction of labelled pixels whose class must change for success (default "
        f"{SegmentationOptions().adv_threshold})",
    }
    group.add_argument("--loss", help=f"the attack loss of the model's task; {loss_help(tasks)}")
    for task in tasks:
        for name in TASK_OPTION_FLAGS[task]:
            group.add_argument(f"--{name}", type=float, help=(f"{task}: " if len(tasks) > 1 else "") + helps[name])


def task_options(args: argparse.Namespace) -> dict:
    """The task options set on the command line (the flags not ``None``), for ``tasks.load_task``."""
    flags = ("loss", *(name for names in TASK_OPTION_FLAGS.values() for name in names))
    return {name: getattr(args, name) for name in flags if getattr(args, name, None) is not None}
