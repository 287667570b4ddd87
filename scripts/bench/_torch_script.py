"""The default run written by hand in plain PyTorch: the article's loop on the same work as
``python -m gradwatch.train`` (train, validate every epoch, test), no logger, no checkpoint.
``_lightning_script.py`` takes its data and network from here.

    python scripts/bench/_torch_script.py
"""

import itertools

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def loaders(batch_size: int = 128) -> list[DataLoader]:
    """scikit-learn's digits split 70/15/15, standardized with the training split's stats."""
    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1)
    y = torch.as_tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(42))
    n_val = n_test = round(0.15 * len(x))
    splits = [order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]]
    mean, std = x[splits[0]].mean(), x[splits[0]].std()
    x = (x - mean) / std
    return [
        DataLoader(TensorDataset(x[i], y[i]), batch_size=batch_size, shuffle=k == 0)
        for k, i in enumerate(splits)
    ]


def mlp(depth: int = 10, width: int = 128) -> nn.Sequential:
    """The article's sigmoid MLP: ``depth`` Linear layers, sigmoid between them."""
    sizes = [64] + [width] * (depth - 1)
    hidden = [(nn.Linear(a, b), nn.Sigmoid()) for a, b in itertools.pairwise(sizes)]
    return nn.Sequential(nn.Flatten(), *itertools.chain(*hidden), nn.Linear(width, 10))


def accuracy(net: nn.Module, loader: DataLoader) -> float:
    net.eval()
    with torch.no_grad():
        right = sum((net(x).argmax(1) == y).sum().item() for x, y in loader)
    net.train()
    return right / len(loader.dataset)


if __name__ == "__main__":
    torch.manual_seed(42)
    train, val, test = loaders()
    net = mlp()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    for epoch in range(20):
        for x, y in train:
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
        print(f"epoch {epoch}: val acc {accuracy(net, val):.3f}")
    print(f"test acc {accuracy(net, test):.3f}")
