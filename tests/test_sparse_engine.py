"""The sparse engine on the real BigGAN and SNGAN modules (small widths)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import small_spec

from sparsebench.sparse import CosineSchedule, MaskState, SparseEMA, layer_densities, prune_and_regrow, scope_parameters
from sparsebench.sparse.distributions import exact_counts, magnitude_masks

SPEC = small_spec(lr_g=2e-4, lr_d=2e-4, steps=10, explore_interval=5, log_every=10)


def build(plugins, arch: str):
    torch.manual_seed(0)
    return plugins.archs.get(arch).build(SPEC, 10)


def batch(arch_G, n=8):
    z = torch.randn(n, SPEC.z_dim)
    y = torch.randint(0, 10, (n,))
    return z, y


@pytest.mark.parametrize("arch", ["biggan", "sngan"])
@pytest.mark.parametrize("distribution", ["erk", "er", "uniform", "global"])
def test_exact_density_at_init_and_after_adam_with_weight_decay(plugins, arch, distribution):
    G, D = build(plugins, arch)
    masks = MaskState.from_distribution(G, 0.9, distribution, "conv", torch.Generator().manual_seed(1))
    target = round(0.1 * masks.numel())
    assert masks.nnz() == target
    assert sum(int((p != 0).sum()) for p in masks.params.values()) == target
    pruned_before = {n: (m == 0) for n, m in masks.masks.items()}
    opt = torch.optim.Adam(G.parameters(), lr=1e-2, betas=(0.9, 0.999), weight_decay=1e-2)
    for _ in range(100):
        z, y = batch(G)
        loss = G(z, y).square().mean()
        opt.zero_grad()
        loss.backward()
        masks.mask_grads()
        opt.step()
        masks.apply()
    for name, p in masks.params.items():
        assert torch.all(p[pruned_before[name]] == 0), name
        # Adam's moments never accumulated at pruned positions, so nothing could revive them
        assert torch.all(opt.state[p]["exp_avg"][pruned_before[name]] == 0)
    assert sum(int((p != 0).sum()) for p in masks.params.values()) == target


def erk_reference(shapes: dict, density: float) -> dict:
    """An independent ERK solve written from the formula (RigL's dense-forcing loop)."""
    names = list(shapes)
    n = {k: math.prod(shapes[k]) for k in names}
    raw = {k: sum(shapes[k]) / n[k] for k in names}
    dense = set()
    while True:
        rhs = sum(density * n[k] for k in names if k not in dense) - sum((1 - density) * n[k] for k in dense)
        divisor = sum(raw[k] * n[k] for k in names if k not in dense)
        eps = rhs / divisor
        max_prob = max(raw[k] for k in names if k not in dense)
        if eps * max_prob > 1:
            dense |= {k for k in names if k not in dense and raw[k] == max_prob}
        else:
            return {k: (1.0 if k in dense else eps * raw[k]) for k in names}


@pytest.mark.parametrize("arch", ["biggan", "sngan"])
@pytest.mark.parametrize("density", [0.05, 0.1, 0.2, 0.5])
def test_erk_matches_independent_formula(plugins, arch, density):
    G, D = build(plugins, arch)
    for model in (G, D):
        shapes = {n: tuple(p.shape) for n, p in scope_parameters(model, "conv").items()}
        ours = layer_densities(shapes, density, "erk")
        ref = erk_reference(shapes, density)
        for k in shapes:
            assert ours[k] == pytest.approx(ref[k], rel=1e-9), k
        # the densities add up to the target
        total = sum(math.prod(s) for s in shapes.values())
        assert sum(ours[k] * math.prod(shapes[k]) for k in shapes) == pytest.approx(density * total)


def test_erk_forces_small_layers_dense():
    shapes = {"tiny": (4, 3, 1, 1), "big": (256, 256, 3, 3)}
    d = layer_densities(shapes, 0.5, "erk")
    assert d["tiny"] == 1.0 and 0 < d["big"] < 0.5
    counts = exact_counts(shapes, d, 0.5)
    assert sum(counts.values()) == round(0.5 * (12 + 256 * 256 * 9))


@pytest.mark.parametrize("arch", ["biggan", "sngan"])
def test_masked_weights_stay_zero_under_spectral_norm(plugins, arch):
    G, D = build(plugins, arch)
    masks = MaskState.from_distribution(D, 0.7, "erk", "conv", torch.Generator().manual_seed(0))
    x = torch.randn(4, 3, 16, 16)
    y = torch.randint(0, 10, (4,))
    for _ in range(3):  # training-mode forwards run power iterations
        D(x, y).sum().backward()
    for name, module in D.named_modules():
        if name in masks.masks:
            w = module.weight  # sigma-normalised weight, recomputed from the masked original
            assert torch.all(w[masks.masks[name] == 0] == 0)
            assert module.parametrizations.weight.original is masks.params[name]


@pytest.mark.parametrize("arch", ["biggan", "sngan"])
def test_topology_update_exact_counts_and_zero_growth(plugins, arch):
    G, D = build(plugins, arch)
    masks = MaskState.from_distribution(G, 0.8, "erk", "conv", torch.Generator().manual_seed(0))
    masks.opt_state = "zero"
    opt = torch.optim.Adam(G.parameters(), lr=1e-3)
    z, y = batch(G)
    G(z, y).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in masks.params.items()}
    masks.mask_grads()
    opt.step()
    masks.apply()
    before = {n: m.bool().clone() for n, m in masks.masks.items()}
    nnz = masks.nnz()
    result = prune_and_regrow(masks, 0.3, grads, optimizer=opt)
    assert masks.nnz() == nnz
    for name, p in masks.params.items():
        k = min(round(0.3 * int(before[name].sum())), int((~before[name]).sum()))  # dense layers: 0
        assert int(result.pruned[name].sum()) == k == int(result.grown[name].sum())
        assert not torch.any(before[name] & result.grown[name]), "grown only where inactive before"
        assert torch.all(before[name][result.pruned[name]]), "pruned only where active"
        assert torch.all(p[result.grown[name]] == 0), "grown weights start at zero"
        assert torch.all(opt.state[p]["exp_avg"][result.grown[name]] == 0)
        if k:  # the grown positions carry the largest gradients among the inactive ones
            g = grads[name].abs()
            inactive = ~before[name]
            assert g[result.grown[name]].min() >= g[inactive & ~result.grown[name]].max()
    assert masks.exploration_rate() > masks.density()


def test_pruned_weights_had_the_smallest_magnitudes(plugins):
    G, _ = build(plugins, "sngan")
    masks = MaskState.from_distribution(G, 0.5, "uniform", "conv", torch.Generator().manual_seed(0))
    weights = {n: p.detach().abs().clone() for n, p in masks.params.items()}
    before = {n: m.bool().clone() for n, m in masks.masks.items()}
    result = prune_and_regrow(masks, 0.25, None, torch.Generator().manual_seed(0))
    for name in masks.params:
        kept = before[name] & ~result.pruned[name]
        if result.pruned[name].any():
            assert weights[name][result.pruned[name]].max() <= weights[name][kept].min()


def test_sema_new_weight_equals_weight_after_first_update(plugins):
    G, D = build(plugins, "biggan")
    masks = MaskState.from_distribution(G, 0.8, "erk", "conv", torch.Generator().manual_seed(0))
    ema = SparseEMA(G, decay=0.999, start=0, masks=masks)
    opt = torch.optim.Adam(G.parameters(), lr=1e-2)

    def step(t):
        z, y = batch(G)
        opt.zero_grad()
        G(z, y).square().mean().backward()
        grads = {n: p.grad.clone() for n, p in masks.params.items()}
        masks.mask_grads()
        opt.step()
        masks.apply()
        ema.update(t)
        return grads

    for t in range(1, 4):
        grads = step(t)
    result = prune_and_regrow(masks, 0.5, grads, optimizer=opt)
    ema.on_topology_update(result.pruned, result.grown)
    step(4)
    ema_params = dict(ema.model.named_parameters())
    live = dict(G.named_parameters())
    for name, p in masks.params.items():
        key = next(k for k, v in live.items() if v is p)
        e = ema_params[key]
        grown = result.grown[name]
        assert torch.equal(e[grown], p.detach()[grown]), "SEMA starts at the weight's own value"
        assert torch.all(e[masks.masks[name] == 0] == 0), "SEMA is zero at pruned positions"
    # and afterwards it averages as usual
    step(5)


def test_same_seed_same_masks(plugins):
    G, _ = build(plugins, "sngan")
    a = MaskState.from_distribution(G, 0.9, "erk", "conv", torch.Generator().manual_seed(3))
    b = MaskState.from_distribution(G, 0.9, "erk", "conv", torch.Generator().manual_seed(3))
    c = MaskState.from_distribution(G, 0.9, "erk", "conv", torch.Generator().manual_seed(4))
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert not all(torch.equal(a.masks[n], c.masks[n]) for n in a.masks)


def test_magnitude_masks_global_vs_uniform():
    w = {"a": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "b": torch.tensor([[10.0, 20.0, 30.0, 40.0]])}
    g = magnitude_masks(w, 0.5, "global")
    assert g["a"].sum() == 0 and g["b"].sum() == 4
    u = magnitude_masks(w, 0.5, "uniform")
    assert u["a"].tolist() == [[0, 0, 1, 1]] and u["b"].tolist() == [[0, 0, 1, 1]]


def test_cosine_schedule():
    s = CosineSchedule(0.5, 0.005, 1000)
    assert s(0) == pytest.approx(0.5)
    assert s(1000) == pytest.approx(0.005)
    assert s(500) == pytest.approx(0.005 + 0.5 * 0.495)
    assert s(250) > s(750)


@pytest.mark.parametrize("policy", ["mean", "zero"])
def test_topology_updates_act_on_the_same_elements_in_channels_last_memory(plugins, policy):
    """A channels-last G (`--channels-last`) has no flat view of its conv weights, its Adam state or its SEMA
    copy: a topology update must prune, grow, reset state and restart SEMA at the same elements as in the
    default memory format (fails with a view error, or at the wrong elements, if any of them indexes memory)."""
    runs = []
    for layout in (torch.contiguous_format, torch.channels_last):
        G, _ = build(plugins, "biggan")
        G = G.to(memory_format=layout)
        masks = MaskState.from_distribution(G, 0.8, "erk", "conv", torch.Generator().manual_seed(0))
        masks.opt_state = policy
        ema = SparseEMA(G, decay=0.9, start=0, masks=masks)
        opt = torch.optim.Adam(G.parameters(), lr=1e-2)
        runs.append((G, masks, ema, opt))
    assert any(p.dim() == 4 and not p.is_contiguous() for p in runs[1][1].params.values())
    torch.manual_seed(1)
    z, y = batch(runs[0][0])
    for t in range(1, 4):
        G0, opt0 = runs[0][0], runs[0][3]
        opt0.zero_grad()
        G0(z, y).square().mean().backward()  # the same gradients for both: the forwards' sums may differ
        for G, masks, ema, opt in runs:
            for q, q0 in zip(G.parameters(), G0.parameters()):
                q.grad = torch.empty_like(q).copy_(q0.grad)  # in q's own memory format
            masks.mask_grads()
            opt.step()
            masks.apply()
            ema.update(t)
        grads = {n: p.grad.clone() for n, p in runs[0][1].params.items()}
        for _, masks, ema, opt in runs:
            result = prune_and_regrow(masks, 0.3, {n: grads[n].clone() for n in masks.params}, optimizer=opt)
            ema.on_topology_update(result.pruned, result.grown)
    (G0, m0, e0, o0), (G1, m1, e1, o1) = runs
    for (n, p0), p1 in zip(m0.params.items(), m1.params.values()):
        assert torch.equal(m0.masks[n].bool(), m1.masks[n].bool()), n
        assert torch.equal(p0, p1), n
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(o0.state[p0][key], o1.state[p1][key]), (n, key)
    for a, b in zip(e0.model.parameters(), e1.model.parameters()):
        assert torch.equal(a, b)
