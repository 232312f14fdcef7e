"""hf_sparse_attack: model-agnostic sparse (L0 / group-L0) adversarial attacks on images in [0, 1]."""

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

__all__ = [
    "CLASSIFICATION_LOSSES",
    "AttackResult",
    "AuditError",
    "CascadeResult",
    "ClassifierObjective",
    "Measurement",
    "NonFiniteModelError",
    "Objective",
    "SparseAdversarialTraining",
    "SparseAutoAttack",
    "SparsePGD",
    "SparseRS",
    "Structure",
    "as_objective",
    "audit",
    "classification_loss",
    "kernels",
    "measure",
    "select",
]
