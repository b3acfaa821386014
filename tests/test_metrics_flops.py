"""Metrics through torch-fidelity with the offline extractor; the fvcore FLOP accountant."""

from __future__ import annotations

import csv
import io

import pytest
import torch
from conftest import run_cli
from torch import nn

from sparsebench.flops import GANFlops, ModelFlops, count_model
from sparsebench.metrics.evaluate import Evaluator
from sparsebench.resources import cache_dir


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
    out = run_cli(
        "flops",
        "--arch",
        arch,
        "--preset",
        "paper",
        "--methods",
        "dense,pf-global,pf-uniform,gan-tickets,static,stugan",
        "--sg",
        "0.95,0.9,0.8",
        "--sd",
        "0.5,0.7",
        "--format",
        "csv",
        check=True,
    ).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    cell = {(r["method"], float(r["sg"]), float(r["sd"])): r for r in rows}
    rel = lambda m, sg, sd: float(cell[(m, sg, sd)]["train_rel"])  # noqa: E731
    assert rel("dense", 0.0, 0.0) == 1.0
    for sg in (0.95, 0.9, 0.8):
        assert 1.0 < rel("pf-global", sg, 0.0) < 2.0  # dense + a fine-tuning share
        # the same sparse steps, plus the dense weight gradients of G's regrowth steps (every 500 / 1000 steps)
        assert rel("static", sg, 0.5) < rel("stugan", sg, 0.5) < 1.001 * rel("static", sg, 0.5)
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


# The paper's Table 2 (stu-gan-paper.md, "Table 2: Training and testing FLOPs of sparse BigGAN and SNGAN on
# CIFAR-10"), normalised to the dense GAN: (method, s_G, s_D) -> (training x, testing x), same for both archs
# except where noted. GAN Tickets at "90 %" is the paper's nominal 90 % ticket.
PAPER_TABLE_2 = {
    "sngan": {
        ("pf-global", 0.95, 0.0): (1.06, 0.05),
        ("pf-global", 0.9, 0.0): (1.11, 0.10),
        ("pf-global", 0.8, 0.0): (1.21, 0.20),
        ("pf-uniform", 0.95, 0.0): (1.05, 0.05),
        ("pf-uniform", 0.9, 0.0): (1.10, 0.10),
        ("pf-uniform", 0.8, 0.0): (1.20, 0.20),
        ("gan-tickets", 0.9, 0.0): (4.57, 0.13),
        ("gan-tickets", 0.8, 0.0): (4.16, 0.21),
        ("static", 0.95, 0.5): (0.23, 0.05),
        ("static", 0.9, 0.5): (0.26, 0.10),
        ("static", 0.8, 0.5): (0.32, 0.20),
        ("static", 0.95, 0.7): (0.16, 0.05),
        ("static", 0.9, 0.7): (0.19, 0.10),
        ("static", 0.8, 0.7): (0.25, 0.20),
        ("stugan", 0.95, 0.5): (0.23, 0.05),
        ("stugan", 0.9, 0.5): (0.26, 0.10),
        ("stugan", 0.8, 0.5): (0.32, 0.20),
        ("stugan", 0.95, 0.7): (0.16, 0.05),
        ("stugan", 0.9, 0.7): (0.19, 0.10),
        ("stugan", 0.8, 0.7): (0.25, 0.20),
    },
    "biggan": {
        ("pf-global", 0.95, 0.0): (1.05, 0.05),
        ("pf-global", 0.9, 0.0): (1.10, 0.10),
        ("pf-global", 0.8, 0.0): (1.20, 0.20),
        ("pf-uniform", 0.95, 0.0): (1.05, 0.05),
        ("pf-uniform", 0.9, 0.0): (1.10, 0.10),
        ("pf-uniform", 0.8, 0.0): (1.20, 0.20),
        ("gan-tickets", 0.9, 0.0): (4.57, 0.13),
        ("gan-tickets", 0.8, 0.0): (4.17, 0.21),
        ("static", 0.95, 0.5): (0.37, 0.05),
        ("static", 0.9, 0.5): (0.39, 0.10),
        ("static", 0.8, 0.5): (0.41, 0.20),
        ("static", 0.95, 0.7): (0.23, 0.05),
        ("static", 0.9, 0.7): (0.25, 0.10),
        ("static", 0.8, 0.7): (0.27, 0.20),
        ("stugan", 0.95, 0.5): (0.37, 0.05),
        ("stugan", 0.9, 0.5): (0.39, 0.10),
        ("stugan", 0.8, 0.5): (0.41, 0.20),
        ("stugan", 0.95, 0.7): (0.23, 0.05),
        ("stugan", 0.9, 0.7): (0.25, 0.10),
        ("stugan", 0.8, 0.7): (0.27, 0.20),
    },
}


def _flops_csv(*args: str) -> dict:
    out = run_cli("flops", "--preset", "paper", "--format", "csv", *args, check=True).stdout
    return {(r["method"], float(r["sg"]), float(r["sd"])): r for r in csv.DictReader(io.StringIO(out))}


@pytest.mark.parametrize("arch", ["sngan", "biggan"])
def test_paper_convention_reproduces_the_papers_table_2(arch):
    ours = _flops_csv("--arch", arch, "--convention", "paper")
    fvcore = _flops_csv("--arch", arch)
    for key, (train, test) in PAPER_TABLE_2[arch].items():
        assert float(ours[key]["train_rel"]) == pytest.approx(train, abs=0.03), key
        assert float(ours[key]["test_rel"]) == pytest.approx(test, abs=0.03), key
    dense = ("dense", 0.0, 0.0)
    assert float(ours[dense]["test_flops"]) == pytest.approx(2 * float(fvcore[dense]["test_flops"]))
    # counting the dense D of a fine-tuning phase (fvcore) costs far more than G's density alone
    assert float(fvcore[("pf-global", 0.9, 0.0)]["train_rel"]) > float(ours[("pf-global", 0.9, 0.0)]["train_rel"]) + 0.2


def test_gan_tickets_rounds_option_sets_the_counted_rounds():
    nine = _flops_csv(
        "--arch",
        "sngan",
        "--methods",
        "gan-tickets",
        "--sg",
        "0.9",
        "--convention",
        "paper",
        "-o",
        "gan-tickets.rounds=9",
    )[("gan-tickets", 0.9, 0.0)]
    assert float(nine["test_rel"]) == pytest.approx(0.8**9, abs=0.005)  # the paper's 87 % ticket
    assert float(nine["train_rel"]) == pytest.approx(sum(0.8**k for k in range(10)), abs=0.02)
    bad = run_cli("flops", "--arch", "sngan", "--methods", "gan-tickets", "-o", "gan-tickets.rounds=-1")
    assert bad.returncode != 0
    assert bad.stderr.strip() == "Error: gan-tickets: option 'rounds' must lie in [0, inf), got -1"
