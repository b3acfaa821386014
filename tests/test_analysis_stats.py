"""The statistics of decisions that hold (sparsebench.analysis.stats) against scipy and statsmodels, and by hand
on a small case; the FID floor's jackknife standard error (sparsebench.metrics.floor) on synthetic Gaussians."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower
from statsmodels.stats.weightstats import ttost_ind, ttost_paired
from torch_fidelity.metric_fid import fid_features_to_statistics

from sparsebench.analysis.stats import (
    ALPHA,
    MARGIN,
    PAIRED,
    WELCH,
    Ratio,
    below_floor,
    compare,
    holm,
    pooled_sd_log,
    seeds_for_ratio,
    summarise,
    verdict,
    wilcoxon_p,
)
from sparsebench.metrics.floor import Floor, fid_against, jackknife_floor

LOW, UPP = math.log(MARGIN[0]), math.log(MARGIN[1])


def fids(rng: np.random.Generator, seeds, level: float, sd: float = 0.1) -> dict[int, float]:
    return {s: float(level * math.exp(sd * rng.standard_normal())) for s in seeds}


# --- compare: the paired t test on log FID ---------------------------------------------------------------------


def test_the_ratio_and_its_intervals_by_hand_on_three_pairs():
    method = {1: 12.0, 2: 10.0, 3: 9.0}
    reference = {1: 15.0, 2: 11.0, 3: 10.0}
    # per-seed log ratios: log 0.8, log(10/11), log 0.9
    d = [math.log(12 / 15), math.log(10 / 11), math.log(9 / 10)]  # -0.223144, -0.095310, -0.105361
    mean = sum(d) / 3  # -0.141271
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)  # 0.071081
    se = sd / math.sqrt(3)  # 0.041039
    t975, t95 = 4.302652729749462, 2.9199855803537242  # t quantiles at 0.975 and 0.95, 2 degrees of freedom
    r = compare(method, reference)
    assert r is not None and r.test == PAIRED and (r.pairs, r.df) == (3, 2.0)
    assert r.ratio == pytest.approx(math.exp(mean)) and r.ratio == pytest.approx(0.868254, abs=1e-6)
    assert (r.low, r.high) == pytest.approx((math.exp(mean - t975 * se), math.exp(mean + t975 * se)))
    assert (r.low, r.high) == pytest.approx((0.727714, 1.035935), abs=1e-6)
    assert (r.low90, r.high90) == pytest.approx((0.770201, 0.978789), abs=1e-6)  # exp(mean -+ t95 se)
    assert (r.low90, r.high90) == pytest.approx((math.exp(mean - t95 * se), math.exp(mean + t95 * se)))
    assert r.sd_log == pytest.approx(sd) and r.p == pytest.approx(0.075016, abs=1e-6)
    # the 95 % interval spans 1, the 90 % one lies under 1 but not inside [0.8, 1.25]: neither shown
    assert verdict(r) == "undecided"


def test_paired_matches_scipy_and_statsmodels_and_counts_the_unpaired_seeds():
    rng = np.random.default_rng(3)
    method = fids(rng, range(0, 10), 10.0)
    reference = fids(rng, [*range(0, 8), 20, 21, 22], 11.0)  # seeds 8, 9 only in method, 20-22 in reference
    r = compare(method, reference)
    assert r is not None and r.test == PAIRED
    assert (r.pairs, r.n_method, r.n_reference, r.unpaired_method, r.unpaired_reference) == (8, 8, 8, 2, 3)
    a = np.log([method[s] for s in range(8)])
    b = np.log([reference[s] for s in range(8)])
    expected = scipy_stats.ttest_rel(a, b)
    assert r.p == pytest.approx(expected.pvalue, rel=1e-9) and r.df == expected.df == 7
    assert (r.low, r.high) == pytest.approx(np.exp(expected.confidence_interval(0.95)), rel=1e-9)
    assert (r.low90, r.high90) == pytest.approx(np.exp(expected.confidence_interval(0.90)), rel=1e-9)
    assert r.ratio == pytest.approx(math.exp(float((a - b).mean())))
    assert r.sd_log == pytest.approx(float((a - b).std(ddof=1)))
    p_tost, _, _ = ttost_paired(a, b, LOW, UPP)
    assert r.p_equivalence == pytest.approx(float(p_tost), rel=1e-9)
    # and where TOST cannot reject: a ratio near 1.3, whose TOST p is the upper one-sided test's
    far = {s: v * 1.3 * math.exp(0.1 * rng.standard_normal()) for s, v in reference.items()}
    f = compare(far, reference)
    a, b = np.log([far[s] for s in reference]), np.log(list(reference.values()))
    assert f is not None and f.p_equivalence > 0.5
    assert f.p_equivalence == pytest.approx(float(ttost_paired(a, b, LOW, UPP)[0]), rel=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_the_p_values_and_the_intervals_agree(seed):
    """p < alpha exactly when the 95 % interval excludes 1, TOST p < alpha exactly when the 90 % interval lies
    inside the margin: the verdict may read either."""
    rng = np.random.default_rng(seed)
    n = 3 + seed
    reference = fids(rng, range(n), 10.0)
    method = {s: v * math.exp(0.12 * (seed - 2) / 2 + 0.06 * rng.standard_normal()) for s, v in reference.items()}
    r = compare(method, reference)
    assert r is not None
    assert (r.p < ALPHA) == (r.high < 1 or r.low > 1)
    assert (r.p_equivalence < ALPHA) == (MARGIN[0] < r.low90 and r.high90 < MARGIN[1])
    assert verdict(r) == verdict(r, p=r.p, p_equivalence=r.p_equivalence)


def test_welch_when_too_few_seeds_are_shared_matches_scipy_and_statsmodels():
    rng = np.random.default_rng(5)
    method = fids(rng, [0, 1, 2, 3, 4], 10.0, sd=0.05)
    reference = fids(rng, [4, 5, 6, 7], 12.0, sd=0.2)  # one shared seed: fewer than min_pairs
    r = compare(method, reference)
    assert r is not None and r.test == WELCH
    assert (r.pairs, r.n_method, r.n_reference, r.unpaired_method, r.unpaired_reference) == (0, 5, 4, 0, 0)
    a, b = np.log(list(method.values())), np.log(list(reference.values()))
    expected = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert r.p == pytest.approx(expected.pvalue, rel=1e-9) and r.df == pytest.approx(expected.df, rel=1e-9)
    assert r.df != 7  # Welch-Satterthwaite, not n1 + n2 - 2
    assert (r.low, r.high) == pytest.approx(np.exp(expected.confidence_interval(0.95)), rel=1e-9)
    assert (r.low90, r.high90) == pytest.approx(np.exp(expected.confidence_interval(0.90)), rel=1e-9)
    p_tost, _, _ = ttost_ind(a, b, LOW, UPP, usevar="unequal")
    assert r.p_equivalence == pytest.approx(float(p_tost), rel=1e-9)
    pooled = math.sqrt((4 * a.var(ddof=1) + 3 * b.var(ddof=1)) / 7)
    assert r.sd_log == pytest.approx(pooled)
    # min_pairs decides: two shared seeds are paired by default, not at min_pairs=3
    shared = {**reference, 0: 11.0, 1: 11.5}
    assert compare(method, shared).test == PAIRED and compare(method, shared).pairs == 3  # type: ignore[union-attr]
    assert compare(method, shared, min_pairs=4).test == WELCH  # type: ignore[union-attr]


def test_nothing_to_test_gives_none():
    assert compare({0: 10.0}, {1: 11.0}) is None  # one value per arm, nothing shared
    assert compare({0: 10.0, 1: 11.0}, {5: 11.0}) is None  # Welch needs two values in each arm
    assert compare({0: 10.0}, {0: 11.0}) is None  # one pair has no spread
    assert compare({0: 10.0}, {0: 11.0}, min_pairs=1) is None


def test_zero_variance_is_decided_without_warnings():
    reference = {0: 10.0, 1: 17.3, 2: 23.9, 3: 8.1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        double = compare({s: 2 * v for s, v in reference.items()}, reference)
        same = compare(dict(reference), reference)
        slightly = compare({s: 1.1 * v for s, v in reference.items()}, reference)
        welch = compare({0: 6.0, 1: 6.0}, {2: 4.0, 3: 4.0})
    assert double is not None and double.ratio == pytest.approx(2.0)
    assert (double.low, double.high, double.low90, double.high90) == pytest.approx((2.0,) * 4)
    assert (double.p, double.p_equivalence, double.sd_log) == (0.0, 1.0, 0.0) and verdict(double) == "worse"
    assert same is not None and (same.ratio, same.p, same.p_equivalence) == (1.0, 1.0, 0.0)
    assert verdict(same) == "equivalent within 20 %"
    assert slightly is not None and (slightly.p, slightly.p_equivalence) == (0.0, 0.0)
    assert welch is not None and welch.test == WELCH and welch.ratio == pytest.approx(1.5) and welch.p == 0.0
    assert welch.p_equivalence == 1.0 and (welch.low, welch.high) == pytest.approx((1.5, 1.5))


@pytest.mark.parametrize("bad", [0.0, -3.0, float("nan"), float("inf")])
def test_a_fid_that_has_no_log_is_an_error(bad):
    with pytest.raises(ValueError, match="seed 2 is .*finite and > 0"):
        compare({0: 10.0, 1: 11.0, 2: bad}, {0: 10.0, 1: 12.0, 2: 11.0})
    with pytest.raises(ValueError, match="reference's FID at seed 1"):
        compare({0: 10.0, 1: 11.0}, {0: 10.0, 1: bad})


# --- Holm, Wilcoxon --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "p",
    [
        [0.01, 0.04, 0.03, 0.005],
        [0.2, 0.2, 0.01, 0.9, 0.011],  # ties
        [0.04],
        [0.5, 0.6, 1.0, 0.0],
        list(np.random.default_rng(0).uniform(0, 0.1, 12)),
    ],
)
def test_holm_matches_statsmodels(p):
    expected = multipletests(p, method="holm")[1]
    assert holm(p) == pytest.approx(list(expected), abs=1e-15)


def test_holm_is_monotone_capped_and_checks_its_input():
    adjusted = holm([0.01, 0.02, 0.5])  # 0.03, 0.04, 0.5 -> monotone: 0.03, 0.04, 0.5
    assert adjusted == pytest.approx([0.03, 0.04, 0.5])
    assert holm([0.3, 0.02, 0.2]) == pytest.approx([0.4, 0.06, 0.4])  # 0.06, 0.4, 0.3 -> 0.3 raised to 0.4
    assert holm([0.6, 0.7]) == [1.0, 1.0] and holm([]) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.1, float("nan")])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([1.5])


@pytest.mark.parametrize(
    "x",
    [
        [0.1, -0.05, 0.2, 0.15, 0.08, -0.01, 0.3],  # exact null distribution
        [0.1, 0.0, 0.2, 0.15, -0.08, 0.05],  # a zero: dropped
        [0.1, 0.1, 0.2, -0.2, 0.05, 0.3, 0.12, 0.07],  # ties
        list(np.random.default_rng(1).normal(0.05, 0.1, 24)),  # the study's 24 seeds
        [0.1, -0.2],
    ],
)
def test_wilcoxon_matches_scipy(x):
    assert wilcoxon_p(x) == pytest.approx(float(scipy_stats.wilcoxon(x).pvalue), rel=1e-12)


def test_wilcoxon_needs_two_nonzero_values():
    assert wilcoxon_p([]) is None and wilcoxon_p([0.3]) is None and wilcoxon_p([0.0, 0.2, 0.0]) is None
    assert wilcoxon_p([0.1, 0.2, 0.3]) == pytest.approx(0.25)  # exact: 2 of the 8 sign patterns are as extreme
    with pytest.raises(ValueError):
        wilcoxon_p([0.1, float("nan")])


# --- verdicts --------------------------------------------------------------------------------------------------

BASE = Ratio(1.0, 0.9, 1.1, 0.92, 1.08, 0.5, 0.01, PAIRED, 8, 8, 8, 0, 0, 0.1, 7.0)


def with_interval(ratio, low, high, low90, high90) -> Ratio:
    return dataclasses.replace(BASE, ratio=ratio, low=low, high=high, low90=low90, high90=high90)


def test_each_verdict_on_each_side_of_its_rule():
    assert verdict(with_interval(0.8, 0.7, 0.99, 0.72, 0.95)) == "better"
    assert verdict(with_interval(0.85, 0.7, 1.01, 0.72, 0.97)) == "undecided"  # 95 % interval reaches 1
    assert verdict(with_interval(1.3, 1.01, 1.6, 1.05, 1.5)) == "worse"
    assert verdict(with_interval(1.2, 0.99, 1.6, 1.05, 1.5)) == "undecided"
    assert verdict(with_interval(1.0, 0.82, 1.22, 0.85, 1.2)) == "equivalent within 20 %"
    assert verdict(with_interval(1.0, 0.78, 1.27, 0.81, 1.26)) == "undecided"  # 90 % interval leaves the margin
    assert verdict(with_interval(1.0, 0.75, 1.2, 0.79, 1.15)) == "undecided"
    assert verdict(with_interval(1.0, 0.9, 1.1, 0.8, 1.1)) == "undecided"  # on the margin is not inside it


def test_below_the_floor_is_never_better():
    better = with_interval(0.8, 0.7, 0.99, 0.72, 0.95)
    assert verdict(better, below_floor=True) == "below the floor"
    assert verdict(better, below_floor=True, p=0.001, p_equivalence=0.9) == "below the floor"
    assert verdict(with_interval(1.0, 0.82, 1.22, 0.85, 1.2), below_floor=True) == "equivalent within 20 %"
    assert verdict(with_interval(1.3, 1.01, 1.6, 1.05, 1.5), below_floor=True) == "worse"


def test_adjusted_p_values_decide_when_given():
    wide = with_interval(0.8, 0.6, 1.05, 0.65, 0.99)  # unadjusted: undecided
    assert verdict(wide) == "undecided"
    assert verdict(wide, p=0.049) == "better" and verdict(wide, p=0.05) == "undecided"
    narrow = with_interval(0.8, 0.7, 0.95, 0.72, 0.9)  # unadjusted better, Holm-adjusted not
    assert verdict(narrow, p=0.2) == "undecided"
    assert verdict(dataclasses.replace(narrow, ratio=1.2), p=0.01) == "worse"
    inside = with_interval(1.0, 0.82, 1.22, 0.85, 1.2)
    assert verdict(inside, p=0.6, p_equivalence=0.08) == "undecided"  # Holm took equivalence away
    assert verdict(inside, p=0.6, p_equivalence=0.01) == "equivalent within 20 %"
    assert verdict(inside, alpha=0.1, p=0.6, p_equivalence=0.08) == "equivalent within 20 %"
    with pytest.raises(ValueError, match="pass p and p_equivalence"):
        verdict(inside, alpha=0.1)


# --- summaries, planning, the floor ----------------------------------------------------------------------------


def test_summarise_gives_the_geomean_its_interval_and_the_raw_figures():
    s = summarise([10.0, 12.0, 14.0, 300.0])
    assert s.n == 4
    assert s.geomean == pytest.approx((10 * 12 * 14 * 300) ** 0.25)
    assert (
        s.median == 13.0
        and s.mean == pytest.approx(84.0)
        and s.sd == pytest.approx(float(np.std([10, 12, 14, 300], ddof=1)))
    )
    logs = np.log([10.0, 12.0, 14.0, 300.0])
    half = scipy_stats.t.ppf(0.975, 3) * logs.std(ddof=1) / 2
    assert (s.low, s.high) == pytest.approx((math.exp(logs.mean() - half), math.exp(logs.mean() + half)))
    one = summarise([9.0])
    assert (one.n, one.geomean, one.low, one.high, one.sd) == (1, pytest.approx(9.0), None, None, None)
    for bad in ([], [10.0, 0.0], [10.0, -1.0], [10.0, float("nan")], [float("inf"), 3.0]):
        with pytest.raises(ValueError):
            summarise(bad)


@pytest.mark.parametrize("sd_log", [0.05, 0.1, 0.2, 0.3])
@pytest.mark.parametrize("ratio", [0.8, 0.9, 1.25])
def test_seeds_for_ratio_matches_statsmodels(sd_log, ratio):
    effect = abs(math.log(ratio)) / sd_log
    paired = TTestPower().solve_power(effect_size=effect, alpha=0.05, power=0.8, alternative="two-sided")
    unpaired = TTestIndPower().solve_power(effect_size=effect, alpha=0.05, power=0.8, alternative="two-sided")
    assert seeds_for_ratio(sd_log, ratio) == max(2, math.ceil(paired))
    assert seeds_for_ratio(sd_log, ratio, paired=False) == max(2, math.ceil(unpaired))


def test_seeds_for_ratio_edges():
    assert seeds_for_ratio(0.1, 0.8) == 4 and seeds_for_ratio(0.1, 0.8, power=0.95) > 4
    assert seeds_for_ratio(0.3, 0.95, max_seeds=100) is None  # needs about 271
    assert seeds_for_ratio(0.3, 0.95) == 271
    assert seeds_for_ratio(0.1, 1.0) is None and seeds_for_ratio(0.0, 0.9) == 2
    with pytest.raises(ValueError):
        seeds_for_ratio(-0.1)
    with pytest.raises(ValueError):
        seeds_for_ratio(0.1, ratio=0.0)


def test_pooled_sd_log_by_hand():
    # deviations from each group's own mean: [1, 2, 3] -> ss 2 (df 2), [10, 14] -> ss 8 (df 1), [5] adds nothing
    sd, df = pooled_sd_log([[1.0, 2.0, 3.0], [10.0, 14.0], [5.0]])  # type: ignore[misc]
    assert df == 3 and sd == pytest.approx(math.sqrt(10 / 3))
    assert pooled_sd_log([[1.0], [2.0]]) is None and pooled_sd_log([]) is None
    with pytest.raises(ValueError):
        pooled_sd_log([[1.0, float("nan")]])


def test_below_floor_on_each_side():
    cell = summarise([4.6, 4.8, 5.0])  # 95 % interval of the geometric mean about (4.33, 5.32)
    assert cell.high is not None and 5.3 < cell.high < 5.35
    assert below_floor(cell, 6.0, 0.2)  # floor's lower bound 6 - 0.392 = 5.61: above the cell's interval
    assert not below_floor(cell, 6.0, 0.5)  # 6 - 0.98 = 5.02: inside it
    assert below_floor(cell, 5.4, None) and not below_floor(cell, 5.3, None)  # se None: the floor as exact
    assert below_floor(cell, 6.0, 0.3) and not below_floor(cell, 6.0, 0.3, z=3.0)  # 6 - 0.588 = 5.41; 6 - 0.9 = 5.1
    assert not below_floor(summarise([1.0]), 6.0, 0.1)  # one seed is never flagged


# --- the floor's standard error --------------------------------------------------------------------------------


def test_the_floor_se_is_the_jackknife_formula_by_hand():
    rng = np.random.default_rng(7)
    features = torch.from_numpy(rng.standard_normal((12, 3)))
    reference = fid_features_to_statistics(torch.from_numpy(rng.normal(0.3, 1.3, (2000, 3))))
    floor = jackknife_floor(features, reference)
    left_out = np.array([fid_against(torch.cat([features[:i], features[i + 1 :]]), reference) for i in range(12)])
    se = math.sqrt(11 / 12 * float(((left_out - left_out.mean()) ** 2).sum()))
    assert floor.se == pytest.approx(se, rel=1e-6)
    full = fid_against(features, reference)
    assert floor.fid_inf == pytest.approx(12 * full - 11 * left_out.mean(), rel=1e-6)  # Quenouille's estimate
    assert floor.interval(None) == pytest.approx((floor.fid_inf - 1.96 * se, floor.fid_inf + 1.96 * se))
    lo, hi = floor.interval(5000, z=1.0)
    assert (lo + hi) / 2 == pytest.approx(floor.at(5000)) and hi - lo == pytest.approx(2 * se)
    assert Floor(1.0, 2.0, 3, 3).se == 0.0  # the old constructor still works


def test_the_floor_se_matches_the_spread_of_fid_inf_across_heldout_draws():
    """30 held-out splits of 300 features from N(0, I) in 8 dimensions against fixed statistics of a large draw
    from N(0.3, 1.3^2 I). The reference differs from the held-out distribution on purpose: at distance 0 FID is
    quadratic in the noise and the jackknife overestimates its spread (by 1.5-1.8x in a trial); here the
    mean SE and the empirical sd agree to a few % (0.125 vs 0.125)."""
    rng = np.random.default_rng(0)
    reference = fid_features_to_statistics(torch.from_numpy(rng.normal(0.3, 1.3, (50_000, 8))))
    floors = [
        jackknife_floor(torch.from_numpy(np.random.default_rng(100 + i).standard_normal((300, 8))), reference)
        for i in range(30)
    ]
    spread = float(np.std([f.fid_inf for f in floors], ddof=1))
    se = float(np.mean([f.se for f in floors]))
    assert 1 / 1.5 < se / spread < 1.5  # with 30 draws the sd itself is uncertain by about 13 %
    assert max(f.se for f in floors) / min(f.se for f in floors) < 1.5  # each draw's SE, not only their mean
