"""The attack configs built from the attack flags (:mod:`.attack_flags`): one per budget ``--k``.

>>> import argparse
>>> from hf_sparse_attack.evaluation.harness.attack_flags import add_attack_arguments
>>> parser = argparse.ArgumentParser()
>>> add_attack_arguments(parser)
>>> [f"{type(a).__name__}(k={a.k})" for a in attack_configs(parser.parse_args(["--attack", "rs", "--k", "1", "4"]))]
['SparseRS(k=1)', 'SparseRS(k=4)']

>>> parse_kernel("line:3:vertical")
tensor([[1.],
        [1.],
        [1.]])
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from torch import Tensor

from hf_sparse_attack import SparseAutoAttack, SparsePGD, SparseRS, kernels

from .command_line import UsageError


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None


def _shape(name: str) -> Callable[[str], Tensor]:
    return lambda size: kernels.shape(name, _int(size))


#: ``--kernel`` name -> builder from the ``:``-separated parameters.
KERNELS: dict[str, Callable[..., Tensor]] = {
    "square": lambda size: kernels.square(_int(size)),
    "line": lambda length, orientation="horizontal": kernels.line(_int(length), orientation),
    "letter": lambda char, size: kernels.letter(char, _int(size)),
    **{name: _shape(name) for name in kernels.SHAPES},
}


def parse_kernel(spec: str) -> Tensor:
    """A structure kernel from ``square:N``, ``line:N[:orientation]``, a shape ``cross:N`` (``diamond``, ``heart``,
    ``star``), ``letter:C:N``, or the path of a binary image (see :mod:`hf_sparse_attack.kernels`)."""
    if os.path.isfile(spec):
        try:
            return kernels.from_image(spec)
        except (OSError, ValueError) as err:
            raise UsageError(f"bad kernel image {spec!r}: {err}") from None
    name, *params = spec.split(":")
    if name not in KERNELS:
        raise UsageError(f"unknown kernel {spec!r}: use square:N, line:N[:orientation], {':N, '.join(kernels.SHAPES)}"
                         ":N, letter:C:N or the path of a binary image")
    try:
        return KERNELS[name](*params)
    except TypeError:
        raise UsageError(f"bad kernel {spec!r}: wrong number of ':'-separated parameters") from None
    except (ValueError, RuntimeError) as err:  # RuntimeError: a size too large to allocate
        raise UsageError(f"bad kernel {spec!r}: {str(err).splitlines()[0]}") from None


def _spgd(args: argparse.Namespace, k: int, shared: dict) -> SparsePGD:
    return SparsePGD(k=k, steps=args.steps, epsilon=args.epsilon, unprojected=args.unprojected, **shared)


def _rs(args: argparse.Namespace, k: int, shared: dict) -> SparseRS:
    return SparseRS(k=k, queries=args.queries, p_init=args.p_init, **shared)


def _saa(args: argparse.Namespace, k: int, shared: dict) -> SparseAutoAttack:
    if args.preset != "custom":
        return SparseAutoAttack(k=k, version=args.preset, **shared)
    stages = (
        SparsePGD(k=k, steps=args.steps, epsilon=args.epsilon, unprojected=True, **shared),
        SparsePGD(k=k, steps=args.steps, epsilon=args.epsilon, unprojected=False, **shared),
        SparseRS(k=k, queries=args.queries, p_init=args.p_init, **shared),
    )
    return SparseAutoAttack(k=k, version="custom", attacks=stages, **shared)


#: ``--attack`` name (:data:`.attack_flags.ATTACK_NAMES`) -> builder of the attack config for one budget ``k``.
ATTACKS: dict[str, Callable[[argparse.Namespace, int, dict], Any]] = {"spgd": _spgd, "rs": _rs, "saa": _saa}


def attack_configs(args: argparse.Namespace) -> list:
    """One attack config per ``--k``, built from the attack flags; :class:`UsageError` for bad values."""
    if len(set(args.k)) != len(args.k):
        raise UsageError(f"--k lists a budget twice: {args.k}")
    shared = {"seed": args.seed, "kernel": parse_kernel(args.kernel) if args.kernel else None, "stride": args.stride}
    try:
        return [ATTACKS[args.attack](args, k, shared) for k in args.k]
    except ValueError as err:
        raise UsageError(f"bad attack setting: {err}") from None
