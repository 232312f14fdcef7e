"""Per-sample randomness: one ``torch.Generator`` per sample, seeded from the attack seed and the sample id.

A sample's random draws therefore do not depend on the batch it is in, nor on how many processes share a dataset.

>>> gens = sample_generators(seed=0, ids=[7, 7], device="cpu")
>>> a, b = randn(gens, (2,))
>>> bool((a == b).all())
True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def sample_seed(seed: int, sample_id: int, stream: int = 0) -> int:
    """A 63-bit seed mixing the attack ``seed``, the ``sample_id`` and a ``stream`` number (e.g. a stage index)."""
    return _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ (sample_id & _MASK64)) ^ stream) >> 1


def sample_ids(ids: Tensor | Sequence[int] | None, batch: int) -> list[int]:
    """Validate ``ids`` (one integer per sample) or default to positions ``0..batch-1``."""
    if ids is None:
        return list(range(batch))
    values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    if len(values) != batch:
        raise ValueError(f"ids has {len(values)} entries but the batch has {batch} samples")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError("ids must be integers (one sample id per sample)")
    return values


def sample_generators(seed: int, ids: Sequence[int], device: torch.device | str, stream: int = 0) -> list:
    """One generator per sample id, on ``device``."""
    gens = []
    for sample_id in ids:
        g = torch.Generator(device=device)
        g.manual_seed(sample_seed(seed, sample_id, stream))
        gens.append(g)
    return gens


def randn(gens: Sequence[torch.Generator], shape: tuple, dtype: torch.dtype = torch.float32) -> Tensor:
    """Stack of standard normal draws of ``shape``, one per generator, on the generators' device."""
    return torch.stack([torch.randn(shape, generator=g, device=g.device, dtype=dtype) for g in gens])


def rand(gens: Sequence[torch.Generator], shape: tuple, dtype: torch.dtype = torch.float32) -> Tensor:
    """Stack of uniform ``[0, 1)`` draws of ``shape``, one per generator."""
    return torch.stack([torch.rand(shape, generator=g, device=g.device, dtype=dtype) for g in gens])
