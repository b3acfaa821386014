"""Files a run writes, written so that a crash or a full disk never leaves a half-written one in place:
`torch.save` through a temporary file of this process renamed into place, and the sweep of temporaries that
killed processes left behind."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

DISK_FULL_BYTES = 64 * 2**20  # a failed write with less free space than this is taken for a full disk


def atomic_save(obj: Any, path: Path, before_rename: Callable[[], object] | None = None) -> None:
    """torch.save through a temporary file of this process, renamed into place; no temporary file
    is left behind when the write fails, and a full disk is said in words (torch reports it as a
    failed write).

    `before_rename` is called once the temporary file is complete, immediately before the rename: a run
    passes its claim check, so that a process paused while writing (past its lease, its run taken over
    and finished elsewhere) raises there and puts nothing in the run's folder, which is the new holder's.
    The check is as late as it can be; the rename that follows it is not atomic with it."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with _full_disk_said(path):
            torch.save(obj, tmp)
        if before_rename is not None:
            before_rename()
        with _full_disk_said(path):
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _full_disk_said(path: Path) -> Iterator[None]:
    """A failed write of `path` on a full disk, said in words."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if _disk_full(exc, path.parent):
            raise OSError(
                errno.ENOSPC,
                f"the disk is full: cannot write {path}; free space, then run the same command with --retry-failed",
            ) from None
        raise


def _disk_full(exc: BaseException, folder: Path) -> bool:
    if getattr(exc, "errno", None) == errno.ENOSPC:
        return True
    try:
        return shutil.disk_usage(folder).free < DISK_FULL_BYTES
    except OSError:
        return False


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files (`NAME.PID.tmp`) that processes of this host killed mid-write left in
    `folder`; a live process's are kept."""
    removed = []
    for tmp in Path(folder).glob("*.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
