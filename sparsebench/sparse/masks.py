"""MaskState: binary masks over a model's sparse scope, applied in place.

Masks multiply the weights at init and after every optimizer step, so Adam moments, momentum and
weight decay never leave a pruned weight non-zero. Whether they also multiply the gradients before
each step is the optimizer-state policy's choice (sparsebench.sparse.opt_state).
"""

from __future__ import annotations

import torch
from torch import nn

from sparsebench.sparse.distributions import exact_counts, layer_densities, magnitude_masks, random_masks
from sparsebench.sparse.opt_state import DEFAULT_POLICY, check_policy, masks_gradients
from sparsebench.sparse.scope import scope_parameters


class MaskState:
    """Masks for the tensors `params` (module name -> Parameter), under an optimizer-state policy.

    Building one applies it: the weights outside the masks are zeroed in place at once."""

    def __init__(
        self, params: dict[str, nn.Parameter], masks: dict[str, torch.Tensor], opt_state: str = DEFAULT_POLICY
    ):
        if set(params) != set(masks):
            raise ValueError("masks and parameters name different layers")
        self.params = params
        self.opt_state = check_policy(opt_state)
        self.masks = {name: masks[name].to(device=p.device, dtype=p.dtype) for name, p in params.items()}
        self.ever_active = {name: m.bool().clone() for name, m in self.masks.items()}
        self.apply()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_distribution(
        cls, model: nn.Module, sparsity: float, distribution: str, scope: str, generator: torch.Generator
    ) -> MaskState:
        """Masks of overall sparsity `sparsity` over `scope`, laid out by `distribution`."""
        params = scope_parameters(model, scope)
        shapes = {name: tuple(p.shape) for name, p in params.items()}
        density = 1.0 - sparsity
        if distribution == "global":
            masks = magnitude_masks({n: p.detach() for n, p in params.items()}, density, "global")
        else:
            dens = layer_densities(shapes, density, distribution)
            masks = random_masks(shapes, exact_counts(shapes, dens, density), generator)
        return cls(params, masks)

    @classmethod
    def dense(cls, model: nn.Module, scope: str) -> MaskState:
        params = scope_parameters(model, scope)
        return cls(params, {n: torch.ones_like(p) for n, p in params.items()})

    # -- applying -----------------------------------------------------------------------------
    @torch.no_grad()
    def apply(self) -> None:
        """Zero the weights outside the masks (in place, keeps parameter identity)."""
        torch._foreach_mul_(list(self.params.values()), list(self.masks.values()))

    def before_step(self) -> None:
        """Prepare the gradients for the optimizer step: masked unless the policy keeps them dense."""
        if masks_gradients(self.opt_state):
            self.mask_grads()

    @torch.no_grad()
    def mask_grads(self) -> None:
        pairs = [(p.grad, self.masks[n]) for n, p in self.params.items() if p.grad is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])

    # -- measuring ----------------------------------------------------------------------------
    def layer_density(self) -> dict[str, float]:
        return {name: float(m.sum()) / m.numel() for name, m in self.masks.items()}

    def nnz(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def numel(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    def density(self) -> float:
        return self.nnz() / self.numel()

    def weight_density(self) -> float:
        """Measured fraction of non-zero weights over the scope (what the results report)."""
        nz = sum(int((p != 0).sum()) for p in self.params.values())
        return nz / self.numel()

    def exploration_rate(self) -> float:
        """Fraction of the scope that has been active at any time (in-time over-parameterization)."""
        return sum(int(a.sum()) for a in self.ever_active.values()) / self.numel()

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "masks": {n: m.bool().cpu() for n, m in self.masks.items()},
            "ever_active": {n: a.cpu() for n, a in self.ever_active.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        for name, p in self.params.items():
            self.masks[name] = state["masks"][name].to(device=p.device, dtype=p.dtype)
            self.ever_active[name] = state["ever_active"][name].to(p.device)
        self.apply()
