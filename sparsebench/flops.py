"""The FLOP accountant, on fvcore.

fvcore counts one fused multiply-add as one flop and counts masked weights as dense, so sparse
FLOPs are computed per layer: dense FLOPs of each module in the sparse scope times that layer's
density, plus the dense FLOPs of everything else. Training FLOPs follow the schedule:

    per D step: G forward on the fakes + D forward and backward on real and fake
    per G step: G and D forward and backward
    backward = 2 x forward (half of it the weight gradient, at the layer's density)
    with gradient accumulation, each D and G step runs all of it on `accumulate` minibatches

Extra work a method declares (sparsebench.api: `Phase.g_dense_grad_steps` / `d_dense_grad_steps`,
`DensePass`) is counted on top: a step whose backward computes a network's weight gradients densely
(gradient regrowth) adds (1 - density) x each scope layer's forward FLOPs per image of that backward;
a dense pass costs forward and backward of its images through the dense networks.

Counting runs on eval copies of the models, so it never touches the training models' BN
statistics or spectral-norm vectors; fvcore's unsupported-operator warnings are collected and
logged once per model.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from sparsebench.sparse.scope import scope_parameters

log = logging.getLogger("sparsebench.flops")
BACKWARD_FACTOR = 2.0


@dataclass
class ModelFlops:
    """Dense forward FLOPs per image of one model, in total and per sparse-scope layer."""

    total: float
    layers: dict[str, float]
    unsupported: dict[str, int] = field(default_factory=dict)

    def forward(self, densities: dict[str, float] | None = None) -> float:
        """Per-image forward FLOPs when each scope layer has the given density (None: dense)."""
        if not densities:
            return self.total
        saved = sum(f * (1.0 - densities.get(name, 1.0)) for name, f in self.layers.items())
        return self.total - saved


def count_model(model: nn.Module, inputs: tuple, scope: str, batch: int) -> ModelFlops:
    """Count `model` on `inputs` (a batch of `batch` items) with fvcore; returns per-image FLOPs."""
    from fvcore.nn import FlopCountAnalysis

    probe = copy.deepcopy(model).eval()
    with torch.no_grad():
        analysis = FlopCountAnalysis(probe, inputs)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        by_module = analysis.by_module()
        total = analysis.total()
        unsupported = dict(analysis.unsupported_ops())
    if unsupported:
        log.info(
            "fvcore skipped operators in %s (not counted): %s",
            type(model).__name__,
            ", ".join(f"{k} x{v}" for k, v in sorted(unsupported.items())),
        )
    layers = {}
    for name in scope_parameters(model, scope):
        own = by_module.get(name, 0) - by_module.get(f"{name}.parametrizations", 0)
        layers[name] = own / batch
    # spectral-norm power iterations are per forward, not per image: leave them out of the total
    sn_cost = sum(v for k, v in by_module.items() if k.endswith(".parametrizations"))
    return ModelFlops((total - sn_cost) / batch, layers, unsupported)


@dataclass
class GANFlops:
    """FLOPs of a G/D pair under a training spec: per image, per training step, per run."""

    g: ModelFlops
    d: ModelFlops
    batch_size: int
    g_batch_size: int
    n_critic: int
    accumulate: int = 1

    def step(self, g_density: dict | None = None, d_density: dict | None = None) -> float:
        """FLOPs of one G step and its n_critic D steps, each over `accumulate` minibatches."""
        gf, df = self.g.forward(g_density), self.d.forward(d_density)
        fb = 1.0 + BACKWARD_FACTOR
        d_steps = self.n_critic * (self.batch_size * gf + 2 * self.batch_size * fb * df)
        g_step = self.g_batch_size * fb * (gf + df)
        return self.accumulate * (d_steps + g_step)

    def phase_step(self, g_density: dict | None, d_density: dict | None, convention: str = "fvcore") -> float:
        """FLOPs of one step of a training phase at these densities, in `convention` (sparsebench.flop_conventions).

        The paper's convention costs a phase with a sparse G beside a dense D as a dense step times G's FLOP
        density; both conventions differ further only by the factor of 2 per multiply-add, applied by the caller.
        """
        if convention == "paper" and g_density is not None and d_density is None:
            return self.step() * self.g.forward(g_density) / self.g.total
        return self.step(g_density, d_density)

    def dense_grad_extra(self, net: str, density: dict | None) -> float:
        """The extra FLOPs of one step whose backward computes `net`'s ("g" or "d") weight gradients densely
        rather than at `density`: G's in its G step, D's in one D step (real and fake), per minibatch."""
        if not density:
            return 0.0
        model, images = (self.g, self.g_batch_size) if net == "g" else (self.d, 2 * self.batch_size)
        return self.accumulate * images * (model.total - model.forward(density))

    def dense_pass(self, g_images: int, d_images: int) -> float:
        """FLOPs of a one-off dense forward and backward of `g_images` images through G and `d_images` through D."""
        return (1.0 + BACKWARD_FACTOR) * (g_images * self.g.total + d_images * self.d.total)

    def plan(self, items: list, convention: str = "fvcore") -> float:
        """Training FLOPs of a method's FLOP plan (`Method.flop_phases`), in `convention` before its per-FMA
        scale: the phases, plus in fvcore the declared extra work (the paper's convention leaves it out)."""
        from sparsebench.interfaces import DensePass

        total = 0.0
        for item in items:
            if isinstance(item, DensePass):
                total += self.dense_pass(item.g_images, item.d_images) if convention == "fvcore" else 0.0
                continue
            total += item.steps * self.phase_step(item.g_density, item.d_density, convention)
            if convention == "fvcore":
                total += item.g_dense_grad_steps * self.dense_grad_extra("g", item.g_density)
                total += item.d_dense_grad_steps * self.dense_grad_extra("d", item.d_density)
        return total

    def test(self, g_density: dict | None = None) -> float:
        """FLOPs of one generator forward for one image."""
        return self.g.forward(g_density)


def count_gan(G: nn.Module, D: nn.Module, spec, scope: str, num_classes: int) -> GANFlops:
    device = next(G.parameters()).device
    batch = 2
    z = torch.zeros(batch, spec.z_dim, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    x = torch.zeros(batch, 3, spec.resolution, spec.resolution, device=device)
    g = count_model(G, (z, y), scope, batch)
    d = count_model(D, (x, y), scope, batch)
    return GANFlops(g, d, spec.batch_size, spec.g_batch_size, spec.n_critic, spec.accumulate)
