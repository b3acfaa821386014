"""Run configuration: immutable, validated, and hashed into the run id.

A run id is a hash of everything that can change a result (method, arch, data, sparsities,
seed, every training hyperparameter, every plugin option, the versions of the code that trains:
core, method and architecture). The device is not part of it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from sparsebench import SparsebenchError, compat, defaults
from sparsebench.sparse.opt_state import DEFAULT_POLICY, POLICIES

SCOPES = ("conv", "conv+linear", "weights")
PRECISIONS = ("fp32", "bf16")  # of training forwards (sparsebench.speed)
DEFAULT_SCOPE = defaults.SCOPE
DEFAULT_DISTRIBUTION = defaults.DISTRIBUTION
# Presets whose width is too small for a method's own, wider scope: every method runs at DEFAULT_SCOPE there
# (unless --scope says otherwise), so that the rows of one table differ in their method, not in how many weights
# G keeps. Measured at the small preset, s_G 0.95 (`sparsebench describe --arch sngan --preset small --sg 0.95
# --scope ...`, BigGAN alike): under `conv` G keeps 1,988 conv weights (5.0 %) beside a dense first linear
# (16,384): 18,372 nonzero weights; under ADAPT's `weights` scope the linear is masked too and G keeps 1,275 conv
# weights (3.2 %) and 1,532 linear ones: 2,807 in all, a generator that starves whatever trains it. The presets
# that reproduce a reference (paper, imagenet) keep each method's own scope.
SHARED_SCOPE_PRESETS = ("quick", "small")


def default_scope(method_scope: str, preset: str) -> str:
    """The scope a method's runs take at `preset` when none is asked for: its declared one (`Method.scope`), except
    at the presets too small for it (SHARED_SCOPE_PRESETS)."""
    if preset in SHARED_SCOPE_PRESETS:
        return DEFAULT_SCOPE
    return method_scope or DEFAULT_SCOPE


KERNELS = ("dense", "sparseprop")  # execution backends of sparse layers (sparsebench.kernels)
DISTRIBUTIONS = ("erk", "er", "uniform", "global")
CONFIG_VERSION = 1
RUN_ID_LENGTH = 16
MAX_THREADS = 1024
SEED_LIMIT = 2**32  # seeds lie in [0, 2^32); random streams are derived from (seed, name), see MethodContext.rng
_RUN_ID = re.compile(f"[0-9a-f]{{{RUN_ID_LENGTH}}}")


def stream_seed(seed: int, name: str) -> int:
    """The torch seed of the random stream `name` of a run with `seed`: a 63-bit slice of
    sha256("seed:name"), the same in every process and independent between names."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big") >> 1


@dataclass(frozen=True)
class TrainSpec:
    """Training and evaluation settings of one architecture at one preset."""

    dataset: str
    resolution: int
    width: int  # channel multiplier `ch` of the reference code
    z_dim: int
    batch_size: int  # real / fake batch of each D step
    g_batch_size: int  # fake batch of each G step
    n_critic: int  # D steps per G step
    lr_g: float
    lr_d: float
    beta1: float
    beta2: float
    steps: int  # G steps
    ema_decay: float
    ema_start: int  # G steps before the average starts (a plain copy before)
    explore_interval: int  # dT of STU-GAN, in G steps
    eval_samples: int
    extractor: str  # feature extractor used for FID / IS
    eval_batch_stats: bool = False  # sample with batch-statistics BN (BigGAN's G_eval_mode off)
    log_every: int = 10
    accumulate: int = 1  # minibatches whose gradients are averaged into each D and each G step
    adam_eps: float = 1e-8
    # Both learning rates decay linearly to zero over the last (1 - lr_decay_start) of each training
    # phase (its G steps); 1.0 keeps them constant, as the paper presets do. A phase that starts
    # afresh (PF fine-tuning, a GAN Tickets round) restarts the schedule.
    lr_decay_start: float = 1.0
    # The evaluation curve: every `eval_every` G steps from the fraction `eval_from` of training on (0: none),
    # the evaluated weights' FID over `eval_samples` samples drawn from the same z as the final evaluation,
    # logged as the run's `fid` curve. It reads the weights only: training and the final scores are the same
    # with or without it (tests/test_eval_curve.py checks it).
    eval_every: int = 0
    eval_from: float = 2 / 3
    # The run's score: the mean FID over the last `score_last` evaluations of its curve, the final one
    # included (1: the final evaluation alone). Averaging over the last stretch of training takes out the
    # step-to-step wobble of a GAN's FID (benchmarks/noise.py measures how much of the seed-to-seed spread
    # that is).
    score_last: int = 1
    # D's step as the architecture's reference computes it: True runs D once over the fake and the real
    # images concatenated (BigGAN-PyTorch's G_D), so spectral norm's power iteration runs once per D step;
    # False runs two forwards (the SNGAN references).
    d_joint_forward: bool = False

    def replace(self, **changes: Any) -> TrainSpec:
        return dataclasses.replace(self, **changes)


def curve_points(spec: TrainSpec) -> int:
    """Evaluations of a run's FID curve in its last phase: the due steps before the last, then the final one."""
    if not spec.eval_every:
        return 1
    first = math.ceil(spec.eval_from * spec.steps / spec.eval_every) * spec.eval_every
    return len(range(max(first, spec.eval_every), spec.steps, spec.eval_every)) + 1


def min_steps_for_score(spec: TrainSpec) -> int:
    """The fewest G steps whose evaluation curve holds the `score_last` evaluations the score averages."""
    steps = 1
    while curve_points(dataclasses.replace(spec, steps=steps)) < spec.score_last:
        steps += 1
    return steps


@dataclass(frozen=True)
class RunConfig:
    method: str
    arch: str
    dataset: str
    preset: str
    sg: float
    sd: float
    seed: int
    train: TrainSpec
    scope: str = DEFAULT_SCOPE
    distribution: str = DEFAULT_DISTRIBUTION
    method_options: tuple = ()
    arch_options: tuple = ()
    dataset_options: tuple = ()
    metrics: tuple = ("fid", "is")
    opt_state: str = DEFAULT_POLICY  # optimizer state at inactive / regrown weights (sparsebench.sparse.opt_state)
    code: tuple = ()  # (("arch", version), ("method", version), ("sparsebench", version)): see Plugins.code
    version: int = CONFIG_VERSION
    kernels: str = "dense"  # execution backend of sparse layers (sparsebench.kernels); in the id unless dense
    precision: str = "fp32"  # training forwards in fp32, or under bf16 autocast
    compile: bool = False  # training forwards through torch.compile
    channels_last: bool = False  # channels-last memory format of G, D and the real images
    deterministic: bool = False  # deterministic algorithms on CUDA
    # CPU threads the run trains and evaluates with, whichever executor runs it: float reassociation makes a
    # CPU result depend on the count, so a run id must fix it; in the id unless 1 (the runs stored before it
    # existed trained with 1 thread per run)
    threads: int = 1
    # processes training the run data-parallel (torchrun): each draws its own share of the global batch from
    # its own stream, so the count changes what is trained; in the id unless 1
    world_size: int = 1

    def __post_init__(self):
        for axis in ("sg", "sd"):
            value = getattr(self, axis)
            if not 0.0 <= value < 1.0:
                raise SparsebenchError(f"{axis} must lie in [0, 1), got {value}")
        if self.scope not in SCOPES:
            raise SparsebenchError(f"unknown scope {self.scope!r}; known: {', '.join(SCOPES)}")
        if self.distribution not in DISTRIBUTIONS:
            raise SparsebenchError(f"unknown distribution {self.distribution!r}; known: {', '.join(DISTRIBUTIONS)}")
        if self.opt_state not in POLICIES:
            raise SparsebenchError(f"unknown opt_state {self.opt_state!r}; known: {', '.join(POLICIES)}")
        if self.kernels not in KERNELS:
            raise SparsebenchError(f"unknown kernels {self.kernels!r}; known: {', '.join(KERNELS)}")
        if self.precision not in PRECISIONS:
            raise SparsebenchError(f"unknown precision {self.precision!r}; known: {', '.join(PRECISIONS)}")
        for flag in ("compile", "channels_last", "deterministic"):
            if not isinstance(getattr(self, flag), bool):
                raise SparsebenchError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.compile and self.kernels != "dense":
            raise SparsebenchError(
                f"--compile needs --kernels dense (the {self.kernels} kernels are swapped in outside what is compiled)"
            )
        if self.precision != "fp32" and self.kernels != "dense":
            raise SparsebenchError(
                f"--kernels {self.kernels} computes in fp32 (under --precision {self.precision} its layers would fall "
                "back to dense ones); use --precision fp32 with it, or --kernels dense"
            )
        if self.train.steps < 1:
            raise SparsebenchError(f"steps must be a positive integer, got {self.train.steps}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise SparsebenchError(f"seed {self.seed} is outside [0, {SEED_LIMIT - 1}]")
        if not 0.0 <= self.train.lr_decay_start <= 1.0:
            raise SparsebenchError(f"lr_decay_start must lie in [0, 1], got {self.train.lr_decay_start}")
        if self.train.eval_every < 0 or not 0.0 <= self.train.eval_from <= 1.0:
            raise SparsebenchError(
                f"eval_every must be >= 0 and eval_from in [0, 1], got {self.train.eval_every}, {self.train.eval_from}"
            )
        if self.train.score_last < 1 or (self.train.score_last > 1 and not self.train.eval_every):
            raise SparsebenchError(
                f"score_last must be >= 1, and above 1 only with an evaluation curve (eval_every > 0); "
                f"got score_last={self.train.score_last}, eval_every={self.train.eval_every}"
            )
        if self.train.score_last > curve_points(self.train):
            raise SparsebenchError(
                f"score_last={self.train.score_last} needs as many evaluations, the curve gives "
                f"{curve_points(self.train)} (eval_every={self.train.eval_every} from {self.train.eval_from:g} "
                f"of {self.train.steps} steps, the final evaluation included); the preset's score needs "
                f"--steps {min_steps_for_score(self.train)} or more"
            )
        if not isinstance(self.threads, int) or not 1 <= self.threads <= MAX_THREADS:
            raise SparsebenchError(f"threads must be an integer in [1, {MAX_THREADS}], got {self.threads}")
        if not isinstance(self.world_size, int) or self.world_size < 1:
            raise SparsebenchError(f"world_size must be a positive integer, got {self.world_size!r}")
        if self.train.accumulate < 1:
            raise SparsebenchError(f"accumulate must be a positive integer, got {self.train.accumulate}")

    def to_dict(self) -> dict:
        # shallow, not dataclasses.asdict: every field but `train` is a scalar or a tuple converted below, and
        # `train` holds scalars only; asdict's deep copies made grids of many cells slow to expand
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["train"] = {f.name: getattr(self.train, f.name) for f in dataclasses.fields(self.train)}
        for key in ("method_options", "arch_options", "dataset_options", "code"):
            d[key] = dict(getattr(self, key))
        d["metrics"] = list(self.metrics)
        return compat.for_run_id(d)  # fields added later, at their defaults, are left out: old runs keep their ids

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        d = dict(d)
        d["train"] = TrainSpec(**d["train"])
        for key in ("method_options", "arch_options", "dataset_options", "code"):
            d[key] = freeze(d.get(key, {}))
        d["metrics"] = tuple(d.get("metrics", ()))
        return cls(**d)

    @functools.cached_property
    def run_id(self) -> str:  # computed once per config (it is frozen): grids look it up many times
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:RUN_ID_LENGTH]

    def without_unused_settings(self) -> RunConfig:
        """This config with the settings that cannot change its run at their defaults: with G and D
        dense (s_G = s_D = 0) there is no masked weight, so neither the optimizer-state policy nor the
        sparse-layer backend matters, and the dense GAN of a `--opt-state zero` grid is the one every
        other grid shares (PF and GAN Tickets reuse it rather than train their own)."""
        if self.sg == 0.0 and self.sd == 0.0 and (self.opt_state, self.kernels) != (DEFAULT_POLICY, "dense"):
            return self.replace(opt_state=DEFAULT_POLICY, kernels="dense")
        return self

    def option(self, name: str) -> Any:
        return dict(self.method_options)[name]

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


def check_run_id(run_id: object) -> str:
    """`run_id` if it has the form `RunConfig.run_id` gives: run ids become folder and file names, so an
    id read from a store must not be able to point outside them (`../x`, `/etc`)."""
    if not isinstance(run_id, str) or _RUN_ID.fullmatch(run_id) is None:
        raise SparsebenchError(f"invalid run id {run_id!r}: expected {RUN_ID_LENGTH} lowercase hex characters")
    return run_id


def preset_spec(arch, preset: str) -> TrainSpec:
    """The architecture's TrainSpec for `preset` (quick and paper everywhere; some add more)."""
    if preset not in arch.presets:
        raise SparsebenchError(f"unknown preset {preset!r} for {arch.name}; known: {', '.join(arch.presets)}")
    return arch.presets[preset]


def freeze(options: dict) -> tuple:
    """Options as a sorted tuple of pairs: hashable, and stable under dict ordering."""
    return tuple(sorted(options.items()))


@dataclass
class GridRequest:
    """What `sparsebench run` was asked for, before it becomes one config per cell."""

    methods: list[str]
    arch: str
    dataset: str | None = None
    sg: list[float] = field(default_factory=lambda: [defaults.SG])
    sd: list[float] = field(default_factory=lambda: [defaults.SD])
    seeds: list[int] = field(default_factory=lambda: [defaults.SEED])
    preset: str = defaults.PRESET
    steps: int | None = None
    scope: str | None = None  # None: each method's own at the preset (`default_scope`)
    distribution: str = DEFAULT_DISTRIBUTION
    opt_state: str = defaults.OPT_STATE
    kernels: str = defaults.KERNELS
    precision: str = defaults.PRECISION
    compile: bool = False
    channels_last: bool = False
    deterministic: bool = False
    threads: int = defaults.THREADS
    options: dict[str, dict[str, str]] = field(default_factory=dict)
    metrics: tuple = defaults.METRICS


def expand_grid(req: GridRequest, plugins) -> list[RunConfig]:
    """One config per cell of methods x s_G x s_D x seeds, minus repeats along fixed axes, for the processes
    this one trains with (under torchrun, its process group)."""
    from sparsebench import distributed

    if not req.methods:
        raise SparsebenchError("no method given; pass --methods NAME[,NAME...]")
    for axis, values in (("s_G", req.sg), ("s_D", req.sd)):
        for v in values:
            if not 0.0 <= v < 1.0:
                raise SparsebenchError(f"{axis} must lie in [0, 1), got {v}")
    arch = plugins.archs.get(req.arch)
    spec: TrainSpec = preset_spec(arch, req.preset)
    if req.steps is not None:
        if req.steps < 1:
            raise SparsebenchError(f"--steps must be a positive integer, got {req.steps}")
        spec = spec.replace(steps=req.steps)
    dataset = req.dataset or spec.dataset
    own_extractor = getattr(
        plugins.datasets.get(dataset), "extractor", ""
    )  # a data set may bring the extractor that fits it
    if dataset != spec.dataset:
        spec = spec.replace(dataset=dataset)
    if own_extractor and own_extractor != spec.extractor:
        plugins.extractors.get(own_extractor)
        spec = spec.replace(extractor=own_extractor)
    for metric in req.metrics:
        plugins.metrics.get(metric)
    from sparsebench.options import validate_options

    targets = {req.arch: arch.options, dataset: plugins.datasets.get(dataset).options}
    methods = [(name, plugins.methods.get(name)) for name in req.methods]
    for name, method in methods:
        targets[name] = method.options
    for target in req.options:
        if target not in targets:
            raise SparsebenchError(
                f"--option for {target!r}, which is not in this run; allowed: {', '.join(sorted(targets))}"
            )
    arch_options = freeze(validate_options(arch.options, req.options.get(req.arch, {}), req.arch))
    dataset_options = freeze(
        validate_options(plugins.datasets.get(dataset).options, req.options.get(dataset, {}), dataset)
    )
    configs: list[RunConfig] = []
    seen = set()
    for name, method in methods:
        method_options = freeze(validate_options(method.options, req.options.get(name, {}), name))
        for sg_axis in req.sg:
            for sd_axis in req.sd:
                sg, sd = method.grid_point(sg_axis, sd_axis, dict(method_options))
                for seed in req.seeds:
                    cfg = RunConfig(
                        method=name,
                        arch=req.arch,
                        dataset=dataset,
                        preset=req.preset,
                        sg=sg,
                        sd=sd,
                        seed=seed,
                        train=spec,
                        scope=req.scope or default_scope(method.scope, req.preset),
                        distribution=req.distribution,
                        method_options=method_options,
                        arch_options=arch_options,
                        dataset_options=dataset_options,
                        metrics=tuple(req.metrics),
                        opt_state=req.opt_state,
                        kernels=req.kernels,
                        precision=req.precision,
                        compile=req.compile,
                        channels_last=req.channels_last,
                        deterministic=req.deterministic,
                        threads=req.threads,
                        world_size=distributed.world_size(),
                        code=plugins.code(name, req.arch),
                    ).without_unused_settings()
                    if cfg.run_id not in seen:
                        seen.add(cfg.run_id)
                        configs.append(cfg)
    return configs
