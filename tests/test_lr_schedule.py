"""The optional linear learning-rate decay of a training phase (TrainSpec.lr_decay_start)."""

from __future__ import annotations

import pytest
import torch
from test_accumulate import SPEC, train_toy, uninterrupted_and_resumed

from sparsebench import SparsebenchError
from sparsebench.config import GridRequest, expand_grid
from sparsebench.train.loop import lr_factor


def test_factor_is_constant_then_linear_towards_zero():
    assert [lr_factor(t, 10, 1.0) for t in (1, 10)] == [1.0, 1.0]
    got = [lr_factor(t, 10, 0.5) for t in range(1, 11)]
    assert got[:5] == [1.0] * 5
    assert got[5:] == pytest.approx([5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert lr_factor(1, 4, 0.0) == pytest.approx(4 / 5)


def test_the_loop_applies_the_schedule_to_both_optimizers(plugins):
    data = plugins.datasets.get("digits").load(16).train
    state, _ = train_toy(data, SPEC.replace(steps=4, lr_decay_start=0.5))
    for opt, lr in ((state.g_opt, SPEC.lr_g), (state.d_opt, SPEC.lr_d)):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr * lr_factor(4, 4, 0.5))
        assert opt.param_groups[0]["initial_lr"] == lr
    constant, _ = train_toy(data, SPEC.replace(steps=4))
    assert constant.g_opt.param_groups[0]["lr"] == SPEC.lr_g
    assert not torch.equal(constant.G.image, state.G.image)  # the decay changed the updates


def test_default_keeps_run_ids_and_bad_values_are_refused(plugins):
    cfg = expand_grid(GridRequest(methods=["static"], arch="sngan", steps=2), plugins)[0]
    assert "lr_decay_start" not in cfg.to_dict()["train"]  # ids of runs stored before the schedule stay
    decayed = cfg.replace(train=cfg.train.replace(lr_decay_start=0.5))
    assert decayed.run_id != cfg.run_id and decayed.to_dict()["train"]["lr_decay_start"] == 0.5
    with pytest.raises(SparsebenchError, match=r"lr_decay_start must lie in \[0, 1\]"):
        cfg.replace(train=cfg.train.replace(lr_decay_start=1.5))


def test_a_decaying_run_resumes_bit_identically(plugins, tmp_path):
    cfg = expand_grid(GridRequest(methods=["static"], arch="sngan", sg=[0.8], sd=[0.5], steps=6), plugins)[0]
    cfg = cfg.replace(train=cfg.train.replace(lr_decay_start=0.3))
    a, b = uninterrupted_and_resumed(plugins, cfg, tmp_path)
    assert a.step == b.step == 6
    assert a.g_opt.param_groups[0]["lr"] == b.g_opt.param_groups[0]["lr"] < cfg.train.lr_g
