"""The statistics of decisions that hold: paired comparisons on the ratio scale, equivalence, Holm, sensitivity.

Why the log scale: FID is positive and its spread grows with its level (a cell at FID 40 varies more across
seeds than one at 8), so differences of FIDs mix a method's effect with the cell's level. A ratio
method / reference is comparable across cells, and its log is close to symmetric: the comparison is the mean of
per-seed log ratios, reported back as a geometric-mean ratio with its interval.

Why paired: the two arms of a seed share the initial weights, the data order and the evaluation samples, so
the per-seed log ratio cancels what the seed does to both. A seed run in one arm only is left out of the
paired test and counted (`Ratio.unpaired_method`, `Ratio.unpaired_reference`); Welch's test on log FID is the
fallback only where fewer than `min_pairs` seeds are shared.

Why equivalence: "no significant difference" is not "no difference". Two one-sided tests (TOST) against the
margin `MARGIN` (a ratio within 0.8 and 1.25, symmetric on the log scale) say when a difference of more than
20 % is ruled out; their p is the larger of the two, and it is below alpha exactly when the 90 % interval
lies inside the margin.

Why Holm: a declared (confirmatory) study makes several comparisons at a family-wise alpha; Holm's step-down
controls it without assumptions and is uniformly more powerful than Bonferroni. Wilcoxon's signed-rank test
on the same per-seed log ratios is the sensitivity analysis: reported beside the t test, it decides nothing.

Everything here is a pure function of numbers (numpy and scipy only).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
MARGIN = (0.8, 1.25)  # equivalence margin on the ratio: symmetric on the log scale (log 1.25 = -log 0.8)
POWER = 0.80
_TINY = 1e-12  # a spread of log values below this is no spread: the ratios agree to 12 digits

PAIRED = "paired t (log)"
WELCH = "Welch t (log)"


@dataclass(frozen=True)
class Ratio:
    """A method's FIDs against a reference's, on the ratio scale (lower FID is better: a ratio < 1 favours the
    method). Intervals and p values are those of a t test on log FID; `low`/`high` at 95 %, `low90`/`high90`
    at 90 % (the interval of the equivalence test at alpha 0.05)."""

    ratio: float  # geometric-mean ratio method / reference: exp(mean log ratio)
    low: float  # 95 % interval on the ratio
    high: float
    low90: float  # 90 % interval on the ratio, for equivalence
    high90: float
    p: float  # two-sided p of log ratio = 0
    p_equivalence: float  # TOST p against MARGIN: the larger of the two one-sided p values
    test: str  # PAIRED or WELCH
    pairs: int  # seeds in both arms used by the paired test; 0 for Welch
    n_method: int  # values used from each arm
    n_reference: int
    unpaired_method: int  # seeds only in the method's arm, left out of a paired test (0 for Welch: none left out)
    unpaired_reference: int  # seeds only in the reference's arm, likewise
    sd_log: float  # paired: sd of the per-seed log ratios; Welch: pooled within-arm sd of log FID
    df: float  # degrees of freedom of the t distribution used


def _fids(values: Mapping[int, float], arm: str) -> dict[int, float]:
    """The arm's FIDs as floats; a FID that is not finite and positive has no log and is an error, not a value
    to drop silently."""
    out: dict[int, float] = {}
    for seed, value in values.items():
        x = float(value)
        if not (math.isfinite(x) and x > 0):
            raise ValueError(f"the {arm}'s FID at seed {seed} is {value!r}: FIDs must be finite and > 0 (log scale)")
        out[seed] = x
    return out


def _t_comparison(mean: float, se: float, df: float) -> dict[str, float]:
    """ratio, 95 % and 90 % intervals, p and TOST p of a mean log ratio with standard error `se` on `df` degrees
    of freedom. se == 0 (every pair the same log ratio) is decided exactly, without dividing by zero: a
    degenerate interval at the ratio, p 0 unless the ratio is 1, equivalence p 0 inside the margin."""
    lo_m, hi_m = math.log(MARGIN[0]), math.log(MARGIN[1])
    ratio = math.exp(mean)
    if se == 0:
        p = 1.0 if abs(mean) <= _TINY else 0.0
        p_eq = 0.0 if lo_m < mean < hi_m else 1.0
        return dict(ratio=ratio, low=ratio, high=ratio, low90=ratio, high90=ratio, p=p, p_equivalence=p_eq)
    t95 = float(stats.t.ppf(1 - ALPHA / 2, df))
    t90 = float(stats.t.ppf(1 - ALPHA, df))
    p = float(2 * stats.t.sf(abs(mean) / se, df))
    p_lower = float(stats.t.sf((mean - lo_m) / se, df))  # H0: log ratio <= log 0.8
    p_upper = float(stats.t.cdf((mean - hi_m) / se, df))  # H0: log ratio >= log 1.25
    return dict(
        ratio=ratio,
        low=math.exp(mean - t95 * se),
        high=math.exp(mean + t95 * se),
        low90=math.exp(mean - t90 * se),
        high90=math.exp(mean + t90 * se),
        p=min(p, 1.0),
        p_equivalence=max(p_lower, p_upper),
    )


def compare(method: Mapping[int, float], reference: Mapping[int, float], min_pairs: int = 2) -> Ratio | None:
    """The method's FIDs against the reference's, both keyed by seed: a paired t test on log FID over the seeds
    both arms share when there are at least `min_pairs` of them (and at least 2: one pair has no spread),
    else Welch's t test on log FID when each arm has at least 2 values, else None (nothing to test).

    Seeds in one arm only are left out of the paired test and counted in the result, so the report can say
    how many pairs a seed's failure cost."""
    m, r = _fids(method, "method"), _fids(reference, "reference")
    shared = sorted(set(m) & set(r))
    if len(shared) >= max(min_pairs, 2):
        d = np.array([math.log(m[s]) - math.log(r[s]) for s in shared])
        n = len(d)
        sd = float(d.std(ddof=1))
        mean = float(d.mean())
        if sd <= _TINY:  # the same log ratio at every seed, up to rounding
            sd = 0.0
        df = float(n - 1)
        return Ratio(
            **_t_comparison(mean, sd / math.sqrt(n), df),
            test=PAIRED,
            pairs=n,
            n_method=n,
            n_reference=n,
            unpaired_method=len(m) - n,
            unpaired_reference=len(r) - n,
            sd_log=sd,
            df=df,
        )
    if len(m) >= 2 and len(r) >= 2:
        a = np.log(np.array(list(m.values())))
        b = np.log(np.array(list(r.values())))
        n1, n2 = len(a), len(b)
        v1, v2 = float(a.var(ddof=1)), float(b.var(ddof=1))
        v1, v2 = (0.0 if v <= _TINY**2 else v for v in (v1, v2))
        pooled = math.sqrt(((n1 - 1) * v1 + (n2 - 1) * v2) / (n1 + n2 - 2))
        e1, e2 = v1 / n1, v2 / n2
        se = math.sqrt(e1 + e2)
        df = (e1 + e2) ** 2 / (e1 * e1 / (n1 - 1) + e2 * e2 / (n2 - 1)) if se > 0 else float(n1 + n2 - 2)
        return Ratio(
            **_t_comparison(float(a.mean() - b.mean()), se, df),
            test=WELCH,
            pairs=0,
            n_method=n1,
            n_reference=n2,
            unpaired_method=0,
            unpaired_reference=0,
            sd_log=pooled,
            df=df,
        )
    return None


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p values, in the order given: the k-th smallest p (from 0) is multiplied by
    (m - k), made monotone (never below the adjusted p before it) and capped at 1. Rejecting where the
    adjusted p < alpha keeps the family-wise error at alpha for any dependence between the tests."""
    p = [float(x) for x in pvalues]
    for x in p:
        if not 0.0 <= x <= 1.0:  # NaN fails too
            raise ValueError(f"a p value must lie in [0, 1], got {x!r}")
    m = len(p)
    adjusted = [0.0] * m
    running = 0.0
    for k, i in enumerate(sorted(range(m), key=lambda i: p[i])):
        running = max(running, min(1.0, (m - k) * p[i]))
        adjusted[i] = running
    return adjusted


def wilcoxon_p(log_ratios: Sequence[float]) -> float | None:
    """Two-sided Wilcoxon signed-rank p on per-seed log ratios (scipy.stats.wilcoxon with its defaults: zeros
    dropped, the exact null distribution up to 50 values without ties or zeros, an exact permutation test up to
    13 values with them, the normal approximation beyond). It assumes no normality, so it checks that a t-test
    decision does not rest on one outlying seed; None with fewer than 2 nonzero values (nothing to rank)."""
    x = np.asarray(log_ratios, dtype=float)
    if not np.all(np.isfinite(x)):
        raise ValueError("log ratios must be finite")
    if np.count_nonzero(x) < 2:
        return None
    return float(stats.wilcoxon(x).pvalue)


def verdict(
    r: Ratio,
    below_floor: bool = False,
    alpha: float = ALPHA,
    p: float | None = None,
    p_equivalence: float | None = None,
) -> str:
    """What a comparison lets the report say, in this order:

    - "better": the 95 % interval lies below 1 (with an adjusted `p` passed, e.g. Holm's: p < alpha and
      ratio < 1); "worse" likewise above 1;
    - "equivalent within 20 %": the 90 % interval lies inside MARGIN (with an adjusted `p_equivalence`
      passed: it is < alpha);
    - "undecided" otherwise: neither a difference nor its absence is shown.

    A cell `below_floor` never gets "better" but "below the floor": a FID under the floor (real held-out images
    against the training images) cannot be told from a generator that memorised its training data.

    `alpha` is the level for the p values passed; without them the rules read the Ratio's intervals, which
    are at ALPHA (so another alpha needs the p values)."""
    if alpha != ALPHA and (p is None or p_equivalence is None):
        raise ValueError(f"the Ratio's intervals are at alpha {ALPHA}: pass p and p_equivalence to decide at {alpha}")
    if p is not None:
        better, worse = p < alpha and r.ratio < 1, p < alpha and r.ratio > 1
    else:
        better, worse = r.high < 1, r.low > 1
    if better:
        return "below the floor" if below_floor else "better"
    if worse:
        return "worse"
    if p_equivalence is not None:
        equivalent = p_equivalence < alpha
    else:
        equivalent = MARGIN[0] < r.low90 and r.high90 < MARGIN[1]
    return "equivalent within 20 %" if equivalent else "undecided"


@dataclass(frozen=True)
class Summary:
    """One cell's FIDs over seeds. The geometric mean and its interval are the log-scale summary the ratios
    use; median, mean and sd are beside it for readers of the raw numbers. (Collapsed runs are judged by IS
    and set apart before a cell is summarised: `sparsebench.analysis.comparisons`.)"""

    n: int
    geomean: float
    low: float | None  # 95 % t interval of the geometric mean; None for n < 2
    high: float | None
    median: float
    mean: float
    sd: float | None  # sd of the FIDs themselves; None for n < 2


def _geomean(x: np.ndarray) -> float:
    return float(math.exp(float(np.log(x).mean())))


def summarise(values: Sequence[float]) -> Summary:
    """The Summary of a cell's FIDs (see Summary). Raises ValueError on no values, or on a value that is not
    finite and positive: it has no log, and dropping it silently would hide a broken run."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("summarise needs at least one value")
    if not np.all(np.isfinite(x) & (x > 0)):
        raise ValueError(f"FIDs must be finite and > 0 (log scale), got {[float(v) for v in x]}")
    n = int(x.size)
    logs = np.log(x)
    low = high = sd = None
    if n >= 2:
        half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * float(logs.std(ddof=1)) / math.sqrt(n)
        low, high = math.exp(float(logs.mean()) - half), math.exp(float(logs.mean()) + half)
        sd = float(x.std(ddof=1))
    return Summary(n, _geomean(x), low, high, float(np.median(x)), float(x.mean()), sd)


def _power(effect: float, n: int, paired: bool, alpha: float) -> float:
    """Power of the two-sided t test (both tails) at standardized effect `effect` and n seeds per arm."""
    df = n - 1 if paired else 2 * n - 2
    nc = effect * math.sqrt(n if paired else n / 2)
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    p = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    if math.isnan(p):  # scipy's noncentral t gives up far in the tail, where the power is the normal one (~1)
        p = float(stats.norm.sf(crit - nc) + stats.norm.cdf(-crit - nc))
    return p


def seeds_for_ratio(
    sd_log: float,
    ratio: float = 0.8,
    paired: bool = True,
    alpha: float = ALPHA,
    power: float = POWER,
    max_seeds: int = 10_000,
) -> int | None:
    """Seeds per arm at which a true ratio `ratio` is detected with probability `power` by the two-sided test at
    `alpha`: paired, a one-sample t test on the per-seed log ratios with sd `sd_log` (noncentral t, df n - 1);
    unpaired, a two-sample t test with sd `sd_log` of log FID in each arm (df 2n - 2). None when more than
    `max_seeds` would be needed (or ratio is 1: nothing to detect); 2 when sd_log is 0.

    This is planning information, and only as good as `sd_log`: it must come from a spread that is not itself
    noise, i.e. pooled over an architecture's cells on the log scale (`pooled_sd_log`), never from one cell of
    2-3 seeds, whose sd can be off by a factor of several and would make the answer arbitrary."""
    if not (math.isfinite(sd_log) and sd_log >= 0):
        raise ValueError(f"sd_log must be finite and >= 0, got {sd_log!r}")
    if not (math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"ratio must be finite and > 0, got {ratio!r}")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha and power must lie in (0, 1), got {alpha!r} and {power!r}")
    if max_seeds < 2:
        raise ValueError(f"max_seeds must be at least 2, got {max_seeds}")
    if ratio == 1:
        return None
    if sd_log == 0:
        return 2
    effect = abs(math.log(ratio)) / sd_log
    if _power(effect, max_seeds, paired, alpha) < power:
        return None
    lo, hi = 2, 2
    while _power(effect, hi, paired, alpha) < power:  # doubling, then bisection: the power grows with n
        lo, hi = hi + 1, min(hi * 2, max_seeds)
    while lo < hi:
        mid = (lo + hi) // 2
        if _power(effect, mid, paired, alpha) >= power:
            hi = mid
        else:
            lo = mid + 1
    return hi


def pooled_sd_log(groups: Iterable[Sequence[float]]) -> tuple[float, int] | None:
    """The pooled standard deviation of several groups of log values (each group's deviations from its own
    mean, so the groups' levels do not count as spread) and its degrees of freedom (sum of n - 1): the spread
    `seeds_for_ratio` needs, from many cells rather than one. Groups of one value add nothing; None when no
    group has two."""
    ss, df = 0.0, 0
    for group in groups:
        x = np.asarray(group, dtype=float)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"log values must be finite, got {[float(v) for v in x]}")
        if x.size >= 2:
            ss += float(((x - x.mean()) ** 2).sum())
            df += int(x.size) - 1
    if df == 0:
        return None
    return math.sqrt(ss / df), df


def below_floor(summary: Summary, floor: float, floor_se: float | None, z: float = 1.96) -> bool:
    """Whether a cell lies below the FID floor beyond doubt: its 95 % interval's upper bound is under the
    floor's lower bound (floor - z * se; with se None the floor is taken as exact). A cell of fewer than 2
    values has no interval and is never flagged: one seed under the floor may be luck."""
    if summary.n < 2 or summary.high is None:
        return False
    bound = floor if floor_se is None else floor - z * floor_se
    return summary.high < bound
