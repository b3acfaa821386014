"""The sparse-kernel backend (SparseProp): same numbers as masked dense, exact masks after topology updates."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from conftest import loop as train
from torch import nn

from sparsebench import SparsebenchError, kernels
from sparsebench.interfaces import GANState
from sparsebench.sparse import prune_and_regrow
from sparsebench.sparse.masks import MaskState
from sparsebench.sparse.scope import weight_tensor
from sparsebench.train.loop import Batcher, adam

needs_sparseprop = pytest.mark.skipif(
    not kernels.available(), reason="SparseProp is not installed (pip install 'sparsebench[kernels]')"
)


def test_missing_sparseprop_is_one_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sparseprop", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "sparseprop.modules", None)
    monkeypatch.setitem(sys.modules, "sparseprop.modules.functions", None)
    with pytest.raises(SparsebenchError, match=r"pip install .*'sparsebench\[kernels\]'") as err:
        kernels.require_sparseprop()
    assert "\n" not in str(err.value)
    assert not kernels.available()


def test_unknown_backend_is_refused():
    assert kernels.check_backend("sparseprop") == "sparseprop"
    with pytest.raises(SparsebenchError, match="known: dense, sparseprop"):
        kernels.check_backend("cuda")


def masked(module: nn.Module, sparsity: float, scope: str = "conv", seed: int = 0) -> MaskState:
    return MaskState.from_distribution(module, sparsity, "uniform", scope, torch.Generator().manual_seed(seed))


def forward_backward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    out = model(x)
    out.pow(2).sum().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in model.named_parameters()}


@needs_sparseprop
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("batch", [4, 8, 12])
def test_every_used_conv_variant_matches_masked_dense(stride, batch):
    """Output, input gradient and (masked) weight gradient of each variant the backend would run at this
    batch size equal the dense layer's; batches no variant computes correctly run dense."""
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1, stride=stride))
    masks = masked(conv, 0.8)
    x = torch.randn(batch, 16, 12, 12)
    ref_out, ref_gx, ref_g = forward_backward(conv, x)
    for variant in ("over_on", "over_b"):  # the layer's chosen variant, measured at a batch of 8
        backend = kernels.KernelBackend(
            conv, masks, (x[:1].expand(8, -1, -1, -1),), threshold=0.0, repeats=1, always=True
        )
        backend._kernels["0"].variant = variant
        out, gx, g = forward_backward(conv, x)
        backend.restore()
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gx, ref_gx, rtol=1e-5, atol=1e-5)
        mask = masks.masks["0"]  # inactive positions: zero from the kernels, dense from the fallback
        torch.testing.assert_close(g["0.weight"] * mask, ref_g["0.weight"] * mask, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(g["0.bias"], ref_g["0.bias"], rtol=1e-4, atol=1e-4)


@needs_sparseprop
def test_linear_and_spectral_norm_layers_match_masked_dense():
    from torch.nn.utils.parametrizations import spectral_norm

    torch.manual_seed(0)
    model = nn.Sequential(spectral_norm(nn.Conv2d(4, 8, 3, padding=1)), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    masks = masked(model, 0.9, "conv+linear")
    x = torch.randn(6, 4, 6, 6)
    model.eval()  # the spectral norm's vectors stay put, so both passes see the same sigma
    ref_out, ref_gx, ref_g = forward_backward(model, x)
    backend = kernels.KernelBackend(model, masks, (x,), threshold=0.0, repeats=1, always=True)
    assert backend.swapped == ["0", "2"]
    out, gx, g = forward_backward(model, x)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, ref_gx, rtol=1e-5, atol=1e-5)
    w, mask = "0.parametrizations.weight.original", masks.masks["0"]  # sigma's gradient reaches every position
    torch.testing.assert_close(g[w] * mask, ref_g[w] * mask, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g["2.weight"], ref_g["2.weight"] * masks.masks["2"], rtol=1e-4, atol=1e-5)
    with backend.dense():  # a step that needs dense gradients gets them
        _, _, dense_g = forward_backward(model, x)
    torch.testing.assert_close(dense_g["2.weight"], ref_g["2.weight"])


def gan_losses(plugins, swap: bool, steps: int = 20) -> tuple[list[float], GANState, list[str]]:
    arch = plugins.archs.get("sngan")
    spec = arch.presets["quick"].replace(log_every=1, n_critic=1, batch_size=16, g_batch_size=16)
    torch.manual_seed(0)
    G, D = arch.build(spec, 10)
    g_masks, d_masks = masked(G, 0.9, seed=1), masked(D, 0.5, seed=2)
    state = GANState(
        G, D, adam(G.parameters(), spec.lr_g, 0.0, 0.9), adam(D.parameters(), spec.lr_d, 0.0, 0.9), g_masks, d_masks
    )
    swapped = []
    if swap:
        backend = kernels.KernelBackend(
            G, g_masks, (torch.randn(16, spec.z_dim),), threshold=0.0, repeats=1, always=True
        )
        swapped = backend.swapped
    data = plugins.datasets.get("digits").load(spec.resolution).train
    losses: list[float] = []
    train(
        state,
        steps,
        spec,
        Batcher(data, torch.device("cpu"), torch.Generator().manual_seed(1)),
        10,
        torch.Generator().manual_seed(2),
        lambda: 0.0,
        log=lambda t, v: losses.extend([v["loss_d"], v["loss_g"]]),
    )
    return losses, state, swapped


@needs_sparseprop
def test_sngan_trains_to_the_same_losses_with_and_without_kernels(plugins):
    dense_losses, dense_state, _ = gan_losses(plugins, swap=False)
    kernel_losses, kernel_state, swapped = gan_losses(plugins, swap=True)
    assert len(swapped) == len(dense_state.g_masks.params)  # every conv of G ran through the kernels
    assert len(kernel_losses) == 40
    assert kernel_losses == pytest.approx(dense_losses, abs=1e-4)
    for name, p in kernel_state.g_masks.params.items():
        assert int((p != 0).sum()) <= int(kernel_state.g_masks.masks[name].sum())
        torch.testing.assert_close(p, dense_state.g_masks.params[name], rtol=1e-3, atol=1e-4)


@needs_sparseprop
def test_rebuild_after_prune_and_regrow_follows_the_masks_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1))
    masks = masked(model, 0.9)
    x = torch.randn(8, 8, 6, 6)
    backend = kernels.KernelBackend(model, masks, (x,), threshold=0.0, repeats=1, always=True)
    before = {n: int(m.sum()) for n, m in masks.masks.items()}
    with backend.dense():
        _, _, grads = forward_backward(model, x)
    result = prune_and_regrow(masks, 0.5, {n: grads[f"{n}.weight"] for n in masks.params})
    assert all(result.grown[n].any() for n in masks.params)
    with torch.no_grad():  # grown weights start at zero; give them values so that leaving them out shows
        for n, p in masks.params.items():
            p[result.grown[n]] = 0.5
    backend.rebuild()
    for name, kernel in backend._kernels.items():
        mask = masks.masks[name].reshape(-1)
        assert len(kernel.positions) == before[name] == int(mask.sum())  # exact density, zeros included
        assert torch.equal(torch.sort(kernel.positions).values, torch.nonzero(mask).squeeze(1))
    out = model(x)
    backend.restore()
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)


@needs_sparseprop
def test_restore_and_state_dict_keep_the_dense_layout():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1))
    masks = masked(model, 0.9)
    keys = list(model.state_dict())
    backend = kernels.KernelBackend(model, masks, (torch.randn(8, 4, 5, 5),), threshold=0.0, repeats=1, always=True)
    assert list(model.state_dict()) == keys
    assert weight_tensor(model[0]) is masks.params["0"]
    backend.restore()
    assert "forward" not in vars(model[0])


@needs_sparseprop
def test_layers_below_the_threshold_or_unsupported_stay_dense():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, stride=2), nn.Conv2d(8, 8, 3, padding=1))
    masks = MaskState(
        {n: weight_tensor(m) for n, m in model.named_children()},
        {"0": (torch.rand(8, 4, 3, 3) < 0.1).float(), "1": torch.ones(8, 8, 3, 3)},
    )
    backend = kernels.KernelBackend(model, masks, (torch.randn(4, 4, 8, 8),), threshold=0.8, repeats=1, always=True)
    reasons = {c.name: c.reason for c in backend.layers}
    assert backend.swapped == []
    assert "multiples of 8" in reasons["0"]  # stride 2 at batch 4: no correct kernel variant
    assert "below 0.8" in reasons["1"]
    assert "no (" in backend.table()


def stugan_phase(plugins, policy: str, swap: bool, steps: int = 20, before_training=lambda: None):
    """20 G steps of STU-GAN's exploration (updates at G steps 5, 10, 15) on the quick SNGAN."""
    from sparsebench.sparse import CosineSchedule, SparseEMA
    from sparsebench_builtins.methods.stugan import Exploration

    arch = plugins.archs.get("sngan")
    spec = arch.presets["quick"].replace(log_every=1, n_critic=1, batch_size=16, g_batch_size=16)
    torch.manual_seed(0)
    G, D = arch.build(spec, 10)
    g_masks, d_masks = masked(G, 0.9, seed=1), masked(D, 0.5, seed=2)
    g_masks.opt_state = d_masks.opt_state = policy
    state = GANState(
        G,
        D,
        adam(G.parameters(), spec.lr_g, 0.0, 0.9),
        adam(D.parameters(), spec.lr_d, 0.0, 0.9),
        g_masks,
        d_masks,
        SparseEMA(G, 0.9, 0, g_masks),
    )
    hooks = Exploration("g", 5, CosineSchedule(0.5, 0.005, steps), torch.Generator().manual_seed(5))
    attached = kernels.Attached(hooks)
    if swap:
        force = {"threshold": 0.0, "repeats": 1, "always": True}
        attached = kernels.Attached(hooks, kernels.KernelBackend(G, g_masks, (torch.randn(16, spec.z_dim),), **force))
    data = plugins.datasets.get("digits").load(spec.resolution).train
    losses: list[float] = []
    before_training()
    train(
        state,
        steps,
        spec,
        Batcher(data, torch.device("cpu"), torch.Generator().manual_seed(1)),
        10,
        torch.Generator().manual_seed(2),
        lambda: 0.0,
        attached.hooks,
        log=lambda t, v: losses.extend([v["loss_d"], v["loss_g"]]),
    )
    return losses, state, hooks, attached


@needs_sparseprop
@pytest.mark.parametrize("policy", ["zero", "dense"])
def test_stugan_through_topology_updates_matches_masked_dense(plugins, policy, monkeypatch):
    """Regrowth steps run densely (|grad| at inactive positions picks the grown weights), every other step
    runs the kernels under a masking policy, and the structure follows the masks after each update.

    G only: with D's layers swapped too, Adam's sign-like first updates turn D's float-reassociation noise
    in near-zero gradients into +-lr steps, and losses drift by ~1e-3 within a few steps (D's gradients
    agree to float precision: test_sngan_discriminator_gradients_match_masked_dense)."""
    calls = {"grad": 0, "no_grad": 0}
    run = kernels._Kernel.run

    def counted(self, x, *args):
        calls["grad" if torch.is_grad_enabled() else "no_grad"] += 1
        return run(self, x, *args)

    dense_losses, dense_state, dense_hooks, _ = stugan_phase(plugins, policy, swap=False)
    monkeypatch.setattr(kernels._Kernel, "run", counted)
    kernel_losses, state, hooks, attached = stugan_phase(
        plugins, policy, swap=True, before_training=lambda: calls.update(grad=0, no_grad=0)
    )
    assert hooks.updates == dense_hooks.updates == 3
    assert kernel_losses == pytest.approx(dense_losses, abs=1e-4)
    for name, mask in state.g_masks.masks.items():
        assert torch.equal(mask, dense_state.g_masks.masks[name]), name  # the same weights were regrown
        assert int(mask.sum()) == int(dense_state.g_masks.masks[name].sum())
        kernel = attached.g._kernels[name]
        assert torch.equal(torch.sort(kernel.positions).values, torch.nonzero(mask.reshape(-1)).squeeze(1))
    ema, dense_ema = dict(state.ema.model.named_parameters()), dict(dense_state.ema.model.named_parameters())
    for name in state.g_masks.params:  # SEMA averages the same sparse weights (biases before a BN have
        # gradients of pure rounding noise, which Adam turns into +-lr steps either way)
        torch.testing.assert_close(ema[f"{name}.weight"], dense_ema[f"{name}.weight"], rtol=1e-3, atol=1e-4)
    assert calls["no_grad"] > 0  # G's samples for D's steps ran the kernels under every policy
    assert (calls["grad"] > 0) == (policy != "dense")  # the dense policy keeps dense gradients everywhere
    attached.detach()
    assert not any("forward" in vars(m) for m in state.G.modules())


@needs_sparseprop
def test_sngan_discriminator_gradients_match_masked_dense(plugins):
    """D has spectral norm on every layer: sigma comes from the masked original, the gradient from the kernels."""
    import copy

    arch = plugins.archs.get("sngan")
    torch.manual_seed(0)
    _, D = arch.build(arch.presets["quick"], 10)
    D_kernels = copy.deepcopy(D)
    masks, kernel_masks = masked(D, 0.5), masked(D_kernels, 0.5)
    x = torch.randn(16, 3, 16, 16)
    backend = kernels.KernelBackend(D_kernels, kernel_masks, (x,), threshold=0.0, repeats=1, always=True)
    assert backend.swapped == list(masks.params)
    for model in (D, D_kernels):  # train mode: each forward runs the power iteration, identically
        model.zero_grad()
        torch.relu(1 - model(x)).mean().backward()
    for (name, p), q in zip(D.named_parameters(), D_kernels.parameters()):
        mask = masks.masks.get(name.replace(".parametrizations.weight.original", ""), torch.ones(()))
        torch.testing.assert_close(q.grad * mask, p.grad * mask, rtol=1e-4, atol=1e-4), name


def test_bad_kernels_value_is_one_clear_error(store):
    from conftest import run_grid

    proc = run_grid(store, "static", "sngan", "--kernels", "cuda", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("Error:")
    assert "cuda" in lines[0] and "dense, sparseprop" in lines[0]
    assert not store.exists()


def test_missing_sparseprop_stops_the_run_with_one_line(store, tmp_path):
    """A SparseProp that fails to import (absent, or a build that does not load): one error naming the extra."""
    from conftest import run_grid

    broken = tmp_path / "site" / "sparseprop"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('undefined symbol: sparse_conv2d')\n")
    path = os.pathsep.join([str(broken.parent), os.environ.get("PYTHONPATH", "")])
    proc = run_grid(store, "static", "sngan", "--kernels", "sparseprop", check=False, env={"PYTHONPATH": path})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    assert "pip install" in lines[0] and "'sparsebench[kernels]'" in lines[0]
    assert not store.exists()


def test_backend_is_part_of_the_run_id_and_dense_ids_are_unchanged(plugins):
    from sparsebench.config import GridRequest, expand_grid

    def config(**kernels):
        return expand_grid(GridRequest(methods=["static"], arch="sngan", steps=2, **kernels), plugins)[0]

    dense, sparse = config(), config(kernels="sparseprop")
    assert config(kernels="dense").run_id == dense.run_id
    assert sparse.run_id != dense.run_id
    assert "kernels" not in dense.to_dict()  # the id of every run stored before the backend existed stays
    assert type(dense).from_dict(sparse.to_dict()) == sparse


@needs_sparseprop
def test_stugan_run_with_kernels_through_topology_updates(store):
    """The real CLI: STU-GAN with two topology updates under the kernels backend keeps exact densities and
    agrees with the same run on the dense backend; the backend is a column of the results."""
    from conftest import rows, run_grid

    base = ["--sg", "0.9", "--sd", "0.5", "-o", "stugan.delta_t=1", "--opt-state", "zero"]
    run_grid(store, "stugan", "sngan", *base, steps=3)
    run_grid(store, "stugan", "sngan", *base, "--kernels", "sparseprop", steps=3)
    got = rows(store)
    by = {r["kernels"]: r for r in got}
    assert set(by) == {"dense", "sparseprop"} and all(r["status"] == "done" for r in got)
    assert by["dense"]["run_id"] != by["sparseprop"]["run_id"]
    assert float(by["sparseprop"]["density_g"]) == float(by["dense"]["density_g"])
    assert float(by["sparseprop"]["density_d"]) == float(by["dense"]["density_d"])
    assert float(by["sparseprop"]["exploration_rate"]) == pytest.approx(float(by["dense"]["exploration_rate"]))
    assert by["dense"]["kernel_layers"] == "" and "kernel_layers_sampling" in by["sparseprop"]
    for layer in filter(None, by["sparseprop"]["kernel_layers"].split(",")):  # G.blocks.0.c1:over_b/dense ...
        assert layer.split(".")[0] in ("G", "D") and layer.count(":") == 1
    assert float(by["sparseprop"]["fid"]) == pytest.approx(float(by["dense"]["fid"]), rel=1e-2)


@needs_sparseprop
def test_the_evaluated_generator_samples_on_the_kernels_and_is_restored(plugins):
    from sparsebench.metrics.evaluate import sample

    arch = plugins.archs.get("sngan")
    spec = arch.presets["quick"]
    torch.manual_seed(0)
    G, _ = arch.build(spec, 10)
    masks = masked(G, 0.95)
    masks.apply()
    before = sample(G, 16, spec.z_dim, 0, torch.device("cpu"), seed=3, batch=8)
    backend = kernels.for_sampling("sparseprop", G, masks, spec, 8, threshold=0.0, always=True)
    assert backend is not None and backend.swapped == list(masks.params)
    on_kernels = sample(G, 16, spec.z_dim, 0, torch.device("cpu"), seed=3, batch=8)
    backend.restore()
    assert not any(hasattr(m, kernels._ATTR) for m in G.modules())
    assert (on_kernels.int() - before.int()).abs().max() <= 1  # uint8 images: float reassociation only
    assert kernels.describe("G", backend.layers).count("G.") == len(masks.params)
    assert (
        kernels.for_sampling("dense", G, masks, spec, 8) is None
        and kernels.for_sampling("sparseprop", G, None, spec, 8) is None
    )


@needs_sparseprop
def test_each_mode_runs_what_was_measured_faster_for_it(monkeypatch):
    """A layer whose kernels won forward + backward but lost without gradients samples densely, and back."""
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1))
    backend = kernels.KernelBackend(
        model, masked(model, 0.9), (torch.randn(8, 4, 6, 6),), threshold=0.0, repeats=1, always=True
    )
    kernel = backend._kernels["0"]
    used = []
    monkeypatch.setattr(kernels._Kernel, "run", lambda self, x, *a: used.append(torch.is_grad_enabled()) or x[:, :1])
    kernel.infer_variant = ""
    with torch.no_grad():
        model(torch.randn(8, 4, 6, 6))
    model(torch.randn(8, 4, 6, 6))
    assert used == [True]
    kernel.variant, kernel.infer_variant = "", "over_on"
    with torch.no_grad():
        model(torch.randn(8, 4, 6, 6))
    model(torch.randn(8, 4, 6, 6))
    assert used == [True, False]


def test_kernel_hooks_pass_both_gradient_hooks_on_and_run_gradient_steps_densely():
    """A method's D-side hook reaches it through the backend's wrapper, and a step whose D gradients it
    reads (RigL on D, ADAPT) is a dense-gradient step for both networks."""
    from sparsebench.kit import GradientGrowth, TopologyUpdate
    from sparsebench.sparse import CosineSchedule

    calls = []

    from sparsebench.interfaces import Callbacks

    class Recording(Callbacks):
        def after_d_backward(self, state, step):
            calls.append(("d", step))

        def after_g_backward(self, state, step):
            calls.append(("g", step))

    wrapped = kernels.KernelHooks(Recording(), None, None)
    wrapped.after_d_backward(None, 3)
    wrapped.after_g_backward(None, 3)
    assert calls == [("d", 3), ("g", 3)]
    assert kernels.needs_dense_grads(Recording(), 1)  # reads gradients without saying when: every step
    on_d = GradientGrowth("d", 4, CosineSchedule(0.5, 0.0, 100), torch.Generator())
    assert kernels.needs_dense_grads(on_d, 8) and not kernels.needs_dense_grads(on_d, 9)
    assert not kernels.needs_dense_grads(TopologyUpdate("gd", 4, CosineSchedule(0.5, 0.0, 100), torch.Generator()), 8)
