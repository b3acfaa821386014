"""Metrics through torch-fidelity with the offline extractor; the fvcore FLOP accountant."""

from __future__ import annotations

import csv
import io

import pytest
import torch
from torch import nn

from conftest import run_cli
from sparsebench.flops import GANFlops, ModelFlops, count_model
from sparsebench.metrics.evaluate import Evaluator
from sparsebench.runner import cache_dir


@pytest.fixture(scope="module")
def evaluator(plugins):
    data = plugins.datasets.get("digits").load(16)
    return Evaluator(data, "digits", "sparsebench-digits", cache_dir(), torch.device("cpu"))


def test_offline_extractor_is_accurate(evaluator):
    assert evaluator.extractor_accuracy >= 0.95


def test_fid_of_a_set_against_itself_is_zero(evaluator):
    fid = evaluator.compute(evaluator.data.train.images, {"fid"})["frechet_inception_distance"]
    assert abs(fid) < 1e-3


def test_real_heldout_is_far_closer_than_noise(evaluator):
    floor = evaluator.floor({"fid"})["frechet_inception_distance"]
    noise = torch.randint(0, 256, (500, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    fid_noise = evaluator.compute(noise, {"fid"})["frechet_inception_distance"]
    assert floor > 0 and fid_noise > 10 * floor


def test_is_kid_prc_come_out_of_one_call(evaluator):
    images = evaluator.data.heldout.images
    values = evaluator.compute(images, {"isc", "kid", "prc"})
    assert values["inception_score_mean"] > 5  # ten well-separated classes
    assert 0.5 < values["precision"] <= 1 and 0.5 < values["recall"] <= 1


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x, y=None):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_accountant_matches_hand_counted_flops():
    net = TinyNet()
    mf = count_model(net, (torch.zeros(2, 3, 8, 8), None), "conv+linear", batch=2)
    conv = 8 * 8 * 8 * 3 * 9  # output positions x output channels x (in channels x kernel)
    fc = 8 * 8 * 8 * 4
    assert mf.layers == {"conv": conv, "fc": fc}
    assert mf.total == conv + fc
    assert mf.forward({"conv": 0.25, "fc": 0.5}) == pytest.approx(0.25 * conv + 0.5 * fc)
    assert mf.forward(None) == conv + fc
    # the training models are untouched: counting ran on an eval copy
    assert net.training


def test_step_flops_follow_the_schedule():
    g, d = ModelFlops(100.0, {"a": 60.0}), ModelFlops(10.0, {"b": 8.0})
    gan = GANFlops(g, d, batch_size=4, g_batch_size=6, n_critic=3)
    # D step: G fwd on 4 fakes + D fwd+bwd (3x) on 4 real + 4 fake; G step: G and D fwd+bwd on 6
    assert gan.step() == 3 * (4 * 100 + 8 * 3 * 10) + 6 * 3 * (100 + 10)
    gs, ds = 100 - 60 * 0.9, 10 - 8 * 0.5
    assert gan.step({"a": 0.1}, {"b": 0.5}) == pytest.approx(3 * (4 * gs + 8 * 3 * ds) + 6 * 3 * (gs + ds))
    assert gan.test({"a": 0.1}) == pytest.approx(gs)


def test_count_does_not_touch_bn_stats_or_sn_vectors(plugins):
    from sparsebench.flops import count_gan

    a = plugins.archs.get("biggan")
    spec = a.presets["quick"]
    G, D = a.build(spec, 10)
    before = {k: v.clone() for k, v in list(G.state_dict().items()) + list(D.state_dict().items())}
    count_gan(G, D, spec, "conv", 10)
    after = dict(list(G.state_dict().items()) + list(D.state_dict().items()))
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("arch", ["sngan", "biggan"])
def test_flops_table_has_the_structure_of_table_2(arch):
    out = run_cli("flops", "--arch", arch, "--preset", "paper", "--methods",
                  "dense,pf-global,pf-uniform,gan-tickets,static,stugan", "--sg", "0.95,0.9,0.8",
                  "--sd", "0.5,0.7", "--format", "csv", check=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    cell = {(r["method"], float(r["sg"]), float(r["sd"])): r for r in rows}
    rel = lambda m, sg, sd: float(cell[(m, sg, sd)]["train_rel"])  # noqa: E731
    assert rel("dense", 0.0, 0.0) == 1.0
    for sg in (0.95, 0.9, 0.8):
        assert 1.0 < rel("pf-global", sg, 0.0) < 2.0  # dense + a fine-tuning share
        assert rel("static", sg, 0.5) == rel("stugan", sg, 0.5)
        assert rel("static", sg, 0.7) < rel("static", sg, 0.5) < 1.0
        assert rel("gan-tickets", sg, 0.0) > 3.0
        test_rel = float(cell[("stugan", sg, 0.5)]["test_rel"])
        assert test_rel == pytest.approx(1 - sg, abs=0.02)


def test_inception_offline_without_weights_is_one_clear_error(tmp_path, plugins, monkeypatch):
    from sparsebench import SparsebenchError

    for var in ("https_proxy", "http_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # no network, whatever the machine has
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    data = plugins.datasets.get("digits").load(16)
    ev = Evaluator(data, "digits", "inception-v3-compat", tmp_path / "cache", torch.device("cpu"))
    with pytest.raises(SparsebenchError) as err:
        ev.compute(data.heldout.images[:20], {"isc"})
    message = str(err.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in message and "--inception-weights" in message
    assert "\n" not in message
    with pytest.raises(SparsebenchError, match="no such file"):
        Evaluator(data, "digits", "inception-v3-compat", tmp_path, torch.device("cpu"), str(tmp_path / "missing.pt"))
