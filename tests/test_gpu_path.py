"""The training loop on an accelerator, tested on the CPU: timing that waits for the device (and a stored step
time that counts topology updates), the training split kept on the host, no host synchronisation between
logged steps (with a method's callbacks too), divergence still caught, BigGAN's joint D forward, the refusal
of the CPU-only kernels on CUDA, and the throughput benchmark's GPU names."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import loop as train
from conftest import run_cli
from torch.overrides import TorchFunctionMode

from sparsebench.interfaces import Callbacks as Hooks
from sparsebench.interfaces import GANState
from sparsebench.sparse.masks import MaskState
from sparsebench.sparse.sema import SparseEMA
from sparsebench.timing import StepTimer, Stopwatch
from sparsebench.train import loop
from sparsebench.train.loop import Batcher, Diverged, adam


class Images:
    """What Batcher reads of an image set."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.images.shape[0]


def tiny(plugins, arch: str, sparse: bool = True, **changes):
    """A quick-preset G/D pair at half width on random 16x16 images, ready for `train`."""
    a = plugins.archs.get(arch)
    spec = a.presets["quick"].replace(**changes)
    torch.manual_seed(0)
    G, D = a.build(spec, 10, 0.5)
    gen = torch.Generator().manual_seed(1)
    g_masks = MaskState.from_distribution(G, 0.9, "erk", "conv", gen) if sparse else None
    d_masks = MaskState.from_distribution(D, 0.5, "erk", "conv", gen) if sparse else None
    state = GANState(
        G,
        D,
        adam(G.parameters(), spec.lr_g, spec.beta1, spec.beta2),
        adam(D.parameters(), spec.lr_d, spec.beta1, spec.beta2),
        g_masks,
        d_masks,
        SparseEMA(G, spec.ema_decay, spec.ema_start, g_masks),
    )
    images = torch.randint(0, 256, (64, 3, spec.resolution, spec.resolution), dtype=torch.uint8)
    data = Images(images, torch.randint(0, 10, (64,)))
    batcher = Batcher(data, torch.device("cpu"), torch.Generator().manual_seed(2))
    return state, spec, batcher


def run(state, spec, batcher, steps, **kwargs):
    train(state, steps, spec, batcher, 10, torch.Generator().manual_seed(3), lambda: 1.0, **kwargs)


# -- timing --------------------------------------------------------------------------------------


class FakeEvent:
    """torch.cuda.Event's timing interface on the host clock."""

    synced = 0

    def __init__(self, enable_timing: bool = False):
        assert enable_timing
        self.at = None

    def record(self):
        import time

        self.at = time.perf_counter()

    def synchronize(self):
        FakeEvent.synced += 1

    def elapsed_time(self, end) -> float:
        return (end.at - self.at) * 1000.0


def test_timing_waits_for_a_cuda_device(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    watch = Stopwatch("cuda")
    watch.start()
    assert watch.stop() >= 0.0
    assert len(calls) == 2  # the queue is drained before and after the timed work
    cpu = Stopwatch("cpu")
    cpu.start()
    cpu.stop()
    assert len(calls) == 2  # nothing to wait for on the CPU


def test_step_times_come_from_events_read_once_per_flush(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    FakeEvent.synced = 0
    timer, seconds = StepTimer("cuda"), []
    for _ in range(3):
        timer.start()
        timer.stop()
    assert FakeEvent.synced == 0 and seconds == []  # no wait per step
    timer.flush(seconds)
    assert FakeEvent.synced == 1 and len(seconds) == 3 and all(s >= 0.0 for s in seconds)


def test_the_loop_times_its_steps_on_its_device(plugins, monkeypatch):
    made = []

    class Recording(StepTimer):
        def __init__(self, device):
            super().__init__(device)
            made.append(self.device)

    monkeypatch.setattr(loop, "StepTimer", Recording)
    state, spec, batcher = tiny(plugins, "sngan", log_every=2)
    run(state, spec, batcher, 3)
    assert made == [torch.device("cpu")] and len(state.step_seconds) == 3


def test_the_stored_step_time_includes_the_topology_updates(tmp_path, monkeypatch):
    """A dynamic method pays for its topology updates: the stored step time is the mean over the phase's steps
    (a median would drop the slow update steps, and STU-GAN would look as cheap as Static)."""
    import time

    import sparsebench
    from sparsebench import kit

    update = kit.update_topology

    def slow(*args, **kwargs):
        time.sleep(1.0)
        return update(*args, **kwargs)

    monkeypatch.setattr(kit, "update_topology", slow)
    df = sparsebench.run(
        "stugan",
        "sngan",
        sg=0.8,
        sd=0.5,
        steps=6,
        store=tmp_path / "r.db",
        metrics=(),
        options={"stugan": {"delta_t": 2}},
    )
    row = df.iloc[-1]
    assert row["status"] == "done" and row["topology_updates"] == 2  # at G steps 2 and 4 (none at the last)
    assert row["train_s_per_step"] >= 2 * 1.0 / 6  # both updates' seconds, spread over the 6 steps
    assert row["train_s_per_step"] - row["train_s_per_step_median"] >= 0.25  # the median is a step without them


# -- data on the host ----------------------------------------------------------------------------


class Transfers(TorchFunctionMode):
    """Bytes copied from the host to another device (`.to(device)`, `.cuda()`), and whether each copy was
    asked `non_blocking`."""

    def __init__(self):
        super().__init__()
        self.bytes, self.blocking = 0, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.to, torch.Tensor.cuda) and isinstance(args[0], torch.Tensor):
            target = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (str, torch.device))), None))
            if func is torch.Tensor.cuda or (target is not None and torch.device(target).type != "cpu"):
                if args[0].device.type == "cpu":
                    self.bytes += args[0].numel() * args[0].element_size()
                    self.blocking += not kwargs.get("non_blocking", False)
        return func(*args, **kwargs)


def test_the_batcher_keeps_the_split_on_the_host_and_moves_each_batch():
    """A training split can be tens of GB: only the minibatches reach the device (here `meta`, standing for a
    GPU), each copied without waiting; nothing else of the split is moved."""
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 10, (64,))
    with Transfers() as moved:
        batcher = Batcher(Images(images, labels), torch.device("meta"), torch.Generator().manual_seed(0))
        for _ in range(6):  # 96 images: into the second epoch
            x, y = batcher(16)
    per_batch = 16 * (3 * 8 * 8 * images.element_size() + labels.element_size())
    assert moved.bytes == 6 * per_batch, (moved.bytes, per_batch)  # the split itself is never copied
    assert moved.blocking == 0
    assert x.device.type == y.device.type == "meta" and x.dtype == torch.float32 and x.shape == (16, 3, 8, 8)
    assert batcher.images.device.type == "cpu"


def test_the_batcher_gathers_into_pinned_memory_for_cuda(monkeypatch):
    """On CUDA each minibatch is gathered into pinned memory (a copy from pageable memory cannot overlap)."""
    pinned, empty = [], torch.empty

    def recording(*args, pin_memory=False, **kwargs):
        pinned.append(pin_memory)
        return empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", recording)
    images = torch.randint(0, 256, (32, 3, 4, 4), dtype=torch.uint8)
    batcher = Batcher(Images(images, torch.arange(32)), torch.device("meta"), torch.Generator().manual_seed(0))
    assert not batcher.pinned
    batcher.pinned = True  # as on a CUDA device
    batcher(8)
    assert pinned == [True, True]  # images and labels


def test_the_batcher_draws_the_same_order_on_the_host_and_resumes_it():
    images = torch.randint(0, 256, (40, 3, 4, 4), dtype=torch.uint8)
    labels = torch.arange(40)
    data = Images(images, labels)
    a = Batcher(data, torch.device("cpu"), torch.Generator().manual_seed(5))
    order = torch.randperm(40, generator=torch.Generator().manual_seed(5))
    x, y = a(8)
    assert torch.equal(y, labels[order[:8]]) and torch.equal(x, images[order[:8]].float().div_(127.5).sub_(1.0))
    for _ in range(4):
        a(8)
    saved = a.state_dict()
    b = Batcher(data, torch.device("cpu"), torch.Generator().manual_seed(99))
    b.load_state_dict(saved)
    for _ in range(7):  # across the epoch boundary
        (xa, ya), (xb, yb) = a(8), b(8)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# -- host synchronisation -------------------------------------------------------------------------


class HostSyncs(TorchFunctionMode):
    """Every op that makes the host wait for a CUDA device, by the G step it happens in (`done` G steps so far):
    a value read into Python (`item`, `tolist`, `numpy`, `bool` / `float` / `int` / index of a tensor), a copy
    to the host (`.cpu()`, `.to("cpu")`), and the ops whose output size depends on values (boolean-mask
    indexing and assignment, `nonzero`, `masked_select`, one-argument `where`, `unique`...). On the CPU a
    `.to(device)` cannot tell a copy to the host from one to the run's device: only an explicit "cpu" counts.
    Adam's reads of its step count are left out: on CUDA that count stays a host tensor (torch.optim's
    default), no device sync."""

    READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"}
    SIZED = {"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "repeat_interleave"}

    def __init__(self):
        super().__init__()
        self.done = 0
        self.syncs: list[tuple[int, str, str]] = []

    @staticmethod
    def _bool_index(index) -> bool:
        items = index if isinstance(index, (tuple, list)) else (index,)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        syncs = (
            name in self.READS
            or name in self.SIZED
            or (name == "where" and len(args) + len(kwargs) == 1)
            or (name == "to" and "cpu" in (*args[1:], kwargs.get("device")))
            or (name in ("__getitem__", "__setitem__", "index_put_", "index_put") and self._bool_index(args[1]))
        )
        if syncs:
            caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
            if "/torch/optim/" not in caller:
                self.syncs.append((self.done + 1, name, f"{caller}:{sys._getframe(1).f_lineno}"))
        return func(*args, **kwargs)


def stugan_callbacks():
    from sparsebench import CosineSchedule
    from sparsebench_builtins.methods.stugan import Exploration

    return Exploration("g", 3, CosineSchedule(0.5, 0.005, 12), torch.Generator().manual_seed(7))


def adapt_callbacks():
    from sparsebench import CosineSchedule
    from sparsebench_builtins.methods.adapt import BalancedTraining

    return BalancedTraining(
        4,
        CosineSchedule(0.5, 0.005, 12),
        torch.Generator().manual_seed(7),
        mode="relaxed",
        d_interval=4,
        ratio_every=2,
        window=2,
        d_density=0.5,
    )


@pytest.mark.parametrize(
    "arch, method, updates",
    [
        ("sngan", None, set()),
        ("biggan", None, set()),
        ("sngan", stugan_callbacks, {3, 6, 9}),  # topology updates every 3 G steps
        ("biggan", stugan_callbacks, {3, 6, 9}),
        ("sngan", adapt_callbacks, {4, 8}),  # G's updates and D's density decisions; a ratio every 2 G steps
    ],
    ids=["sngan", "biggan", "sngan-stugan", "biggan-stugan", "sngan-adapt"],
)
def test_no_host_synchronisation_between_logged_steps(plugins, arch, method, updates):
    """Only the logged steps (1, 5, 10), the last one (12) and a method's topology updates may make the host
    wait for the device: not the step after an update (SEMA's start of grown weights), not a balance-ratio
    sample between ADAPT's decisions."""
    state, spec, batcher = tiny(plugins, arch, log_every=5, ema_start=0)  # SEMA averages from the first step
    callbacks = method() if method else None
    logged = []
    with HostSyncs() as watch:

        def advance(n):
            watch.done += n

        run(state, spec, batcher, 12, hooks=callbacks, log=lambda t, v: logged.append(t), progress=advance)
    assert logged == [1, 5, 10]
    steps = {t for t, _, _ in watch.syncs}
    assert steps and steps <= {1, 5, 10, 12} | updates, sorted(s for s in watch.syncs if s[0] not in {1, 5, 10, 12})
    if updates:
        assert callbacks.updates == len(updates)


def test_a_diverged_loss_is_caught_with_its_first_step(plugins):
    class Poison(Hooks):
        def after_g_step(self, state, step):
            if step == 3:
                with torch.no_grad():
                    next(state.G.parameters()).fill_(float("nan"))
            return False

    state, spec, batcher = tiny(plugins, "sngan", log_every=5)
    with pytest.raises(Diverged) as caught:
        run(state, spec, batcher, 20, hooks=Poison(), log=lambda t, v: None)
    assert caught.value.step == 4  # the first step whose loss was not finite
    assert caught.value.detected == 5  # read at the next logged step
    assert state.step == 5 and "G step 4" in str(caught.value)


def test_a_hook_failing_on_a_diverged_state_reports_the_divergence(plugins):
    class Fragile(Hooks):
        def after_g_step(self, state, step):
            if step == 2:
                with torch.no_grad():
                    next(state.G.parameters()).fill_(float("nan"))
            if step == 4 and not torch.isfinite(next(state.G.parameters())).all():
                raise ValueError("weights are not finite")
            return False

    state, spec, batcher = tiny(plugins, "sngan", log_every=10)
    with pytest.raises(Diverged) as caught:
        run(state, spec, batcher, 20, hooks=Fragile())
    assert caught.value.step == 3 and caught.value.detected == 4


# -- spectral norm per D step ---------------------------------------------------------------------


@pytest.mark.parametrize("arch, expected", [("biggan", 1), ("sngan", 2)])
def test_spectral_norm_iterations_per_d_step(plugins, monkeypatch, arch, expected):
    """BigGAN's reference runs D once over fake and real images (one power iteration per SN layer per D
    step); SNGAN's references run D twice."""
    from torch.nn.utils.parametrizations import _SpectralNorm

    counts: dict[int, int] = {}
    original = _SpectralNorm._power_method

    def counting(self, *args, **kwargs):
        counts[id(self)] = counts.get(id(self), 0) + 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(_SpectralNorm, "_power_method", counting)
    state, spec, batcher = tiny(plugins, arch, sparse=False, n_critic=3)
    sn_of_d = [id(m) for m in state.D.modules() if isinstance(m, _SpectralNorm)]
    assert sn_of_d
    seen = [[counts.get(i, 0) for i in sn_of_d]]  # after building (spectral norm's own warm-up iterations)

    class Snapshot(Hooks):
        def after_d_backward(self, state, step):
            seen.append([counts.get(i, 0) for i in sn_of_d])

    run(state, spec, batcher, 2, hooks=Snapshot())
    assert len(seen) == 1 + 2 * spec.n_critic
    diffs = [[b - a for a, b in zip(before, after)] for before, after in zip(seen, seen[1:])]
    # D step k (1-based); the first D step of G step 2 also holds the D forward of G step 1's G step
    per_d_step = [d for k, d in enumerate(diffs, 1) if k == 1 or (k - 1) % spec.n_critic]
    assert len(per_d_step) == 2 * spec.n_critic - 1
    assert all(n == expected for d in per_d_step for n in d), per_d_step
    crossing = diffs[spec.n_critic]
    assert all(n == expected + 1 for n in crossing), crossing


def test_biggan_concatenates_fake_then_real(plugins, monkeypatch):
    state, spec, batcher = tiny(plugins, "biggan", sparse=False, n_critic=1)
    assert spec.d_joint_forward and not plugins.archs.get("sngan").presets["quick"].d_joint_forward
    batches, forward = [], state.D.forward

    def recording(x, y):
        batches.append(x.detach().clone())
        return forward(x, y)

    monkeypatch.setattr(state.D, "forward", recording)
    real = batcher.images[batcher.perm[: spec.batch_size]].float().div_(127.5).sub_(1.0)
    run(state, spec, batcher, 1)
    joint = batches[0]
    assert joint.shape[0] == 2 * spec.batch_size
    assert torch.equal(joint[spec.batch_size :], real)  # fake first, then real (BigGAN-PyTorch's G_D)


# -- kernels on CUDA ------------------------------------------------------------------------------


def test_sparseprop_kernels_are_refused_on_cuda(tmp_path):
    proc = run_cli(
        "run", "--methods", "static", "--arch", "sngan", "--kernels", "sparseprop", "--device", "cuda",
        "--steps", "2", "--store", str(tmp_path / "r.db"),
    )  # fmt: skip
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--kernels sparseprop" in lines[0] and "--device cuda" in lines[0], proc.stderr
    assert not (tmp_path / "r.db").exists()  # refused before anything ran


# -- the GPU throughput benchmark ----------------------------------------------------------------------------


def test_the_throughput_benchmark_matches_gpu_names_exactly():
    """By model word, longest entry first: a substring match gave the L40 the L4's peak, the A10G the A10's."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_throughput.py"
    spec = importlib.util.spec_from_file_location("gpu_throughput", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    peaks = bench.PEAKS
    assert bench.peak_of("NVIDIA L40") == peaks["L40"] != peaks["L4"]
    assert bench.peak_of("NVIDIA L4") == peaks["L4"] and bench.peak_of("NVIDIA L40S") == peaks["L40S"]
    assert bench.peak_of("NVIDIA A10G") is None and bench.peak_of("NVIDIA A10") == peaks["A10"]
    assert bench.peak_of("NVIDIA H100 PCIe") == peaks["H100 PCIe"]
    assert bench.peak_of("NVIDIA H100 80GB HBM3") == peaks["H100"] and bench.peak_of("NVIDIA H200") == peaks["H200"]
    assert bench.peak_of("NVIDIA A100-SXM4-80GB") == peaks["A100"]
    assert bench.peak_of("NVIDIA GeForce RTX 4090") == peaks["RTX 4090"]
