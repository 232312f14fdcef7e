"""Where and in which precision a run computes: ``--device``, ``--torch_dtype``, ``--mixed_precision`` and the
process-group ``--ddp_timeout`` (Hugging Face's flag names), the same on every command.

The flags are torch-free; :func:`torch_dtype` and :func:`autocast` read them at run time. ``--torch_dtype`` is the
dtype of the model's weights (the attack state and the pixels stay float32); ``--mixed_precision`` runs the
forward passes under autocast (default: accelerate's own setting, e.g. ``accelerate launch --mixed_precision bf16``,
else none). ``all_results.json`` records what was used.

>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> add_device_arguments(parser)
>>> args = parser.parse_args(["--torch_dtype", "bfloat16"])
>>> args.device, torch_dtype(args), args.ddp_timeout
('auto', torch.bfloat16, 10800)
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

TORCH_DTYPES = ("auto", "float32", "bfloat16", "float16")
MIXED_PRECISIONS = ("no", "bf16", "fp16")
#: Seconds a process waits at a collective for the others (NCCL's default, 10 minutes, is shorter than one
#: process's attack on an uneven share or the main process's COCOeval and pictures).
DDP_TIMEOUT = 3 * 3600


def add_device_arguments(group: argparse._ArgumentGroup, processes: bool = True) -> None:
    """The device flags; ``processes`` adds ``--ddp_timeout`` (the commands that run under ``accelerate``)."""
    group.add_argument("--device", default="auto", help="auto (default: CUDA when available, else the CPU), cpu, "
                       "cuda" + ("" if processes else " or cuda:N"))
    group.add_argument("--torch_dtype", default="float32", choices=TORCH_DTYPES,
                       help="dtype of the model's weights; auto: the checkpoint's (default float32; the attack's "
                       "state and pixels stay float32)")
    group.add_argument("--mixed_precision", choices=MIXED_PRECISIONS,
                       help="autocast the model's forward passes to bf16 or fp16 (default: accelerate's setting, "
                       "e.g. accelerate launch --mixed_precision bf16; otherwise no)")
    if processes:
        group.add_argument("--ddp_timeout", type=int, default=DDP_TIMEOUT,
                           help=f"seconds a process waits for the others at a collective (default {DDP_TIMEOUT})")


def torch_dtype(args: argparse.Namespace) -> Any:
    """``--torch_dtype`` as ``load_task`` takes it: a ``torch.dtype``, or ``"auto"``."""
    import torch

    return "auto" if args.torch_dtype == "auto" else getattr(torch, args.torch_dtype)


def autocast(device: Any, mixed_precision: str | None) -> contextlib.AbstractContextManager:
    """The autocast context of ``mixed_precision`` (``"bf16"``, ``"fp16"``) on ``device``; none for ``"no"``."""
    import torch

    if mixed_precision in (None, "no"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
