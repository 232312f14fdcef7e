"""Count host synchronisations on any device, CPU included, by watching torch calls.

On a GPU every operation that needs a tensor's values on the host (``item``, ``tolist``, ``bool(t)``, ``.cpu()``,
``nonzero``, boolean-mask indexing, ...) waits for all queued kernels: a few per iteration make the attack
latency-bound. This counter treats every tensor as if it lived on an accelerator, so a CPU test can assert the
count a CUDA run would pay. It is conservative: ``t.to(device)`` counts as a transfer even when ``t`` is there
already, and ``torch.tensor(values, device=...)`` counts as a host-to-device copy. A ``to`` with
``non_blocking=True`` is not counted: the host queues the copy and goes on. The library makes such copies only from
the host to the device (from pinned memory on CUDA); a non-blocking copy to the host would need a wait before its
values are read, which this counter cannot see, so none may be written.

>>> import torch
>>> x = torch.rand(4)
>>> with HostSyncCounter() as syncs:
...     y = x * 2                      # stays on the device
...     flag = bool((y > 1).any())     # one sync
...     rows = (y > 1).nonzero()       # one sync
...     index = torch.arange(3)        # made on the host ...
...     sent = index.to(x.device)      # ... and sent, waited for: one sync
...     queued = index.to(x.device, non_blocking=True)  # queued: none
>>> syncs.count, sorted(syncs.by_name)
(3, ['__bool__', 'nonzero', 'to'])
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_HOST_READS = frozenset({
    "item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__",
    "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount", "repeat_interleave",
    "histc", "equal", "allclose",
})
_INDEXING = frozenset({"__getitem__", "__setitem__", "index_put", "index_put_"})


def _has_mask(index: Any) -> bool:
    """Whether an indexing key holds a boolean tensor (the gather needs its count of True on the host)."""
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool and i.dim() > 0 for i in items)


def _moves_device(args: tuple, kwargs: dict) -> bool:
    """Whether a ``Tensor.to`` call names a device (a dtype-only cast stays on the device)."""
    values = list(args[1:]) + [kwargs.get("device")]
    return any(isinstance(v, (torch.device, str, int)) and not isinstance(v, bool) for v in values if v is not None)


def is_host_sync(name: str, args: tuple, kwargs: dict) -> bool:
    """Whether the torch call ``name(*args, **kwargs)`` makes the host wait for the device."""
    if name in _HOST_READS:
        return True
    if name == "where":
        return len(args) == 1 and not kwargs
    if name in _INDEXING:
        return len(args) > 1 and _has_mask(args[1])
    if name == "to":
        return _moves_device(args, kwargs) and not kwargs.get("non_blocking", False)
    if name in ("tensor", "as_tensor"):
        return kwargs.get("device") is not None and not isinstance(args[0] if args else None, torch.Tensor)
    return False


class HostSyncCounter(TorchFunctionMode):
    """Context manager counting the host synchronisations of the torch calls made inside it.

    ``count`` is the total, ``by_name`` a :class:`collections.Counter` per torch function name.
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_name: Counter[str] = Counter()

    @property
    def count(self) -> int:
        return sum(self.by_name.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if is_host_sync(name, args, kwargs):
            self.by_name[name] += 1
        return func(*args, **kwargs)
