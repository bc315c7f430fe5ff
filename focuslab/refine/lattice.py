"""The candidates a race may run: the lattice of learning rates around a scan's grid.

The procedure (focuslab.refine.procedure) asks this module three things only, so that another
candidate space (trials: points of lr x other settings) replaces it without touching the race:
where to start (``initial``, from the scan's means), what joins after a look (``grow``, given the
leader and the selection means of what was raced), and what a candidate is (``lr``, its value for
the sampler; ``describe``, its columns in refine/lrs.parquet).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .settings import RefineParams

SCREEN_Z = 2.0  # scan lrs within this many combined standard errors of the scan's best are raced ...
SCREEN_STEPS = 2  # ... if they are at most this many grid steps from it



def _read_screen(screen: tuple):
    """The scan's means and standard errors over a candidate list (``screen``): (means, standard
    errors with NaN read as +inf, which means are finite, the index of the best finite mean), or
    None when every mean is +inf (every candidate diverged)."""
    means, sems = (np.asarray(x, dtype=float) for x in screen)
    ok = np.isfinite(means)
    if not ok.any():
        return None
    return means, np.where(np.isfinite(sems), sems, np.inf), ok, int(np.argmin(np.where(ok, means, np.inf)))

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

    def size(self) -> int:
        """How many positions the race can reach."""
        return self.hi - self.lo + 1

    def beyond(self, u: int) -> float:
        """Grid steps past the grid's edge (negative below it; 0 inside)."""
        top = (len(self.grid) - 1) * self.unit
        return u / self.unit if u < 0 else (u - top) / self.unit if u > top else 0.0

    def describe(self, u: int) -> dict:
        """A candidate's own columns in refine/lrs.parquet."""
        return {"level": self.level(u), "steps_beyond_grid": self.beyond(u)}

    def setting_values(self, u: int) -> dict:
        """The settings a candidate runs at beyond the optimizer's own: none, only its lr moves."""
        return {}

    def initial(self, screen: tuple) -> list[int]:
        """Racing lrs from the scan (``screen``: the scan's means and standard errors over the sorted
        grid): its best grid lr, its grid neighbours, and the grid lrs next to those, out to
        SCREEN_STEPS steps either side, as long as their scan mean is within SCREEN_Z combined
        standard errors of the best (the scan's replicates cannot tell them apart).  A grid lr whose
        scan mean is +inf (a replicate diverged) is +inf for certain and left out; so an optimizer
        whose every grid lr diverged starts with none."""
        read = _read_screen(screen)
        if read is None:
            return []
        means, se, ok, j = read
        unit = self.unit
        us = {j * unit}
        for side in (-1, 1):
            for step in range(1, SCREEN_STEPS + 1):
                i = j + side * step
                u = i * unit
                if not self.inside(u):
                    break
                if 0 <= i < len(means):
                    if not ok[i]:
                        break
                    if step > 1 and not means[i] - means[j] <= SCREEN_Z * math.hypot(se[i], se[j]):
                        break
                elif step > 1:
                    break  # beyond the grid the race itself decides whether to go further
                us.add(u)
        return sorted(us)

    def grow(self, leader: int, score: Callable[[int], float | None]) -> list[int]:
        """Positions that join the race after a look that ``leader`` leads: the grid neighbours of a
        grid-level leader (past the grid's edge too), and the midpoint towards its better neighbour
        at its own level.  ``score(u)``: the selection mean of the candidate raced at u over this
        look's replicates, None when nothing complete (or nothing finite) was raced there.  Only
        positions inside the lattice are returned; the race skips those it already holds."""
        new = []
        if leader % self.unit == 0:
            new += [leader - self.unit, leader + self.unit]
        level = self.level(leader)
        if level < self.levels:
            step = self.unit >> level
            near = [(m, leader + s) for s in (-step, step) if (m := score(leader + s)) is not None]
            if near:
                better = min(near, key=lambda x: x[0])[1]
                new.append((leader + better) // 2)
        return [u for u in new if self.inside(u)]

    def most(self, looks: int, start):
        """The most candidates a race that starts from ``start`` of them (an int or an array) can
        simulate over ``looks`` looks: ``grow`` adds at most 3 after each look but the last (two
        neighbours and a midpoint), and none past the lattice's reach."""
        return np.minimum(self.size(), start + 3 * max(0, looks - 1))


#: A tuned optimizer's race starts from at most this many of its trials (those the scan cannot
#: rule out, best scan means first), besides the lr neighbours of its best one.
MAX_TRIALS = 32


class TrialSpace:
    """Candidates of a tuned optimizer (focuslab.tuning): its design trials, and around the leading
    one the lr neighbours and midpoints on the lattice of its own lr grid at the leader's settings.
    A candidate is a key (s, u): ``s`` indexes the distinct settings of the design, ``u`` is a
    position on the lr lattice (Lattice).  The same questions as Lattice answers, so the race is
    the same race; the claim stays "each optimizer at its best candidate", whatever the race
    picked (the statement's bound holds at every candidate raced)."""

    def __init__(self, trials, lr_grid, params: RefineParams):
        self.lattice = Lattice(lr_grid, params)
        self.trials = list(trials)  # the design trials (focuslab.tuning.Trial), in the scan's order
        self.settings: list = []
        where = {}
        self.keys = []
        for t in self.trials:
            if t.settings not in where:
                where[t.settings] = len(self.settings)
                self.settings.append(t.settings)
            self.keys.append((where[t.settings], self.position(t.lr)))
        self.levels, self.unit = self.lattice.levels, self.lattice.unit
        self.lo, self.hi = self.lattice.lo, self.lattice.hi

    def position(self, lr: float) -> int:
        """The lattice position of ``lr`` (a grid lr, or any lr the lattice holds)."""
        grid, unit = self.lattice.grid, self.lattice.unit
        j = int(np.argmin(np.abs(np.log(grid) - math.log(lr))))
        if math.isclose(grid[j], lr, rel_tol=1e-12):
            return j * unit
        u = min(range(self.lattice.lo, self.lattice.hi + 1), key=lambda v: abs(math.log(self.lattice.lr(v) / lr)))
        if not math.isclose(self.lattice.lr(u), lr, rel_tol=1e-9):
            raise ValueError(f"lr {lr:g} is not on the lattice of {grid[0]:g}..{grid[-1]:g}")
        return u

    def lr(self, key) -> float:
        return self.lattice.lr(key[1])

    def setting_values(self, key) -> dict:
        return dict(self.settings[key[0]])

    def level(self, key) -> int:
        return self.lattice.level(key[1])

    def inside(self, key) -> bool:
        return self.lattice.inside(key[1])

    def size(self) -> int:
        return len(self.settings) * self.lattice.size()

    def describe(self, key) -> dict:
        """A candidate's place on its lr lattice (its settings are ``setting_values``)."""
        return self.lattice.describe(key[1])

    def initial(self, screen: tuple) -> list:
        """The design trials the scan cannot rule out (scan mean within SCREEN_Z combined standard
        errors of the best trial's; at most MAX_TRIALS, best first) and the lr neighbours of the
        best one at its settings.  A trial whose scan mean is +inf diverged for certain."""
        read = _read_screen(screen)
        if read is None:
            return []
        means, se, ok, j = read
        close = [i for i in np.flatnonzero(ok) if means[i] - means[j] <= SCREEN_Z * math.hypot(se[i], se[j])]
        close = sorted(close, key=lambda i: (means[i], i))[:MAX_TRIALS]
        keys = {self.keys[i] for i in close} | {self.keys[j]}
        s, u = self.keys[j]
        keys |= {(s, v) for v in (u - self.unit, u + self.unit) if self.lattice.inside(v)}
        return sorted(keys)

    def grow(self, leader, score) -> list:
        s, u = leader
        return [(s, v) for v in self.lattice.grow(u, lambda w: score((s, w)))]

    def most(self, looks: int, start):
        return np.minimum(self.size(), start + 3 * max(0, looks - 1))


def candidate_spaces(config, params: RefineParams) -> dict:
    """Each optimizer's candidate space: a TrialSpace for a tuned one, else the lattice of the scan's
    lr grid (one object, shared)."""
    lattice = Lattice(config.axes["lr"].values, params)
    tuning = getattr(config, "tuning", None)
    out = {}
    for label in config.optimizers:
        if tuning is not None and label in tuning.spaces:
            out[label] = TrialSpace([t for t in config.trials(label) if t.design], tuning.spaces[label].lr.values,
                                    params)
        else:
            out[label] = lattice
    return out
