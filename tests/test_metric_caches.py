"""Metric caches: keyed by the content of the data and the extractor, never unpickled, hashes recorded."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, run_cli

from sparsebench import SparsebenchError
from sparsebench.interfaces import DataSplits, ImageData
from sparsebench.metrics.cache import content_hash, data_hash
from sparsebench.metrics.evaluate import Evaluator
from sparsebench.resources import cache_dir
from sparsebench.store import Store
from sparsebench_builtins.metrics.extractors import INCEPTION

DIGITS = "sparsebench-digits"
RUN = ["run", "--methods", "static", "--arch", "sngan", *TINY]


def folder_run(images: Path, store: Path) -> list[str]:
    """RUN on an image folder, into `store`."""
    return [*RUN, "--dataset", "imagefolder", "--data-dir", str(images), "--store", str(store)]


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def results(store: Path) -> list[dict]:
    """The stored results of every run, unrounded."""
    return [run["results"] for run in Store(store).all_runs()]


def small_digits(plugins, invert: bool) -> DataSplits:
    """300 train / 100 held-out digits; `invert` gives another data set with the same counts and labels."""
    full = plugins.datasets.get("digits").load(16)
    pick = lambda d, n: ImageData(255 - d.images[:n] if invert else d.images[:n], d.labels[:n], 10)  # noqa: E731
    return DataSplits(pick(full.train, 300), pick(full.heldout, 100))


def test_same_size_data_sets_get_their_own_extractor_reference_and_fid(plugins, tmp_path):
    a, b = small_digits(plugins, invert=False), small_digits(plugins, invert=True)
    shared = tmp_path / "shared"
    ev_a = Evaluator(a, "digits", DIGITS, shared, torch.device("cpu"))
    images = a.heldout.images
    fid_a = ev_a.compute(images, {"fid"})["frechet_inception_distance"]
    floor_a = ev_a.floor({"fid"})["frechet_inception_distance"]
    ev_b = Evaluator(b, "digits", DIGITS, shared, torch.device("cpu"))  # after a, on the same cache
    fid_b = ev_b.compute(images, {"fid"})["frechet_inception_distance"]
    floor_b = ev_b.floor({"fid"})["frechet_inception_distance"]
    fresh = Evaluator(b, "digits", DIGITS, tmp_path / "fresh", torch.device("cpu"))

    assert ev_a.data_hash != ev_b.data_hash and ev_a.extractor_hash != ev_b.extractor_hash
    assert (ev_b.data_hash, ev_b.extractor_hash) == (fresh.data_hash, fresh.extractor_hash)
    assert fid_a != fid_b and floor_a != floor_b
    assert fid_b == fresh.compute(images, {"fid"})["frechet_inception_distance"]
    assert floor_b == fresh.floor({"fid"})["frechet_inception_distance"]
    for sub in ("extractors", "references", "floors"):
        assert len(list((shared / sub).iterdir())) == 2
    assert not (shared / "fidelity").exists()


def write_imagefolder(root: Path, per_class: int = 5) -> None:
    from PIL import Image

    gen = np.random.default_rng(0)
    for c in range(10):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = gen.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")


@pytest.mark.slow  # trains the digits extractor afresh, in caches of its own
def test_digits_run_after_an_imagefolder_run_keeps_the_digits_extractor(plugins, tmp_path):
    env = {"SPARSEBENCH_CACHE": str(tmp_path / "cache")}
    write_imagefolder(tmp_path / "images")
    run_cli(*folder_run(tmp_path / "images", tmp_path / "folder" / "r.db"), env=env, check=True)
    run_cli(*RUN, "--store", str(tmp_path / "digits" / "r.db"), env=env, check=True)
    (folder,) = results(tmp_path / "folder" / "r.db")
    (digits,) = results(tmp_path / "digits" / "r.db")

    clean = Evaluator(plugins.datasets.get("digits").load(16), "digits", DIGITS, cache_dir(), torch.device("cpu"))
    assert digits["extractor_accuracy"] > 0.9 and digits["extractor_accuracy"] == clean.extractor_accuracy
    assert digits["data_hash"] == clean.data_hash != folder["data_hash"]
    assert digits["extractor_hash"] == clean.extractor_hash != folder["extractor_hash"]
    floor = clean.floor({"fid"}, digits["eval_samples"])  # at the run's sample count
    assert digits["fid_floor"] == floor["frechet_inception_distance"] and digits["fid_floor_inf"] == floor["fid_inf"]
    csv = run_cli("results", "--store", str(tmp_path / "digits" / "r.db"), check=True).stdout
    assert "data_hash" in csv.splitlines()[0] and clean.data_hash in csv and clean.extractor_hash in csv


@pytest.mark.slow  # trains the digits extractor afresh, in caches of its own
def test_pickles_planted_in_the_cache_are_never_executed(tmp_path):
    cache = tmp_path / "cache"
    env = {"SPARSEBENCH_CACHE": str(cache)}
    marker = tmp_path / "executed"
    # what a torch-fidelity file cache under the suite's cache would hold for the digits train split
    for name in ("features-128", "features-logits_unbiased", "stat-fid-128"):
        path = cache / "fidelity" / f"sb-digits-16-train-1438-sparsebench-digits-{name}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(Payload(marker), path)
    run_cli(*RUN, "--store", str(tmp_path / "first" / "r.db"), env=env, check=True)
    assert not marker.exists()

    planted = [p for p in cache.rglob("*") if p.is_file()]
    assert {p.parent.name for p in planted} >= {"extractors", "references", "floors", "fidelity"}
    for path in planted:
        if path.suffix == ".npz":  # a pickled object inside a numpy array
            with open(path, "wb") as f:
                np.savez(f, **{"128": np.array([Payload(marker)], dtype=object)})
        else:
            torch.save(Payload(marker), path)
    run_cli(*RUN, "--store", str(tmp_path / "second" / "r.db"), env=env, check=True)
    assert not marker.exists()

    (first,) = results(tmp_path / "first" / "r.db")
    (second,) = results(tmp_path / "second" / "r.db")
    for key in ("fid", "is_mean", "is_std", "fid_floor", "extractor_accuracy", "data_hash", "extractor_hash"):
        assert second[key] == first[key], key


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory) -> Path:
    """A well-formed Inception weights file with random parameters (the real one needs a download)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None

    buf = io.BytesIO()
    torch.save({}, buf)
    buf.seek(0)
    path = tmp_path_factory.mktemp("inception") / "inception.pth"
    torch.save(Unloaded("x", ["2048"], feature_extractor_weights_path=buf).state_dict(), path)
    return path


def test_inception_weights_load_without_unpickling_and_are_hashed(plugins, tmp_path, random_inception):
    data = plugins.datasets.get("digits").load(16)
    ev = Evaluator(data, "digits", INCEPTION, tmp_path / "cache", torch.device("cpu"), str(random_inception))
    assert ev.extractor_hash == content_hash(torch.load(random_inception, weights_only=True).items())
    assert ev.data_hash == data_hash(data)
    values = ev.compute(data.heldout.images[:10], {"isc"})
    assert np.isfinite(values["inception_score_mean"])

    marker = tmp_path / "executed"
    evil = tmp_path / "evil.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": Payload(marker)}, evil)
    with pytest.raises(SparsebenchError, match="unusable Inception weights"):
        Evaluator(data, "digits", INCEPTION, tmp_path / "cache", torch.device("cpu"), str(evil))
    assert not marker.exists()


@pytest.mark.parametrize("content", ["text", "tensors"])
def test_wrong_inception_weights_file_is_one_error_line_before_training(tmp_path, content):
    weights = tmp_path / "weights.pth"
    if content == "text":
        weights.write_text("not weights\n")
    else:
        torch.save({"fc.weight": torch.zeros(3)}, weights)
    store = tmp_path / "r.db"
    proc = run_cli(
        *RUN, "--preset", "paper", "--dataset", "digits", "--inception-weights", str(weights), "--store", str(store)
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --inception-weights ") and str(weights) in lines[0]
    assert "state dict" in lines[0] and "Inception" in lines[0]
    assert results(store) == []


def test_a_grid_whose_data_files_changed_since_its_runs_were_scored_is_refused(tmp_path):
    """A done cell is skipped on its run id, which names the image folder but not its files: after an image
    changes, running the grid again says so in one line instead of returning the numbers of the old data."""
    from PIL import Image

    write_imagefolder(tmp_path / "images")
    args = folder_run(tmp_path / "images", tmp_path / "r.db")
    run_cli(*args, check=True)
    assert run_cli(*args).returncode == 0  # unchanged: skipped as done
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "images" / "c0" / "0.png")
    proc = run_cli(*args)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "data set imagefolder has changed since run" in proc.stderr and "--rerun" in proc.stderr
    assert [r["status"] for r in Store(tmp_path / "r.db").all_runs()] == ["done"]  # nothing stored is lost
    proc = run_cli(*args, "--seeds", "1,0")  # a cell to train comes first: the done one is still checked
    assert proc.returncode != 0 and "data set imagefolder has changed since run" in proc.stderr, proc.stderr
    assert [r["status"] for r in Store(tmp_path / "r.db").all_runs()] == ["done"]  # and nothing trained


def test_a_data_set_too_small_for_a_floor_trains_and_stores_no_floor(tmp_path):
    """Two images per class leave fewer held-out images than a floor needs (a covariance of one image is
    undefined): the run trains and is scored, without a floor, instead of failing in a linear-algebra error."""
    write_imagefolder(tmp_path / "images", per_class=2)
    run_cli(*folder_run(tmp_path / "images", tmp_path / "r.db"), check=True)
    (res,) = results(tmp_path / "r.db")
    assert res["fid"] == res["fid"] and res.get("fid_floor") is None  # a FID, no floor
