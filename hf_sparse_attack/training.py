"""Sparse adversarial training (Zhong & Liu, arXiv 2405.05075): sAT and sTRADES with Sparse-PGD, for any classifier.

Each training step attacks the batch with :class:`~hf_sparse_attack.SparsePGD` (with the model in eval mode and its
parameters frozen, both restored after; gradients flow to the input pixels only), then returns a loss to minimise:

- sAT: ``CE(f(x_adv), y)``;
- sTRADES: ``CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv))``, clean and adversarial images in one
  forward pass (a distributed wrapper sees one forward per backward; batch norm sees the joint batch).

As in the authors' code the attack maximises the cross-entropy to the labels for both losses, takes 20 steps with
``patience=10``, and picks the projected or the unprojected gradient per batch (here: at random, seeded by the
step number, so a resumed run makes the same choices). ``model`` maps pixels in ``[0, 1]`` to logits; fold the
normalisation into it, so the attack works in the same pixel space as an evaluation.

>>> import torch
>>> torch.manual_seed(0) and None
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
>>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
>>> x, y = torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,))
>>> training = SparseAdversarialTraining(k=2, steps=5, loss="strades")
>>> out = training(model, x, y, step=0)
>>> out.loss.backward(); optimizer.step()
>>> out.loss.shape, bool((out.result.l0 <= 2).all()), out.adversarial_correct.dtype
(torch.Size([]), True, torch.bool)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import rng
from .result import AttackResult
from .spgd import SparsePGD
from .value_checks import check_positive_int, check_range
from .vocabulary import TRAINING_LOSSES

_STREAM = 3  # rng stream of the per-step seeds (sPGD uses 0, Sparse-RS 1, the cascade 2)


@dataclass(frozen=True)
class TrainingStep:
    """What one training step computed.

    Attributes:
        loss: scalar loss to minimise (differentiable w.r.t. the model's parameters).
        result: the attack on the batch, run in eval mode before the update.
    """

    loss: Tensor
    result: AttackResult

    @property
    def clean_correct(self) -> Tensor:
        """``(B,)`` bool: the clean image was classified correctly (the attack had to run, ``iterations > 0``)."""
        return ~(self.result.success & (self.result.iterations == 0))

    @property
    def adversarial_correct(self) -> Tensor:
        """``(B,)`` bool: the sample resisted the attack."""
        return ~self.result.success


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and set ``requires_grad=False`` on every parameter; restore both after."""
    modes = [(module, module.training) for module in model.modules()]
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    model.eval()
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def perturb(
    model: nn.Module, x: Tensor, y: Tensor, attack: SparsePGD, ids: Sequence[int] | None = None
) -> AttackResult:
    """Run ``attack`` on ``model`` frozen in eval mode (see :func:`frozen`); ``ids`` seed each sample."""
    with frozen(model):
        return attack(model, x, y, ids=ids)


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    return getattr(out, "logits", out)


def sat_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: SparsePGD,
    ids: Sequence[int] | None = None,
    attack_model: nn.Module | None = None,
) -> TrainingStep:
    """sAT: cross-entropy of ``model`` on the adversarial batch found by ``attack``.

    ``attack_model`` (default ``model``) is what the attack runs on: pass the unwrapped model when ``model`` is a
    distributed wrapper, so the attack's forward passes trigger no collective.
    """
    result = perturb(model if attack_model is None else attack_model, x, y, attack, ids)
    loss = F.cross_entropy(_logits(model, result.adversarial), y)
    return TrainingStep(loss, result)


def strades_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: SparsePGD,
    beta: float = 6.0,
    ids: Sequence[int] | None = None,
    attack_model: nn.Module | None = None,
) -> TrainingStep:
    """sTRADES: clean cross-entropy plus ``beta`` times the KL divergence from clean to adversarial predictions.

    Clean and adversarial images go through ``model`` in one batch. ``attack_model`` as in :func:`sat_loss`.
    """
    result = perturb(model if attack_model is None else attack_model, x, y, attack, ids)
    clean, adversarial = _logits(model, torch.cat((x, result.adversarial))).chunk(2)
    robust = F.kl_div(F.log_softmax(adversarial, dim=1), F.softmax(clean, dim=1), reduction="batchmean")
    return TrainingStep(F.cross_entropy(clean, y) + beta * robust, result)


def _alternate(seed: int, step: int) -> bool:
    return step % 2 == 0


def _random(seed: int, step: int) -> bool:
    return rng.sample_seed(seed, step, _STREAM) % 2 == 0


#: Whether training step ``step`` uses the unprojected gradient, by ``gradient`` name: ``(seed, step) -> bool``.
GRADIENTS: dict[str, Callable[[int, int], bool]] = {
    "random": _random,
    "alternate": _alternate,
    "unprojected": lambda seed, step: True,
    "projected": lambda seed, step: False,
}



@dataclass(frozen=True)
class SparseAdversarialTraining:
    """Sparse adversarial training configuration; call it as ``training(model, x, y, step, ids=None)``.

    Args:
        k: pixel budget of the training attack.
        steps: sPGD iterations per batch.
        patience: sPGD restarts a mask whose support is stuck this many iterations (10 in training, as the authors).
        loss: ``"sat"`` or ``"strades"``.
        beta: TRADES weight of the KL term (``"strades"`` only).
        gradient: per-batch choice of the sPGD gradient: ``"random"`` (seeded by ``seed`` and the step),
            ``"alternate"`` (unprojected on even steps), ``"unprojected"`` or ``"projected"``.
        seed: base seed; the attack at step ``t`` is seeded from ``(seed, t)`` and each sample from its id.
    """

    k: int
    steps: int = 20
    patience: int = 10
    loss: str = "sat"
    beta: float = 6.0
    gradient: str = "random"
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_int("k", self.k)
        check_positive_int("steps", self.steps)
        check_positive_int("patience", self.patience)
        check_range("beta", self.beta, 0.0, float("inf"))
        if self.loss not in TRAINING_LOSSES:
            raise ValueError(f"unknown training loss {self.loss!r}; allowed: {list(TRAINING_LOSSES)}")
        if not isinstance(self.gradient, str) or self.gradient not in GRADIENTS:
            raise ValueError(f"unknown gradient {self.gradient!r}; allowed: {list(GRADIENTS)}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def attack(self, step: int) -> SparsePGD:
        """The sPGD configuration of training step ``step`` (its gradient mode and seed depend on the step only).

        >>> SparseAdversarialTraining(k=2, gradient="alternate").attack(1).unprojected
        False
        """
        return SparsePGD(
            k=self.k,
            steps=self.steps,
            patience=self.patience,
            unprojected=GRADIENTS[self.gradient](self.seed, step),
            seed=rng.sample_seed(self.seed, step, _STREAM),
        )

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        step: int,
        ids: Sequence[int] | None = None,
        attack_model: nn.Module | None = None,
    ) -> TrainingStep:
        """The loss of training step ``step`` on the batch ``(x, y)``; ``ids`` (e.g. dataset indices) seed samples.

        ``attack_model``: the model the attack runs on when ``model`` is a distributed wrapper (see :func:`sat_loss`).
        """
        attack = self.attack(step)
        if self.loss == "sat":
            return sat_loss(model, x, y, attack, ids, attack_model)
        return strades_loss(model, x, y, attack, self.beta, ids, attack_model)
