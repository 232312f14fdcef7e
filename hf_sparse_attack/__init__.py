"""hf_sparse_attack: model-agnostic sparse (L0 / group-L0) adversarial attacks on images in [0, 1]."""

from . import kernels
from .losses import CLASSIFICATION_LOSSES, classification_loss
from .objective import ClassifierObjective, Objective, as_objective, evaluate, select
from .result import AttackResult, AuditError, audit
from .spgd import SparsePGD
from .structure import Structure

__all__ = [
    "AttackResult",
    "AuditError",
    "CLASSIFICATION_LOSSES",
    "ClassifierObjective",
    "Objective",
    "SparsePGD",
    "Structure",
    "as_objective",
    "audit",
    "classification_loss",
    "evaluate",
    "kernels",
    "select",
]
