"""The FID floor, comparable with the runs' FIDs: real held-out images against the train split, at the runs'
sample count.

FID is biased upwards at small sample counts, by about k/n for n images (Chong & Forsyth, "Effectively
Unbiased FID and Inception Score and where to find them", CVPR 2020: FID(n) = FID_inf + k/n). The held-out
split is small (359 digits), so its plain FID against the train split carries a bias a run's FID over 5,000
samples does not (about +6.4 against +0.5 on the digits features), and runs scored below such a "floor".
Here FID_inf and k come from the jackknife (Quenouille): the FID of the whole held-out split, FID(n), and
the mean FID of the split with one group of images left out, FID(n - m) averaged over groups (leave-one-out
up to 400 images), solved for the two unknowns of FID(n) = FID_inf + k/n. That is the extrapolation to
infinitely many images Chong & Forsyth fit, on subsets that need no random draws (random subsets of a few
hundred images left the fitted intercept varying by about 1.8 FID between subset streams at 10 draws per
size, 0.5 at 200). The floor of a run of N samples is FID_inf + k/N. Both are against the same train-split
statistics as the runs' FIDs: so a score near the floor says the samples are as close to the training images
as unseen real images are, and cannot tell a good generator from one that copies its training images.

The floor is itself an estimate from a few hundred images, so a cell is said to lie below it only beyond its
uncertainty: `Floor.se` is the jackknife standard error of FID_inf, sqrt((g - 1)/g * sum_i (F_(i) - mean F)^2)
over the g left-out-group FIDs F_(i) (Quenouille-Tukey; FID_inf is the matching bias-corrected estimate
g FID(n) - (g - 1) mean F_(i), with equal groups). It covers the held-out images' sampling, not the train
statistics' nor the slope's k/N (small at a run's N).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

FLOOR_METHOD = "fid-inf-jackknife-v1"  # names the floor cache: floors computed another way are never reused
MAX_GROUPS = 400  # leave-one-out up to this many held-out images, else this many groups of consecutive images


@dataclass(frozen=True)
class Floor:
    fid_inf: float  # FID at infinitely many held-out images
    slope: float  # k of FID(n) = FID_inf + k/n
    heldout: int  # images in the held-out split
    groups: int  # jackknife groups (= heldout: leave-one-out)
    se: float = 0.0  # jackknife standard error of fid_inf (0.0: not known, e.g. a floor cached without it)

    def at(self, n: int | None) -> float:
        """The floor for FIDs over `n` generated images (None: FID_inf)."""
        return self.fid_inf if n is None else self.fid_inf + self.slope / n

    def interval(self, n: int | None, z: float = 1.96) -> tuple[float, float]:
        """The floor at `n` images plus and minus z standard errors (z 1.96: a 95 % normal interval); the
        slope's term k/n is taken as exact, so the width is that of FID_inf."""
        at = self.at(n)
        return at - z * self.se, at + z * self.se

    def describe(self, n: int | None) -> str:
        where = f"at n={n}" if n is not None else "at n=inf"
        left_out = "leave-one-out" if self.groups == self.heldout else f"{self.groups}-group"
        return (
            f"held-out vs train images, FID_inf + k/n {where} (Chong & Forsyth 2020), FID_inf and k by the "
            f"{left_out} jackknife over the {self.heldout} held-out images"
        )


def fid_against(features: torch.Tensor, reference: dict) -> float:
    """torch-fidelity's FID of `features` against reference statistics, as the runs' FIDs are computed."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    stats = fid_features_to_statistics(features)
    return float(fid_statistics_to_metric(stats, reference, verbose=False)["frechet_inception_distance"])


class _FastFID:
    """FID against fixed reference statistics, for many subsets: with R = sqrt(sigma_ref) computed once,
    tr sqrt(sigma sigma_ref) is the sum of the square roots of the eigenvalues of the symmetric R sigma R, so each
    subset costs one symmetric eigendecomposition instead of a general matrix square root (torch-fidelity's
    value to float precision; `fid_against` is the reference in the tests)."""

    def __init__(self, reference: dict):
        self.mu = np.asarray(reference["mu"], dtype=np.float64)
        sigma = np.asarray(reference["sigma"], dtype=np.float64)
        w, v = np.linalg.eigh(sigma)
        self.root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        self.trace = float(np.trace(sigma))

    def __call__(self, mu: np.ndarray, sigma: np.ndarray) -> float:
        eig = np.linalg.eigvalsh(self.root @ sigma @ self.root)
        cross = float(np.sqrt(np.clip(eig, 0, None)).sum())
        return float(((mu - self.mu) ** 2).sum() + np.trace(sigma) + self.trace - 2 * cross)


MIN_HELDOUT = 3  # fewer held-out images leave nothing to extrapolate from (and no covariance under 2)


def jackknife_floor(features: torch.Tensor, reference: dict, max_groups: int = MAX_GROUPS) -> Floor:
    """FID_inf and k of FID(n) = FID_inf + k/n for `features` (the held-out split's) against `reference`.

    Each left-out group's statistics are the whole split's sums minus the group's (unbiased covariance, as
    torch-fidelity's), so a group costs one eigendecomposition."""
    raw = features.double().numpy()
    n = raw.shape[0]
    if n < MIN_HELDOUT:
        raise ValueError(f"a floor needs at least {MIN_HELDOUT} held-out images, got {n}")
    shift = raw.mean(axis=0)
    x = raw - shift  # centred, so that the sums below lose no precision; the means add `shift` back
    fid = _FastFID(reference)
    total, outer = x.sum(axis=0), x.T @ x

    def fid_of(count: int, s: np.ndarray, ss: np.ndarray) -> float:
        mu = s / count
        return fid(mu + shift, (ss - count * np.outer(mu, mu)) / (count - 1))

    full = fid_of(n, total, outer)
    groups = np.array_split(np.arange(n), min(n, max_groups))
    values, inverse = [], []
    for g in groups:
        part = x[g]
        values.append(fid_of(n - len(g), total - part.sum(axis=0), outer - part.T @ part))
        inverse.append(1.0 / (n - len(g)))
    # FID(n) = a + k/n and mean FID(n - m_g) = a + k mean(1/(n - m_g)): two equations, two unknowns
    slope = (float(np.mean(values)) - full) / (float(np.mean(inverse)) - 1.0 / n)
    left_out, count = np.asarray(values), len(groups)  # jackknife SE over the left-out-group FIDs
    se = float(np.sqrt((count - 1) / count * float(((left_out - left_out.mean()) ** 2).sum())))
    return Floor(full - slope / n, slope, n, count, se)
