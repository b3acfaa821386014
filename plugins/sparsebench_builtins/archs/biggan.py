"""BigGAN at 32x32 (ajbrock/BigGAN-PyTorch, CIFAR-10 launch script), class-conditional.

G: linear z -> 4x4x(4ch); up-blocks of 4ch with conditional BN (per-layer class embeddings,
nearest upsampling, 1x1 shortcut); BN, ReLU, 3x3 conv -> 3, tanh. D: "wide" blocks of 4ch,
the first ones downsampling, ReLU, sum pooling, linear -> 1 plus a projection embedding.
Spectral norm on every conv and linear of G and D (not G's class embeddings); N(0, 0.02) init.
At ch=64, 32x32: G has 4,304,387 and D 4,207,361 parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.api import Architecture
from sparsebench.config import TrainSpec
from sparsebench.hookspecs import hookimpl
from sparsebench.options import Option
from sparsebench_builtins.archs.layers import BatchNorm, ConditionalBatchNorm, log2_int, set_batch_stats_in_eval, sn


class GBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, num_classes: int):
        super().__init__()
        self.bn1 = ConditionalBatchNorm(c_in, num_classes)
        self.conv1 = sn(nn.Conv2d(c_in, c_out, 3, padding=1))
        self.bn2 = ConditionalBatchNorm(c_out, num_classes)
        self.conv2 = sn(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.conv_sc = sn(nn.Conv2d(c_in, c_out, 1))  # learnable: every block upsamples

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(x, y))
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv1(h)
        h = self.conv2(F.relu(self.bn2(h, y)))
        return h + self.conv_sc(x)


class DBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, downsample: bool, preactivation: bool):
        super().__init__()
        self.conv1 = sn(nn.Conv2d(c_in, c_out, 3, padding=1))  # wide: hidden = out channels
        self.conv2 = sn(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.downsample = downsample
        self.preactivation = preactivation
        self.conv_sc = sn(nn.Conv2d(c_in, c_out, 1)) if (c_in != c_out or downsample) else None

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.preactivation:
            if self.conv_sc is not None:
                x = self.conv_sc(x)
            if self.downsample:
                x = F.avg_pool2d(x, 2)
        else:
            if self.downsample:
                x = F.avg_pool2d(x, 2)
            if self.conv_sc is not None:
                x = self.conv_sc(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        return h + self.shortcut(x)


class Generator(nn.Module):
    def __init__(self, ch: int, z_dim: int, resolution: int, num_classes: int):
        super().__init__()
        c = 4 * ch
        self.c, self.z_dim, self.num_classes = c, z_dim, num_classes
        self.linear = sn(nn.Linear(z_dim, 4 * 4 * c))
        self.blocks = nn.ModuleList(GBlock(c, c, num_classes) for _ in range(log2_int(resolution, "resolution") - 2))
        self.out_bn = BatchNorm(c)
        self.out_conv = sn(nn.Conv2d(c, 3, 3, padding=1))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.linear(z).view(z.shape[0], self.c, 4, 4)
        for block in self.blocks:
            h = block(h, y)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))


class Discriminator(nn.Module):
    def __init__(self, ch: int, resolution: int, num_classes: int):
        super().__init__()
        c = 4 * ch
        n_down = log2_int(resolution, "resolution") - 3  # 32 -> 2 downsampling blocks, as [T, T, F, F]
        self.blocks = nn.ModuleList(
            DBlock(3 if i == 0 else c, c, downsample=i < n_down, preactivation=i > 0) for i in range(4)
        )
        self.linear = sn(nn.Linear(c, 1))
        self.embed = sn(nn.Embedding(num_classes, c))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = x
        for block in self.blocks:
            h = block(h)
        h = torch.sum(F.relu(h), dim=(2, 3))
        return self.linear(h).squeeze(1) + torch.sum(self.embed(y) * h, dim=1)


def init_n02(model: nn.Module) -> None:
    """N(0, 0.02) for every conv, linear and embedding weight (BigGAN's `--G_init N02`)."""
    from sparsebench.sparse.scope import weight_tensor

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(weight_tensor(m), 0.0, 0.02)


PAPER = TrainSpec(
    dataset="cifar10", resolution=32, width=64, z_dim=128, batch_size=50, g_batch_size=50, n_critic=4,
    lr_g=2e-4, lr_d=2e-4, beta1=0.0, beta2=0.999, steps=125_000, ema_decay=0.9999, ema_start=1000,
    explore_interval=500, eval_samples=50_000, extractor="inception-v3-compat", eval_batch_stats=True,
    log_every=100,
)
QUICK = TrainSpec(
    dataset="digits", resolution=16, width=8, z_dim=32, batch_size=32, g_batch_size=32, n_critic=2,
    lr_g=5e-4, lr_d=5e-4, beta1=0.0, beta2=0.999, steps=400, ema_decay=0.99, ema_start=100,
    explore_interval=100, eval_samples=1000, extractor="sparsebench-digits", eval_batch_stats=True,
    log_every=10,
)


class BigGAN(Architecture):
    name = "biggan"
    description = "BigGAN (class-conditional, projection D, spectral norm everywhere) at 32x32"
    conditional = True
    presets = {"paper": PAPER, "quick": QUICK}
    options = ()

    def build(self, spec: TrainSpec, num_classes: int, width: float = 1.0, **options):
        ch = max(1, round(spec.width * width))
        G = Generator(ch, spec.z_dim, spec.resolution, num_classes)
        D = Discriminator(ch, spec.resolution, num_classes)
        init_n02(G)
        init_n02(D)
        set_batch_stats_in_eval(G, spec.eval_batch_stats)
        return G, D


@hookimpl
def register_architectures(register):
    register(BigGAN())
