"""Every table cell means one thing: runs pool only when every setting but the seed agrees, references are
looked up with the same settings, relative FLOPs follow the run's own length, and every difference says how
much its seeds could have detected (tests on real stores filled through the real Store API)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from conftest import UNIT_COSTS, fill_store

from sparsebench.analysis.comparisons import analyse
from sparsebench.config import GridRequest, expand_grid, freeze
from sparsebench.report import tables
from sparsebench.report.build import _frame
from sparsebench.report.tables import comparison_table, cost_table
from sparsebench.store import Store


def cell_aggregates(df, methods=None, **kw) -> list[dict]:
    return analyse(df, methods, **kw).cells


def quality_table(df, methods=None):
    return tables.quality_table(df, analyse(df, methods), methods=methods)


def comparisons(df, methods=None) -> dict[str, list]:
    """The comparison table's rows by method label: arch, s_G, s_D, vs, test, ratio, verdict, FLOPs, kind."""
    return {names[0]: [c.text for c in cells] for names, cells in comparison_table(analyse(df, methods), methods).rows}


def _store(path, plugins, runs) -> Store:
    """`runs`: (GridRequest keywords, seed -> FID, extra results) per group of runs."""
    store = Store(path)
    for request, fids, extra in runs:
        req = GridRequest(**{"arch": "sngan", "sg": [0.9], "sd": [0.5], **request, "seeds": list(fids)})
        fill_store(store, plugins, req, lambda cfg, f=fids, x=extra: {"fid": f[cfg.seed], **UNIT_COSTS, **x})
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
    assert plain[0].text == "10.00 (n=1)" and other[0].text == "2000.00 (n=1)"


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
    assert cell["n"] == 2 and cell["fid_geomean"] is None
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
    assert at_800["n_reference"] == 3 and at_800["ratio"] == pytest.approx(
        math.exp(sum(math.log(a / b) for a, b in zip(fids_stugan.values(), fids_static.values())) / 3)
    )
    at_900 = cells[("stugan", "steps=900")]
    assert at_900["n_reference"] == 0 and at_900["ratio"] is None
    row = comparisons(_frame(store, None, None, None))["STU-GAN [steps=900]"]
    assert "no Static Sparse GAN run with preset quick, steps=900" in row


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
    assert zero["n_reference"] == 3 and zero["pairs"] == 3 and zero["ratio"] < 1
    sparse_kernels = next(c for (m, v), c in cells.items() if m == "stugan" and "kernels=sparseprop" in v)
    assert sparse_kernels["n_reference"] == 0 and sparse_kernels["ratio"] is None
    from sparsebench.analysis.cells import MethodInfo

    methods = dict(MethodInfo.of(None).methods)
    static = methods["static"]
    dynamic = type("DynamicStatic", (type(static),), {"fixed_masks": False})()  # a reference whose masks move
    again = cell_aggregates(df, methods={**methods, "static": dynamic})
    zero = next(c for c in again if c["method"] == "stugan" and c["variant"] == "opt_state=zero")
    assert zero["n_reference"] == 0 and zero["ratio"] is None
    row = comparisons(df, methods={**methods, "static": dynamic})["STU-GAN [opt_state=zero]"]
    assert "no Static Sparse GAN run with preset quick, opt_state=zero" in row


def test_relative_flops_follow_the_runs_own_length(tmp_path, plugins):
    """A --steps 60 Static run shows in Table 2 what `sparsebench results` stores, not 60 / 400 of it."""
    store = _store(tmp_path / "r.db", plugins, [({"methods": ["static"], "steps": 60}, {0: 50.0}, {})])
    Store(tmp_path / "r.db").close()
    df = _frame(store, None, None, None)
    df["train_flops_rel"] = 0.227
    (cells,) = _rows(cost_table(df)).values()
    assert "(0.23×)" in cells[0].text


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
    assert cells["adapt"]["n_reference"] == 2 and cells["adapt"]["pairs"] == 2
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
    assert stu["ratio"] is None and len(stu["reference_cells"]) == 2
    assert "2 Static Sparse GAN cells match" in comparisons(df)["STU-GAN"]


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
    assert table is not None and [names[0] for names, _ in table.rows] == ["STU-GAN", "STU-GAN [length=2]"]
    longer = next(c for c in analyse(df, references=df).cells if c["variant"] == "length=2")
    assert longer["n_reference"] == 3 and longer["ratio"] < 1  # against Static, which is outside Table 3


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
    assert cells["static"]["fid_geomean"] is None and sorted(cells["static"]["mixed_content"]) == [
        "aaaa/eeee",
        "bbbb/eeee",
    ]
    rows = _rows(quality_table(frame))
    assert "runs scored on different data or features" in rows["Static Sparse GAN"][0].text
    # STU-GAN (data b) against Static (a and b): no difference is computed across contents
    assert cells["stugan"]["ratio"] is None and cells["stugan"]["fid_mean"] == pytest.approx(30.5)
    plain = _store(
        tmp_path / "p.db",
        plugins,
        [({"methods": ["dense"]}, {0: 10.0, 1: 12.0}, a), ({"methods": ["static"]}, {0: 20.0, 1: 22.0}, b)],
    )
    static = next(c for c in cell_aggregates(_frame(plain, None, None, None)) if c["method"] == "static")
    assert static["ratio"] is None and static["reference_content_differs"]
    assert "scored on other data or features" in comparisons(_frame(plain, None, None, None))["Static Sparse GAN"]


# -- decisions: bold, floor, collapse, the JSON cells, a declared study ----------------------------------------
STUDY = """
name = "tiny"
title = "STU-GAN vs Static, tiny"
declared = 2026-01-01
question = "Does it differ?"
[runs]
preset = "quick"
sd = 0.5
precision = "fp32"
channels_last = false
seeds = [10, 11, 12, 13, 14, 15]
pilot_seeds = [0, 1]
[analysis]
metric = "fid"
scale = "log"
pairing = "seed"
test = "paired-t"
alpha = 0.05
correction = "holm"
equivalence = [0.8, 1.25]
sensitivity = "wilcoxon"
[[comparison]]
arch = "sngan"
sg = 0.9
method = "stugan"
reference = "static"
[[comparison]]
arch = "sngan"
sg = 0.8
method = "stugan"
reference = "static"
"""
STATIC = {0: 30.0, 1: 32.0, 10: 30.0, 11: 31.0, 12: 29.0, 13: 33.0, 14: 30.5, 15: 31.5}
BETTER = {0: 20.0, 1: 25.0, 10: 20.0, 11: 21.5, 12: 19.0, 13: 22.0, 14: 20.5, 15: 21.0}
ALIKE = {0: 31.0, 1: 30.0, 10: 30.2, 11: 31.5, 12: 28.1, 13: 33.9, 14: 30.0, 15: 32.2}


def _study_store(path, plugins, stugan_flops: float = 1.0, extra_seed: bool = False):
    stugan = {**BETTER, **({16: 21.0} if extra_seed else {})}
    return _store(
        path,
        plugins,
        [
            ({"methods": ["static"], "sg": [0.9, 0.8]}, STATIC, {}),
            ({"methods": ["stugan"]}, stugan, {"train_flops": stugan_flops}),
            ({"methods": ["stugan"], "sg": [0.8]}, ALIKE, {}),
        ],
    )


def _study(tmp_path):
    from sparsebench.analysis.study import load_study

    (tmp_path / "tiny.toml").write_text(STUDY)
    return load_study(tmp_path / "tiny.toml")


def test_bold_marks_only_a_confirmatory_win_within_the_flop_budget(tmp_path, plugins):
    df = _frame(_study_store(tmp_path / "r.db", plugins), None, None, None)
    explored = analyse(df)
    stu = next(c for c in explored.cells if c["method"] == "stugan" and c["sg"] == 0.9)
    assert stu["verdict"] == "better" and not stu["confirmatory"]  # an exploratory win is never bold
    assert not any(c.bold for _, cells in tables.quality_table(df, explored).rows for c in cells)
    declared = analyse(df, studies=[_study(tmp_path)])
    rows = _rows(tables.quality_table(df, declared))
    assert rows["STU-GAN"][0].bold and not rows["STU-GAN"][1].bold  # s_G 90 % (first column) won; 80 % did not
    costly = _frame(_study_store(tmp_path / "c.db", plugins, stugan_flops=1.2), None, None, None)
    again = analyse(costly, studies=[_study(tmp_path)])
    stu = next(c for c in again.cells if c["method"] == "stugan" and c["sg"] == 0.9)
    assert stu["verdict"] == "better" and stu["train_flops_vs_reference"] == pytest.approx(1.2)
    assert not any(c.bold for _, cells in tables.quality_table(costly, again).rows for c in cells)


def test_a_study_is_analysed_on_its_seeds_holm_adjusted_with_its_pilot_apart(tmp_path, plugins):
    from scipy import stats as sps
    from statsmodels.stats.multitest import multipletests

    df = _frame(_study_store(tmp_path / "r.db", plugins, extra_seed=True), None, None, None)
    (study,) = analyse(df, studies=[_study(tmp_path)]).studies
    better, alike = study["comparisons"]
    seeds = range(10, 16)
    logs = [[math.log(m[s] / STATIC[s]) for s in seeds] for m in (BETTER, ALIKE)]
    p = [sps.ttest_1samp(x, 0.0).pvalue for x in logs]
    assert [better["ratio"].p, alike["ratio"].p] == pytest.approx(p)
    assert [better["p_holm"], alike["p_holm"]] == pytest.approx(list(multipletests(p, method="holm")[1]))
    assert better["ratio"].pairs == 6 and better["verdict"] == "better" and alike["verdict"] != "better"
    assert better["wilcoxon_p"] == pytest.approx(sps.wilcoxon(logs[0]).pvalue)
    pilot = sps.ttest_1samp([math.log(BETTER[s] / STATIC[s]) for s in (0, 1)], 0.0)
    assert better["pilot"].pairs == 2 and better["pilot"].p == pytest.approx(pilot.pvalue)  # apart, unadjusted
    assert study["extra"] == {"sngan/0.9/stugan": [16]} and study["complete"]  # seed 16 is said, not used
    (table,) = tables.study_tables(analyse(df, studies=[_study(tmp_path)]))
    assert "holds seeds the study did not declare" in table.caption and "sngan/0.9/stugan 16" in table.caption


def test_a_cell_is_below_the_floor_only_beyond_the_floors_error_and_is_then_never_better(tmp_path, plugins):
    content = {"data_hash": "d", "extractor_hash": "e", "eval_samples": 100, "fid_floor": 10.0}
    store = _store(
        tmp_path / "r.db",
        plugins,
        [
            ({"methods": ["dense"]}, {0: 40.0, 1: 41.0, 2: 42.0}, {**content, "fid_floor_se": 1.0}),
            ({"methods": ["static"]}, {0: 5.0, 1: 5.1, 2: 5.2}, content),  # far below: interval < 10 - 1.96
            ({"methods": ["static"], "sg": [0.8]}, {0: 7.0, 1: 7.6, 2: 8.3}, content),  # under 10, not beyond
        ],
    )
    cells = {(c["method"], c["sg"]): c for c in cell_aggregates(_frame(store, None, None, None))}
    far, near = cells[("static", 0.9)], cells[("static", 0.8)]
    assert far["fid_floor_se"] == 1.0 and near["fid_floor_se"] == 1.0  # borrowed by content: the floor's own
    assert far["below_floor"] and far["verdict"] == "below the floor"  # its ratio to dense is far below 1
    assert far["fid_high"] < 10.0 - 1.96 < near["fid_high"] and not near["below_floor"]
    assert near["verdict"] == "better"


def test_collapsed_runs_are_counted_and_their_cell_shows_its_median(tmp_path, plugins):
    store = _store(tmp_path / "r.db", plugins, [({"methods": ["dense"]}, {0: 20.0, 1: 800.0, 2: 900.0}, {})])
    df = _frame(store, None, None, None)
    df["is_mean"] = [5.0 if f < 100 else 1.1 for f in df["fid"]]
    (cell,) = cell_aggregates(df)
    assert cell["collapsed"] == 2 and cell["fid_median"] == 800.0 and cell["fid_geomean_working"] == pytest.approx(20.0)
    (cells,) = _rows(quality_table(df)).values()
    assert cells[0].text == f"{cell['fid_geomean']:.2f} (n=3); 2/3 collapsed, median 800.00"
    df["is_mean"] = None  # runs that computed FID only: whether they collapsed is not known, not 0
    (cell,) = cell_aggregates(df)
    assert cell["collapsed"] is None and "collapsed" not in _rows(quality_table(df))["Dense GAN"][0].text


def test_the_json_cells_carry_the_ratio_its_interval_test_pairs_verdict_and_kind(tmp_path, plugins):
    from conftest import run_cli

    _study_store(tmp_path / "r.db", plugins)
    study = tmp_path / "studies" / "tiny.toml"
    study.parent.mkdir()
    study.write_text(STUDY)
    out = json.loads(run_cli("results", "--store", str(tmp_path / "r.db"), "--format", "json", check=True).stdout)
    stu = next(c for c in out["cells"] if c["method"] == "stugan" and c["sg"] == 0.9)
    assert stu["test"] == "paired t (log)" and stu["pairs"] == 6 and stu["confirmatory"] is True
    assert stu["ratio_low"] < stu["ratio"] < stu["ratio_high"] < 1 and stu["verdict"] == "better"
    assert "detectable_diff" not in stu and "diff" not in stu and stu["study"] == "tiny"
    static = next(c for c in out["cells"] if c["method"] == "static" and c["sg"] == 0.9)
    assert static["confirmatory"] is False and static["reference"] == "dense" and static["ratio"] is None
    assert [s["name"] for s in out["studies"]] == ["tiny"] and out["planning"]["sngan"]["seeds_for_20pct"] >= 2
    assert all("cell" in r and "settings" in r for r in out["runs"])


def test_a_comparison_never_joins_two_scopes_and_a_scope_off_the_presets_is_named(tmp_path, plugins):
    """STU-GAN at conv+linear has no Static reference at conv: refused, with the scope said; against the dense
    GAN (no masks) every scope compares. At the small preset every method runs at conv, so ADAPT's own scope
    there is a row of its own, labelled."""
    store = _store(
        tmp_path / "r.db",
        plugins,
        [
            ({"methods": ["dense"]}, {0: 40.0, 1: 41.0}, {}),
            ({"methods": ["static"]}, {0: 30.0, 1: 31.0}, {}),
            ({"methods": ["stugan"], "scope": "conv+linear"}, {0: 20.0, 1: 21.0}, {}),
            ({"methods": ["static"], "scope": "conv+linear"}, {0: 35.0, 1: 36.0}, {}),
        ],
    )
    df = _frame(store, None, None, None)
    cells = {(c["method"], c["variant"]): c for c in cell_aggregates(df)}
    wide = cells[("stugan", "scope=conv+linear")]
    assert wide["scope"] == "conv+linear" and wide["n_reference"] == 2 and wide["pairs"] == 2  # Static at its scope
    assert cells[("static", "scope=conv+linear")]["pairs"] == 2  # against the dense GAN: it has no masks
    df = df[~((df["method"] == "static") & (df["scope"] == "conv+linear"))]
    row = comparisons(df)["STU-GAN [scope=conv+linear]"]
    assert row[3] == "conv+linear" and "no Static Sparse GAN run with preset quick, scope=conv+linear" in row
    small = _store(
        tmp_path / "s.db", plugins, [({"methods": ["adapt"], "preset": "small", "sd": [0.9]}, {0: 50.0}, {})]
    )
    own = _store(
        tmp_path / "o.db",
        plugins,
        [({"methods": ["adapt"], "preset": "small", "sd": [0.9], "scope": "weights"}, {0: 60.0}, {})],
    )  # noqa: E501
    assert [n[0] for n, _ in quality_table(_frame(small, None, None, None)).rows] == ["ADAPT"]
    assert [n[0] for n, _ in quality_table(_frame(own, None, None, None)).rows] == ["ADAPT [scope=weights]"]
