"""Architectures faithful to the references, and the data sets."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli, run_grid


@pytest.mark.parametrize("arch,g,d", [("biggan", 4304387, 4207361), ("sngan", 4276739, 1053824)])
def test_paper_parameter_counts(arch, g, d):
    info = json.loads(run_cli("describe", "--arch", arch, "--preset", "paper", "--format", "json", check=True).stdout)
    assert info["g_params"] == g and info["d_params"] == d
    for key in ("g_scope_params", "d_scope_params", "g_flops", "d_flops"):
        assert info[key] > 0
    if arch == "sngan":
        assert info["g_scope_params"] == 3742464  # conv weights of G, from the reference
    # per-layer ERK densities add up to the asked density over the scope
    kept = sum(la["params"] * la["density"] for la in info["g_layers"])
    assert kept == pytest.approx(0.1 * info["g_scope_params"])


@pytest.mark.parametrize(
    "arch,preset",
    [("biggan", "quick"), ("biggan", "paper"), ("biggan", "imagenet"), ("sngan", "quick"), ("sngan", "paper")],
)
def test_forward_shapes_and_range(plugins, arch, preset):
    a = plugins.archs.get(arch)
    spec = a.presets[preset]
    torch.manual_seed(0)
    G, D = a.build(spec, 10, width=0.125 if preset != "quick" else 1.0)
    z = torch.randn(4, spec.z_dim)
    y = torch.randint(0, 10, (4,))
    x = G(z, y)
    assert x.shape == (4, 3, spec.resolution, spec.resolution)
    assert x.min() >= -1 and x.max() <= 1
    assert D(x, y).shape == (4,)
    G.eval()
    assert G(z, y).shape == x.shape


@pytest.mark.slow
def test_biggan_128_matches_the_reference_table():
    info = json.loads(
        run_cli("describe", "--arch", "biggan", "--preset", "imagenet", "--format", "json", check=True).stdout
    )
    assert info["g_params"] == 70433988 and info["d_params"] == 87982370  # BigGAN's 70.4M / 88.0M
    assert info["resolution"] == 128 and info["g_flops"] > 0 and info["d_flops"] > 0


def test_small_dense_halves_the_width(plugins):
    a = plugins.archs.get("biggan")
    G, D = a.build(a.presets["paper"], 10, width=0.5)
    assert G.c == 128  # 4 * ch with ch = 32
    assert sum(p.numel() for p in G.parameters()) < 4304387 / 3


def test_biggan_uses_its_labels(plugins):
    a = plugins.archs.get("biggan")
    spec = a.presets["quick"]
    torch.manual_seed(0)
    G, D = a.build(spec, 10)
    with torch.no_grad():  # make the class embeddings matter as they do after training
        for m in G.modules():
            if isinstance(m, torch.nn.Embedding):
                m.weight.normal_(0, 0.5)
    G.eval()
    z = torch.randn(8, spec.z_dim)
    a0 = G(z, torch.zeros(8, dtype=torch.long))
    a1 = G(z, torch.ones(8, dtype=torch.long))
    assert not torch.allclose(a0, a1)
    x = torch.rand(8, 3, spec.resolution, spec.resolution) * 2 - 1
    assert not torch.allclose(D(x, torch.zeros(8, dtype=torch.long)), D(x, torch.ones(8, dtype=torch.long)))


def test_digits_loads_offline(plugins):
    splits = plugins.datasets.get("digits").load(16)
    assert len(splits.train) + len(splits.heldout) == 1797
    assert splits.train.images.dtype == torch.uint8 and splits.train.images.shape[1:] == (3, 16, 16)
    assert splits.train.num_classes == 10
    again = plugins.datasets.get("digits").load(16)
    assert torch.equal(splits.heldout.labels, again.heldout.labels)  # deterministic split


def test_cifar10_offline_without_data_fails_in_one_line(tmp_path, store):
    proc = run_grid(
        store,
        "dense",
        "sngan",
        "--dataset",
        "cifar10",
        "--data-dir",
        str(tmp_path / "nodata"),
        steps=1,
        check=False,
        env={
            "https_proxy": "http://127.0.0.1:9",
            "http_proxy": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9",
        },
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "cifar-10-batches-py" in lines[0] and "--data-dir" in lines[0]
    assert not store.exists() or "cifar10" not in run_cli("results", "--store", str(store)).stdout


def test_imagefolder_loads_a_folder(plugins, tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (20, 24), color=(i * 40, 10, 200 if cls == "a" else 0)).save(tmp_path / cls / f"{i}.png")
    splits = plugins.datasets.get("imagefolder").load(16, str(tmp_path), heldout=0.34)
    assert splits.train.num_classes == 2
    assert splits.train.images.shape[1:] == (3, 16, 16)
    assert len(splits.train) + len(splits.heldout) == 6
