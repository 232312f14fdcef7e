"""Models that break down (NaN / Inf logits or gradients) are reported, never "fooled"; results stay finite.

The rule: a NaN or infinite loss on a clean image raises :class:`NonFiniteModelError` before any perturbation; an
iterate whose loss is NaN or infinite is never a success nor a sample's best, so a sample whose every perturbed
query breaks the model keeps its clean image and loss. Also here: untrusted checkpoints (pickle weights refused by
default by ``tasks.load_task``).
"""

import pytest
import torch
import transformers as hf
from attack_checks import assert_valid_result
from torch import nn

from hf_sparse_attack import NonFiniteModelError, SparseAdversarialTraining, SparseAutoAttack, SparsePGD, SparseRS
from hf_sparse_attack.tasks import TaskLoadError, load_task

torch.set_num_threads(1)

ATTACKS = {
    "spgd": SparsePGD(k=3, steps=15),
    "spgd_projected": SparsePGD(k=3, steps=15, unprojected=False),
    "rs": SparseRS(k=3, queries=30),
    "saa": SparseAutoAttack(k=3, version="custom", attacks=(SparsePGD(k=3, steps=10), SparseRS(k=3, queries=20))),
}


class Linear(nn.Module):
    """A 3-class linear classifier on ``(B, 3, 6, 6)`` images with a hook to break chosen outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3 * 6 * 6, 3)
        with torch.no_grad():
            self.layer.weight.copy_(torch.linspace(-1, 1, 3 * 108).view(3, 108))
            self.layer.bias.copy_(torch.tensor([20.0, 0.0, 0.0]))  # class 0 wins clearly on clean images

    def broken(self, x: torch.Tensor) -> torch.Tensor:
        """``(B,)`` bool: samples whose logits become ``self.value``."""
        return torch.zeros(x.shape[0], dtype=torch.bool)

    value = float("nan")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.layer(x.flatten(1))
        return torch.where(self.broken(x)[:, None], torch.full_like(logits, self.value), logits)


class AlwaysNaN(Linear):
    def broken(self, x):
        return torch.ones(x.shape[0], dtype=torch.bool)


class NaNOnBrightSamples(Linear):
    def broken(self, x):
        return x[:, 0, 0, 0] > 0.5


class BreaksWhenPerturbed(Linear):
    """Finite on the clean images it was built with, ``value`` logits on anything else.

    A NaN row makes ``argmax`` answer 0 and class 0 is nobody's label here, so a library that trusted the
    classifier's success flag would call every NaN iterate "fooled".
    """

    def __init__(self, clean: torch.Tensor, value: float = float("nan")) -> None:
        super().__init__()
        self.clean, self.value = clean, value
        with torch.no_grad():
            self.layer.weight.mul_(0.01)
            self.layer.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))  # class 1 (the label) wins on clean images

    def broken(self, x):
        return ~(x[:, None] == self.clean[None]).flatten(2).all(2).any(1)


@pytest.fixture
def x():
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (4, 3, 6, 6), generator=gen).float() / 255


@pytest.mark.parametrize("name", ATTACKS)
def test_nan_on_every_clean_image_is_an_error(name, x):
    with pytest.raises(NonFiniteModelError, match=r"NaN or infinite loss on 4 of 4 clean images, before any"):
        ATTACKS[name](AlwaysNaN(), x, torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("name", ATTACKS)
def test_nan_on_some_clean_images_is_an_error_naming_how_many(name, x):
    x[:, 0, 0, 0] = torch.tensor([0.9, 0.1, 0.1, 0.1])
    with pytest.raises(NonFiniteModelError, match=r"on 1 of 4 clean images"):
        ATTACKS[name](NaNOnBrightSamples(), x, torch.zeros(4, dtype=torch.long))


def test_the_error_is_a_value_error():
    assert issubclass(NonFiniteModelError, ValueError)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("loss", ["ce", "margin"])
@pytest.mark.parametrize("name", ATTACKS)
def test_breaking_down_under_perturbation_is_never_success(name, loss, value, x):
    attack = ATTACKS[name]
    model = BreaksWhenPerturbed(x, value)
    y = torch.ones(4, dtype=torch.long)
    if name == "saa":
        stages = tuple(type(s)(**{**vars(s), "loss": loss}) for s in attack.attacks)
        result = SparseAutoAttack(k=3, version="custom", attacks=stages)(model, x, y)
    else:
        result = type(attack)(**{**vars(attack), "loss": loss})(model, x, y)
    assert_valid_result(result, x, 3)
    assert not result.success.any()
    assert torch.equal(result.adversarial, x)  # no finite iterate: the clean image stays
    assert torch.isfinite(result.loss).all()
    assert (result.iterations > 0).all()


def test_a_custom_objective_claiming_success_on_nan_is_not_believed(x):
    class Liar:
        def loss(self, x, targets):
            return torch.where(x.flatten(1).sum(1) == targets, 0.0, float("nan")) + 0 * x.flatten(1).sum(1)

        def success(self, x, targets):
            return torch.ones(x.shape[0], dtype=torch.bool) & (x.flatten(1).sum(1) != targets)

    sums = x.flatten(1).sum(1)
    for attack in (SparsePGD(k=2, steps=5), SparseRS(k=2, queries=10)):
        result = attack(Liar(), x, sums)
        assert_valid_result(result, x, 2)
        assert not result.success.any() and torch.isfinite(result.loss).all()


class NaNGradient(Linear):
    """Finite logits, NaN gradient everywhere (the classic ``where(False, sqrt(negative), x)``)."""

    def forward(self, x):
        never = torch.zeros_like(x, dtype=torch.bool)
        return super().forward(torch.where(never, torch.sqrt(x - 2), x))


@pytest.mark.parametrize("unprojected", [True, False])
def test_nan_gradients_leave_the_magnitudes_finite(unprojected, x):
    result = SparsePGD(k=3, steps=10, unprojected=unprojected)(NaNGradient(), x, torch.zeros(4, dtype=torch.long))
    assert_valid_result(result, x, 3)
    assert torch.isfinite(result.loss).all()


def test_rs_keeps_the_best_finite_query_when_only_some_break(x):
    class BreaksOnWhite(Linear):
        def broken(self, x):  # any pure-white perturbed pixel breaks it; other corner colours are fine
            return (x == 1).all(1).flatten(1).any(1)

    model = BreaksOnWhite()
    result = SparseRS(k=3, queries=40)(model, x, torch.zeros(4, dtype=torch.long))
    assert_valid_result(result, x, 3)
    assert torch.isfinite(result.loss).all()
    assert not model.broken(result.adversarial).any()


def test_training_stops_on_a_broken_model(x):
    with pytest.raises(NonFiniteModelError):
        SparseAdversarialTraining(k=2, steps=2)(AlwaysNaN(), x, torch.zeros(4, dtype=torch.long), step=0)


# Untrusted checkpoints: tasks.load_task reads safetensors only unless pickle weights are explicitly allowed.


@pytest.fixture(scope="module")
def pickle_only(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pickle_only")
    config = hf.ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=16, num_labels=3)
    model = hf.ViTForImageClassification(config)
    model.save_pretrained(directory)  # transformers 5 always writes safetensors (no safe_serialization=False) ...
    (directory / "model.safetensors").unlink()  # ... so write the old pickle checkpoint by hand
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    hf.ViTImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(directory)
    return directory, model


def test_pickle_weights_are_refused_by_default(pickle_only):
    with pytest.raises(TaskLoadError, match=r"has no safetensors weights .* refused by default because unpickling "
                                            r"can run code.* pass allow_pickle_weights=True if you trust it"):
        load_task(pickle_only[0])


def test_pickle_weights_load_when_allowed(pickle_only):
    directory, saved = pickle_only
    objective = load_task(directory, allow_pickle_weights=True)
    assert objective.task == "classification" and not objective.model.training
    for name, value in saved.state_dict().items():
        assert torch.equal(objective.model.state_dict()[name], value), name
    with pytest.raises(TaskLoadError, match=r"allow_pickle_weights must be True or False, got 'yes'"):
        load_task(directory, allow_pickle_weights="yes")
