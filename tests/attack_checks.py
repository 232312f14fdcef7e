"""Independent checks of an attack result, used by every attack test (the library audits too; this re-derives)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def assert_valid_result(result, x, k, kernel=None, stride=1):
    """Budget, box, untouched pixels outside the mask, consistent fields; recomputed from scratch here."""
    adv = result.adversarial
    assert adv.shape == x.shape
    assert torch.isfinite(adv).all()
    assert adv.min() >= 0 and adv.max() <= 1
    changed = (adv != x).any(dim=1, keepdim=True)
    assert torch.equal(changed, result.mask)
    assert torch.equal(adv[~changed.expand_as(adv)], x[~changed.expand_as(x)])
    b = x.shape[0]
    for name in ("success", "l0", "loss", "iterations"):
        assert getattr(result, name).shape == (b,), name
    assert result.success.dtype == torch.bool
    if kernel is None:
        assert torch.equal(changed.flatten(1).sum(1), result.l0)
        assert (result.l0 <= k).all()
    else:
        groups = result.groups
        assert groups is not None and (groups.flatten(1).sum(1) <= k).all()
        weight = torch.as_tensor(kernel, dtype=torch.float32)[None, None]
        cover = F.conv_transpose2d(groups.float(), weight, stride=stride)
        h, w = x.shape[-2:]
        cover = F.pad(cover, (0, max(0, w - cover.shape[-1]), 0, max(0, h - cover.shape[-2])))[..., :h, :w]
        assert not (changed & (cover == 0)).any(), "changed pixels outside the kernel placements"
    return result


def assert_batch_invariant(attack, model, x, y, ids):
    """A sample's result depends on its id only: alone, in the batch or in a shuffled batch, the same image, loss
    and iteration count."""
    together = assert_valid_result(attack(model, x, y, ids=ids), x, attack.k, attack.kernel, attack.stride)
    for i in range(x.shape[0]):
        alone = attack(model, x[i : i + 1], y[i : i + 1], ids=[ids[i]])
        assert torch.equal(alone.adversarial[0], together.adversarial[i])
        assert alone.loss[0] == together.loss[i] and alone.iterations[0] == together.iterations[i]
    shuffled = attack(model, x.flip(0), y.flip(0), ids=ids[::-1])
    assert torch.equal(shuffled.adversarial.flip(0), together.adversarial)


def assert_seeded(make_attack, model, x, y):
    """``make_attack(seed)`` gives the same result for the same seed and another for another seed."""
    attacks = [make_attack(seed) for seed in (1, 1, 2)]
    a, b, c = (assert_valid_result(attack(model, x, y), x, attack.k, attack.kernel, attack.stride)
               for attack in attacks)
    assert torch.equal(a.adversarial, b.adversarial)
    assert not torch.equal(a.adversarial, c.adversarial)
