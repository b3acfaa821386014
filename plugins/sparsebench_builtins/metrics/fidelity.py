"""`fid`, `is`, `kid`, `prc`: the standard GAN metrics through torch-fidelity.

With the paper preset they use the TF-compatible Inception (`inception-v3-compat`); with the
quick preset the offline digits classifier (both registered here, see `extractors`). IS uses 10 splits.
"""

from __future__ import annotations

from sparsebench.hookspecs import hookimpl
from sparsebench.interfaces import Metric
from sparsebench_builtins.metrics.extractors import DigitsExtractor, InceptionExtractor


class FidelityMetric(Metric):
    fidelity_flag = ""
    keys: dict[str, str] = {}

    def compute(self, ev, **options) -> dict[str, float]:
        values = ev.fidelity()
        return {ours: float(values[theirs]) for theirs, ours in self.keys.items()}


class FID(FidelityMetric):
    name = "fid"
    description = "Frechet distance between feature statistics of samples and the train split"
    fidelity_flag = "fid"
    keys = {"frechet_inception_distance": "fid"}


class IS(FidelityMetric):
    name = "is"
    description = "Inception Score (mean and std over 10 splits) of the samples"
    fidelity_flag = "isc"
    keys = {"inception_score_mean": "is_mean", "inception_score_std": "is_std"}


class KID(FidelityMetric):
    name = "kid"
    description = "Kernel Inception Distance (polynomial kernel, mean and std over subsets)"
    fidelity_flag = "kid"
    keys = {"kernel_inception_distance_mean": "kid_mean", "kernel_inception_distance_std": "kid_std"}


class PRC(FidelityMetric):
    name = "prc"
    description = "Precision and recall of the samples against the train split (k-NN manifolds)"
    fidelity_flag = "prc"
    keys = {"precision": "precision", "recall": "recall"}


@hookimpl
def register_metrics(register):
    for metric in (FID(), IS(), KID(), PRC()):
        register(metric)


@hookimpl
def register_feature_extractors(register):
    register(InceptionExtractor())
    register(DigitsExtractor())
