"""Declared study files (sparsebench.analysis.study): the first study loads as declared, every way a file can
be wrong is a one-line SparsebenchError naming what is allowed, and the store's seeds are checked against the
declared ones."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from sparsebench import SparsebenchError
from sparsebench.analysis.study import Comparison, load_studies, load_study, seed_check

STUDY = Path(__file__).resolve().parents[1] / "reports" / "small" / "studies" / "stugan-vs-static.toml"

VALID = """\
name = "tiny"
title = "A tiny study"
declared = 2026-01-02
question = "Is A different from B?"

[runs]
preset = "quick"
sd = 0.5
precision = "fp32"
channels_last = false
seeds = [3, 4, 5]
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
arch = "biggan"
sg = 0.9
method = "stugan"
reference = "static"
"""


def write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_declared_study_loads():
    study = load_study(STUDY)
    assert study.name == "stugan-vs-static" and study.declared == datetime.date(2026, 12, 6)
    assert study.seeds == tuple(range(10, 34)) and len(study.seeds) == 24
    assert study.pilot_seeds == tuple(range(10))
    assert (study.metric, study.scale, study.pairing, study.test) == ("fid", "log", "seed", "paired-t")
    assert (study.alpha, study.correction, study.equivalence, study.sensitivity) == (
        0.05,
        "holm",
        (0.8, 1.25),
        "wilcoxon",
    )
    assert study.runs == {
        "preset": "small",
        "sd": 0.5,
        "precision": "bf16",
        "channels_last": True,
        "seeds": tuple(range(10, 34)),
        "pilot_seeds": tuple(range(10)),
    }
    assert study.comparisons == tuple(
        Comparison(arch, sg, "stugan", "static") for arch in ("biggan", "sngan") for sg in (0.95, 0.9)
    )
    assert study.path == STUDY and "STU-GAN" in study.title and study.question.startswith("Does STU-GAN")


def test_a_valid_small_file_loads_and_pilot_seeds_are_optional(tmp_path):
    study = load_study(write(tmp_path, VALID))
    assert study.seeds == (3, 4, 5) and study.pilot_seeds == (0, 1) and len(study.comparisons) == 2
    no_pilot = load_study(write(tmp_path, VALID.replace("pilot_seeds = [0, 1]\n", "")))
    assert no_pilot.pilot_seeds == () and no_pilot.runs["pilot_seeds"] == ()


DUPLICATE = '\n[[comparison]]\narch = "sngan"\nsg = 0.9\nmethod = "stugan"\nreference = "static"\n'
BAD = [
    # (what to replace, by what, the message)
    (
        'title = "A tiny study"',
        'title = "A tiny study"\ncolour = "red"',
        r"unknown key 'colour' in the file; allowed: name",
    ),
    ('sensitivity = "wilcoxon"', 'sensitivity = "wilcoxon"\ntails = 2', r"unknown key 'tails' in \[analysis\]"),
    ("channels_last = false", "channels_last = false\nsteps = 3", r"unknown key 'steps' in \[runs\]; allowed: preset"),
    ('reference = "static"', 'reference = "static"\nsd = 0.5', r"unknown key 'sd' in \[\[comparison\]\] 1"),
    ('title = "A tiny study"\n', "", r"the file lacks 'title'"),
    ("alpha = 0.05\n", "", r"\[analysis\] lacks 'alpha'"),
    ('name = "tiny"', "name = 3", r"name must be a non-empty string, got int 3"),
    ('name = "tiny"', 'name = ""', r"name must be a non-empty string"),
    ("declared = 2026-01-02", 'declared = "2026-01-02"', r"declared must be a TOML date such as 2026-12-06"),
    ("declared = 2026-01-02", "declared = 2026-01-02T10:00:00", r"declared must be a TOML date"),
    ("channels_last = false", 'channels_last = "no"', r"channels_last must be true or false"),
    ("sd = 0.5", "sd = true", r"runs.sd must be a number"),
    ("sd = 0.5", "sd = 1.0", r"runs.sd must lie in \[0, 1\)"),
    ("seeds = [3, 4, 5]", 'seeds = ["3"]', r"runs.seeds must be a list of integers >= 0"),
    ("seeds = [3, 4, 5]", "seeds = [3, -4]", r"runs.seeds must be a list of integers >= 0"),
    ("seeds = [3, 4, 5]", "seeds = []", r"runs.seeds is empty"),
    ("seeds = [3, 4, 5]", "seeds = [3, 4, 3]", r"runs.seeds lists seed 3 twice"),
    ("alpha = 0.05", 'alpha = "0.05"', r"alpha must be a number, got str"),
    ("alpha = 0.05", "alpha = 1.5", r"alpha must lie in \(0, 1\)"),
    ('test = "paired-t"', 'test = "welch"', r"test = 'welch' is not implemented; allowed: 'paired-t'"),
    (
        'correction = "holm"',
        'correction = "bonferroni"',
        r"correction = 'bonferroni' is not implemented; allowed: 'holm'",
    ),
    (
        'sensitivity = "wilcoxon"',
        'sensitivity = "sign"',
        r"sensitivity = 'sign' is not implemented; allowed: 'wilcoxon'",
    ),
    ('scale = "log"', 'scale = "linear"', r"scale = 'linear' is not implemented; allowed: 'log'"),
    ('metric = "fid"', 'metric = "kid"', r"metric = 'kid' is not implemented; allowed: 'fid'"),
    ('pairing = "seed"', 'pairing = "none"', r"pairing = 'none' is not implemented; allowed: 'seed'"),
    ("seeds = [3, 4, 5]", "seeds = [1, 3, 4]", r"seed 1 is both in runs.seeds and runs.pilot_seeds"),
    ("equivalence = [0.8, 1.25]", "equivalence = [1.25, 0.8]", r"equivalence must be two increasing positive"),
    ("equivalence = [0.8, 1.25]", "equivalence = [0.8]", r"equivalence must be two increasing positive"),
    ("equivalence = [0.8, 1.25]", "equivalence = [0.0, 1.25]", r"equivalence must be two increasing positive"),
    ("equivalence = [0.8, 1.25]", "equivalence = 1.25", r"equivalence must be two increasing positive"),
    ("equivalence = [0.8, 1.25]", 'equivalence = ["0.8", 1.25]', r"equivalence must be two increasing positive"),
    ('arch = "biggan"', 'arch = "sngan"', r"\[\[comparison\]\] 2 repeats \[\[comparison\]\] 1; each one once"),
    ('method = "stugan"', 'method = "static"', r"\[\[comparison\]\] 1 compares 'static' with itself"),
    ("sg = 0.9\nmethod", 'sg = "0.9"\nmethod', r"\[\[comparison\]\] 1: sg must be a number"),
    ('name = "tiny"', 'name = "tiny', r"is not valid TOML"),
]


@pytest.mark.parametrize("old, new, message", BAD, ids=[b[2][:40] for b in BAD])
def test_each_error_is_one_line_and_says_what_is_allowed(tmp_path, old, new, message):
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(SparsebenchError, match=message) as caught:
        load_study(path)
    text = str(caught.value)
    assert "\n" not in text and text.startswith(f"study {path}: ")


def test_a_study_without_comparisons_and_a_missing_file_are_errors(tmp_path):
    header = VALID.split("[[comparison]]")[0]
    with pytest.raises(SparsebenchError, match="declares no comparison; add at least one"):
        load_study(write(tmp_path, header))
    with pytest.raises(SparsebenchError, match="declares no comparison"):
        load_study(write(tmp_path, "comparison = []\n" + header))
    with pytest.raises(SparsebenchError, match=r"comparison must be \[\[comparison\]\] tables"):
        load_study(write(tmp_path, header + '[comparison]\narch = "sngan"\n'))
    with pytest.raises(SparsebenchError, match=r"\[runs\] must be a table, got int 3"):
        load_study(write(tmp_path, "runs = 3\n" + VALID[: VALID.index("[runs]")] + VALID[VALID.index("[analysis]") :]))
    with pytest.raises(SparsebenchError, match="cannot be read"):
        load_study(tmp_path / "absent.toml")
    with pytest.raises(SparsebenchError, match=r"repeats"):
        load_study(write(tmp_path, VALID + DUPLICATE))


def test_load_studies_reads_every_file_sorted_by_name(tmp_path):
    assert load_studies(tmp_path) == [] and load_studies(tmp_path / "absent") == []
    write(tmp_path, VALID.replace('name = "tiny"', 'name = "zeta"'), "a.toml")
    write(tmp_path, VALID.replace('name = "tiny"', 'name = "alpha"'), "b.toml")
    write(tmp_path, "not a study", "notes.txt")
    assert [s.name for s in load_studies(tmp_path)] == ["alpha", "zeta"]
    write(tmp_path, VALID.replace('name = "tiny"', 'name = "alpha"'), "c.toml")
    with pytest.raises(SparsebenchError, match="both named 'alpha'"):
        load_studies(tmp_path)
    assert [s.name for s in load_studies(STUDY.parent)] == ["stugan-vs-static"]


def test_seed_check_names_missing_and_undeclared_seeds():
    study = load_study(STUDY)
    declared = set(range(10, 34))
    stored = {
        ("biggan", 0.95, "stugan"): declared | {0, 1, 2},  # pilot seeds stored: expected, not "extra"
        ("biggan", 0.95, "static"): declared - {17} | {40, 41},  # one failed, two never declared
        ("biggan", 0.9, "stugan"): declared,
        ("biggan", 0.9, "static"): declared,
        ("sngan", 0.3 * 3, "stugan"): declared,  # 0.8999999999999999: the same s_G as the study's 0.9
        ("sngan", 0.9, "static"): declared,
        ("sngan", 0.95, "stugan"): declared,
        ("sngan", 0.5, "stugan"): {99},  # an arm the study does not read
    }
    check = seed_check(study, stored)
    assert len(check["arms"]) == 8 and check["arms"][:2] == [("biggan", 0.95, "stugan"), ("biggan", 0.95, "static")]
    assert check["missing"] == {("biggan", 0.95, "static"): [17], ("sngan", 0.95, "static"): sorted(declared)}
    assert check["extra"] == {("biggan", 0.95, "static"): [40, 41]}
    assert check["complete"] is False
    full = {arm: set(declared) for arm in check["arms"]}
    assert seed_check(study, full) == {"arms": check["arms"], "missing": {}, "extra": {}, "complete": True}
