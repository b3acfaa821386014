"""`set`: SDST-SET, the dynamic-sparse baseline of ADAPT (Wang et al., NeurIPS 2023) with SET's random growth.

ERK masks on G and D; every delta_t G steps, G drops the fraction p of its active weights with the smallest
|w| and regrows as many inactive ones at random, at zero (p: cosine decay from p0); D stays static unless
`update` includes it. Everything but the scores is the engine's (sparsebench.sparse.dynamic).
"""

from __future__ import annotations

from sparsebench import DynamicSparseMethod, TopologyUpdate, hookimpl


class SET(DynamicSparseMethod):
    name = "set"
    title, order = "SDST-SET", 80
    description = "SDST-SET: sparse G and D from scratch, G's connectivity updated by random regrowth, SEMA"
    hooks = TopologyUpdate  # drop the smallest |w|, grow at random


@hookimpl
def register_methods(register):
    register(SET())
