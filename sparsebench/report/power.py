"""How much a comparison over seeds could have seen: the power of Welch's t test.

A difference whose interval spans zero means either "no difference worth the name" or "too few seeds to
tell"; these functions say which. Both use the exact power of the two-sided Welch t test (a noncentral t
with the Welch-Satterthwaite degrees of freedom), from the standard deviations observed in the two arms:

- `detectable_difference`: the smallest true difference the test detects with probability `power` at the
  arms' n (the minimum detectable difference);
- `seeds_needed`: the seeds per arm at which a given difference is detected with probability `power`.

With equal n and equal standard deviations the Welch degrees of freedom are 2n - 2 and both agree with the
pooled two-sample t test's power (statsmodels' `TTestIndPower`; tests/test_cells.py checks them against it).
"""

from __future__ import annotations

import math

from scipy import optimize, stats

ALPHA = 0.05
POWER = 0.80
TARGET = 0.20  # the difference a design should detect: 20 % of the reference's mean FID
MAX_SEEDS = 10_000


def welch_df(s1: float, n1: int, s2: float, n2: int) -> float:
    """Welch-Satterthwaite degrees of freedom of the difference of two means."""
    a, b = s1 * s1 / n1, s2 * s2 / n2
    if a + b == 0:
        return float(n1 + n2 - 2)
    return (a + b) ** 2 / (a * a / (n1 - 1) + b * b / (n2 - 1))


def power(diff: float, s1: float, n1: int, s2: float, n2: int, alpha: float = ALPHA) -> float:
    """The probability that a two-sided Welch t test at `alpha` rejects when the true difference is `diff`."""
    se = math.sqrt(s1 * s1 / n1 + s2 * s2 / n2)
    if se == 0:
        return 1.0 if diff != 0 else alpha
    df = welch_df(s1, n1, s2, n2)
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = abs(diff) / se
    p = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    if math.isnan(p):  # scipy's noncentral t gives up far in the tail: the power there is the normal one, ~1
        p = float(stats.norm.sf(crit - nc) + stats.norm.cdf(-crit - nc))
    return p


def detectable_difference(s1: float, n1: int, s2: float, n2: int, alpha: float = ALPHA, target: float = POWER) -> float:
    """The smallest |difference| that a Welch test of these arms detects with probability `target`."""
    se = math.sqrt(s1 * s1 / n1 + s2 * s2 / n2)
    if se == 0:
        return 0.0
    hi = se
    while power(hi, s1, n1, s2, n2, alpha) < target:
        hi *= 2
    return float(optimize.brentq(lambda d: power(d, s1, n1, s2, n2, alpha) - target, 0.0, hi, xtol=1e-10 * se))


def seeds_needed(diff: float, s1: float, s2: float, alpha: float = ALPHA, target: float = POWER) -> int | None:
    """Seeds per arm (equal n) at which a true difference `diff` is detected with probability `target`, given
    the arms' standard deviations; None when more than MAX_SEEDS would be needed or `diff` is 0."""
    if diff == 0:
        return None
    if s1 == 0 and s2 == 0:
        return 2
    if power(diff, s1, MAX_SEEDS, s2, MAX_SEEDS, alpha) < target:
        return None
    lo, hi = 2, 2
    while power(diff, s1, hi, s2, hi, alpha) < target:  # doubling, then bisection: power grows with n
        lo, hi = hi, min(hi * 2, MAX_SEEDS)
    while lo < hi:
        mid = (lo + hi) // 2
        if power(diff, s1, mid, s2, mid, alpha) >= target:
            hi = mid
        else:
            lo = mid + 1
    return hi
