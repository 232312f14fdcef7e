"""Real data that needs no download: scikit-learn's bundled handwritten digits and a small CNN trained on them.

Used by the tests and benchmarks as the real-data check of every attack (1797 images, 8x8, one channel).

>>> import torch
>>> torch.set_num_threads(1)
>>> (x_train, y_train), (x_test, y_test) = digits_split()
>>> x_train.shape, x_test.shape, float(x_train.max()) <= 1.0
(torch.Size([1348, 1, 8, 8]), torch.Size([449, 1, 8, 8]), True)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def digits_split(test_fraction: float = 0.25, seed: int = 0) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``((x_train, y_train), (x_test, y_test))`` with images ``(N, 1, 8, 8)`` in ``[0, 1]`` (8-bit grid)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1).div(16).mul(255).round().div(255)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def digits_cnn() -> nn.Module:
    """A small CNN for 1x8x8 digits (about 25k parameters)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def train_digits_cnn(epochs: int = 15, seed: int = 0, batch_size: int = 64) -> tuple[nn.Module, float]:
    """Train :func:`digits_cnn` with Adam; returns the model in eval mode and its test accuracy."""
    (x_train, y_train), (x_test, y_test) = digits_split()
    torch.manual_seed(seed)
    model = digits_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(y_train), generator=gen).split(batch_size):
            loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return model, accuracy
