"""What plugins declare is shown as the built-ins' is: a third-party method's title, group, reference and
result columns in the report and `sparsebench results`; a data set's own feature extractor in its runs."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os

import pytest
import torch
from conftest import TINY, UNIT_COSTS, fill_store, run_cli

from sparsebench.config import GridRequest
from sparsebench.metrics.evaluate import Evaluator
from sparsebench.plugins import Plugins
from sparsebench.store import RESULT_COLUMNS, Store

PLUGIN = """
import numpy as np
import torch

from sparsebench.api import ExtractorWeights, FeatureExtractor
from sparsebench.hookspecs import hookimpl
from sparsebench_builtins.datasets.digits import Digits
from sparsebench_builtins.methods.static import Static


class MySparse(Static):
    name = "my-sparse"
    description = "a third-party sparse GAN"
    title = "My Sparse GAN"
    group = "mine"
    order = 65
    reference = "static"
    result_columns = ("my_score",)

    def run(self, ctx):
        G, D = ctx.build_models()
        g_masks = ctx.masks(G, ctx.config.sg, stream="g-masks")
        state = ctx.state(G, D, g_masks, ctx.masks(D, ctx.config.sd, stream="d-masks"))
        ctx.train(state)
        ctx.finish(state, my_score=7)


class OwnDigits(Digits):
    name = "own-digits"
    description = "the digits, scored with their own extractor"
    extractor = "mean-color"


def fidelity_class():
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class MeanColor(FeatureExtractorBase):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            with np.load(feature_extractor_weights_path, allow_pickle=False) as npz:
                self.register_buffer("mean", torch.from_numpy(npz["mean"]))
            self.register_buffer("proj", torch.randn(3 * 16 * 16, 16, generator=torch.Generator().manual_seed(0)))

        def forward(self, x):
            x = torch.nn.functional.interpolate(x.float() / 255.0, size=(16, 16)) - self.mean
            feat = x.flatten(1) @ self.proj
            out = {"feat": feat, "logits_unbiased": feat[:, :10]}
            return tuple(out[f] for f in self.features_list)

        @staticmethod
        def get_provided_features_list():
            return ("feat", "logits_unbiased")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "logits_unbiased" if metric == "isc" else "feat"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 16, 16, dtype=torch.uint8)

    return MeanColor


class MeanColorExtractor(FeatureExtractor):
    name = "mean-color"
    description = "a fixed projection of the images centred on the train split's mean"

    def fidelity_class(self):
        return fidelity_class()

    def prepare(self, data, dataset, data_key, cache_dir, weights_file):
        path = cache_dir / "extractors" / f"mean-color-{data_key}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        images = torch.nn.functional.interpolate(data.train.images.float() / 255.0, size=(16, 16))
        np.savez(path, mean=images.mean(0).numpy())
        return ExtractorWeights(str(path), accuracy=0.25)


@hookimpl
def register_methods(register):
    register(MySparse())


@hookimpl
def register_datasets(register):
    register(OwnDigits())


@hookimpl
def register_feature_extractors(register):
    register(MeanColorExtractor())
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A third-party distribution `declared-plugin` on a folder of its own, found through its entry point."""
    site = tmp_path_factory.mktemp("site")
    (site / "declared_plugin.py").write_text(PLUGIN)
    dist = site / "declared_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: declared-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[sparsebench]\ndeclared = declared_plugin\n")
    return site


def with_plugin(site) -> dict:
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)}


@pytest.fixture(scope="module")
def plugins(site):
    spec = importlib.util.spec_from_file_location("declared_plugin", site / "declared_plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Plugins(extra=[("declared", module)])


def filled_store(path, plugins) -> Store:
    """static and my-sparse at s_G 0.9, three seeds each, my-sparse clearly better, with its own result key."""
    req = GridRequest(methods=["static", "my-sparse"], arch="sngan", sg=[0.9], seeds=[0, 1, 2])

    def results(cfg):
        fid = (20.0 if cfg.method == "my-sparse" else 40.0) + cfg.seed
        res = {"fid": fid, **UNIT_COSTS, "variant": ""}
        if cfg.method == "my-sparse":
            res.update(my_score=7 + cfg.seed, my_note="kept")
        return res

    return fill_store(path, plugins, req, results)


def test_plugin_method_shows_its_title_reference_and_columns(tmp_path, site, plugins):
    db = tmp_path / "r.db"
    filled_store(db, plugins)
    rows = list(
        csv.DictReader(io.StringIO(run_cli("results", "--store", str(db), env=with_plugin(site), check=True).stdout))
    )
    header = list(rows[0])
    assert header[: len(RESULT_COLUMNS)] == RESULT_COLUMNS
    assert "my_score" in header and header.index("my_score") > header.index("error")
    assert header[-1] == "other"
    mine = [r for r in rows if r["method"] == "my-sparse"]
    assert sorted(r["my_score"] for r in mine) == ["7", "8", "9"]  # integers stay integers
    assert all(json.loads(r["other"]) == {"my_note": "kept"} for r in mine)  # an undeclared key is not dropped
    assert all(r["my_score"] == "" for r in rows if r["method"] == "static")

    out = tmp_path / "rep"
    run_cli(
        "report",
        "--store",
        str(db),
        "--out",
        str(out),
        "--format",
        "md",
        "--no-samples",
        env=with_plugin(site),
        check=True,
    )
    t1 = (out / "table1.md").read_text()
    assert "My Sparse GAN" in t1 and "my-sparse" not in t1
    assert t1.index("Static Sparse GAN |") < t1.index("My Sparse GAN |")  # order 65: after static (60)
    compared = (out / "comparisons.md").read_text()
    assert "| My Sparse GAN | sngan | 90 | 50 | conv | Static Sparse GAN (conv) | paired t (log), 3 pairs |" in compared

    cells = json.loads(
        run_cli("results", "--store", str(db), "--format", "json", env=with_plugin(site), check=True).stdout
    )["cells"]
    assert {c["method"]: c["reference"] for c in cells} == {"static": "dense", "my-sparse": "static"}


def test_runs_of_an_uninstalled_method_keep_their_results_and_name(tmp_path, plugins):
    db = tmp_path / "r.db"
    filled_store(db, plugins)
    rows = list(csv.DictReader(io.StringIO(run_cli("results", "--store", str(db), check=True).stdout)))
    assert "my_score" not in rows[0]
    mine = [r for r in rows if r["method"] == "my-sparse"]
    assert sorted(json.loads(r["other"])["my_score"] for r in mine) == [7, 8, 9]
    out = tmp_path / "rep"
    run_cli("report", "--store", str(db), "--out", str(out), "--format", "md", "--no-samples", check=True)
    t1 = (out / "table1.md").read_text()
    assert "my-sparse" in t1 and "Static Sparse GAN" in t1


def test_groups_come_from_the_registry(site):
    listing = run_cli("list", env=with_plugin(site), check=True).stdout
    assert "method groups: pf = pf-global,pf-uniform, mine = my-sparse" in listing
    flops = run_cli(
        "flops",
        "--arch",
        "sngan",
        "--preset",
        "quick",
        "--methods",
        "pf,mine",
        "--sg",
        "0.9",
        "--sd",
        "0.5",
        "--format",
        "csv",
        env=with_plugin(site),
        check=True,
    ).stdout
    assert [r["method"] for r in csv.DictReader(io.StringIO(flops))] == ["pf-global", "pf-uniform", "my-sparse"]
    proc = run_cli("flops", "--arch", "sngan", "--methods", "nope", env=with_plugin(site))
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("Error: unknown method 'nope'")
    for listed in ("my-sparse", "mine (= my-sparse)", "pf (= pf-global,pf-uniform)"):
        assert listed in proc.stderr


def test_a_data_set_plugin_scores_with_its_own_extractor(tmp_path, site, plugins):
    db = tmp_path / "r.db"
    run_cli(
        "run",
        "--methods",
        "my-sparse",
        "--arch",
        "sngan",
        "--dataset",
        "own-digits",
        "--store",
        str(db),
        *TINY,
        env=with_plugin(site),
        check=True,
    )
    (run,) = Store(db).all_runs()
    res = run["results"]
    assert run["config"]["train"]["extractor"] == "mean-color"  # part of the run id
    assert res["extractor"] == "mean-color" and res["extractor_accuracy"] == 0.25
    assert res["my_score"] == 7 and res["fid"] > 0 and res["is_mean"] > 0
    data = plugins.datasets.get("own-digits").load(16)
    ev = Evaluator(
        data, "own-digits", "mean-color", tmp_path / "cache", torch.device("cpu"), extractors=plugins.extractors
    )
    assert res["extractor_hash"] == ev.extractor_hash and res["data_hash"] == ev.data_hash
    assert (tmp_path / "cache" / "extractors" / f"mean-color-{ev.data_hash}.npz").is_file()
