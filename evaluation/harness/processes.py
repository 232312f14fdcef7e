"""Processes: the accelerator (CPU processes when there is no CUDA), logging, and metric syncing across ranks."""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from .command_line import UsageError, default_threads
from .device_flags import MIXED_PRECISIONS


def setup(args: argparse.Namespace, training: bool = False):
    """The accelerator and torch threads; the libraries' messages and progress bars on the local main process only.

    ``--device auto`` takes CUDA when available, else CPU processes (see ENVIRONMENT.md); collectives wait
    ``--ddp_timeout`` seconds. ``args.mixed_precision`` becomes the precision in effect (the flag, else accelerate's
    setting ``ACCELERATE_MIXED_PRECISION``, else ``"no"``): the loop autocasts with it
    (:func:`.device_flags.autocast`); for a ``training`` run accelerate applies it to the prepared model (autocast,
    and fp16 gradient scaling). :class:`UsageError` for a device this machine lacks.
    """
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    cuda = torch.cuda.is_available()
    if args.device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda (each process takes its own GPU), got {args.device!r}")
    if args.device == "cuda" and not cuda:
        raise UsageError("--device cuda: CUDA is not available on this machine; use --device cpu or auto")
    if args.ddp_timeout < 1:
        raise UsageError(f"--ddp_timeout must be a positive number of seconds, got {args.ddp_timeout}")
    args.mixed_precision = args.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if args.mixed_precision not in MIXED_PRECISIONS:
        raise UsageError(f"mixed precision must be one of {', '.join(MIXED_PRECISIONS)}, got {args.mixed_precision!r}")
    timeout = datetime.timedelta(seconds=args.ddp_timeout)
    accelerator = Accelerator(cpu=args.device == "cpu" or not cuda, mixed_precision=args.mixed_precision if training
                              else None, kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)])
    if not accelerator.is_local_main_process:
        import datasets
        import transformers

        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    if accelerator.device.type == "cpu":
        torch.set_num_threads(args.num_threads or default_threads())
    elif args.num_threads:
        torch.set_num_threads(args.num_threads)
    return accelerator


def start_logging() -> None:
    """INFO messages on stderr, once the checks have passed (until then an error is the only line printed)."""
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO)


def compute_all(metrics: dict[Any, Any]) -> dict[Any, Any]:
    """``metric.compute()`` of each value (syncing across processes). A process that fed no record (an idle
    process, or a run whose samples were all skipped, which :func:`summary` reports) computes silently."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The ``compute`` method of metric .* before the ``update``")
        return {key: metric.compute() for key, metric in metrics.items()}


def metric_group(accelerator: Any) -> Any:
    """The process group metrics sync over. Metrics stay on the CPU in float64 (exact counts, boxes and ids;
    COCOeval runs there anyway), so with a non-gloo backend (NCCL on GPUs) they get a gloo group of their own.
    Every process must call this at the same point (creating a group is collective)."""
    import torch.distributed as dist

    if accelerator.num_processes == 1 or dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")


#: The file the main process writes in ``--output_dir`` for the other processes to find (:func:`check_shared_dir`).
SHARED_MARKER = ".hf_sparse_attack_shared"


def check_shared_dir(accelerator: Any, path: str | os.PathLike) -> None:
    """Every process: check that all see the same directory ``path`` (the records are gathered through it, so on
    several machines it must be on a shared file system). The main process writes a marker holding a fresh token;
    each process reads it back; all raise the same :class:`UsageError` naming the processes that do not see it."""
    import uuid

    from accelerate.utils import broadcast_object_list, gather_object

    if accelerator.num_processes == 1:
        return
    marker = Path(path) / SHARED_MARKER
    token = [uuid.uuid4().hex if accelerator.is_main_process else None]
    if accelerator.is_main_process:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(token[0])
    broadcast_object_list(token)  # also a barrier: the marker is written before anyone reads it
    try:
        seen = marker.read_text() == token[0]
    except OSError:
        seen = False
    blind = [rank for rank, ok in enumerate(gather_object([seen])) if not ok]
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker.unlink(missing_ok=True)
    if blind:
        raise UsageError(f"process(es) {blind} do not see the main process's --output_dir {str(path)!r}: every "
                         "process writes its records there, so on several machines it must be a shared file system")
