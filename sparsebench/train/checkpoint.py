"""Checkpoints of one training phase: everything needed to continue bit for bit.

G, D, the (S)EMA, both optimizers, the masks (and what was ever active), the step and FLOP
counters, the data order, every random generator the loop and its hooks draw from, and the run's
wall time so far (a resumed run's wall time is the sum of its segments). Written
atomically (temporary file, then rename) and read with `torch.load(weights_only=True)`, so a
file that carries a pickled object is refused instead of executed. The run's config is stored
inside and compared on load: a checkpoint never continues under different settings. The thread
count is saved too, and a resume continues with it (CPU results depend on it through float
reassociation). Everything is checked before anything is loaded into the live objects, so a bad
file can be set aside and its phase restarted from scratch.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sparsebench import SparsebenchError
from sparsebench.config import RunConfig
from sparsebench.files import atomic_save
from sparsebench.interfaces import Callbacks, GANState
from sparsebench.train.loop import Batcher

log = logging.getLogger("sparsebench.run")


class CheckpointError(SparsebenchError):
    pass


def load_plain(path: Path) -> dict:
    """Load a checkpoint of tensors and plain containers only; anything else is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise CheckpointError(
            f"checkpoint {path} holds more than tensors and plain data, refused without loading it ({first}); "
            f"delete it to restart that run"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc}); delete it to restart that run") from None


class Checkpoint:
    def __init__(self, path: Path, config: RunConfig):
        self.path = Path(path)
        self.config_json = json.dumps(config.to_dict(), sort_keys=True)

    def exists(self) -> bool:
        return self.path.exists()

    def save(
        self,
        state: GANState,
        batcher: Batcher,
        noise: torch.Generator,
        hooks: Callbacks,
        label: str,
        done: bool,
        wall_s: float = 0.0,
        before_rename: Callable[[], object] | None = None,
    ) -> None:
        """Write the phase's state atomically; `before_rename` as for `atomic_save` (the run's claim check)."""
        blob = {
            "config": self.config_json,
            "label": label,
            "done": done,
            "step": state.step,
            "flops": state.flops,
            "curve": [[float(step), value] for step, value in state.curve],
            "logged": [[step, {k: float(v) for k, v in values.items()}] for step, values in state.logged],
            "step_seconds": list(state.step_seconds),
            "G": state.G.state_dict(),
            "D": state.D.state_dict(),
            "g_opt": state.g_opt.state_dict(),
            "d_opt": state.d_opt.state_dict(),
            "g_masks": state.g_masks.state_dict() if state.g_masks is not None else None,
            "d_masks": state.d_masks.state_dict() if state.d_masks is not None else None,
            "ema": state.ema.state_dict() if state.ema is not None else None,
            "batcher": batcher.state_dict(),
            "noise": noise.get_state(),
            "hooks": hooks.state_dict(),
            "threads": torch.get_num_threads(),
            "wall_s": float(wall_s),
        }
        atomic_save(blob, self.path, before_rename)

    def set_aside(self, reason: str) -> Path:
        """Move an unusable checkpoint out of the way (kept for inspection, never loaded)."""
        aside = self.path.with_name(f"{self.path.name}.bad-{int(time.time())}")
        self.path.replace(aside)
        log.warning("%s; moved it to %s, that training phase restarts from scratch", reason, aside.name)
        return aside

    def restore(
        self, state: GANState, batcher: Batcher, noise: torch.Generator, hooks: Callbacks
    ) -> tuple[bool, float]:
        """Load into the live objects; returns whether the phase had finished and the run's wall
        seconds at the save."""
        blob = load_plain(self.path)
        if not isinstance(blob, dict) or blob.get("config") != self.config_json:
            raise CheckpointError(
                f"checkpoint {self.path} was written under other settings than this run's; refusing to resume "
                f"(delete it to restart the run)"
            )
        self._check_shapes(blob, state)
        threads = blob.get("threads")
        if isinstance(threads, int) and threads > 0 and threads != torch.get_num_threads():
            log.warning("resuming with %d threads, as this run started (not %d)", threads, torch.get_num_threads())
            torch.set_num_threads(threads)
        state.G.load_state_dict(blob["G"])
        state.D.load_state_dict(blob["D"])
        state.g_opt.load_state_dict(blob["g_opt"])
        state.d_opt.load_state_dict(blob["d_opt"])
        for masks, key in ((state.g_masks, "g_masks"), (state.d_masks, "d_masks")):
            if masks is not None:
                masks.load_state_dict(blob[key])
        if state.ema is not None and blob["ema"] is not None:
            state.ema.load_state_dict(blob["ema"])
        state.step, state.flops = int(blob["step"]), float(blob["flops"])
        state.curve = [(int(step), float(value)) for step, value in blob.get("curve", [])]
        state.logged = [
            (int(step), {str(k): float(v) for k, v in values.items()}) for step, values in blob.get("logged", [])
        ]
        state.step_seconds = [float(s) for s in blob.get("step_seconds", [])]
        batcher.load_state_dict(blob["batcher"])
        noise.set_state(blob["noise"])
        hooks.load_state_dict(blob["hooks"])
        return bool(blob["done"]), float(blob.get("wall_s", 0.0))

    def _check_shapes(self, blob: dict, state: GANState) -> None:
        """Refuse a checkpoint whose parts do not fit the live objects before loading any of them."""
        for key, model in (("G", state.G), ("D", state.D)):
            saved, live = blob.get(key), model.state_dict()
            if not isinstance(saved, dict) or {k: tuple(v.shape) for k, v in saved.items()} != {
                k: tuple(v.shape) for k, v in live.items()
            }:
                raise CheckpointError(f"checkpoint {self.path} does not fit this run's {key}")
        for masks, key in ((state.g_masks, "g_masks"), (state.d_masks, "d_masks")):
            if (masks is None) != (blob.get(key) is None):
                raise CheckpointError(f"checkpoint {self.path} does not match this run's sparse layout")
        missing = {"g_opt", "d_opt", "step", "flops", "batcher", "noise", "hooks", "done"} - set(blob)
        if missing:
            raise CheckpointError(f"checkpoint {self.path} lacks {', '.join(sorted(missing))}")
