"""The attack flags shared by every script and command, and the attack configs they build.

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
from hf_sparse_attack.saa import PRESETS

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


#: ``--attack`` name -> builder of the attack config for one budget ``k``.
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


def add_attack_arguments(attack: argparse._ArgumentGroup) -> None:
    """The attack flags (``--attack --k --steps --queries --preset ... --seed``) that :func:`attack_configs` reads."""
    attack.add_argument("--attack", default="spgd", choices=sorted(ATTACKS),
                        help="spgd: Sparse-PGD; rs: Sparse-RS; saa: Sparse-AutoAttack")
    attack.add_argument("--k", type=int, nargs="+", default=[10],
                        help="budgets (pixels, or kernel placements with --kernel); several give a curve")
    attack.add_argument("--steps", type=int, default=100, help="sPGD iterations (spgd; saa --preset custom)")
    attack.add_argument("--queries", type=int, default=1000, help="Sparse-RS queries (rs; saa --preset custom)")
    attack.add_argument("--preset", default="standard", choices=(*PRESETS, "custom"),
                        help="saa cascade (its version): standard, fast, or custom: sPGD unprojected then projected "
                             "(--steps each), then Sparse-RS (--queries)")
    attack.add_argument("--epsilon", type=float, default=1.0, help="sPGD L-inf bound of a perturbed pixel")
    attack.add_argument("--p_init", type=float, default=0.8, help="Sparse-RS initial resampled fraction")
    attack.add_argument("--kernel", help="structured sparsity: square:N, line:N[:vertical|diagonal|antidiagonal], "
                        "cross:N, diamond:N, heart:N, star:N, letter:C:N, or a binary image path")
    attack.add_argument("--stride", type=int, default=1, help="kernel placement grid step")
    attack.add_argument("--unprojected", dest="unprojected", action="store_true", default=True,
                        help="sPGD magnitude step with the unprojected gradient (default)")
    attack.add_argument("--projected", dest="unprojected", action="store_false",
                        help="sPGD magnitude step with the projected (sparse) gradient")
    attack.add_argument("--seed", type=int, default=0, help="attack seed; each sample's from (seed, sample id)")
