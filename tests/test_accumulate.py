"""Gradient accumulation, per-preset Adam eps and the 128x128 preset as BigGAN-PyTorch's launch_BigGAN_bs256x8.sh."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import loop as train
from conftest import small_spec
from torch import nn

from sparsebench.config import GridRequest, RunConfig, TrainSpec, expand_grid
from sparsebench.flops import GANFlops, ModelFlops, count_gan
from sparsebench.interfaces import GANState
from sparsebench.recorder import RunRecorder
from sparsebench.store.sinks import FollowerSink, Snapshot
from sparsebench.train.context import RunContext, RunServices
from sparsebench.train.loop import Batcher, Interrupted

SPEC = small_spec(z_dim=8, batch_size=6, g_batch_size=6, n_critic=2, lr_g=0.05, lr_d=0.05, steps=3)


class TemplateG(nn.Module):
    """A learnt image, the same for every z and y: no batch-dependent layer, no dependence on the noise stream."""

    def __init__(self):
        super().__init__()
        self.image = nn.Parameter(torch.randn(1, 3, 16, 16))

    def forward(self, z, y):
        return torch.tanh(self.image).expand(len(z), -1, -1, -1)


class LinearD(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 16 * 16, 1)

    def forward(self, x, y):
        return self.fc(x.flatten(1)).squeeze(1)


def train_toy(data, spec: TrainSpec):
    torch.manual_seed(0)
    G, D = TemplateG(), LinearD()
    sgd = lambda m, lr: torch.optim.SGD(m.parameters(), lr=lr)  # noqa: E731 - an update is lr x gradient, exactly
    state = GANState(G, D, sgd(G, spec.lr_g), sgd(D, spec.lr_d))
    losses = []
    train(
        state,
        spec.steps,
        spec,
        Batcher(data, torch.device("cpu"), torch.Generator().manual_seed(1)),
        10,
        torch.Generator().manual_seed(2),
        lambda: 0.0,
        log=lambda t, v: losses.append(v),
    )
    return state, losses


def test_k_batches_of_b_step_like_one_batch_of_kb(plugins):
    data = plugins.datasets.get("digits").load(16).train
    acc, acc_losses = train_toy(data, SPEC.replace(accumulate=4))
    big, big_losses = train_toy(data, SPEC.replace(batch_size=24, g_batch_size=24))
    for (name, a), b in zip(acc.G.named_parameters(), big.G.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    for (name, a), b in zip(acc.D.named_parameters(), big.D.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    torch.manual_seed(0)
    TemplateG()
    assert not torch.allclose(LinearD().fc.weight, acc.D.fc.weight)  # training moved the weights
    one, _ = train_toy(data, SPEC)  # one minibatch of b per step: the other k - 1 must count
    assert not torch.allclose(one.D.fc.weight, acc.D.fc.weight)
    for a, b in zip(acc_losses, big_losses):  # losses are the mean over the accumulated minibatches
        assert a["loss_d"] == pytest.approx(b["loss_d"], rel=1e-5)
        assert a["loss_g"] == pytest.approx(b["loss_g"], rel=1e-5)


def test_step_flops_scale_with_accumulation(plugins):
    g, d = ModelFlops(100.0, {"a": 60.0}), ModelFlops(10.0, {"b": 8.0})
    one = GANFlops(g, d, batch_size=4, g_batch_size=6, n_critic=3)
    assert GANFlops(g, d, 4, 6, 3, accumulate=8).step({"a": 0.2}, None) == pytest.approx(8 * one.step({"a": 0.2}, None))
    arch = plugins.archs.get("sngan")
    spec = arch.presets["quick"]
    G, D = arch.build(spec, 10)
    assert count_gan(G, D, spec.replace(accumulate=3), "conv", 10).step() == pytest.approx(
        3 * count_gan(G, D, spec, "conv", 10).step()
    )


def test_imagenet_preset_is_the_reference_launch_script(plugins):
    spec = plugins.archs.get("biggan").presets["imagenet"]
    assert (spec.batch_size, spec.g_batch_size, spec.accumulate, spec.n_critic) == (256, 256, 8, 1)
    assert spec.adam_eps == 1e-6 and spec.eval_batch_stats is False
    for preset in ("quick", "paper"):
        assert plugins.archs.get("biggan").presets[preset].adam_eps == 1e-8


def context(plugins, cfg: RunConfig, run_dir, stop_after: int | None = None) -> RunContext:
    data = plugins.datasets.get(cfg.dataset).load(cfg.train.resolution)
    arch = plugins.archs.get(cfg.arch)
    checks = []
    run_dir.mkdir(parents=True, exist_ok=True)

    def stop() -> bool:
        checks.append(1)
        return stop_after is not None and len(checks) >= stop_after

    recorder = RunRecorder(FollowerSink(Snapshot(run_dir / "r.db", {}), cfg.run_id), stop=stop)
    return RunContext(cfg, data, torch.device("cpu"), run_dir, RunServices(arch=arch, recorder=recorder))


def test_optimizers_take_the_presets_adam_eps(plugins, tmp_path):
    cfg = expand_grid(GridRequest(methods=["static"], arch="sngan", steps=2), plugins)[0]
    cfg = cfg.replace(train=cfg.train.replace(adam_eps=1e-6))
    ctx = context(plugins, cfg, tmp_path)
    state = ctx.state(*ctx.build_models(), None, None)
    assert state.g_opt.param_groups[0]["eps"] == state.d_opt.param_groups[0]["eps"] == 1e-6


def uninterrupted_and_resumed(plugins, cfg: RunConfig, tmp_path, stop_after: int = 3) -> tuple[GANState, GANState]:
    """The final states of `cfg` trained in one go and trained with a stop (checkpoint) after `stop_after`
    G steps then resumed; asserts that G, D and the evaluated G are bit-identical."""
    method = plugins.methods.get(cfg.method)
    ref = context(plugins, cfg, tmp_path / "ref")
    method.run(ref)
    stopped = context(plugins, cfg, tmp_path / "run", stop_after=stop_after)
    with pytest.raises(Interrupted):
        method.run(stopped)
    assert stopped.final is None
    resumed = context(plugins, cfg, tmp_path / "run")
    method.run(resumed)
    a, b = ref.final, resumed.final
    for x, y in ((a.G, b.G), (a.D, b.D), (a.eval_model, b.eval_model)):
        sa, sb = x.state_dict(), y.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    return a, b


def test_accumulating_run_resumes_bit_identically(plugins, tmp_path):
    cfg = expand_grid(
        GridRequest(
            methods=["stugan"],
            arch="sngan",
            sg=[0.8],
            sd=[0.5],
            steps=6,
            options={"stugan": {"delta_t": "2", "explore": "gd"}},
        ),
        plugins,
    )[0]
    cfg = cfg.replace(train=cfg.train.replace(accumulate=2))
    a, b = uninterrupted_and_resumed(plugins, cfg, tmp_path)
    assert a.step == b.step == 6 and a.flops == b.flops > 0
    assert all(torch.equal(a.g_masks.masks[n], b.g_masks.masks[n]) for n in a.g_masks.masks)


def test_configs_without_the_new_fields_still_load(plugins):
    cfg = expand_grid(GridRequest(methods=["static"], arch="sngan", steps=2), plugins)[0]
    old = cfg.to_dict()
    for key in ("accumulate", "adam_eps"):
        del old["train"][key]
    del old["opt_state"]
    loaded = RunConfig.from_dict(old)
    assert loaded.train.accumulate == 1 and loaded.train.adam_eps == 1e-8 and loaded.opt_state == "dense"
    assert dataclasses.asdict(loaded) == dataclasses.asdict(cfg)
