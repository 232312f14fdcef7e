"""Processes: the accelerator (CPU processes when there is no CUDA), logging, and metric syncing across ranks."""

from __future__ import annotations

import argparse
import logging
import warnings
from typing import Any

import torch


def setup(args: argparse.Namespace):
    """The accelerator (CPU processes when there is no CUDA, see ENVIRONMENT.md) and torch threads; the libraries'
    messages and progress bars on the local main process only."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if not accelerator.is_local_main_process:
        import datasets
        import transformers

        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    if accelerator.device.type == "cpu":
        torch.set_num_threads(args.num_threads or 1)
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
