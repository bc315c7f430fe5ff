"""The refinement's settings, declared once (focuslab.options: ``focuslab refine`` makes its flags
from these fields), and the design of the fresh replicates they fix: the looks, the error rate each
look spends, and which fresh replicates select lrs and which judge optimizers."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import FocuslabError
from ..options import setting

SELECTION_EVERY = 3  # fresh replicate R + j is a selection replicate when j % 3 == 0


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
    dry_run: bool = setting(False, "print the plan (cells, candidate lrs, looks, the least and most optimizer "
                                   "steps, ETA) after the run's own checks; compute and write nothing")


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

