"""Small models and data shared by the train tests (imported as a module; not collected)."""
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from pytorch_utils.data import make_loader
from pytorch_utils.train import Callback


class TinyNet(nn.Module):
    """A few thousand parameters: conv > BN > ReLU > dropout > pool > linear."""

    def __init__(self, num_classes=4, channels=8, dropout=0.1):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
                                      nn.Dropout(dropout), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def tensor_data(n=128, num_classes=4, size=8, seed=0):
    """Learnable random tensors: the class shifts one colour channel."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x[torch.arange(n), y % 3] += 1.5 * (1 + y // 3).float().view(-1, 1, 1)
    return x, y


def synthetic_loaders(n=256, test_n=128, num_classes=4, batch_size=32, seed=0, augmentation="standard"):
    """Reproducible make_loader loaders over the synthetic ArrayDataset (num_workers=0)."""
    from pytorch_utils.data import get_preset, load_datasets

    train, test = load_datasets("synthetic", train_limit=n, test_limit=test_n, seed=seed, num_classes=num_classes)
    train.transform = get_preset(augmentation, train.mean, train.std, seed=seed)
    test.transform = get_preset("test", train.mean, train.std)
    return (make_loader(train, batch_size, train=True, num_workers=0, seed=seed),
            make_loader(test, 64, train=False, num_workers=0, seed=seed))


def plain_loader(x, y, batch_size=32, shuffle=False):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def state_equal(a, b):
    """True when two state dicts hold exactly equal tensors under the same keys."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Interrupt(Callback):
    """A Colab disconnect right after epoch ``after`` was checkpointed: raises KeyboardInterrupt (the last callback)."""

    def __init__(self, after):
        self.after = after

    def on_epoch_complete(self, state, record):
        if state.epoch == self.after:
            raise KeyboardInterrupt
