"""The test behind every refine statement: a skewness-corrected studentized mean of paired
differences (``exceeds_p``, and its inversion ``lower_bound``), and Benjamini-Hochberg over a map's
cells.  The method and its justification are in focuslab.refine's docstring ("Heavy tails")."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Moments:
    """What the test needs of paired differences: the mean over ``n`` estimation replicates; the
    standard deviation, skewness and excess kurtosis over ``pooled`` replicates (estimation and
    selection).  Arrays of any (common) shape."""

    n: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    skew: np.ndarray
    kurt: np.ndarray
    pooled: np.ndarray

    @staticmethod
    def of(estimation: np.ndarray, selection: np.ndarray) -> "Moments":
        """Moments along the last axis of finite differences (central moments, 1/N)."""
        both = np.concatenate([estimation, selection], axis=-1)
        centred = both - both.mean(axis=-1, keepdims=True)
        c2 = centred * centred
        m2 = c2.mean(axis=-1)
        flat = m2 <= (1e-14 * np.maximum(1.0, np.abs(both).max(axis=-1))) ** 2
        with np.errstate(all="ignore"):
            skew = np.where(flat, 0.0, (c2 * centred).mean(axis=-1) / m2 ** 1.5)
            kurt = np.where(flat, 0.0, (c2 * c2).mean(axis=-1) / m2 ** 2 - 3.0)
        shape = m2.shape
        return Moments(np.full(shape, estimation.shape[-1], dtype=float), estimation.mean(axis=-1),
                       np.where(flat, 0.0, np.sqrt(m2)), skew, kurt, np.full(shape, both.shape[-1], dtype=float))

    def dof(self) -> np.ndarray:
        return 2.0 / (2.0 / np.maximum(self.pooled - 1, 1) + np.maximum(self.kurt, 0.0) / self.pooled)


def _skew_terms(m: Moments) -> list:
    """The coefficients a of the skewness correction T = ((1 + u T0)^3 - 1) / (3u) + g / (6 sqrt(n)),
    u = a g / sqrt(n), T0 = sqrt(n) (mean - threshold) / s: a = 1/3 is Hall's (1992), for a spread
    s from the mean's own replicates; with s from a pooled sample of which a share c is the mean's
    own, the first-order Edgeworth expansion gives a = (3c - 1) / 6 (1/6 for c = 2/3).  A sample
    that lacks the rare large values behaves between the two, so the test keeps both."""
    return [1.0 / 3.0, (3.0 * m.n / m.pooled - 1.0) / 6.0]


#: How well a difference every replicate of which is the same is known: to rounding, relative.  Two
#: candidates that step identically up to a constant (FOCUS with gamma 0 and Signum, a loss shifted
#: by a constant) differ by that constant in every replicate, but the constant comes out of
#: floating-point sums: a claim on the border must not be decided by the last bit.
ROUNDING = 1e-12


def exceeds_p(m: Moments, threshold) -> np.ndarray:
    """p-value of "the mean difference exceeds ``threshold``" (H0: it does not): the larger of the
    two skewness-corrected studentized tests (_skew_terms), against Student's t with m.dof()."""
    from scipy.special import stdtr

    n, g = m.n, m.skew
    p = 0.0
    with np.errstate(all="ignore"):
        t0 = np.sqrt(n) * (m.mean - threshold) / m.sd
        for a in _skew_terms(m):
            u = a * g / np.sqrt(n)
            t = np.where(np.abs(u) < 1e-12, t0, ((1.0 + u * t0) ** 3 - 1.0) / (3.0 * u)) + g / (6.0 * np.sqrt(n))
            p = np.maximum(p, stdtr(m.dof(), -t))
    exact = m.sd == 0  # a difference known exactly (every replicate the same), up to rounding
    return np.where(exact, np.where(m.mean - ROUNDING * np.maximum(1.0, np.abs(m.mean)) > threshold, 0.0, 1.0), p)


def lower_bound(m: Moments, alpha) -> np.ndarray:
    """The largest threshold that ``exceeds_p`` rejects at level ``alpha``: a lower confidence
    bound for the mean difference (each corrected statistic is monotone in T0 and inverts in
    closed form; the bound is the smaller of the two)."""
    from scipy.special import stdtrit

    n, g = m.n, m.skew
    low = np.inf
    with np.errstate(all="ignore"):
        v = stdtrit(m.dof(), 1.0 - np.asarray(alpha, dtype=float)) - g / (6.0 * np.sqrt(n))
        for a in _skew_terms(m):
            u = a * g / np.sqrt(n)
            t0 = np.where(np.abs(u) < 1e-12, v, (np.cbrt(1.0 + 3.0 * u * v) - 1.0) / u)
            low = np.minimum(low, m.mean - t0 * m.sd / np.sqrt(n))
        return np.where(m.sd == 0, m.mean - ROUNDING * np.maximum(1.0, np.abs(m.mean)), low)


def fdr_reject(p_values, q: float) -> np.ndarray:
    """Benjamini-Hochberg at level q: which p-values are discoveries."""
    return bh_adjusted(p_values) <= q


def bh_adjusted(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) of ``p_values`` (scipy.stats.false_discovery_control)."""
    from scipy.stats import false_discovery_control

    p = np.asarray(p_values, dtype=float)
    if not len(p):
        return np.zeros(0)
    return false_discovery_control(p, method="bh")


#: Moments' fields, in order (a statement's moments are stored as plain rows with these names).
FIELDS = ("n", "mean", "sd", "skew", "kurt", "pooled")


def stack(ms: list) -> Moments:
    """Moments of scalars stacked into one Moments of arrays (one test call for many statements)."""
    return Moments(*(np.array([getattr(m, f) for m in ms], dtype=float) for f in FIELDS))
