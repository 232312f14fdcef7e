"""Small models shipped inside the package, trained by the scripts next to this file on generated shapes.

=============  =======================================  ================================================
name           model                                    task (through :func:`hf_sparse_attack.tasks.load_task`)
=============  =======================================  ================================================
``classifier`` ``ResNetForImageClassification`` 64x64   which shape: circle, square or triangle
``detector``   ``ConditionalDetrForObjectDetection``    boxes of 1-3 shapes (3 classes)
``segmenter``  ``SegformerForSemanticSegmentation``     background + 3 shape classes per pixel
=============  =======================================  ================================================

Data: :mod:`evaluation.testdata.shapes`; held-out quality and how each was trained: ``README.md`` in this folder and
``training_summary.json`` next to each model's weights.

>>> MODELS["detector"]
'detection'
>>> model_path("resnet")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: unknown embedded model 'resnet'; choose one of classifier, detector, segmenter
"""

from __future__ import annotations

from pathlib import Path

#: Folder holding one sub-folder per shipped model.
MODELS_DIR = Path(__file__).resolve().parent / "models"
#: The shipped models and their task.
MODELS: dict[str, str] = {"classifier": "classification", "detector": "detection", "segmenter": "segmentation"}


def model_path(name: str) -> Path:
    """The directory of shipped model ``name`` (for ``tasks.load_task`` or ``from_pretrained``).

    Raises ``ValueError`` for an unknown name and ``FileNotFoundError`` when the weights are not there (a source
    checkout without them, or an install that left out the package data), saying how to rebuild them.
    """
    if name not in MODELS:
        raise ValueError(f"unknown embedded model {name!r}; choose one of {', '.join(MODELS)}")
    path = MODELS_DIR / name
    missing = [f for f in ("config.json", "model.safetensors", "preprocessor_config.json") if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the embedded {name} is not installed: {', '.join(missing)} missing in {path}; retrain it with "
            f"`python -m evaluation.embedded.train_{name}` or reinstall the package with its package data"
        )
    return path


def load(name: str, **options):
    """``tasks.load_task(model_path(name), **options)``: the shipped model as an attack objective."""
    from hf_sparse_attack.tasks import load_task

    return load_task(model_path(name), **options)


__all__ = ["MODELS", "MODELS_DIR", "load", "model_path"]
