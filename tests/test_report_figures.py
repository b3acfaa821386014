"""The report's curve figures: every run counts, grouped by report row, whatever order the store logged them."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from sparsebench.report import plots


@pytest.fixture
def drawn(monkeypatch):
    """The figures method_curves builds, kept instead of written to disk."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, out, stem: figures.append(fig) or [])
    return figures


def _runs_and_stats(counts: dict[str, int], key: str, spike: float | None = None):
    runs, stats = [], []
    for label, n in counts.items():
        for seed in range(n):
            run_id = f"{label}-{seed}"
            runs.append({"run_id": run_id, "method": label, "label": label, "arch": "sngan", "sg": 0.9, "sd": 0.5})
            for step in range(0, 100, 10):
                value = 1.0 if label == "a" else 2.0
                stats.append({"run_id": run_id, "step": step, "key": key, "value": value})
    if spike is not None:  # one run's one step, far off the rest
        stats[0]["value"] = spike
    return pd.DataFrame(runs), pd.DataFrame(stats)


def test_a_method_logged_after_many_other_runs_still_has_its_line(drawn, tmp_path):
    runs, stats = _runs_and_stats({"b": 12, "a": 2}, "balance_ratio")  # b's 12 runs were logged first
    info = SimpleNamespace(rank=lambda method: {"a": 0, "b": 1}[method])
    plots.method_curves(stats, runs, info, [("balance_ratio", "r_t")], "balance_ratio", tmp_path)
    (fig,) = drawn
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a (n=2)", "b (n=12)"]
    ax = fig.axes[0]
    medians = {line.get_label(): set(line.get_ydata()) for line in ax.get_lines()}
    assert medians == {"a (n=2)": {1.0}, "b (n=12)": {2.0}}


def test_one_runs_spike_widens_no_axis(drawn, tmp_path):
    runs, stats = _runs_and_stats({"b": 4}, "loss_d", spike=1e6)  # its band reaches 2.5e5
    info = SimpleNamespace(rank=lambda method: 0)
    plots.method_curves(stats, runs, info, [("loss_d", "D loss")], "losses", tmp_path)
    low, high = drawn[0].axes[0].get_ylim()
    assert low < 2.0 < high < 10.0


def test_a_row_without_a_finite_value_draws_no_line_and_breaks_no_figure(drawn, tmp_path):
    runs, stats = _runs_and_stats({"b": 3, "a": 2}, "exploration_rate")
    stats.loc[stats["run_id"].str.startswith("a"), "value"] = float("nan")
    info = SimpleNamespace(rank=lambda method: {"a": 0, "b": 1}[method])
    plots.method_curves(stats, runs, info, [("exploration_rate", "explored")], "exploration_rate", tmp_path)
    assert [line.get_label() for line in drawn[0].axes[0].get_lines()] == ["b (n=3)"]
