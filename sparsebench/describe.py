"""Analysis without training: model sizes (`sparsebench describe`) and cost tables (`sparsebench flops`)."""

from __future__ import annotations

from sparsebench import SparsebenchError
from sparsebench.config import DEFAULT_DISTRIBUTION, RunConfig
from sparsebench.flop_conventions import PAPER_FLOPS_PER_FMA
from sparsebench.flops import GANFlops, count_gan
from sparsebench.interfaces import DensePass, FlopPlan, Phase
from sparsebench.kit import resolved_options
from sparsebench.sparse.distributions import layer_densities
from sparsebench.sparse.scope import scope_parameters

NUM_CLASSES = 10


def num_classes(arch, spec) -> int:
    """Classes the preset's data set has (10 unless the architecture says otherwise)."""
    return getattr(arch, "preset_classes", {}).get(spec.dataset, NUM_CLASSES)


def _build(plugins, arch_name: str, spec, width: float = 1.0, arch_options: tuple = ()):
    import torch

    torch.manual_seed(0)
    arch = plugins.archs.get(arch_name)
    return arch.build(spec, num_classes(arch, spec), width, **dict(arch_options))


def describe(
    plugins,
    arch_name: str,
    spec,
    scope: str,
    sg: float,
    sd: float,
    distribution: str = DEFAULT_DISTRIBUTION,
    arch_options: tuple = (),
    config: RunConfig | None = None,
) -> dict:
    """Parameter counts, per-layer shapes with their densities, and dense forward FLOPs per image.

    With a method's run `config`, the densities are those of the last phase of the method's FLOP plan
    (`Method.flop_phases` with the config's options: the generator it evaluates) and the plan is listed."""
    G, D = _build(plugins, arch_name, spec, arch_options=arch_options)
    flops = count_gan(G, D, spec, scope, 1)
    out = {
        "arch": arch_name,
        "resolution": spec.resolution,
        "width": spec.width,
        "scope": scope,
        "distribution": distribution,
        "sg": sg,
        "sd": sd,
        "estimate": distribution == "global" and (sg > 0 or sd > 0),  # shown as uniform: the weights decide
    }
    planned: dict[str, dict | None] = {}
    if config is not None:
        items, _, _ = flop_plan(plugins, config, {})
        last = [i for i in items if isinstance(i, Phase)][-1]
        planned = {"g": last.g_density, "d": last.d_density}
        out["method"] = config.method
        out["estimate"] = last.estimate  # the densities shown are a prediction (see `Phase.estimate`)
        out["method_options"] = dict(config.method_options)
        out["plan"] = [_plan_item(i) for i in items]
    for key, model, sparsity, mf in (("g", G, sg, flops.g), ("d", D, sd, flops.d)):
        params = scope_parameters(model, scope)
        shapes = {n: tuple(p.shape) for n, p in params.items()}
        kind = distribution if distribution != "global" else "uniform"
        dens = layer_densities(shapes, 1.0 - sparsity, kind) if sparsity > 0 else {n: 1.0 for n in shapes}
        if config is not None:
            dens = {n: (planned[key] or {}).get(n, 1.0) for n in shapes}
        out[f"{key}_params"] = sum(p.numel() for p in model.parameters())
        out[f"{key}_scope_params"] = sum(p.numel() for p in params.values())
        out[f"{key}_flops"] = mf.total
        out[f"{key}_layers"] = [
            {"name": n, "shape": list(s), "params": params[n].numel(), "density": dens[n], "flops": mf.layers[n]}
            for n, s in shapes.items()
        ]
    return out


def _plan_item(item) -> dict:
    if isinstance(item, DensePass):
        return {"label": item.label, "dense_pass": True, "g_images": item.g_images, "d_images": item.d_images}
    return {
        "label": item.label,
        "steps": item.steps,
        "g_dense": item.g_density is None,
        "d_dense": item.d_density is None,
        "g_dense_grad_steps": item.g_dense_grad_steps,
        "d_dense_grad_steps": item.d_dense_grad_steps,
        "estimate": item.estimate,
    }


def _shapes(G, D, scope: str) -> tuple[dict, dict]:
    g, d = ({n: tuple(p.shape) for n, p in scope_parameters(m, scope).items()} for m in (G, D))
    return g, d


def flop_plan(plugins, cfg: RunConfig, cache: dict) -> tuple[list, GANFlops, GANFlops]:
    """The method's FLOP plan for `cfg` (its options included), the counted models it trains at its width,
    and the dense GAN of the same arch at full width; `cache` keeps counted models across configs."""
    method = plugins.methods.get(cfg.method)
    key = (cfg.arch, cfg.train, cfg.scope, cfg.arch_options)
    if key not in cache:
        G, D = _build(plugins, cfg.arch, cfg.train, arch_options=cfg.arch_options)
        cache[key] = (count_gan(G, D, cfg.train, cfg.scope, 1), _shapes(G, D, cfg.scope))
    dense, shapes = cache[key]
    gan = dense
    if method.width != 1.0:
        G, D = _build(plugins, cfg.arch, cfg.train, method.width, cfg.arch_options)
        gan, shapes = count_gan(G, D, cfg.train, cfg.scope, 1), _shapes(G, D, cfg.scope)
    items = list(method.flop_phases(FlopPlan(cfg, shapes[0], shapes[1], resolved_options(method, cfg))))
    if not any(isinstance(i, Phase) for i in items):
        raise SparsebenchError(f"method {cfg.method!r}: its flop_phases returned no training Phase")
    return items, gan, dense


ESTIMATE_NOTE = (  # under a table that marks a plan of `Phase.estimate` densities with "~"
    "~ an estimate: these runs' per-layer densities follow the data or trained weights (a global cut or ranking, "
    "a density steered in training), counted here at initial or uniform densities; a trained run stores what it "
    "really trained at"
)


def cost_table(plugins, configs: list[RunConfig], convention: str = "fvcore") -> list[dict]:
    """Training and testing FLOPs of each config from its method's FLOP plan, without training, in `convention`
    (fvcore counts the plan's declared extra work; the paper's convention leaves it out); `estimate`: a phase
    of the plan predicts densities that depend on the data or on trained weights (`Phase.estimate`)."""
    scale = PAPER_FLOPS_PER_FMA if convention == "paper" else 1.0
    rows = []
    cache: dict = {}
    for cfg in configs:
        items, gan, dense = flop_plan(plugins, cfg, cache)
        train = gan.plan(items, convention)
        test = gan.test([i for i in items if isinstance(i, Phase)][-1].g_density)
        dense_train = cfg.train.steps * dense.step()
        rows.append(
            {
                "method": cfg.method,
                "arch": cfg.arch,
                "sg": cfg.sg,
                "sd": cfg.sd,
                "train_flops": scale * train,
                "test_flops": scale * test,
                "train_rel": train / dense_train,
                "test_rel": test / dense.test(),
                "estimate": any(i.estimate for i in items if isinstance(i, Phase)),
            }
        )
    return rows
