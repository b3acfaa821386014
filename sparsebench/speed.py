"""Opt-in speed modes of training: bf16 autocast, torch.compile, channels-last, deterministic algorithms.

Each is off by default, so a default run computes as the fp32 references do; each one that is on enters
the run id (RunConfig) and the stored environment. They change how the forwards of training run, never
what is trained: the weights, Adam's state and the masks stay fp32 tensors of the same modules (state
dicts and checkpoints are those of a default run), and evaluation samples in fp32 without compilation.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from sparsebench import SparsebenchError
from sparsebench.config import PRECISIONS as PRECISIONS  # the modes' names live with the run config


@dataclass(frozen=True)
class Speed:
    precision: str = "fp32"  # bf16: the forwards and losses of training under torch.autocast(bfloat16)
    compile: bool = False  # the forwards of training through torch.compile of G and D
    channels_last: bool = False  # G's and D's weights and the real images in channels-last memory format

    @classmethod
    def of(cls, config) -> Speed:
        return cls(config.precision, config.compile, config.channels_last)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The context of a training forward and its loss (a no-op in fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def prepare(self, model: nn.Module) -> nn.Module:
        """`model` with its parameters in the mode's memory format (in place: the same Parameter objects,
        so optimizers and masks built on them stay valid)."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def images(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, model: nn.Module) -> Callable:
        """What training calls for `model`'s forward: the module, or its compiled wrapper. The wrapper shares
        the module's parameters (masks applied in place are seen by the compiled graph: a topology update
        changes values, not the graph), and `model` itself stays what state dicts and checkpoints hold."""
        return torch.compile(model) if self.compile else model

    def forwards(self, G: nn.Module, D: nn.Module) -> tuple[Callable, Callable]:
        """`forward` of G and of D for one training phase. Compiling starts from an empty Dynamo cache:
        spectral norm gives each module of each model a parametrized class of its own, which Dynamo's guards
        check, so every new model (the next run of a `--jobs 1` or torchrun grid, a run's next phase) compiles
        anew, and the graphs of the earlier models, which never match again, count towards Dynamo's recompile
        limit (8 per code object). Past it Dynamo runs the forward eagerly, and only logs a warning: from the
        fifth run of a grid on, a `compile` run would have trained and been timed eagerly."""
        if self.compile:
            torch._dynamo.reset()
        return self.forward(G), self.forward(D)


CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs for deterministic results (or ":16:8")


def prepare_cublas() -> None:
    """Set CUBLAS_WORKSPACE_CONFIG for `--deterministic` on CUDA, before any CUDA work of this process. PyTorch
    reads it once, when the process's first cuBLAS workspace is made: set later it changes nothing, while
    `torch.use_deterministic_algorithms` still finds it set and lets the run pass as deterministic. So a
    deterministic grid sets it when it opens, before preflight (`Grid.open`), and a process where CUDA has
    started without it is refused. A value already in the environment is the user's, set at start-up."""
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG"):
        return
    if torch.cuda.is_initialized():
        raise SparsebenchError(
            "--deterministic needs CUBLAS_WORKSPACE_CONFIG before CUDA starts, and CUDA has started in this process "
            f"without it: run the deterministic grid in a process of its own, or set CUBLAS_WORKSPACE_CONFIG="
            f"{CUBLAS_WORKSPACE} before Python starts"
        )
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE


@contextlib.contextmanager
def deterministic(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic algorithms on CUDA for the duration (the CPU's are deterministic already): cuDNN's
    deterministic convolutions without autotuning, and an error from any op that has no deterministic
    implementation. Slower; it makes a CUDA run repeat itself on the same GPU, software and settings.
    CUBLAS_WORKSPACE_CONFIG must have been set before CUDA started (`prepare_cublas`; refused otherwise)."""
    if not enabled or device.type != "cuda":
        yield
        return
    prepare_cublas()
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1], before[2]


@contextlib.contextmanager
def fp32_math(device: torch.device | str) -> Iterator[None]:
    """fp32 matmuls and convolutions really in fp32 on CUDA for the duration (restored after): PyTorch's
    default lets cuDNN run fp32 convolutions in TF32 (a 10-bit mantissa) on Ampere and newer GPUs, so "fp32"
    training, `--deterministic` included, and the Inception features of every metric would be TF32. Around
    each run (`numerics`) and around preflight, which computes the cached reference statistics."""
    if torch.device(device).type != "cuda":
        yield
        return
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def cuda_numerics(config) -> dict:
    """What `numerics` sets for a CUDA run of `config`, for its stored environment: TF32 off, cuDNN's autotuning
    on unless the run is deterministic (which asks for cuDNN's deterministic algorithms instead)."""
    return {"tf32": False, "cudnn_benchmark": not config.deterministic, "cudnn_deterministic": config.deterministic}


@contextlib.contextmanager
def numerics(config, device: torch.device) -> Iterator[None]:
    """The numerics a run of `config` computes with, for its duration (restored after): on CUDA, fp32 in fp32
    (`fp32_math`), and cuDNN's autotuning (`cudnn.benchmark`: the fastest convolution algorithms for the
    run's fixed shapes, timed at their first use) unless the run is `deterministic`, whose algorithms it sets
    instead. On the CPU nothing changes. `cuda_numerics` is what the run's environment records."""
    with deterministic(config.deterministic, device), fp32_math(device):
        if device.type != "cuda" or config.deterministic:
            yield
            return
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = before


class CompiledCheck:
    """Whether the forwards of a training phase really ran compiled: Dynamo compiled frames during it and never
    gave up on one at its recompile limit (then it runs that code eagerly from there on)."""

    def __init__(self) -> None:
        self.before = self.counts()

    @staticmethod
    def counts() -> tuple[int, int]:
        """Frames Dynamo compiled in this process so far, and the times it stopped at its recompile limit."""
        from torch._dynamo.utils import counters

        limit = sum(n for reason, n in counters["unimplemented"].items() if "recompile limit" in reason)
        return counters["frames"]["ok"], limit

    def ran_compiled(self) -> bool:
        frames, limit = self.counts()
        return frames > self.before[0] and limit == self.before[1]


def environment(config) -> dict:
    """The speed modes of `config` for the stored environment (all of them, defaults included)."""
    return {
        "precision": config.precision,
        "compile": config.compile,
        "channels_last": config.channels_last,
        "deterministic": config.deterministic,
    }
