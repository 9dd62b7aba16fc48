"""A small fast CNN (4 conv layers, ~1M parameters at width 1) for smoke tests and demos."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detox.models.base import MODELS, scaled


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        c1, c2, c3 = scaled(32, width), scaled(64, width), scaled(128, width)

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.body = nn.Sequential(
            block(in_channels, c1),
            block(c1, c2),
            nn.MaxPool2d(2),
            block(c2, c3),
            nn.MaxPool2d(2),
            block(c3, c3),
            nn.MaxPool2d(2),
        )
        self.linear = nn.Linear(c3, num_classes)
        self.feature_dim = c3

    def blocks(self) -> list[nn.Module]:
        """The conv-BN-ReLU blocks, in order (PSBD drops out after each)."""
        return [m for m in self.body if isinstance(m, nn.Sequential)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


@MODELS.register("small-cnn", "smallcnn", "cnn")
def small_cnn(num_classes: int, width: float = 1.0, in_channels: int = 3) -> SmallCNN:
    return SmallCNN(num_classes, width, in_channels)
