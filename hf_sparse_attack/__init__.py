"""hf_sparse_attack: model-agnostic sparse (L0 / group-L0) adversarial attacks on images in [0, 1].

The names below load on first use (PEP 562), so that ``import hf_sparse_attack`` and the command line's ``--help``
do not import torch.

>>> import hf_sparse_attack
>>> hf_sparse_attack.SparsePGD(k=4).k
4
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import attach

#: Submodule -> the public names it defines (a submodule named after itself is the submodule).
_EXPORTS = {
    "kernels": ("kernels",),
    "losses": ("CLASSIFICATION_LOSSES", "classification_loss"),
    "objective": ("ClassifierObjective", "Measurement", "NonFiniteModelError", "Objective", "as_objective", "measure",
                  "select"),
    "result": ("AttackResult", "AuditError", "audit"),
    "rs": ("SparseRS",),
    "saa": ("CascadeResult", "SparseAutoAttack"),
    "spgd": ("SparsePGD",),
    "structure": ("Structure",),
    "training": ("SparseAdversarialTraining",),
}
__all__, __getattr__, __dir__ = attach(__name__, _EXPORTS)

if TYPE_CHECKING:  # what the names are, for type checkers and IDEs
    from . import kernels
    from .losses import CLASSIFICATION_LOSSES, classification_loss
    from .objective import (
        ClassifierObjective,
        Measurement,
        NonFiniteModelError,
        Objective,
        as_objective,
        measure,
        select,
    )
    from .result import AttackResult, AuditError, audit
    from .rs import SparseRS
    from .saa import CascadeResult, SparseAutoAttack
    from .spgd import SparsePGD
    from .structure import Structure
    from .training import SparseAdversarialTraining
