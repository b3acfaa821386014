"""Dynamic sparse training: the topology-update base class, the `set` and `rigl` methods, and the loop surface
they use (after_d_backward, hinge losses, ctx.batch, ConvTranspose2d in the scope)."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import time
import types
from pathlib import Path

import pytest
import torch
from conftest import EXE, rows, run_cli, run_grid, small_spec
from conftest import loop as train
from torch import nn

from sparsebench import SparsebenchError, balance
from sparsebench.flops import count_gan, count_model
from sparsebench.interfaces import Callbacks as Hooks
from sparsebench.interfaces import GANState
from sparsebench.kit import GradientGrowth, TopologyUpdate
from sparsebench.sparse import CosineSchedule, MaskState, SparseEMA, layer_densities, scope_parameters
from sparsebench.train.context import RunContext
from sparsebench.train.loop import Batcher, adam, d_hinge_loss, g_hinge_loss
from sparsebench_builtins.methods import adapt

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    """Environment for CLI subprocesses in which the `set`, `rigl` and `adapt` entry points are visible.

    pyproject.toml declares them; until the package is reinstalled, a throwaway distribution on
    PYTHONPATH declares the same entry points (none once they are installed: the CLI runs in-process).
    """
    site = tmp_path_factory.mktemp("site")
    installed = {ep.name for ep in importlib.metadata.entry_points(group="sparsebench")}
    missing = {"methods-set", "methods-rigl", "methods-adapt"} - installed
    if not missing:
        return {}
    dist = site / "sparsebench_dst_entrypoints-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sparsebench-dst-entrypoints\nVersion: 0.1\n")
    lines = "".join(f"{name} = sparsebench_builtins.methods.{name.split('-')[1]}\n" for name in sorted(missing))
    (dist / "entry_points.txt").write_text("[sparsebench]\n" + lines)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


# -- the base class on crafted weights and gradients ---------------------------------------------------------


def crafted(sparsity: float = 0.5, seed: int = 0):
    """Two conv layers with masks, distinct weights and gradients, in a GANState with G only."""
    torch.manual_seed(seed)
    G = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3))
    masks = MaskState.from_distribution(G, sparsity, "uniform", "conv", torch.Generator().manual_seed(seed))
    for p in masks.params.values():
        p.grad = torch.randn_like(p)
    state = GANState(
        G,
        nn.Linear(1, 1),
        torch.optim.SGD(G.parameters(), lr=0.1),
        torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1),
        masks,
        None,
        SparseEMA(G, 0.9, 0, masks),
    )
    return state, masks


def expected_update(masks: MaskState, k: dict[str, int], grow_by: dict[str, torch.Tensor]):
    """Per layer: the k smallest |w| among active positions, the k largest grow scores among inactive ones."""
    drop, grow = {}, {}
    for n, p in masks.params.items():
        active = masks.masks[n].bool().flatten()
        w = torch.where(active, p.detach().abs().flatten(), torch.inf)
        g = torch.where(active, -torch.inf, grow_by[n].flatten())
        drop[n] = set(torch.argsort(w, stable=True)[: k[n]].tolist())
        grow[n] = set(torch.argsort(g, descending=True, stable=True)[: k[n]].tolist())
    return drop, grow


def update_once(hooks: TopologyUpdate, state: GANState):
    before = {n: m.bool().flatten().clone() for n, m in state.g_masks.masks.items()}
    hooks.after_g_backward(state, 1)
    assert hooks.after_g_step(state, 1)
    after = {n: m.bool().flatten() for n, m in state.g_masks.masks.items()}
    dropped = {n: set(torch.nonzero(before[n] & ~after[n]).flatten().tolist()) for n in before}
    grown = {n: set(torch.nonzero(~before[n] & after[n]).flatten().tolist()) for n in before}
    return before, dropped, grown


def test_rigl_grows_where_the_gradient_is_largest_and_drops_the_smallest_weights():
    state, masks = crafted()
    grads = {n: p.grad.clone() for n, p in masks.params.items()}
    nnz = {n: int(m.sum()) for n, m in masks.masks.items()}
    k = {n: round(0.3 * c) for n, c in nnz.items()}
    drop, grow = expected_update(masks, k, {n: g.abs() for n, g in grads.items()})
    hooks = GradientGrowth("g", 1, CosineSchedule(0.3, 0.3, 10), torch.Generator().manual_seed(0))
    _, dropped, grown = update_once(hooks, state)
    assert dropped == drop and grown == grow
    assert {n: int(m.sum()) for n, m in masks.masks.items()} == nnz  # exact per-layer counts
    for n, p in masks.params.items():  # grown weights start at zero
        assert torch.all(p.detach().flatten()[sorted(grown[n])] == 0)
    assert hooks.updates == 1


def test_set_grows_at_random_reproducibly():
    runs = []
    for seed in (0, 0, 1):
        state, masks = crafted()
        grads = {n: p.grad.abs() for n, p in masks.params.items()}
        _, dropped, grown = update_once(
            TopologyUpdate("g", 1, CosineSchedule(0.3, 0.3, 10), torch.Generator().manual_seed(seed)), state
        )
        runs.append(grown)
    k = {n: len(g) for n, g in runs[0].items()}
    _, by_gradient = expected_update(crafted()[1], k, grads)
    assert runs[0] == runs[1]  # the same stream, the same growth
    assert runs[0] != runs[2]  # another stream, another growth
    assert runs[0] != by_gradient  # not the gradient's choice


def test_global_ranking_moves_density_between_layers_and_keeps_the_total():
    state, masks = crafted()
    first, second = masks.params.values()
    with torch.no_grad():
        first.mul_(1e-3)  # the first layer holds all the smallest weights
    nnz = masks.nnz()
    per_layer_before = masks.layer_density()
    hooks = TopologyUpdate("g", 1, CosineSchedule(0.3, 0.3, 10), torch.Generator().manual_seed(0), per_layer=False)
    update_once(hooks, state)
    assert masks.nnz() == nnz
    names = list(masks.params)
    assert masks.layer_density()[names[0]] < per_layer_before[names[0]]
    assert masks.layer_density()[names[1]] > per_layer_before[names[1]]


# -- the loop surface ----------------------------------------------------------------------------------------


def tiny_state(plugins, policy: str = "dense", arch: str = "sngan"):
    spec = small_spec(n_critic=2)
    torch.manual_seed(0)
    G, D = plugins.archs.get(arch).build(spec, 10)
    g_masks = MaskState.from_distribution(G, 0.8, "erk", "conv", torch.Generator().manual_seed(1))
    d_masks = MaskState.from_distribution(D, 0.5, "erk", "conv", torch.Generator().manual_seed(2))
    g_masks.opt_state = d_masks.opt_state = policy
    state = GANState(
        G,
        D,
        adam(G.parameters(), 1e-3, 0.0, 0.999),
        adam(D.parameters(), 1e-3, 0.0, 0.999),
        g_masks,
        d_masks,
        SparseEMA(G, 0.9, 0, g_masks),
    )
    data = plugins.datasets.get("digits").load(16).train
    return spec, state, Batcher(data, torch.device("cpu"), torch.Generator().manual_seed(4))


def test_after_d_backward_sees_ds_dense_gradients_before_masking(plugins):
    spec, state, batcher = tiny_state(plugins, policy="zero")  # this policy masks gradients before each step
    seen = []

    class Record(Hooks):
        def after_d_backward(self, state, step):
            m = state.d_masks
            seen.append((step, sum(int((p.grad[m.masks[n] == 0] != 0).sum()) for n, p in m.params.items())))

    train(state, 3, spec, batcher, 10, torch.Generator().manual_seed(5), lambda: 0.0, Record())
    assert [s for s, _ in seen] == [1, 1, 2, 2, 3, 3]  # after each of the n_critic D backwards
    assert all(nonzero > 0 for _, nonzero in seen)


def test_rigl_on_d_grows_where_ds_gradient_is_largest(plugins):
    spec, state, batcher = tiny_state(plugins)
    checked = []

    class Checked(GradientGrowth):
        def after_g_step(self, state, step):
            if not self.due(step):
                return super().after_g_step(state, step)
            m = state.d_masks
            k = {
                n: min(round(self.schedule(step) * int(mask.sum())), int((mask == 0).sum()))  # dense layers: 0
                for n, mask in m.masks.items()
            }
            drop, grow = expected_update(m, k, {n: g.abs() for n, g in self.grads["d"].items()})
            before = {n: mask.bool().flatten().clone() for n, mask in m.masks.items()}
            changed = super().after_g_step(state, step)
            after = {n: mask.bool().flatten() for n, mask in m.masks.items()}
            assert {n: set(torch.nonzero(~before[n] & after[n]).flatten().tolist()) for n in before} == grow
            assert {n: set(torch.nonzero(before[n] & ~after[n]).flatten().tolist()) for n in before} == drop
            checked.append(step)
            return changed

    d_nnz = state.d_masks.nnz()
    train(
        state,
        5,
        spec,
        batcher,
        10,
        torch.Generator().manual_seed(5),
        lambda: 0.0,
        Checked("gd", 2, CosineSchedule(0.5, 0.1, 5), torch.Generator().manual_seed(3)),
    )
    assert checked == [2, 4]
    assert state.d_masks.nnz() == d_nnz


def test_train_flops_integrate_the_density_trace_of_global_updates(plugins):
    spec, state, batcher = tiny_state(plugins)
    flops = count_gan(state.G, state.D, spec, "conv", 10)
    trace = []

    class Trace(TopologyUpdate):
        def after_g_backward(self, state, step):  # the densities this step runs at
            trace.append(flops.step(state.g_masks.layer_density(), state.d_masks.layer_density()))

    def cost():
        return flops.step(state.g_masks.layer_density(), state.d_masks.layer_density())

    hooks = Trace("g", 2, CosineSchedule(0.5, 0.5, 6), torch.Generator().manual_seed(3), per_layer=False)
    train(state, 6, spec, batcher, 10, torch.Generator().manual_seed(5), cost, hooks)
    assert len(set(trace)) > 1  # global updates moved density between layers of different cost
    assert state.flops == pytest.approx(sum(trace), rel=1e-12)


def test_hinge_losses_are_public():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert d_hinge_loss(real, fake).item() == pytest.approx((0.0 + 0.5) / 2 + (0.0 + 1.5) / 2)
    assert g_hinge_loss(fake).item() == pytest.approx(0.75)


def test_ctx_batch_gives_seeded_real_minibatches_on_the_device(plugins):
    data = plugins.datasets.get("digits").load(16)
    ctx = RunContext(types.SimpleNamespace(seed=0), data, torch.device("cpu"), Path("."), None)
    x, y = ctx.batch(8)
    x2, y2 = ctx.batch(8)
    x3, _ = ctx.batch(8, stream="other")
    assert x.shape == (8, 3, 16, 16) and y.shape == (8,) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, x2) and torch.equal(y, y2) and not torch.equal(x, x3)
    with pytest.raises(ValueError, match="batch size must lie in"):
        ctx.batch(len(data.train) + 1)


# -- layer coverage of the sparse scope ----------------------------------------------------------------------


class Upsampler(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
        self.conv = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x, y=None):
        return self.conv(self.up(x))


def test_conv_transpose_is_sparse_with_erk_fans_and_flops():
    torch.manual_seed(0)
    model = Upsampler()
    params = scope_parameters(model, "conv")
    assert list(params) == ["up", "conv"] and tuple(params["up"].shape) == (8, 4, 4, 4)  # in x out x k x k
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    transposed = {**shapes, "up": (4, 8, 4, 4)}  # the same layer written as out x in x k x k
    assert layer_densities(shapes, 0.3) == layer_densities(transposed, 0.3)
    masks = MaskState.from_distribution(model, 0.7, "erk", "conv", torch.Generator().manual_seed(0))
    assert masks.nnz() == round(0.3 * masks.numel())
    assert masks.weight_density() == pytest.approx(0.3, abs=1 / masks.numel())
    counted = count_model(model, (torch.zeros(2, 8, 4, 4),), "conv", 2)
    assert counted.layers["up"] > 0
    assert counted.forward(masks.layer_density()) < counted.total


def test_a_convolution_the_scope_does_not_cover_is_refused_by_name():
    model = nn.Sequential(nn.Conv2d(3, 3, 3), nn.Conv1d(3, 3, 3))
    with pytest.raises(SparsebenchError, match=r"layer '1' is a Conv1d, which the sparse scope does not cover"):
        scope_parameters(model, "conv")


# -- the methods through the real CLI ------------------------------------------------------------------------


def test_method_files_stay_small():
    for name in ("set", "rigl"):
        assert len((ROOT / "plugins/sparsebench_builtins/methods" / f"{name}.py").read_text().splitlines()) <= 30


@pytest.mark.parametrize("arch", ["sngan", pytest.param("biggan", marks=pytest.mark.slow)])
def test_set_and_rigl_run_with_exact_densities(arch, cli_env, tmp_path):
    store = tmp_path / "r.db"
    run_grid(
        store,
        "set,rigl,adapt",
        arch,
        "--sg",
        "0.8",
        "--sd",
        "0.5",
        "-o",
        "set.delta_t=2",
        "-o",
        "rigl.delta_t=2",
        "-o",
        "rigl.update=gd",
        "-o",  # per layer: globally, D's growth at its zero gradients (a saturated hinge loss in 6 steps) would
        "rigl.ranking=layer",  # leave grown weights at zero, and the density measured on the weights undercount
        "-o",
        "adapt.delta_t=2",
        "-o",
        "adapt.ratio_every=1",
        "-o",
        "adapt.delta_t_d=4",
        "-o",
        "adapt.window=2",
        steps=6,
        env=cli_env,
    )
    by = {r["method"]: r for r in rows(store, cli_env)}
    assert set(by) == {"set", "rigl", "adapt"}
    averaged = "sema" if arch == "sngan" else "raw"  # BigGAN's quick EMA starts at G step 100: G's own weights
    for row in by.values():
        assert row["status"] == "done" and row["eval_weights"] == averaged
        assert float(row["density_g"]) == pytest.approx(0.2, abs=1e-4)
        assert float(row["exploration_rate"]) > 0.2 + 0.01  # G's connectivity moved
    for method in ("set", "rigl"):
        assert float(by[method]["density_d"]) == pytest.approx(0.5, abs=1e-4)
    # D started at G's density (0.2, over the quick preset's `conv` scope, which every method takes there); one
    # adjustment (at G step 4): it moved by 0.05 or stayed
    assert by["adapt"]["scope"] == "conv" and float(by["adapt"]["sd"]) == pytest.approx(0.8)
    assert min(abs(float(by["adapt"]["density_d"]) - d) for d in (0.15, 0.2, 0.25)) < 1e-3
    import sqlite3

    with sqlite3.connect(store) as conn:
        keys = {k for (k,) in conn.execute("SELECT DISTINCT key FROM stats WHERE run_id = ?", (by["rigl"]["run_id"],))}
    assert {"exploration_rate", "exploration_rate_d", "update_fraction"} <= keys


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,options",
    [
        ("set", ["-o", "set.ranking=global"]),
        ("rigl", ["-o", "rigl.update=gd"]),
        # a window of 3 ratios, D adjusted every 9 steps: decisions at 9, 18, 27, 36 of 40 (its defaults, 100 samples
        # a window, make none in 40 steps)
        ("adapt", ["-o", "adapt.ratio_every=3", "-o", "adapt.window=3", "-o", "adapt.delta_t_d=9", "--sd", "0.8"]),
    ],
)
def test_sigkill_then_rerun_gives_the_same_results(method, options, cli_env, tmp_path):
    cmd = [
        "run",
        "--methods",
        method,
        "--arch",
        "sngan",
        "--sg",
        "0.8",
        "--steps",
        "40",
        "-o",
        f"{method}.delta_t=7",
        *options,
        "--checkpoint-every",
        "5",
        "--no-progress",
    ]
    ref_store, store = tmp_path / "ref" / "r.db", tmp_path / "kill" / "r.db"
    run_cli(*cmd, "--store", str(ref_store), env=cli_env, check=True)
    proc = subprocess.Popen(
        [EXE, *cmd, "--store", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **cli_env},
    )
    t0 = time.time()
    while (
        not list((store.parent / f"{store.stem}-artifacts").glob("*/checkpoint-phase1.pt")) and time.time() - t0 < 120
    ):
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rows(store, cli_env)[0]["status"] == "running"
    resumed = run_cli(*cmd, "--store", str(store), env=cli_env, check=True)
    assert "resuming run" in resumed.stderr
    a, b = rows(ref_store, cli_env)[0], rows(store, cli_env)[0]
    assert b["status"] == "done" and a["run_id"] == b["run_id"]
    for key in ("fid", "is_mean", "density_g", "density_d", "exploration_rate", "train_flops", "test_flops"):
        assert a[key] == b[key], key
    if method == "adapt":  # D's density moved (the ratio's window and D's density came through the checkpoint)
        assert float(a["density_d"]) != pytest.approx(0.2, abs=1e-3)


# -- ADAPT ---------------------------------------------------------------------------------------------------


def adapt_hooks(plugins, spec, mode="relaxed", cls=adapt.BalancedTraining):
    return cls(
        2,
        CosineSchedule(0.5, 0.0, spec.steps),
        torch.Generator().manual_seed(3),
        mode=mode,
        d_interval=2,
        ratio_every=1,
        window=2,
        d_density=0.5,
    )


@pytest.mark.parametrize(
    "forced,mode,expected", [(0.2, "relaxed", 0.4), (0.5, "relaxed", 0.5), (0.8, "relaxed", 0.6), (0.8, "strict", 0.5)]
)
def test_adapt_moves_ds_density_as_the_balance_ratio_dictates(plugins, monkeypatch, forced, mode, expected):
    monkeypatch.setattr(balance, "ratio_on_device", lambda *outputs: torch.tensor(forced, dtype=torch.float64))
    spec, state, batcher = tiny_state(plugins)  # D at density 0.5
    hooks = adapt_hooks(plugins, spec, mode)
    before = {n: m.clone() for n, m in state.d_masks.masks.items()}
    train(state, 6, spec, batcher, 10, torch.Generator().manual_seed(5), lambda: 0.0, hooks)  # adjusts at 2 and 4
    assert hooks.d_density == pytest.approx(expected)
    assert state.d_masks.nnz() == round(expected * state.d_masks.numel())
    strict_at_cap = mode == "strict" and forced >= adapt.B_PLUS  # D prunes and regrows instead of growing
    assert hooks.d_updates == (2 if strict_at_cap else 0) and hooks.networks == "g"
    moved = any(not torch.equal(before[n], m) for n, m in state.d_masks.masks.items())
    assert moved == (expected != 0.5 or strict_at_cap)


def test_adapt_acts_on_a_full_window_of_ratios_only(plugins, monkeypatch):
    ratios = iter([float("nan")] + [0.2] * 10)  # the first sample point measured nothing
    monkeypatch.setattr(balance, "ratio_on_device", lambda *outputs: torch.tensor(next(ratios), dtype=torch.float64))
    spec, state, batcher = tiny_state(plugins)  # a window of 2 values, the reference's queue
    seen = []

    class Watch(adapt.BalancedTraining):
        def after_g_step(self, state, step):
            changed = super().after_g_step(state, step)
            seen.append((step, len(self.window), self.d_density))
            return changed

    hooks = adapt_hooks(plugins, spec, cls=Watch)
    train(state, 6, spec, batcher, 10, torch.Generator().manual_seed(5), lambda: 0.0, hooks)
    # step 2: one value in the window, no adjustment; step 4: full (never cleared; the last 2 values, as the
    # reference's queue holds at its adjustments), D's density moves
    assert seen[1] == (2, 1, 0.5) and seen[3] == (4, 2, pytest.approx(0.45))


def test_adapt_train_flops_integrate_its_density_trace(plugins, monkeypatch):
    monkeypatch.setattr(balance, "ratio_on_device", lambda *outputs: torch.tensor(0.2, dtype=torch.float64))
    spec, state, batcher = tiny_state(plugins)
    flops = count_gan(state.G, state.D, spec, "conv", 10)
    trace = []

    class Trace(adapt.BalancedTraining):
        def after_g_backward(self, state, step):  # the densities this step runs at
            trace.append(flops.step(state.g_masks.layer_density(), state.d_masks.layer_density()))
            super().after_g_backward(state, step)

    def cost():
        return flops.step(state.g_masks.layer_density(), state.d_masks.layer_density())

    hooks = adapt_hooks(plugins, spec, cls=Trace)
    train(state, 6, spec, batcher, 10, torch.Generator().manual_seed(5), cost, hooks)
    assert hooks.d_density == pytest.approx(0.4)
    assert len(set(trace)) > 2
    assert state.flops == pytest.approx(sum(trace), rel=1e-12)
