"""Feature extractors of the built-in metrics: torch-fidelity's TF-compatible Inception v3 (the paper
preset) and the offline classifier of the data's own classes (the quick and small presets).

Inception weights are loaded with weights_only=True (a pickled object is refused, never run) and handed
to torch-fidelity in memory, so its own unrestricted torch.load only sees what we wrote.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from sparsebench import SparsebenchError
from sparsebench.interfaces import ExtractorWeights, FeatureExtractor
from sparsebench_builtins.metrics import digits_extractor

INCEPTION = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


class DigitsExtractor(FeatureExtractor):
    name = digits_extractor.NAME
    description = "a small CNN classifier of the data's own classes, trained offline on its train split, cached"
    needs_heldout = True  # its held-out accuracy is recorded with every result

    def fidelity_class(self) -> type:
        return digits_extractor.fidelity_extractor_class()

    def prepare(self, data, dataset, data_key, cache_dir, weights_file) -> ExtractorWeights:
        if data.train.num_classes < 2:
            raise SparsebenchError(
                f"the {self.name} extractor is a classifier of the data's classes, so it needs at least 2; "
                f"{dataset} has {data.train.num_classes}: use --preset paper (Inception features) for it"
            )
        path, accuracy = digits_extractor.ensure_weights(Path(cache_dir), data.train, data.heldout, data_key)
        return ExtractorWeights(str(path), accuracy)


class InceptionExtractor(FeatureExtractor):
    name = INCEPTION
    description = "torch-fidelity's TF-compatible Inception v3 (downloaded once, or --inception-weights PATH)"

    def prepare(self, data, dataset, data_key, cache_dir, weights_file) -> ExtractorWeights:
        if weights_file and not os.path.isfile(weights_file):
            raise SparsebenchError(f"--inception-weights {weights_file}: no such file")
        return ExtractorWeights(check_now=bool(weights_file))  # a wrong local file fails before any training

    def load(self, prepared: ExtractorWeights, weights_file: str | None) -> io.BytesIO:
        """The Inception state dict, checked to be plain tensors, as an in-memory file."""
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        hub = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
        source = weights_file or (str(hub) if hub.is_file() else None)
        if source is None:
            try:
                state = torch.hub.load_state_dict_from_url(
                    URL_INCEPTION_V3, map_location="cpu", progress=False, weights_only=True
                )
            except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, OSError... when offline
                raise SparsebenchError(
                    f"Inception weights could not be downloaded ({type(exc).__name__}); put {INCEPTION_FILE} at "
                    f"{hub} or pass --inception-weights PATH"
                ) from None
        else:
            try:
                state = torch.load(source, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError... for a foreign file
                why = "not a weights file of plain tensors"
                raise SparsebenchError(self._not_inception(weights_file, why)) from None
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise SparsebenchError(self._not_inception(weights_file, "not a state dict of tensors"))
        buf = io.BytesIO()
        torch.save(state, buf)
        buf.seek(0)
        return buf

    def unusable(self, weights_file: str | None, error: Exception) -> str | None:
        if isinstance(error, RuntimeError):  # load_state_dict: missing or mismatched parameters
            return self._not_inception(weights_file, "parameters do not fit Inception v3")
        return None

    @staticmethod
    def _not_inception(weights_file: str | None, why: str) -> str:
        if weights_file:
            where = f"--inception-weights {weights_file}"
            fix = f"expected {INCEPTION_FILE}, the PyTorch state dict of torch-fidelity's TF-compatible Inception v3"
        else:
            where = str(Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE)
            fix = "delete it to download it again, or pass --inception-weights PATH"
        return f"{where}: unusable Inception weights ({why}); {fix}"
