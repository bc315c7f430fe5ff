"""The sequential procedure for one cell and for a map (focuslab.refine's docstring states it):
racing each optimizer's candidate lrs on selection replicates, judging the optimizers on estimation
replicates, stopping at the first look that supports a claim, and Benjamini-Hochberg over the map
with the continuation of cells that stopped early but fail it.  It sees the simulator only through
a sampler (focuslab.refine.samplers) and the candidates only through the lattice
(focuslab.refine.lattice)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from typing import TYPE_CHECKING

import numpy as np

from .evidence import Evidence, differences, evidence
from .lattice import Lattice
from .settings import RefineParams, fresh_count, roles
from .statistics import Moments, fdr_reject, lower_bound

if TYPE_CHECKING:
    import pandas as pd

PRUNE_FROM = 2  # no lr leaves the race before this look (0-based): frozen small samples bound poorly
RETIRE_P = 1e-6  # an optimizer worse than every other by the margin at this p stops being simulated


def space_of(spaces, label: str):
    """An optimizer's candidate space: ``spaces`` is one Lattice for all, or label -> space."""
    return spaces[label] if isinstance(spaces, dict) else spaces


@dataclass
class Arm:
    """One raced candidate of one optimizer (an lr; for a tuned optimizer a trial or an lr beside
    one) and its fresh replicates so far (+inf: diverged)."""

    u: object  # the candidate's key in its space: a lattice position, or (settings, position)
    lr: float
    y: np.ndarray = field(default_factory=lambda: np.empty(0))
    active: bool = True  # still racing (simulated at the next look)
    added: int = 0  # the look it joined
    left: int = -1  # the look it left the race (-1: never)

    @property
    def diverged(self) -> bool:
        return bool(np.isinf(self.y).any())


def _race(arms: list[Arm], lattice: Lattice, count: int, prune_level: float, look: int) -> Arm | None:
    """The selection step after a look (selection replicates only; an lr seen to diverge anywhere
    is +inf for certain and leaves the race): the selected lr, lrs far behind it dropped, and the
    candidates the lattice adds around it (Lattice.grow)."""
    sel, _ = roles(count)
    for a in arms:
        if a.active and a.diverged:
            a.active, a.left = False, look
    live = [a for a in arms if a.active and len(a.y) >= count]
    if not live:  # every lr it raced diverged: +inf over its candidates
        return None
    at = {a.u: a for a in arms}
    means = np.array([a.y[sel].mean() for a in live])
    best = live[int(np.argmin(means))]
    yb = best.y[sel]
    for a in live:  # far behind on selection replicates (at a hundredth of the level its bound will face)
        if a is not best and look >= PRUNE_FROM:
            d = a.y[sel] - yb
            if float(lower_bound(Moments.of(d, d[:0]), prune_level / 100)) > 0:
                a.active, a.left = False, look

    def score(u: int) -> float | None:  # a candidate raced through this look that never diverged
        a = at.get(u)
        return float(a.y[sel].mean()) if a is not None and len(a.y) >= count and not a.diverged else None

    for u in lattice.grow(best.u, score):
        if u not in at:
            at[u] = Arm(u, lattice.lr(u), added=look + 1)
            arms.append(at[u])
    return best


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


@dataclass
class Race:
    """One cell's race: each optimizer's raced candidates and where it stands, and what its looks are
    judged by (the margin and scale are fixed from the scan, before any fresh replicate)."""

    optimizers: list
    arms: dict  # optimizer -> [Arm]
    state: dict  # optimizer -> "normal" (racing), "retired" (beaten at RETIRE_P) or "diverged"
    selected: dict  # optimizer -> lattice position of its selected lr (None: none yet, or diverged)
    delta: float  # the margin: equivalence x |L|
    scale: float  # |L|, the lowest scan mean among the optimizers
    looks: list  # estimation replicates per racing lr at each look
    fresh: list  # fresh replicates per racing lr at each look
    weights: np.ndarray  # each look's share of the error rate (RefineParams.spending)
    families: int  # statement families: K (K - 1) for K optimizers

    @staticmethod
    def start(screens: dict, params: RefineParams, lattice, optimizers: list) -> "Race":
        """The race before its first look: each optimizer's candidates from the scan (``screens``:
        label -> (scan means, scan standard errors) over its candidates: the grid lrs, or a tuned
        optimizer's design trials); ``lattice``: one Lattice, or label -> candidate space."""
        arms = {o: [Arm(u, space_of(lattice, o).lr(u)) for u in space_of(lattice, o).initial(screens[o])]
                for o in optimizers}
        firsts = [float(np.min(np.asarray(screens[o][0], dtype=float))) for o in optimizers if arms[o]]
        scale = abs(min(firsts)) if firsts else math.nan
        looks = params.looks()
        return Race(optimizers=optimizers, arms=arms,
                    state={o: "normal" if arms[o] else "diverged" for o in optimizers},
                    selected={o: None for o in optimizers}, delta=params.equivalence * scale if firsts else 0.0,
                    scale=scale, looks=looks, fresh=[fresh_count(n) for n in looks], weights=params.spending(),
                    families=max(1, len(optimizers) * (len(optimizers) - 1)))


def _judge(race: Race, look: int) -> CellResult:
    """The cell's best-supported claim at a look, from estimation replicates only."""
    optimizers, arms, state, selected = race.optimizers, race.arms, race.state, race.selected
    delta, scale, fresh = race.delta, race.scale, race.fresh
    at_look = dict(scale=scale, look=look, estimation=race.looks[look], fresh=fresh[look])
    if all(state[o] == "diverged" for o in optimizers):
        return CellResult(kind="diverged", p=0.0, best="", tied=(), leader="", runner_up="", lead=math.nan, **at_look)
    pivots = {o: next(a for a in arms[o] if a.u == selected[o]) for o in optimizers
              if selected.get(o) is not None and state[o] in ("normal", "retired")}
    leaders = [o for o in optimizers if o in pivots and state[o] == "normal"]
    if not leaders:
        return CellResult(kind="", p=1.0, best="", tied=(), leader="", runner_up="", lead=math.nan, **at_look)
    found: dict = {}
    pvals: dict = {}

    def worse(a, b, threshold) -> float:  # p of "b is worse than a by more than threshold"
        if (a, b) not in found:
            found[(a, b)] = (Evidence(certain=True) if state[b] == "diverged" else
                             evidence(arms[b], pivots.get(b), pivots[a], fresh))
        if (a, b, threshold) not in pvals:
            pvals[(a, b, threshold)] = found[(a, b)].p(threshold, race.weights, race.families)
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
        contrasts = found[(leader, runner)].rows("low") + found[(runner, leader)].rows("high")
        est_r, _, _ = differences(pivots[runner], pivots[leader], fresh)
        lead = float(est_r.mean()) / scale if scale > 0 else math.nan
    elif runner and state[runner] == "diverged":
        lead = math.inf
    beaten = tuple(o for o in leaders if o != leader and all(worse(a, o, delta) <= RETIRE_P
                                                            for a in leaders if a != o))
    return CellResult(kind="tied" if members else "winner", p=p, best=w, tied=(w, *members) if members else (),
                      leader=leader, runner_up=runner, lead=lead, contrasts=contrasts, beaten=beaten, **at_look)


def refine_cell(sample, screens: dict, params: RefineParams, lattice, target: float,
                optimizers: list[str]) -> CellResult:
    """The sequential procedure of focuslab.refine's docstring for one cell.

    ``sample(label, lrs, lo, hi)``: final losses (+inf: diverged) of fresh replicates lo..hi-1 at
    ``lrs``, shape (len(lrs), hi - lo) (for a tuned optimizer's candidates also ``settings=``, the
    settings they run at); ``screens``: label -> (scan means, scan standard errors) over its
    candidates (Race.start); ``lattice``: one Lattice, or label -> candidate space (TrialSpace for
    a tuned optimizer); ``target``: the p-value at which the cell stops.
    """
    race = Race.start(screens, params, lattice, list(optimizers))
    arms, state, selected = race.arms, race.state, race.selected
    result = None
    for k, count in enumerate(race.fresh):
        for o in race.optimizers:  # every racing lr gets this look's fresh replicates
            if state[o] != "normal":
                continue
            todo = [a for a in arms[o] if a.active and len(a.y) < count]
            space = space_of(lattice, o)
            for start, settings in sorted({(len(a.y), _key(space.setting_values(a.u))) for a in todo}):
                group = [a for a in todo if len(a.y) == start and _key(space.setting_values(a.u)) == settings]
                lrs = np.array([a.lr for a in group])
                y = sample(o, lrs, start, count, settings=dict(settings)) if settings else sample(o, lrs, start, count)
                for a, row in zip(group, np.asarray(y, dtype=float)):
                    a.y = np.concatenate([a.y, row])
        for o in race.optimizers:
            if state[o] == "normal":
                best = _race(arms[o], space_of(lattice, o), count, params.fdr * race.weights[k] / race.families, k)
                selected[o] = None if best is None else best.u
                if best is None:
                    state[o] = "diverged"
        result = _judge(race, k)
        if result.kind == "diverged" or (result.kind and result.p <= target):
            break
        for o in result.beaten:
            state[o] = "retired"
    result.arms, result.selected, result.state = arms, dict(selected), dict(state)
    return result


def _key(settings: dict) -> tuple:
    """Settings as a sortable key (values compared as text, as the tables write them)."""
    return tuple(sorted((k, v) for k, v in settings.items()))


def lead_interval(contrasts: list, alpha: float, weights, families: int, scale: float) -> tuple[float, float]:
    """(low, high) for (m_runner-up - m_leader) / |L| at level 1 - ``alpha`` from a cell's stored
    evidence (both directions; each bound at the families' Bonferroni share of ``alpha``)."""
    low = Evidence.from_rows([r for r in contrasts if r["side"] == "low"])
    high = Evidence.from_rows([r for r in contrasts if r["side"] == "high"])
    if low.pivot is None or high.pivot is None or not scale > 0:
        return math.nan, math.nan
    return low.bound(alpha, weights, families) / scale, -high.bound(alpha, weights, families) / scale


def reopen(table: pd.DataFrame, params: RefineParams) -> tuple[float, list[int]]:
    """BH's threshold over the cells' p-values now (``table``: a row per cell with its ``cell``,
    ``kind``, ``p`` and ``look``), and the cells that stopped before their last look with a claim
    but a p-value above it: they are continued, targeted at that threshold."""
    live = table[table["kind"] != "diverged"]
    if live.empty:
        return params.fdr, []
    passed = fdr_reject(live["p"].to_numpy(), params.fdr)
    threshold = params.fdr * passed.sum() / len(live)
    last = len(params.looks()) - 1
    stopped = live[~passed & (live["look"] < last) & live["kind"].isin(["winner", "tied"])]
    return threshold, sorted(int(c) for c in stopped["cell"])


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
        threshold, again = reopen(table, params)
        if not again:
            break
        for i in again:
            results[i] = refine_cell(*cells[i], params, lattice, threshold, optimizers)
    live = table["kind"].to_numpy() != "diverged"
    passed = np.zeros(len(results), dtype=bool)
    passed[live] = fdr_reject(table["p"].to_numpy()[live], params.fdr)
    return results, passed
