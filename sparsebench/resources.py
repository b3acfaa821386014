"""What the runs of a grid share: loaded data sets and evaluators (feature extractors, reference
statistics, FID floors), prepared once per data set before any run starts, and where a run ran."""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from sparsebench import SparsebenchError, __version__, compat
from sparsebench.config import RunConfig
from sparsebench.interfaces import DataSplits
from sparsebench.metrics.evaluate import Evaluator
from sparsebench.speed import cuda_numerics, fp32_math


def cache_dir() -> Path:
    """Where extractor weights and reference statistics are cached (shared by all stores)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sparsebench"
    return Path(os.environ.get("SPARSEBENCH_CACHE", default))


def cpu_model() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), for labelling measured times."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def driver_version() -> str | None:
    """The NVIDIA driver's version (Linux: /proc/driver/nvidia/version; else NVML where installed), None where
    unknown."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            found = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", f.readline())
        if found:
            return found.group(1)
    except OSError:
        pass
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 - no NVML, or no driver: unknown
        return None


def environment(device: torch.device, config: RunConfig | None = None) -> dict[str, Any]:
    """Where a run ran: versions, host, CPU or GPU, its own CPU thread count (`RunConfig.threads`, else this
    process's) and its speed modes; stored with the run. On CUDA also the numerics it computes with (TF32,
    cuDNN's autotuning and determinism, as `sparsebench.speed.numerics` sets them for the run) and the
    CUDA, cuDNN and driver versions."""
    env: dict[str, Any] = {
        "sparsebench": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": config.threads if config is not None else torch.get_num_threads(),
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "balance_ratio_estimator": compat.BALANCE_RATIO_ESTIMATOR,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), driver=driver_version())
        if config is not None:
            env.update(cuda_numerics(config))
            if config.deterministic:  # set before CUDA started (`prepare_cublas`), or the run was refused
                env["cublas_workspace_config"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if config is not None:
        env.update(
            precision=config.precision,
            compile=config.compile,
            channels_last=config.channels_last,
            deterministic=config.deterministic,
        )
    return env


@contextmanager
def pinned_threads(n: int) -> Iterator[None]:
    """torch's CPU thread count set to `n` inside the block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def data_key(config: RunConfig) -> tuple:
    """What a run's data depends on: runs sharing it share one loaded data set."""
    return (config.dataset, config.train.resolution, config.dataset_options)


class Resources:
    """The data sets and evaluators of a grid's runs, loaded once each (keyed by what they depend on)."""

    def __init__(self, plugins: Any, device: torch.device, data_dir: str | None, inception_weights: str | None):
        self.plugins, self.device = plugins, device
        self.data_dir, self.inception_weights = data_dir, inception_weights
        self._data: dict[tuple, DataSplits] = {}
        self._evaluators: dict[tuple, Evaluator] = {}

    def data(self, config: RunConfig) -> DataSplits:
        key = data_key(config)
        if key not in self._data:
            ds = self.plugins.datasets.get(config.dataset)
            self._data[key] = ds.load(config.train.resolution, self.data_dir, **dict(config.dataset_options))
        return self._data[key]

    def evaluator(self, config: RunConfig) -> Evaluator:
        key = (*data_key(config), config.train.extractor)
        if key not in self._evaluators:  # keyed like `data`: a data set option changes the reference
            self._evaluators[key] = Evaluator(
                self.data(config),
                config.dataset,
                config.train.extractor,
                cache_dir(),
                self.device,
                self.inception_weights,
                self.plugins.extractors,
            )
        return self._evaluators[key]

    def preflight(self, configs: list[RunConfig], store: Any, rerun: bool = False) -> None:
        """Load data and extractors before any run starts, so bad setups fail before training; and check that
        the data a grid's done cells were scored on is the data there now (see `check_stored_data`). With
        `rerun`, done cells are prepared as new ones."""
        prepared: set[tuple] = set()
        checked: set[tuple] = set()
        for config in configs:
            if store.status(config.run_id) == "done" and not rerun:  # skipped: its data is checked once per set
                stored_key = data_key(config)
                if stored_key not in checked:
                    checked.add(stored_key)
                    self.check_stored_data(config, store.get(config.run_id))
                continue
            key = (*data_key(config), config.train.extractor, config.threads, "fid" in config.metrics)
            if key in prepared:  # once per data set, not per cell
                continue
            prepared.add(key)
            # the cached reference features are computed as runs compute theirs: same threads, fp32 (not TF32)
            with pinned_threads(config.threads), fp32_math(self.device):
                ev = self.evaluator(config)
                if "fid" in config.metrics:
                    ev.floor({"fid"})  # also caches the reference features before workers need them

    def check_stored_data(self, config: RunConfig, row: dict | None) -> None:
        """A done cell is skipped on its run id, which names the data set and its options but not its files: if
        they changed since the cell was scored (an image folder edited in place), its stored numbers are of
        other data. Compared once per data set of a grid, on its first done cell; the report flags cells whose
        runs disagree."""
        from sparsebench.metrics.cache import data_hash

        stored = ((row or {}).get("results") or {}).get("data_hash")
        if not stored:
            return  # stored before the data hash was recorded
        now = data_hash(self.data(config))
        if now != stored:
            raise SparsebenchError(
                f"data set {config.dataset} has changed since run {config.run_id} was scored on it (data hash "
                f"{stored}, now {now}): its stored results are of other data; use another --store, or --rerun "
                "to train the grid again on this data"
            )
