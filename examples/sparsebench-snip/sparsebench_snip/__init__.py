"""`snip`: a static sparse GAN whose masks SNIP picks at init, the largest |w * dL/dw| on one minibatch.
A third-party method plugin that imports only `sparsebench`; a resumed run recomputes the same masks
(seeded weights, named streams) before its checkpoint restores the training state."""

import torch

import sparsebench as sb


def snip_masks(model, loss, scope: str, sparsity: float):
    """Masks keeping the (1 - sparsity) share of `scope`'s weights with the largest |w * grad| (one global cut)."""
    if sparsity <= 0:
        return None
    params = sb.scope_parameters(model, scope)
    grads = torch.autograd.grad(loss, list(params.values()), retain_graph=True)
    saliency = {n: (p.detach() * g).abs() for (n, p), g in zip(params.items(), grads)}
    return sb.MaskState(params, sb.magnitude_masks(saliency, 1.0 - sparsity, "global"))  # zeroes pruned weights


class SNIP(sb.Method):
    name, title, reference = "snip", "SNIP (static)", "static"
    description = "static sparse G and D, masks chosen at init by SNIP saliency |w * grad| on one minibatch"

    def run(self, ctx: sb.MethodContext):
        G, D = ctx.build_models()
        x, y = ctx.batch(ctx.spec.batch_size, stream="snip")
        z = torch.randn(len(x), ctx.spec.z_dim, generator=ctx.rng("snip-noise")).to(x.device)
        fake = G(z, y)
        g_masks = snip_masks(G, sb.g_hinge_loss(D(fake, y)), ctx.config.scope, ctx.config.sg)
        d_masks = snip_masks(D, sb.d_hinge_loss(D(x, y), D(fake.detach(), y)), ctx.config.scope, ctx.config.sd)
        state = ctx.state(G, D, g_masks, d_masks)
        ctx.train(state)
        ctx.finish(state)


@sb.hookimpl
def register_methods(register):
    register(SNIP())
