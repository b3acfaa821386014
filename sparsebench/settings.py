"""How a grid runs, as one object built once and handed down whole: where results and data live, the
device, checkpointing, retries, progress and the executor. Nothing here changes what a run computes (that
is the run's config, `sparsebench.config`), so none of it enters a run id."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sparsebench import SparsebenchError, defaults

DEVICES = ("cpu", "cuda")
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class RunSettings:
    store: str | None = None  # the results database (None: $SPARSEBENCH_STORE or ./sparsebench-results/results.db)
    device: str = defaults.DEVICE  # cpu or cuda (under torchrun: each rank's own GPU)
    data_dir: str | None = None  # where data sets live (CIFAR-10, image folders)
    inception_weights: str | None = None  # a local Inception weights file, for offline use
    checkpoint_every: int = (
        defaults.CHECKPOINT_EVERY
    )  # G steps between checkpoints (0: at the end of each phase and on stop only)
    retry_failed: bool = False  # run again the cells stored as failed or diverged
    rerun: bool = False  # train the grid's cells again, done ones too (their rows replaced when the new runs end)
    progress: bool = True  # progress bars (one run at a time, in this process)
    executor: str = defaults.EXECUTOR  # local (worker processes) or ray
    jobs: int = defaults.JOBS  # local worker processes (1: in this process)
    address: str | None = None  # the Ray cluster's address (None: start a local Ray)

    def __post_init__(self) -> None:
        if self.device.split(":")[0] not in DEVICES:  # under torchrun, a rank's own: cuda:1
            raise SparsebenchError(f"--device {self.device!r}: allowed: {', '.join(DEVICES)}")
        if self.executor not in EXECUTORS:
            raise SparsebenchError(f"unknown executor {self.executor!r}; known: {', '.join(EXECUTORS)}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise SparsebenchError(f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        if not isinstance(self.jobs, int) or self.jobs < 1:
            raise SparsebenchError(f"--jobs must be >= 1, got {self.jobs}")

    @property
    def pooled(self) -> bool:
        """Whether cells run in workers (several local processes, or Ray) rather than in this process."""
        return self.executor != "local" or self.jobs > 1

    def replace(self, **changes: Any) -> RunSettings:
        return dataclasses.replace(self, **changes)
