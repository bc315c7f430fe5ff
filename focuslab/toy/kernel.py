"""The lockstep trajectory kernel: many independent trajectories advanced step by step together.

Lanes are processed in blocks small enough for their state to stay in L1 cache; within a block the
inner loop runs over lanes, so the compiler vectorises across trajectories.  The kernel knows
nothing of grids, files or optimizers beyond the compile-time rule code it is specialised for.

Lane layout of a call: cells x lrs x replicates (replicate fastest).  Cell parameters are rows
``[a, sigma, wd, cos phi, sin phi, c]``; the random key of a lane depends on (cell, replicate) only,
so all learning rates and optimizers of a cell see the same noise realisations (common random
numbers: paired comparisons are sharper).

Per trajectory:
  * initial theta = 1e-4 * (z1, z2) from pair 0 of its stream; step t uses pair t;
  * final_loss = L(theta_T); min_loss = min_t L(theta_t) and progress = max_t u_t over t = 1..T
    (as in the paper's reference scripts); diverged = any non-finite loss or final state.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .landscape import grad_theta, loss_uv, rotate
from .rng import normal_pair
from .updates import prepare, update

BLOCK = 256
INIT_SCALE = 1e-4
# Rows of the block state array.  All per-lane data of a block lives in ONE locally allocated
# (NROW, BLOCK) array with compile-time shape: LLVM then knows that rows never overlap and
# vectorises the lane loop without runtime alias checks (with one array per quantity it exceeds its
# alias-check budget and falls back to scalar code, ~5x slower).
A, SIG, WD, CP, SP, C, LR, X1, X2, S10, S11, S20, S21, U, V, LMIN, UMAX, OK = range(18)
NROW = 18


@njit(cache=True, error_model="numpy", nogil=True)
def simulate(code, hp, cells, lrs, keys, steps, final_loss, min_loss, progress, diverged):
    """Run every (cell, lr, replicate) lane for ``steps`` steps, writing the four metric arrays.

    code: rule code (updates.RULES); hp: the rule's hyperparameter vector;
    cells: (n_cells, 6) float64 rows [a, sigma, wd, cos phi, sin phi, c]; lrs: (n_lr,);
    keys: (n_cells, n_rep) uint64; outputs: (n_cells, n_lr, n_rep) float64 (diverged: uint8).
    """
    n_lr, n_rep = lrs.shape[0], keys.shape[1]
    n_lanes = cells.shape[0] * n_lr * n_rep
    S = np.empty((NROW, BLOCK))
    key = np.empty(BLOCK, dtype=np.uint64)
    for start in range(0, n_lanes, BLOCK):
        n = min(BLOCK, n_lanes - start)
        for j in range(n):
            k, r = divmod(start + j, n_rep)
            i, li = divmod(k, n_lr)
            for q in range(6):
                S[A + q, j] = cells[i, q]
            S[LR, j] = lrs[li]
            key[j] = keys[i, r]
            z1, z2 = normal_pair(key[j], 0)
            S[X1, j] = INIT_SCALE * z1
            S[X2, j] = INIT_SCALE * z2
            S[U, j], S[V, j] = rotate(S[X1, j], S[X2, j], S[CP, j], S[SP, j])
            S[S10, j] = 0.0
            S[S11, j] = 0.0
            S[S20, j] = 0.0
            S[S21, j] = 0.0
            S[LMIN, j] = np.inf
            S[UMAX, j] = -np.inf
            S[OK, j] = 1.0
        for t in range(1, steps + 1):
            ctx = prepare(code, t, hp)  # per-step scalars (bias corrections), once for all lanes
            for j in range(n):
                z1, z2 = normal_pair(key[j], t)
                g1, g2 = grad_theta(S[U, j], S[V, j], S[A, j], S[C, j], S[CP, j], S[SP, j])
                g1 = g1 * (1.0 + S[SIG, j] * z1)
                g2 = g2 * (1.0 + S[SIG, j] * z2)
                lr, wd = S[LR, j], S[WD, j]
                y1, S[S10, j], S[S11, j] = update(code, ctx, S[X1, j], g1, S[S10, j], S[S11, j],
                                                  lr, wd, hp)
                y2, S[S20, j], S[S21, j] = update(code, ctx, S[X2, j], g2, S[S20, j], S[S21, j],
                                                  lr, wd, hp)
                S[X1, j] = y1
                S[X2, j] = y2
                u, v = rotate(y1, y2, S[CP, j], S[SP, j])
                S[U, j] = u
                S[V, j] = v
                L = loss_uv(u, v, S[A, j], S[C, j])
                S[LMIN, j] = min(L, S[LMIN, j])
                S[UMAX, j] = max(u, S[UMAX, j])
                S[OK, j] = S[OK, j] if L - L == 0.0 else 0.0  # NaN/inf loss marks divergence
        for j in range(n):
            k, r = divmod(start + j, n_rep)
            i, li = divmod(k, n_lr)
            state = S[X1, j] + S[X2, j] + S[S10, j] + S[S11, j] + S[S20, j] + S[S21, j]
            final_loss[i, li, r] = loss_uv(S[U, j], S[V, j], S[A, j], S[C, j])
            min_loss[i, li, r] = S[LMIN, j]
            progress[i, li, r] = S[UMAX, j]
            diverged[i, li, r] = 0 if (S[OK, j] == 1.0 and np.isfinite(state)) else 1


def run(code: int, hp: np.ndarray, cells: np.ndarray, lrs: np.ndarray, keys: np.ndarray,
        steps: int) -> dict[str, np.ndarray]:
    """Allocate outputs and run the kernel; returns the per-lane metrics, shape (cells, lrs, reps)."""
    shape = (cells.shape[0], lrs.shape[0], keys.shape[1])
    out = {name: np.empty(shape) for name in ("final_loss", "min_loss", "progress")}
    out["diverged"] = np.empty(shape, dtype=np.uint8)
    simulate(int(code), np.ascontiguousarray(hp, dtype=np.float64),
             np.ascontiguousarray(cells, dtype=np.float64),
             np.ascontiguousarray(lrs, dtype=np.float64),
             np.ascontiguousarray(keys, dtype=np.uint64), int(steps),
             out["final_loss"], out["min_loss"], out["progress"], out["diverged"])
    return out
