"""The two ways of counting FLOPs a cost table can be shown in, and how they differ.

`fvcore` (stored, the default) counts one fused multiply-add as one FLOP and every network at its
own density. `paper` reproduces how the STU-GAN paper counted its Table 2: two FLOPs per
multiply-add, and a phase that trains a sparse G beside a dense D (PF fine-tuning, GAN Tickets
rounds) costs a dense step times G's FLOP density, i.e. without the dense D's share, and the work a
method declares beyond its sparse steps (dense weight gradients of regrowth steps, dense scoring passes)
is left out, as the paper charges every step at its sparse cost.
"""

from __future__ import annotations

from sparsebench import SparsebenchError

CONVENTIONS = ("fvcore", "paper")
PAPER_FLOPS_PER_FMA = 2.0

CONVENTION_NOTES = {
    "fvcore": "FLOPs as fvcore counts them (1 fused multiply-add = 1 FLOP; backward = 2 × forward); a phase that "
    "trains a sparse G beside a dense D (PF fine-tuning, GAN Tickets rounds) counts D as dense. The "
    "paper's convention (--convention paper) counts 2 FLOPs per multiply-add and scales such phases by "
    "G's FLOP density alone, leaving out the dense D's share, so PF and GAN Tickets cost less there. "
    + "Counted too: the work methods declare beyond sparse steps, the dense weight gradients of regrowth steps "
    "(STU-GAN, SDST-RigL, ADAPT) and one-off dense passes (e.g. SNIP's saliency); the paper's convention "
    "leaves them out.",
    "paper": "FLOPs in the paper's convention: 2 FLOPs per multiply-add (absolute values are twice fvcore's; "
    "ratios are unchanged). The paper also scales a phase that trains a sparse G beside a dense D by G's "
    "FLOP density alone, leaving out the dense D's share; the store keeps fvcore counts, which count D "
    "as dense, so cells marked † (PF, GAN Tickets, any run with s_D = 0) show the D-dense training "
    "ratio and are higher than the paper's; 'sparsebench flops --convention paper' computes them the "
    "paper's way without training. The stored counts also include the work methods declare beyond sparse "
    "steps (the dense weight gradients of regrowth steps, one-off dense passes), which the paper's "
    "convention leaves out (as 'sparsebench flops --convention paper' does).",
}


def check_convention(convention: str) -> str:
    """Return `convention` if known; otherwise one clear error naming the allowed ones."""
    if convention not in CONVENTIONS:
        raise SparsebenchError(f"--convention {convention!r}: allowed: {', '.join(CONVENTIONS)}")
    return convention
