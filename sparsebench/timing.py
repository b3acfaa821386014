"""Wall time of work that may run asynchronously on an accelerator.

CUDA kernels return before they finish, so `time.perf_counter()` around them measures their launch.
`synchronize` waits for the device's queue; `Stopwatch` times a stretch of work between two
synchronisations (sampling for an evaluation); `StepTimer` times every step of a loop with CUDA events,
which are recorded in the device's queue without stopping the host, and reads them only at `flush`
(a logging step, the end of training): one host synchronisation per flush, none per step. On the CPU
all three are plain `time.perf_counter()` readings.
"""

from __future__ import annotations

import time

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait until the work queued on `device` has finished (nothing to wait for on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Seconds between `start()` and `stop()`, with the device's queue drained at both ends."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.started = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self.started = time.perf_counter()

    def stop(self) -> float:
        synchronize(self.device)
        return time.perf_counter() - self.started


class StepTimer:
    """The wall time of each step of a loop, read without a host synchronisation per step.

    On CUDA each step is bracketed by two events in the device's queue; their elapsed times are read at
    `flush`, which waits for the last event. Elsewhere each step is timed with `time.perf_counter()`.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.events = self.device.type == "cuda"
        self.pending: list[tuple] = []
        self._start: object = None

    def start(self) -> None:
        if self.events:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._start = event
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self.events:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.pending.append((self._start, event))
        else:
            self.pending.append((self._start, time.perf_counter()))

    def flush(self, into: list[float]) -> None:
        """Append the seconds of every step stopped since the last flush to `into`."""
        if not self.pending:
            return
        if self.events:
            self.pending[-1][1].synchronize()  # events complete in order: the last one covers all
            into.extend(start.elapsed_time(end) / 1000.0 for start, end in self.pending)
        else:
            into.extend(end - start for start, end in self.pending)
        self.pending.clear()
