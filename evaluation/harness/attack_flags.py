"""The attack flags shared by every script and command (torch-free: ``--help`` imports no model code).

:func:`~.attack_configs.attack_configs` turns the parsed flags into attack configs.

>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> add_attack_arguments(parser)
>>> parser.parse_args(["--attack", "rs", "--k", "1", "4"]).k
[1, 4]
"""

from __future__ import annotations

import argparse

from hf_sparse_attack.vocabulary import SAA_PRESETS

#: The ``--attack`` names: Sparse-PGD, Sparse-RS, Sparse-AutoAttack.
ATTACK_NAMES = ("rs", "saa", "spgd")


def add_attack_arguments(attack: argparse._ArgumentGroup) -> None:
    """The attack flags (``--attack --k --steps --queries --preset ... --seed``) that :func:`attack_configs` reads."""
    attack.add_argument("--attack", default="spgd", choices=ATTACK_NAMES,
                        help="spgd: Sparse-PGD; rs: Sparse-RS; saa: Sparse-AutoAttack")
    attack.add_argument("--k", type=int, nargs="+", default=[10],
                        help="budgets (pixels, or kernel placements with --kernel); several give a curve")
    attack.add_argument("--steps", type=int, default=100, help="sPGD iterations (spgd; saa --preset custom)")
    attack.add_argument("--queries", type=int, default=1000, help="Sparse-RS queries (rs; saa --preset custom)")
    attack.add_argument("--preset", default="standard", choices=(*SAA_PRESETS, "custom"),
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
