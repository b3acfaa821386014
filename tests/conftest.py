"""Shared fixtures: a fresh results store per test, and the real `sparsebench` executable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# One thread per process: several tests run sparsebench processes side by side on small machines,
# and oversubscribed OpenMP threads slow everything down by orders of magnitude.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# One extractor cache for the whole session: the digits classifier is trained once, then loaded.
os.environ.setdefault("SPARSEBENCH_CACHE", tempfile.mkdtemp(prefix="sparsebench-cache-"))
EXE = shutil.which("sparsebench") or str(Path(sys.executable).with_name("sparsebench"))
TINY = ["--steps", "4", "--no-progress"]


def run_cli(
    *args: str, env: dict | None = None, check: bool = False, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run the installed `sparsebench` entry point in a subprocess (the user's real path)."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    proc = subprocess.run([EXE, *args], capture_output=True, text=True, env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"sparsebench {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "store" / "results.db"


@pytest.fixture(scope="session")
def plugins():
    from sparsebench.plugins import get_plugins

    return get_plugins()
