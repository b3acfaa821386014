"""The SDST baselines (`set`, `rigl`) and ADAPT as their reference code runs them, each rule pinned against
figures worked out by hand from the reference's rule on small tensors (YiteWang/ADAPT@002e2e9 scripts and
`sparselearning/core.py`; google-research/rigl `sparse_optimizers_base.py`)."""

from __future__ import annotations

import types

import pandas as pd
import pytest
import torch
from conftest import loop as train
from torch import nn

from sparsebench import balance
from sparsebench.analysis.cells import MethodInfo, labels
from sparsebench.balance import BalanceProbe
from sparsebench.config import GridRequest, expand_grid
from sparsebench.flops import count_model
from sparsebench.interfaces import Callbacks as Hooks
from sparsebench.interfaces import GANState
from sparsebench.kit import TopologyUpdate
from sparsebench.sparse import CosineSchedule, MaskState, scope_parameters
from sparsebench.sparse.topology import gradient_magnitude, magnitude, noisy_magnitude, update_topology
from sparsebench_builtins.methods import adapt
from sparsebench_builtins.methods.rigl import RigL
from sparsebench_builtins.methods.set import SET


def layers(*weights: list[float], active: list[list[int]]) -> MaskState:
    """One 1 x n conv weight per list, with the given masks (MaskState zeroes what is inactive)."""
    params = {}
    for i, w in enumerate(weights):
        p = nn.Parameter(torch.tensor(w).view(1, 1, 1, -1))
        params[f"l{i}"] = p
    masks = {n: torch.tensor(a, dtype=torch.float32).view_as(p) for (n, p), a in zip(params.items(), active)}
    return MaskState(params, masks)


def flat_masks(masks: MaskState) -> dict[str, list[int]]:
    return {n: m.flatten().int().tolist() for n, m in masks.masks.items()}


class FakeCtx:
    """Just what `Method.run` of set / rigl / adapt uses, capturing the hooks it trains with."""

    def __init__(self, options: dict, steps: int, arch: str = "sngan", sg: float = 0.8, sd: float = 0.8):
        self.options = options
        self.spec = types.SimpleNamespace(steps=steps, explore_interval=30)
        self.config = types.SimpleNamespace(arch=arch, sg=sg, sd=sd, scope="conv", train=self.spec)
        self.hooks: TopologyUpdate | None = None

    def build_models(self):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3)), nn.Sequential(nn.Conv2d(2, 4, 3))

    def masks(self, model, sparsity, stream=""):
        return MaskState.from_distribution(model, sparsity, "uniform", "conv", torch.Generator().manual_seed(0))

    def state(self, G, D, g_masks, d_masks):
        return types.SimpleNamespace(G=G, D=D, g_masks=g_masks, d_masks=d_masks)

    def rng(self, stream):
        return torch.Generator().manual_seed(7)

    def train(self, state, steps=None, hooks=None):
        self.hooks = hooks

    def finish(self, state, **info):
        pass


def options_of(method) -> dict:
    return {o.name: o.default for o in method.options}


# -- set and rigl: global ranking by default, per layer as another row --------------------------------------


def test_set_and_rigl_rank_over_the_whole_network_by_default():
    for method in (SET(), RigL()):
        ctx = FakeCtx(options_of(method), steps=100)
        method.run(ctx)
        assert options_of(method)["ranking"] == "global"
        assert ctx.hooks is not None and ctx.hooks.per_layer is False
        assert ctx.hooks.regrow_pruned is True and ctx.hooks.drop_noise == 1e-5
        assert ctx.hooks.schedule.p_min == 0.005  # the reference's CosineDecay floor
        ctx = FakeCtx({**options_of(method), "ranking": "layer"}, steps=100)
        method.run(ctx)
        assert ctx.hooks is not None and ctx.hooks.per_layer is True


def test_global_and_per_layer_ranking_by_hand():
    # l0: |w| 0.1, 0.2 active; l1: |w| 0.5, 0.6 active; gradients at the inactive positions 0.3, 0.4 / 0.7, 0.9
    def toy():
        m = layers([0.1, 0.2, 0.0, 0.0], [0.5, 0.6, 0.0, 0.0], active=[[1, 1, 0, 0], [1, 1, 0, 0]])
        return m, {"l0": torch.tensor([0.0, 0.0, 0.3, 0.4]), "l1": torch.tensor([0.0, 0.0, 0.7, 0.9])}

    m, g = toy()  # per layer, k = round(0.5 x 2) = 1 each: drop the 0.1 and the 0.5, grow the 0.4 and the 0.9
    update_topology(m, 0.5, magnitude(m), gradient_magnitude(g), per_layer=True, regrow_pruned=True)
    assert flat_masks(m) == {"l0": [0, 1, 0, 1], "l1": [0, 1, 0, 1]}
    m, g = toy()  # globally, k = round(0.5 x 4) = 2: drop 0.1 and 0.2 (both l0), grow 0.9 and 0.7 (both l1)
    update_topology(m, 0.5, magnitude(m), gradient_magnitude(g), per_layer=False, regrow_pruned=True)
    assert flat_masks(m) == {"l0": [0, 0, 0, 0], "l1": [1, 1, 1, 1]}
    assert m.nnz() == 4


def test_a_per_layer_run_is_its_own_row_never_read_as_sdst():
    info = MethodInfo({"set": SET(), "rigl": RigL()})
    df = pd.DataFrame(
        {
            "method": ["set", "set", "rigl", "rigl"],
            "variant": ["", "ranking=layer", "ranking=layer,update=gd", "update=gd"],
            "arch": "sngan",
            "preset": "unknown-preset",
            "steps": 10,
        }
    )
    assert labels(df, info).tolist() == [
        "SDST-SET",
        "SET (per layer)",
        "RigL (per layer) [update=gd]",
        "SDST-RigL [update=gd]",
    ]


# -- regrowing a weight just pruned --------------------------------------------------------------------------


def test_a_weight_just_pruned_may_be_regrown_and_keeps_its_value_and_state():
    # active |w| 0.1, 0.5, 0.9 and one inactive position; k = round(1/3 x 3) = 1: the 0.1 is dropped; the grow
    # candidates are the inactive position (|grad| 0.2) and, under the reference's rule, the one just dropped
    # (|grad| 0.8), which wins: the mask is unchanged, the weight keeps 0.1 and its optimizer state.
    def toy():
        m = layers([0.1, 0.5, 0.9, 0.0], active=[[1, 1, 1, 0]])
        m.opt_state = "zero"  # a policy that would zero the state at pruned and grown positions
        p = m.params["l0"]
        opt = torch.optim.Adam([p])
        opt.state[p] = {"step": torch.tensor(5.0), "exp_avg": torch.ones_like(p), "exp_avg_sq": torch.ones_like(p)}
        return m, opt, {"l0": torch.tensor([0.8, 0.0, 0.0, 0.2])}

    m, opt, g = toy()
    result = update_topology(m, 1 / 3, magnitude(m), gradient_magnitude(g), opt, regrow_pruned=True)
    p = m.params["l0"]
    assert flat_masks(m) == {"l0": [1, 1, 1, 0]}
    assert p.detach().flatten().tolist() == pytest.approx([0.1, 0.5, 0.9, 0.0])
    assert opt.state[p]["exp_avg"].flatten().tolist() == [1.0, 1.0, 1.0, 1.0]
    assert result.counts == {"l0": 0} and not result.pruned["l0"].any() and not result.grown["l0"].any()
    m, opt, g = toy()  # STU-GAN's rule: only positions inactive before the update are candidates
    update_topology(m, 1 / 3, magnitude(m), gradient_magnitude(g), opt, regrow_pruned=False)
    p = m.params["l0"]
    assert flat_masks(m) == {"l0": [0, 1, 1, 1]}
    assert p.detach().flatten().tolist() == pytest.approx([0.0, 0.5, 0.9, 0.0])
    assert opt.state[p]["exp_avg"].flatten().tolist() == [0.0, 1.0, 1.0, 0.0]


# -- ties broken by RigL's noise from the run's stream -------------------------------------------------------


def tie_toy():
    return layers([0.3, 0.3, 0.3, 0.3, 0.0, 0.0], active=[[1, 1, 1, 1, 0, 0]])


def test_a_tie_is_broken_by_the_seeded_noise_as_rigl_does():
    # four equal magnitudes, k = round(0.25 x 4) = 1. RigL ranks |w| + N(0, 1e-5): the dropped position is the
    # argmin of the first four of the six noise draws the layer takes from the stream (one per weight)
    dropped = []
    for seed in range(6):
        m = tie_toy()
        expected = int(torch.argmin(torch.randn(6, generator=torch.Generator().manual_seed(seed))[:4]))
        hooks = TopologyUpdate("g", 1, CosineSchedule(0.25, 0.25, 10), torch.Generator().manual_seed(seed))
        hooks.drop_noise = 1e-5
        scores = hooks.drop_score("g", m, None)
        update_topology(m, 0.25, scores, lambda n: torch.zeros(6), regrow_pruned=False)
        gone = [i for i in range(4) if m.masks["l0"].flatten()[i] == 0]
        assert gone == [expected]
        dropped.append(expected)
    assert len(set(dropped)) > 1  # not always the first position, as a position-ordered sort would give
    m = tie_toy()  # without noise (STU-GAN's rule): position order
    update_topology(m, 0.25, magnitude(m), lambda n: torch.zeros(6))
    assert m.masks["l0"].flatten().tolist()[:4] == [0, 1, 1, 1]


def test_the_noise_is_small_reproducible_and_survives_a_resume():
    m = layers([0.1, 0.2], active=[[1, 1]])
    gen = torch.Generator().manual_seed(3)
    hooks = TopologyUpdate("g", 1, CosineSchedule(), gen, drop_noise=1e-5)
    saved = hooks.state_dict()
    first = hooks.drop_score("g", m, None)("l0")
    assert (first - torch.tensor([0.1, 0.2])).abs().max() < 1e-4  # noise of 1e-5 reorders only near-ties
    other = TopologyUpdate("g", 1, CosineSchedule(), torch.Generator().manual_seed(99), drop_noise=1e-5)
    other.load_state_dict(saved)
    assert torch.equal(other.drop_score("g", m, None)("l0"), first)
    assert torch.equal(noisy_magnitude(m, torch.Generator().manual_seed(3))("l0"), first)


# -- ADAPT: scope, D's starting density, intervals, window, measurement mode --------------------------------


class CondNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.gain, self.bias = nn.Linear(3, 4, bias=False), nn.Linear(3, 4, bias=False)


class ToyGAN(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(3, 8)
        self.conv = nn.Conv2d(2, 2, 3)
        self.bn = CondNorm()
        self.embed = nn.Embedding(5, 4)
        self.norm = nn.BatchNorm2d(2)
        self.classifier = nn.Linear(4, 1)

    def forward(self, x):
        return self.classifier(self.l1(x)[:, :4])


def test_adapts_scope_is_the_references():
    # the reference sparsifies every weight but biases, norms, embeddings and names holding gain, bias, classifier
    model = ToyGAN()
    assert list(scope_parameters(model, "weights")) == ["l1", "conv"]
    assert list(scope_parameters(model, "conv+linear")) == ["l1", "conv", "bn.gain", "bn.bias", "classifier"]
    assert list(scope_parameters(model, "conv")) == ["conv"]
    # FLOP counting follows the scope: the sparse linear is a counted layer, the classifier is not
    counted = count_model(model, (torch.zeros(2, 3),), "weights", 2)
    assert set(counted.layers) == {"l1", "conv"} and counted.layers["l1"] == 3 * 8


def test_adapt_takes_its_scope_and_gs_density_for_d_by_default(plugins):
    assert adapt.ADAPT.scope == "weights"
    request = dict(methods=["adapt"], arch="sngan", sg=[0.9], sd=[0.5, 0.7])
    (cfg,) = expand_grid(GridRequest(**request, preset="paper"), plugins)
    assert (cfg.scope, cfg.sg, cfg.sd) == ("weights", 0.9, 0.9)  # D starts at density 0.1, G's, whatever s_D
    for preset in ("quick", "small"):  # too narrow for its scope: G would starve; every method at conv there
        (cfg,) = expand_grid(GridRequest(**request, preset=preset), plugins)
        assert (cfg.scope, cfg.sg, cfg.sd) == ("conv", 0.9, 0.9)
    asked = expand_grid(
        GridRequest(
            methods=["adapt"], arch="sngan", sg=[0.9], sd=[0.5, 0.7], scope="conv", options={"adapt": {"d_start": "sd"}}
        ),
        plugins,
    )
    assert [(c.scope, c.sd) for c in asked] == [("conv", 0.5), ("conv", 0.7)]
    (other,) = expand_grid(GridRequest(methods=["static"], arch="sngan", sg=[0.9], sd=[0.5]), plugins)
    assert (other.scope, other.sd) == ("conv", 0.5)  # methods that declare no scope keep conv
    ctx = FakeCtx(options_of(adapt.ADAPT()), steps=1500, sg=0.9, sd=0.9)
    adapt.ADAPT().run(ctx)
    assert ctx.hooks is not None and ctx.hooks.d_density == pytest.approx(0.1)
    with pytest.raises(Exception, match="d_start=sg needs s_D = s_G"):
        adapt.ADAPT().run(FakeCtx(options_of(adapt.ADAPT()), steps=1500, sg=0.9, sd=0.5))


@pytest.mark.parametrize(
    "arch,steps,mode,expected",
    [
        # the reference's own lengths: its numbers (SNGAN scripts, 100,000 steps; BigGAN script, 200,000)
        ("sngan", 100_000, "relaxed", (500, 1000, 10, 100, 0)),
        ("sngan", 100_000, "strict", (500, 2000, 10, 100, 0)),
        ("biggan", 200_000, "relaxed", (500, 1000, 10, 100, 0)),
        # SNGAN's paper preset (50,000 steps, x 0.5): 250, 500, 5, a window of 500 / 5 = 100 samples
        ("sngan", 50_000, "relaxed", (250, 500, 5, 100, 0)),
        # a tenth of the reference's length is still scaled by the fraction: 10,000 SNGAN steps x 0.1: 50, 100, 1,
        # a window of 100 / 1 = 100 samples
        ("sngan", 10_000, "relaxed", (50, 100, 1, 100, 0)),
        # below a tenth, in optimizer steps (FakeCtx's preset updates G every 30 steps): small presets, 1,500 steps:
        # G every max(30, 500 x 0.015 = 7.5 -> 8) = 30; a ratio every max(1, 10 x 0.015 -> 0) = 1; 100 samples;
        # D every 100 x 1 = 100 G steps (strict: 200); no decision before 10 % of 1,500 = 150
        ("sngan", 1500, "relaxed", (30, 100, 1, 100, 150)),
        ("sngan", 1500, "strict", (30, 200, 1, 100, 150)),
        ("biggan", 1500, "relaxed", (30, 100, 1, 100, 150)),  # BigGAN x 0.0075: the same in optimizer steps
        # 9,999 SNGAN steps (x 0.09999, just short): G max(30, 49.995 -> 50) = 50, a ratio every 0.9999 -> 1,
        # D every 100, no decision before 1,000
        ("sngan", 9_999, "relaxed", (50, 100, 1, 100, 1000)),
    ],
)
def test_adapts_intervals_per_arch_scale_the_references(arch, steps, mode, expected):
    ref = adapt.Schedule.for_run(arch, types.SimpleNamespace(steps=steps, explore_interval=30), mode)
    assert (ref.g_interval, ref.d_interval, ref.ratio_every, ref.window, ref.first) == expected
    ctx = FakeCtx({**options_of(adapt.ADAPT()), "mode": mode}, steps=steps, arch=arch, sd=0.8)
    adapt.ADAPT().run(ctx)
    h = ctx.hooks
    assert isinstance(h, adapt.BalancedTraining)
    assert (h.interval, h.d_interval, h.balance_ratio_every, h.window.maxlen, h.first) == expected
    assert h.per_layer is False and h.regrow_pruned is True and h.drop_noise == 1e-5
    assert h.balance_ratio_mode == "train" and h.schedule.p_min == 0.005
    probe = BalanceProbe.asked_by(h)  # what a run measures for these callbacks, under any --kernels
    assert (probe.every, probe.mode) == (h.balance_ratio_every, "train")


def d_only_state(sparsity: float, *widths: int) -> tuple[GANState, MaskState]:
    """A state whose D alone is sparse (1 x `width` convs, uniform masks, random gradients): what ADAPT's D
    decisions act on."""
    torch.manual_seed(0)
    D = nn.Sequential(*(nn.Conv2d(1, 1, (1, w), bias=False) for w in widths))
    d_masks = MaskState.from_distribution(D, sparsity, "uniform", "conv", torch.Generator().manual_seed(0))
    for p in d_masks.params.values():
        p.grad = torch.randn_like(p)
    state = GANState(
        nn.Linear(1, 1), D, torch.optim.SGD(D.parameters()), torch.optim.SGD(D.parameters()), None, d_masks
    )
    return state, d_masks


def feed_ratios(hooks, state: GANState, ratios):
    """Each G step's balance ratio through ADAPT's callbacks; yields after each step."""
    for step, ratio in enumerate(ratios, start=1):
        state.balance_ratio = ratio
        hooks.after_d_backward(state, step)
        hooks.after_g_step(state, step)
        yield step


def test_adapts_window_is_the_references_queue():
    # window 4, a ratio every step, D adjusted every 4. The reference trims its queue to the window after every
    # iteration and adjusts D at iterations that take no sample, so each decision averages the last 4 samples
    # and none is reused: at step 4, samples 1-4 = (3 x 0.5 + 0.9) / 4 = 0.6 >= 0.55: D density 0.5 -> 0.55;
    # at step 8, samples 5-8 = (0.2 + 3 x 0.5) / 4 = 0.425 <= 0.45: back to 0.5 (with sample 4 reused, as
    # before 0.3.1: (0.9 + 0.2 + 3 x 0.5) / 5 = 0.52, no move).
    state, d_masks = d_only_state(0.5, 10, 10)
    hooks = adapt.BalancedTraining(
        100,
        CosineSchedule(0.5, 0.005, 100),
        torch.Generator(),
        mode="relaxed",
        d_interval=4,
        ratio_every=1,
        window=4,
        d_density=0.5,
    )
    seen = [
        (round(hooks.d_density, 10), d_masks.nnz())
        for _ in feed_ratios(hooks, state, [0.5, 0.5, 0.5, 0.9, 0.2, 0.5, 0.5, 0.5])
    ]
    assert seen[3] == (0.55, 11) and seen[7] == (0.5, 10)
    assert seen[:3] == [(0.5, 10)] * 3


def test_the_ratio_is_measured_in_train_mode_as_the_reference_does(plugins, monkeypatch):
    from test_dynamic import tiny_state

    calls = []
    forced = torch.tensor(0.5, dtype=torch.float64)
    monkeypatch.setattr(balance, "ratio_on_device", lambda real, pre, post: calls.append((real, pre, post)) or forced)

    def run(mode: str):
        spec, state, batcher = tiny_state(plugins)
        outputs = []
        state.D.register_forward_hook(lambda m, inp, out: outputs.append((inp[0].detach(), out.detach().flatten())))
        modes = []
        state.G.register_forward_hook(lambda m, inp, out: modes.append(m.training))
        hooks = Hooks()
        hooks.balance_ratio_every, hooks.balance_ratio_mode = 1, mode
        calls.clear()
        train(state, 1, spec, batcher, 10, torch.Generator().manual_seed(5), lambda: 0.0, hooks)
        u = [b.clone() for n, b in state.D.named_buffers() if n.endswith("_u")]
        bn = [b.clone() for n, b in state.G.named_buffers() if n.endswith("running_mean")]
        return spec, outputs, modes, calls[-1], u, bn

    spec, outputs, modes, (real, pre, post), u_train, bn_train = run("train")
    n = 2 * spec.n_critic  # D's forwards in its steps; then the G step's, then G_post's and the real batch's
    assert len(outputs) == n + 3 and all(modes)  # every G forward in train mode, none in eval mode
    assert torch.equal(pre, outputs[n][1])  # D(G_pre(z)): the G step's own output
    assert torch.equal(post, outputs[n + 1][1]) and torch.equal(real, outputs[n + 2][1])
    assert torch.equal(outputs[n + 2][0], outputs[n - 2][0])  # D's last real batch
    _, outputs_eval, modes_eval, _, u_eval, bn_eval = run("eval")
    assert modes_eval[-2:] == [False, False]  # the eval-mode measurement (the other methods' at logged steps)
    # train mode advances D's spectral-norm vectors and G's BN statistics, as in the reference
    assert any(not torch.equal(a, b) for a, b in zip(u_train, u_eval))
    assert any(not torch.equal(a, b) for a, b in zip(bn_train, bn_eval))


def test_adapts_first_decision_waits_for_the_transient_and_every_decision_is_counted():
    """Window 2, D every 2 G steps from step 4 on: no decision at step 2 although the window is full; at 4 the
    mean 0.2 moves D from 0.1 down to its floor 0.05; at 6 the mean 0.5 is in the band; at 8 and 10 the mean 0.2
    asks for less, and the floor holds D."""
    state, _ = d_only_state(0.9, 40)
    hooks = adapt.BalancedTraining(
        100, CosineSchedule(0.5, 0.005, 100), torch.Generator(), mode="relaxed", d_interval=2, ratio_every=1,
        window=2, d_density=0.1, first=4,
    )  # fmt: skip
    ratios = [0.2, 0.2, 0.2, 0.2, 0.5, 0.5, 0.2, 0.2, 0.2, 0.2]
    densities = [round(hooks.d_density, 10) for _ in feed_ratios(hooks, state, ratios)]
    assert densities == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05]
    assert hooks.decisions == {"d_down": 1, "d_up": 0, "d_held": 2, "d_in_band": 1}
    restored = adapt.BalancedTraining(
        100, CosineSchedule(0.5, 0.005, 100), torch.Generator(), mode="relaxed", d_interval=2, ratio_every=1,
        window=2, d_density=0.1, first=4,
    )  # fmt: skip
    restored.load_state_dict(hooks.state_dict())  # a resumed run keeps its count
    assert restored.decisions == hooks.decisions
