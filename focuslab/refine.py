"""Decisive phase maps: which optimizer is better at its best learning rate, cell by cell.

``focuslab refine RESULTS_DIR`` turns a finished scan into one decision per cell: ``winner``,
``tied``, ``undecided`` or ``diverged``.  The question is the paper's: is optimizer A better than
B *each at its best lr*?  So the lr is chosen inside the procedure, on replicates that are never
used to judge the optimizers, and the judgement is valid for the lrs chosen.

**Estimand.**  m_o = min over the candidate lrs C_o of the mean final loss of optimizer o (a
diverged replicate counts as +inf, so an lr that ever diverges has mean +inf, and an optimizer
whose every candidate diverged is +inf).  C_o starts from the scan: its best grid lr, that lr's
grid neighbours, and the grid lrs beyond those (out to 2 steps) whose scan mean is within 2
combined standard errors of the best.  It grows while racing: the grid neighbours of the current
leader (past the grid's edge too, up to ``extend_steps`` steps, inside ``lr_min``..``lr_max``)
and, down to ``lr_levels`` halvings of the grid step, the geometric midpoint between the leader
and its better neighbour.  C_o is reported (refine/lrs.parquet); the claims are about the best lr
in it.

**Replicates.**  Fresh replicates R, R+1, ... (R = the scan's replicates, so new random streams)
are interleaved: fresh replicate R + j is a *selection* replicate when j % 3 == 0 and an
*estimation* replicate otherwise.  They come in looks of n, 2n, 4n, ... up to
``max_replicates`` estimation replicates (plus half as many selection ones); every lr being raced
gets the same replicates, and so does every optimizer of the cell (common random numbers).

**Racing (selection replicates only).**  After each look, for each optimizer: the selected lr is
the one with the lowest selection mean; from the third look on, an lr whose paired selection
difference to it has a lower bound above 0 at a hundredth of the level its statements face is
dropped from the race (it keeps the estimation replicates it has and stays in C_o; dropping only
saves work); brackets and a midpoint are added as above.  None of this looks at estimation
replicates, except that an lr seen to diverge anywhere is known to have mean +inf and leaves.

**Judgement (estimation replicates only).**  For optimizers a and b, the statement "b is worse
than a by more than t" (m_b - m_a > t) needs a lower confidence bound above t for
mu_b(l) - mu_a(p_a) at *every* l in C_o of b (p_a: a's selected lr).  Only the bound at b's true
best lr has to hold, because m_a <= mu_a(p_a) and m_b = mu_b(l_b*): so there is no multiplicity
over lrs, and the statement is valid whatever the race selected.  Each l is bounded either
directly (paired differences y_b(l) - y_a(p_a), at level alpha) or through b's selected lr p_b,
[y_b(p_b) - y_a(p_a)] + [y_b(l) - y_b(p_b)] (each at alpha/2; the second is within one optimizer,
where common random numbers can make it precise), whichever the selection replicates promise to
be narrower.  With margin delta = ``equivalence`` x |L| (L: the lowest scan mean among the
cell's optimizers, fixed before any fresh replicate), the cell's claims are

- ``winner`` w: every other optimizer o is worse than w by more than delta;
- ``tied`` T (w in T, two or more optimizers): each t in T is within delta of w both ways
  (t worse than w by more than -delta, and w worse than t by more than -delta), and every
  optimizer outside T is worse than w by more than delta.

A claim's p-value is the largest of its statements'.  Each statement belongs to one of the
K(K-1) families "b against a" (K optimizers); Bonferroni over the families makes the claims
simultaneous, so the cell may report whichever claim its data support best (the smallest p-value),
and the leader need not be fixed in advance.

**Heavy tails.**  No test of a mean is valid for every distribution at a fixed sample size
(Bahadur & Savage 1956), and the toy's losses are skewed (skewness 4, excess kurtosis 35-60 at
c = 1, phi = 0, a = 10, sigma = 2.5, 300 steps).  A paired t-test there errs mostly in one
direction, by 5-14x at 1e-3 on 100-400 replicates.  The test used corrects the studentized mean
for skewness: T = ((1 + u T0)^3 - 1) / (3u) + g / (6 sqrt(n)), u = a g / sqrt(n),
T0 = sqrt(n) (mean - t) / s, p = P(T_nu > T), which removes the n^-1/2 (skewness) term of the
Edgeworth expansion, the one that makes the t-test lopsided (a = 1/3 is Hall's 1992
transformation).  Its nuisance moments s, g (skewness) and the excess kurtosis k come from the
estimation *and* selection replicates of the same two lrs (half as many again, independent of the
mean's), so that a sample lacking the rare large values cannot shrink its own spread.  With a
pooled spread, first-order theory gives a = (3c - 1)/6 (c = 2/3: the mean's share of the pooled
replicates) instead of Hall's 1/3, and samples without the rare values behave between the two:
the test takes the larger of the two p-values (an intersection test, valid when either is).  The
reference distribution is Student's t with nu = 2 / (2/(N-1) + k/N) degrees of freedom (N pooled
replicates), Satterthwaite's match to the sampling variance of s^2 under excess kurtosis k.  This
is second-order accurate, not exact; benchmarks/bench_refine_null.py measures the false discovery
rate it gives on all-null maps resampled from the simulator itself (README).

**Looks and stopping.**  The statement families at look k get alpha w_k with w_k proportional to
the square of the look's replicates (sum 1; little for the early looks, where heavy tails fool a
test most): a union bound over looks, valid whenever the cell stops.  A
statement computed on an lr whose replicates stopped at an earlier look j uses w_j.  A cell stops
at the first look where its p-value is at most ``fdr``; an optimizer shown worse than every other
by the margin at p <= 1e-6 stops being simulated (its statements keep their replicates).

**False discovery rate over the map.**  Benjamini-Hochberg at ``fdr`` over the cells' p-values
(scipy.stats.false_discovery_control): a passing cell gets its claim, the others are undecided.
Cells are independent (their own random streams), so BH controls the FDR at ``fdr`` given valid
p-values.  A cell that stopped early but fails BH's threshold is continued with that threshold as
its target, and BH is recomputed, until no cell that still has looks left fails: no cell ends
undecided because it stopped early.

**Columns.**  ``leader`` (lowest estimation mean at the selected lrs, every cell), ``runner_up``,
``lead`` = (runner-up - leader) / |L| and ``lead_low``/``lead_high``: an interval for
(m_runner-up - m_leader) / |L| at level 1 - fdr x R / M (R decided cells of M; Benjamini and
Yekutieli's false coverage rate adjustment for the decided cells), Bonferroni over the cell's
families and valid at the look it stopped at.

Outputs beside the scan: ``decisions.parquet`` (one row per cell), ``refine/lrs.parquet`` (one
row per cell, optimizer and raced lr), ``replicates.parquet`` (every fresh replicate's final loss,
so each decision can be recomputed); the work units in ``refine/units``: one per chunk of cells and
pass, resumable and shardable like a scan, with bit-identical results.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .axes import CELL_NAMES
from .config import config_digest
from .errors import FocuslabError
from .options import setting

if TYPE_CHECKING:
    import pandas as pd

REFINE = "refine"
DECISIONS = "decisions.parquet"
REPLICATES = "replicates.parquet"
LRS = "lrs.parquet"
OUTCOMES = ("winner", "tied", "undecided", "diverged")
#: Version of what the work units hold and how decisions are made; part of the digest, so units
#: written by another version are never mixed into a refinement.
PROCEDURE = 3
SELECTION_EVERY = 3  # fresh replicate R + j is a selection replicate when j % 3 == 0
SCREEN_Z = 2.0  # scan lrs within this many combined standard errors of the scan's best are raced ...
SCREEN_STEPS = 2  # ... if they are at most this many grid steps from it
PRUNE_FROM = 2  # no lr leaves the race before this look (0-based): frozen small samples bound poorly
RETIRE_P = 1e-6  # an optimizer worse than every other by the margin at this p stops being simulated


@dataclass(frozen=True)
class RefineParams:
    """The refinement's settings, declared once (focuslab.options): ``focuslab refine`` makes one flag
    per field (name with dashes); ``validate`` checks their values."""

    fdr: float = setting(0.05, "false discovery rate over the map's cells (Benjamini-Hochberg)", metavar="Q")
    equivalence: float = setting(0.01, "margin, relative to |best loss|: a winner beats every other optimizer by "
                                       "more, tied optimizers are within it", metavar="EPS")
    initial_replicates: int = setting(200, "estimation replicates per lr at the first look (plus half as many for "
                                           "selection); later looks double", metavar="N")
    max_replicates: int = setting(6400, "estimation replicates per lr at most", metavar="N")
    lr_levels: int = setting(1, "midpoint levels between grid lrs: 1 halves the grid step around the leader, "
                                "2 quarters it, 0 races grid lrs only", metavar="L")
    extend_steps: int = setting(8, "grid steps an lr may go beyond the grid's edge", metavar="N")
    lr_min: float = setting(1e-7, "smallest lr the race may reach", metavar="LR")
    lr_max: float = setting(10.0, "largest lr the race may reach", metavar="LR")
    chunk_cells: int = setting(50, "cells per work unit", cli=False)

    def validate(self) -> "RefineParams":
        if not 0 < self.fdr < 1:
            raise FocuslabError(f"--fdr: must be in (0, 1), got {self.fdr:g}")
        if not 0 <= self.equivalence < 1:
            raise FocuslabError(f"--equivalence: must be in [0, 1), got {self.equivalence:g}")
        if self.initial_replicates < 20 or self.initial_replicates % 2:
            raise FocuslabError(f"--initial-replicates: must be an even number >= 20, got {self.initial_replicates}")
        if self.max_replicates < self.initial_replicates:
            raise FocuslabError(f"--max-replicates {self.max_replicates} is below the first look's "
                                f"{self.initial_replicates} replicates")
        if self.max_replicates % 2:
            raise FocuslabError(f"--max-replicates: must be even, got {self.max_replicates}")
        if not 0 <= self.lr_levels <= 6:
            raise FocuslabError(f"--lr-levels: must be in 0..6, got {self.lr_levels}")
        if self.extend_steps < 0:
            raise FocuslabError(f"--extend-steps: must be >= 0, got {self.extend_steps}")
        if not 0 < self.lr_min < self.lr_max:
            raise FocuslabError(f"--lr-min/--lr-max: need 0 < lr-min < lr-max, got {self.lr_min:g}, {self.lr_max:g}")
        if self.chunk_cells < 1:
            raise FocuslabError(f"chunk_cells: must be >= 1, got {self.chunk_cells}")
        return self

    def looks(self) -> list[int]:
        """Cumulative estimation replicates per lr at each look: n, 2n, 4n, ..., max."""
        out, n = [], self.initial_replicates
        while n < self.max_replicates:
            out.append(n)
            n *= 2
        return out + [self.max_replicates]

    def spending(self) -> np.ndarray:
        """The share of the error rate each look's statements get: proportional to the square of its
        replicates (little for the small early looks, where heavy tails fool tests most)."""
        n = np.asarray(self.looks(), dtype=float) ** 2
        return n / n.sum()


@dataclass(frozen=True)
class RefineRun:
    """The refine command's own run options (beside --jobs and --quiet of focuslab.options.Common):
    how the work is split and what happens to an earlier refinement, never the decisions."""

    shard: str = setting(None, "refine only chunk K of N of the cells (the shards share RESULTS_DIR; a final run "
                               "without --shard writes the decisions)", metavar="K/N")
    force: bool = setting(False, "start over when RESULTS_DIR was refined with other settings (a refinement with "
                                 "these settings is resumed, or left as it is when complete)")


def fresh_count(estimation: int) -> int:
    """Fresh replicates (selection + estimation) that hold ``estimation`` estimation replicates."""
    return estimation + -(-estimation // (SELECTION_EVERY - 1))


@lru_cache(maxsize=64)
def roles(count: int) -> tuple[np.ndarray, np.ndarray]:
    """(selection, estimation) positions among the first ``count`` fresh replicates."""
    j = np.arange(count)
    sel, est = j[j % SELECTION_EVERY == 0], j[j % SELECTION_EVERY != 0]
    sel.flags.writeable = est.flags.writeable = False
    return sel, est


# --- the test: a skewness-corrected studentized mean ------------------------------------------------
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
    exact = m.sd == 0
    return np.where(exact, np.where(m.mean > threshold, 0.0, 1.0), p)


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
        return np.where(m.sd == 0, m.mean, low)


def fdr_reject(p_values, q: float) -> np.ndarray:
    """Benjamini-Hochberg at level q: which p-values are discoveries."""
    return bh_adjusted(p_values) <= q


def bh_adjusted(p_values) -> np.ndarray:
    from scipy.stats import false_discovery_control

    p = np.asarray(p_values, dtype=float)
    if not len(p):
        return np.zeros(0)
    return false_discovery_control(p, method="bh")


# --- the candidate lrs --------------------------------------------------------------------------
class Lattice:
    """Candidate lrs of one scan: the grid, midpoints down to ``levels`` halvings of the grid step,
    and steps beyond either edge.  A position is an integer u in units of 2^-levels grid steps
    (grid lr j sits at u = j * 2^levels)."""

    def __init__(self, grid, params: RefineParams):
        self.grid = np.sort(np.asarray(grid, dtype=float))
        self.unit = 2 ** params.lr_levels
        self.levels = params.lr_levels
        n = len(self.grid)
        self.log_step = (math.log(self.grid[1] / self.grid[0]), math.log(self.grid[-1] / self.grid[-2])) if n > 1 \
            else (0.0, 0.0)
        reach = params.extend_steps if n > 1 else 0
        lo, hi = -reach * self.unit, (n - 1 + reach) * self.unit
        self._cache = {}
        while lo < 0 and self.lr(lo) < params.lr_min * (1 - 1e-12):
            lo += 1
        while hi > (n - 1) * self.unit and self.lr(hi) > params.lr_max * (1 + 1e-12):
            hi -= 1
        self.lo, self.hi = lo, hi
        self._cache = {}

    def lr(self, u: int) -> float:
        n, unit = len(self.grid), self.unit
        if u % unit == 0 and 0 <= u // unit < n:
            return float(self.grid[u // unit])
        if u < 0:
            return float(math.exp(math.log(self.grid[0]) + self.log_step[0] * u / unit))
        if u > (n - 1) * unit:
            return float(math.exp(math.log(self.grid[-1]) + self.log_step[1] * (u - (n - 1) * unit) / unit))
        if u not in self._cache:  # the geometric mean of its two parents one level up
            half = u & -u
            self._cache[u] = math.sqrt(self.lr(u - half) * self.lr(u + half))
        return self._cache[u]

    def level(self, u: int) -> int:
        if u % self.unit == 0:
            return 0
        return self.levels - ((u & -u).bit_length() - 1)

    def inside(self, u: int) -> bool:
        return self.lo <= u <= self.hi

    def grid_index(self, lr: float) -> int:
        return int(np.argmin(np.abs(np.log(self.grid) - math.log(lr))))


# --- one cell -----------------------------------------------------------------------------------
@dataclass
class Arm:
    """One raced lr of one optimizer and its fresh replicates so far (+inf: diverged)."""

    u: int  # lattice position
    lr: float
    y: np.ndarray = field(default_factory=lambda: np.empty(0))
    active: bool = True  # still racing (simulated at the next look)
    added: int = 0  # the look it joined
    left: int = -1  # the look it left the race (-1: never)

    @property
    def diverged(self) -> bool:
        return bool(np.isinf(self.y).any())


def _initial_arms(screen: tuple, lattice: Lattice) -> list[Arm]:
    """Racing lrs from the scan: its best grid lr, its grid neighbours, and the grid lrs next to
    those, out to SCREEN_STEPS steps either side, as long as their scan mean is within SCREEN_Z
    combined standard errors of the best (the scan's 50 replicates cannot tell them apart).  A
    grid lr whose scan mean is +inf (a replicate diverged) is +inf for certain and left out."""
    means, sems = (np.asarray(x, dtype=float) for x in screen)
    ok = np.isfinite(means)
    if not ok.any():
        return []
    j = int(np.argmin(np.where(ok, means, np.inf)))
    se = np.where(np.isfinite(sems), sems, np.inf)
    unit = lattice.unit
    us = {j * unit}
    for side in (-1, 1):
        for step in range(1, SCREEN_STEPS + 1):
            i = j + side * step
            u = i * unit
            if not lattice.inside(u):
                break
            if 0 <= i < len(means):
                if not ok[i]:
                    break
                if step > 1 and not means[i] - means[j] <= SCREEN_Z * math.hypot(se[i], se[j]):
                    break
            elif step > 1:
                break  # beyond the grid the race itself decides whether to go further
            us.add(u)
    return [Arm(u, lattice.lr(u)) for u in sorted(us)]


def _race(arms: list[Arm], lattice: Lattice, count: int, prune_level: float, look: int) -> Arm | None:
    """The selection step after a look (selection replicates only; an lr seen to diverge anywhere
    is +inf for certain and leaves the race): the selected lr, lrs far behind it dropped, grid
    neighbours of a grid-level leader added, and a midpoint towards its better neighbour."""
    sel, _ = roles(count)
    for a in arms:
        if a.active and a.diverged:
            a.active, a.left = False, look
    live = [a for a in arms if a.active and len(a.y) >= count]
    at = {a.u: a for a in arms}
    unit = lattice.unit

    def add(u):
        if lattice.inside(u) and u not in at:
            at[u] = Arm(u, lattice.lr(u), added=look + 1)
            arms.append(at[u])

    if not live:  # every lr it raced diverged: +inf over its candidates
        return None
    means = np.array([a.y[sel].mean() for a in live])
    best = live[int(np.argmin(means))]
    yb = best.y[sel]
    for a in live:  # far behind on selection replicates (at a hundredth of the level its bound will face)
        if a is not best and look >= PRUNE_FROM:
            d = a.y[sel] - yb
            if float(lower_bound(Moments.of(d, d[:0]), prune_level / 100)) > 0:
                a.active, a.left = False, look
    if best.u % unit == 0:
        add(best.u - unit)
        add(best.u + unit)
    level = lattice.level(best.u)
    if level < lattice.levels:
        step = unit >> level
        near = [at[best.u + s] for s in (-step, step)
                if best.u + s in at and len(at[best.u + s].y) >= count and not at[best.u + s].diverged]
        if near:
            better = min(near, key=lambda a: float(a.y[sel].mean()))
            add((best.u + better.u) // 2)
    return best


def _differences(arm: Arm, pivot: Arm, fresh: list[int]):
    """Paired differences arm - pivot on their common fresh replicates: (estimation part,
    selection part, the look that replicate count belongs to)."""
    count = min(len(arm.y), len(pivot.y))
    sel, est = roles(count)
    d = arm.y[:count] - pivot.y[:count]
    return d[est], d[sel], fresh.index(count)


_FIELDS = ("n", "mean", "sd", "skew", "kurt", "pooled")


def _stack(ms: list) -> Moments:
    return Moments(*(np.array([getattr(m, f) for m in ms], dtype=float) for f in _FIELDS))


@dataclass
class Evidence:
    """What the estimation replicates say about m_b - m_a, optimizer b at its best lr against a at
    its selected lr p_a (m_a <= mu_a(p_a)).  Since m_b = mu_b(l*) for b's best raced lr l*, a
    lower bound for mu_b(l*) - mu_a(p_a) that holds *at l** is enough: the bound of the statement
    is the smallest over b's lrs, each valid at level alpha on its own, and there is no
    multiplicity over lrs.  Each lr l of b is bounded one of two ways, chosen on selection
    replicates (whichever promises the narrower interval):

    - ``direct``: y_b(l) - y_a(p_a), paired, at level alpha;
    - ``within``: [y_b(p_b) - y_a(p_a)] + [y_b(l) - y_b(p_b)], each at alpha/2 (p_b: b's selected
      lr; the second difference is within one optimizer, where common random numbers can make it
      precise).

    ``pivot`` holds y_b(p_b) - y_a(p_a) and its look; ``lrs`` (lr, way, moments, look) the others.
    ``certain``: every lr b raced diverged, so m_b = +inf and the statement needs no test."""

    pivot: tuple | None = None  # (Moments, look)
    lrs: list = field(default_factory=list)  # [(lr, "direct" | "within", Moments, look)]
    certain: bool = False

    def bound(self, alpha: float, weights, families: int) -> float:
        """Lower confidence bound for m_b - m_a at level 1 - alpha."""
        if self.certain:
            return math.inf
        m, look = self.pivot
        level = alpha / families
        low = float(lower_bound(m, level * weights[look]))
        for way, share in (("direct", 1.0), ("within", 0.5)):
            part = [x for x in self.lrs if x[1] == way]
            if part:
                ws = np.array([weights[x[3]] for x in part])
                b = lower_bound(_stack([x[2] for x in part]), share * level * ws)
                if way == "within":
                    b = b + float(lower_bound(m, 0.5 * level * weights[look]))
                low = min(low, float(np.min(b)))
        return low

    def p(self, threshold: float, weights, families: int) -> float:
        """The smallest level at which the bound exceeds ``threshold`` (the bound grows with the
        level: bisection on log alpha to 0.1 % of alpha, rounded up)."""
        if self.certain:
            return 0.0
        if not self.lrs:  # one lr: the test's own p-value
            m, look = self.pivot
            return min(1.0, families * float(exceeds_p(m, threshold)) / weights[look])
        if self.bound(1.0 - 1e-12, weights, families) <= threshold:
            return 1.0
        lo, hi = -60.0, 0.0  # log10 alpha: hi passes, lo fails
        if self.bound(10.0 ** lo, weights, families) > threshold:
            return 10.0 ** lo
        while hi - lo > 4e-4:
            mid = 0.5 * (lo + hi)
            if self.bound(10.0 ** mid, weights, families) > threshold:
                hi = mid
            else:
                lo = mid
        return min(1.0, 10.0 ** hi)

    def rows(self, side: str) -> list[dict]:
        """The moments as plain rows (kept with the cell for its interval)."""
        if self.pivot is None:
            return []
        parts = [("pivot", math.nan, *self.pivot)] + [(way, lr, m, look) for lr, way, m, look in self.lrs]
        return [{"side": side, "part": way, "lr": lr, "look": look, **{f: float(getattr(m, f)) for f in _FIELDS}}
                for way, lr, m, look in parts]

    @staticmethod
    def from_rows(rows: list[dict]) -> "Evidence":
        ev = Evidence()
        for r in rows:
            m = Moments(*(np.asarray(r[f], dtype=float) for f in _FIELDS))
            if r["part"] == "pivot":
                ev.pivot = (m, int(r["look"]))
            else:
                ev.lrs.append((r["lr"], r["part"], m, int(r["look"])))
        return ev


def _evidence(arms_b: list[Arm], pivot_b: Arm | None, pivot_a: Arm, fresh) -> Evidence:
    """Evidence for m_b - m_a (see Evidence); lrs of b that diverged are +inf for certain."""
    live = [a for a in arms_b if len(a.y) and not a.diverged]
    if not live or pivot_b is None:
        return Evidence(certain=not live)
    est, sel, look = _differences(pivot_b, pivot_a, fresh)
    ev = Evidence((Moments.of(est, sel), look))
    spread = float(sel.std()) / math.sqrt(len(est))  # the pivot difference's standard error
    for arm in live:
        if arm is pivot_b:
            continue
        d_est, d_sel, d_look = _differences(arm, pivot_a, fresh)
        w_est, w_sel, w_look = _differences(arm, pivot_b, fresh)
        # promised widths from selection replicates (half the level costs about 10 % more width)
        direct = float(d_sel.std()) / math.sqrt(len(d_est))
        within = 1.1 * (spread + float(w_sel.std()) / math.sqrt(len(w_est)))
        if within < direct:
            ev.lrs.append((arm.lr, "within", Moments.of(w_est, w_sel), w_look))
        else:
            ev.lrs.append((arm.lr, "direct", Moments.of(d_est, d_sel), d_look))
    return ev


@dataclass
class CellResult:
    """One cell's state at its last look."""

    kind: str  # "winner" / "tied": the best-supported claim; "diverged"; "" (none possible yet)
    p: float  # the claim's p-value (Bonferroni over families, spending over looks)
    best: str  # the claim's optimizer w
    tied: tuple  # the tie's members (w first), empty for a winner
    leader: str
    runner_up: str
    lead: float  # (runner-up - leader) / scale at the selected lrs (estimation replicates)
    scale: float  # |L|
    look: int
    estimation: int  # estimation replicates per racing lr at that look
    fresh: int  # fresh replicates per racing lr at that look
    contrasts: list = field(default_factory=list)  # moments behind the lead interval
    beaten: tuple = ()  # optimizers worse than every other by the margin at RETIRE_P
    arms: dict = field(default_factory=dict)
    selected: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)


def _judge(arms, selected, state, optimizers, delta, scale, fresh, weights, families, look, estimation):
    """The cell's best-supported claim at a look, from estimation replicates only."""
    count = fresh[look]
    if all(state[o] == "diverged" for o in optimizers):
        return CellResult("diverged", 0.0, "", (), "", "", math.nan, scale, look, estimation, count)
    pivots = {o: next(a for a in arms[o] if a.u == selected[o]) for o in optimizers
              if selected.get(o) is not None and state[o] in ("normal", "retired")}
    leaders = [o for o in optimizers if o in pivots and state[o] == "normal"]
    if not leaders:
        return CellResult("", 1.0, "", (), "", "", math.nan, scale, look, estimation, count)
    evidence: dict = {}
    pvals: dict = {}

    def worse(a, b, threshold) -> float:  # p of "b is worse than a by more than threshold"
        if (a, b) not in evidence:
            evidence[(a, b)] = (Evidence(certain=True) if state[b] == "diverged" else
                                _evidence(arms[b], pivots.get(b), pivots[a], fresh))
        if (a, b, threshold) not in pvals:
            pvals[(a, b, threshold)] = evidence[(a, b)].p(threshold, weights, families)
        return pvals[(a, b, threshold)]

    means = {o: float(pivots[o].y[roles(len(pivots[o].y))[1]].mean()) for o in pivots}
    best = None
    for w in sorted(leaders, key=lambda o: means[o]):  # on equal p-values, the leader's claim
        others = [o for o in leaders if o != w]
        outside = [o for o in optimizers if o not in leaders]  # retired or diverged
        for size in range(len(others) + 1):
            for members in combinations(others, size):
                parts = [max(worse(w, t, -delta), worse(t, w, -delta)) for t in members]
                parts += [worse(w, o, delta) for o in [*others, *outside] if o not in members]
                p = max(parts, default=0.0)
                if best is None or p < best[0]:
                    best = (p, w, members)
    p, w, members = best
    leader = min(leaders, key=lambda o: means[o])
    rivals = sorted((o for o in pivots if o != leader), key=lambda o: means[o])
    runner = rivals[0] if rivals else next((o for o in optimizers if o != leader), "")
    contrasts, lead = [], math.nan
    if runner in pivots:
        worse(leader, runner, 0.0)
        worse(runner, leader, 0.0)
        contrasts = evidence[(leader, runner)].rows("low") + evidence[(runner, leader)].rows("high")
        est_r, _, _ = _differences(pivots[runner], pivots[leader], fresh)
        lead = float(est_r.mean()) / scale if scale > 0 else math.nan
    elif runner and state[runner] == "diverged":
        lead = math.inf
    beaten = tuple(o for o in leaders if o != leader and all(worse(a, o, delta) <= RETIRE_P
                                                            for a in leaders if a != o))
    return CellResult("tied" if members else "winner", p, w, (w, *members) if members else (), leader, runner, lead,
                      scale, look, estimation, count, contrasts, beaten)


def refine_cell(sample, screens: dict, params: RefineParams, lattice: Lattice, target: float,
                optimizers: list[str]) -> CellResult:
    """The sequential procedure of the module docstring for one cell.

    ``sample(label, lrs, lo, hi)``: final losses (+inf: diverged) of fresh replicates lo..hi-1 at
    ``lrs``, shape (len(lrs), hi - lo); ``screens``: label -> (scan means, scan standard errors)
    over the grid lrs; ``target``: the p-value at which the cell stops.
    """
    optimizers = list(optimizers)
    looks = params.looks()
    weights = params.spending()
    fresh = [fresh_count(n) for n in looks]
    families = max(1, len(optimizers) * (len(optimizers) - 1))
    arms = {o: _initial_arms(screens[o], lattice) for o in optimizers}
    firsts = [float(np.min(np.asarray(screens[o][0], dtype=float))) for o in optimizers if arms[o]]
    scale = abs(min(firsts)) if firsts else math.nan
    delta = params.equivalence * scale if firsts else 0.0
    state = {o: "normal" if arms[o] else "diverged" for o in optimizers}
    selected: dict = {o: None for o in optimizers}
    result = None
    for k, count in enumerate(fresh):
        for o in optimizers:  # every racing lr gets this look's fresh replicates
            if state[o] != "normal":
                continue
            todo = [a for a in arms[o] if a.active and len(a.y) < count]
            for start in sorted({len(a.y) for a in todo}):
                group = [a for a in todo if len(a.y) == start]
                y = np.asarray(sample(o, np.array([a.lr for a in group]), start, count), dtype=float)
                for a, row in zip(group, y):
                    a.y = np.concatenate([a.y, row])
        for o in optimizers:
            if state[o] == "normal":
                best = _race(arms[o], lattice, count, params.fdr * weights[k] / families, k)
                selected[o] = None if best is None else best.u
                if best is None:
                    state[o] = "diverged"
        result = _judge(arms, selected, state, optimizers, delta, scale, fresh, weights, families, k, looks[k])
        if result.kind == "diverged" or (result.kind and result.p <= target):
            break
        for o in result.beaten:
            state[o] = "retired"
    result.arms, result.selected, result.state = arms, dict(selected), dict(state)
    return result


def lead_interval(contrasts: list, alpha: float, weights, families: int, scale: float) -> tuple[float, float]:
    """(low, high) for (m_runner-up - m_leader) / |L| at level 1 - ``alpha`` from a cell's stored
    evidence (both directions; each bound at the families' Bonferroni share of ``alpha``)."""
    low = Evidence.from_rows([r for r in contrasts if r["side"] == "low"])
    high = Evidence.from_rows([r for r in contrasts if r["side"] == "high"])
    if low.pivot is None or high.pivot is None or not scale > 0:
        return math.nan, math.nan
    return low.bound(alpha, weights, families) / scale, -high.bound(alpha, weights, families) / scale


def refine_map(cells: list, params: RefineParams, lattice: Lattice, optimizers) -> tuple[list, np.ndarray]:
    """The whole procedure in memory for ``cells``, a list of (sample, screens) as refine_cell takes
    them: every cell to its first look with p <= fdr, then BH, continuing the cells that stopped
    early but fail BH (the rule run_refine applies through its work units).  Returns the cells'
    results and which passed BH."""
    import pandas as pd

    results = [refine_cell(s, sc, params, lattice, params.fdr, optimizers) for s, sc in cells]
    while True:
        table = pd.DataFrame({"cell": range(len(results)), "kind": [r.kind for r in results],
                              "p": [r.p for r in results], "look": [r.look for r in results]})
        threshold, reopen = _reopen(table, params)
        if not reopen:
            break
        for i in reopen:
            results[i] = refine_cell(*cells[i], params, lattice, threshold, optimizers)
    live = table["kind"].to_numpy() != "diverged"
    passed = np.zeros(len(results), dtype=bool)
    passed[live] = fdr_reject(table["p"].to_numpy()[live], params.fdr)
    return results, passed


# --- known truths: cells resampled from a pool of simulator output --------------------------------
class PoolSampler:
    """A cell whose replicates are drawn with replacement from a pool of simulator output, so that
    the truth (the pool's means) is known: ``pool`` maps an optimizer label to (lrs, losses) with
    losses of shape (len(lrs), P), replicate-aligned across lrs and optimizers (common random
    numbers).  Fresh replicate j is pool column ``index[j]``; the scan's replicates use their own
    columns.  For validating the procedure (tests, benchmarks/bench_refine_null.py)."""

    def __init__(self, pool: dict, seed: int, scan_replicates: int, size: int):
        rng = np.random.default_rng(seed)
        width = next(iter(pool.values()))[1].shape[1]
        self.pool = pool
        self.scan_index = rng.integers(0, width, scan_replicates)
        self.index = rng.integers(0, width, size)

    def rows(self, label: str, lrs) -> np.ndarray:
        known = self.pool[label][0]
        rows = [int(np.argmin(np.abs(np.log(known) - math.log(lr)))) for lr in np.atleast_1d(lrs)]
        if not np.allclose(known[rows], lrs, rtol=1e-9, atol=0):
            raise FocuslabError(f"pool for {label} lacks lr(s) {lrs}")
        return np.asarray(rows)

    def __call__(self, label: str, lrs, lo: int, hi: int) -> np.ndarray:
        return self.pool[label][1][np.ix_(self.rows(label, lrs), self.index[lo:hi])]

    def screen(self, label: str, grid) -> tuple[np.ndarray, np.ndarray]:
        """Scan means and standard errors over ``grid`` from the scan's replicates; a grid lr the
        pool lacks gets mean +inf (so the race never asks for it)."""
        known = self.pool[label][0]
        means, sems = np.full(len(grid), np.inf), np.full(len(grid), np.nan)
        for i, lr in enumerate(grid):
            row = int(np.argmin(np.abs(np.log(known) - math.log(lr))))
            if np.isclose(known[row], lr, rtol=1e-9, atol=0):
                y = self.pool[label][1][row, self.scan_index]
                with np.errstate(invalid="ignore"):
                    means[i], sems[i] = y.mean(), y.std(ddof=1) / math.sqrt(len(y))
        return means, sems


# --- the simulator, chunks of cells, work units ---------------------------------------------------
def _simulate(config, label: str, cells: np.ndarray, lrs: np.ndarray, keys: np.ndarray,
              plans: dict | None = None) -> dict:
    """Every simulator call of refine goes through here: optimizer ``label`` of ``config`` on
    ``cells`` (n_cells, 5) x ``lrs`` x replicate ``keys`` (n_cells, n_rep) -> per-lane metrics of
    shape (cells, lrs, replicates), at least ``final_loss`` and ``diverged``.  The toy's one entry
    point (OptimizerEntry.simulate) runs built-ins on the numba kernel and any other torch optimizer on
    the plug-in engine, in the mode the scan's probe recorded (``plans``: label -> plan)."""
    return config.entry(label).simulate(cells, lrs, keys, config.steps, plan=(plans or {}).get(label))


class SimulatorSampler:
    """Fresh replicates of one cell from the simulator: fresh replicate j is scan replicate
    R + j (R = the scan's replicates), a new counter-based stream.  Counts the steps it runs."""

    def __init__(self, config, coords: np.ndarray, plans: dict | None = None):
        self.config, self.coords = config, np.asarray(coords, dtype=float).reshape(1, -1)
        self.plans = plans or {}
        self.steps = 0

    def __call__(self, label: str, lrs, lo: int, hi: int) -> np.ndarray:
        from .toy.rng import trajectory_keys

        lrs = np.asarray(lrs, dtype=float)
        keys = trajectory_keys(self.config.seed, self.coords, self.config.replicates + np.arange(lo, hi))
        out = _simulate(self.config, label, self.coords, lrs, keys, self.plans)
        self.steps += len(lrs) * (hi - lo) * self.config.steps
        return np.where(out["diverged"][0] == 1, np.inf, out["final_loss"][0])


def _cell_rows(i: int, r: CellResult, lattice: Lattice, replicate0: int, steps: int):
    """The three tables' rows for one cell: (cell row, lr rows, replicate frames)."""
    import pandas as pd

    unit, top = lattice.unit, (len(lattice.grid) - 1) * lattice.unit
    beyond, lr_rows, frames, refined = [], [], [], 0
    for o, arms in r.arms.items():
        for a in arms:
            if not len(a.y):
                continue  # joined the race after the cell's last look
            steps_out = a.u / unit if a.u < 0 else (a.u - top) / unit if a.u > top else 0.0
            beyond.append(abs(steps_out))
            refined += int(lattice.level(a.u) > 0)
            sel, est = roles(len(a.y))
            lr_rows.append({"cell": i, "optimizer": o, "lr": a.lr, "level": lattice.level(a.u),
                            "steps_beyond_grid": steps_out, "joined_look": a.added + 1,
                            "left_look": a.left + 1 if a.left >= 0 else 0, "replicates": len(a.y),
                            "selected": r.selected.get(o) == a.u, "diverged": a.diverged,
                            "selection_mean": float(a.y[sel].mean()), "estimation_mean": float(a.y[est].mean()),
                            "optimizer_state": r.state.get(o, "")})
            j = np.arange(len(a.y))
            frames.append(pd.DataFrame({"cell": np.int32(i), "optimizer": o, "lr": a.lr,
                                        "replicate": (replicate0 + j).astype(np.int32),
                                        "selection": j % SELECTION_EVERY == 0, "final_loss": a.y,
                                        "diverged": np.isinf(a.y)}))
    racing = bool(lr_rows)
    row = {"cell": i, "kind": r.kind, "p": r.p, "best": r.best, "tied": ",".join(r.tied), "leader": r.leader,
           "runner_up": r.runner_up, "lead": r.lead, "scale": r.scale, "look": r.look,
           "estimation": r.estimation if racing else 0, "fresh": r.fresh if racing else 0,
           "lr_extended": int(math.ceil(max(beyond, default=0.0))), "lr_refined": refined, "steps": steps,
           "contrasts": json.dumps(r.contrasts)}
    return row, lr_rows, frames


_DATA_DTYPES = {"cell": np.int32, "optimizer": object, "lr": float, "replicate": np.int32, "selection": bool,
                "final_loss": float, "diverged": bool}


def compute_chunk(config, params: RefineParams, index: list[int], coords: np.ndarray, targets: list[float],
                  screens: list[dict], plans: dict | None = None) -> dict:
    """Worker body: the procedure for the cells ``index`` (coordinates ``coords``) with their stop
    targets; returns the tables of a work unit ("" cells, "lrs", "data")."""
    import pandas as pd

    lattice = Lattice(config.axes["lr"].values, params)
    cells, lrs, frames = [], [], []
    for i, xy, target, screen in zip(index, coords, targets, screens):
        sampler = SimulatorSampler(config, xy, plans)
        r = refine_cell(sampler, screen, params, lattice, target, list(config.optimizers))
        row, lr_rows, fr = _cell_rows(i, r, lattice, config.replicates, sampler.steps)
        cells.append(row)
        lrs.extend(lr_rows)
        frames.extend(fr)
    data = (pd.concat(frames, ignore_index=True) if frames else
            pd.DataFrame({k: pd.Series(dtype=v) for k, v in _DATA_DTYPES.items()}))
    return {"": pd.DataFrame(cells), "lrs": pd.DataFrame(lrs), "data": data}


def refine_digest(scan_digest: str, params: RefineParams) -> str:
    return config_digest({"scan": scan_digest, "refine": asdict(params), "procedure": PROCEDURE,
                          "selection_every": SELECTION_EVERY, "screen_z": SCREEN_Z, "screen_steps": SCREEN_STEPS,
                          "prune_from": PRUNE_FROM, "retire_p": RETIRE_P, "spending": "n^2",
                          "test": "skew-corrected, a in (1/3, (3c-1)/6)"})


@contextlib.contextmanager
def _locked(directory: Path):
    """An exclusive lock on the refinement of ``directory``: concurrent shards read and write
    scan.json one at a time."""
    import fcntl

    path = Path(directory) / REFINE / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _screens(config, runs: pd.DataFrame, index: list[int]) -> list[dict]:
    """Per cell: optimizer -> (scan means, scan standard errors) over the sorted grid lrs."""
    grid = np.sort(np.asarray(config.axes["lr"].values, dtype=float))
    sub = runs[runs["cell"].isin(index)]
    wide = {}
    for (o, c), g in sub.groupby(["optimizer", "cell"], sort=False):
        g = g.set_index("lr").reindex(grid)
        wide[(o, c)] = (g["final_loss_mean"].to_numpy(float), g["final_loss_sem"].to_numpy(float))
    empty = (np.full(len(grid), np.inf), np.full(len(grid), np.nan))
    return [{o: wide.get((o, c), empty) for o in config.optimizers} for c in index]


def _unit_name(chunk: int, rnd: int, cells=(), targets=()) -> str:
    if rnd == 0:
        return f"c{chunk:05d}"
    tag = hashlib.sha256(json.dumps([list(map(int, cells)), [float(t) for t in targets]]).encode()).hexdigest()[:10]
    return f"r{rnd}-c{chunk:05d}-{tag}"


def run_refine(directory: Path, params: RefineParams, jobs: int | None = None, progress: bool = True,
               shard: tuple[int, int] | None = None, force: bool = False, log=None) -> dict:
    """Refine the scan in ``directory`` (see the module docstring); resumable and shardable."""
    import pandas as pd

    import os
    import shutil

    from .results import load_scan, read_json, read_parquet, write_json
    from .runner import Progress, Unit, pending, run_units, unit_path
    from .scan import cell_values, config_from_meta

    log = log or (lambda msg: print(msg, file=sys.stderr))
    directory = Path(directory)
    meta, runs, _ = load_scan(directory)
    config = config_from_meta(meta)
    params = params.validate()
    digest = refine_digest(meta["digest"], params)
    work = directory / REFINE / "units"
    with _locked(directory):
        meta = read_json(directory / "scan.json")
        record = meta.get("refine")
        if record and record.get("digest") != digest:
            if not force:
                raise FocuslabError(f"{directory} was refined with other settings (digest {record.get('digest')} "
                                    f"vs {digest}); use --force to start the refinement over")
            shutil.rmtree(work, ignore_errors=True)
            for name in (DECISIONS, REPLICATES):
                (directory / name).unlink(missing_ok=True)
            (directory / REFINE / LRS).unlink(missing_ok=True)
            record = None
        if (record and shard is None and record.get("status") == "complete" and (directory / DECISIONS).exists()
                and (directory / REPLICATES).exists()):
            return {"already_complete": True, "fractions": record.get("fractions", {}), "looks": params.looks()}
        work.mkdir(parents=True, exist_ok=True)
        if not record:
            meta["refine"] = {"digest": digest, "params": asdict(params), "procedure_version": PROCEDURE,
                              "status": "running", "version": __version__,
                              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "procedure": __doc__.split("\n\n", 1)[1].strip(), "attempts": []}
            write_json(meta, directory / "scan.json")
    plans = meta.get("plugins") or {}  # how the scan ran each external optimizer on the toy
    cells = cell_values(config)
    cell_index = pd.DataFrame(cells, columns=list(CELL_NAMES)).assign(cell=np.arange(config.n_cells))
    runs = runs.merge(cell_index, on=list(CELL_NAMES), how="inner")[
        ["optimizer", "cell", "lr", "final_loss_mean", "final_loss_sem"]]
    chunks = [list(range(s, min(s + params.chunk_cells, config.n_cells)))
              for s in range(0, config.n_cells, params.chunk_cells)]
    mine = [k for k in range(len(chunks)) if shard is None or k % shard[1] == shard[0] - 1]
    jobs = jobs or os.cpu_count() or 1
    started = time.time()
    computed = {"steps": 0, "units": 0}

    def run_round(rnd: int, plan: dict) -> dict:
        """plan: chunk -> (cells, targets); returns chunk -> unit name."""
        units = []
        for k, (index, targets) in sorted(plan.items()):
            units.append(Unit(_unit_name(k, rnd, index, targets), len(index),
                              (config, params, index, cells[index], targets, _screens(config, runs, index), plans),
                              sides=("lrs", "data")))
        todo = pending(work, units, log)
        label = "refine" if rnd == 0 else f"refine (continuing cells that stopped early but failed BH, round {rnd})"
        bar = Progress(sum(u.cost for u in todo), "cells", f"{label} {directory}", enabled=progress,
                       unit_total=len(todo), unit_name="chunks")
        run_units(work, todo, compute_chunk, jobs=jobs, progress=bar)
        bar.close()
        for u in todo:
            computed["steps"] += int(read_parquet(unit_path(work, u.name))["steps"].sum())
            computed["units"] += 1
        return {k: u.name for k, u in zip(sorted(plan), units)}

    latest = {}  # cell -> the unit holding its latest result
    names = run_round(0, {k: (chunks[k], [params.fdr] * len(chunks[k])) for k in mine})
    for k, name in names.items():
        latest.update({c: name for c in chunks[k]})
    summary = {}
    if shard is None:
        rnd = 0
        while True:
            threshold, reopen = _reopen(_latest_cells(work, latest), params)
            if not reopen:
                break
            rnd += 1
            plan: dict = {}
            for c in reopen:
                index, targets = plan.setdefault(c // params.chunk_cells, ([], []))
                index.append(c)
                targets.append(threshold)
            names = run_round(rnd, plan)
            for k, name in names.items():
                latest.update({c: name for c in plan[k][0]})
        summary = _finish(directory, config, cells, work, latest, params, rnd)
    attempt = {"wall_seconds": round(time.time() - started, 3), "steps_computed": computed["steps"],
               "units_computed": computed["units"], "shard": list(shard) if shard else None, "jobs": jobs}
    with _locked(directory):
        meta = read_json(directory / "scan.json")
        meta["refine"].setdefault("attempts", []).append(attempt)
        if summary:
            meta["refine"].update(summary["record"])
        write_json(meta, directory / "scan.json")
    summary.pop("record", None)
    return {**attempt, **summary, "looks": params.looks()}


def _latest_cells(work: Path, latest: dict) -> pd.DataFrame:
    """Each cell's row from the unit that holds its latest result."""
    import pandas as pd

    from .results import read_parquet
    from .runner import unit_path

    frames = []
    for name in sorted(set(latest.values())):
        t = read_parquet(unit_path(work, name))
        frames.append(t[t["cell"].map(latest).eq(name)])
    return pd.concat(frames, ignore_index=True).sort_values("cell", kind="stable").reset_index(drop=True)


def _reopen(table: pd.DataFrame, params: RefineParams) -> tuple[float, list[int]]:
    """BH's threshold over the cells' p-values now, and the cells that stopped before their last
    look with a claim but a p-value above it: they are continued, targeted at that threshold."""
    live = table[table["kind"] != "diverged"]
    if live.empty:
        return params.fdr, []
    passed = fdr_reject(live["p"].to_numpy(), params.fdr)
    threshold = params.fdr * passed.sum() / len(live)
    last = len(params.looks()) - 1
    stopped = live[~passed & (live["look"] < last) & live["kind"].isin(["winner", "tied"])]
    return threshold, sorted(int(c) for c in stopped["cell"])


def _finish(directory, config, cells, work, latest, params, rounds) -> dict:
    """BH over the cells' final p-values; decisions.parquet, refine/lrs.parquet and
    replicates.parquet (written chunk by chunk: tens of millions of rows need not sit in memory)."""
    import pandas as pd

    import pyarrow as pa
    import pyarrow.parquet as pq

    from .results import atomic_path, read_parquet, write_parquet
    from .runner import unit_path

    table = _latest_cells(work, latest)
    live = (table["kind"] != "diverged").to_numpy()
    q_values = np.full(len(table), math.nan)
    q_values[live] = bh_adjusted(table.loc[live, "p"].to_numpy())
    passed = live & (np.nan_to_num(q_values, nan=2.0) <= params.fdr)
    decided, m = int(passed.sum()), int(live.sum())
    alpha = params.fdr * max(decided, 1) / max(m, 1)
    weights = params.spending()
    families = max(1, len(config.optimizers) * (len(config.optimizers) - 1))
    rows = []
    for t, ok, qv in zip(table.itertuples(index=False), passed, q_values):
        c = int(t.cell)
        outcome = "diverged" if t.kind == "diverged" else (t.kind if ok else "undecided")
        row = {name: float(cells[c, j]) for j, name in enumerate(CELL_NAMES)}
        tied = sorted(t.tied.split(","), key=list(config.optimizers).index) if t.tied else []
        low, high = lead_interval(json.loads(t.contrasts), alpha, weights, families, t.scale)
        row.update(cell=c, outcome=outcome, winner=t.best if outcome == "winner" else "",
                   tied=",".join(tied) if outcome == "tied" else "", leader=t.leader, runner_up=t.runner_up,
                   lead=t.lead, lead_low=low, lead_high=high, margin=params.equivalence * t.scale, scale=t.scale,
                   p_value=t.p, q_value=float(qv), replicates=int(t.fresh), estimation_replicates=int(t.estimation),
                   looks=int(t.look) + 1 if t.fresh else 0, steps=int(t.steps), lr_extended=int(t.lr_extended),
                   lr_refined=int(t.lr_refined))
        rows.append(row)
    decisions = pd.DataFrame(rows)
    write_parquet(decisions, directory / DECISIONS)
    schema = pa.schema([("cell", pa.int32()), ("optimizer", pa.dictionary(pa.int8(), pa.string())),
                        ("lr", pa.float64()), ("replicate", pa.int32()), ("selection", pa.bool_()),
                        ("final_loss", pa.float64()), ("diverged", pa.bool_())])
    by_chunk: dict = {}
    for c, name in latest.items():
        by_chunk.setdefault(c // params.chunk_cells, {}).setdefault(name, []).append(c)
    lr_frames = []
    with atomic_path(directory / REPLICATES) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for k in sorted(by_chunk):
            data = []
            for name, mine in sorted(by_chunk[k].items()):
                d = read_parquet(unit_path(work, name, "data"))
                data.append(d[d["cell"].isin(mine)])
                t = read_parquet(unit_path(work, name, "lrs"))
                lr_frames.append(t[t["cell"].isin(mine)])
            data = pd.concat(data, ignore_index=True).sort_values(["cell", "optimizer", "lr", "replicate"],
                                                                  kind="stable")
            if len(data):
                writer.write_table(pa.Table.from_pandas(data.astype({"optimizer": "category"}), schema=schema,
                                                        preserve_index=False))
    lrs = pd.concat(lr_frames, ignore_index=True).sort_values(["cell", "optimizer", "lr"], kind="stable")
    write_parquet(lrs.reset_index(drop=True), directory / REFINE / LRS)
    spent = sum(int(read_parquet(f)["steps"].sum()) for f in sorted(Path(work).glob("*.parquet"))
                if f.name.count(".") == 1)
    fractions = {o: float((decisions["outcome"] == o).mean()) for o in OUTCOMES}
    record = {"status": "complete", "fractions": fractions, "steps_spent": spent, "decided": decided,
              "bh_threshold": params.fdr * decided / max(m, 1), "interval_level": 1 - alpha, "rounds": rounds}
    return {"fractions": fractions, "cells": config.n_cells, "record": record}
