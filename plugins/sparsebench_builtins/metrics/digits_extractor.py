"""An offline feature extractor: a classifier of the data set's own classes, registered in torch-fidelity.

A small CNN classifier trained deterministically on the data's train split (the embedded digits, or any
labelled data set with at least 2 classes: its output layer has one logit per class). Its penultimate
layer ('128') serves FID / KID / precision-recall, its logits IS. Weights are cached on disk (.npz,
no pickle) under a name that hashes the extractor's config and the data it was trained on, and its
held-out accuracy travels with every result.
Inception features mean nothing on 16x16 digits; this extractor is the honest stand-in. Its name stays
`sparsebench-digits`, the name stored with every result it scored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.metrics.cache import load_arrays, save_arrays

NAME = "sparsebench-digits"
FEATURES = ("128", "logits_unbiased")
CONFIG = {"version": 1, "resolution": 16, "epochs": 20, "batch": 64, "lr": 1e-3, "seed": 0}


class DigitsNet(nn.Module):
    def __init__(self, resolution: int = 16, classes: int = 10):
        super().__init__()
        self.resolution = resolution
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * (resolution // 4) ** 2, 128)
        self.out = nn.Linear(128, classes)

    def features(self, x_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x_uint8.float().div(127.5).sub(1.0)
        if x.shape[-1] != self.resolution:
            x = F.interpolate(
                x,
                size=(self.resolution, self.resolution),
                mode="bilinear",
                align_corners=False,
                antialias=x.shape[-1] > self.resolution,
            )
        h = F.max_pool2d(F.relu(self.c1(x)), 2)
        h = F.max_pool2d(F.relu(self.c2(h)), 2)
        feat = F.relu(self.fc(h.flatten(1)))
        return feat, self.out(feat)


def weights_path(cache_dir: Path, data_key: str) -> Path:
    """Where the classifier trained with CONFIG on the data hashed `data_key` is cached."""
    key = hashlib.sha256(json.dumps(CONFIG, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / "extractors" / f"{NAME}-{key}-data-{data_key}.npz"


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], float] | None:
    """The cached state dict and held-out accuracy, or None when the file is missing or unusable."""
    arrays = load_arrays(path)
    if arrays is None or arrays.get("accuracy", np.empty(0)).shape != () or arrays["accuracy"].dtype.kind != "f":
        return None
    classes = arrays.get("state.out.bias", np.empty((0, 0))).shape
    if len(classes) != 1 or classes[0] < 2:
        return None
    with torch.device("meta"):  # shapes and dtypes only, without touching the global RNG
        expected = DigitsNet(CONFIG["resolution"], classes[0]).state_dict()
    state = {k: torch.from_numpy(arrays.get(f"state.{k}", np.empty(0))) for k in expected}
    if any(state[k].shape != v.shape or state[k].dtype != v.dtype for k, v in expected.items()):
        return None
    return state, float(arrays["accuracy"])


def ensure_weights(cache_dir: Path, train, heldout, data_key: str) -> tuple[Path, float]:
    """Train (once per data set) and cache the classifier; returns its weights path and held-out accuracy."""
    path = weights_path(cache_dir, data_key)
    cached = load_weights(path)
    if cached is not None:
        return path, cached[1]
    g = torch.Generator().manual_seed(CONFIG["seed"])
    torch.manual_seed(CONFIG["seed"])
    net = DigitsNet(CONFIG["resolution"], train.num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=CONFIG["lr"])
    n = len(train)
    for _ in range(CONFIG["epochs"]):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, CONFIG["batch"]):
            idx = perm[i : i + CONFIG["batch"]]
            x = train.images[idx]
            shift = torch.randint(-1, 2, (2,), generator=g).tolist()  # one-pixel jitter
            x = torch.roll(x, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(net.features(x)[1], train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        pred = net.features(heldout.images)[1].argmax(1)
    accuracy = float((pred == heldout.labels).float().mean())
    state = {f"state.{k}": v.numpy() for k, v in net.state_dict().items()}
    save_arrays(path, {**state, "accuracy": np.array(accuracy)})
    return path, accuracy


def fidelity_extractor_class():
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class DigitsFeatureExtractor(FeatureExtractorBase):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise ValueError(f"{NAME} needs feature_extractor_weights_path")
            cached = load_weights(feature_extractor_weights_path)
            if cached is None:
                raise ValueError(f"{NAME}: {feature_extractor_weights_path} holds no usable weights")
            self.net = DigitsNet(CONFIG["resolution"], cached[0]["out.bias"].shape[0])
            self.net.load_state_dict(cached[0])

        def forward(self, x):
            feat, logits = self.net.features(x)
            out = {"128": feat, "logits_unbiased": logits}
            return tuple(out[name] for name in self.features_list)

        @staticmethod
        def get_provided_features_list():
            return FEATURES

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits_unbiased", "fid": "128", "kid": "128", "prc": "128"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 16, 16, dtype=torch.uint8)

    return DigitsFeatureExtractor
