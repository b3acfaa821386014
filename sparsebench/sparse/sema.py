"""SEMA: the sparse exponential moving average of a generator (paper eq. 5).

An average over a model's parameters in which pruned positions hold 0 and a newly activated
weight's average starts at the weight's own value at its first update after growth, rather than
at (1 - beta) * w, which a plain EMA would need ~1/(1 - beta) steps to outgrow. With no masks, or
masks that never change, SEMA is the ordinary EMA. Buffers (BN statistics, spectral-norm u/v) are
copied from the live model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sparsebench.sparse.masks import MaskState


class SparseEMA:
    def __init__(self, model: nn.Module, decay: float, start: int = 0, masks: MaskState | None = None):
        self.decay = decay
        self.start = start
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        self._src: list[torch.Tensor] = [p for _, p in sorted(model.named_parameters())]
        self._dst: list[torch.Tensor] = [p for _, p in sorted(self.model.named_parameters())]
        self._src_buf = [b for _, b in sorted(model.named_buffers())]
        self._dst_buf = [b for _, b in sorted(self.model.named_buffers())]
        self.masks = masks
        names = {id(p): n for n, p in model.named_parameters()}
        self._name_of_scope = {}
        if masks is not None:
            dst_by_name = dict(self.model.named_parameters())
            for layer, p in masks.params.items():
                self._name_of_scope[layer] = dst_by_name[names[id(p)]]
        self._fresh: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Call after each optimizer step of G (and its mask), with the G step count."""
        if step <= self.start:
            torch._foreach_copy_(self._dst, self._src)
        else:
            torch._foreach_lerp_(self._dst, self._src, 1.0 - self.decay)
            for layer, fresh in self._fresh.items():  # first update after growth: start at w
                assert self.masks is not None  # growth is only ever reported with masks
                src = self.masks.params[layer]
                dst = self._name_of_scope[layer]
                at = fresh.view(dst.shape)  # flat positions in logical order: any memory format
                dst.copy_(torch.where(at, src, dst))  # not dst[at] = ...: boolean indexing reads the device
        self._fresh = {}
        if self._src_buf:
            torch._foreach_copy_(self._dst_buf, self._src_buf)

    @torch.no_grad()
    def on_topology_update(self, pruned: dict[str, torch.Tensor], grown: dict[str, torch.Tensor]) -> None:
        """Pruned positions average to 0 now; grown ones start at their weight at the next update. Nothing here
        or in that update waits for the device (no boolean indexing, no asking which layers grew: a layer that
        grew nothing is kept too, and its next update changes nothing)."""
        for layer in pruned:
            dst = self._name_of_scope[layer]
            dst.masked_fill_((pruned[layer] | grown[layer]).view(dst.shape), 0.0)
            self._fresh[layer] = grown[layer].view(-1).clone()

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "fresh": {k: v.cpu() for k, v in self._fresh.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self._fresh = {k: v.to(self._dst[0].device) for k, v in state["fresh"].items()}
