"""A run's recorder: what it logged but has not written yet, its writes through the run's sink, its claim
check, its progress bar and its stop request. The training loop reports to it (through `RunContext`); it
never calls back into the runner."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from sparsebench.balance import RatioTrace
from sparsebench.store.sinks import RunSink

CLAIM_CHECK_S = 1.0  # at most this often, a training run looks whether it still holds its claim
FLUSH_ROWS = 200  # logged rows kept before they are written


class ClaimLost(RuntimeError):
    """This process no longer holds its claim on the run (paused past its lease, taken over elsewhere):
    it stops and touches none of that run's files, which belong to the new holder now."""


class RunRecorder:
    """Statistics of one run on their way to its sink.

    They reach the sink with every checkpoint and before evaluation; a `rerun`'s are held back and stored with
    its outcome, which replaces the old one's curves and results at once. Nothing is written, and no
    checkpoint follows, once the claim is lost (`ClaimLost`). Only the `leader` (rank 0) checks the claim."""

    def __init__(
        self,
        sink: RunSink,
        rerun: bool = False,
        leader: bool = True,
        stop: Callable[[], bool] = lambda: False,
        bar: Any = None,
    ):
        self.sink, self.leader, self._stop, self.bar = sink, leader, stop, bar
        self.pending: list[tuple[int, str, float]] = []
        self.held: list[tuple[int, str, float]] | None = [] if rerun else None
        self.ratios = RatioTrace()  # the balance ratio over the current training phase
        self._checked = time.monotonic()
        self._t0 = time.perf_counter()

    def holding(self, every: float = CLAIM_CHECK_S) -> bool:
        """Raise ClaimLost once the claim is gone (looked at most every `every` seconds)."""
        if time.monotonic() - self._checked >= every:
            self._checked = time.monotonic()
            if self.leader and not self.sink.holds():
                raise ClaimLost(f"run {self.sink.run_id} was taken over by another process")
        return True

    def check_claim(self) -> None:
        """Raise ClaimLost if the claim is gone, looked at now: what a file of the run checks just before it is
        renamed into place (`atomic_save`'s `before_rename`), since writing it may have taken long."""
        self.holding(every=0.0)

    def log(self, step: int, values: dict[str, Any]) -> None:
        self.pending.extend((step, k, float(v)) for k, v in values.items())
        self.ratios.observe(step, values)
        if len(self.pending) > FLUSH_ROWS:
            self.flush()
        if self.bar is not None and "loss_g" in values:
            self.bar.set_postfix(loss_d=f"{values['loss_d']:.3f}", loss_g=f"{values['loss_g']:.3f}", refresh=False)

    def flush(self) -> None:
        """Write the pending statistics out (a rerun's are held for its outcome)."""
        self.holding(every=0.0)
        if self.held is not None:
            self.held.extend(self.pending)
        else:
            self.sink.log_stats(self.pending)
        self.pending.clear()

    def stop_requested(self) -> bool:
        return self.holding() and self._stop()

    def elapsed(self) -> float:
        """This segment's own wall seconds so far."""
        return time.perf_counter() - self._t0

    def progress(self, steps: int) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def phase(self, total: int, done: int, label: str) -> None:
        """Point the progress bar at a new training phase (fine-tuning, a ticket round...)."""
        if self.bar is not None:
            self.bar.reset(total=total)
            self.bar.update(done)
            self.bar.set_description(self.bar.base_desc if label == "train" else f"{self.bar.base_desc} [{label}]")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_bar(config: Any, enabled: bool) -> Any:
    """A progress bar for one run: tqdm on a terminal, a line now and then in logs; None when disabled."""
    if not enabled:
        return None
    label = f"{config.method} sG={config.sg:g} sD={config.sd:g} seed={config.seed}"
    if not sys.stderr.isatty():  # logs (CI, nohup, Ray) get a compact line now and then, not a bar
        return LineProgress(config.train.steps, label)
    from tqdm.auto import tqdm

    bar = tqdm(total=config.train.steps, desc=label, unit=" G steps", leave=False, dynamic_ncols=True)
    bar.base_desc = label
    return bar


class LineProgress:
    """The part of tqdm's interface the recorder uses, printing one line per tenth of a phase (or
    every 5 minutes) instead of redrawing a bar: readable in non-interactive logs."""

    EVERY_S = 300.0

    def __init__(self, total: int, label: str):
        self.base_desc = self.desc = label
        self.postfix = ""
        self.reset(total)

    def reset(self, total: int) -> None:
        self.total, self.n, self.mark = max(total, 1), 0, 0
        self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        tenth = 10 * self.n // self.total
        if tenth > self.mark or time.monotonic() - self.last > self.EVERY_S:
            self.mark = tenth
            self.last = time.monotonic()
            print(f"{self.desc}: G step {self.n}/{self.total}{self.postfix}", file=sys.stderr, flush=True)

    def set_postfix(self, refresh: bool = False, **values: str) -> None:
        self.postfix = "".join(f" {k}={v}" for k, v in values.items())

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def close(self) -> None:
        pass
