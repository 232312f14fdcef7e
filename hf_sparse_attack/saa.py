"""Sparse-AutoAttack (Zhong & Liu, arXiv 2405.05075): a cascade of sparse attacks under one budget ``k``.

The published cascade runs Sparse-PGD with the unprojected gradient, then Sparse-PGD with the projected gradient on
the samples still robust, then Sparse-RS on the samples still robust after that. Named presets make a reported
number reproducible from its name; ``version="custom"`` runs an explicit list of attack configs instead.

>>> import torch
>>> torch.manual_seed(0) and None
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
>>> x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
>>> result = SparseAutoAttack(k=5, version="fast")(model, x, y)
>>> len(result.robust_accuracy_per_stage), bool((result.l0 <= 5).all())
(4, True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor

from . import rng
from .config import KernelSpec, build_structure, check_config
from .objective import as_objective, measure, require_finite, select
from .result import AttackResult, AuditError, assemble, audit
from .rs import SparseRS
from .spgd import SparsePGD
from .structure import Structure
from .validation import check_images, check_targets

Attack = Union[SparsePGD, SparseRS]

#: The stages of each named cascade: an attack class and its settings (budget, goal and seed are the cascade's).
#: ``standard`` follows the authors' evaluation (sPGD 10000 steps each, Sparse-RS 10000 queries, ``p_init`` 0.8);
#: ``fast`` is a cheap first look (300 steps each, 1000 queries).
PRESETS: dict[str, tuple[tuple[type, dict], ...]] = {
    "standard": (
        (SparsePGD, {"steps": 10000, "unprojected": True}),
        (SparsePGD, {"steps": 10000, "unprojected": False}),
        (SparseRS, {"queries": 10000, "p_init": 0.8}),
    ),
    "fast": (
        (SparsePGD, {"steps": 300, "unprojected": True}),
        (SparsePGD, {"steps": 300, "unprojected": False}),
        (SparseRS, {"queries": 1000, "p_init": 0.8}),
    ),
}
VERSIONS = (*PRESETS, "custom")

CLEAN, ROBUST = 0, -1  # values of CascadeResult.stage besides the stage numbers 1, 2, ...
_STREAM = 2  # rng stream deriving the stage seeds from the cascade seed


@dataclass(frozen=True, kw_only=True)
class CascadeResult(AttackResult):
    """An :class:`AttackResult` with the cascade's record.

    Attributes:
        stage: ``(B,)`` long: ``0`` already fooled by the clean image, ``i >= 1`` fooled by stage ``i``, ``-1``
            robust to every stage.
        robust_accuracy_per_stage: robust accuracy on the clean images, then after each stage (length stages + 1).

    ``iterations`` sums each sample's work over the stages it ran in (sPGD steps plus Sparse-RS queries); a robust
    sample's adversarial image, loss, score and groups are those of the stage whose image scored best (the clean
    image if none beat it), so a later, weaker stage never replaces a better image.
    """

    stage: Tensor
    robust_accuracy_per_stage: tuple[float, ...]


@dataclass(frozen=True)
class SparseAutoAttack:
    """Sparse-AutoAttack configuration; call it as ``attack(model_or_objective, x, targets, ids=None)``.

    Args:
        k: budget shared by every stage: pixels, or kernel placements with ``kernel``.
        version: a preset name from :data:`PRESETS` (``"standard"``, ``"fast"``) or ``"custom"``.
        attacks: with ``version="custom"`` only: the stages, :class:`SparsePGD` / :class:`SparseRS` configs with
            this cascade's ``k``, ``kernel``, ``stride`` and ``targeted``.
        seed: the cascade's one seed: stage ``i`` runs with a seed derived from ``(seed, i)`` (replacing the seed of
            a custom config), so stages never repeat each other's random draws. See :attr:`stages`.
        loss: plain classifiers only, for the preset stages (a custom config brings its own).
        targeted: plain classifiers only; ``targets`` are then target classes.
        kernel: binary kernel for structured sparsity; ``k`` counts placements on a grid of step ``stride``.
        stride: placement grid step for ``kernel``.
        quantize: the preset sPGD stages keep perturbed values on the 8-bit grid (Sparse-RS always does: its colours
            are corners of the colour cube).
    """

    k: int
    version: str = "standard"
    attacks: tuple[Attack, ...] | None = None
    seed: int = 0
    loss: str | None = None
    targeted: bool = False
    kernel: KernelSpec | None = None
    stride: int = 1
    quantize: bool = True

    def __post_init__(self) -> None:
        check_config(self, positive=("k", "stride"), flags=("targeted", "quantize"))
        if self.version not in VERSIONS:
            raise ValueError(f"unknown version {self.version!r}; allowed: {list(VERSIONS)}")
        if self.version != "custom":
            if self.attacks is not None:
                raise ValueError(f"attacks= lists the stages of a custom cascade; pass version='custom' with it "
                                 f"(version={self.version!r} is a preset with its own stages)")
            return
        if self.loss is not None:
            raise ValueError("loss= configures the preset stages; a custom cascade takes each loss from its configs")
        if not isinstance(self.attacks, (list, tuple)) or not self.attacks:
            raise ValueError(f"version='custom' needs a non-empty list of attack configs, got {self.attacks!r}")
        for i, attack in enumerate(self.attacks, 1):
            if not isinstance(attack, (SparsePGD, SparseRS)):
                raise ValueError(f"stage {i} must be a SparsePGD or SparseRS config, got {type(attack).__name__}")
            for name in ("k", "kernel", "stride", "targeted"):
                if getattr(attack, name) != getattr(self, name):
                    raise ValueError(f"stage {i} has {name}={getattr(attack, name)!r} but the cascade has "
                                     f"{name}={getattr(self, name)!r}: every stage must share the budget and goal")
        object.__setattr__(self, "attacks", tuple(self.attacks))

    @property
    def stages(self) -> tuple[Attack, ...]:
        """The attack configs the cascade runs, in order, each with its derived seed."""
        if self.version == "custom":
            configs = self.attacks
        else:
            shared = {"k": self.k, "loss": self.loss, "targeted": self.targeted, "kernel": self.kernel,
                      "stride": self.stride}
            configs = tuple(cls(**shared, **settings, **({"quantize": self.quantize} if cls is SparsePGD else {}))
                            for cls, settings in PRESETS[self.version])
        return tuple(dataclasses.replace(attack, seed=rng.sample_seed(self.seed, i, _STREAM))
                     for i, attack in enumerate(configs, 1))

    def __call__(self, model: Any, x: Tensor, targets: Any, ids: Sequence[int] | Tensor | None = None) -> CascadeResult:
        """Attack the batch ``x (B, C, H, W)`` in ``[0, 1]``; ``ids`` (default positions) seed each sample."""
        objective = as_objective(model, self.loss, self.targeted)
        x = check_images(x).detach()
        check_targets(x, targets, objective)
        ids = rng.sample_ids(ids, x.shape[0])
        structure = build_structure(self.kernel, self.stride, *x.shape[-2:])
        with torch.no_grad():
            loss, success, score = measure(objective, x, targets)
        loss = loss.to(x.dtype)
        require_finite(loss)
        out = _Cascade(x, loss, success, score, structure)
        for number, attack in enumerate(self.stages, 1):
            rows = (~out.success).nonzero().flatten()
            if rows.numel():
                picked = rows.tolist()
                result = attack(model, x.index_select(0, rows), select(targets, rows), ids=[ids[i] for i in picked])
                out.record(number, rows, result)
            out.robust.append(1.0 - out.success.float().mean().item())
        return out.result(x, self.k, structure)


class _Cascade:
    """Full-batch results: a sample's row takes a stage's image when that stage fools it or beats its best score."""

    def __init__(self, x: Tensor, loss: Tensor, success: Tensor, score: Tensor, structure: Structure | None) -> None:
        b = x.shape[0]
        self.adversarial, self.loss, self.success, self.score = x.clone(), loss, success.clone(), score.clone()
        self.iterations = torch.zeros(b, dtype=torch.long, device=x.device)
        self.stage = torch.where(success, CLEAN, ROBUST).long()
        grid = None if structure is None else structure.grid_shape
        self.groups = None if grid is None else torch.zeros(b, 1, *grid, dtype=torch.bool, device=x.device)
        self.robust = [1.0 - success.float().mean().item()]

    def record(self, number: int, rows: Tensor, result: AttackResult) -> None:
        """Stage ``number`` attacked the samples at ``rows`` (none of them fooled before)."""
        self.iterations[rows] += result.iterations
        take = result.success | (result.score > self.score[rows])
        rows, picked = rows[take], take.nonzero().flatten()
        self.adversarial[rows] = result.adversarial[picked]
        self.loss[rows] = result.loss[picked].to(self.loss.dtype)
        self.score[rows] = result.score[picked]
        self.success[rows] = result.success[picked]
        if self.groups is not None:
            self.groups[rows] = result.groups[picked]
        self.stage[rows[result.success[picked]]] = number

    def result(self, x: Tensor, k: int, structure: Structure | None) -> CascadeResult:
        base = assemble(x, k, structure, adversarial=self.adversarial, success=self.success, loss=self.loss,
                        iterations=self.iterations, groups=self.groups, score=self.score)
        result = CascadeResult(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)}, stage=self.stage,
                               robust_accuracy_per_stage=tuple(self.robust))
        return audit_cascade(result, x, k, structure)


def audit_cascade(result: CascadeResult, x: Tensor, k: int, structure: Structure | None = None) -> CascadeResult:
    """:func:`audit`, plus the cascade's record: stages agree with success, robust accuracy never rises."""
    audit(result, x, k, structure)
    if result.stage.shape != (x.shape[0],):
        raise AuditError(f"stage has shape {tuple(result.stage.shape)}, expected ({x.shape[0]},)")
    if not torch.equal(result.stage != ROBUST, result.success):
        raise AuditError("stage must be -1 exactly for the samples the cascade did not fool")
    accuracies = result.robust_accuracy_per_stage
    if any(later > earlier for earlier, later in zip(accuracies, accuracies[1:])):
        raise AuditError(f"robust accuracy rose along the cascade: {accuracies}")
    if abs(accuracies[-1] - result.robust_accuracy) > 1e-9:
        raise AuditError(f"final robust accuracy {accuracies[-1]} != that of the result {result.robust_accuracy}")
    return result
