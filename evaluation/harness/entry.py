"""What the evaluation and transfer scripts run: the flags are parsed torch-free (``--help`` and usage errors
answer at once), then the task's :class:`~.task_spec.TaskSpec` is loaded and the evaluation loop runs.

>>> type(load_spec("detection")).__name__
'DetectionSpec'
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .command_line import Parser, run_script
from .script_flags import build_parser

if TYPE_CHECKING:
    from .task_spec import TaskSpec

#: Task -> the class of its spec, in :mod:`.specs`.
SPECS = {"classification": "ClassificationSpec", "detection": "DetectionSpec", "segmentation": "SegmentationSpec"}


def load_spec(task: str) -> TaskSpec:
    """The spec of ``task`` (one of :data:`SPECS`)."""
    return getattr(importlib.import_module(f"{__package__}.specs.{task}"), SPECS[task])()


def evaluate(task: str, args) -> dict | None:
    """Run the evaluation of ``task`` with the parsed flags ``args``; the results on the main process."""
    from .loop import run_evaluation

    return run_evaluation(load_spec(task), args)


def evaluation_main(task: str, description: str, argv: Sequence[str] | None = None) -> dict | None:
    """The ``main`` of the script of ``task``: parse ``argv`` (default ``sys.argv[1:]``), then run."""
    return run_script(build_parser(task, description), lambda args: evaluate(task, args), argv)


def transfer(task: str, args) -> dict | None:
    """Run the transferability evaluation of ``task`` with the parsed flags ``args``."""
    from .transfer import transfer as run_transfer

    return run_transfer(load_spec(task), args)


def transfer_main(description: str, argv: Sequence[str] | None = None) -> dict | None:
    """The ``main`` of the transfer script: ``--task`` (default classification) decides the task's flags."""
    choose = Parser(add_help=False)
    choose.add_argument("--task", choices=sorted(SPECS), default="classification")
    task = choose.parse_known_args(argv)[0].task
    parser = build_parser(task, description, transfer=True)
    parser.add_argument("--task", choices=sorted(SPECS), default="classification",
                        help="the task of every model (default classification)")
    return run_script(parser, lambda args: transfer(task, args), argv)
