"""`small-dense`: the dense GAN with half the channels in G and D (paper Table 4)."""

from __future__ import annotations

from sparsebench import hookimpl
from sparsebench_builtins.methods.dense import Dense


class SmallDense(Dense):
    name = "small-dense"
    description = "dense G and D at half width (the paper's Small Dense baseline)"
    width = 0.5
    title = "Small Dense GAN"
    order = 20
    reference = "dense"


@hookimpl
def register_methods(register):
    register(SmallDense())
