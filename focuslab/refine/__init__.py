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

**Tuned optimizers** (a scan with ``--tune``, focuslab.tuning): the candidates are trials.  C_o
starts from the optimizer's design trials whose scan mean is within 2 combined standard errors of
its best trial's (at most 32, best first) and the lr neighbours of that best trial at its settings;
the race adds lr neighbours and midpoints around the leading candidate at the leader's settings,
on the lattice of the optimizer's own lr grid (focuslab.refine.lattice.TrialSpace).  Fresh
replicates of a candidate run the optimizer at its settings.  The estimand is each optimizer at
its best candidate, and the judgement below holds whatever the race picked, for the same reason
(the bound holds at every candidate raced); the defaults line of a tuned scan is not raced (it is
outside the budget).

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
is second-order accurate, not exact; validation/refine_null.py measures the false discovery
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
pass, resumable and shardable like a scan, with bit-identical results.  scan.json's "refine" record
names this procedure and its version (plan.PROCEDURE), never its prose.

**Modules.**  ``statistics`` (the test, BH), ``settings`` (RefineParams, RefineRun; the looks and
the selection/estimation roles of fresh replicates), ``lattice`` (the candidate lrs: where a race
starts, what joins after a look), ``evidence`` (a statement's bound and p-value), ``procedure``
(racing, judgement, one cell, a map), ``samplers`` (the simulator, resampled pools), ``plan``
(every check, the work units and the work, before anything runs: the dry run and the run share it),
``tables`` (a unit's rows, the finished tables), ``run`` (the lock, the units of each pass,
run_refine).
"""
from __future__ import annotations

from .evidence import Evidence
from .lattice import MAX_TRIALS, SCREEN_STEPS, SCREEN_Z, Lattice, TrialSpace, candidate_spaces
from .plan import PROCEDURE, RefinePlan, describe_plan, plan_refine, procedure_of, refine_digest
from .procedure import PRUNE_FROM, RETIRE_P, Arm, CellResult, lead_interval, refine_cell, refine_map
from .run import _locked, compute_chunk, run_refine, summary_line
from .samplers import PoolSampler, SimulatorSampler
from .settings import SELECTION_EVERY, RefineParams, RefineRun, fresh_count, roles
from .statistics import Moments, bh_adjusted, exceeds_p, fdr_reject, lower_bound
from .tables import DECISIONS, LRS, OUTCOMES, REFINE, REPLICATES, read_decisions, rerun_command

__all__ = ["MAX_TRIALS", "TrialSpace", "candidate_spaces", "Arm", "CellResult", "DECISIONS", "Evidence", "LRS", "Lattice", "Moments", "OUTCOMES", "PROCEDURE",
           "PRUNE_FROM", "PoolSampler", "REFINE", "REPLICATES", "RETIRE_P", "RefineParams", "RefinePlan", "RefineRun",
           "SCREEN_STEPS", "SCREEN_Z", "SELECTION_EVERY", "SimulatorSampler", "bh_adjusted", "compute_chunk",
           "describe_plan", "exceeds_p", "fdr_reject", "fresh_count", "lead_interval", "lower_bound", "plan_refine",
           "procedure_of", "read_decisions", "refine_cell", "refine_digest", "refine_map", "rerun_command", "roles",
           "run_refine", "summary_line"]
