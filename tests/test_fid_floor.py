"""The FID floor at the runs' sample count (sparsebench.metrics.floor): FID(n) = FID_inf + k/n solved by the
jackknife over the held-out split, against synthetic Gaussian features whose true FID is known analytically,
and through the Evaluator on the digits (its cache named by the method, so an old floor is never reused)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

from sparsebench.metrics.evaluate import Evaluator
from sparsebench.metrics.floor import FLOOR_METHOD, fid_against, jackknife_floor
from sparsebench.resources import cache_dir


def gaussian_case(seed: int, d: int = 128, heldout: int = 359, train: int = 1438):
    """Held-out features from N(0, S); train statistics from a sample of N(m, 1.3 S). The true FID of the
    held-out distribution against those statistics is the Frechet distance of the population (0, S)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    cov = (q * np.exp(-np.arange(d) / 25.0)) @ q.T
    reference = fid_features_to_statistics(
        torch.from_numpy(rng.multivariate_normal(rng.standard_normal(d) * 0.12, 1.3 * cov, train))
    )
    truth = fid_statistics_to_metric({"mu": np.zeros(d), "sigma": cov}, reference, verbose=False)[
        "frechet_inception_distance"
    ]
    features = torch.from_numpy(rng.multivariate_normal(np.zeros(d), cov, heldout))
    return features, reference, float(truth)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_extrapolated_floor_is_close_to_the_true_fid_and_the_plain_one_is_not(seed):
    features, reference, truth = gaussian_case(seed)
    naive = fid_against(features, reference)  # the old floor: 359 images, biased upwards by about k/359
    floor = jackknife_floor(features, reference)
    assert naive - truth > 1.2  # the small-sample bias the old floor carried (truth is 2.4-3.0 here)
    assert abs(floor.fid_inf - truth) < 0.25  # seeds 0-2 miss by 0.02, 0.17, 0.01
    assert abs(floor.at(5000) - truth) < 0.3  # a run's 5,000 samples: FID_inf + k/5000 (k/5000 about 0.1)
    assert floor.at(359) == pytest.approx(naive, abs=1e-6)  # the fit passes through the whole split's FID
    assert floor.slope > 0 and (floor.heldout, floor.groups) == (359, 359)  # leave-one-out
    grouped = jackknife_floor(features, reference, max_groups=60)  # groups of 5-6 images: the same estimate
    assert grouped.groups == 60 and abs(grouped.fid_inf - floor.fid_inf) < 0.1


def test_the_floor_is_deterministic():
    features, reference, _ = gaussian_case(0, d=16, heldout=80)
    assert jackknife_floor(features, reference) == jackknife_floor(features, reference)


def test_the_evaluators_floor_matches_the_runs_sample_count_and_ignores_old_caches(plugins):
    data = plugins.datasets.get("digits").load(16)
    ev = Evaluator(data, "digits", "sparsebench-digits", cache_dir(), torch.device("cpu"))
    old = ev.cache_dir / "floors" / f"{ev._cache_name()}-floor.json"  # what the plain floor cached
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_text(json.dumps({"flags": ["fid"], "values": {"frechet_inception_distance": 13.38}}))
    floor = ev.floor({"fid"}, 5000)
    naive = ev.compute(data.heldout.images, {"fid"})["frechet_inception_distance"]
    assert floor["frechet_inception_distance"] == pytest.approx(floor["fid_inf"] + floor["fid_slope"] / 5000)
    assert floor["frechet_inception_distance"] < naive - 2  # the held-out split's own bias is gone
    assert "n=5000" in floor["description"] and "Chong & Forsyth" in floor["description"]
    cached = json.loads((ev.cache_dir / "floors" / f"{ev._cache_name()}-floor-{FLOOR_METHOD}.json").read_text())
    assert cached["method"] == FLOOR_METHOD
    again = Evaluator(data, "digits", "sparsebench-digits", cache_dir(), torch.device("cpu")).floor({"fid"}, 5000)
    assert again == floor
    assert ev.floor({"fid"})["frechet_inception_distance"] == floor["fid_inf"]  # None: infinitely many samples
    assert ev.floor({"isc"}) == {}
