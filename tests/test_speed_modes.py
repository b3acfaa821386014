"""Opt-in speed modes (--precision bf16, --compile, --channels-last, --deterministic): in the run id only
when on, recorded in the stored environment, and each trains, checkpoints and resumes on the CPU."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import run_cli, scheduler

from sparsebench import kernels
from sparsebench.config import GridRequest, RunConfig, expand_grid
from sparsebench.recorder import LineProgress
from sparsebench.store import Store
from sparsebench.train.loop import Interrupted

MODES = {
    "fp32": {},
    "bf16": {"precision": "bf16"},
    "compile": {"compile": True},
    "channels-last": {"channels_last": True},
    "deterministic": {"deterministic": True},
    "combined": {"precision": "bf16", "compile": True, "channels_last": True},
}


def config(plugins, **mode) -> RunConfig:
    (cfg,) = expand_grid(GridRequest(methods=["static"], arch="sngan", steps=6, metrics=("fid",), **mode), plugins)
    return cfg


def test_run_ids_differ_by_mode_and_the_default_keeps_its_id(plugins):
    ids = {name: config(plugins, **mode).run_id for name, mode in MODES.items()}
    assert len(set(ids.values())) == len(MODES), ids
    default = config(plugins).to_dict()
    assert not {"precision", "compile", "channels_last", "deterministic"} & set(default)  # stored ids stay
    assert RunConfig.from_dict(config(plugins, precision="bf16").to_dict()).precision == "bf16"


# without SparseProp, --kernels sparseprop fails first with its own one-line error (tests/test_kernels.py)
NEEDS_SPARSEPROP = pytest.mark.skipif(not kernels.available(), reason="SparseProp is not installed")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--precision", "fp16"], "unknown precision 'fp16'; known: fp32, bf16"),
        pytest.param(
            ["--compile", "--kernels", "sparseprop"], "--compile needs --kernels dense", marks=NEEDS_SPARSEPROP
        ),
        pytest.param(
            ["--precision", "bf16", "--kernels", "sparseprop"],
            "--kernels sparseprop computes in fp32",
            marks=NEEDS_SPARSEPROP,
        ),
    ],
)
def test_bad_mode_is_one_line(tmp_path, args, needle):
    proc = run_cli(
        "run", "--methods", "static", "--arch", "sngan", "--steps", "2", "--store", str(tmp_path / "r.db"), *args
    )
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, proc.stderr


def test_python_api_rejects_a_non_boolean_flag(plugins):
    from sparsebench import SparsebenchError

    with pytest.raises(SparsebenchError, match="compile must be True or False"):
        config(plugins, compile="yes")


def train_then_resume(plugins, tmp_path, monkeypatch, cfg: RunConfig, stop_at: int):
    """Train `cfg` in one go in one store; in another, stop it after `stop_at` G steps (a checkpoint is
    saved, as on SIGTERM) and run it again, which resumes. Returns both stored rows and the checkpoint's G keys."""
    whole = scheduler(Store(tmp_path / "a" / "r.db"), plugins, checkpoint_every=2).run_one(cfg)
    store = Store(tmp_path / "b" / "r.db")
    stopping = scheduler(store, plugins, progress=True, checkpoint_every=2)
    update = LineProgress.update

    def counting(self, n=1):
        update(self, n)
        if self.n >= stop_at:
            stopping.runner.stop = True

    monkeypatch.setattr(LineProgress, "update", counting)
    with pytest.raises(Interrupted):
        stopping.run_one(cfg)
    (ckpt,) = store.run_dir(cfg.run_id).glob("checkpoint-phase1.pt")
    keys = list(torch.load(ckpt, weights_only=True)["G"])
    monkeypatch.setattr(LineProgress, "update", update)
    resumed = scheduler(store, plugins, checkpoint_every=2).run_one(cfg)
    return whole, resumed, keys


@pytest.mark.parametrize(
    "mode",
    [pytest.param("bf16", marks=pytest.mark.slow), pytest.param("compile", marks=pytest.mark.slow), "channels-last"],
)
def test_a_mode_trains_checkpoints_and_resumes(plugins, tmp_path, monkeypatch, caplog, mode):
    cfg = config(plugins, **MODES[mode])
    whole, resumed, keys = train_then_resume(plugins, tmp_path, monkeypatch, cfg, stop_at=3)
    assert whole.status == resumed.status == "done"
    assert "resuming run" in caplog.text
    default_keys = list(plugins.archs.get("sngan").build(cfg.train, 10)[0].state_dict())
    assert keys == default_keys  # the checkpoint holds the module, not a compiled wrapper
    for key in ("fid", "density_g", "density_d", "train_flops"):
        assert whole.results[key] == resumed.results[key], key
    env = Store(tmp_path / "b" / "r.db", readonly=True).get(cfg.run_id)["env"]
    assert {k: env[k] for k in MODES[mode]} == MODES[mode]
    assert 0.0 < resumed.results["density_g"] < 0.2  # the masks still hold (s_G 0.9)
    if mode == "compile":
        assert whole.results["compiled"] is resumed.results["compiled"] is True


def masked_weights_are_zero(masks) -> bool:
    return all(bool((p[masks.masks[n] == 0] == 0).all()) for n, p in masks.params.items())


def test_bf16_runs_the_forwards_in_bfloat16_on_fp32_weights(plugins, monkeypatch):
    from test_gpu_path import run, tiny

    from sparsebench.speed import Speed

    state, spec, batcher = tiny(plugins, "sngan")
    dtypes, forward = [], state.D.forward

    def recording(*args):
        out = forward(*args)
        dtypes.append(out.dtype)
        return out

    monkeypatch.setattr(state.D, "forward", recording)
    run(state, spec, batcher, 2, speed=Speed(precision="bf16"))
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for net in (state.G, state.D) for p in net.parameters())
    moments = [v for opt in (state.g_opt, state.d_opt) for s in opt.state.values() for k, v in s.items() if k != "step"]
    assert moments and all(v.dtype == torch.float32 for v in moments)
    assert masked_weights_are_zero(state.g_masks) and masked_weights_are_zero(state.d_masks)


def test_channels_last_converts_the_weights_in_place(plugins):
    from test_gpu_path import run, tiny

    from sparsebench.speed import Speed

    state, spec, batcher = tiny(plugins, "sngan")
    before = [id(p) for p in state.G.parameters()]
    run(state, spec, batcher, 2, speed=Speed(channels_last=True))
    assert [id(p) for p in state.G.parameters()] == before  # the optimizer's and the masks' parameters
    convs = [p for net in (state.G, state.D) for p in net.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert masked_weights_are_zero(state.g_masks) and masked_weights_are_zero(state.d_masks)


def test_compile_wraps_the_forwards_and_keeps_the_modules(plugins, monkeypatch):
    from test_gpu_path import run, tiny

    from sparsebench.speed import Speed

    compiled = []

    def fake_compile(model):
        compiled.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    state, spec, batcher = tiny(plugins, "sngan")
    G, D = state.G, state.D
    run(state, spec, batcher, 1, speed=Speed(compile=True))
    assert compiled == [G, D] and state.G is G and state.D is D


def test_deterministic_mode_is_set_on_cuda_only_and_restored(monkeypatch):
    from sparsebench.speed import deterministic

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")  # and removed again after the test, which sets it
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on: calls.append(on))
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: False)
    with deterministic(True, torch.device("cpu")):
        assert calls == []  # the CPU's algorithms are deterministic already
    benchmark = torch.backends.cudnn.benchmark
    with deterministic(True, torch.device("cuda")):
        assert calls == [True] and torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert calls == [True, False] and torch.backends.cudnn.benchmark == benchmark
    with deterministic(False, torch.device("cuda")):
        assert calls == [True, False]


@pytest.mark.parametrize("method", ["stugan", "set", "rigl", "adapt"])
def test_dynamic_methods_update_their_topology_under_bf16_and_channels_last(plugins, tmp_path, method):
    """The grid of reports/small runs every method under --precision bf16 --channels-last: each dynamic method
    reaches its topology updates there and finishes (an update indexed channels-last weights as flat memory)."""
    import sparsebench

    entry = plugins.archs.get("biggan")
    saved = entry.presets
    entry.presets = {**saved, "quick": saved["quick"].replace(explore_interval=2, eval_samples=100)}
    try:
        df = sparsebench.run(
            method, "biggan", sg=0.8, sd=0.5, steps=12, store=tmp_path / "r.db", precision="bf16", channels_last=True
        )
    finally:
        entry.presets = saved
    row = df.iloc[-1]
    assert row["status"] == "done", row.get("error")
    if method != "adapt":  # ADAPT's intervals follow its reference's at this length; the rest every 2 steps
        assert row["exploration_rate"] > row["density_g"]


@pytest.mark.slow
def test_compiled_runs_of_a_grid_in_one_process_all_run_compiled(plugins, tmp_path, monkeypatch):
    """Spectral norm gives every model's modules classes of their own, which Dynamo guards on: without a fresh
    cache per phase, a `--jobs 1` grid's fifth compiled run hit Dynamo's recompile limit (8 per code object) and
    trained eagerly, stored as `compile: true`. Each run records whether it really ran compiled."""
    from functools import partial

    from torch._dynamo.utils import counters

    # Dynamo's guards and recompile limit as a real compile has them, without Inductor's code generation
    monkeypatch.setattr(torch, "compile", partial(torch.compile, backend="eager"))
    limit_hits = lambda: sum(n for reason, n in counters["unimplemented"].items() if "recompile limit" in reason)
    before = limit_hits()
    cells = scheduler(Store(tmp_path / "r.db"), plugins)
    outcomes = []
    for sg in (0.5, 0.6, 0.7, 0.8, 0.9):  # five models in one process
        (cfg,) = expand_grid(
            GridRequest(methods=["static"], arch="sngan", sg=[sg], steps=2, metrics=(), compile=True), plugins
        )
        outcomes.append(cells.run_one(cfg))
    assert limit_hits() == before, "Dynamo fell back to eager forwards at its recompile limit"
    assert [o.status for o in outcomes] == ["done"] * 5
    assert [o.results.get("compiled") for o in outcomes] == [True] * 5


def test_spectral_norm_runs_outside_autocast_under_bf16(plugins):
    """On CUDA autocast runs `mv` in bf16: spectral norm's power iteration and sigma must run with autocast off
    (on the CPU, autocast keeps `mv` in fp32 anyway, so this is what a CPU can show)."""
    from test_gpu_path import run, tiny
    from torch.overrides import TorchFunctionMode

    from sparsebench.speed import Speed

    class Recording(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls: list[tuple[str, bool]] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in (torch.mv, torch.vdot, torch.Tensor.mv):
                self.calls.append((func.__name__, torch.is_autocast_enabled("cpu")))
            return func(*args, **(kwargs or {}))

    state, spec, batcher = tiny(plugins, "sngan")
    with Recording() as seen:
        run(state, spec, batcher, 1, speed=Speed(precision="bf16"))
    assert {name for name, _ in seen.calls} >= {"mv", "vdot"}
    assert not [call for call in seen.calls if call[1]], "spectral norm ran under autocast"


def test_spectral_norm_in_fp32_leaves_cpu_bf16_training_bit_identical(plugins):
    from test_gpu_path import run, tiny
    from torch.nn.utils.parametrizations import _SpectralNorm

    from sparsebench.speed import Speed

    trained = []
    for plain in (False, True):
        state, spec, batcher = tiny(plugins, "biggan")
        if plain:  # torch's own parametrization, computed under autocast
            for net in (state.G, state.D):
                for m in net.modules():
                    if isinstance(m, _SpectralNorm):
                        m.__class__ = _SpectralNorm
        run(state, spec, batcher, 2, speed=Speed(precision="bf16"))
        trained.append([t.detach().clone() for net in (state.G, state.D) for t in net.state_dict().values()])
    assert all(torch.equal(a, b) for a, b in zip(*trained))


@contextlib.contextmanager
def cuda_flags(matmul_tf32: bool, cudnn_tf32: bool, benchmark: bool):
    """The numerics flags set for the block, then put back (torch.backends' modules refuse monkeypatch)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul_tf32, cudnn_tf32
    torch.backends.cudnn.benchmark = benchmark
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.backends.cudnn.benchmark = saved[2]


@pytest.mark.parametrize("deterministic", [False, True])
def test_a_cuda_run_computes_fp32_in_fp32_and_restores_the_flags(monkeypatch, deterministic):
    """PyTorch's default lets cuDNN run fp32 convolutions in TF32 on Ampere and newer: a run turns TF32 off for
    its duration (deterministic or not), and autotunes cuDNN unless deterministic; the CPU is left alone."""
    from types import SimpleNamespace

    from sparsebench.speed import numerics

    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on: None)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    flags = lambda: (  # noqa: E731
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    config = SimpleNamespace(deterministic=deterministic)
    with cuda_flags(True, True, False):
        with numerics(config, torch.device("cpu")):
            assert flags() == (True, True, False)
        with numerics(config, torch.device("cuda")):
            assert flags() == (False, False, not deterministic)
        assert flags() == (True, True, False)


def test_preflight_computes_the_reference_features_in_fp32(plugins, tmp_path, monkeypatch):
    from sparsebench.resources import Resources

    seen = []

    class Evaluator:
        def floor(self, flags):
            seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))

    resources = Resources(plugins, torch.device("cuda"), None, None)
    monkeypatch.setattr(resources, "evaluator", lambda config: Evaluator())
    with cuda_flags(True, True, False):
        resources.preflight([config(plugins)], Store(tmp_path / "r.db"))
        assert torch.backends.cudnn.allow_tf32  # restored
    assert seen == [(False, False)]


def test_a_cuda_runs_environment_records_its_numerics(plugins, monkeypatch):
    from sparsebench.resources import environment

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    env = environment(torch.device("cuda"), config(plugins))
    assert env["gpu"] == "NVIDIA H100 80GB HBM3"
    assert env["tf32"] is False and env["cudnn_benchmark"] is True and env["cudnn_deterministic"] is False
    assert {"cuda", "cudnn", "driver"} <= set(env) and env["cuda"] == torch.version.cuda
    env = environment(torch.device("cuda"), config(plugins, deterministic=True))
    assert env["cudnn_benchmark"] is False and env["cudnn_deterministic"] is True
    assert "tf32" not in environment(torch.device("cpu"), config(plugins))  # a CPU run's environment as before


def test_a_deterministic_grid_sets_the_cublas_workspace_before_preflight(plugins, tmp_path, monkeypatch):
    """PyTorch reads CUBLAS_WORKSPACE_CONFIG once, at the process's first cuBLAS workspace: preflight's Inception
    forward (or an earlier run) may make it, so the variable is set when the grid opens, before anything."""
    import os

    from sparsebench.grid import Grid
    from sparsebench.resources import Resources
    from sparsebench.settings import RunSettings

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    seen = []
    monkeypatch.setattr(
        Resources, "preflight", lambda self, *args: seen.append(os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    )
    request = GridRequest(methods=["static"], arch="sngan", steps=2, deterministic=True)
    Grid.open(request, RunSettings(store=str(tmp_path / "r.db"), device="cuda", progress=False), plugins)
    assert seen == [":4096:8"]


def test_deterministic_cuda_is_refused_where_cuda_started_without_the_cublas_workspace(monkeypatch):
    """Set after cuBLAS made its workspace, the variable changes nothing: the run would pass as deterministic."""
    from sparsebench import SparsebenchError
    from sparsebench.speed import deterministic

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on: None)
    with pytest.raises(SparsebenchError, match="needs CUBLAS_WORKSPACE_CONFIG before CUDA starts"):
        with deterministic(True, torch.device("cuda")):
            pass
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # set by the user before Python started
    with deterministic(True, torch.device("cuda")):
        assert torch.backends.cudnn.deterministic
