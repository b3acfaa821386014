"""The sparse-kernel backend (SparseProp): same numbers as masked dense, exact masks after topology updates."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from sparsebench import SparsebenchError, kernels
from sparsebench.sparse import prune_and_regrow
from sparsebench.sparse.masks import MaskState
from sparsebench.sparse.scope import weight_tensor
from sparsebench.train.loop import Batcher, GANState, adam, train

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
        backend = kernels.KernelBackend(conv, masks, (x[:1].expand(8, -1, -1, -1),), threshold=0.0, repeats=1,
                                        always=True)
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
    state = GANState(G, D, adam(G.parameters(), spec.lr_g, 0.0, 0.9), adam(D.parameters(), spec.lr_d, 0.0, 0.9),
                     g_masks, d_masks)
    swapped = []
    if swap:
        backend = kernels.KernelBackend(G, g_masks, (torch.randn(16, spec.z_dim),), threshold=0.0, repeats=1,
                                        always=True)
        swapped = backend.swapped
    data = plugins.datasets.get("digits").load(spec.resolution).train
    losses: list[float] = []
    train(state, steps, spec, Batcher(data, torch.device("cpu"), torch.Generator().manual_seed(1)), 10,
          torch.Generator().manual_seed(2), lambda: 0.0, log=lambda t, v: losses.extend([v["loss_d"], v["loss_g"]]))
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
    masks = MaskState({n: weight_tensor(m) for n, m in model.named_children()},
                      {"0": (torch.rand(8, 4, 3, 3) < 0.1).float(), "1": torch.ones(8, 8, 3, 3)})
    backend = kernels.KernelBackend(model, masks, (torch.randn(4, 4, 8, 8),), threshold=0.8, repeats=1, always=True)
    reasons = {c.name: c.reason for c in backend.layers}
    assert backend.swapped == []
    assert "multiples of 8" in reasons["0"]  # stride 2 at batch 4: no correct kernel variant
    assert "below 0.8" in reasons["1"]
    assert "no (" in backend.table()
