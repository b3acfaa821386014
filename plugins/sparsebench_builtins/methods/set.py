"""`set`: SDST-SET, the dynamic-sparse baseline of ADAPT (Wang et al., NeurIPS 2023) with SET's random growth.

ERK masks on G and D; every delta_t G steps, G drops the fraction p of its active weights with the smallest
|w| over the whole network and regrows as many at random, at zero (p: cosine decay from p0 to 0.005); a
weight just dropped may be regrown, and RigL's noise breaks ties. D stays static unless `update` includes
it. `ranking=layer` is per-layer SET, shown as its own row. Everything but the scores is the kit's
(`sparsebench.DynamicSparseMethod`).
"""

from __future__ import annotations

from sparsebench import DynamicSparseMethod, TopologyUpdate, hookimpl


class SET(DynamicSparseMethod):
    name, version = "set", "0.2.0"
    title, order = "SDST-SET", 80
    variant_titles = {"ranking=layer": "SET (per layer)"}
    description = "SDST-SET: sparse G and D from scratch, G's connectivity updated by random regrowth, SEMA"
    callbacks_class = TopologyUpdate  # drop the smallest |w|, grow at random


@hookimpl
def register_methods(register):
    register(SET())
