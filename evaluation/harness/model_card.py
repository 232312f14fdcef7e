"""A run's results as a model card, the Hugging Face way to share them.

**The model card** (always written, ``output_dir/model_card.md``; :func:`model_card`) holds the run's results as
``model-index`` metadata (:class:`huggingface_hub.EvalResult`): task type ``image-classification``,
``object-detection`` or ``image-segmentation``; the dataset (Hub name, else the folder's name, with the path as
its name; split, config); one clean value per metric and one adversarial value per attack, whose ``args`` are the
attack's config (``None`` values left out, as model cards do) and the task options. Metric types: ``accuracy``,
``mAP`` and ``mAP@50``, ``mean_iou``. Paste it into a card, or pass ``--push_model_card REPO_ID``, which opens a
pull request on that model repository adding the results to its card (``huggingface_hub.metadata_update``, never
overwriting the card or a different value already there).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

from .export import ExportError

MODEL_CARD_FILE = "model_card.md"


class CardMetric(NamedTuple):
    """One metric of a task in the model card: its ``model-index`` type, its keys in ``all_results.json`` and the
    names of its clean and adversarial values."""

    metric_type: str
    clean_key: str
    adversarial_key: str
    clean_name: str
    adversarial_name: str


class CardTask(NamedTuple):
    """A task in the model card: its Hub task type and name, and its metrics."""

    task_type: str
    task_name: str
    metrics: tuple[CardMetric, ...]


#: Task (of the evaluation scripts) -> how its results appear in a model card.
CARD_TASKS = {
    "classification": CardTask("image-classification", "Image Classification", (
        CardMetric("accuracy", "clean_accuracy", "robust_accuracy", "clean accuracy", "robust accuracy"),)),
    "detection": CardTask("object-detection", "Object Detection", (
        CardMetric("mAP", "map_clean", "map_adversarial", "clean mAP", "adversarial mAP"),
        CardMetric("mAP@50", "map50_clean", "map50_adversarial", "clean mAP@50", "adversarial mAP@50"))),
    "segmentation": CardTask("image-segmentation", "Image Segmentation", (
        CardMetric("mean_iou", "miou_clean", "miou_adversarial", "clean mIoU", "adversarial mIoU"),)),
}


def _card_task(task: str) -> CardTask:
    if task not in CARD_TASKS:
        raise ExportError(f"unknown task {task!r}; allowed: {sorted(CARD_TASKS)}")
    return CARD_TASKS[task]


def _dataset_card_fields(description: dict) -> dict:
    """``model-index`` dataset fields of ``all_results.json``'s ``dataset``: the Hub name as type when it is one,
    else the folder's (or COCO annotation file's) name, with the path as given for name."""
    if description.get("source") == "coco":
        return {"dataset_type": "coco", "dataset_name": description["annotation_file"]}
    source = str(description["source"])
    local = Path(source).expanduser().exists() or source.startswith((".", "/", "~"))
    fields = {"dataset_type": Path(source).name if local else source, "dataset_name": source,
              "dataset_split": description.get("split"), "dataset_config": description.get("config_name")}
    if description.get("max_eval_samples") is not None:
        fields["dataset_args"] = {"max_eval_samples": description["max_eval_samples"]}
    return fields


def _value(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def eval_results(results: dict) -> list:
    """The ``model-index`` entries (:class:`huggingface_hub.EvalResult`) of a run's ``all_results.json``: per metric
    of the task, the clean value once (it does not depend on the attack) and the adversarial value of each attack,
    with the attack's config and the task options as ``metric_args``. Undefined values (``null``/NaN) are left out.

    >>> results = {"task": "classification", "task_options": {"loss": "ce"},
    ...            "dataset": {"source": "ylecun/mnist", "split": "test", "config_name": None},
    ...            "results": [{"k": 10, "attack": {"attack": "SparsePGD", "k": 10, "steps": 100},
    ...                         "metrics": {"clean_accuracy": 0.75, "robust_accuracy": 0.25}}]}
    >>> [(r.task_type, r.dataset_type, r.metric_type, r.metric_name, r.metric_value) for r in eval_results(results)]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('image-classification', 'ylecun/mnist', 'accuracy', 'clean accuracy', 0.75),
     ('image-classification', 'ylecun/mnist', 'accuracy', 'robust accuracy (SparsePGD, k=10)', 0.25)]
    >>> eval_results(results)[1].metric_args
    {'attack': 'SparsePGD', 'k': 10, 'steps': 100, 'task_options': {'loss': 'ce'}}
    """
    from huggingface_hub import EvalResult

    task = _card_task(results.get("task"))
    if not results.get("results"):
        raise ExportError("the results hold no attack (an empty 'results' list)")
    common = {"task_type": task.task_type, "task_name": task.task_name,
              **_dataset_card_fields(results["dataset"])}
    out = []
    for metric in task.metrics:
        clean = _value(results["results"][0]["metrics"], metric.clean_key)
        if clean is not None:
            out.append(EvalResult(**common, metric_type=metric.metric_type, metric_name=metric.clean_name,
                                  metric_value=clean))
        for entry in results["results"]:
            value = _value(entry["metrics"], metric.adversarial_key)
            if value is not None:
                args = {**entry["attack"], "task_options": results.get("task_options")}
                out.append(EvalResult(**common, metric_type=metric.metric_type, metric_value=value,
                                      metric_name=f"{metric.adversarial_name} ({entry['attack']['attack']}, "
                                                  f"k={entry['k']})", metric_args=args))
    return out


def _body(results: dict) -> str:
    """The card's text: what was evaluated, and a table of clean and adversarial values."""
    task = _card_task(results["task"])
    samples = results.get("samples", {})
    head = ["attack", "k"] + [name for m in task.metrics for name in (m.clean_name, m.adversarial_name)]
    rows = []
    for entry in results["results"]:
        values = [_value(entry["metrics"], key) for m in task.metrics for key in (m.clean_key, m.adversarial_key)]
        rows.append([entry["attack"]["attack"], str(entry["k"]), *("n/a" if v is None else f"{v:.4f}" for v in values)])
    table = "\n".join("| " + " | ".join(row) + " |" for row in [head, ["---"] * len(head), *rows])
    version = results.get("versions", {}).get("hf-sparse-attack") or "(version unknown)"
    dataset = results["dataset"]
    return (f"# Sparse adversarial robustness of {results['model_name_or_path']}\n\n"
            f"{task.task_name}, evaluated with hf-sparse-attack {version} on "
            f"`{dataset.get('source')}` (split {dataset.get('split')}): {samples.get('evaluated')} samples evaluated, "
            f"{samples.get('skipped')} skipped. k counts perturbed pixels (L0); each attack's configuration is in "
            f"the `args` of its metrics above.\n\n{table}\n")


def model_card(results: dict, model_name: str | None = None) -> Any:
    """A :class:`huggingface_hub.ModelCard` of a run's ``all_results.json``: :func:`eval_results` as its
    ``model-index`` (named ``model_name``, default the run's ``model_name_or_path``) and a table of the values.

    >>> results = {"task": "segmentation", "model_name_or_path": "nvidia/mit-b0", "task_options": {},
    ...            "dataset": {"source": "scene_parse_150", "split": "validation", "config_name": None},
    ...            "samples": {"evaluated": 8, "skipped": 0},
    ...            "results": [{"k": 40, "attack": {"attack": "SparsePGD", "k": 40},
    ...                         "metrics": {"miou_clean": 0.5, "miou_adversarial": 0.125}}]}
    >>> card = model_card(results)
    >>> [(r.metric_type, r.metric_value) for r in card.data.eval_results]
    [('mean_iou', 0.5), ('mean_iou', 0.125)]
    >>> print(str(card).split("---")[1].strip().splitlines()[0:3])
    ['model-index:', '- name: nvidia/mit-b0', '  results:']
    """
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(model_name=model_name or results["model_name_or_path"], eval_results=eval_results(results))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_body(results)}")
