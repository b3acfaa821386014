"""The optimizer-state policy of the sparse engine (dense, mean, zero) on real modules, real Adam and the real loop."""

from __future__ import annotations

import pytest
import torch
from conftest import SMALL, rows, run_grid, small_spec
from conftest import loop as train

from sparsebench.interfaces import GANState
from sparsebench.sparse import CosineSchedule, MaskState, SparseEMA, prune_and_regrow
from sparsebench.sparse.opt_state import POLICIES
from sparsebench.train.loop import Batcher, adam
from sparsebench_builtins.methods.stugan import Exploration


def first_update_ratio(plugins, arch: str, beta2: float, policy: str, steps: int) -> float:
    """Median |first update| of the weights grown by a topology update over the median |update| of the active ones.

    G is trained against a frozen D of the same architecture with the loop's Adam for `steps` steps
    (so Adam's per-tensor step counter is large), then prune_and_regrow, then one more step.
    """
    torch.manual_seed(0)
    G, D = plugins.archs.get(arch).build(small_spec(), 10)
    D.requires_grad_(False)
    masks = MaskState.from_distribution(G, 0.8, "erk", "conv", torch.Generator().manual_seed(1))
    masks.opt_state = policy
    opt = adam(G.parameters(), 1e-3, 0.0, beta2)
    gen = torch.Generator().manual_seed(0)

    def step():
        z, y = torch.randn(8, SMALL["z_dim"], generator=gen), torch.randint(0, 10, (8,), generator=gen)
        opt.zero_grad(set_to_none=True)
        (-D(G(z, y), y).mean()).backward()
        dense_grads = {n: p.grad.clone() for n, p in masks.params.items()}
        before = {n: p.detach().clone() for n, p in masks.params.items()}
        masks.before_step()
        opt.step()
        masks.apply()
        return dense_grads, before

    for _ in range(steps):
        grads, _ = step()
    result = prune_and_regrow(masks, 0.3, grads, optimizer=opt)
    _, before = step()
    update = {n: (p.detach() - before[n]).abs() for n, p in masks.params.items()}
    grown = torch.cat([update[n][result.grown[n]] for n in update])
    active = torch.cat([update[n][masks.masks[n].bool() & ~result.grown[n]] for n in update])
    assert grown.numel() > 100 and active.numel() > 100
    return float(grown.median() / active.median())


@pytest.mark.parametrize("arch,beta2,steps", [("biggan", 0.999, 300), ("sngan", 0.9, 60)])
@pytest.mark.parametrize("policy", POLICIES)
def test_first_update_of_grown_weights(plugins, arch, beta2, steps, policy):
    ratio = first_update_ratio(plugins, arch, beta2, policy, steps)
    print(f"{arch} beta2={beta2} {policy}: grown / median active update = {ratio:.2f}")
    if policy == "dense":  # the default: warm moments, a regrown weight moves like its neighbours
        assert 1 / 3 <= ratio <= 3
    if policy == "zero" and beta2 == 0.999:  # the defect the default avoids: ~lr * sqrt((1 - b2^t) / (1 - b2))
        assert ratio > 10


@pytest.mark.parametrize("policy", POLICIES)
def test_pruned_weights_never_revive_in_the_loop(plugins, policy):
    """Real loop, G and D explored every 2 steps, Adam with momentum and weight decay: masked weights stay 0."""
    spec = small_spec()
    torch.manual_seed(0)
    G, D = plugins.archs.get("sngan").build(spec, 10)
    g_masks = MaskState.from_distribution(G, 0.8, "erk", "conv", torch.Generator().manual_seed(1))
    d_masks = MaskState.from_distribution(D, 0.5, "erk", "conv", torch.Generator().manual_seed(2))
    g_masks.opt_state = d_masks.opt_state = policy

    def opt(model):
        return torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.5, 0.999), weight_decay=0.1)

    state = GANState(G, D, opt(G), opt(D), g_masks, d_masks, SparseEMA(G, 0.9, 0, g_masks))
    revived = []

    class Checked(Exploration):
        def after_g_step(self, state, step):
            changed = super().after_g_step(state, step)
            for masks in (state.g_masks, state.d_masks):
                revived.extend(n for n, p in masks.params.items() if torch.any(p[masks.masks[n] == 0] != 0))
            return changed

    hooks = Checked("gd", 2, CosineSchedule(0.5, 0.1, spec.steps), torch.Generator().manual_seed(3))
    data = plugins.datasets.get("digits").load(16).train
    train(
        state,
        spec.steps,
        spec,
        Batcher(data, torch.device("cpu"), torch.Generator().manual_seed(4)),
        10,
        torch.Generator().manual_seed(5),
        lambda: 0.0,
        hooks,
    )
    assert hooks.updates >= 2
    assert revived == []
    masked_state = [state.g_opt.state[p]["exp_avg_sq"][g_masks.masks[n] == 0] for n, p in g_masks.params.items()]
    pushed = any(bool(torch.any(s != 0)) for s in masked_state)
    # dense moments would push masked weights (only masking after the step holds them at 0); else state there is 0
    assert pushed == (policy == "dense")


def test_without_regrowth_every_policy_trains_identically(plugins):
    """Adam is elementwise and masked weights are zeroed after each step: the policy only matters for regrowth."""
    spec = small_spec()
    data = plugins.datasets.get("digits").load(16).train
    finals = []
    for policy in POLICIES:
        torch.manual_seed(0)
        G, D = plugins.archs.get("sngan").build(spec, 10)
        g_masks = MaskState.from_distribution(G, 0.8, "erk", "conv", torch.Generator().manual_seed(1))
        d_masks = MaskState.from_distribution(D, 0.5, "erk", "conv", torch.Generator().manual_seed(2))
        g_masks.opt_state = d_masks.opt_state = policy
        state = GANState(
            G, D, adam(G.parameters(), 1e-3, 0.0, 0.999), adam(D.parameters(), 1e-3, 0.0, 0.999), g_masks, d_masks
        )
        train(
            state,
            3,
            spec,
            Batcher(data, torch.device("cpu"), torch.Generator().manual_seed(4)),
            10,
            torch.Generator().manual_seed(5),
            lambda: 0.0,
        )
        finals.append({**G.state_dict(), **{f"D.{k}": v for k, v in D.state_dict().items()}})
    for other in finals[1:]:
        assert all(torch.equal(finals[0][k], other[k]) for k in finals[0])


def adam_state_after_training(plugins, policy: str):
    torch.manual_seed(0)
    G, _ = plugins.archs.get("biggan").build(small_spec(), 10)
    masks = MaskState.from_distribution(G, 0.7, "erk", "conv", torch.Generator().manual_seed(0))
    masks.opt_state = policy
    opt = adam(G.parameters(), 1e-2, 0.5, 0.999)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        G(torch.randn(8, SMALL["z_dim"]), torch.randint(0, 10, (8,))).square().mean().backward()
        grads = {n: p.grad.clone() for n, p in masks.params.items()}
        masks.before_step()
        opt.step()
        masks.apply()
    return masks, opt, grads


@pytest.mark.parametrize("policy", POLICIES)
def test_topology_update_sets_the_state_by_policy(plugins, policy):
    masks, opt, grads = adam_state_after_training(plugins, policy)
    before = {n: m.bool().clone() for n, m in masks.masks.items()}
    saved = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in masks.params.items()}
    result = prune_and_regrow(masks, 0.3, grads, optimizer=opt)
    assert sum(int(g.sum()) for g in result.grown.values()) > 0
    for name, p in masks.params.items():
        pruned, grown = result.pruned[name], result.grown[name]
        survivors = before[name] & ~pruned
        for key in ("exp_avg", "exp_avg_sq"):
            now, old = opt.state[p][key], saved[name][key]
            if policy == "dense":
                assert torch.equal(now, old), "the authors' policy leaves the optimizer alone"
                continue
            untouched = ~(pruned | grown)
            assert torch.equal(now[untouched], old[untouched])
            assert torch.all(now[pruned] == 0)
            if grown.any():
                want = old[survivors].mean() if policy == "mean" else 0.0
                assert torch.all(now[grown] == want), (name, key)
        assert torch.equal(opt.state[p]["step"], saved[name]["step"]), "the per-tensor step counter stays"


def test_bad_policy_is_one_clear_error(store):
    proc = run_grid(store, "static", "sngan", "--opt-state", "warm", check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:")
    assert "warm" in lines[0] and "dense, mean, zero" in lines[0]
    assert not store.exists()  # refused before anything was stored


def test_policy_is_part_of_the_run_id(plugins):
    from sparsebench.config import GridRequest, expand_grid

    def run_id(**policy) -> str:
        return expand_grid(GridRequest(methods=["static"], arch="sngan", steps=2, **policy), plugins)[0].run_id

    ids = {policy: run_id(opt_state=policy) for policy in POLICIES}
    assert len(set(ids.values())) == 3
    assert run_id() == ids["dense"]  # the default


def test_policy_shows_in_results(store):
    run_grid(store, "static", "sngan", "--sg", "0.8", steps=2)
    run_grid(store, "static", "sngan", "--sg", "0.8", "--opt-state", "mean", steps=2)
    got = rows(store)
    assert sorted(r["opt_state"] for r in got) == ["dense", "mean"]
    assert len({r["run_id"] for r in got}) == 2 and all(r["status"] == "done" for r in got)
