"""VGG-16 with batch norm (Simonyan & Zisserman, 2015), CIFAR variant.

The UltraClean dirty-label script trains VGG16 on CIFAR-10. Adaptive pooling before a
single linear classifier lets it take any input size >= 32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detox.models.base import MODELS, scaled

VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]  # fmt: skip


class VGG(nn.Module):
    def __init__(self, cfg: list[int | str], num_classes: int, width: float, in_channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                cout = scaled(int(v), width)
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
                layers.append(nn.ReLU(inplace=True))
                cin = cout
        self.body = nn.Sequential(*layers)
        self.linear = nn.Linear(cin, num_classes)
        self.feature_dim = cin

    def blocks(self) -> list[nn.Module]:
        """The conv-BN-ReLU stages (their ReLUs), in order (PSBD drops out after each)."""
        return [m for m in self.body if isinstance(m, nn.ReLU)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


@MODELS.register("vgg16-bn", "vgg16", "vgg16_bn")
def vgg16_bn(num_classes: int, width: float = 1.0, in_channels: int = 3) -> VGG:
    return VGG(VGG16_CFG, num_classes, width, in_channels)
