"""CIFAR-style ResNets (3x3 stride-1 stem, no max-pool) and PreAct-ResNet-18.

He et al., "Deep Residual Learning" (2016) with the CIFAR stem used by the BaDLoss and
UltraClean code; PreAct-ResNet-18 (He et al., "Identity Mappings", 2016) is the victim of
SampDetox/BackdoorBench. Global average pooling makes every model work for any input size
>= 32 (64 for Tiny-ImageNet, 224 for ImageNet-like data).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detox.models.base import MODELS, scaled


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class ResNet(nn.Module):
    """ResNet with a CIFAR stem. ``preact`` selects the pre-activation variant."""

    def __init__(
        self,
        block: type[nn.Module],
        num_blocks: list[int],
        num_classes: int,
        width: float = 1.0,
        in_channels: int = 3,
        preact: bool = False,
    ) -> None:
        super().__init__()
        self.preact = preact
        base = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, base[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(base[0]) if not preact else nn.Identity()
        layers, cin = [], base[0]
        for i, (planes, n) in enumerate(zip(base, num_blocks)):
            stride = 1 if i == 0 else 2
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(block(cin, planes, s))
                cin = planes * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*layers)
        self.final_bn = nn.BatchNorm2d(cin) if preact else nn.Identity()
        self.linear = nn.Linear(cin, num_classes)
        self.feature_dim = cin

    def blocks(self) -> list[nn.Module]:
        """The residual blocks, in order (PSBD drops out after each)."""
        return [b for layer in self.layers for b in layer]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layers(out)
        if self.preact:
            out = F.relu(self.final_bn(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


@MODELS.register("resnet18")
def resnet18(num_classes: int, width: float = 1.0, in_channels: int = 3) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, width, in_channels)


@MODELS.register("resnet34")
def resnet34(num_classes: int, width: float = 1.0, in_channels: int = 3) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, width, in_channels)


@MODELS.register("resnet50")
def resnet50(num_classes: int, width: float = 1.0, in_channels: int = 3) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, width, in_channels)


@MODELS.register("preact-resnet18", "preactresnet18", "preact_resnet18")
def preact_resnet18(num_classes: int, width: float = 1.0, in_channels: int = 3) -> ResNet:
    return ResNet(PreActBlock, [2, 2, 2, 2], num_classes, width, in_channels, preact=True)
