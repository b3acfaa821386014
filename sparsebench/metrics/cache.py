"""Content hashes and a pickle-free array cache for extractor weights and reference features.

Every cached artifact is named by hashes of what it was computed from (the data, the extractor's
weights), so two data sets never share an entry. Files are numpy .npz read with
allow_pickle=False: a file planted in the cache can at worst be unreadable, which counts as a
miss and is recomputed; it is never executed.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from sparsebench.interfaces import DataSplits


def content_hash(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A short sha256 over named tensors: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def data_hash(data: DataSplits) -> str:
    """The hash of a data set's splits: images, labels and class count of train and held-out."""
    items = [
        ("train.images", data.train.images),
        ("train.labels", data.train.labels),
        ("num_classes", torch.tensor(data.train.num_classes)),
    ]
    if data.heldout is not None:
        items += [("heldout.images", data.heldout.images), ("heldout.labels", data.heldout.labels)]
    return content_hash(items)


def load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of an .npz file, or None when it is missing or not a pickle-free .npz."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None
    return {key: value for key, value in arrays.items() if isinstance(value, np.ndarray)}


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub reads the names as its own keywords
    write_atomic(path, buf.getvalue())


def write_atomic(path: Path, content: bytes) -> None:
    """Write a file through a unique temporary file and a rename, safe with concurrent writers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
