"""The report's table of the counters methods declare (`Method.result_columns`)."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from sparsebench.report.counters import counters_table
from sparsebench.report.render import markdown


def _method(name, order, columns):
    return SimpleNamespace(name=name, order=order, title=name.upper(), result_columns=columns)


def _frame(rows):
    base = {"arch": "sngan", "sg": 0.9, "sd": 0.5, "status": "done", "decisions": None, "source": None}
    return pd.DataFrame([{**base, **r} for r in rows])


METHODS = {
    "plain": _method("plain", 1, ()),
    "counting": _method("counting", 2, ("decisions", "source")),  # `source` holds a run id, not a number
}


def test_a_declared_numeric_column_is_tabulated_per_cell_with_its_range():
    df = _frame(
        [
            {"method": "counting", "label": "COUNTING", "decisions": 3, "source": "abc"},
            {"method": "counting", "label": "COUNTING", "decisions": 5, "source": "def"},
            {"method": "counting", "label": "COUNTING", "decisions": 99, "status": "failed"},
            {"method": "counting", "label": "COUNTING", "sg": 0.95, "decisions": 2},
            {"method": "plain", "label": "PLAIN"},
        ]
    )
    table = counters_table(df, METHODS)
    assert [label for _, label in table.columns] == ["runs", "decisions"]  # no column of text, none for `plain`
    got = [(head, [c.text for c in cells]) for head, cells in table.rows]
    assert got == [
        (["COUNTING", "sngan", "95", "50"], ["1", "2"]),
        (["COUNTING", "sngan", "90", "50"], ["2", "4 [3-5]"]),  # the failed run is not counted
    ]
    assert "| 4 \\[3-5\\] |" in markdown(table)


def test_no_table_where_no_method_declares_a_number():
    df = _frame([{"method": "plain", "label": "PLAIN"}, {"method": "counting", "label": "COUNTING"}])
    assert counters_table(df, METHODS) is None


def test_a_run_id_of_digits_is_text_and_a_large_mean_reads_plainly():
    df = _frame(
        [
            {"method": "counting", "label": "COUNTING", "decisions": 1234, "source": "1234567890123456"},
            {"method": "counting", "label": "COUNTING", "decisions": 1235, "source": "12e4567890abcdef"},
        ]
    )
    table = counters_table(df, METHODS)
    assert [label for _, label in table.columns] == ["runs", "decisions"]
    assert [c.text for c in table.rows[0][1]] == ["2", "1234.5 [1234-1235]"]
