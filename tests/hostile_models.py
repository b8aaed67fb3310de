"""User models that misbehave in every way a user's code can, for the hostile-input sweep and tests.

Each is loaded the way a user's model is: ``--model tests.hostile_models:Name``.
"""
import sys

import torch
import torch.nn as nn


class NoParameters(nn.Module):
    """Maps (N, 1, 28, 28) to (N, 10) but has nothing to train."""

    def forward(self, x):
        return x.flatten(1)[:, :10]


class WrongShapeForOddBatches(nn.Module):
    """Right for N=2, wrong for N=1 and N=3: a shape check with one batch size misses it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        return out if x.shape[0] % 2 == 0 else out[:, :5]


class ConstructorRaises(nn.Module):
    def __init__(self):
        super().__init__()
        raise RuntimeError("the user's constructor failed")


class ConstructorExits(nn.Module):
    def __init__(self):
        super().__init__()
        sys.exit(0)


class ForwardExits(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        raise SystemExit(3)


class ReturnsTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        return out, out


class Diverges(nn.Module):
    """Its logits overflow to inf on the first batch: the training loss is NaN at once."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)
        self.log_scale = nn.Parameter(torch.tensor(100.0))

    def forward(self, x):
        return self.fc(x.flatten(1)) * torch.exp(self.log_scale)


class NaNWhenEvaluated(nn.Module):
    """Trains normally, but its eval-mode logits are NaN: the model a verification tool must never pass."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        return out if self.training else out * float("nan")


def not_a_class():
    return nn.Linear(784, 10)


INSTANCE = nn.Linear(784, 10)


class NotAModule:
    pass
