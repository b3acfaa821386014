"""Layers shared by the built-in architectures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm


class SpectralNormFP32(_SpectralNorm):
    """torch's spectral-norm parametrization, computed in fp32 under autocast: on CUDA, autocast runs `mv` in
    bf16, so under `--precision bf16` the power iteration and sigma of every SN layer would be bf16 (and sigma
    divides the whole weight). The layer's own op (the conv or linear the weight goes into) stays under
    autocast. On the CPU autocast leaves `mv` in fp32 already: results there are the same bit for bit."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(weight.device.type, enabled=False):
            return super().forward(weight)


def sn(module: nn.Module, enabled: bool = True, eps: float = 1e-6) -> nn.Module:
    """Spectral norm as a parametrization (keeps `weight` a plain attribute, masks the original), as
    `torch.nn.utils.parametrizations.spectral_norm` registers it, with its power iteration in fp32 under
    autocast (`SpectralNormFP32`)."""
    if not enabled:
        return module
    transposed = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    dim = 1 if isinstance(module, transposed) else 0  # spectral_norm's default
    parametrize.register_parametrization(module, "weight", SpectralNormFP32(module.weight, 1, dim, eps))
    return module


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm that can keep using batch statistics in eval mode (BigGAN samples that way)."""

    batch_stats_in_eval = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self.batch_stats_in_eval:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(x)


class ConditionalBatchNorm(nn.Module):
    """BigGAN's ccbn: BN without affine, gain 1 + g(y) and bias b(y).

    g and b are class embeddings (`y` = labels), or, with a shared embedding and hierarchical z
    (`linear_in` > 0), spectrally normalised linears of the conditioning vector.
    """

    def __init__(self, channels: int, num_classes: int, eps: float = 1e-5, linear_in: int = 0):
        super().__init__()
        self.bn = BatchNorm(channels, affine=False, eps=eps)
        if linear_in:
            self.gain = sn(nn.Linear(linear_in, channels, bias=False))
            self.bias = sn(nn.Linear(linear_in, channels, bias=False))
        else:
            self.gain = nn.Embedding(num_classes, channels)
            self.bias = nn.Embedding(num_classes, channels)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gain = 1.0 + self.gain(y).view(y.shape[0], -1, 1, 1)
        bias = self.bias(y).view(y.shape[0], -1, 1, 1)
        return self.bn(x) * gain + bias


def set_batch_stats_in_eval(model: nn.Module, enabled: bool) -> None:
    for m in model.modules():
        if isinstance(m, BatchNorm):
            m.batch_stats_in_eval = enabled


def log2_int(x: int, what: str) -> int:
    n = x.bit_length() - 1
    if x <= 0 or 1 << n != x:
        raise ValueError(f"{what} must be a power of two, got {x}")
    return n


class Attention(nn.Module):
    """SAGAN self-attention as BigGAN uses it (1x1 SN convs, 2x2 max-pooled keys and values)."""

    def __init__(self, ch: int):
        super().__init__()
        self.ch = ch
        self.theta = sn(nn.Conv2d(ch, ch // 8, 1, bias=False))
        self.phi = sn(nn.Conv2d(ch, ch // 8, 1, bias=False))
        self.g = sn(nn.Conv2d(ch, ch // 2, 1, bias=False))
        self.o = sn(nn.Conv2d(ch // 2, ch, 1, bias=False))
        self.gamma = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        theta = self.theta(x).view(b, self.ch // 8, h * w)
        phi = F.max_pool2d(self.phi(x), 2).view(b, self.ch // 8, h * w // 4)
        g = F.max_pool2d(self.g(x), 2).view(b, self.ch // 2, h * w // 4)
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
        o = self.o(torch.bmm(g, beta.transpose(1, 2)).view(b, self.ch // 2, h, w))
        return x + self.gamma * o
