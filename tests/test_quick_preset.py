"""The quick preset still means something: a trained dense generator beats an untrained one."""

from __future__ import annotations

import pytest
import torch
from conftest import scheduler

from sparsebench.config import GridRequest, expand_grid
from sparsebench.metrics.evaluate import sample
from sparsebench.store import Store


@pytest.mark.slow
def test_trained_dense_fid_is_at_most_half_the_untrained(tmp_path, plugins):
    cfg = expand_grid(GridRequest(methods=["dense"], arch="biggan"), plugins)[0]  # the full quick preset
    cells = scheduler(Store(tmp_path / "r.db"), plugins)
    outcome = cells.run_one(cfg)
    assert outcome.status == "done"
    spec = cfg.train
    torch.manual_seed(cfg.seed)  # the same initialisation the run started from
    G, _ = plugins.archs.get("biggan").build(spec, 10)
    untrained = cells.runner.resources.evaluator(cfg).compute(
        sample(G, spec.eval_samples, spec.z_dim, 10, "cpu", seed=1), {"fid"}
    )
    assert outcome.results["fid"] <= 0.5 * untrained["frechet_inception_distance"]
