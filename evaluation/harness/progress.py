"""Progress bars that move with the attack's forward passes, so that no bar sits still through a long batch.

:func:`attack_length` is the most forward passes an attack config makes on a batch (sPGD's steps, Sparse-RS's
queries, the sum over a cascade's stages, plus the clean check); :class:`AttackProgress` wraps an objective so
that each forward pass the attack makes advances a ``tqdm`` bar by one, and completes the attack's share when it
returns (samples that succeed early end the attack before its last step).

>>> from hf_sparse_attack import SparsePGD, SparseRS, SparseAutoAttack
>>> attack_length(SparsePGD(steps=100)), attack_length(SparseRS(queries=50)), attack_length(SparseAutoAttack(
...     k=4, version="fast"))
(101, 51, 1604)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

#: The objective's methods through which the attacks make their forward passes.
_FORWARD = ("loss_success_score", "loss_and_success", "loss")


def attack_length(attack: Any) -> int:
    """The most forward passes of ``attack`` (a config of :mod:`hf_sparse_attack`) on one batch."""
    stages = getattr(attack, "stages", None)
    if stages is not None:
        return 1 + sum(attack_length(stage) for stage in stages)
    return 1 + (attack.steps if hasattr(attack, "steps") else attack.queries)


class AttackProgress:
    """The objective ``objective`` seen through a bar: each forward pass advances ``bar`` by one.

    Use :meth:`running` around one attack call: the bar then ends at the attack's full :func:`attack_length`,
    whatever the number of passes it made.
    """

    def __init__(self, objective: Any, bar: Any) -> None:
        self._objective, self._bar = objective, bar
        self._passes, self._length = 0, 0

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._objective, name)
        if name not in _FORWARD:
            return value

        def counted(*args: Any, **kwargs: Any) -> Any:
            if self._passes < self._length:
                self._passes += 1
                self._bar.update(1)
            return value(*args, **kwargs)

        return counted

    @contextlib.contextmanager
    def running(self, attack: Any) -> Iterator[AttackProgress]:
        """Count the passes of one ``attack`` call; top the bar up to its length when it returns."""
        self._passes, self._length = 0, attack_length(attack)
        yield self
        self._bar.update(self._length - self._passes)
