"""The offline extractor is the data set's own classifier: any labelled data with at least 2 classes."""

from __future__ import annotations

import pytest
import torch

from sparsebench import SparsebenchError
from sparsebench.interfaces import DataSplits, ImageData


def blobs(classes: int, n: int, seed: int) -> ImageData:
    """Images whose class is their colour: separable, so the classifier must learn them."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    colours = torch.linspace(0, 255, classes).to(torch.uint8)
    images = colours[labels].view(n, 1, 1, 1).expand(n, 3, 16, 16).clone()
    noise = torch.randint(0, 20, images.shape, generator=g, dtype=torch.uint8)
    return ImageData(images.sub(noise.clamp(max=images)), labels, classes)


def test_a_three_class_data_set_gets_its_own_classifier(tmp_path, plugins):
    extractor = plugins.extractors.get("sparsebench-digits")
    data = DataSplits(blobs(3, 96, 0), blobs(3, 48, 1))
    prepared = extractor.prepare(data, "blobs", "blobs-3", tmp_path, None)
    assert prepared.accuracy is not None and prepared.accuracy > 0.9
    net = extractor.fidelity_class()("sparsebench-digits", ["logits_unbiased"], prepared.path)
    (logits,) = net(data.heldout.images[:4])
    assert logits.shape == (4, 3)


def test_a_single_class_data_set_is_refused_in_one_line(tmp_path, plugins):
    extractor = plugins.extractors.get("sparsebench-digits")
    data = DataSplits(blobs(1, 16, 0), blobs(1, 8, 1))
    with pytest.raises(SparsebenchError, match="needs at least 2; blobs has 1") as info:
        extractor.prepare(data, "blobs", "blobs-1", tmp_path, None)
    assert "\n" not in str(info.value)
