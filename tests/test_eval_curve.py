"""The evaluation curve reads the weights only, and a run's score is the mean of its curve's last points."""

from __future__ import annotations

import pytest
import torch
from test_accumulate import context

from sparsebench import SparsebenchError
from sparsebench.config import GridRequest, expand_grid
from sparsebench.train import context as context_module
from sparsebench.train.loop import Interrupted


@pytest.fixture
def curve_preset(plugins):
    """The quick SNGAN preset with a small evaluation, restored after the test."""
    entry = plugins.archs.get("sngan")
    saved = entry.presets
    entry.presets = {**saved, "quick": saved["quick"].replace(eval_samples=200)}
    yield entry
    entry.presets = saved


def _run(store, **train):
    import sparsebench
    from sparsebench.plugins import get_plugins

    entry = get_plugins().archs.get("sngan")
    quick = entry.presets["quick"]
    entry.presets = {**entry.presets, "quick": quick.replace(**train)}
    try:
        df = sparsebench.run("static", "sngan", sg=0.8, steps=8, store=store)
    finally:
        entry.presets = {**entry.presets, "quick": quick}
    row = df.iloc[-1]
    assert row["status"] == "done", row.get("error")
    return row


def test_the_curve_changes_neither_training_nor_the_final_score_and_the_score_averages_its_end(tmp_path, curve_preset):
    import json

    from sparsebench.store import Store

    plain = _run(tmp_path / "plain.db")
    curved = _run(tmp_path / "curve.db", eval_every=2, eval_from=0.5, score_last=3)
    other = json.loads(curved["other"])
    assert other["fid_final"] == plain["fid"]  # the same training, the same final evaluation, to the last digit
    store = Store(tmp_path / "curve.db", readonly=True)
    curve = [(step, v) for step, key, v in store.stats(curved["run_id"]) if key == "fid"]
    assert [s for s, _ in curve] == [4, 6, 8] and curve[-1][1] == plain["fid"]
    assert curved["fid"] == pytest.approx(sum(v for _, v in curve) / 3)
    assert other["fid_score"] == "mean of last 3"
    from conftest import run_cli

    run_cli("report", "--store", str(tmp_path / "curve.db"), "--out", str(tmp_path / "rep"), "--no-samples", check=True)
    assert (tmp_path / "rep" / "figures" / "fid_curve.png").exists()  # the report shows the curve
    protocol = (tmp_path / "rep" / "index.md").read_text().split("## Protocol")[1].split("## Tables")[0]
    assert "| mean of the last 3 evaluations, 2 G steps apart | fp32 | 1 |" in protocol  # the report says how


def test_a_score_needs_as_many_evaluations_as_it_averages(plugins):
    cfg = expand_grid(GridRequest(methods=["static"], arch="sngan", steps=8), plugins)[0]
    with pytest.raises(SparsebenchError, match="score_last=4 needs as many evaluations, the curve gives 3"):
        cfg.replace(train=cfg.train.replace(eval_every=2, eval_from=0.5, score_last=4))
    with pytest.raises(SparsebenchError, match="only with an evaluation curve"):
        cfg.replace(train=cfg.train.replace(score_last=2))


def test_the_small_preset_scores_its_last_six_evaluations_and_a_run_too_short_for_them_is_one_line(plugins, tmp_path):
    from conftest import run_grid

    from sparsebench.config import curve_points

    for arch in ("biggan", "sngan"):
        spec = plugins.archs.get(arch).presets["small"]
        assert (spec.eval_every, spec.score_last, curve_points(spec)) == (100, 6, 6)
        # by hand: from step 1,301 the curve has 900..1,300 and the final evaluation; at 1,300 one fewer
        assert curve_points(spec.replace(steps=1301)) == 6 and curve_points(spec.replace(steps=1300)) == 5
    proc = run_grid(tmp_path / "r.db", "dense", "sngan", "--preset", "small", steps=600, check=False)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert "the curve gives 3" in proc.stderr and "needs --steps 1301 or more" in proc.stderr


def test_the_curve_survives_a_resume(plugins, tmp_path, monkeypatch):
    """Points taken before a stop are kept in the checkpoint: the resumed run's curve is the whole curve."""
    cfg = expand_grid(GridRequest(methods=["static"], arch="sngan", sg=[0.8], steps=8), plugins)[0]
    cfg = cfg.replace(train=cfg.train.replace(eval_every=2, eval_from=0.0))

    def score(config, model: torch.nn.Module, evaluator, num_classes, device) -> dict[str, float]:
        return {"fid": float(sum(p.double().sum() for p in model.parameters()))}  # a cheap, exact stand-in

    monkeypatch.setattr(context_module, "curve_point", score)

    method = plugins.methods.get(cfg.method)
    ref = context(plugins, cfg, tmp_path / "ref")
    ref.services.evaluator = object()  # scored by `score`
    method.run(ref)
    stopped = context(plugins, cfg, tmp_path / "run", stop_after=5)
    stopped.services.evaluator = object()  # scored by `score`
    with pytest.raises(Interrupted):
        method.run(stopped)
    resumed = context(plugins, cfg, tmp_path / "run")
    resumed.services.evaluator = object()  # scored by `score`
    method.run(resumed)
    assert [s for s, _ in ref.final.curve] == [2, 4, 6]  # the last step's point is the final evaluation's
    assert resumed.final.curve == ref.final.curve
