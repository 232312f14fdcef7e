"""The names users choose among, torch-free, so that command lines offer them without importing torch.

Each name list is the keys of the mapping that implements it (a test checks they agree): classification losses
(:mod:`.losses`), kernel shapes (:mod:`.kernels`), Sparse-AutoAttack presets (:mod:`.saa`), training losses and
gradient schedules (:mod:`.training`).

>>> CLASSIFICATION_LOSS_NAMES, SAA_PRESETS
(('ce', 'margin', 'dlr'), ('standard', 'fast'))
"""

CLASSIFICATION_LOSS_NAMES = ("ce", "margin", "dlr")
KERNEL_SHAPES = ("cross", "diamond", "heart", "star")
SAA_PRESETS = ("standard", "fast")
TRAINING_LOSSES = ("sat", "strades")
TRAINING_GRADIENTS = ("random", "alternate", "unprojected", "projected")
