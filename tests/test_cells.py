"""Every table cell means one thing: runs pool only when every setting but the seed agrees, references are
looked up with the same settings, relative FLOPs follow the run's own length, and every difference says how
much its seeds could have detected (tests on real stores filled through the real Store API)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from statsmodels.stats.power import TTestIndPower

from sparsebench.config import GridRequest, expand_grid, freeze
from sparsebench.report import power
from sparsebench.report.build import _frame
from sparsebench.report.tables import cell_aggregates, cost_table, quality_table
from sparsebench.store import Store


def _store(path, plugins, runs) -> Store:
    """`runs`: (GridRequest keywords, seed -> FID, extra results) per group of runs."""
    store = Store(path)
    for request, fids, extra in runs:
        req = GridRequest(**{"arch": "sngan", "sg": [0.9], "sd": [0.5], **request, "seeds": list(fids)})
        for cfg in expand_grid(req, plugins):
            store.claim(cfg, {}, "filler")
            results = {"fid": fids[cfg.seed], "is_mean": 5.0, "train_flops": 1.0, "test_flops": 1.0}
            store.finish_run(
                cfg.run_id,
                "done",
                {**results, "train_flops_rel": 1.0, "test_flops_rel": 1.0, **extra},
                1.0,
                "filler",
            )
    return store


def _rows(table) -> dict[str, list]:
    return {names[0]: cells for names, cells in table.rows}


def test_runs_on_two_datasets_never_share_a_cell(tmp_path, plugins):
    store = _store(
        tmp_path / "r.db",
        plugins,
        [({"methods": ["dense"]}, {0: 10.0}, {}), ({"methods": ["dense"], "dataset": "imagefolder"}, {0: 2000.0}, {})],
    )
    rows = _rows(quality_table(_frame(store, None, None, None)))
    assert len(rows) == 2, rows
    plain = next(cells for name, cells in rows.items() if "imagefolder" not in name)
    other = next(cells for name, cells in rows.items() if "dataset=imagefolder" in name)
    assert plain[0].text.startswith("10.00") and "(n=1)" in plain[0].text
    assert other[0].text.startswith("2000.00") and "(n=1)" in other[0].text


def test_runs_of_two_presets_never_share_a_cell_and_their_labels_say_which(tmp_path, plugins):
    store = _store(
        tmp_path / "r.db",
        plugins,
        [({"methods": ["dense"]}, {0: 10.0}, {}), ({"methods": ["dense"], "preset": "small"}, {1: 30.0}, {})],
    )
    names = sorted(_rows(quality_table(_frame(store, None, None, None))))
    assert names == ["Dense GAN [preset=quick]", "Dense GAN [preset=small]"]


def test_a_run_from_before_an_option_existed_is_not_pooled_with_one_after(tmp_path, plugins):
    """A plugin that adds an option with a default changes every run id: the old and the new run of a seed
    are two cells, never one cell of two seeds."""
    store = _store(tmp_path / "r.db", plugins, [({"methods": ["stugan"]}, {0: 20.0}, {})])
    new = expand_grid(GridRequest(methods=["stugan"], arch="sngan", sg=[0.9], seeds=[0]), plugins)[0]
    options = dict(new.method_options)
    options.pop(sorted(options)[0])  # as stored by the plugin before that option existed
    old = new.replace(method_options=freeze(options))
    store.claim(old, {}, "filler")
    store.finish_run(old.run_id, "done", {"fid": 90.0, "train_flops": 1.0}, 1.0, "filler")
    cells = [c for c in cell_aggregates(_frame(store, None, None, None)) if c["method"] == "stugan"]
    assert sorted(c["n"] for c in cells) == [1, 1] and sorted(c["fid_mean"] for c in cells) == [20.0, 90.0]
    assert len({c["variant"] for c in cells}) == 2


def test_one_seed_twice_in_a_cell_is_an_error_naming_both_runs(tmp_path, plugins):
    store = _store(tmp_path / "r.db", plugins, [({"methods": ["dense"]}, {0: 10.0, 1: 12.0}, {})])
    df = _frame(store, None, None, None)
    twin = df.iloc[[0]].copy()  # e.g. the rows of two stores put together
    twin["run_id"], twin["fid"] = "0123456789abcdef", 99.0
    df = pd.concat([df, twin], ignore_index=True)
    (cell,) = cell_aggregates(df)
    assert cell["n"] == 2 and cell["fid_mean"] is None
    assert cell["duplicate_seeds"] == {0: sorted(["0123456789abcdef", df.iloc[0]["run_id"]])}
    text = _rows(quality_table(df))["Dense GAN"][0].text
    assert text.startswith("error: seed 0 stored twice") and "0123456789abcdef" in text and "99" not in text


def test_the_reference_is_the_run_with_the_same_settings_length_included(tmp_path, plugins):
    fids_static, fids_stugan = {0: 30.0, 1: 31.0, 2: 32.0}, {0: 20.0, 1: 21.0, 2: 22.0}
    store = _store(
        tmp_path / "r.db",
        plugins,
        [
            ({"methods": ["static"]}, {0: 90.0, 1: 91.0, 2: 92.0}, {}),  # the preset's length: not the reference
            ({"methods": ["static"], "steps": 800}, fids_static, {}),
            ({"methods": ["stugan"], "steps": 800}, fids_stugan, {}),
            ({"methods": ["stugan"], "steps": 900}, fids_stugan, {}),
        ],
    )
    cells = {(c["method"], c["variant"]): c for c in cell_aggregates(_frame(store, None, None, None))}
    at_800 = cells[("stugan", "steps=800")]
    assert at_800["n_reference"] == 3 and at_800["diff"] == pytest.approx(-10.0)
    at_900 = cells[("stugan", "steps=900")]
    assert at_900["n_reference"] == 0 and at_900["diff"] is None
    text = _rows(quality_table(_frame(store, None, None, None)))["STU-GAN [steps=900]"][0].text
    assert "no Static Sparse GAN run with preset quick, steps=900" in text


def test_a_reference_whose_masks_never_change_is_found_at_any_optimizer_state_policy(tmp_path, plugins):
    """Static trains identically under every policy (test_opt_state), so STU-GAN at --opt-state zero is compared
    with Static at the default policy; with sparse kernels the policy changes which gradients are computed, and
    against SET (its masks change) the policy must match."""
    store = _store(
        tmp_path / "r.db",
        plugins,
        [
            ({"methods": ["static"]}, {0: 30.0, 1: 31.0, 2: 32.0}, {}),
            ({"methods": ["stugan"], "opt_state": "zero"}, {0: 20.0, 1: 21.0, 2: 22.0}, {}),
            ({"methods": ["stugan"], "opt_state": "zero", "kernels": "sparseprop"}, {0: 24.0, 1: 25.0}, {}),
        ],
    )
    df = _frame(store, None, None, None)
    cells = {(c["method"], c["variant"]): c for c in cell_aggregates(df)}
    zero = cells[("stugan", "opt_state=zero")]
    assert zero["n_reference"] == 3 and zero["diff"] == pytest.approx(-10.0)
    sparse_kernels = next(c for (m, v), c in cells.items() if m == "stugan" and "kernels=sparseprop" in v)
    assert sparse_kernels["n_reference"] == 0 and sparse_kernels["diff"] is None
    from sparsebench.report.tables import MethodInfo

    methods = dict(MethodInfo.of(None).methods)
    static = methods["static"]
    dynamic = type("DynamicStatic", (type(static),), {"fixed_masks": False})()  # a reference whose masks move
    again = cell_aggregates(df, methods={**methods, "static": dynamic})
    zero = next(c for c in again if c["method"] == "stugan" and c["variant"] == "opt_state=zero")
    assert zero["n_reference"] == 0 and zero["diff"] is None
    text = _rows(quality_table(df, methods={**methods, "static": dynamic}))["STU-GAN [opt_state=zero]"][0].text
    assert "no Static Sparse GAN run with preset quick, opt_state=zero" in text


def test_relative_flops_follow_the_runs_own_length(tmp_path, plugins):
    """A --steps 60 Static run shows in Table 2 what `sparsebench results` stores, not 60 / 400 of it."""
    store = _store(tmp_path / "r.db", plugins, [({"methods": ["static"], "steps": 60}, {0: 50.0}, {})])
    Store(tmp_path / "r.db").close()
    df = _frame(store, None, None, None)
    df["train_flops_rel"] = 0.227
    (cells,) = _rows(cost_table(df)).values()
    assert "(0.23×)" in cells[0].text


def test_detectable_difference_and_seeds_needed_match_statsmodels():
    """Equal n and stds: Welch's df is 2n - 2 and the power is the pooled t test's (statsmodels)."""
    solver = TTestIndPower()
    for n, sd in ((3, 5.0), (10, 2.0), (25, 7.5)):
        d = solver.solve_power(nobs1=n, alpha=0.05, power=0.8, ratio=1.0)
        assert power.detectable_difference(sd, n, sd, n) == pytest.approx(d * sd, rel=1e-6)
    # textbook: d = 0.5 needs 64 per group (Cohen 1988, Table 2.4.1), statsmodels 63.77
    assert power.seeds_needed(0.5, 1.0, 1.0) == math.ceil(solver.solve_power(effect_size=0.5, alpha=0.05, power=0.8))
    assert power.seeds_needed(0.5, 1.0, 1.0) == 64
    # near the cap (10,000 seeds) the answer is still found, not given up on
    assert 8000 < power.seeds_needed(0.0418, 1.0, 1.0) < power.MAX_SEEDS
    # the power at the returned n reaches 80 %, one seed fewer does not
    n = power.seeds_needed(3.0, 4.0, 6.0)
    assert power.power(3.0, 4.0, n, 6.0, n) >= 0.8 > power.power(3.0, 4.0, n - 1, 6.0, n - 1)


def _significance_cells(tmp_path, plugins, stugan: dict, static: dict):
    store = _store(
        tmp_path / "r.db",
        plugins,
        [({"methods": ["static"]}, static, {}), ({"methods": ["stugan"]}, stugan, {})],
    )
    df = _frame(store, None, None, None)
    return {c["method"]: c for c in cell_aggregates(df)}, df


def test_a_tight_interval_spanning_zero_reads_no_difference(tmp_path, plugins):
    cells, df = _significance_cells(tmp_path, plugins, {0: 30.0, 1: 30.2, 2: 29.8}, {0: 30.1, 1: 29.9, 2: 30.05})
    stu = cells["stugan"]
    assert stu["ci_low"] < 0 < stu["ci_high"] and stu["verdict"] == "no difference"
    assert stu["detectable_diff"] <= 0.2 * 30.0
    assert f"no difference larger than {stu['detectable_diff']:.2f}" in _rows(quality_table(df))["STU-GAN"][0].text


def test_a_wide_interval_spanning_zero_reads_undecided_with_the_seeds_needed(tmp_path, plugins):
    cells, df = _significance_cells(tmp_path, plugins, {0: 20.0, 1: 45.0, 2: 30.0}, {0: 25.0, 1: 50.0, 2: 35.0})
    stu = cells["stugan"]
    assert stu["verdict"] == "undecided" and stu["seeds_needed_20pct"] > 3
    s1, s2 = 12.583057392117917, 12.583057392117917
    assert stu["seeds_needed_20pct"] == power.seeds_needed(0.2 * 36.666666666666664, s1, s2)
    assert (
        f"undecided: about {stu['seeds_needed_20pct']} seeds per arm needed"
        in _rows(quality_table(df))["STU-GAN"][0].text
    )


def test_the_best_fid_is_bold_among_the_cells_eligible_to_win(tmp_path, plugins):
    """The lowest FID of a column is not eligible (its interval spans zero); the significant winner is bold."""
    store = _store(
        tmp_path / "r.db",
        plugins,
        [
            ({"methods": ["dense"]}, {0: 40.0, 1: 41.0, 2: 42.0}, {}),
            ({"methods": ["static"]}, {0: 10.0, 1: 50.0, 2: 30.0}, {}),  # lowest mean is not this one's
            ({"methods": ["stugan"]}, {0: 5.0, 1: 60.0, 2: 10.0}, {}),  # lowest mean 25, spans zero vs Static
            ({"methods": ["small-dense"]}, {0: 31.0, 1: 31.5, 2: 32.0}, {}),  # clearly better than dense
        ],
    )
    rows = _rows(quality_table(_frame(store, None, None, None)))
    bold = [name for name, cells in rows.items() if cells[0].bold]
    assert bold == ["Small Dense GAN"], {n: (c[0].text, c[0].bold) for n, c in rows.items()}


def test_the_json_cells_carry_the_power_fields(tmp_path, plugins):
    from conftest import run_cli

    _significance_cells(tmp_path, plugins, {0: 20.0, 1: 45.0, 2: 30.0}, {0: 25.0, 1: 50.0, 2: 35.0})
    out = json.loads(run_cli("results", "--store", str(tmp_path / "r.db"), "--format", "json", check=True).stdout)
    stu = next(c for c in out["cells"] if c["method"] == "stugan")
    assert stu["verdict"] == "undecided" and stu["seeds_needed_20pct"] > 3 and stu["detectable_diff"] > 0
    assert stu["seeds"] == [0, 1, 2] and stu["cell"] and stu["reference_settings"] == "preset quick"
    assert all("cell" in r and "settings" in r for r in out["runs"])


def test_a_report_renders_runs_that_computed_fid_only(tmp_path, plugins):
    store = _store(tmp_path / "r.db", plugins, [({"methods": ["dense"], "metrics": ("fid",)}, {0: 10.0, 1: 11.0}, {})])
    df = _frame(store, None, None, None)
    df["is_mean"] = None
    (cells,) = _rows(quality_table(df)).values()
    assert cells[0].text.startswith("10.50 ± 0.71 / n/a")


def test_a_method_with_its_own_scope_finds_its_dense_reference(tmp_path, plugins):
    """ADAPT sparsifies its reference's scope; a dense run has no masks, so its scope does not matter."""
    store = _store(
        tmp_path / "r.db",
        plugins,
        [
            ({"methods": ["dense"]}, {0: 30.0, 1: 31.0}, {}),
            ({"methods": ["adapt"], "sd": [0.9]}, {0: 40.0, 1: 42.0}, {}),
        ],
    )
    cells = {c["method"]: c for c in cell_aggregates(_frame(store, None, None, None))}
    assert cells["adapt"]["n_reference"] == 2 and cells["adapt"]["diff"] == pytest.approx(10.5)
    assert cells["adapt"]["variant"] == ""  # its own scope is its default, not a variant


def test_settings_that_differ_never_read_alike(tmp_path, plugins):
    store = _store(tmp_path / "r.db", plugins, [({"methods": ["dense"]}, {0: 10.0, 1: 11.0}, {})])
    df = _frame(store, None, None, None)
    for i, lr in enumerate((2.0000001e-4, 2.0000002e-4)):  # as two runs of nearly equal learning rates
        flat = json.loads(df.loc[i, "settings"])
        df.loc[i, "settings"] = json.dumps({**flat, "train.lr_g": lr}, sort_keys=True)
        df.loc[i, "cell"] = f"cell-{i}"
    labels = cell_aggregates(df)
    assert len(labels) == 2 and len({c["variant"] for c in labels}) == 2 and all(c["n"] == 1 for c in labels)


def test_two_reference_cells_are_named_never_pooled(tmp_path, plugins):
    store = _store(
        tmp_path / "r.db",
        plugins,
        [({"methods": ["static"]}, {0: 30.0, 1: 31.0}, {}), ({"methods": ["stugan"]}, {0: 20.0, 1: 21.0}, {})],
    )
    df = _frame(store, None, None, None)
    old = df[df["method"] == "static"].copy()  # the reference again, from another code version
    old["run_id"] = ["00000000000000a" + str(i) for i in range(len(old))]
    old["settings"] = old["settings"].str.replace('"code.method": "', '"code.method": "old-')
    old["cell"] = "old-static"
    df = pd.concat([df, old], ignore_index=True)
    stu = next(c for c in cell_aggregates(df) if c["method"] == "stugan")
    assert stu["diff"] is None and len(stu["reference_cells"]) == 2
    text = _rows(quality_table(df))["STU-GAN"][0].text
    assert "2 Static Sparse GAN cells match" in text


def test_table_3_compares_with_references_outside_it(tmp_path, plugins):
    from sparsebench.report.tables import length_table

    store = _store(
        tmp_path / "r.db",
        plugins,
        [
            ({"methods": ["static"]}, {0: 30.0, 1: 31.0, 2: 32.0}, {}),
            ({"methods": ["stugan"]}, {0: 25.0, 1: 26.0, 2: 27.0}, {}),
            ({"methods": ["stugan"], "options": {"stugan": {"length": "2"}}}, {0: 20.0, 1: 21.0, 2: 22.0}, {}),
        ],
    )
    df = _frame(store, None, None, None)
    df.loc[df["settings"].str.contains('"option.length": 2'), "variant"] = "length=2"
    table = length_table(df)
    assert table is not None
    texts = [cells[0].text for _, cells in table.rows]
    assert all("Δ vs Static Sparse GAN -" in t for t in texts), texts


def test_execution_modes_are_named_against_the_reports_most_common_ones(tmp_path, plugins):
    """A grid trained in bf16 reads plainly (its protocol table says bf16); the odd fp32 cell says fp32, and the
    two never pool."""
    bf16 = {"precision": "bf16", "channels_last": True}
    store = _store(
        tmp_path / "r.db",
        plugins,
        [
            ({"methods": ["dense"], **bf16}, {0: 10.0, 1: 11.0}, {}),
            ({"methods": ["static"], **bf16}, {0: 20.0, 1: 21.0}, {}),
            ({"methods": ["static"]}, {0: 30.0}, {}),
        ],
    )
    names = sorted(_rows(quality_table(_frame(store, None, None, None))))
    assert names == ["Dense GAN", "Static Sparse GAN", "Static Sparse GAN [channels_last=False,precision=fp32]"], names


def test_runs_of_one_cell_scored_on_other_data_are_never_averaged(tmp_path, plugins):
    """The data set's files changed between seeds under the same settings (an image folder edited in place):
    the runs' stored data hashes differ, so the cell is an error naming them, and a cell whose reference was
    scored on other data gets no difference."""
    a = {"data_hash": "aaaa", "extractor_hash": "eeee"}
    b = {"data_hash": "bbbb", "extractor_hash": "eeee"}
    store = _store(
        tmp_path / "r.db",
        plugins,
        [
            ({"methods": ["static"]}, {0: 20.0}, a),
            ({"methods": ["static"]}, {1: 90.0}, b),
            ({"methods": ["dense"]}, {0: 10.0, 1: 12.0}, a),
            ({"methods": ["stugan"]}, {0: 30.0, 1: 31.0}, b),
        ],
    )
    frame = _frame(store, None, None, None)
    cells = {c["method"]: c for c in cell_aggregates(frame)}
    assert cells["static"]["fid_mean"] is None and sorted(cells["static"]["mixed_content"]) == [
        "aaaa/eeee",
        "bbbb/eeee",
    ]
    rows = _rows(quality_table(frame))
    assert "runs scored on different data or features" in rows["Static Sparse GAN"][0].text
    # STU-GAN (data b) against Static (a and b): no difference is computed across contents
    assert cells["stugan"]["diff"] is None and cells["stugan"]["fid_mean"] == pytest.approx(30.5)
    plain = _store(
        tmp_path / "p.db",
        plugins,
        [({"methods": ["dense"]}, {0: 10.0, 1: 12.0}, a), ({"methods": ["static"]}, {0: 20.0, 1: 22.0}, b)],
    )
    static = next(c for c in cell_aggregates(_frame(plain, None, None, None)) if c["method"] == "static")
    assert static["diff"] is None and static["reference_content_differs"]
    assert (
        "scored on other data or features"
        in _rows(quality_table(_frame(plain, None, None, None)))["Static Sparse GAN"][0].text
    )
