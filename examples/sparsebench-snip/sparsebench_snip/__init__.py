"""`snip`: a static sparse GAN whose masks SNIP picks at init, the largest |w * dL/dw| on one minibatch.
A third-party method plugin that imports only `sparsebench`; a resumed run recomputes the same masks
(seeded weights, named streams) before its checkpoint restores the training state. Its FLOP plan
declares the dense saliency pass, which its runs count with `ctx.count`."""

import torch

import sparsebench as sb

CUTS = ("global", "uniform")


def snip_masks(model, loss, scope: str, sparsity: float, cut: str = "global"):
    """Masks keeping the (1 - sparsity) share of `scope`'s weights with the largest |w * grad|: one cut over
    the network (`global`) or the same share of every layer (`uniform`)."""
    if sparsity <= 0:
        return None
    params = sb.scope_parameters(model, scope)
    grads = torch.autograd.grad(loss, list(params.values()), retain_graph=True)
    saliency = {n: (p.detach() * g).abs() for (n, p), g in zip(params.items(), grads)}
    return sb.MaskState(params, sb.magnitude_masks(saliency, 1.0 - sparsity, cut))  # zeroes pruned weights


def saliency_pass(n: int) -> sb.DensePass:
    """The dense work of the saliency: G and D on n fakes for G's loss, D on n real and n fake for D's."""
    return sb.DensePass(g_images=n, d_images=3 * n, label="snip saliency")


class SNIP(sb.Method):
    name, title, reference = "snip", "SNIP (static)", "static"
    version = "0.2.0"  # 0.2.0: the saliency pass counts in the training FLOPs
    description = "static sparse G and D, masks chosen at init by SNIP saliency |w * grad| on one minibatch"
    options = (
        sb.Option("cut", str, "global", "one saliency cut over each network, or the same share of every layer", CUTS),
    )

    def run(self, ctx: sb.MethodContext):
        G, D = ctx.build_models()
        x, y = ctx.batch(ctx.spec.batch_size, stream="snip")
        z = torch.randn(len(x), ctx.spec.z_dim, generator=ctx.rng("snip-noise")).to(x.device)
        fake = G(z, y)
        cut, scope = ctx.options["cut"], ctx.config.scope
        g_masks = snip_masks(G, sb.g_hinge_loss(D(fake, y)), scope, ctx.config.sg, cut)
        d_masks = snip_masks(D, sb.d_hinge_loss(D(x, y), D(fake.detach(), y)), scope, ctx.config.sd, cut)
        ctx.count(saliency_pass(len(x)))
        state = ctx.state(G, D, g_masks, d_masks)
        ctx.train(state)
        ctx.finish(state)

    def flop_phases(self, plan):
        """The saliency pass, then the preset's steps at the cut's densities (a global cut's per-layer
        densities follow the saliency of the data: counted as uniform and declared an estimate)."""
        c = plan.config
        g = sb.layer_densities(plan.g_shapes, 1.0 - c.sg, "uniform") if c.sg > 0 else None
        d = sb.layer_densities(plan.d_shapes, 1.0 - c.sd, "uniform") if c.sd > 0 else None
        estimate = plan.options["cut"] == "global"
        return [saliency_pass(c.train.batch_size), sb.Phase(c.train.steps, g, d, estimate=estimate)]


@sb.hookimpl
def register_methods(register):
    register(SNIP())
