"""Sampling a generator and computing metrics with torch-fidelity's feature extractors and metric functions.

Class-conditional generators are sampled through our own loop (uniform labels), not through
torch-fidelity's module wrapper, whose num_classes > 0 path fails on current NumPy. Samples are
converted to uint8 as the references do: x * 127.5 + 127.5, clamped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsebench import SparsebenchError
from sparsebench.interfaces import DataSplits, FeatureExtractor
from sparsebench.metrics.cache import content_hash, data_hash, load_arrays, save_arrays, write_atomic

METRICS = ("isc", "fid", "kid", "prc")


class UInt8Images(torch.utils.data.Dataset):
    """A uint8 N x 3 x H x W tensor as a torch-fidelity input."""

    def __init__(self, images: torch.Tensor):
        self.images = images.cpu()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


SAMPLE_BATCH = 250  # generator batch of evaluation sampling (and of its measured time per image)


@torch.no_grad()
def sample(G: nn.Module, n: int, z_dim: int, num_classes: int, device, seed: int, batch: int = 250) -> torch.Tensor:
    """`n` uint8 samples of G in eval mode (labels uniform over the classes when conditional)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    was_training = G.training
    G.eval()
    out = []
    for i in range(0, n, batch):
        b = min(batch, n - i)
        z = torch.randn(b, z_dim, generator=gen).to(device)
        y = torch.randint(max(num_classes, 1), (b,), generator=gen).to(device)
        x = G(z, y)
        out.append(x.mul(127.5).add(127.5).clamp(0, 255).to(torch.uint8).cpu())
    G.train(was_training)
    return torch.cat(out)


class Evaluator:
    """Metrics of generated samples against one data set's train split, with one registered feature extractor.

    torch-fidelity extracts the features and does the metric math, all in this process: its own
    file cache (which unpickles whatever it finds) stays off. The train split's features are cached
    here as .npz named by the data's and the extractor weights' content hashes, which every result
    records (`data_hash`, `extractor_hash`). `weights_file` is the user's local extractor weights
    (`--inception-weights`); `extractors` the feature extractor registry (default: the installed plugins').
    """

    def __init__(
        self,
        data: DataSplits,
        dataset: str,
        extractor: str,
        cache_dir: Path,
        device: torch.device,
        weights_file: str | None = None,
        extractors=None,
    ):
        if extractors is None:
            from sparsebench.plugins import get_plugins

            extractors = get_plugins().extractors
        self.data = data
        self.dataset = dataset
        self.extractor = extractor
        self.cache_dir = Path(cache_dir)
        self.device = device
        self.data_hash = data_hash(data)
        self.extractor_hash: str | None = None  # known once the extractor is built
        self.weights_file = weights_file
        self._plugin: FeatureExtractor = extractors.get(extractor)
        self._extractor = None
        self._reference_features: dict[str, torch.Tensor] | None = None
        self._reference_stats: dict[str, dict] = {}
        if self._plugin.needs_heldout and data.heldout is None:
            raise SparsebenchError(
                f"the {extractor} feature extractor needs a held-out split, which {dataset} "
                "does not have; use a preset or data set with another extractor"
            )
        self._register()
        self._weights = self._plugin.prepare(data, dataset, self.data_hash, self.cache_dir, weights_file)
        self.extractor_accuracy = self._weights.accuracy
        if self._weights.check_now:
            self.feature_extractor()  # unusable weights fail here, before any training

    def _register(self) -> None:
        """Make the extractor known to torch-fidelity under its name (once per process)."""
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

        cls = self._plugin.fidelity_class()
        if cls is not None and self.extractor not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(self.extractor, cls)
        if self.extractor not in FEATURE_EXTRACTORS_REGISTRY:
            raise SparsebenchError(
                f"feature extractor {self.extractor!r} is not known to torch-fidelity; its plugin "
                "must return its torch-fidelity class from fidelity_class()"
            )

    # -- the feature extractor --------------------------------------------------------------------
    def feature_extractor(self):
        """torch-fidelity's feature extractor, built once with every layer a metric uses; sets `extractor_hash`."""
        if self._extractor is None:
            from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
            from torch_fidelity.utils import create_feature_extractor

            cls = FEATURE_EXTRACTORS_REGISTRY[self.extractor]
            layers = sorted({cls.get_default_feature_layer_for_metric(m) for m in METRICS})
            weights = self._plugin.load(self._weights, self.weights_file)
            try:
                fe = create_feature_extractor(
                    self.extractor,
                    layers,
                    cuda=self.device.type == "cuda",
                    verbose=False,
                    feature_extractor_weights_path=weights,
                )
            except Exception as exc:  # noqa: BLE001 - the plugin says which errors mean unusable weights
                message = self._plugin.unusable(self.weights_file, exc)
                if message is None:
                    raise
                raise SparsebenchError(message) from None
            self.extractor_hash = content_hash(fe.state_dict().items())
            self._extractor = fe
        return self._extractor

    # -- features and metrics -------------------------------------------------------------------
    def _features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        from torch_fidelity.utils import get_featuresdict_from_dataset

        return get_featuresdict_from_dataset(
            UInt8Images(images),
            self.feature_extractor(),
            batch_size=100,
            cuda=self.device.type == "cuda",
            save_cpu_ram=True,
            verbose=False,
        )

    def _cache_name(self) -> str:
        self.feature_extractor()
        return f"{self.dataset}-data-{self.data_hash}-{self.extractor}-{self.extractor_hash}"

    def reference(self) -> dict[str, torch.Tensor]:
        """The train split's features for FID / KID / PRC: once per process, cached on disk by content hash."""
        if self._reference_features is None:
            fe = self.feature_extractor()
            layers = sorted({fe.get_default_feature_layer_for_metric(m) for m in ("fid", "kid", "prc")})
            path = self.cache_dir / "references" / f"{self._cache_name()}.npz"
            arrays = load_arrays(path) or {}
            n = len(self.data.train)
            if all(
                k in arrays and arrays[k].ndim == 2 and arrays[k].shape[0] == n and arrays[k].dtype.kind == "f"
                for k in layers
            ):
                self._reference_features = {k: torch.from_numpy(arrays[k]) for k in layers}
            else:
                features = self._features(self.data.train.images)
                self._reference_features = {k: features[k] for k in layers}
                save_arrays(path, {k: v.numpy() for k, v in self._reference_features.items()})
        return self._reference_features

    def compute(self, images: torch.Tensor, flags: set[str]) -> dict[str, float]:
        """torch-fidelity metrics (`flags` among isc, fid, kid, prc) of `images` vs the train split."""
        from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
        from torch_fidelity.metric_isc import isc_featuresdict_to_metric
        from torch_fidelity.metric_kid import kid_featuresdict_to_metric
        from torch_fidelity.metric_prc import prc_featuresdict_to_metric

        fe = self.feature_extractor()
        layer = {m: fe.get_default_feature_layer_for_metric(m) for m in METRICS}
        features = self._features(images)
        values: dict[str, float] = {}
        if "isc" in flags:
            values.update(isc_featuresdict_to_metric(features, layer["isc"], verbose=False))
        if "fid" in flags:
            if layer["fid"] not in self._reference_stats:
                self._reference_stats[layer["fid"]] = fid_features_to_statistics(self.reference()[layer["fid"]])
            stats = fid_features_to_statistics(features[layer["fid"]])
            values.update(fid_statistics_to_metric(stats, self._reference_stats[layer["fid"]], verbose=False))
        if "kid" in flags:
            values.update(
                kid_featuresdict_to_metric(
                    features,
                    self.reference(),
                    layer["kid"],
                    verbose=False,
                    kid_subset_size=min(1000, len(images), len(self.data.train)),
                )
            )
        if "prc" in flags:
            values.update(
                prc_featuresdict_to_metric(features, self.reference(), layer["prc"], verbose=False, save_cpu_ram=True)
            )
        return values

    def floor(self, flags: set[str], samples: int | None = None) -> dict[str, Any]:
        """The FID floor: held-out real images against the train split, extrapolated to `samples` generated
        images (None: infinitely many), so that it compares with the runs' FIDs (sparsebench.metrics.floor).
        Keys: frechet_inception_distance (the floor at `samples`), fid_inf, fid_slope, se (the jackknife standard
        error of fid_inf), description (how it was computed); cached under the method's name, so floors computed
        another way are never reused (nor cached ones without their standard error)."""
        from sparsebench.metrics.floor import FLOOR_METHOD, MIN_HELDOUT, Floor, jackknife_floor

        if self.data.heldout is None or "fid" not in flags or len(self.data.heldout.images) < MIN_HELDOUT:
            return {}  # no held-out split, or one too small to estimate a floor from: the runs have none
        path = self.cache_dir / "floors" / f"{self._cache_name()}-floor-{FLOOR_METHOD}.json"
        floor = None
        try:
            cached = json.loads(path.read_text())
            v = cached["values"]
            if cached["method"] == FLOOR_METHOD and all(isinstance(x, (int, float)) for x in v.values()):
                floor = Floor(
                    float(v["fid_inf"]), float(v["fid_slope"]), int(v["heldout"]), int(v["groups"]), float(v["se"])
                )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing or not ours: recompute
            pass
        if floor is None:
            fe = self.feature_extractor()
            layer = fe.get_default_feature_layer_for_metric("fid")
            if layer not in self._reference_stats:
                from torch_fidelity.metric_fid import fid_features_to_statistics

                self._reference_stats[layer] = fid_features_to_statistics(self.reference()[layer])
            features = self._features(self.data.heldout.images)[layer]
            floor = jackknife_floor(features, self._reference_stats[layer])
            values = {"fid_inf": floor.fid_inf, "fid_slope": floor.slope, "heldout": floor.heldout}
            values.update(groups=floor.groups, se=floor.se)
            write_atomic(path, json.dumps({"method": FLOOR_METHOD, "values": values}).encode())
        return {
            "frechet_inception_distance": floor.at(samples),
            "fid_inf": floor.fid_inf,
            "fid_slope": floor.slope,
            "se": floor.se,
            "description": floor.describe(samples),
        }


class SampleSet:
    """One generator's samples, handed to every metric plugin of a run.

    Built-in torch-fidelity metrics share one `calculate_metrics` call through `fidelity()`.
    """

    def __init__(self, evaluator: Evaluator, images: torch.Tensor, flags: set[str]):
        self.evaluator = evaluator
        self.images = images
        self.flags = set(flags)
        self._fidelity: dict[str, float] | None = None

    def fidelity(self) -> dict[str, float]:
        if self._fidelity is None:
            self._fidelity = self.evaluator.compute(self.images, self.flags)
        return self._fidelity


def curve_point(config: Any, model: torch.nn.Module, ev: Evaluator, num_classes: int, device) -> dict:
    """One point of a run's evaluation curve: the FID of `model` over the final evaluation's samples (same z)."""
    from sparsebench.config import stream_seed

    spec = config.train
    images = sample(
        model,
        spec.eval_samples,
        spec.z_dim,
        num_classes,
        device,
        seed=stream_seed(config.seed, "eval-samples"),
        batch=SAMPLE_BATCH,
    )
    return {"fid": float(ev.compute(images, {"fid"})["frechet_inception_distance"])}
