"""The torch-free name lists (what ``--help`` offers) are exactly the keys of the mappings that implement them."""

from transformers.trainer_utils import SchedulerType

from hf_sparse_attack import kernels, losses, saa, training, vocabulary
from hf_sparse_attack.evaluation.harness import attack_configs, attack_flags


def test_names_match_their_implementations():
    assert vocabulary.CLASSIFICATION_LOSS_NAMES == tuple(losses.CLASSIFICATION_LOSSES)
    assert vocabulary.KERNEL_SHAPES == tuple(kernels.SHAPES)
    assert vocabulary.SAA_PRESETS == tuple(saa.PRESETS)
    assert vocabulary.TRAINING_GRADIENTS == tuple(training.GRADIENTS)
    assert set(attack_flags.ATTACK_NAMES) == set(attack_configs.ATTACKS)
    assert "linear" in {t.value for t in SchedulerType}  # the training script's default
