"""`rigl`: SDST-RigL, the dynamic-sparse baseline of ADAPT (Wang et al., NeurIPS 2023; RigL: Evci et al. 2020).

As `set`, but regrowth takes the inactive weights with the largest dense gradient of the minibatch (G's after
its backward; D's, with `update=gd`, after its last D backward), counted in the training FLOPs. `ranking=layer`:
per-layer RigL, a row of its own."""

from __future__ import annotations

from sparsebench import DynamicSparseMethod, GradientGrowth, hookimpl


class RigL(DynamicSparseMethod):
    name, version = "rigl", "0.2.0"
    title, order = "SDST-RigL", 90
    variant_titles = {"ranking=layer": "RigL (per layer)"}
    description = "SDST-RigL: sparse G and D from scratch, G's connectivity updated by gradient regrowth, SEMA"
    callbacks_class = GradientGrowth


@hookimpl
def register_methods(register):
    register(RigL())
