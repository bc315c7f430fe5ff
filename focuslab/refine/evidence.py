"""What the estimation replicates say about one statement "b is worse than a by more than t": the
paired differences behind it, the way each of b's lrs is bounded, and the statement's lower
confidence bound and p-value (see focuslab.refine's docstring, "Judgement")."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .settings import roles
from .statistics import FIELDS, Moments, exceeds_p, lower_bound, stack


def differences(arm, pivot, fresh: list[int]):
    """Paired differences arm - pivot (two raced candidates, focuslab.refine.procedure.Arm) on their
    common fresh replicates: (estimation part, selection part, the look that replicate count
    belongs to)."""
    count = min(len(arm.y), len(pivot.y))
    sel, est = roles(count)
    d = arm.y[:count] - pivot.y[:count]
    return d[est], d[sel], fresh.index(count)


class Part(NamedTuple):
    """One of b's lrs other than its selected one, and how it is bounded."""

    lr: float
    way: str  # "direct" | "within"
    moments: Moments
    look: int


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

    ``pivot`` holds y_b(p_b) - y_a(p_a) and its look; ``lrs`` the others (Part).
    ``certain``: every lr b raced diverged, so m_b = +inf and the statement needs no test."""

    pivot: tuple | None = None  # (Moments, look)
    lrs: list = field(default_factory=list)  # [Part]
    certain: bool = False

    def bound(self, alpha: float, weights, families: int) -> float:
        """Lower confidence bound for m_b - m_a at level 1 - alpha."""
        if self.certain:
            return math.inf
        m, look = self.pivot
        level = alpha / families
        low = float(lower_bound(m, level * weights[look]))
        for way, share in (("direct", 1.0), ("within", 0.5)):
            part = [x for x in self.lrs if x.way == way]
            if part:
                ws = np.array([weights[x.look] for x in part])
                b = lower_bound(stack([x.moments for x in part]), share * level * ws)
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
        return [{"side": side, "part": way, "lr": lr, "look": look, **{f: float(getattr(m, f)) for f in FIELDS}}
                for way, lr, m, look in parts]

    @staticmethod
    def from_rows(rows: list[dict]) -> "Evidence":
        """The Evidence that the output of ``rows`` (one side) describes."""
        ev = Evidence()
        for r in rows:
            m = Moments(*(np.asarray(r[f], dtype=float) for f in FIELDS))
            if r["part"] == "pivot":
                ev.pivot = (m, int(r["look"]))
            else:
                ev.lrs.append(Part(r["lr"], r["part"], m, int(r["look"])))
        return ev


def evidence(arms_b: list, pivot_b, pivot_a, fresh) -> Evidence:
    """Evidence for m_b - m_a (see Evidence); lrs of b that diverged are +inf for certain."""
    live = [a for a in arms_b if len(a.y) and not a.diverged]
    if not live or pivot_b is None:
        return Evidence(certain=not live)
    est, sel, look = differences(pivot_b, pivot_a, fresh)
    ev = Evidence((Moments.of(est, sel), look))
    spread = float(sel.std()) / math.sqrt(len(est))  # the pivot difference's standard error
    for arm in live:
        if arm is pivot_b:
            continue
        d_est, d_sel, d_look = differences(arm, pivot_a, fresh)
        w_est, w_sel, w_look = differences(arm, pivot_b, fresh)
        # promised widths from selection replicates (half the level costs about 10 % more width)
        direct = float(d_sel.std()) / math.sqrt(len(d_est))
        within = 1.1 * (spread + float(w_sel.std()) / math.sqrt(len(w_est)))
        if within < direct:
            ev.lrs.append(Part(arm.lr, "within", Moments.of(w_est, w_sel), w_look))
        else:
            ev.lrs.append(Part(arm.lr, "direct", Moments.of(d_est, d_sel), d_look))
    return ev
