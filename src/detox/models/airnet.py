"""AirNet: the small VGG-like network of airbench (Jordan 2024, "94% on CIFAR-10 in 3.29
seconds on a single GPU", arXiv 2404.00498), written for detox.

Architecture (airbench94, widths at ``width = 1``):

* a 2x2 convolution to 24 channels whose weights are the *patch-whitening* transform of the
  training images (the eigenvectors of the 2x2x3 patch covariance, scaled by the inverse
  square root of their eigenvalues, and their negatives), set from data before training by
  :meth:`AirNet.init_from_data` and never trained; only its bias is, for the first epochs
  (``TrainConfig.whiten_bias_epochs``);
* GELU, then three groups of conv 3x3 -> max-pool 2 -> BatchNorm -> GELU -> conv 3x3 ->
  BatchNorm -> GELU with 64, 256, 256 channels; convolutions without bias, initialised
  with the identity (Dirac) on their first input channels; BatchNorm without a trained
  scale, eps 1e-12, running statistics with momentum 0.4 (airbench's "0.6");
* max-pool 3, a linear layer without bias, logits scaled by 1/9.

The rest of airbench's recipe (batch 1024, SGD-Nesterov with decoupled hyper-parameters,
a 64x learning rate for the BatchNorm biases, label smoothing 0.2, the triangular
schedule, Lookahead averaging, alternating flips, 2-pixel translations) lives in the one
trainer (:mod:`detox.training`) as settings of ``TrainConfig`` (:data:`AIRBENCH`).
"""

from __future__ import annotations

import torch
from torch import nn

from detox.models.base import MODELS, scaled

WHITEN_KERNEL = 2


class _BatchNorm(nn.BatchNorm2d):
    """BatchNorm with a fixed scale of 1 (only its bias trains), eps 1e-12."""

    def __init__(self, channels: int, momentum: float = 0.4) -> None:
        super().__init__(channels, eps=1e-12, momentum=momentum)
        self.weight.requires_grad_(False)


class _Conv(nn.Conv2d):
    """3x3 'same' convolution without bias, Dirac-initialised on its first input channels."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        w = self.weight.data
        nn.init.dirac_(w[: w.size(1)])


class _Group(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _Conv(cin, cout)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _BatchNorm(cout)
        self.conv2 = _Conv(cout, cout)
        self.norm2 = _BatchNorm(cout)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class AirNet(nn.Module):
    def __init__(self, num_classes: int, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        cw = 2 * in_channels * WHITEN_KERNEL**2
        w1, w2, w3 = scaled(64, width), scaled(256, width), scaled(256, width)
        self.whiten = nn.Conv2d(in_channels, cw, WHITEN_KERNEL, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        self.act = nn.GELU()
        self.groups = nn.Sequential(_Group(cw, w1), _Group(w1, w2), _Group(w2, w3))
        self.pool = nn.MaxPool2d(3)
        self.linear = nn.Linear(w3, num_classes, bias=False)
        self.scale = 1 / 9
        self.feature_dim = w3

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening convolution from normalised training images ``x`` (N, C, H, W):
        every 2x2 patch, their covariance's eigenvectors scaled by 1/sqrt(eigenvalue + eps),
        largest first, then the same filters negated."""
        k = WHITEN_KERNEL
        c = x.shape[1]
        cov = torch.zeros(c * k * k, c * k * k, dtype=torch.float64, device=x.device)
        count = 0
        for i in range(0, len(x), 500):  # float64 sums, 500 images' patches at a time
            p = x[i : i + 500].float().unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
            p = p.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k).double()
            cov += p.T @ p
            count += len(p)
        cov /= max(count, 1)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        evals, evecs = evals.flip(0), evecs.T.flip(0)  # largest first, one per row
        filters = (evecs / torch.sqrt(evals + eps)[:, None]).reshape(c * k * k, c, k, k)
        w = torch.cat([filters, -filters]).to(self.whiten.weight.dtype)
        self.whiten.weight.copy_(w)

    def set_whitening_bias_trainable(self, trainable: bool) -> None:
        self.whiten.bias.requires_grad_(trainable)

    def blocks(self) -> list[nn.Module]:
        """The three conv groups, in order (PSBD drops out after each)."""
        return list(self.groups)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.act(self.whiten(x)))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x)) * self.scale


@MODELS.register("airnet", "airbench")
def airnet(num_classes: int = 10, width: float = 1.0, in_channels: int = 3) -> nn.Module:
    return AirNet(num_classes, width, in_channels)
