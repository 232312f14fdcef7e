"""``load_task``: a Hugging Face model (Hub name or local directory) as an attack objective, with clear errors.

The config is read first (no weights), so that every problem is reported before anything heavy happens and in
words that say what to do: a local-looking path that does not exist, a Hub name that cannot be reached (at once
when ``HF_HUB_OFFLINE`` is set), remote code that was not allowed, pickle weights that were not allowed, an
architecture no adapter supports, an unknown option. All of them raise :class:`TaskLoadError`, a ``ValueError``.

Nothing from a model repository runs unless asked for: ``trust_remote_code`` is off by default, and weights load
from safetensors files only unless ``allow_pickle_weights=True``.

>>> import tempfile
>>> from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil
>>> directory = tempfile.mkdtemp()
>>> ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
...     num_attention_heads=2, intermediate_size=16, num_labels=3)).save_pretrained(directory)
>>> ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(directory)  # doctest: +ELLIPSIS
[...]
>>> objective = load_task(directory, loss="margin")
>>> objective.task, objective.options, objective.model.training
('classification', ClassificationOptions(loss='margin', targeted=False), False)
>>> load_task("./no/such/model")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
hf_sparse_attack.tasks.loading.TaskLoadError: model directory './no/such/model' does not exist ...
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import torch
import transformers
from transformers.models.auto import modeling_auto
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from .base import TaskObjective
from .classification import ClassificationObjective
from .detection import DETECTION_HEADS, DetectionObjective
from .segmentation import SegmentationObjective


class TaskLoadError(ValueError):
    """The model cannot be loaded as a task objective; the message says why and how to proceed."""


def _flatten(names: dict) -> dict[str, set[str]]:
    return {t: set(v) if isinstance(v, tuple) else {v} for t, v in names.items()}


_CLASSIFIERS = _flatten(modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES)
_SEGMENTERS = _flatten(modeling_auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES)
_DETECTORS = {
    t: c for t, c in _flatten(modeling_auto.MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES).items() if t in DETECTION_HEADS
}

#: task -> (adapter, Auto class, supported model types with their head class names)
ADAPTERS: dict[str, tuple[type[TaskObjective], Any, dict[str, set[str]]]] = {
    "classification": (ClassificationObjective, transformers.AutoModelForImageClassification, _CLASSIFIERS),
    "detection": (DetectionObjective, transformers.AutoModelForObjectDetection, _DETECTORS),
    "segmentation": (SegmentationObjective, transformers.AutoModelForSemanticSegmentation, _SEGMENTERS),
}

#: The model types each task accepts (model_type of the config).
SUPPORTED: dict[str, list[str]] = {task: sorted(types) for task, (_, _, types) in ADAPTERS.items()}


def load_task(
    name_or_path: str | os.PathLike,
    task: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    allow_pickle_weights: bool = False,
    **options: Any,
) -> TaskObjective:
    """Load a model and its image processor and wrap them in the adapter of their task.

    Args:
        name_or_path: Hub name (``"org/name"``) or local directory written by ``save_pretrained``.
        task: ``"classification"``, ``"detection"`` or ``"segmentation"``; default: from the config's
            ``architectures`` (or its model type when that is unambiguous).
        device: where to put the model (default: where ``from_pretrained`` puts it, the CPU).
        dtype: parameter dtype (default float32; the attack's pixels stay float32 in ``[0, 1]``).
        trust_remote_code: allow checkpoints whose model code lives in the repository.
        allow_pickle_weights: also accept pickle checkpoints (``pytorch_model.bin``) when the model has no
            safetensors weights. transformers then reads them with ``torch.load(weights_only=True)``
            (``transformers.modeling_utils.load_state_dict``, which also checks that torch is recent enough for
            that to be safe), which unpickles tensors and plain containers only, never arbitrary objects.
        options: the adapter's options: classification ``loss`` (``"ce"``, ``"margin"``, ``"dlr"``) and
            ``targeted``; detection ``loss`` (:data:`tasks.detection.DETECTION_LOSSES`), ``score_threshold``,
            ``iou_threshold``, ``target_threshold``; segmentation ``loss``
            (:data:`hf_sparse_attack.tasks.segmentation.SEGMENTATION_LOSSES`), ``targeted``, ``adv_threshold``,
            ``ignore_index``.

    Returns the objective with the model in eval mode and its parameters frozen. Raises :class:`TaskLoadError`.
    """
    checked = check_model(name_or_path, task, trust_remote_code, allow_pickle_weights, **options)
    source, task = checked.source, checked.task
    adapter, auto_class, _ = ADAPTERS[task]
    kwargs = {"trust_remote_code": trust_remote_code, "local_files_only": checked.offline}
    try:
        # weights_only=True (transformers' default, made explicit): a pickle checkpoint, when allowed, goes through
        # modeling_utils.load_state_dict -> torch.load(weights_only=True), after check_torch_load_is_safe().
        model = auto_class.from_pretrained(
            source,
            dtype=dtype or torch.float32,
            use_safetensors=None if allow_pickle_weights else True,
            weights_only=True,
            **kwargs,
        )
        processor = transformers.AutoImageProcessor.from_pretrained(source, **kwargs)
    except (OSError, ValueError, ImportError) as err:
        if not allow_pickle_weights and any(missing in str(err) for missing in _NO_SAFETENSORS):
            raise TaskLoadError(_PICKLE_ONLY.format(source=source) + f" ({err})") from err
        raise TaskLoadError(f"could not load the {task} model or its image processor from {source!r}: {err}") from err
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    return adapter(model, processor, source, checked.options)


@dataclass(frozen=True)
class CheckedModel:
    """What :func:`check_model` learnt from a model's config: its ``task``, the raw ``config`` dict, the adapter's
    ``options``, and how to reach it (``source``, ``offline``)."""

    source: str
    task: str
    config: dict
    options: Any
    offline: bool

    @property
    def label2id(self) -> dict[str, int]:
        """Class name -> class id (from ``label2id``, else ``id2label``)."""
        if self.config.get("label2id"):
            return {name: int(i) for name, i in self.config["label2id"].items()}
        return {name: int(i) for i, name in (self.config.get("id2label") or {}).items()}

    @property
    def num_labels(self) -> int:
        """The number of classes, as ``PretrainedConfig`` counts them (``id2label``, else ``num_labels``)."""
        given = {key: self.config[key] for key in ("id2label", "num_labels") if self.config.get(key) is not None}
        return transformers.PretrainedConfig(**given).num_labels


def check_model(
    name_or_path: str | os.PathLike,
    task: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle_weights: bool = False,
    **options: Any,
) -> CheckedModel:
    """Every check of :func:`load_task` that needs no weights (same arguments, same :class:`TaskLoadError`): the
    path or Hub name, remote code, the task and model type, the options, safetensors weights in a local directory.

    Scripts call it first, so that a bad model is reported before anything heavy starts.

    >>> check_model("./no/such/model")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hf_sparse_attack.tasks.loading.TaskLoadError: model directory './no/such/model' does not exist ...
    """
    source = os.fspath(name_or_path)
    local = _local_directory(source)
    offline = _use_cache_only(source, local)
    config, remote = _checked_config(source, local, offline, trust_remote_code)
    model_type = config.get("model_type")
    task = _check_wanted_task(source, config, remote, task) if task is not None else _infer_task(source, config,
                                                                                                 remote)
    adapter, _, supported = ADAPTERS[task]
    if not remote and model_type not in supported:
        raise TaskLoadError(
            f"{source!r} has model type {model_type!r}, which the {task} adapter does not support; "
            f"supported model types: {', '.join(sorted(supported))}"
        )
    options = _options(adapter, task, options)
    if not isinstance(allow_pickle_weights, bool):
        raise TaskLoadError(f"allow_pickle_weights must be True or False, got {allow_pickle_weights!r}")
    if local is not None and not allow_pickle_weights and not any(local.glob("*.safetensors*")):
        raise TaskLoadError(_PICKLE_ONLY.format(source=source))
    return CheckedModel(source, task, config, options, offline)


#: How transformers words a missing safetensors file under ``use_safetensors=True`` (Hub repo, local directory).
_NO_SAFETENSORS = ("does not appear to have a file named", "no file named")
_PICKLE_ONLY = (
    "{source!r} has no safetensors weights (model.safetensors); pickle checkpoints such as pytorch_model.bin are "
    "refused by default because unpickling can run code. Convert the checkpoint to safetensors, or pass "
    "allow_pickle_weights=True if you trust it (it is then read with torch.load(weights_only=True))"
)


def infer_task(name_or_path: str | os.PathLike, trust_remote_code: bool = False) -> str:
    """The task ``load_task`` would pick for a model, from its config alone (no weights are read).

    Raises :class:`TaskLoadError` for the same problems as :func:`load_task` (missing path, offline, remote code).
    """
    source = os.fspath(name_or_path)
    local = _local_directory(source)
    config, remote = _checked_config(source, local, _use_cache_only(source, local), trust_remote_code)
    return _infer_task(source, config, remote)


def _checked_config(source: str, local: Path | None, offline: bool, trust_remote_code: bool) -> tuple[dict, bool]:
    """The model's config and whether it needs remote code (refused unless ``trust_remote_code``)."""
    config = _read_config(source, local, offline)
    model_type = config.get("model_type")
    remote = "auto_map" in config and model_type not in CONFIG_MAPPING_NAMES
    if remote and not trust_remote_code:
        raise TaskLoadError(
            f"{source!r} needs model code from its repository (model type {model_type!r}, auto_map "
            f"{sorted(config['auto_map'])}); pass trust_remote_code=True if you trust that code"
        )
    return config, remote


def _offline() -> bool:
    def flag(name: str) -> bool:
        return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}

    return flag("HF_HUB_OFFLINE") or flag("TRANSFORMERS_OFFLINE") or bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def _local_directory(source: str) -> Path | None:
    """The model directory if ``source`` names one; an error if it looks like a path but is not a model."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise TaskLoadError(f"{source!r} is a file; pass the model directory (with config.json) or a Hub name")
        if not (path / "config.json").is_file():
            raise TaskLoadError(
                f"{source!r} is a directory without config.json; pass a directory written by save_pretrained"
            )
        return path
    looks_local = source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1 or path.is_absolute()
    if looks_local or not source:
        raise TaskLoadError(
            f"model directory {source!r} does not exist (resolved to {path.resolve()}); check the path "
            "(a Hub name has the form 'org/name')"
        )
    return None


#: Seconds to wait for the Hub to answer a connection before saying it cannot be reached (transformers' own retries
#: take half a minute).
HUB_CONNECT_TIMEOUT = 3.0


def _hub_unreachable() -> str | None:
    """Why the Hub endpoint cannot be reached (a TCP connection within :data:`HUB_CONNECT_TIMEOUT`), else ``None``."""
    url = urllib.parse.urlparse(huggingface_hub.constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_CONNECT_TIMEOUT).close()
    except OSError as err:
        return f"{url.hostname}:{port}: {err}"
    return None


def _use_cache_only(source: str, local: Path | None) -> bool:
    """Whether to read ``source`` from the Hugging Face cache only: in offline mode, or when the Hub cannot be
    reached and the cache has the model (then without transformers' half a minute of retries). A Hub name neither
    reachable nor cached is a :class:`TaskLoadError` at once."""
    if local is not None or _offline():
        return local is None
    reason = _hub_unreachable()
    if reason is None:
        return False
    if isinstance(huggingface_hub.try_to_load_from_cache(source, transformers.utils.CONFIG_NAME), str):
        return True
    raise TaskLoadError(
        f"cannot reach the Hugging Face Hub to get {source!r} ({reason}), and it is not in the cache; check the "
        "network (or HF_ENDPOINT), or pass the path of a local copy (save_pretrained)"
    )


def _read_config(source: str, local: Path | None, offline: bool) -> dict:
    try:
        config, _ = transformers.PretrainedConfig.get_config_dict(source, local_files_only=offline)
    except (OSError, ValueError) as err:
        if local is not None:
            raise TaskLoadError(f"could not read the config in {source!r}: {err}") from err
        if offline:
            raise TaskLoadError(
                f"{source!r} is not a local directory and not in the Hugging Face cache, and offline mode is on "
                "(HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE), so the Hub was not contacted. Download it where there is "
                f"network (`hf download {source}`) or pass the path of a local copy (save_pretrained), or unset "
                "HF_HUB_OFFLINE"
            ) from err
        raise TaskLoadError(
            f"could not get {source!r} from the Hugging Face Hub ({type(err).__name__}: {str(err).splitlines()[0]}); "
            "check the name ('org/name'), the network and your access token, or pass a local directory"
        ) from err
    return config


#: What a model of each task is, for messages.
KINDS = {"classification": "an image classifier", "detection": "an object detector",
         "segmentation": "a semantic segmentation model"}


class WrongTaskError(TaskLoadError):
    """The model's head is of another task than the one asked for; ``found`` is the model's own task."""

    def __init__(self, message: str, found: str) -> None:
        super().__init__(message)
        self.found = found


def _check_wanted_task(source: str, config: dict, remote: bool, task: str) -> str:
    """``task``, once known and matching the checkpoint's head (:class:`WrongTaskError` naming both otherwise; a
    checkpoint without a head of any task may still get one of ``task``)."""
    if task not in ADAPTERS:
        raise TaskLoadError(f"unknown task {task!r}; choose one of {sorted(ADAPTERS)}")
    if not config.get("architectures") and not remote:
        return task  # no head: its model type decides what it can be loaded as
    try:
        found = _infer_task(source, config, remote)
    except TaskLoadError:
        return task
    if found != task:
        head = ", ".join(config.get("architectures") or []) or "remote code"
        raise WrongTaskError(f"{source!r} is {KINDS[found]} ({head}), not {KINDS[task]}", found)
    return task


def _infer_task(source: str, config: dict, remote: bool) -> str:
    """The task of the checkpoint's head: from ``architectures``, remote ``auto_map`` keys, or the model type."""
    architectures = config.get("architectures") or []
    for task, (_, auto_class, supported) in ADAPTERS.items():
        if remote and auto_class.__name__ in config["auto_map"]:
            return task
        if any(a in names for a in architectures for names in supported.values()):
            return task
    model_type = config.get("model_type")
    tasks = [task for task, types in SUPPORTED.items() if model_type in types]
    if architectures or not tasks:
        what = ", ".join(architectures) or f"model of type {model_type!r}"
        raise TaskLoadError(
            f"{source!r} is a {what}, which no adapter supports; supported model types: "
            + "; ".join(f"{task}: {', '.join(types)}" for task, types in SUPPORTED.items())
            + (f" (pass task= one of {tasks} to load it with a new head)" if tasks else "")
        )
    if len(tasks) > 1:
        raise TaskLoadError(
            f"cannot tell the task of {source!r} (model type {model_type!r}, no architectures in its config); "
            f"pass task= one of {tasks}"
        )
    return tasks[0]


def _options(adapter: type[TaskObjective], task: str, options: dict) -> Any:
    try:
        return adapter.options_class(**options)
    except TypeError as err:
        allowed = ", ".join(adapter.options_class.__dataclass_fields__)
        unknown = ", ".join(sorted(set(options) - set(adapter.options_class.__dataclass_fields__)))
        raise TaskLoadError(f"the {task} task does not take the option(s) {unknown}; its options: {allowed}") from err
    except ValueError as err:
        raise TaskLoadError(f"bad {task} option: {err}") from err
