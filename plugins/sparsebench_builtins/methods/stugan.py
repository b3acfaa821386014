"""`stugan`: STU-GAN (paper Algorithm 1): sparse-to-sparse training with generator exploration.

ERK masks on G and D; every dT G steps, prune the fraction p of each explored layer's active
weights with the smallest |w| and regrow as many inactive ones with the largest |grad| of the
current minibatch (random for D, as the authors' code), new weights at zero; p decays from p0 by
a cosine over the run, counted in G steps. The generator is evaluated through SEMA (eq. 5). The
regrowth steps compute G's weight gradients densely: their extra cost is part of the training FLOPs.
"""

from __future__ import annotations

from sparsebench import DynamicSparseMethod, Option, TopologyUpdate, gradient_magnitude, hookimpl


class Exploration(TopologyUpdate):
    """STU-GAN's exploration: G grows where the dense gradient is largest, D (if explored) at random; per
    layer, a weight just pruned is not regrown in the same update, ties broken by position."""

    def uses_gradients(self, net: str) -> bool:
        return net == "g"

    def grow_score(self, net, masks, grads):
        return gradient_magnitude(grads) if net == "g" else super().grow_score(net, masks, grads)


class STUGAN(DynamicSparseMethod):
    name = "stugan"
    description = "STU-GAN: sparse G and D from scratch, G explored by prune-and-regrow, SEMA"
    title = "STU-GAN"
    order = 70
    version = "0.2.0"
    reference = "static"  # the baseline it adds exploration to, at the same s_G and s_D
    length_option = "length"
    callbacks_class = Exploration
    options = (
        Option("explore", str, "g", "which networks explore their connectivity (paper Fig. 5)", ("g", "d", "gd")),
        Option("p0", float, 0.5, "initial update fraction p", interval="(0, 1]"),
        Option("p_min", float, 0.005, "final update fraction of the cosine decay", interval="[0, 1]"),
        Option(
            "delta_t",
            int,
            0,
            "G steps between topology updates (0: the preset's: 500 BigGAN, 1000 SNGAN)",
            interval="[0, inf)",
        ),
        Option(
            "length", int, 1, "training-length multiplier at the same delta_t (paper Table 3: 5)", interval="[1, inf)"
        ),
    )

    def networks(self, options: dict) -> str:
        return options["explore"]

    def length(self, options: dict) -> int:
        return options["length"]

    def update_rules(self, options: dict) -> dict:
        return {}  # Exploration's own: per layer, no regrowth of what was just pruned, ties by position


@hookimpl
def register_methods(register):
    register(STUGAN())
